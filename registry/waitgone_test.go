package registry_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/registry"
)

// watched reports each watch it starts, so a test can change a registry only
// once WaitGone is watching it.
type watched struct {
	registry.Registry
	started chan struct{}
}

func newWatched(r registry.Registry) *watched {
	return &watched{Registry: r, started: make(chan struct{}, 16)}
}

func (w *watched) Watch(ctx context.Context, service string) (registry.Watcher, error) {
	wt, err := w.Registry.Watch(ctx, service)
	if err == nil {
		w.started <- struct{}{}
	}
	return wt, err
}

func (w *watched) awaitWatch(t *testing.T) {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-w.started:
	case <-timer.C:
		t.Fatalf("%s: want a watch to start within %v, got none", w, wait)
	}
}

// goneLog records onGone calls.
type goneLog struct {
	mu    sync.Mutex
	calls map[string]int
	at    map[string]time.Time
	ch    chan string
}

func newGoneLog() *goneLog {
	return &goneLog{calls: map[string]int{}, at: map[string]time.Time{}, ch: make(chan string, 16)}
}

func (g *goneLog) onGone(r registry.Registry) {
	g.mu.Lock()
	g.calls[r.String()]++
	g.at[r.String()] = time.Now()
	g.mu.Unlock()
	g.ch <- r.String()
}

func (g *goneLog) count(name string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[name]
}

// waitGoneAsync starts WaitGone and returns its result channel.
func waitGoneAsync(ctx context.Context, i registry.Instance, onGone func(registry.Registry), regs ...registry.Registry) <-chan error {
	done := make(chan error, 1)
	go func() { done <- registry.WaitGone(ctx, i, onGone, regs...) }()
	return done
}

func result(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		t.Fatalf("%s: want it to return within %v, got no return", what, wait)
		return nil
	}
}

// TestWaitGoneWaitsForSlowest: one registry confirms at once, the other only
// after its push delay; WaitGone returns after the slow one.
func TestWaitGoneWaitsForSlowest(t *testing.T) {
	t.Parallel()
	const delay = 200 * time.Millisecond
	fast := newWatched(newMem(t, "memory://fast"))
	slow := newWatched(newMem(t, "memory://slow", memory.WithPushDelay(delay)))
	i := inst(0)
	mustRegister(t, registry.Multi{fast, slow}, i)

	log := newGoneLog()
	done := waitGoneAsync(t.Context(), i, log.onGone, fast, slow)
	fast.awaitWatch(t)
	slow.awaitWatch(t)
	start := time.Now()
	mustDeregister(t, registry.Multi{fast, slow}, i)

	if err := result(t, done, "WaitGone"); err != nil {
		t.Fatalf("WaitGone after Deregister everywhere: want nil, got %v", err)
	}
	if took := time.Since(start); took < delay {
		t.Errorf("WaitGone returned %v after Deregister; want no sooner than the slow registry's push delay %v", took, delay)
	}
	for _, r := range []string{"memory://fast", "memory://slow"} {
		if n := log.count(r); n != 1 {
			t.Errorf("onGone(%s): want 1 call, got %d", r, n)
		}
	}
	if at := log.at["memory://slow"]; at.Sub(start) < delay {
		t.Errorf("onGone(memory://slow) %v after Deregister: want no sooner than %v", at.Sub(start), delay)
	}
}

// TestWaitGoneOverMulti: through a Multi, the instance counts as gone only
// when it has left every registry.
func TestWaitGoneOverMulti(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	m := registry.Multi{a, b}
	i := inst(0)
	mustRegister(t, m, i)
	mustDeregister(t, a, i)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := result(t, waitGoneAsync(ctx, i, nil, m), "WaitGone over Multi")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitGone over Multi with %s still in %s: want context.DeadlineExceeded, got %v", i.Endpoint(), b, err)
	}
	if !strings.Contains(err.Error(), m.String()) {
		t.Errorf("WaitGone error: want it to name %q, got %q", m, err)
	}

	wm := newWatched(m)
	log := newGoneLog()
	done := waitGoneAsync(t.Context(), i, log.onGone, wm)
	wm.awaitWatch(t)
	select {
	case err := <-done:
		t.Fatalf("WaitGone over Multi while %s still lists %s: want it to keep waiting, got return %v", b, i.Endpoint(), err)
	default:
	}
	mustDeregister(t, b, i)
	if err := result(t, done, "WaitGone over Multi"); err != nil {
		t.Fatalf("WaitGone over Multi after %s left every registry: want nil, got %v", i.Endpoint(), err)
	}
	if n := log.count(m.String()); n != 1 {
		t.Errorf("onGone(Multi): want 1 call, got %d", n)
	}
}

// TestWaitGoneNamesPending: when ctx ends, the error names the registries
// still listing the instance and not those that confirmed.
func TestWaitGoneNamesPending(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://still"), newMem(t, "memory://confirmed")
	i := inst(0)
	mustRegister(t, a, i)
	log := newGoneLog()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := waitGoneAsync(ctx, i, log.onGone, a, b)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case name := <-log.ch:
		if name != "memory://confirmed" {
			t.Fatalf("onGone: want memory://confirmed (never had it), got %s", name)
		}
	case <-timer.C:
		t.Fatalf("onGone(memory://confirmed): want a call within %v, got none", wait)
	}
	cancel()
	err := result(t, done, "WaitGone")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitGone after ctx canceled: want an error wrapping context.Canceled, got %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "memory://still") || strings.Contains(msg, "memory://confirmed") {
		t.Errorf("WaitGone error: want it to name memory://still only, got %q", msg)
	}
	if n := log.count("memory://still"); n != 0 {
		t.Errorf("onGone(memory://still): want no call, got %d", n)
	}
}

func TestWaitGoneWatchFails(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	i := inst(0)
	mustRegister(t, registry.Multi{a, b}, i)
	boom := errors.New("boom")
	b.SetFault(boom)
	err := result(t, waitGoneAsync(t.Context(), i, nil, a, b), "WaitGone")
	var re *registry.Error
	if !errors.As(err, &re) || re.Registry != "memory://b" || re.Op != "watch" || !errors.Is(err, boom) {
		t.Errorf("WaitGone with memory://b failing: want *registry.Error{memory://b, watch, boom}, got %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("WaitGone error: want the failure alone, not the cancellation of the others, got %v", err)
	}
}

func TestWaitGoneAlreadyGone(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	log := newGoneLog()
	if err := result(t, waitGoneAsync(t.Context(), inst(0), log.onGone, a, b), "WaitGone"); err != nil {
		t.Fatalf("WaitGone for an instance nowhere registered: want nil, got %v", err)
	}
	for _, r := range []string{"memory://a", "memory://b"} {
		if n := log.count(r); n != 1 {
			t.Errorf("onGone(%s): want 1 call, got %d", r, n)
		}
	}
	if err := registry.WaitGone(t.Context(), inst(0), nil); err != nil {
		t.Errorf("WaitGone over no registries: want nil, got %v", err)
	}
}

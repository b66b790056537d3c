package memory

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait on a watcher in these tests.
const wait = 5 * time.Second

func newRegistry(t *testing.T, opts ...Option) *Registry {
	t.Helper()
	r, err := New(opts...)
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func newFake(t *testing.T, delay time.Duration) (*Registry, *clock.Fake) {
	t.Helper()
	fc := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return newRegistry(t, WithPushDelay(delay), withClock(fc)), fc
}

func inst(n int) registry.Instance {
	return registry.Instance{
		Service:  "svc",
		Address:  "10.0.0.1",
		Port:     8000 + n,
		Metadata: map[string]string{"n": fmt.Sprint(n)},
	}
}

func watch(t *testing.T, r *Registry, service string) registry.Watcher {
	t.Helper()
	w, err := r.Watch(t.Context(), service)
	if err != nil {
		t.Fatalf("Watch(%q): want nil error, got %v", service, err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return w
}

// next returns the watcher's next list, failing the test if none comes
// within wait.
func next(t *testing.T, w registry.Watcher) []registry.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	list, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("Next: want a list within %v, got error %v", wait, err)
	}
	return list
}

// pending reports whether w has a list ready that it has not returned yet,
// without waiting: Next with an ended ctx returns a ready list and
// otherwise ctx.Err().
func pending(t *testing.T, w registry.Watcher) ([]registry.Instance, bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	list, err := w.Next(ctx)
	switch {
	case err == nil:
		return list, true
	case errors.Is(err, context.Canceled):
		return nil, false
	}
	t.Fatalf("Next with an ended ctx: want a ready list or context.Canceled, got %v", err)
	return nil, false
}

func ports(l []registry.Instance) []int {
	out := make([]int, len(l))
	for k, i := range l {
		out[k] = i.Port
	}
	return out
}

func mustRegister(t *testing.T, r *Registry, in ...registry.Instance) {
	t.Helper()
	for _, i := range in {
		if err := r.Register(t.Context(), i); err != nil {
			t.Fatalf("Register(%s): want nil error, got %v", i.Endpoint(), err)
		}
	}
}

func mustDeregister(t *testing.T, r *Registry, i registry.Instance) {
	t.Helper()
	if err := r.Deregister(t.Context(), i); err != nil {
		t.Fatalf("Deregister(%s): want nil error, got %v", i.Endpoint(), err)
	}
}

func TestContract(t *testing.T) {
	t.Parallel()
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(fmt.Sprintf("pushDelay=%v", delay), func(t *testing.T) {
			t.Parallel()
			// One registry is the whole backend: every client of it shares
			// its state, as clients of one Consul or Nacos server do.
			r := newRegistry(t, WithPushDelay(delay), WithName(fmt.Sprintf("memory://delay-%v", delay)))
			registrytest.Run(t, registrytest.Harness{
				New:     func(*testing.T) registry.Registry { return r },
				Timeout: wait,
			})
		})
	}
}

func TestNewRejectsNegativeDelay(t *testing.T) {
	t.Parallel()
	if r, err := New(WithPushDelay(-time.Second)); err == nil {
		_ = r.Close()
		t.Fatalf("New(WithPushDelay(-1s)): want an error, got nil")
	}
}

func TestString(t *testing.T) {
	t.Parallel()
	if got := newRegistry(t).String(); got != "memory://" {
		t.Errorf("String() by default: want %q, got %q", "memory://", got)
	}
	if got := newRegistry(t, WithName("memory://a")).String(); got != "memory://a" {
		t.Errorf("String() with WithName: want %q, got %q", "memory://a", got)
	}
}

// TestRemovalSeenOnlyAfterPushDelay moves a fake clock by hand: the watcher
// must not see the removal a moment before the delay, and must see it at it.
func TestRemovalSeenOnlyAfterPushDelay(t *testing.T) {
	t.Parallel()
	const delay = time.Second
	r, fc := newFake(t, delay)
	a, b := inst(0), inst(1)
	mustRegister(t, r, a, b)
	w := watch(t, r, "svc")
	if got := next(t, w); len(got) != 2 {
		t.Fatalf("first Next: want both instances at once, got ports %v", ports(got))
	}

	mustDeregister(t, r, a)
	if got := r.Instances("svc"); registry.Contains(got, a) {
		t.Errorf("Instances (the registry's own view) after Deregister: want no %s, got ports %v", a.Endpoint(), ports(got))
	}
	if n := fc.Timers(); n != 1 {
		t.Fatalf("pending push timers after Deregister: want 1, got %d", n)
	}
	if got, ok := pending(t, w); ok {
		t.Fatalf("watcher at once after Deregister: want nothing new before the push delay, got ports %v", ports(got))
	}
	fc.Advance(delay - time.Nanosecond)
	if got, ok := pending(t, w); ok {
		t.Fatalf("watcher 1ns before the push delay: want nothing new, got ports %v", ports(got))
	}
	fc.Advance(time.Nanosecond)
	got := next(t, w)
	if registry.Contains(got, a) || !registry.Contains(got, b) {
		t.Errorf("watcher at the push delay: want ports [%d], got %v", b.Port, ports(got))
	}
}

// TestNewWatchSeesCurrentState pins down a documented choice: a watch made
// after a change sees it at once, since the first Next returns the
// registry's current list; the push delay applies to later changes only.
func TestNewWatchSeesCurrentState(t *testing.T) {
	t.Parallel()
	r, _ := newFake(t, time.Hour)
	a := inst(0)
	mustRegister(t, r, a)
	if got := next(t, watch(t, r, "svc")); !registry.Contains(got, a) {
		t.Errorf("first Next of a watch made after Register: want port %d, got %v", a.Port, ports(got))
	}
}

// TestSnapshotsInOrder fires many deliveries at once (their goroutines race)
// and checks that the watcher never goes back to an older snapshot and ends
// on the newest.
func TestSnapshotsInOrder(t *testing.T) {
	t.Parallel()
	const n = 40
	run := func(t *testing.T, r *Registry, fire func()) {
		w := watch(t, r, "svc")
		if got := next(t, w); len(got) != 0 {
			t.Fatalf("first Next: want an empty list, got ports %v", ports(got))
		}
		for k := range n {
			mustRegister(t, r, inst(k))
		}
		fire()
		last := 0
		for last < n {
			got := next(t, w)
			if len(got) <= last {
				t.Fatalf("snapshot after one with %d instances: want more, got %d (ports %v): an older snapshot overwrote a newer one", last, len(got), ports(got))
			}
			for k, i := range got {
				if i.Port != inst(k).Port {
					t.Fatalf("snapshot: want registration order, got ports %v", ports(got))
				}
			}
			last = len(got)
		}
		if got, ok := pending(t, w); ok {
			t.Errorf("after the newest snapshot: want nothing more, got ports %v", ports(got))
		}
	}
	t.Run("fake clock", func(t *testing.T) {
		t.Parallel()
		r, fc := newFake(t, 100*time.Millisecond)
		run(t, r, func() {
			// Spread the changes over time, then fire them all at once.
			fc.Advance(100 * time.Millisecond)
		})
	})
	t.Run("real clock", func(t *testing.T) {
		t.Parallel()
		run(t, newRegistry(t, WithPushDelay(20*time.Millisecond)), func() {})
	})
}

// TestNextSkipsUnchangedList: calls that leave the consumer-visible list as
// it was must not wake the watcher (Next blocks until the list differs).
func TestNextSkipsUnchangedList(t *testing.T) {
	t.Parallel()
	noops := func(t *testing.T, r *Registry, a registry.Instance) {
		t.Helper()
		mustRegister(t, r, a)
		if err := r.Enable(t.Context(), a); err != nil {
			t.Fatalf("Enable: want nil error, got %v", err)
		}
		if err := r.SetHealth(t.Context(), a, registry.HealthPassing, ""); err != nil {
			t.Fatalf("SetHealth: want nil error, got %v", err)
		}
		mustDeregister(t, r, inst(9))
	}
	t.Run("pushDelay=0", func(t *testing.T) {
		t.Parallel()
		r := newRegistry(t)
		a := inst(0)
		mustRegister(t, r, a)
		w := watch(t, r, "svc")
		next(t, w)
		noops(t, r, a)
		if got, ok := pending(t, w); ok {
			t.Errorf("watcher after calls that changed nothing: want no new list, got ports %v", ports(got))
		}
	})
	t.Run("fake clock", func(t *testing.T) {
		t.Parallel()
		r, fc := newFake(t, time.Second)
		a := inst(0)
		mustRegister(t, r, a)
		w := watch(t, r, "svc")
		next(t, w)
		noops(t, r, a)
		if n := fc.Timers(); n != 0 {
			t.Errorf("push timers after calls that changed nothing: want 0, got %d", n)
		}
		// A change back and forth within the delay is two real changes.
		if err := r.Disable(t.Context(), a); err != nil {
			t.Fatalf("Disable: want nil error, got %v", err)
		}
		if err := r.Enable(t.Context(), a); err != nil {
			t.Fatalf("Enable: want nil error, got %v", err)
		}
		if n := fc.Timers(); n != 2 {
			t.Errorf("push timers after Disable then Enable: want 2, got %d", n)
		}
	})
}

func TestRegisterUpdatesInPlace(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := inst(0)
	mustRegister(t, r, a)
	w := watch(t, r, "svc")
	next(t, w)
	a2 := a
	a2.Metadata = map[string]string{"version": "2"}
	a2.Tags = []string{"canary"}
	mustRegister(t, r, a2)
	got := next(t, w)
	if len(got) != 1 || got[0].Metadata["version"] != "2" || len(got[0].Tags) != 1 {
		t.Errorf("Next after re-registering with new metadata: want one instance with version 2 and tag canary, got %+v", got)
	}
}

// TestCallerOwnsReturnedLists: a caller that edits what Next or Instances
// returned must not change what another watcher, or the registry, holds.
func TestCallerOwnsReturnedLists(t *testing.T) {
	t.Parallel()
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(fmt.Sprintf("pushDelay=%v", delay), func(t *testing.T) {
			t.Parallel()
			r := newRegistry(t, WithPushDelay(delay))
			w1, w2 := watch(t, r, "svc"), watch(t, r, "svc")
			next(t, w1)
			next(t, w2)
			a := inst(0)
			mustRegister(t, r, a)
			l1 := next(t, w1)
			l1[0].Port = 1
			l1[0].Metadata["n"] = "edited"
			l2 := next(t, w2)
			if l2[0].Port != a.Port || l2[0].Metadata["n"] != "0" {
				t.Errorf("second watcher after the first's caller edited its list: want port %d metadata n=0, got port %d metadata n=%s",
					a.Port, l2[0].Port, l2[0].Metadata["n"])
			}
			in := r.Instances("svc")
			in[0].Metadata["n"] = "edited"
			if got := r.Instances("svc")[0].Metadata["n"]; got != "0" {
				t.Errorf("Instances after a caller edited an earlier result: want metadata n=0, got n=%s", got)
			}
		})
	}
}

func TestSetFault(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a, b := inst(0), inst(1)
	mustRegister(t, r, a)
	w := watch(t, r, "svc")
	next(t, w)

	boom := errors.New("boom")
	r.SetFault(boom)
	ctx := t.Context()
	calls := []struct {
		name string
		f    func() error
	}{
		{"Register", func() error { return r.Register(ctx, b) }},
		{"Deregister", func() error { return r.Deregister(ctx, a) }},
		{"Disable", func() error { return r.Disable(ctx, a) }},
		{"Enable", func() error { return r.Enable(ctx, a) }},
		{"SetHealth", func() error { return r.SetHealth(ctx, a, registry.HealthCritical, "") }},
		{"Watch", func() error { _, err := r.Watch(ctx, "svc"); return err }},
	}
	for _, c := range calls {
		if err := c.f(); !errors.Is(err, boom) {
			t.Errorf("%s under SetFault(boom): want an error wrapping boom, got %v", c.name, err)
		}
	}
	if got := r.Instances("svc"); len(got) != 1 || !registry.Contains(got, a) {
		t.Errorf("Instances after failed calls: want ports [%d] unchanged, got %v", a.Port, ports(got))
	}
	if got, ok := pending(t, w); ok {
		t.Errorf("running watcher under fault: want it to keep its last list, got new ports %v", ports(got))
	}

	r.SetFault(nil)
	mustRegister(t, r, b)
	if got := next(t, w); len(got) != 2 {
		t.Errorf("watcher after SetFault(nil) and Register: want ports [%d %d], got %v", a.Port, b.Port, ports(got))
	}
}

func TestCloseStopsWatchers(t *testing.T) {
	t.Parallel()
	r, fc := newFake(t, time.Second)
	mustRegister(t, r, inst(0))
	w1, w2 := watch(t, r, "svc"), watch(t, r, "other")
	next(t, w1)
	next(t, w2)
	mustDeregister(t, r, inst(0)) // leaves a push timer pending

	blocked := make(chan error, 1)
	go func() {
		_, err := w1.Next(t.Context())
		blocked <- err
	}()
	if err := r.Close(); err != nil {
		t.Fatalf("Close: want nil error, got %v", err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-blocked:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Next blocked across Close: want context.Canceled, got %v", err)
		}
	case <-timer.C:
		t.Fatalf("Next blocked across Close: want it to return within %v, got no return", wait)
	}
	if _, err := w2.Next(t.Context()); !errors.Is(err, context.Canceled) {
		t.Errorf("Next on another service's watcher after Close: want context.Canceled, got %v", err)
	}
	if n := fc.Timers(); n != 0 {
		t.Errorf("push timers after Close: want 0, got %d", n)
	}
	if err := r.Register(t.Context(), inst(1)); err == nil {
		t.Errorf("Register after Close: want an error, got nil")
	}
	if _, err := r.Watch(t.Context(), "svc"); err == nil {
		t.Errorf("Watch after Close: want an error, got nil")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: want nil error, got %v", err)
	}
}

func TestUpdateUnknownInstance(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	for name, f := range map[string]func() error{
		"Disable":   func() error { return r.Disable(t.Context(), inst(0)) },
		"Enable":    func() error { return r.Enable(t.Context(), inst(0)) },
		"SetHealth": func() error { return r.SetHealth(t.Context(), inst(0), registry.HealthCritical, "") },
	} {
		if err := f(); err == nil {
			t.Errorf("%s of an instance never registered: want an error, got nil", name)
		}
	}
}

func TestMatchByID(t *testing.T) {
	t.Parallel()
	r := newRegistry(t)
	a := inst(0)
	a.ID = "a"
	mustRegister(t, r, a)
	moved := a
	moved.Port = 9999
	mustRegister(t, r, moved) // same ID: an update, not a second instance
	if got := r.Instances("svc"); len(got) != 1 || got[0].Port != 9999 {
		t.Fatalf("Instances after re-registering ID %q on a new port: want one instance on 9999, got ports %v", a.ID, ports(got))
	}
	mustDeregister(t, r, registry.Instance{Service: "svc", ID: "a", Address: "x", Port: 1})
	if got := r.Instances("svc"); len(got) != 0 {
		t.Errorf("Instances after Deregister by ID: want none, got ports %v", ports(got))
	}
}

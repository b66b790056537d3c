package lameduck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry"
)

func TestExitCode(t *testing.T) {
	t.Parallel()
	regErr := &registry.Error{Registry: "consul://127.0.0.1:1", Op: "deregister", Err: errors.New("connection refused")}
	cut := func(p drain.Phase, cause error) error { return &drain.PhaseError{Phase: p, Err: cause} }
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"clean", nil, ExitOK},
		{"registry unreachable, drain finished", errors.Join(cut(drain.Deregistering, drain.ErrDeadline), regErr), ExitRegistry},
		{"registry error alone", regErr, ExitRegistry},
		{"confirmation ran out", cut(drain.Confirming, drain.ErrDeadline), ExitRegistry},
		{"drain cut by the deadline", errors.Join(regErr, cut(drain.Draining, drain.ErrDeadline)), ExitForced},
		{"second signal", cut(drain.Deregistering, drain.ErrForced), ExitForced},
		{"stop hook failed", fmt.Errorf("drain: stop hook %q: %w", "http", errors.New("boom")), ExitFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if got := ExitCode(c.err); got != c.want {
				t.Fatalf("ExitCode(%v): want %d, got %d", c.err, c.want, got)
			}
		})
	}
}

// rejecting refuses every registration, as Consul does a malformed one.
type rejecting struct{ registry.Registry }

func (rejecting) Register(context.Context, registry.Instance) error {
	return &registry.Error{Registry: "fake://", Op: "register", Err: fmt.Errorf("%w: 400 Bad Request", registry.ErrRejected)}
}

func testInstance() registry.Instance {
	return registry.Instance{Service: "web", ID: "web-1", Address: "127.0.0.1", Port: 8080}
}

// unsentSignal is what Apps under test listen for instead of SIGTERM and
// SIGINT: nothing sends it to a test, and syscall defines it on every OS
// (SIGUSR2 is not on Windows). It must be a real signal: with none enabled,
// signal.Stop never returns.
const unsentSignal = syscall.SIGALRM

// A registration refused for good ends Run at once, with the stop hooks run
// and the refusal returned, instead of retrying forever.
func TestRunStopsOnRejectedRegistration(t *testing.T) {
	t.Parallel()
	mem, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	app, err := New(testInstance(), []registry.Registry{rejecting{mem}},
		WithAdmin("", ""), WithSignals(unsentSignal),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		WithStopHook("server", func(context.Context) error { close(stopped); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, registry.ErrRejected) || ExitCode(err) != ExitRegistry {
			t.Fatalf("want an error wrapping ErrRejected and exit code %d, got %v (exit %d)", ExitRegistry, err, ExitCode(err))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("want Run to return after a rejected registration, still running after 10s")
	}
	select {
	case <-stopped:
	default:
		t.Fatal("want the stop hook run, it was not")
	}
}

// Ending ctx takes a registered instance offline cleanly: registered, then
// removed, exit code 0.
func TestRunGoesOfflineWhenCtxEnds(t *testing.T) {
	t.Parallel()
	mem, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	var registered atomic.Bool
	app, err := New(testInstance(), []registry.Registry{mem},
		WithAdmin("", ""), WithSignals(unsentSignal),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		WithDrain(drain.WithBudget(5*time.Second), drain.WithQuietWindow(0)),
		WithReady(func(context.Context) error { registered.Store(true); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	w, err := mem.Watch(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		list, err := w.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if registry.Contains(list, testInstance()) {
			break
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("want a clean offline, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("want Run to return once ctx ended, still running after 10s")
	}
	if got := mem.Instances("web"); len(got) != 0 {
		t.Fatalf("want the instance deregistered, got %v", got)
	}
	if !registered.Load() {
		t.Fatal("want the readiness check run before registering")
	}
}

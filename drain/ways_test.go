package drain

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
)

// fakeSource stands for a drain that runs outside this process, an app
// followed through its admin endpoint or a port's connections: it drains in
// took on the clock, or returns ctx's error when cut.
type fakeSource struct {
	clk  clock.Clock
	took time.Duration
	ran  atomic.Bool
}

func (s *fakeSource) Drain(ctx context.Context, _ Condition) error {
	s.ran.Store(true)
	t := s.clk.NewTimer(s.took)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

func (s *fakeSource) String() string { return "fake source" }

// trackerSource is the library's way in: the coordinator's own tracker,
// with one request in flight that ends took after the start.
type trackerSource struct {
	*Tracker
	ran atomic.Bool
}

func (s *trackerSource) Drain(ctx context.Context, cond Condition) error {
	s.ran.Store(true)
	return s.Tracker.Drain(ctx, cond)
}

// TestEveryWayInUnderEveryFault runs the coordinator as each way in
// configures it (the library, `offline --admin`, plain `prestop` and
// `run`) against each fault: a stop hook that ignores its context, a
// registry that refuses, one that hangs, one that dies during Confirming,
// and a second signal during Draining. On the fake clock it checks the
// outcome and its exit code, that the drain ran, and that the whole
// protocol took at most its budget plus 100 ms.
func TestEveryWayInUnderEveryFault(t *testing.T) {
	t.Parallel()
	const budget = 10 * time.Second
	type way struct {
		name string
		hook string // the name of its stop hook
		// opts configures the coordinator as that way in does; ran says
		// whether its drain ran.
		opts func(f *clock.Fake, hook func(context.Context) error) ([]Option, func() bool)
	}
	ways := []way{
		{"library", "http server", func(f *clock.Fake, hook func(context.Context) error) ([]Option, func() bool) {
			tr := &trackerSource{Tracker: &Tracker{clock: f}}
			r := tr.Begin()
			f.AfterFunc(300*time.Millisecond, func() { _ = r.End() })
			return []Option{WithSource(tr), WithStopHook("http server", hook)}, tr.ran.Load
		}},
		{"offline --admin", "SIGTERM to pid", func(f *clock.Fake, hook func(context.Context) error) ([]Option, func() bool) {
			src := &fakeSource{clk: f, took: 700 * time.Millisecond}
			return []Option{WithSource(src), WithQuietWindow(0), WithStopReserve(0), WithLookup(),
				WithStopHook("SIGTERM to pid", hook)}, src.ran.Load
		}},
		{"prestop and run", "terminate", func(f *clock.Fake, hook func(context.Context) error) ([]Option, func() bool) {
			src := &fakeSource{clk: f, took: 400 * time.Millisecond}
			return []Option{WithSource(src), WithStopReserve(time.Second), WithStopHook("terminate", hook)}, src.ran.Load
		}},
	}
	faults := []struct {
		name        string
		registry    faultMode
		hangingHook bool
		force       bool
		want        Outcome
		wantCode    int
	}{
		{name: "none", want: OutcomeDrained, wantCode: 0},
		{name: "hook ignores its context", hangingHook: true, want: OutcomeForced, wantCode: 4},
		{name: "registry refuses", registry: faultRefuses, want: OutcomeRegistryRejected, wantCode: 3},
		{name: "registry hangs", registry: faultHangs, want: OutcomeRegistryUnreachable, wantCode: 3},
		{name: "registry dies during Confirming", registry: faultDiesAfterRemoval, want: OutcomeRegistryUnreachable, wantCode: 3},
		{name: "second signal", force: true, want: OutcomeForced, wantCode: 4},
	}
	for _, w := range ways {
		for _, fc := range faults {
			t.Run(w.name+"/"+fc.name, func(t *testing.T) {
				t.Parallel()
				f := clock.NewFake(t0)
				release := make(chan struct{})
				t.Cleanup(func() { close(release) })
				hook := func(context.Context) error { return nil }
				if fc.hangingHook {
					hook = func(context.Context) error { <-release; return nil } // ignores ctx
				}
				reg := newFakeRegistry("fake://r", f, 0)
				reg.fault = fc.registry
				opts, ran := w.opts(f, hook)
				var c *Coordinator
				var forcedAt atomic.Int64
				opts = append(opts, WithRegistries(reg), WithInstance(testInstance), WithBudget(budget),
					withClock(f), withBackoff(backoff.Policy{Initial: 100 * time.Millisecond, Max: time.Second}),
					WithEventHook(func(e Event) {
						if fc.force && e.Kind == EventPhase && e.Phase == Draining {
							forcedAt.Store(int64(e.Elapsed))
							go c.Force()
						}
					}))
				var err error
				if c, err = New(&Tracker{clock: f}, opts...); err != nil {
					t.Fatal(err)
				}
				c.Start()
				rep, err := runOut(t, f, c)

				if rep.Outcome != fc.want || rep.Outcome.ExitCode() != fc.wantCode {
					t.Fatalf("want outcome %s (exit %d), got %s (exit %d): %v", fc.want, fc.wantCode, rep.Outcome, rep.Outcome.ExitCode(), err)
				}
				if !ran() {
					t.Fatalf("want the drain to have run, it did not (phases %v)", rep.Phases)
				}
				limit := budget + 100*time.Millisecond
				if fc.force {
					limit = time.Duration(forcedAt.Load()) + 100*time.Millisecond
				}
				if rep.Duration > limit {
					t.Fatalf("want the protocol done within %v, took %v", limit, rep.Duration)
				}
				if fc.hangingHook && !slices.Equal(rep.Abandoned, []string{w.hook}) {
					t.Fatalf("want the hook abandoned and named, got %v (%v)", rep.Abandoned, err)
				}
				if fc.registry == faultRefuses {
					if n := rep.Registries[0].Attempts; n != 1 || !errors.Is(err, errRefused) {
						t.Fatalf("want a refusal not retried, and reported, got %d attempts and %v", n, err)
					}
				}
				if (fc.want == OutcomeDrained) != (err == nil) {
					t.Fatalf("want an error exactly when the outcome is not drained, got %v", err)
				}
			})
		}
	}
}

// runOut drives f until c is Offline, and returns its report and error.
// Each step lets the protocol's goroutines settle, then moves the clock to
// the next pending timer, never further, so fake time passes only as the
// protocol's own timers say.
func runOut(t *testing.T, f *clock.Fake, c *Coordinator) (Report, error) {
	t.Helper()
	giveUp := time.Now().Add(waitLong)
	for {
		select {
		case <-c.Done():
			return c.Wait(context.Background())
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(giveUp) {
			t.Fatalf("the protocol did not end; it is in %v at %v", c.Phase(), f.Now().Sub(t0))
		}
		if at, ok := f.Next(); ok {
			f.Advance(at.Sub(f.Now()))
		}
	}
}

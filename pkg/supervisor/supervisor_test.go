//go:build linux

// Linux only: these tests run real children under the supervisor.

package supervisor

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/registry"
)

func TestCrashDeregistersBeforeRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.run()

	first := h.next(EventStarted)
	if reg := h.next(EventRegistered); reg.PID != first.PID {
		t.Fatalf("want registered for pid %d, got pid %d", first.PID, reg.PID)
	}
	if got := len(h.reg.Instances("web")); got != 1 {
		t.Fatalf("want the instance visible after registered, got %d instances", got)
	}

	h.get("/crash")
	ex := h.next(EventExited)
	if ex.Code != 3 || ex.Signal != 0 {
		t.Fatalf("want exit code 3 and no signal, got code %d signal %v", ex.Code, ex.Signal)
	}
	var ee *ExitError
	if !errors.As(ex.Err, &ee) || ee.Code != 3 {
		t.Fatalf("want an *ExitError with code 3, got %v", ex.Err)
	}
	if de := h.nextOf(EventDeregistered, EventBackoff, EventStarted); de.Kind != EventDeregistered || de.Err != nil {
		t.Fatalf("want deregistered (no error) right after the exit, got %v (err %v); events: %s", de.Kind, de.Err, h.history())
	}
	bo := h.nextOf(EventBackoff, EventStarted)
	if bo.Kind != EventBackoff {
		t.Fatalf("want backoff before any restart, got %v", bo.Kind)
	}
	if bo.visible != 0 {
		t.Fatalf("want the instance out of the registry during backoff, got %d visible", bo.visible)
	}
	if bo.Delay <= 0 || bo.Failures != 1 {
		t.Fatalf("want a positive delay and failure count 1, got delay %v count %g", bo.Delay, bo.Failures)
	}
	// Nothing restarts until the clock moves.
	for _, e := range h.drainEvents() {
		if e.Kind == EventStarted {
			t.Fatalf("restarted before the backoff delay passed; events: %s", h.history())
		}
	}
	h.clk.Advance(bo.Delay)

	second := h.next(EventStarted)
	if second.PID == first.PID || second.Restarts != 1 {
		t.Fatalf("want a new pid with Restarts 1, got pid %d (first %d) Restarts %d", second.PID, first.PID, second.Restarts)
	}
	h.next(EventRestarted)
	h.next(EventRegistered)
	if got := len(h.reg.Instances("web")); got != 1 {
		t.Fatalf("want the restarted instance visible, got %d", got)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
	if got := len(h.reg.Instances("web")); got != 0 {
		t.Fatalf("want no instance after Run returned, got %d", got)
	}
}

func TestRestartIntensity(t *testing.T) {
	t.Parallel()
	const halfLife = time.Minute
	tests := []struct {
		name     string
		gap      time.Duration // extra clock advance between failures
		crashes  int           // crashes to watch before deciding
		wantGive bool
	}{
		// Threshold 2: the third failure in quick succession gives up.
		{name: "quick failures give up", gap: 0, crashes: 3, wantGive: true},
		// Ten half-lives apart, the count decays to ~1 between failures.
		{name: "spaced failures decay", gap: 10 * halfLife, crashes: 5, wantGive: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOpts{
				mode:        "crash",
				supervisorO: []Option{WithRestartIntensity(2, halfLife)},
			})
			h.run()
			for k := 1; k <= tc.crashes; k++ {
				h.next(EventStarted)
				ex := h.next(EventExited)
				if ex.Code != 3 {
					t.Fatalf("crash %d: want exit code 3, got %d", k, ex.Code)
				}
				e := h.nextOf(EventBackoff, EventGaveUp)
				if e.Kind == EventGaveUp {
					if !tc.wantGive || k != 3 {
						t.Fatalf("crash %d: gave up (count %g); want give up %v at crash 3", k, e.Failures, tc.wantGive)
					}
					break
				}
				if !tc.wantGive && e.Failures > 1.01 {
					t.Fatalf("crash %d: want the count decayed to about 1, got %g", k, e.Failures)
				}
				if k < tc.crashes { // after the last, cancel during the backoff
					h.clk.Advance(e.Delay + tc.gap)
				}
			}
			if !tc.wantGive {
				if err := h.stop(); err != nil {
					t.Fatalf("want nil from Run cancelled during backoff, got %v", err)
				}
				return
			}
			err := h.result()
			var gu *GaveUpError
			if !errors.Is(err, ErrGaveUp) || !errors.As(err, &gu) {
				t.Fatalf("want a *GaveUpError, got %v", err)
			}
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code != 3 {
				t.Fatalf("want the last *ExitError (code 3) inside, got %v", err)
			}
			if gu.Failures <= 2 || gu.Threshold != 2 {
				t.Fatalf("want failures > threshold 2, got %g / %g", gu.Failures, gu.Threshold)
			}
			if !strings.Contains(h.out.String(), "[web] crashing\n") {
				t.Fatalf("want the child's stderr prefixed, got %q", h.out.String())
			}
		})
	}
}

func TestStartFailureCountsTowardIntensity(t *testing.T) {
	t.Parallel()
	var events []Event
	var mu sync.Mutex
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	s, err := New(Spec{Path: filepath.Join(t.TempDir(), "missing")},
		withClock(clk), WithRestartIntensity(1, time.Minute),
		WithEventHook(func(e Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			if e.Kind == EventBackoff {
				clk.Advance(e.Delay) // the timer is armed before the event
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err = <-done:
	case <-time.After(wait):
		t.Fatalf("want Run to give up within %v, got nothing", wait)
	}
	if !errors.Is(err, ErrGaveUp) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("want ErrGaveUp wrapping fs.ErrNotExist, got %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, e.Kind.String())
	}
	if got, want := strings.Join(kinds, " "), "cgroup backoff gave-up"; got != want {
		t.Fatalf("want events %q, got %q", want, got)
	}
}

func TestNotRegisteredUntilReady(t *testing.T) {
	t.Parallel()
	open := make(chan struct{})
	h := newHarness(t, harnessOpts{
		noAdvance: true,
		ready: func(h *harness) probe.Check {
			check := probe.HTTP(h.url + "/healthz")
			return func(ctx context.Context, port int) error {
				select {
				case <-open:
					return check(ctx, port)
				default:
					return errors.New("not yet")
				}
			}
		},
	})
	h.run()
	h.next(EventStarted)
	for k := 0; k < 3; k++ {
		e := h.nextOf(EventNotReady, EventRegistered, EventReady)
		if e.Kind != EventNotReady {
			t.Fatalf("want not-ready while the gate is shut, got %v", e.Kind)
		}
		if e.visible != 0 {
			t.Fatalf("want no instance before readiness, got %d visible", e.visible)
		}
		if k == 2 {
			close(open)
		}
		h.clk.Advance(e.Delay)
	}
	// The child may not listen yet: keep moving the clock on not-ready.
	for {
		e := h.nextOf(EventNotReady, EventReady)
		if e.Kind == EventReady {
			break
		}
		h.clk.Advance(e.Delay)
	}
	h.next(EventRegistered)
	if got := len(h.reg.Instances("web")); got != 1 {
		t.Fatalf("want the instance visible once ready, got %d", got)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
}

func TestCancelTakesChildOffline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.run()
	h.next(EventRegistered)
	h.cancel()

	var confirmed bool
	for {
		e := h.nextOf(EventDrain, EventSignaled)
		if e.Kind == EventDrain && e.Drain.Kind == drain.EventConfirmed {
			confirmed = true
		}
		if e.Kind == EventSignaled {
			if e.Signal != syscall.SIGTERM {
				t.Fatalf("want SIGTERM first, got %v", e.Signal)
			}
			if !confirmed || e.visible != 0 {
				t.Fatalf("want SIGTERM after deregistration is confirmed, got confirmed=%v visible=%d; events: %s", confirmed, e.visible, h.history())
			}
			break
		}
	}
	ex := h.next(EventExited)
	if ex.Code != 0 || ex.Err != nil {
		t.Fatalf("want a clean exit after SIGTERM, got code %d signal %v err %v", ex.Code, ex.Signal, ex.Err)
	}
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run, got %v", err)
	}
	out := h.out.String()
	for _, want := range []string{"[web] listening on ", "[web] partial line without newline\n", "[web] got SIGTERM\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q in the output, got %q", want, out)
		}
	}
}

func TestSIGTERMWaitsForIdleConnections(t *testing.T) {
	t.Parallel()
	var closed, early atomic.Bool
	h := newHarness(t, harnessOpts{
		onEvent: func(e Event) {
			if e.Kind == EventSignaled && !closed.Load() {
				early.Store(true)
			}
		},
	})
	h.run()
	h.next(EventRegistered)
	conn, err := net.Dial("tcp", h.inst.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	h.cancel()
	for {
		e := h.nextOf(EventDrain, EventSignaled)
		if e.Kind == EventSignaled {
			t.Fatalf("want no signal while a connection is open; events: %s", h.history())
		}
		// The connections' quiet window runs in Draining, before SIGTERM.
		if e.Drain.Kind == drain.EventPhase && e.Drain.Phase == drain.Draining {
			break
		}
	}
	closed.Store(true)
	conn.Close()
	if e := h.next(EventSignaled); e.Signal != syscall.SIGTERM || early.Load() {
		t.Fatalf("want SIGTERM only after the connection closed, got %v (early %v)", e.Signal, early.Load())
	}
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run, got %v", err)
	}
	for _, e := range h.drainEvents() {
		if e.Kind == EventConnsBusy {
			t.Fatalf("want no conns-busy report, got %v", e.Err)
		}
	}
}

func TestIgnoredSIGTERMGetsSIGKILLAtDeadline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{
		mode: "ignore-term",
		supervisorO: []Option{
			WithBudget(1500 * time.Millisecond),
			WithDrainOptions(drain.WithQuietWindow(10 * time.Millisecond)),
		},
	})
	h.run()
	h.next(EventRegistered)
	h.cancel()
	if e := h.next(EventSignaled); e.Signal != syscall.SIGTERM {
		t.Fatalf("want SIGTERM first, got %v", e.Signal)
	}
	if e := h.next(EventSignaled); e.Signal != syscall.SIGKILL {
		t.Fatalf("want SIGKILL at the deadline, got %v", e.Signal)
	}
	err := h.result()
	var pe *drain.PhaseError
	if !errors.As(err, &pe) || pe.Phase != drain.Stopping || !errors.Is(err, drain.ErrDeadline) {
		t.Fatalf("want a *drain.PhaseError for Stopping wrapping ErrDeadline, got %v", err)
	}
	if !strings.Contains(err.Error(), "did not exit after SIGTERM") {
		t.Fatalf("want the error to say the child ignored SIGTERM, got %v", err)
	}
}

func TestExitZeroIsDone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.run()
	h.next(EventRegistered)
	h.get("/exit0")
	if ex := h.next(EventExited); ex.Code != 0 || ex.Err != nil {
		t.Fatalf("want exit 0 without error, got code %d err %v", ex.Code, ex.Err)
	}
	h.next(EventDeregistered)
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run after the child exited 0, got %v", err)
	}
	for _, e := range h.drainEvents() {
		if e.Kind == EventBackoff || e.Kind == EventStarted {
			t.Fatalf("want no restart after exit 0, got %v", e.Kind)
		}
	}
	if got := len(h.reg.Instances("web")); got != 0 {
		t.Fatalf("want no instance after exit 0, got %d", got)
	}
}

func TestCancelBeforeReady(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{
		noAdvance: true,
		ready: func(*harness) probe.Check {
			return func(context.Context, int) error { return errors.New("never") }
		},
	})
	h.run()
	h.next(EventStarted)
	h.next(EventNotReady)
	h.cancel()
	if e := h.next(EventSignaled); e.Signal != syscall.SIGTERM {
		t.Fatalf("want SIGTERM, got %v", e.Signal)
	}
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run, got %v", err)
	}
	for _, e := range h.drainEvents() {
		if e.Kind == EventRegistered {
			t.Fatal("registered a child that never became ready")
		}
	}
}

func TestLivenessFailureKillsAndRestarts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{
		supervisorO: []Option{WithLiveness(time.Second, 2), WithCheckTimeout(time.Second)},
	})
	h.sup.spec.Live = probe.HTTP(h.url + "/healthz")
	h.run()
	first := h.next(EventStarted)
	last := h.next(EventReady) // liveness checks begin once a copy is ready
	h.next(EventRegistered)
	h.get("/hang")
	for k := 1; k <= 2; k++ {
		h.armed(last) // the liveness interval's timer
		check := h.clk.TimerAdded()
		h.clk.Advance(time.Second)
		select {
		case <-check: // the check's timeout is armed, the check hangs
		case <-time.After(wait):
			t.Fatalf("want a check timeout timer, got none; events: %s", h.history())
		}
		h.clk.Advance(time.Second)
		last = h.next(EventUnhealthy)
		if int(last.Failures) != k {
			t.Fatalf("want %d failures in a row, got %g", k, last.Failures)
		}
	}
	if e := h.next(EventDeregistered); e.Err != nil {
		t.Fatalf("want a clean deregistration, got %v", e.Err)
	}
	if e := h.next(EventSignaled); e.Signal != syscall.SIGKILL || e.visible != 0 {
		t.Fatalf("want SIGKILL after deregistration, got %v with %d visible", e.Signal, e.visible)
	}
	ex := h.next(EventExited)
	if ex.Signal != syscall.SIGKILL || ex.PID != first.PID {
		t.Fatalf("want pid %d killed by SIGKILL, got pid %d signal %v", first.PID, ex.PID, ex.Signal)
	}
	bo := h.next(EventBackoff)
	h.clk.Advance(bo.Delay)
	h.next(EventRestarted)
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	inst := registry.Instance{Service: "web", Address: "127.0.0.1", Port: 8080}
	ok := func(context.Context, int) error { return nil }
	tests := []struct {
		name string
		spec Spec
		opts []Option
		want string
	}{
		{"no path", Spec{}, nil, "Spec.Path is empty"},
		{"registries without ready", Spec{Path: "x", Instance: inst, Registries: []registry.Registry{registry.Multi{}}}, nil, "Spec.Ready is nil"},
		{"bad instance", Spec{Path: "x", Ready: ok, Registries: []registry.Registry{registry.Multi{}}}, nil, "empty service name"},
		{"nil registry", Spec{Path: "x", Ready: ok, Instance: inst, Registries: []registry.Registry{nil}}, nil, "nil registry"},
		{"bad intensity", Spec{Path: "x"}, []Option{WithRestartIntensity(-1, time.Second)}, "must be positive"},
		{"grace over budget", Spec{Path: "x"}, []Option{WithBudget(time.Second), WithStopGrace(2 * time.Second)}, "stop grace"},
		{"standby without port", Spec{Path: "x"}, []Option{WithStandby()}, "set Spec.StandbyPort"},
		{"recycle without port", Spec{Path: "x", Instance: inst}, []Option{WithRecycle(time.Hour, 0)}, "set Spec.StandbyPort"},
		{"standby port is the port", Spec{Path: "x", Instance: inst, StandbyPort: 8080}, []Option{WithStandby()}, "port of its own"},
		{"standby port without port", Spec{Path: "x", StandbyPort: 8081}, nil, "needs Spec.Instance.Port"},
		{"standby port out of range", Spec{Path: "x", Instance: inst, StandbyPort: 70000}, nil, "not a port"},
		{"drain budget too small", Spec{Path: "x"}, []Option{WithBudget(time.Second), WithDrainOptions(drain.WithQuietWindow(time.Hour))}, "offline protocol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.spec, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
		})
	}
}

// The child inherits the supervisor's environment but for Spec.DropEnv,
// and gets Spec.Env and its port on top.
func TestChildEnvironment(t *testing.T) {
	// Not parallel: it sets environment variables.
	t.Setenv("SUPERVISOR_TEST_SECRET", "s3cret")
	t.Setenv("SUPERVISOR_TEST_TOKEN", "t0ken")
	t.Setenv("SUPERVISOR_TEST_KEPT", "kept")
	envFile := filepath.Join(t.TempDir(), "env")
	h := newHarness(t, harnessOpts{
		args: []string{"-env-out=" + envFile},
		spec: func(s *Spec) {
			s.DropEnv = []string{"SUPERVISOR_TEST_SECRET", "SUPERVISOR_TEST_TOKEN"}
			s.Env = []string{"SUPERVISOR_TEST_TOKEN=given"}
		},
	})
	h.run()
	h.next(EventRegistered)
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, want := range []string{"SUPERVISOR_TEST_KEPT=kept", "SUPERVISOR_TEST_TOKEN=given", "PORT=" + strconv.Itoa(h.inst.Port), "PATH=" + os.Getenv("PATH")} {
		if !slices.Contains(env, want) {
			t.Errorf("want %s in the child's environment, got %q", want, env)
		}
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "SUPERVISOR_TEST_SECRET=") || kv == "SUPERVISOR_TEST_TOKEN=t0ken" {
			t.Errorf("want %s kept from the child, got it in its environment", kv)
		}
	}
}

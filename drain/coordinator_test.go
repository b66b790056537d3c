package drain

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

var testInstance = registry.Instance{Service: "orders", Address: "10.0.0.7", Port: 8080}

var (
	errUnreachable = errors.New("fake: registry unreachable")
	errRefused     = fmt.Errorf("%w: fake: 403 Forbidden", registry.ErrRejected)
)

// faultMode is how a fakeRegistry misbehaves.
type faultMode int

const (
	faultNone             faultMode = iota
	faultRefuses                    // Deregister answers 403 (registry.ErrRejected)
	faultHangs                      // Deregister blocks until its context ends
	faultDiesAfterRemoval           // the removal lands, then nothing answers: the watch fails
)

// fakeRegistry lists testInstance until it is deregistered, and its watch
// drops the instance dropAfter later on its clock, the way a real registry
// pushes a change to consumers some time after it happened.
type fakeRegistry struct {
	name      string
	clk       clock.Clock
	dropAfter time.Duration
	failFirst int // Deregister fails this many times before it works; -1: always
	// fault, when set, is how the registry misbehaves (see faultMode).
	fault faultMode

	mu      sync.Mutex
	dead    bool // faultDiesAfterRemoval struck
	listed  bool
	calls   int
	changed chan struct{} // closed and replaced whenever listed changes
}

var _ registry.Registry = (*fakeRegistry)(nil)

func newFakeRegistry(name string, clk clock.Clock, dropAfter time.Duration) *fakeRegistry {
	return &fakeRegistry{name: name, clk: clk, dropAfter: dropAfter, listed: true, changed: make(chan struct{})}
}

func (r *fakeRegistry) String() string { return r.name }

func (r *fakeRegistry) Register(ctx context.Context, _ registry.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setLocked(true)
	return nil
}

func (r *fakeRegistry) Deregister(ctx context.Context, _ registry.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch r.fault {
	case faultRefuses:
		return errRefused
	case faultHangs:
		<-ctx.Done()
		return ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.failFirst < 0 || r.calls <= r.failFirst {
		return errUnreachable
	}
	if r.fault == faultDiesAfterRemoval {
		r.dead = true // the removal landed; nothing answers from now on
		close(r.changed)
		r.changed = make(chan struct{})
		return nil
	}
	if r.dropAfter == 0 {
		r.setLocked(false)
		return nil
	}
	r.clk.AfterFunc(r.dropAfter, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.setLocked(false)
	})
	return nil
}

func (r *fakeRegistry) setLocked(listed bool) {
	if r.listed != listed {
		r.listed = listed
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

func (r *fakeRegistry) Watch(ctx context.Context, _ string) (registry.Watcher, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	dead := r.dead
	r.mu.Unlock()
	if dead {
		return nil, errUnreachable
	}
	return &fakeWatcher{r: r, stopped: make(chan struct{})}, nil
}

type fakeWatcher struct {
	r       *fakeRegistry
	sent    bool
	last    bool
	stopped chan struct{}
	once    sync.Once
}

func (w *fakeWatcher) Next(ctx context.Context) ([]registry.Instance, error) {
	for {
		w.r.mu.Lock()
		listed, changed, dead := w.r.listed, w.r.changed, w.r.dead
		w.r.mu.Unlock()
		if dead {
			return nil, errUnreachable
		}
		if !w.sent || listed != w.last {
			w.sent, w.last = true, listed
			if listed {
				return []registry.Instance{testInstance}, nil
			}
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w.stopped:
			return nil, context.Canceled
		case <-changed:
		}
	}
}

func (w *fakeWatcher) Stop() error {
	w.once.Do(func() { close(w.stopped) })
	return nil
}

// recorded is an Event with a channel, subscribed as the event was
// emitted, that closes at the next timer made on the fake clock.
type recorded struct {
	Event
	timerAdded <-chan struct{}
}

// harness runs a Coordinator on a fake clock and records its events.
type harness struct {
	c    *Coordinator
	tr   *Tracker
	f    *clock.Fake
	ev   chan recorded
	seen []Event // every event read so far, in order
}

func newHarness(t *testing.T, f *clock.Fake, opts ...Option) *harness {
	t.Helper()
	h := &harness{tr: &Tracker{clock: f}, f: f, ev: make(chan recorded, 4096)}
	hook := WithEventHook(func(e Event) { h.ev <- recorded{Event: e, timerAdded: f.TimerAdded()} })
	c, err := New(h.tr, append([]Option{withClock(f), hook}, opts...)...)
	if err != nil {
		t.Fatalf("New: want nil error, got %v", err)
	}
	h.c = c
	t.Cleanup(func() {
		c.Force()
		select {
		case <-c.Done():
		case <-time.After(waitLong):
			t.Errorf("cleanup: want the protocol to end within %v of Force, got phase %v", waitLong, c.Phase())
		}
	})
	return h
}

func (h *harness) next(t *testing.T, what string) recorded {
	t.Helper()
	e := recv(t, h.ev, what)
	h.seen = append(h.seen, e.Event)
	return e
}

// until reads events up to and including the first that match accepts.
func (h *harness) until(t *testing.T, what string, match func(Event) bool) recorded {
	t.Helper()
	for {
		if e := h.next(t, what); match(e.Event) {
			return e
		}
	}
}

// wait waits for the protocol to finish, then reads the events left, all of
// which were emitted before it finished.
func (h *harness) wait(t *testing.T) (Report, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	rep, err := h.c.Wait(ctx)
	if ctx.Err() != nil {
		t.Fatalf("want the protocol to finish within %v, got phase %v", waitLong, h.c.Phase())
	}
	for {
		select {
		case e := <-h.ev:
			h.seen = append(h.seen, e.Event)
		default:
			return rep, err
		}
	}
}

func isPhase(p Phase) func(Event) bool {
	return func(e Event) bool { return e.Kind == EventPhase && e.Phase == p }
}

func isKind(k EventKind) func(Event) bool {
	return func(e Event) bool { return e.Kind == k }
}

func phasesOf(events []Event) []Phase {
	var out []Phase
	for _, e := range events {
		if e.Kind == EventPhase {
			out = append(out, e.Phase)
		}
	}
	return out
}

var allPhases = []Phase{Deregistering, Confirming, Draining, Stopping, Offline}

// cutPhases returns the phase of every *PhaseError in err's tree, checking
// that each wraps want.
func cutPhases(t *testing.T, err error, want error) []Phase {
	t.Helper()
	var out []Phase
	var walk func(error)
	walk = func(err error) {
		var pe *PhaseError
		switch x := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				walk(e)
			}
		default:
			if errors.As(err, &pe) {
				if !errors.Is(pe, want) {
					t.Fatalf("want every *PhaseError to wrap %v, got %v", want, pe)
				}
				out = append(out, pe.Phase)
			}
		}
	}
	walk(err)
	return out
}

// registryErrors returns every *registry.Error in err's tree.
func registryErrors(err error) []*registry.Error {
	var out []*registry.Error
	var walk func(error)
	walk = func(err error) {
		var re *registry.Error
		switch x := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				walk(e)
			}
		default:
			if errors.As(err, &re) {
				out = append(out, re)
			}
		}
	}
	walk(err)
	return out
}

func TestCoordinatorPhasesInOrder(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	reg := newFakeRegistry("fake://a", f, 0)
	const quiet = 100 * time.Millisecond
	var mu sync.Mutex
	var stopped []string
	hook := func(name string) func(context.Context) error {
		return func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			stopped = append(stopped, name)
			return nil
		}
	}
	h := newHarness(t, f,
		WithRegistries(reg), WithInstance(testInstance),
		WithBudget(10*time.Second), WithStopReserve(2*time.Second), WithQuietWindow(quiet),
		WithStopHook("server", hook("server")), WithStopHook("db", hook("db")))
	if p := h.c.Phase(); p != Serving {
		t.Fatalf("before Start: want phase %v, got %v", Serving, p)
	}
	h.c.Start()
	h.until(t, "phase Draining", isPhase(Draining))
	waitPending(t, f, 3) // the registries' deadline, the drain's deadline, the quiet window
	f.Advance(quiet - time.Nanosecond)
	notYet(t, h.c.Done(), "Offline before the quiet window passed")
	f.Advance(time.Nanosecond)
	rep, err := h.wait(t)
	if err != nil {
		t.Fatalf("want nil error, got %v", err)
	}

	type step struct {
		Kind  EventKind
		Phase Phase
		Name  string
	}
	// A registry is confirmed as soon as its own removal succeeded, so its
	// confirmation may come before or after the phase moves to Confirming
	// (which waits for every removal); it must come after its removal.
	var got []step
	confirmedAt, deregisteredAt := -1, -1
	for _, e := range h.seen {
		switch e.Kind {
		case EventConfirmed:
			confirmedAt = len(got)
			continue
		case EventDeregistered:
			deregisteredAt = len(got)
		}
		got = append(got, step{e.Kind, e.Phase, e.Registry + e.Hook + e.Source})
	}
	if deregisteredAt < 0 || confirmedAt <= deregisteredAt {
		t.Fatalf("want a confirmation after the removal, got removal at %d, confirmation at %d in %+v", deregisteredAt, confirmedAt, h.seen)
	}
	want := []step{
		{EventPhase, Deregistering, ""},
		{EventDeregistered, Deregistering, "fake://a"},
		{EventPhase, Confirming, ""},
		{EventPhase, Draining, ""},
		{EventSource, Draining, "in-process requests"},
		{EventPhase, Stopping, ""},
		{EventStopHook, Stopping, "db"},
		{EventStopHook, Stopping, "server"},
		{EventPhase, Offline, ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\nwant %+v\ngot  %+v", want, got)
	}
	if want := []string{"db", "server"}; !slices.Equal(stopped, want) {
		t.Fatalf("stop hooks: want %v, got %v", want, stopped)
	}

	wantSpans := []PhaseSpan{
		{Deregistering, t0, 0},
		{Confirming, t0, 0},
		{Draining, t0, quiet},
		{Stopping, t0.Add(quiet), 0},
		{Offline, t0.Add(quiet), 0},
	}
	if !reflect.DeepEqual(rep.Phases, wantSpans) {
		t.Fatalf("report phases:\nwant %+v\ngot  %+v", wantSpans, rep.Phases)
	}
	if rep.Duration != quiet || !rep.Started.Equal(t0) {
		t.Fatalf("want report started %v lasting %v, got %v lasting %v", t0, quiet, rep.Started, rep.Duration)
	}
	if len(rep.Registries) != 1 || rep.Registries[0].State != "confirmed" || rep.Registries[0].Attempts != 1 {
		t.Fatalf("want one registry confirmed after 1 attempt, got %+v", rep.Registries)
	}
	if p := h.c.Phase(); p != Offline || !isClosed(h.c.Done()) {
		t.Fatalf("want phase Offline and Done closed, got %v and %v", p, isClosed(h.c.Done()))
	}
}

func TestCoordinatorStopHooks(t *testing.T) {
	t.Parallel()
	errSecond := errors.New("second failed")
	var mu sync.Mutex
	var ran []string
	hook := func(name string, do func() error) Option {
		return WithStopHook(name, func(context.Context) error {
			mu.Lock()
			ran = append(ran, name)
			mu.Unlock()
			return do()
		})
	}
	h := newHarness(t, clock.NewFake(t0), WithQuietWindow(0),
		hook("first", func() error { return nil }),
		hook("second", func() error { return errSecond }),
		hook("third", func() error { panic("boom") }),
		hook("fourth", func() error { return nil }))
	h.c.Start()
	_, err := h.wait(t)

	if want := []string{"fourth", "third", "second", "first"}; !slices.Equal(ran, want) {
		t.Fatalf("hooks ran: want %v (reverse order, all of them), got %v", want, ran)
	}
	if !errors.Is(err, errSecond) {
		t.Fatalf("want an error wrapping %q, got %v", errSecond, err)
	}
	if want := `drain: stop hook "third": panicked: boom`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("want an error containing %q, got %v", want, err)
	}
	if j, ok := err.(interface{ Unwrap() []error }); !ok || len(j.Unwrap()) != 2 {
		t.Fatalf("want 2 joined errors (second and third), got %v", err)
	}
	var hooks []string
	for _, e := range h.seen {
		if e.Kind == EventStopHook {
			hooks = append(hooks, fmt.Sprintf("%s:%v", e.Hook, e.Err != nil))
		}
	}
	if want := []string{"fourth:false", "third:true", "second:true", "first:false"}; !slices.Equal(hooks, want) {
		t.Fatalf("stop-hook events (name:failed): want %v, got %v", want, hooks)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	t.Parallel()
	reg := newFakeRegistry("fake://plain", nil, 0) // not a registry.Disabler
	tests := []struct {
		name       string
		nilTracker bool
		opts       []Option
		want       string // the error starts with "drain:" and contains this
	}{
		{name: "nil tracker", nilTracker: true, want: "needs a *Tracker"},
		{name: "budget below stop reserve", opts: []Option{WithBudget(time.Second), WithStopReserve(2 * time.Second)}, want: "budget 1s is less than"},
		{name: "budget below quiet window and min wait", opts: []Option{WithBudget(time.Second), WithQuietWindow(600 * time.Millisecond), WithMinWait(600 * time.Millisecond)}, want: "budget 1s is less than"},
		{name: "negative budget", opts: []Option{WithBudget(-time.Second)}, want: "negative"},
		{name: "negative quiet window", opts: []Option{WithQuietWindow(-time.Second)}, want: "must not be negative"},
		{name: "registries without instance", opts: []Option{WithRegistries(reg)}, want: "WithInstance"},
		{name: "nil registry", opts: []Option{WithRegistries(nil), WithInstance(testInstance)}, want: "nil registry"},
		{name: "disable on a registry that cannot", opts: []Option{WithRegistries(reg), WithInstance(testInstance), WithDisable()}, want: "fake://plain cannot disable"},
		{name: "nil stop hook", opts: []Option{WithStopHook("server", nil)}, want: `"server" has a nil function`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := new(Tracker)
			if tc.nilTracker {
				tr = nil
			}
			c, err := newNoPanic(tr, tc.opts...)
			if err == nil || c != nil {
				t.Fatalf("want nil Coordinator and an error containing %q, got %v and %v", tc.want, c, err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "drain: ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("want an error starting with \"drain: \" and containing %q, got %q", tc.want, msg)
			}
		})
	}

	// An invalid instance is reported by registry.Instance.Validate.
	invalid := []struct {
		name string
		inst registry.Instance
		want string
	}{
		{name: "empty service", inst: registry.Instance{Address: "10.0.0.7", Port: 8080}, want: "empty service name"},
		{name: "port 70000", inst: registry.Instance{Service: "orders", Address: "10.0.0.7", Port: 70000}, want: "port 70000"},
	}
	for _, tc := range invalid {
		t.Run("invalid instance: "+tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := newNoPanic(new(Tracker), WithRegistries(reg), WithInstance(tc.inst))
			if err == nil || c != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want nil Coordinator and an error containing %q, got %v and %v", tc.want, c, err)
			}
		})
	}
}

// newNoPanic is New with a panic turned into an error, so that a table
// case that panics fails alone.
func newNoPanic(t *Tracker, opts ...Option) (c *Coordinator, err error) {
	defer func() {
		if p := recover(); p != nil {
			c, err = nil, fmt.Errorf("want no panic, got panic: %v", p)
		}
	}()
	return New(t, opts...)
}

func TestCoordinatorRetriesFlakyRegistry(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	reg := newFakeRegistry("fake://flaky", f, 0)
	reg.failFirst = 3
	h := newHarness(t, f, WithRegistries(reg), WithInstance(testInstance), WithQuietWindow(0),
		withBackoff(backoff.Policy{Initial: 100 * time.Millisecond, Max: time.Second}))
	h.c.Start()
	var waited time.Duration
	for k := range reg.failFirst {
		e := h.until(t, fmt.Sprintf("retry %d", k+1), isKind(EventRetry))
		if e.Registry != "fake://flaky" || !errors.Is(e.Err, errUnreachable) {
			t.Fatalf("retry %d: want registry fake://flaky and error %v, got %q and %v", k+1, errUnreachable, e.Registry, e.Err)
		}
		// ±20% jitter around 100ms, 200ms, 400ms.
		base := 100 * time.Millisecond << k
		if lo, hi := base*8/10, base*12/10; e.Delay < lo || e.Delay > hi {
			t.Fatalf("retry %d: want a delay in [%v, %v], got %v", k+1, lo, hi, e.Delay)
		}
		recv(t, e.timerAdded, "the retry's timer")
		f.Advance(e.Delay - time.Nanosecond)
		notYet(t, h.ev, "event before the retry delay passed")
		f.Advance(time.Nanosecond)
		waited += e.Delay
	}
	rep, err := h.wait(t)
	if err != nil {
		t.Fatalf("want nil error after the registry recovered, got %v", err)
	}
	if phases := phasesOf(h.seen); !slices.Equal(phases, allPhases) {
		t.Fatalf("want phases %v, got %v", allPhases, phases)
	}
	st := rep.Registries[0]
	if st.Attempts != reg.failFirst+1 || st.State != "confirmed" || st.Error != "" {
		t.Fatalf("want %d attempts, state confirmed, no error, got %+v", reg.failFirst+1, st)
	}
	if rep.Duration != waited {
		t.Fatalf("want the report to last the %v of backoff, got %v", waited, rep.Duration)
	}
}

func TestCoordinatorUnreachableRegistry(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	errOutage := errors.New("connection refused")
	up, err := memory.New(memory.WithName("memory://up"))
	if err != nil {
		t.Fatal(err)
	}
	down, err := memory.New(memory.WithName("memory://down"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*memory.Registry{up, down} {
		if err := r.Register(ctx, testInstance); err != nil {
			t.Fatalf("Register on %s: want nil, got %v", r, err)
		}
	}
	down.SetFault(errOutage)

	const (
		budget      = 5 * time.Second
		stopReserve = time.Second
		// The registries' share: half of what the stop reserve leaves,
		// the drain keeping the other half.
		regBudget = (budget - stopReserve) / 2
	)
	f := clock.NewFake(t0)
	h := newHarness(t, f, WithRegistries(up, down), WithInstance(testInstance),
		WithBudget(budget), WithStopReserve(stopReserve), WithQuietWindow(0),
		withBackoff(backoff.Policy{Initial: 200 * time.Millisecond, Max: time.Second}))
	h.c.Start()
	retries := 0
	// Time moves only once memory://up is done with: confirmed, not only
	// deregistered, or the deadline could cut its confirmation short.
	upDone := false
	var retry *recorded
	for done := false; !done; {
		e := h.next(t, "an event while memory://down is retried")
		switch {
		case e.Kind == EventConfirmed && e.Registry == "memory://up":
			upDone = true
		case e.Kind == EventRetry:
			retries++
			retry = &e
		case e.Kind == EventGaveUp:
			if e.Registry != "memory://down" || !errors.Is(e.Err, errOutage) {
				t.Fatalf("give-up: want registry memory://down and error %v, got %q and %v", errOutage, e.Registry, e.Err)
			}
			done = true
		}
		if retry != nil && upDone && !done {
			recv(t, retry.timerAdded, "the retry's timer")
			// Never step past the registries' deadline, so the retry
			// that is due after it cannot race with it.
			f.Advance(min(retry.Delay, t0.Add(regBudget).Sub(f.Now())))
			retry = nil
		}
	}
	rep, err := h.wait(t)

	if retries < 3 {
		t.Fatalf("want at least 3 retries in %v, got %d", regBudget, retries)
	}
	res := registryErrors(err)
	// The call that failed names itself: the watch opened before the
	// removal, here, since the outage fails every call.
	if len(res) != 1 || res[0].Registry != "memory://down" || (res[0].Op != "watch" && res[0].Op != "deregister") {
		t.Fatalf("want one *registry.Error for the watch or the removal on memory://down, got %v (error %v)", res, err)
	}
	if !errors.Is(err, errOutage) {
		t.Fatalf("want the error to wrap the registry's own error %v, got %v", errOutage, err)
	}
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Phase != Deregistering || !errors.Is(pe, ErrDeadline) {
		t.Fatalf("want a *PhaseError for %v wrapping ErrDeadline, got %v", Deregistering, err)
	}
	if phases := phasesOf(h.seen); !slices.Equal(phases, allPhases) {
		t.Fatalf("want every phase despite the outage, %v, got %v", allPhases, phases)
	}
	if !h.tr.IsDraining() {
		t.Fatalf("want the tracker draining, got not draining")
	}
	if rep.Duration != regBudget || rep.Duration > budget {
		t.Fatalf("want Offline at %v, inside the %v budget, got %v", regBudget, budget, rep.Duration)
	}
	byName := map[string]RegistryStatus{}
	for _, st := range rep.Registries {
		byName[st.Name] = st
	}
	// Each retry followed an attempt; the wait after the last one was cut.
	if st := byName["memory://down"]; st.State != "failed" || st.Attempts != retries || !strings.Contains(st.Error, errOutage.Error()) {
		t.Fatalf("memory://down: want state failed after %d attempts with error %q, got %+v", retries, errOutage, st)
	}
	if st := byName["memory://up"]; st.Error != "" || (st.State != "deregistered" && st.State != "confirmed") {
		t.Fatalf("memory://up: want deregistered or confirmed without error, got %+v", st)
	}
	if got := up.Instances(testInstance.Service); len(got) != 0 {
		t.Fatalf("memory://up: want no instances left, got %v", got)
	}
	if got := down.Instances(testInstance.Service); len(got) != 1 {
		t.Fatalf("memory://down: want the instance still registered, got %v", got)
	}
}

func TestCoordinatorDrainDeadline(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	const stopAt = 8 * time.Second // budget 10s - stop reserve 2s
	h := newHarness(t, f, WithBudget(10*time.Second), WithStopReserve(2*time.Second))
	r := h.tr.Begin()
	defer r.End()
	h.c.Start()
	h.until(t, "phase Draining", isPhase(Draining))
	waitPending(t, f, 2) // the registries' deadline and the drain's
	f.Advance(stopAt - time.Nanosecond)
	notYet(t, h.c.Done(), "Offline before the drain deadline")
	f.Advance(time.Nanosecond)
	rep, err := h.wait(t)

	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Phase != Draining || pe.InFlight != 1 {
		t.Fatalf("want a *PhaseError for %v with 1 in flight, got %v", Draining, err)
	}
	if !errors.Is(err, ErrDeadline) || errors.Is(err, ErrForced) {
		t.Fatalf("want an error wrapping ErrDeadline and not ErrForced, got %v", err)
	}
	if rep.Duration != stopAt {
		t.Fatalf("want the report to last %v, got %v", stopAt, rep.Duration)
	}
	if phases := phasesOf(h.seen); !slices.Equal(phases, allPhases) {
		t.Fatalf("want phases %v, got %v", allPhases, phases)
	}
}

func TestCoordinatorForce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		force   func(t *testing.T, c *Coordinator)
		wantCut []Phase
	}{
		{
			name:    "during Draining",
			wantCut: []Phase{Draining, Stopping},
			force: func(t *testing.T, c *Coordinator) {
				c.Start()
				if err := c.WaitPhase(t.Context(), Draining); err != nil {
					t.Fatalf("WaitPhase(Draining): want nil, got %v", err)
				}
				c.Force()
			},
		},
		{
			// Force cancels at once, so the protocol starts forced; with no
			// registry there is no registry phase to cut.
			name:    "before Start",
			force:   func(_ *testing.T, c *Coordinator) { c.Force() },
			wantCut: []Phase{Draining, Stopping},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hookCtx := make(chan context.Context, 1)
			h := newHarness(t, clock.NewFake(t0), WithStopHook("server", func(ctx context.Context) error {
				hookCtx <- ctx
				return nil
			}))
			r := h.tr.Begin()
			defer r.End()
			tc.force(t, h.c)
			rep, err := h.wait(t)

			if !errors.Is(err, ErrForced) || errors.Is(err, ErrDeadline) {
				t.Fatalf("want an error wrapping ErrForced and not ErrDeadline, got %v", err)
			}
			cut := cutPhases(t, err, ErrForced)
			if !slices.Equal(cut, tc.wantCut) {
				t.Fatalf("want phases %v cut short, got %v (error %v)", tc.wantCut, cut, err)
			}
			if pe := new(PhaseError); !errors.As(err, &pe) || pe.InFlight != 1 {
				t.Fatalf("want a *PhaseError with 1 in flight, got %v", err)
			}
			ctx := recv(t, hookCtx, "the stop hook's call")
			if ctx.Err() == nil || !errors.Is(context.Cause(ctx), ErrForced) {
				t.Fatalf("stop hook: want an ended ctx with cause ErrForced, got err %v cause %v", ctx.Err(), context.Cause(ctx))
			}
			if rep.Duration != 0 {
				t.Fatalf("want a forced stop to take no clock time, got %v", rep.Duration)
			}
			if phases := phasesOf(h.seen); !slices.Equal(phases, allPhases) {
				t.Fatalf("want phases %v, got %v", allPhases, phases)
			}
		})
	}
}

func TestCoordinatorWaitPhase(t *testing.T) {
	t.Parallel()
	t.Run("returns when the phase is reached", func(t *testing.T) {
		t.Parallel()
		f := clock.NewFake(t0)
		h := newHarness(t, f, WithQuietWindow(0))
		r := h.tr.Begin()
		stopping := make(chan error, 1)
		go func() { stopping <- h.c.WaitPhase(t.Context(), Stopping) }()
		h.c.Start()
		ctx, cancel := context.WithTimeout(t.Context(), waitLong)
		defer cancel()
		if err := h.c.WaitPhase(ctx, Draining); err != nil {
			t.Fatalf("WaitPhase(Draining): want nil, got %v", err)
		}
		if p := h.c.Phase(); p != Draining {
			t.Fatalf("after WaitPhase(Draining) with a request in flight: want phase %v, got %v", Draining, p)
		}
		notYet(t, stopping, "WaitPhase(Stopping) return with a request in flight")
		st := h.c.Status()
		if st.Phase != Draining || st.InFlight != 1 || !st.Draining || !st.Deadline.Equal(t0.Add(DefaultBudget)) {
			t.Fatalf("want Status{Phase:Draining InFlight:1 Draining:true Deadline:%v}, got %+v", t0.Add(DefaultBudget), st)
		}
		_ = r.End()
		if err := recv(t, stopping, "WaitPhase(Stopping) return after the last End"); err != nil {
			t.Fatalf("WaitPhase(Stopping): want nil, got %v", err)
		}
		if err := h.c.WaitPhase(ctx, Draining); err != nil {
			t.Fatalf("WaitPhase of a past phase: want nil at once, got %v", err)
		}
	})
	t.Run("returns ctx.Err when ctx ends", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, clock.NewFake(t0))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- h.c.WaitPhase(ctx, Draining) }()
		notYet(t, done, "WaitPhase return before Start")
		cancel()
		if err := recv(t, done, "WaitPhase return after cancel"); !errors.Is(err, context.Canceled) {
			t.Fatalf("want %v, got %v", context.Canceled, err)
		}
	})
}

func TestCoordinatorOfflineIdempotent(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	h := newHarness(t, clock.NewFake(t0), WithQuietWindow(0), WithStopHook("server", func(context.Context) error {
		runs.Add(1)
		return errors.New("server did not stop")
	}))
	type result struct {
		rep Report
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			rep, err := h.c.Offline(t.Context())
			results <- result{rep, err}
		}()
	}
	a := recv(t, results, "the first Offline's return")
	b := recv(t, results, "the second Offline's return")
	c := result{}
	c.rep, c.err = h.c.Offline(t.Context())
	for _, r := range []result{b, c} {
		if !reflect.DeepEqual(a.rep, r.rep) || a.err != r.err {
			t.Fatalf("want every Offline to return the same report and error\nwant %+v, %v\ngot  %+v, %v", a.rep, a.err, r.rep, r.err)
		}
	}
	if a.err == nil || len(a.rep.Phases) != len(allPhases) {
		t.Fatalf("want the run's hook error and %d phases, got %v and %d", len(allPhases), a.err, len(a.rep.Phases))
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("want the protocol (and its hook) to run once, got %d runs", n)
	}
}

func TestCoordinatorConfirmLatency(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	const fastDrop, slowDrop = 50 * time.Millisecond, 300 * time.Millisecond
	fast := newFakeRegistry("fake://fast", f, fastDrop)
	slow := newFakeRegistry("fake://slow", f, slowDrop)
	h := newHarness(t, f, WithRegistries(fast, slow), WithInstance(testInstance), WithQuietWindow(0))
	h.c.Start()
	h.until(t, "phase Confirming", isPhase(Confirming))
	waitPending(t, f, 3) // the registries' deadline and each registry's drop
	f.Advance(fastDrop)
	e := h.until(t, "the fast registry's confirmation", isKind(EventConfirmed))
	if e.Registry != "fake://fast" || e.Latency != fastDrop {
		t.Fatalf("first confirmation: want fake://fast after %v, got %s after %v", fastDrop, e.Registry, e.Latency)
	}
	notYet(t, h.ev, "event before the slow registry drops the instance")
	f.Advance(slowDrop - fastDrop)
	e = h.until(t, "the slow registry's confirmation", isKind(EventConfirmed))
	if e.Registry != "fake://slow" || e.Latency != slowDrop {
		t.Fatalf("second confirmation: want fake://slow after %v, got %s after %v", slowDrop, e.Registry, e.Latency)
	}
	rep, err := h.wait(t)
	if err != nil {
		t.Fatalf("want nil error, got %v", err)
	}
	want := []struct {
		name string
		lat  time.Duration
	}{{"fake://fast", fastDrop}, {"fake://slow", slowDrop}}
	for k, w := range want {
		st := rep.Registries[k]
		if st.Name != w.name || st.State != "confirmed" || st.ConfirmLatency != w.lat {
			t.Fatalf("registry %d: want %s confirmed after %v, got %+v", k, w.name, w.lat, st)
		}
	}
	if span := rep.Phases[1]; span.Phase != Confirming || span.Duration != slowDrop {
		t.Fatalf("want Confirming to last %v (the slowest registry), got %+v", slowDrop, span)
	}
}

// TestCoordinatorDrainWaitsFor checks each option that holds Draining back:
// the protocol must not leave Draining one nanosecond early.
func TestCoordinatorDrainWaitsFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		opts  []Option
		setup func(tr *Tracker)
		due   time.Duration
	}{
		{name: "quiet window", opts: []Option{WithQuietWindow(400 * time.Millisecond)}, due: 400 * time.Millisecond},
		{name: "min wait", opts: []Option{WithQuietWindow(0), WithMinWait(time.Second)}, due: time.Second},
		{
			name:  "long-lived grace",
			opts:  []Option{WithQuietWindow(0), WithLongLivedGrace(2 * time.Second)},
			setup: func(tr *Tracker) { tr.BeginLongLived() },
			due:   2 * time.Second,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := clock.NewFake(t0)
			h := newHarness(t, f, tc.opts...)
			if tc.setup != nil {
				tc.setup(h.tr)
			}
			h.c.Start()
			h.until(t, "phase Draining", isPhase(Draining))
			waitPending(t, f, 3) // the registries' deadline, the drain's deadline, the condition
			f.Advance(tc.due - time.Nanosecond)
			notYet(t, h.c.Done(), "Offline before the drain condition is due")
			f.Advance(time.Nanosecond)
			rep, err := h.wait(t)
			if err != nil {
				t.Fatalf("want nil error, got %v", err)
			}
			if span := rep.Phases[2]; span.Phase != Draining || span.Duration != tc.due {
				t.Fatalf("want Draining to last %v, got %+v", tc.due, span)
			}
		})
	}
}

func TestCoordinatorWithMemoryRegistry(t *testing.T) {
	t.Parallel()
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprintf("disable=%v", disable), func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			reg, err := memory.New()
			if err != nil {
				t.Fatal(err)
			}
			other := testInstance
			other.Port = 8081
			for _, in := range []registry.Instance{testInstance, other} {
				if err := reg.Register(ctx, in); err != nil {
					t.Fatalf("Register %s: want nil, got %v", in.Endpoint(), err)
				}
			}
			opts := []Option{WithRegistries(reg), WithInstance(testInstance), WithQuietWindow(0)}
			if disable {
				opts = append(opts, WithDisable())
			}
			h := newHarness(t, clock.NewFake(t0), opts...)
			h.c.Start()
			rep, err := h.wait(t)
			if err != nil {
				t.Fatalf("want nil error, got %v", err)
			}
			if st := rep.Registries[0]; st.State != "confirmed" {
				t.Fatalf("want the registry confirmed, got %+v", st)
			}
			if got := reg.Instances(testInstance.Service); len(got) != 1 || !got[0].Same(other) {
				t.Fatalf("want consumers to see only %s, got %v", other.Endpoint(), got)
			}
			// A disabled instance is still registered and can come back; a
			// deregistered one cannot.
			err = reg.Enable(ctx, testInstance)
			if disable != (err == nil) {
				t.Fatalf("Enable after offline: want error %v, got %v", !disable, err)
			}
		})
	}
}

// clustered is a memory registry with one view per server: a live one,
// which is the registry itself, and a dead one that never answers.
type clustered struct {
	*memory.Registry
}

type deadServer struct{}

func (deadServer) String() string { return "memory://dead-server" }
func (deadServer) Watch(context.Context, string) (registry.Watcher, error) {
	return nil, errors.New("connection refused")
}

func (c clustered) Views(context.Context) ([]registry.View, error) {
	return []registry.View{c.Registry, deadServer{}}, nil
}

// A registry that confirms through every server reports each server in
// its status and through EventView; a dead one holds nothing up.
func TestCoordinatorReportsServers(t *testing.T) {
	t.Parallel()
	reg, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(t.Context(), testInstance); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, clock.NewFake(t0), WithRegistries(clustered{reg}), WithInstance(testInstance), WithQuietWindow(0))
	h.c.Start()
	rep, err := h.wait(t)
	if err != nil {
		t.Fatalf("offline with one server dead: want nil error, got %v", err)
	}
	st := rep.Registries[0]
	if st.State != "confirmed" {
		t.Fatalf("want the registry confirmed despite the dead server, got %+v", st)
	}
	want := map[string]string{"memory://": "gone", "memory://dead-server": "down"}
	got := map[string]string{}
	for _, s := range st.Servers {
		got[s.Name] = s.State
	}
	if !maps.Equal(got, want) {
		t.Errorf("servers in the status: want %v, got %+v", want, st.Servers)
	}
	if !slices.ContainsFunc(h.seen, func(e Event) bool {
		return e.Kind == EventView && e.View == "memory://dead-server" && e.ViewKind == registry.ViewDown && e.Err != nil
	}) {
		t.Errorf("want an EventView reporting memory://dead-server down, got events %v", h.seen)
	}
}

package drain

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

var (
	// ErrDeadline is wrapped by a *PhaseError when the budget ran out.
	ErrDeadline = errors.New("budget ran out")
	// ErrForced is wrapped by a *PhaseError when Force cut the protocol short.
	ErrForced = errors.New("stop forced")
)

// PhaseError says which phase was cut short and why (ErrDeadline or
// ErrForced), with what was still in flight at that moment.
type PhaseError struct {
	Phase     Phase
	InFlight  int64
	LongLived int64
	Err       error
}

func (e *PhaseError) Error() string {
	msg := fmt.Sprintf("drain: %s during %s", e.Err, e.Phase)
	if e.Phase == Draining || e.InFlight > 0 || e.LongLived > 0 {
		msg += fmt.Sprintf(" with %d requests in flight and %d long-lived", e.InFlight, e.LongLived)
	}
	if errors.Is(e.Err, ErrDeadline) {
		msg += "; raise the budget or shorten the slowest phase"
	}
	return msg
}

func (e *PhaseError) Unwrap() error { return e.Err }

// RegistryStatus is where the protocol stands with one registry.
type RegistryStatus struct {
	Name           string        `json:"name"`
	State          string        `json:"state"` // registered, deregistering, deregistered, confirmed, failed
	Attempts       int           `json:"attempts"`
	ConfirmLatency time.Duration `json:"confirm_latency_ns"`
	Error          string        `json:"error,omitempty"`
	// Servers is where each server of a clustered registry stands, for a
	// registry that confirms through every server (registry.Viewer).
	Servers []ServerStatus `json:"servers,omitempty"`

	deregisteredAt time.Time
	err            error // what Error says, kept for errors.Is/As
}

// ServerStatus is what one server of a clustered registry last showed
// during the confirmation.
type ServerStatus struct {
	Name  string `json:"name"`
	State string `json:"state"` // the last registry.ViewEventKind: gone, down, up, removed-again
	Error string `json:"error,omitempty"`
}

// PhaseSpan is when a phase started and how long it took.
type PhaseSpan struct {
	Phase    Phase         `json:"phase"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of one run of the protocol.
type Report struct {
	Started    time.Time        `json:"started"`
	Duration   time.Duration    `json:"duration_ns"`
	Phases     []PhaseSpan      `json:"phases"`
	Registries []RegistryStatus `json:"registries"`
	Late       int64            `json:"late"` // requests begun after the flag was set
}

// Status is a snapshot of a Coordinator, for the admin endpoint.
type Status struct {
	Phase      Phase              `json:"phase"`
	Instance   *registry.Instance `json:"instance,omitempty"`
	Stats                         // the tracker's counters
	Registries []RegistryStatus   `json:"registries"`
	Started    time.Time          `json:"started,omitzero"`
	Deadline   time.Time          `json:"deadline,omitzero"`
}

// Coordinator runs the offline protocol for one instance, once. It is safe
// for concurrent use; Start, Offline and Force may be called from anywhere
// (a signal handler, the admin endpoint) any number of times.
type Coordinator struct {
	t *Tracker
	o options

	startOnce sync.Once
	forceOnce sync.Once
	forced    chan struct{}
	done      chan struct{}

	mu       sync.Mutex
	phase    Phase
	phaseCh  chan struct{} // closed and replaced at every phase change
	regs     []RegistryStatus
	started  time.Time
	deadline time.Time
	report   Report
	err      error
}

// New checks the options and returns a Coordinator for t in phase Serving.
// It fails when the budget cannot hold the phases' minimums (quiet window,
// minimum wait and stop reserve), when registries are given without an
// instance, or when WithDisable meets a registry that cannot disable.
func New(t *Tracker, opts ...Option) (*Coordinator, error) {
	if t == nil {
		return nil, errors.New("drain: New needs a *Tracker; pass the one your middleware counts with")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	switch {
	case o.budget < 0:
		return nil, fmt.Errorf("drain: budget %v is negative; use a positive duration such as 30s", o.budget)
	case o.quiet < 0, o.minWait < 0, o.stopReserve < 0, o.longLivedGrace < 0:
		return nil, fmt.Errorf("drain: quiet window %v, min wait %v, stop reserve %v and long-lived grace %v must not be negative",
			o.quiet, o.minWait, o.stopReserve, o.longLivedGrace)
	}
	if need := o.stopReserve + max(o.minWait, 0) + o.quiet; need > o.budget {
		return nil, fmt.Errorf("drain: budget %v is less than the phases' minimums %v (quiet window %v + min wait %v + stop reserve %v); raise the budget or lower one of them",
			o.budget, need, o.quiet, o.minWait, o.stopReserve)
	}
	if len(o.regs) > 0 {
		if !o.hasInstance {
			return nil, errors.New("drain: registries given without an instance; add WithInstance")
		}
		if err := o.inst.Validate(); err != nil {
			return nil, err
		}
	}
	for _, r := range o.regs {
		if r == nil {
			return nil, errors.New("drain: a nil registry was given to WithRegistries")
		}
		if _, ok := r.(registry.Disabler); o.disable && !ok {
			return nil, fmt.Errorf("drain: registry %s cannot disable instances; drop WithDisable to deregister instead", r)
		}
	}
	for _, h := range o.hooks {
		if h.Stop == nil {
			return nil, fmt.Errorf("drain: stop hook %q has a nil function", h.Name)
		}
	}
	c := &Coordinator{
		t:       t,
		o:       o,
		forced:  make(chan struct{}),
		done:    make(chan struct{}),
		phaseCh: make(chan struct{}),
		regs:    make([]RegistryStatus, len(o.regs)),
	}
	for k, r := range o.regs {
		c.regs[k] = RegistryStatus{Name: r.String(), State: "registered"}
	}
	return c, nil
}

// Tracker returns the tracker the coordinator drains.
func (c *Coordinator) Tracker() *Tracker { return c.t }

// Start begins the protocol in the background if it has not begun, and
// returns at once. The budget counts from the first Start.
func (c *Coordinator) Start() {
	c.startOnce.Do(func() {
		now := c.o.clock.Now()
		c.mu.Lock()
		c.started, c.deadline = now, now.Add(c.o.budget)
		c.mu.Unlock()
		go c.run(now)
	})
}

// Offline starts the protocol if needed and waits for it to finish. A ctx
// that ends stops the waiting, not the protocol.
func (c *Coordinator) Offline(ctx context.Context) (Report, error) {
	c.Start()
	return c.Wait(ctx)
}

// Wait blocks until the protocol has finished (or ctx ends) and returns its
// report and error. The error is nil for a clean offline; otherwise it joins
// *registry.Error values for registries that could not be handled, a
// *PhaseError for a phase cut short, and stop hook errors.
func (c *Coordinator) Wait(ctx context.Context) (Report, error) {
	select {
	case <-ctx.Done():
		return Report{}, ctx.Err()
	case <-c.done:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.report, c.err
}

// Done is closed when the protocol has reached Offline.
func (c *Coordinator) Done() <-chan struct{} { return c.done }

// Force cuts the protocol short: waiting phases end at once and the stop
// hooks run with an already-ended context. It starts the protocol if it has
// not started. Use it for a second SIGTERM.
func (c *Coordinator) Force() {
	c.forceOnce.Do(func() { close(c.forced) })
	c.Start()
}

// Phase returns the current phase.
func (c *Coordinator) Phase() Phase {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.phase
}

// WaitPhase blocks until the protocol has reached p or a later phase, or ctx
// ends (then it returns ctx.Err()).
func (c *Coordinator) WaitPhase(ctx context.Context, p Phase) error {
	for {
		c.mu.Lock()
		cur, ch := c.phase, c.phaseCh
		c.mu.Unlock()
		if cur >= p {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Status returns a snapshot for the admin endpoint.
func (c *Coordinator) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		Phase:      c.phase,
		Stats:      c.t.Stats(),
		Registries: append([]RegistryStatus(nil), c.regs...),
		Started:    c.started,
		Deadline:   c.deadline,
	}
	if c.o.hasInstance {
		in := c.o.inst
		s.Instance = &in
	}
	return s
}

func (c *Coordinator) emit(e Event) {
	e.Time = c.o.clock.Now()
	c.mu.Lock()
	e.Phase = c.phase
	if !c.started.IsZero() {
		e.Elapsed = e.Time.Sub(c.started)
	}
	c.mu.Unlock()
	e.InFlight = c.t.InFlight()
	c.o.onEvent(e)
}

func (c *Coordinator) enter(p Phase) {
	now := c.o.clock.Now()
	c.mu.Lock()
	if n := len(c.report.Phases); n > 0 {
		last := &c.report.Phases[n-1]
		last.Duration = now.Sub(last.Start)
	}
	c.report.Phases = append(c.report.Phases, PhaseSpan{Phase: p, Start: now})
	c.phase = p
	close(c.phaseCh)
	c.phaseCh = make(chan struct{})
	c.mu.Unlock()
	c.emit(Event{Kind: EventPhase})
}

func (c *Coordinator) setReg(k int, f func(*RegistryStatus)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.regs[k])
}

// run executes the protocol. The budget is split by deadlines: registry
// work must end early enough to leave the quiet window, draining must end
// before the stop reserve, and the stop hooks get the rest.
func (c *Coordinator) run(start time.Time) {
	defer close(c.done)
	o := &c.o
	deadline := start.Add(o.budget)
	stopAt := deadline.Add(-o.stopReserve)
	regAt := stopAt.Add(-o.quiet)

	// Force ends every waiting phase at once.
	base, cancelBase := context.WithCancelCause(context.Background())
	defer cancelBase(nil)
	go func() {
		select {
		case <-c.forced:
			cancelBase(ErrForced)
		case <-base.Done():
		}
	}()

	var errs []error
	cut := func(p Phase, ctx context.Context) {
		cause := ErrDeadline
		if errors.Is(context.Cause(ctx), ErrForced) {
			cause = ErrForced
		}
		errs = append(errs, &PhaseError{Phase: p, InFlight: c.t.InFlight(), LongLived: c.t.LongLived(), Err: cause})
	}

	regCtx, cancelReg := c.until(base, regAt)
	defer cancelReg()

	c.enter(Deregistering)
	ok := c.takeOut(regCtx)
	var lastDereg time.Time
	for k := range c.regs {
		if ok[k] {
			lastDereg = later(lastDereg, c.regs[k].deregisteredAt)
		}
	}
	if regCtx.Err() != nil {
		// Name the phase that ran out: removal, if any registry never
		// removed the instance; otherwise confirmation.
		p := Confirming
		for k := range ok {
			if !ok[k] {
				p = Deregistering
			}
		}
		cut(p, regCtx)
	}
	for k, st := range c.Status().Registries {
		if st.Error != "" {
			errs = append(errs, &registry.Error{Registry: st.Name, Op: opName(o.disable, ok[k]), Err: st.err})
		}
	}

	c.enter(Draining)
	c.t.SetDraining()
	drainCtx, cancelDrain := c.until(base, stopAt)
	now := o.clock.Now()
	cond := Condition{Quiet: o.quiet, NotBefore: later(lastDereg, start).Add(o.minWait)}
	if o.longLivedGrace > 0 {
		cond.LongLivedUntil = now.Add(o.longLivedGrace)
	}
	if err := c.t.WaitIdle(drainCtx, cond); err != nil {
		cut(Draining, drainCtx)
	}
	cancelDrain()

	c.enter(Stopping)
	hookCtx, cancelHooks := c.until(base, deadline)
	for k := len(o.hooks) - 1; k >= 0; k-- {
		h := o.hooks[k]
		err := runHook(hookCtx, h)
		c.emit(Event{Kind: EventStopHook, Hook: h.Name, Err: err})
		if err != nil {
			errs = append(errs, fmt.Errorf("drain: stop hook %q: %w", h.Name, err))
		}
	}
	if hookCtx.Err() != nil && len(o.hooks) > 0 {
		cut(Stopping, hookCtx)
	}
	cancelHooks()

	c.enter(Offline)
	c.mu.Lock()
	c.report.Started = start
	c.report.Duration = o.clock.Now().Sub(start)
	c.report.Registries = append([]RegistryStatus(nil), c.regs...)
	c.report.Late = c.t.Stats().Late
	c.err = errors.Join(errs...)
	c.mu.Unlock()
}

// runHook runs h, turning a panic into an error so that the remaining hooks
// still run.
func runHook(ctx context.Context, h StopHook) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panicked: %v", p)
		}
	}()
	return h.Stop(ctx)
}

func opName(disable, done bool) string {
	switch {
	case !done && disable:
		return "disable"
	case !done:
		return "deregister"
	}
	return "confirm"
}

// until returns a context that ends at t on the coordinator's clock, with
// cause ErrDeadline, or when parent ends.
func (c *Coordinator) until(parent context.Context, t time.Time) (context.Context, context.CancelFunc) {
	if _, real := c.o.clock.(clock.Real); real {
		return context.WithDeadlineCause(parent, t, ErrDeadline)
	}
	ctx, cancel := context.WithCancelCause(parent)
	timer := c.o.clock.AfterFunc(t.Sub(c.o.clock.Now()), func() { cancel(ErrDeadline) })
	return ctx, func() { timer.Stop(); cancel(context.Canceled) }
}

// takeOut removes (or disables) the instance from every registry in
// parallel and confirms each as soon as its own removal succeeded, so a slow
// or unreachable registry delays no other. Each registry's watch is opened
// before the removal, so that confirmation comes from a push that happened
// after it, as consumers receive it. Calls are retried with backoff until
// they succeed or ctx ends. The phase moves to Confirming once every removal
// has ended. It reports which registries removed the instance.
func (c *Coordinator) takeOut(ctx context.Context) []bool {
	ok := make([]bool, len(c.o.regs))
	var removing, all sync.WaitGroup
	for k, r := range c.o.regs {
		removing.Add(1)
		all.Add(1)
		go func() {
			defer all.Done()
			g, err := c.remove(ctx, k, r)
			removing.Done()
			if err != nil {
				c.setReg(k, func(s *RegistryStatus) { s.State, s.Error, s.err = "failed", err.Error(), err })
				c.emit(Event{Kind: EventGaveUp, Registry: r.String(), Err: err})
				return
			}
			ok[k] = true
			c.confirm(ctx, k, r, g)
		}()
	}
	removing.Wait()
	c.enter(Confirming)
	all.Wait()
	return ok
}

// remove opens the watch and removes the instance from r, retrying.
func (c *Coordinator) remove(ctx context.Context, k int, r registry.Registry) (*registry.GoneWatch, error) {
	c.setReg(k, func(s *RegistryStatus) { s.State = "deregistering" })
	var g *registry.GoneWatch
	err := c.retry(ctx, r, func() error {
		c.setReg(k, func(s *RegistryStatus) { s.Attempts++ })
		if g == nil {
			var err error
			if g, err = registry.WatchGone(ctx, r, c.o.inst, c.goneOptions(k, r)); err != nil {
				return err
			}
		}
		if c.o.disable {
			return r.(registry.Disabler).Disable(ctx, c.o.inst)
		}
		return r.Deregister(ctx, c.o.inst)
	})
	if err != nil {
		if g != nil {
			g.Stop()
		}
		return nil, err
	}
	now := c.o.clock.Now()
	c.setReg(k, func(s *RegistryStatus) { s.State, s.deregisteredAt = "deregistered", now })
	c.emit(Event{Kind: EventDeregistered, Registry: r.String()})
	return g, nil
}

// confirm waits for r's watch to drop the instance. A watch that fails is
// reopened (with backoff) until ctx ends.
func (c *Coordinator) confirm(ctx context.Context, k int, r registry.Registry, g *registry.GoneWatch) {
	err := c.retry(ctx, r, func() error {
		if g == nil {
			var err error
			if g, err = registry.WatchGone(ctx, r, c.o.inst, c.goneOptions(k, r)); err != nil {
				return err
			}
		}
		err := g.Wait(ctx)
		if err != nil {
			g.Stop()
			g = nil
		}
		return err
	})
	if g != nil {
		g.Stop()
	}
	if err != nil {
		c.setReg(k, func(s *RegistryStatus) { s.Error, s.err = "not confirmed: "+err.Error(), err })
		c.emit(Event{Kind: EventGaveUp, Registry: r.String(), Err: err})
		return
	}
	now := c.o.clock.Now()
	var lat time.Duration
	c.setReg(k, func(s *RegistryStatus) {
		lat = now.Sub(s.deregisteredAt)
		s.State, s.ConfirmLatency = "confirmed", lat
	})
	c.emit(Event{Kind: EventConfirmed, Registry: r.String(), Latency: lat})
}

// goneOptions makes r's confirmation follow every server of its cluster
// with the coordinator's backoff, and report each through its status and
// EventView.
func (c *Coordinator) goneOptions(k int, r registry.Registry) registry.GoneOptions {
	return registry.GoneOptions{
		Disable:    c.o.disable,
		RetryDelay: c.o.backoff.Delay,
		OnView: func(e registry.ViewEvent) {
			c.setReg(k, func(s *RegistryStatus) {
				st := ServerStatus{Name: e.View, State: e.Kind.String()}
				if e.Err != nil {
					st.Error = e.Err.Error()
				}
				// A new slice each time: snapshots taken by Status share the old one.
				servers := slices.Clone(s.Servers)
				if i := slices.IndexFunc(servers, func(o ServerStatus) bool { return o.Name == e.View }); i >= 0 {
					servers[i] = st
				} else {
					servers = append(servers, st)
				}
				s.Servers = servers
			})
			c.emit(Event{Kind: EventView, Registry: r.String(), View: e.View, ViewKind: e.Kind, Latency: e.At, Err: e.Err})
		},
	}
}

// retry calls f until it succeeds or ctx ends, waiting the backoff policy's
// delay between attempts. It returns f's last error, annotated when ctx ended.
func (c *Coordinator) retry(ctx context.Context, r registry.Registry, f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return lastError(ctx, err)
		}
		d := c.o.backoff.Delay(attempt)
		c.emit(Event{Kind: EventRetry, Registry: r.String(), Delay: d, Err: err})
		t := c.o.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return lastError(ctx, err)
		case <-t.C():
		}
	}
}

func lastError(ctx context.Context, err error) error {
	return fmt.Errorf("%w (gave up: %v)", err, context.Cause(ctx))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

package drain

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lameduck/lameduck/internal/backoff"
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
	// Calling names the consumers still calling when Draining was cut
	// (late consumers whose last request was within a second, or the
	// quiet window if longer), and NeedBudget is the least budget their
	// lag so far would have needed; both only from a ConsumerSource.
	Calling    []ConsumerStat
	NeedBudget time.Duration
}

func (e *PhaseError) Error() string {
	msg := fmt.Sprintf("drain: %s during %s", e.Err, e.Phase)
	if e.Phase == Draining || e.InFlight > 0 || e.LongLived > 0 {
		msg += fmt.Sprintf(" with %d requests in flight and %d long-lived", e.InFlight, e.LongLived)
	}
	if len(e.Calling) > 0 {
		msg += "; consumers still calling: " + describeConsumers(e.Calling, 3) +
			fmt.Sprintf("; their lag needed a budget above %v (set the consumer lag to their cache's refresh interval)", e.NeedBudget.Round(100*time.Millisecond))
	} else if errors.Is(e.Err, ErrDeadline) {
		msg += "; raise the budget or shorten the slowest phase"
	}
	return msg
}

// describeConsumers names up to n consumers with their lag, for one line.
func describeConsumers(cs []ConsumerStat, n int) string {
	var b strings.Builder
	for i, c := range cs {
		if i == n {
			fmt.Fprintf(&b, " and %d more", len(cs)-n)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (lag %v, %d late requests)", c.ID, c.Lag.Round(time.Millisecond), c.After)
	}
	return b.String()
}

func (e *PhaseError) Unwrap() error { return e.Err }

// RegistryStatus is where the protocol stands with one registry.
type RegistryStatus struct {
	Name string `json:"name"`
	// State is registering, retrying (Error says why), registered,
	// deregistering, deregistered, confirmed or failed (Error says why).
	State          string        `json:"state"`
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
	Outcome    Outcome           `json:"outcome"`  // OutcomeOf the protocol's error
	Instance   registry.Instance `json:"instance"` // as the registries know it, after WithLookup
	Source     string            `json:"source"`   // what the Draining phase waited on
	Started    time.Time         `json:"started"`
	Duration   time.Duration     `json:"duration_ns"`
	Phases     []PhaseSpan       `json:"phases"`
	Registries []RegistryStatus  `json:"registries"`
	Late       int64             `json:"late"` // requests begun after the flag was set
	// Consumers names the consumers that kept calling after the flag was
	// set, when the source attributes requests (see ConsumerSource).
	Consumers *LateConsumers `json:"consumers,omitempty"`
	// Abandoned names the stop hooks still running when the deadline (or
	// Force) ended the Stopping phase and its grace.
	Abandoned []string `json:"abandoned,omitempty"`
}

// Status is a snapshot of a Coordinator, for the admin endpoint.
type Status struct {
	Phase      Phase              `json:"phase"`
	Instance   *registry.Instance `json:"instance,omitempty"`
	Stats                         // the tracker's counters
	Registries []RegistryStatus   `json:"registries"`
	Started    time.Time          `json:"started,omitzero"`
	Deadline   time.Time          `json:"deadline,omitzero"`
	// Outcome and Error are set once the protocol is Offline: how it ended
	// (see OutcomeOf) and its error, so that a caller following the admin
	// endpoint can report the app's own result.
	Outcome Outcome `json:"outcome,omitempty"`
	Error   string  `json:"error,omitempty"`
	// Consumers is who kept calling after the flag was set, from Draining
	// on, when the source attributes requests (see ConsumerSource).
	Consumers *LateConsumers `json:"consumers,omitempty"`
}

// TopConsumers is how many late consumers Status and Report name one by
// one; the rest are aggregated.
const TopConsumers = 10

// ConsumerSource is a Source that attributes requests to consumers: the
// coordinator starts its attribution as the deregistration begins and
// marks the moment the shutdown flag is set, after which a consumer that
// still calls is late.
type ConsumerSource interface {
	Source
	Consumers() *Consumers
}

// consumers returns the source's attribution, or nil.
func (c *Coordinator) consumers() *Consumers {
	if cs, ok := c.o.source.(ConsumerSource); ok {
		return cs.Consumers()
	}
	return nil
}

// Coordinator runs the offline protocol for one instance, once. It is safe
// for concurrent use; Start, Offline and Force may be called from anywhere
// (a signal handler, the admin endpoint) any number of times.
type Coordinator struct {
	t *Tracker
	o options

	startOnce sync.Once
	// base is the parent of every phase's context; Force cancels it with
	// ErrForced, at once, whichever phase the protocol is in.
	base  context.Context
	force context.CancelCauseFunc
	done  chan struct{}

	mu       sync.Mutex
	inst     registry.Instance // o.inst, completed by the lookup
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
	case o.quiet < 0, o.minWait < 0, o.stopReserve < 0, o.longLivedGrace < 0, o.consumerLag < 0:
		return nil, fmt.Errorf("drain: quiet window %v, min wait %v, stop reserve %v, long-lived grace %v and consumer lag %v must not be negative",
			o.quiet, o.minWait, o.stopReserve, o.longLivedGrace, o.consumerLag)
	}
	if err := o.checkConsumerLag(); err != nil {
		return nil, err
	}
	if need := o.stopReserve + max(o.minWait, 0) + o.quiet; need > o.budget {
		return nil, fmt.Errorf("drain: budget %v is less than the phases' minimums %v (quiet window %v + min wait %v + stop reserve %v); raise the budget or lower one of them",
			o.budget, need, o.quiet, o.minWait, o.stopReserve)
	}
	if len(o.regs) > 0 {
		if !o.hasInstance {
			return nil, errors.New("drain: registries given without an instance; add WithInstance")
		}
		if err := validateInstance(o.inst, o.lookup); err != nil {
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
	if o.sourceSet && o.source == nil {
		o.source = nothing{}
	}
	if o.source == nil {
		o.source = t
	}
	c := &Coordinator{
		t:       t,
		o:       o,
		inst:    o.inst,
		done:    make(chan struct{}),
		phaseCh: make(chan struct{}),
		regs:    make([]RegistryStatus, len(o.regs)),
	}
	for k, r := range o.regs {
		c.regs[k] = RegistryStatus{Name: r.String(), State: "registered"}
	}
	c.base, c.force = context.WithCancelCause(context.Background())
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
	c.force(ErrForced)
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
		in := c.inst
		s.Instance = &in
	}
	if c.phase == Offline {
		s.Outcome = c.report.Outcome
		if c.err != nil {
			s.Error = c.err.Error()
		}
	}
	if cs := c.consumers(); cs != nil && c.phase >= Draining {
		late := cs.Late(TopConsumers)
		s.Consumers = &late
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

// hookGrace is how long a stop hook may still run after its context has
// ended before the coordinator abandons it: long enough for a hook that
// honours its context to finish (a server closing its listeners), short
// enough that a second signal ends the process at once.
const hookGrace = 50 * time.Millisecond

// checkConsumerLag refuses a budget that cannot hold a confirmation, the
// consumers' lag, the quiet window and the stop reserve, naming the budget
// that would.
func (o *options) checkConsumerLag() error {
	if o.consumerLag == 0 {
		return nil
	}
	confirm := time.Duration(0)
	if len(o.regs) > 0 {
		confirm = confirmAllowance
	}
	need := confirm + o.consumerLag + o.quiet + o.stopReserve
	if need <= o.budget {
		return nil
	}
	return &LagError{Budget: o.budget, Need: need, Lag: o.consumerLag,
		Detail: fmt.Sprintf("confirmation %v + consumer lag %v + quiet window %v + stop reserve %v", confirm, o.consumerLag, o.quiet, o.stopReserve)}
}

// LagError is New's refusal of a budget that cannot hold the consumers'
// lag (WithConsumerLag). Callers whose budget is fixed elsewhere (a pod's
// grace period) may only warn with it.
type LagError struct {
	Budget, Need, Lag time.Duration
	Detail            string
}

func (e *LagError) Error() string {
	atLeast := (e.Need + time.Second - 1).Truncate(time.Second)
	return fmt.Sprintf("drain: budget %v cannot hold the consumers' lag: %s = %v; raise the budget to at least %v or lower the consumer lag",
		e.Budget, e.Detail, e.Need, atLeast)
}

// stillCalling returns the late consumers whose last request was within a
// second (or the quiet window) of now, and the least budget their lag so
// far needed: the time to the flag, the lag, the quiet window and the
// stop reserve.
func stillCalling(cs *Consumers, now, start time.Time, o *options) ([]ConsumerStat, time.Duration) {
	late := cs.Late(TopConsumers)
	recent := now.Add(-max(o.quiet, time.Second))
	var calling []ConsumerStat
	lag := time.Duration(0)
	for _, c := range late.Top {
		if !c.Last.Before(recent) {
			calling = append(calling, c)
			lag = max(lag, c.Lag)
		}
	}
	if late.Others != nil && !late.Others.Last.Before(recent) {
		calling = append(calling, *late.Others)
		lag = max(lag, late.Others.Lag)
	}
	if len(calling) == 0 {
		return nil, 0
	}
	for i := range calling {
		if calling[i].ID == "" {
			calling[i].ID = fmt.Sprintf("%d others", calling[i].IDs)
		}
	}
	return calling, late.Confirmed.Sub(start) + lag + o.quiet + o.stopReserve
}

// lookupShare bounds the instance lookup (WithLookup), so that a registry
// that cannot be reached delays the offline by seconds, not by the whole
// registry share; the removal then reports it.
const lookupShare = 3 * time.Second

// run executes the protocol. It alone splits the budget, by deadlines:
//
//   - the stop hooks get the stop reserve at the end;
//   - the drain gets at least its share before that: half of what the
//     reserve leaves when a Source drains something, never less than the
//     quiet window;
//   - the registries (lookup, removal, confirmation) get what remains
//     before that share, and the drain starts as soon as they are done.
//
// So an unreachable registry costs at most its share, and the drain always
// runs.
func (c *Coordinator) run(start time.Time) {
	defer close(c.done)
	o := &c.o
	deadline := start.Add(o.budget)
	stopAt := deadline.Add(-o.stopReserve)
	share := o.quiet + o.consumerLag
	if _, none := o.source.(nothing); !none {
		share = max(share, (o.budget-o.stopReserve)/2)
	}
	regAt := stopAt.Add(-share)

	base := c.base

	var errs []error
	cut := func(p Phase, ctx context.Context) {
		cause := ErrDeadline
		if errors.Is(context.Cause(ctx), ErrForced) {
			cause = ErrForced
		}
		pe := &PhaseError{Phase: p, InFlight: c.t.InFlight(), LongLived: c.t.LongLived(), Err: cause}
		if cs := c.consumers(); p == Draining && cs != nil {
			pe.Calling, pe.NeedBudget = stillCalling(cs, o.clock.Now(), start, o)
		}
		errs = append(errs, pe)
	}

	regCtx, cancelReg := c.until(base, regAt)
	defer cancelReg()

	c.enter(Deregistering)
	cs := c.consumers()
	if cs != nil {
		cs.Start(o.clock.Now())
	}
	if o.lookup && len(o.regs) > 0 {
		if err := c.lookup(regCtx); err != nil {
			// No such instance: nothing to take out, nothing of ours to
			// drain. The caller named the wrong thing.
			c.finish(start, []error{err})
			return
		}
	}
	ok := c.takeOut(regCtx)
	var lastDereg time.Time
	for k := range c.regs {
		if ok[k] {
			lastDereg = later(lastDereg, c.regs[k].deregisteredAt)
		}
	}
	if regCtx.Err() != nil && len(o.regs) > 0 {
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
		var re *registry.Error
		switch {
		case st.Error == "":
		case errors.As(st.err, &re) && re.Registry == st.Name:
			errs = append(errs, st.err) // it names the registry and the call already
		default:
			errs = append(errs, &registry.Error{Registry: st.Name, Op: opName(o.disable, ok[k]), Err: st.err})
		}
	}

	c.enter(Draining)
	c.t.SetDraining()
	if cs != nil {
		cs.Confirmed(o.clock.Now())
	}
	drainCtx, cancelDrain := c.until(base, stopAt)
	now := o.clock.Now()
	cond := Condition{Quiet: o.quiet, NotBefore: later(later(lastDereg, start).Add(o.minWait), now.Add(o.consumerLag))}
	if o.longLivedGrace > 0 {
		cond.LongLivedUntil = now.Add(o.longLivedGrace)
	}
	err := o.source.Drain(drainCtx, cond)
	c.emit(Event{Kind: EventSource, Source: o.source.String(), Err: err})
	var se *SourceError
	switch {
	case err == nil:
	case drainCtx.Err() != nil:
		cut(Draining, drainCtx)
	case errors.As(err, &se):
		errs = append(errs, err)
	case err != nil:
		errs = append(errs, fmt.Errorf("drain: %s: %w", o.source, err))
	}
	cancelDrain()

	c.enter(Stopping)
	hookCtx, cancelHooks := c.until(base, deadline)
	abandoned := c.runHooks(hookCtx, &errs)
	if hookCtx.Err() != nil && len(o.hooks) > 0 {
		// The hooks ran, or were abandoned, with the context ended.
		cut(Stopping, hookCtx)
	}
	cancelHooks()
	c.mu.Lock()
	c.report.Abandoned = abandoned
	c.mu.Unlock()
	c.finish(start, errs)
}

// finish records the report and the error, then enters Offline, so that
// whoever sees Offline (Status, Done) sees the outcome with it.
func (c *Coordinator) finish(start time.Time, errs []error) {
	err := errors.Join(errs...)
	c.mu.Lock()
	c.report.Outcome = OutcomeOf(err)
	c.report.Instance = c.inst
	c.report.Source = c.o.source.String()
	c.report.Started = start
	c.report.Duration = c.o.clock.Now().Sub(start)
	c.report.Registries = slices.Clone(c.regs)
	c.report.Late = c.t.Stats().Late
	if cs := c.consumers(); cs != nil {
		late := cs.Late(TopConsumers)
		c.report.Consumers = &late
	}
	c.err = err
	c.mu.Unlock()
	c.enter(Offline)
	c.mu.Lock()
	c.report.Phases = slices.Clone(c.report.Phases)
	c.mu.Unlock()
}

// runHooks runs the stop hooks in reverse order, each with ctx. A hook
// still running hookGrace after ctx ended is abandoned: its error is
// recorded, and the next hook starts (with the ended context, and the same
// grace). It returns the names of the hooks abandoned.
func (c *Coordinator) runHooks(ctx context.Context, errs *[]error) (abandoned []string) {
	for k := len(c.o.hooks) - 1; k >= 0; k-- {
		h := c.o.hooks[k]
		done := make(chan error, 1)
		go func() { done <- runHook(ctx, h) }()
		var err error
		select {
		case err = <-done:
		case <-ctx.Done():
			grace := c.o.clock.NewTimer(hookGrace)
			select {
			case err = <-done:
			case <-grace.C():
				abandoned = append(abandoned, h.Name)
				err = fmt.Errorf("abandoned, still running %v after %v", hookGrace, context.Cause(ctx))
			}
			grace.Stop()
		}
		c.emit(Event{Kind: EventStopHook, Hook: h.Name, Err: err})
		if err != nil {
			*errs = append(*errs, fmt.Errorf("drain: stop hook %q: %w", h.Name, err))
		}
	}
	return abandoned
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

// ErrNoInstance is wrapped by the protocol's error when WithLookup found no
// instance with the given ID in any registry that answered.
var ErrNoInstance = errors.New("drain: no such instance")

// validateInstance checks i as WithInstance needs it: whole, or with
// lookup, a service and an ID or an address.
func validateInstance(i registry.Instance, lookup bool) error {
	if !lookup || (i.Address != "" && i.Port != 0) {
		return i.Validate()
	}
	switch {
	case i.Service == "":
		return errors.New("drain: the instance has no service name; set Instance.Service")
	case i.ID == "" && i.Address == "":
		return fmt.Errorf("drain: the instance of %q has neither an ID nor an address; give one to look it up by", i.Service)
	}
	return nil
}

// lookup completes the instance from the registries' lists (Lookup),
// within lookupShare.
func (c *Coordinator) lookup(ctx context.Context) error {
	ctx, cancel := c.until(ctx, c.o.clock.Now().Add(lookupShare))
	defer cancel()
	in, err := Lookup(ctx, c.o.regs, c.o.inst)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.inst = in
	c.mu.Unlock()
	return nil
}

// Lookup finds want, named by its ID or by its address, in the registries'
// lists, asking all of them at once until ctx ends. The first registry to
// list it wins: it returns that registry's view of the instance, with the
// ID the registry knows it by. When no registry lists it, Lookup returns
// want as given, to be taken out all the same (it may be out already, or
// disabled, or the registries down), unless want has no address and some
// registry answered: then no registry knows that ID, and the error wraps
// ErrNoInstance.
func Lookup(ctx context.Context, regs []registry.Registry, want registry.Instance) (registry.Instance, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		in    registry.Instance
		found bool
		err   error
	}
	answers := make(chan answer, len(regs))
	for _, r := range regs {
		go func() {
			list, err := listOnce(ctx, r, want.Service)
			for _, in := range list {
				if (want.ID != "" && in.ID == want.ID) || (want.Address != "" && in.Address == want.Address && in.Port == want.Port) {
					answers <- answer{in: in, found: true}
					return
				}
			}
			answers <- answer{err: err}
		}()
	}
	answered := false
	for range regs {
		a := <-answers
		if a.found {
			return a.in, nil
		}
		answered = answered || a.err == nil
	}
	if answered && (want.Address == "" || want.Port == 0) {
		return want, fmt.Errorf("%w: no instance with ID %q in %q; give its address instead, or check the ID with `lameduck status`", ErrNoInstance, want.ID, want.Service)
	}
	return want, nil
}

// listOnce returns what r lists for service right now: the first answer
// of a watch.
func listOnce(ctx context.Context, r registry.Registry, service string) ([]registry.Instance, error) {
	w, err := r.Watch(ctx, service)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	return w.Next(ctx)
}

// fanOut runs f for every registry at once (registry.Each).
func (c *Coordinator) fanOut(f func(k int, r registry.Registry)) { registry.Each(c.o.regs, f) }

// Register puts the instance in every registry at once, each retried with
// backoff until it succeeds, the registry refuses it for good
// (registry.ErrRejected), or ctx ends; Status shows each registry as
// registering, retrying (with the last error), registered or failed. It
// returns the failures, each a *registry.Error. Call it before Start; an
// App does, once its readiness check passes.
func (c *Coordinator) Register(ctx context.Context) error {
	errs := make([]error, len(c.o.regs))
	c.fanOut(func(k int, r registry.Registry) {
		c.setReg(k, func(s *RegistryStatus) { s.State, s.Error, s.err = "registering", "", nil })
		err := c.retry(ctx, k, r, func(ctx context.Context) error {
			c.setReg(k, func(s *RegistryStatus) { s.Attempts++ })
			return r.Register(ctx, c.o.inst)
		})
		if err != nil {
			err = &registry.Error{Registry: r.String(), Op: "register", Err: err}
			errs[k] = err
			c.setReg(k, func(s *RegistryStatus) { s.State, s.Error, s.err = "failed", err.Error(), err })
			c.emit(Event{Kind: EventGaveUp, Registry: r.String(), Err: err})
			return
		}
		c.setReg(k, func(s *RegistryStatus) { s.State, s.Error, s.err, s.Attempts = "registered", "", nil, 0 })
		c.emit(Event{Kind: EventRegistered, Registry: r.String()})
	})
	return errors.Join(errs...)
}

// takeOut removes (or disables) the instance from every registry in
// parallel and confirms each as soon as its own removal succeeded, so a slow
// or unreachable registry delays no other. Each registry's watch is opened
// before the removal, so that confirmation comes from a push that happened
// after it, as consumers receive it. Calls are retried with backoff until
// they succeed, are refused for good, or ctx ends. The phase moves to
// Confirming once every removal has ended. It reports which registries
// removed the instance.
func (c *Coordinator) takeOut(ctx context.Context) []bool {
	ok := make([]bool, len(c.o.regs))
	var removing sync.WaitGroup
	removing.Add(len(c.o.regs))
	all := make(chan struct{})
	go func() {
		defer close(all)
		c.fanOut(func(k int, r registry.Registry) {
			g, err := c.remove(ctx, k, r)
			removing.Done()
			if err != nil {
				c.setReg(k, func(s *RegistryStatus) { s.State, s.Error, s.err = "failed", err.Error(), err })
				c.emit(Event{Kind: EventGaveUp, Registry: r.String(), Err: err})
				return
			}
			ok[k] = true
			c.confirm(ctx, k, r, g)
		})
	}()
	removing.Wait()
	c.enter(Confirming)
	<-all
	return ok
}

// remove opens the watch and removes the instance from r, retrying.
func (c *Coordinator) remove(ctx context.Context, k int, r registry.Registry) (*registry.GoneWatch, error) {
	c.setReg(k, func(s *RegistryStatus) { s.State = "deregistering" })
	inst := c.instance()
	var g *registry.GoneWatch
	err := c.retry(ctx, k, r, func(ctx context.Context) error {
		c.setReg(k, func(s *RegistryStatus) { s.Attempts++ })
		if g == nil {
			var err error
			if g, err = registry.WatchGone(ctx, r, inst, c.goneOptions(k, r)); err != nil {
				return err
			}
		}
		if c.o.disable {
			return r.(registry.Disabler).Disable(ctx, inst)
		}
		return r.Deregister(ctx, inst)
	})
	if err != nil {
		if g != nil {
			g.Stop()
		}
		return nil, err
	}
	now := c.o.clock.Now()
	c.setReg(k, func(s *RegistryStatus) { s.State, s.Error, s.err, s.deregisteredAt = "deregistered", "", nil, now })
	c.emit(Event{Kind: EventDeregistered, Registry: r.String()})
	return g, nil
}

// confirm waits for r's watch to drop the instance. A watch that fails is
// reopened (with backoff) until ctx ends.
func (c *Coordinator) confirm(ctx context.Context, k int, r registry.Registry, g *registry.GoneWatch) {
	inst := c.instance()
	err := c.retry(ctx, k, r, func(ctx context.Context) error {
		if g == nil {
			var err error
			if g, err = registry.WatchGone(ctx, r, inst, c.goneOptions(k, r)); err != nil {
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
		s.State, s.Error, s.err, s.ConfirmLatency = "confirmed", "", nil, lat
	})
	c.emit(Event{Kind: EventConfirmed, Registry: r.String(), Latency: lat})
}

// instance returns the instance the protocol acts on: WithInstance's, as
// the lookup completed it.
func (c *Coordinator) instance() registry.Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inst
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

// retry is backoff.Retry on the coordinator's clock and policy for
// registry k: each failure shows in k's status as the last error, and as
// an EventRetry.
func (c *Coordinator) retry(ctx context.Context, k int, r registry.Registry, f func(ctx context.Context) error) error {
	return backoff.Retry(ctx, c.o.clock, c.o.backoff, f, func(err error, d time.Duration) {
		c.setReg(k, func(s *RegistryStatus) {
			if s.State == "registering" {
				s.State = "retrying"
			}
			s.Error, s.err = err.Error(), err
		})
		c.emit(Event{Kind: EventRetry, Registry: r.String(), Delay: d, Err: err})
	})
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

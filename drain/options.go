package drain

import (
	"context"
	"time"

	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

// Defaults for the offline protocol.
const (
	DefaultBudget      = 30 * time.Second
	DefaultQuietWindow = 250 * time.Millisecond
	maxStopReserve     = 5 * time.Second
)

// Option configures a Coordinator.
type Option func(*options)

// StopHook is a function run in the Stopping phase, such as a server's
// graceful shutdown. It gets a context that ends at the deadline.
type StopHook struct {
	Name string
	Stop func(ctx context.Context) error
}

type options struct {
	regs           []registry.Registry
	inst           registry.Instance
	hasInstance    bool
	disable        bool
	budget         time.Duration
	quiet          time.Duration
	quietSet       bool
	minWait        time.Duration
	consumerLag    time.Duration
	stopReserve    time.Duration
	stopReserveSet bool
	longLivedGrace time.Duration
	hooks          []StopHook
	source         Source
	sourceSet      bool
	lookup         bool
	onEvent        func(Event)
	clock          clock.Clock
	backoff        backoff.Policy
}

func (o *options) setDefaults() {
	if o.budget == 0 {
		o.budget = DefaultBudget
	}
	if !o.quietSet {
		o.quiet = DefaultQuietWindow
	}
	if !o.stopReserveSet {
		o.stopReserve = min(maxStopReserve, o.budget/5)
	}
	o.clock = clock.OrReal(o.clock)
	if o.onEvent == nil {
		o.onEvent = func(Event) {}
	}
}

// WithRegistries names the registries the instance is taken out of, all in
// parallel. Without any, the protocol skips straight to Draining.
func WithRegistries(regs ...registry.Registry) Option {
	return func(o *options) { o.regs = append(o.regs, regs...) }
}

// WithInstance names the instance to take offline. Required with registries.
func WithInstance(i registry.Instance) Option {
	return func(o *options) { o.inst, o.hasInstance = i, true }
}

// WithDisable hides the instance (Nacos enabled=false, Consul maintenance)
// instead of deregistering it. Every registry must implement
// registry.Disabler.
func WithDisable() Option {
	return func(o *options) { o.disable = true }
}

// WithBudget sets the one deadline the whole protocol runs under, counted
// from the moment it starts. The default is 30s; set it to the platform's
// grace period minus a margin (terminationGracePeriodSeconds - 2s, say).
func WithBudget(d time.Duration) Option {
	return func(o *options) { o.budget = d }
}

// WithQuietWindow sets how long no new request may arrive before the
// instance counts as drained. The default is 250ms.
func WithQuietWindow(d time.Duration) Option {
	return func(o *options) { o.quiet, o.quietSet = d, true }
}

// WithMinWait sets a floor on the time from deregistration to offline, for
// consumers known to poll the registry instead of watching it (set it to
// their poll interval). The default is 0.
func WithMinWait(d time.Duration) Option {
	return func(o *options) { o.minWait = d }
}

// WithConsumerLag says how long a consumer that caches the registry's
// list (Spring Cloud LoadBalancer's 35s, Ribbon's 30s, a polling gateway)
// may keep calling after the confirmation. Until d has passed since the
// shutdown flag (set right after the confirmation), quiet alone does not
// end the drain, so a sparse consumer is covered; after d, the drain ends
// as soon as the instance is quiet. New refuses a budget that cannot hold
// a confirmation, d, the quiet window and the stop reserve. The default
// is 0: consumers that watch the registry follow the confirmation at once.
func WithConsumerLag(d time.Duration) Option {
	return func(o *options) { o.consumerLag = d }
}

// confirmAllowance is the least of the budget New keeps for the
// registries' removal and confirmation when it checks that the budget
// holds WithConsumerLag: Nacos confirms in about 0.6s, Consul in 10ms.
const confirmAllowance = time.Second

// WithStopReserve sets how much of the budget is kept for the stop hooks.
// The default is a fifth of the budget, at most 5s.
func WithStopReserve(d time.Duration) Option {
	return func(o *options) { o.stopReserve, o.stopReserveSet = d, true }
}

// WithLongLivedGrace gives long-lived requests (streams, WebSockets) their
// own deadline, counted from the moment the flag is set: after it they no
// longer hold the drain back and are cut by the stop hooks. The default, 0,
// waits for them until the drain's share of the budget runs out.
func WithLongLivedGrace(d time.Duration) Option {
	return func(o *options) { o.longLivedGrace = d }
}

// WithSource sets what the Draining phase waits on instead of the
// coordinator's own tracker: an app's admin endpoint (admin.Client) or a
// port's connections (conncount.Drainer). A nil Source means there is
// nothing to drain here, and the registries get the whole budget but the
// stop reserve. The coordinator's tracker is set draining all the same.
func WithSource(s Source) Option {
	return func(o *options) { o.source, o.sourceSet = s, true }
}

// WithLookup says the instance given to WithInstance may be named by its ID
// alone or its address alone: the coordinator first finds it in the
// registries' lists, as part of the registries' share of the budget. An
// instance no registry that answered lists by that ID ends the protocol
// with ErrNoInstance; when no registry answers, the protocol goes on with
// the instance as given.
func WithLookup() Option {
	return func(o *options) { o.lookup = true }
}

// WithStopHook adds a hook for the Stopping phase. Hooks run one at a time
// in reverse order of registration, each even if an earlier one failed.
// A hook must return soon after its context ends: one still running
// hookGrace after that is abandoned (left running, reported as cut), so
// that the deadline, and a second signal, hold.
func WithStopHook(name string, stop func(ctx context.Context) error) Option {
	return func(o *options) { o.hooks = append(o.hooks, StopHook{Name: name, Stop: stop}) }
}

// WithEventHook sets the one function that receives every Event. It is
// called synchronously from the protocol's goroutines, possibly
// concurrently for per-registry events, so it must be quick and safe for
// concurrent use.
func WithEventHook(f func(Event)) Option {
	return func(o *options) { o.onEvent = f }
}

func withClock(c clock.Clock) Option {
	return func(o *options) { o.clock = c }
}

func withBackoff(p backoff.Policy) Option {
	return func(o *options) { o.backoff = p }
}

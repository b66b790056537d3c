package supervisor

import (
	"errors"
	"io"
	"os"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
)

// Defaults for a Supervisor.
const (
	DefaultFailureThreshold = 5                      // suture's default
	DefaultFailureHalfLife  = 30 * time.Second       // suture's FailureDecay
	DefaultCheckInterval    = 100 * time.Millisecond // the first wait before a failed readiness check is retried
	DefaultReadyMaxInterval = 2 * time.Second        // the longest wait between readiness checks, as they back off
	DefaultCheckTimeout     = 2 * time.Second
	DefaultLiveFailures     = 3
	DefaultConnQuiet        = 250 * time.Millisecond
	DefaultDeregTimeout     = 10 * time.Second      // bounds the deregistration after a child's death
	DefaultRecycleInterval  = time.Second           // how often age and memory are looked at
	connPoll                = 10 * time.Millisecond // how often the port's connections are counted
)

// Option configures a Supervisor.
type Option func(*options)

type options struct {
	reportPath    string
	threshold     float64
	halfLife      time.Duration
	restart       backoff.Policy
	regRetry      backoff.Policy
	checkInterval time.Duration
	readyMax      time.Duration
	readyTimeout  time.Duration
	checkTimeout  time.Duration
	liveInterval  time.Duration
	liveFailures  int
	budget        time.Duration
	stopGrace     time.Duration
	connQuiet     time.Duration
	connWait      time.Duration
	connWaitSet   bool
	deregTimeout  time.Duration
	standby       bool
	recycleAfter  time.Duration
	recycleRSS    uint64
	recycleEvery  time.Duration
	drainOpts     []drain.Option
	stdout        io.Writer
	stderr        io.Writer
	onEvent       func(Event)
	subreaper     bool
	cgroupParent  string // with cgroupSet: where the Run's cgroup goes; "" for none
	cgroupSet     bool   // false: under the supervisor's own cgroup
	clock         clock.Clock
}

// readyPolicy is the backoff between readiness checks.
func (o *options) readyPolicy() backoff.Policy {
	return backoff.Policy{Initial: o.checkInterval, Max: o.readyMax}
}

func (o *options) setDefaults() {
	if o.threshold == 0 {
		o.threshold = DefaultFailureThreshold
	}
	if o.halfLife == 0 {
		o.halfLife = DefaultFailureHalfLife
	}
	if o.checkInterval == 0 {
		o.checkInterval = DefaultCheckInterval
	}
	if o.readyMax == 0 {
		o.readyMax = DefaultReadyMaxInterval
	}
	if o.checkTimeout == 0 {
		o.checkTimeout = DefaultCheckTimeout
	}
	if o.liveInterval == 0 {
		o.liveInterval = time.Second
	}
	if o.liveFailures == 0 {
		o.liveFailures = DefaultLiveFailures
	}
	if o.budget == 0 {
		o.budget = drain.DefaultBudget
	}
	if o.stopGrace == 0 {
		o.stopGrace = min(5*time.Second, o.budget/5)
	}
	if o.connQuiet == 0 {
		o.connQuiet = DefaultConnQuiet
	}
	if o.recycleEvery == 0 {
		o.recycleEvery = DefaultRecycleInterval
	}
	if o.deregTimeout == 0 {
		o.deregTimeout = DefaultDeregTimeout
	}
	if o.stdout == nil {
		o.stdout = os.Stdout
	}
	if o.stderr == nil {
		o.stderr = os.Stderr
	}
	if o.onEvent == nil {
		o.onEvent = func(Event) {}
	}
	o.clock = clock.OrReal(o.clock)
}

// WithRestartIntensity sets the restart-intensity limit: every abnormal exit
// adds 1 to a failure count that halves every halfLife; when the count
// exceeds threshold, Run gives up. The defaults are 5 and 30s, so a child
// that crashes six times in quick succession is given up on, and one that
// crashes once an hour is restarted forever. The count does not decay
// while a copy that never becomes ready is starting: six failed starts in
// a row (WithReadyTimeout) are given up on however long each one took.
func WithRestartIntensity(threshold float64, halfLife time.Duration) Option {
	return func(o *options) { o.threshold, o.halfLife = threshold, halfLife }
}

// WithBackoff sets the delay before a restart: initial for the first
// failure, doubling per failure in the decayed count, capped at max, ±20%
// jitter. The defaults are internal/backoff's (100ms, 5s).
func WithBackoff(initial, max time.Duration) Option {
	return func(o *options) { o.restart = backoff.Policy{Initial: initial, Max: max} }
}

// WithCheckTimeout bounds each call of Spec.Ready and Spec.Live: its ctx
// ends after d, and the call counts as failed. The default is 2s.
func WithCheckTimeout(d time.Duration) Option {
	return func(o *options) { o.checkTimeout = d }
}

// WithReadyTimeout bounds how long a copy may take to pass Spec.Ready,
// counted from its start: a copy not ready by then gets SIGKILL (its whole
// process group and cgroup) and counts as a failed start under the restart
// intensity (WithRestartIntensity), so a child that never becomes ready is
// given up on. The check under way at the deadline is cut short. Between
// checks the supervisor waits 100ms at first, doubling up to 2s. The
// default, 0, waits for readiness forever.
func WithReadyTimeout(d time.Duration) Option {
	return func(o *options) { o.readyTimeout = d }
}

// WithLiveness sets how often Spec.Live runs once the child is registered
// (default 1s) and how many failures in a row mark the child dead (default
// 3). Without Spec.Live this option does nothing.
func WithLiveness(every time.Duration, failures int) Option {
	return func(o *options) { o.liveInterval, o.liveFailures = every, failures }
}

// WithBudget sets the one deadline for taking the child offline when Run's
// ctx ends: deregistration, confirmation, connection drain, SIGTERM and the
// wait for exit. At the deadline the child's process group gets SIGKILL.
// The default is drain.DefaultBudget (30s).
func WithBudget(d time.Duration) Option {
	return func(o *options) { o.budget = d }
}

// WithStopGrace sets how much of the budget is kept for the child to exit
// after SIGTERM: the offline protocol's stop reserve (drain.WithStopReserve),
// so the Draining phase's wait for idle connections ends this long before
// the deadline. The default is a fifth of the budget, at most 5s.
func WithStopGrace(d time.Duration) Option {
	return func(o *options) { o.stopGrace = d }
}

// WithConnQuiet sets how long no request may arrive on the instance's
// port before the child gets SIGTERM, counted from the registries'
// confirmation or from the last request after it, as the drain library's
// quiet window is; requests in flight at the confirmation only have to end
// (see conncount.WaitIdle). The port is looked at every 10ms. The default
// is 250ms. WithConnWait bounds the whole wait.
func WithConnQuiet(d time.Duration) Option {
	return func(o *options) { o.connQuiet = d }
}

// WithConnWait bounds the wait for the instance's port to go quiet (see
// WithConnQuiet): it ends when the port has gone quiet or when d has passed
// since the wait began (after the registries confirmed the removal),
// whichever comes first; then the child gets SIGTERM. d = 0 means no wait
// for connections at all. Idle keep-alive connections and streams never
// hold the wait up where the kernel tells them from busy ones (sock_diag,
// see conncount); where it does not, every established connection counts
// as busy, and a child that drains itself on SIGTERM (net/http
// Server.Shutdown, grpc GracefulStop) whose consumers hold connections
// open needs this bound. Requests still running when d passes are reported
// with EventConnsBusy, whose Err wraps ErrConnWait. Without this option the
// wait lasts until the deadline minus the stop grace, the safe choice for a
// child that does not drain on SIGTERM. A negative d makes New fail.
func WithConnWait(d time.Duration) Option {
	return func(o *options) { o.connWait, o.connWaitSet = d, true }
}

// ErrConnWait is wrapped by the Err of an EventConnsBusy sent when the
// connection wait ended because WithConnWait's bound passed, rather than
// because the deadline came.
var ErrConnWait = errors.New("supervisor: conn wait passed with requests still running")

// WithStandby keeps a warm standby: a second copy of the child runs on
// Spec.StandbyPort, ready but not registered. When the active copy dies,
// the standby is registered at once (EventPromoted) and the dead copy is
// restarted, after the usual backoff, as the new standby. A standby that
// dies, or exits at all, counts as a failure like the active copy.
func WithStandby() Option {
	return func(o *options) { o.standby = true }
}

// WithRecycle recycles a copy that has run for longer than after, or whose
// resident memory (the process group leader's VmRSS) exceeds rss bytes; 0
// turns that limit off. Recycling the active copy starts its replacement on
// the other port (or uses the warm standby), registers it, then takes the
// old copy offline losslessly and stops it. A standby past a limit is simply
// restarted. Recycling is not a failure and does not count toward the
// restart intensity. It needs Spec.StandbyPort. Limits are looked at every
// second.
func WithRecycle(after time.Duration, rss uint64) Option {
	return func(o *options) { o.recycleAfter, o.recycleRSS = after, rss }
}

// WithSubreaper makes the whole process a child subreaper
// (PR_SET_CHILD_SUBREAPER) while a Run with it is under way: a descendant
// whose parent dies, a daemon that double-forks and calls setsid say, is
// adopted by this process instead of init, reaped when it exits, and
// killed, with whatever it started, when the last such Run of the process
// ends. Without a writable cgroup (see EventCgroup) that is what holds a
// child's setsid descendants, though only while the supervisor lives: a
// SIGKILL of the supervisor leaves them running there, and only there.
//
// The reaper takes the exit status of every zombie child of the process
// that this package did not start and that is not in the process's own
// process group, and the end of the last Run kills every such child still
// running. The host program's own children, which os/exec starts in the
// host's group unless told otherwise, are left alone; one it starts with
// Setpgid or Setsid could be reaped before its Wait, or killed. So use it
// in a program that starts no such children, as lameduck run.
func WithSubreaper() Option {
	return func(o *options) { o.subreaper = true }
}

// WithReport writes a report of every offline of a copy (pkg/report): JSON
// to path and an SVG timeline next to it; each offline replaces the last
// one's. A report that cannot be written is an EventReport.
func WithReport(path string) Option {
	return func(o *options) { o.reportPath = path }
}

// WithDrainOptions passes options to the offline protocol (drain.New), after
// the supervisor's own: drain.WithMinWait, drain.WithDisable, and so on.
// Budget, registries, instance and event hook are the supervisor's.
func WithDrainOptions(opts ...drain.Option) Option {
	return func(o *options) { o.drainOpts = append(o.drainOpts, opts...) }
}

// WithOutput sets where the child's stdout and stderr go, each line
// prefixed with "[name] ". The defaults are os.Stdout and os.Stderr.
func WithOutput(stdout, stderr io.Writer) Option {
	return func(o *options) { o.stdout, o.stderr = stdout, stderr }
}

// WithEventHook sets the one function that receives every Event. It is
// called synchronously, from several goroutines at once, so it must be
// quick and safe for concurrent use.
func WithEventHook(f func(Event)) Option {
	return func(o *options) { o.onEvent = f }
}

func withClock(c clock.Clock) Option {
	return func(o *options) { o.clock = c }
}

// withCgroupParent puts the Run's cgroup under dir instead of under the
// supervisor's own cgroup; "" runs the children without cgroups.
func withCgroupParent(dir string) Option {
	return func(o *options) { o.cgroupParent, o.cgroupSet = dir, true }
}

func withRecycleInterval(d time.Duration) Option {
	return func(o *options) { o.recycleEvery = d }
}

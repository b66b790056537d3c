// Package supervisor is the core of `lameduck run`: it runs one child
// process, registers it once it is ready, deregisters it the moment it dies,
// restarts it with jittered exponential backoff under a restart-intensity
// limit, and takes it offline losslessly when the supervisor is told to stop.
//
// # Lifecycle
//
// Run starts the child in its own process group (and cgroup, see
// Processes), with its output passed through line by line behind a
// "[name] " prefix. Spec.Ready is polled, backing off, until it passes
// (or, past WithReadyTimeout, the copy is killed as a failed start); only
// then is the instance registered. From then on Spec.Live,
// if set, is polled; enough failures in a row count as a death.
//
// When the child dies on its own with a non-zero code, by a signal, or by
// failed liveness (then the group gets SIGKILL), the instance is
// deregistered at once, before any backoff. The failure adds 1 to a
// decaying failure count (suture's restart intensity: the count halves every
// half-life, but not while a copy is starting and never becomes ready);
// past the threshold Run gives up with a *GaveUpError. Otherwise
// the child is restarted after a backoff delay that grows with the count.
//
// A child that exits 0 on its own is done: it is deregistered and Run
// returns nil without restarting it. A service that exits 0 meant to; one
// that must run forever should exit non-zero when something is wrong.
//
// With a warm standby (WithStandby), a second copy runs on
// Spec.StandbyPort, ready but unregistered; when the active copy dies, the
// standby is registered at once and the dead copy comes back as the new
// standby. With recycling (WithRecycle), a copy past its age or memory limit
// is replaced: the replacement (or the standby) is registered first, then
// the old copy is taken offline losslessly.
//
// When Run's ctx ends (the supervisor got SIGTERM), the child is taken
// offline with the drain protocol: deregister from every registry and
// confirm, then wait until no TCP connection to the instance's port carries
// a request and none has arrived for a quiet window (the supervisor has no
// request counter of its own; the kernel's view of the connections is its
// in-flight signal, see conncount), or at most the connection wait
// (WithConnWait), then SIGTERM to the child's process
// group and wait for it to exit; SIGKILL at the deadline, or at once on
// Force (a second SIGTERM). The standby, never registered, is just stopped.
// Run returns nil for a clean offline.
//
// # Processes
//
// The child runs with Setpgid and Pdeathsig=SIGKILL and, where a cgroup v2
// hierarchy is writable, in a cgroup of its own that the kernel puts it in
// at fork, under a cgroup per Run (EventCgroup names it). Whenever the
// child exits, whatever is left of its process group gets SIGKILL, and its
// cgroup is killed, awaited and removed, before the child is reaped: a
// descendant that called setsid or double-forked goes with it, and so do
// the output pipes it held. So Run leaves no zombies and no orphans, and a
// clean stop stays clean whatever a grandchild holds; without a cgroup, a
// child that exits 0 while a descendant keeps its output open is reported
// with EventOutputHeld, not as a failure. Pdeathsig fires when the thread
// that started the child ends; the Go runtime ends threads only for
// goroutines that exit while locked with runtime.LockOSThread, which this
// package never does. If the supervisor itself is killed, a guard process
// (see guard.go) sends SIGKILL to every child's process group and kills
// every cgroup, so no descendant outlives it either.
//
// Without a writable cgroup, descendants that leave the child's process
// group are held only by WithSubreaper, and only while the supervisor
// lives: after a SIGKILL of the supervisor they survive, in that fallback
// and only there. See tree.go.
//
// The supervisor runs on Linux only: nothing else has Pdeathsig, nor the
// kernel's TCP tables that tell when a child's requests have ended. The
// package builds everywhere, and New says so elsewhere with an error for
// which errors.Is(err, errors.ErrUnsupported) is true.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/pkg/conncount"
	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/pkg/report"
	"github.com/lameduck/lameduck/registry"
)

// Spec is what to run and how to announce it.
type Spec struct {
	// Name tags the child's output lines and errors. Default: the base
	// name of Path.
	Name string
	// Path is the program to run; a name without a slash is looked up in
	// PATH. Args are its arguments, without the program name.
	Path string
	Args []string
	// Env is added to the supervisor's environment (later entries win),
	// after DropEnv is taken out of it.
	Env []string
	// DropEnv names variables of the supervisor's environment that the
	// child does not inherit: the credentials the supervisor itself uses
	// (lameduck run drops the registries' and its admin token), so that a
	// child never holds a secret it was not given. Env may set them again.
	DropEnv []string
	// Dir is the child's working directory; empty means the supervisor's.
	Dir string

	// Instance is registered in every one of Registries once the child is
	// ready. Both may be empty, for a child nobody routes to by registry.
	Instance   registry.Instance
	Registries []registry.Registry

	// Ready reports whether a copy of the child can take traffic (an HTTP
	// GET of its health endpoint, say; see probe.HTTP). It is called at once
	// after the start, then every check interval until it passes. Required
	// with Registries.
	Ready probe.Check
	// Live, if set, is called every liveness interval once a copy is ready;
	// enough failures in a row count as that copy's death.
	Live probe.Check

	// StandbyPort is the port of a second copy of the child: the warm
	// standby (WithStandby) and the replacement a recycle starts
	// (WithRecycle). 0 means one copy only. Each copy is told its port:
	// "{port}" in Args is replaced with it, and PORT and LAMEDUCK_PORT are
	// set in its environment.
	StandbyPort int
	// StandbyID is the instance ID of the copy on StandbyPort. Default:
	// Instance.ID, a dash, and the port.
	StandbyID string
}

// ErrGaveUp is wrapped by Run's error when the restart-intensity limit was
// passed.
var ErrGaveUp = errors.New("supervisor: gave up restarting")

// GaveUpError is Run's error when the child failed too often.
type GaveUpError struct {
	Name      string
	Failures  float64 // decayed failure count
	Threshold float64
	Last      error // the last failure, an *ExitError or a start error
}

func (e *GaveUpError) Error() string {
	return fmt.Sprintf("supervisor: gave up restarting %s: failure count %.2f exceeds %g; last failure: %v; fix the child or raise the restart intensity",
		e.Name, e.Failures, e.Threshold, e.Last)
}

// Is makes errors.Is(err, ErrGaveUp) true.
func (e *GaveUpError) Is(target error) bool { return target == ErrGaveUp }
func (e *GaveUpError) Unwrap() error        { return e.Last }

// ExitError says how a child ended when that counts as a failure.
type ExitError struct {
	PID    int
	Code   int            // -1 when killed by a signal
	Signal syscall.Signal // the signal that killed it, if any
	Reason string         // "exited", "killed", "liveness failed (...), killed", "not ready in time (...), killed"
	Cause  error          // why the supervisor killed it: the failed liveness check, or an error wrapping ErrReadyTimeout
}

// Unwrap returns Cause, so that errors.Is(err, ErrReadyTimeout) holds for a
// copy killed for not becoming ready, through a *GaveUpError too.
func (e *ExitError) Unwrap() error { return e.Cause }

// ErrReadyTimeout is wrapped by the Cause of an *ExitError for a copy that
// did not pass Spec.Ready within the ready timeout (WithReadyTimeout).
var ErrReadyTimeout = errors.New("supervisor: not ready within the ready timeout")

// readyTimeoutError is why a copy was killed before it became ready.
type readyTimeoutError struct {
	after time.Duration
	last  error // the last check's error
}

func (e *readyTimeoutError) Error() string {
	return fmt.Sprintf("supervisor: not ready within %v; last check: %v", e.after, e.last)
}

func (e *readyTimeoutError) Is(target error) bool { return target == ErrReadyTimeout }
func (e *readyTimeoutError) Unwrap() error        { return e.last }

func (e *ExitError) Error() string {
	if e.Signal != 0 {
		return fmt.Sprintf("supervisor: child %d %s by signal %d (%v)", e.PID, e.Reason, int(e.Signal), e.Signal)
	}
	return fmt.Sprintf("supervisor: child %d %s with code %d", e.PID, e.Reason, e.Code)
}

// Supervisor runs one child. Create it with New; Run it once.
type Supervisor struct {
	spec  Spec
	o     options
	multi registry.Multi

	ran       atomic.Bool
	outMu     sync.Mutex
	forceOnce sync.Once
	forced    chan struct{} // closed by Force

	restarts atomic.Int64 // replacements started; read by emit from any goroutine

	guard *guard // set by Run before its first child starts; nil without one
	tree  *tree  // set by Run before its first child starts

	// owned by Run's goroutine
	failures float64
	lastFail time.Time
}

// New checks spec and the options and returns a Supervisor. It starts
// nothing. Off Linux it returns an error for which errors.Is(err,
// errors.ErrUnsupported) is true (see the package doc).
func New(spec Spec, opts ...Option) (*Supervisor, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	if err := checkOS(runtime.GOOS); err != nil {
		return nil, err
	}
	if spec.Path == "" {
		return nil, errors.New("supervisor: Spec.Path is empty; name the program to run")
	}
	if spec.Name == "" {
		spec.Name = filepath.Base(spec.Path)
	}
	for _, r := range spec.Registries {
		if r == nil {
			return nil, errors.New("supervisor: a nil registry in Spec.Registries")
		}
	}
	if len(spec.Registries) > 0 {
		if err := spec.Instance.Validate(); err != nil {
			return nil, fmt.Errorf("supervisor: %w", err)
		}
		if spec.Ready == nil {
			return nil, errors.New("supervisor: Spec.Ready is nil; the instance is registered only once a readiness check passes (see probe.HTTP)")
		}
	}
	switch {
	case o.threshold <= 0 || o.halfLife <= 0:
		return nil, fmt.Errorf("supervisor: restart intensity threshold %g and half-life %v must be positive", o.threshold, o.halfLife)
	case o.checkInterval < 0, o.readyTimeout < 0, o.checkTimeout < 0, o.liveInterval < 0, o.liveFailures < 0, o.stopGrace < 0, o.connQuiet < 0, o.connWait < 0, o.deregTimeout < 0, o.recycleAfter < 0, o.recycleEvery < 0:
		return nil, errors.New("supervisor: intervals, timeouts and counts must not be negative")
	case o.stopGrace >= o.budget:
		return nil, fmt.Errorf("supervisor: stop grace %v leaves nothing of the budget %v for the drain; lower it or raise the budget", o.stopGrace, o.budget)
	case spec.StandbyPort < 0 || spec.StandbyPort > 65535:
		return nil, fmt.Errorf("supervisor: Spec.StandbyPort %d is not a port (1-65535)", spec.StandbyPort)
	case spec.StandbyPort > 0 && spec.Instance.Port == 0:
		return nil, errors.New("supervisor: Spec.StandbyPort needs Spec.Instance.Port, the first copy's port")
	case spec.StandbyPort > 0 && spec.StandbyPort == spec.Instance.Port:
		return nil, fmt.Errorf("supervisor: Spec.StandbyPort %d is the instance's own port; the second copy needs a port of its own", spec.StandbyPort)
	case (o.standby || o.recycleAfter > 0 || o.recycleRSS > 0) && spec.StandbyPort == 0:
		return nil, errors.New("supervisor: a warm standby and recycling need a second port for the second copy; set Spec.StandbyPort")
	}
	if spec.StandbyPort > 0 && spec.StandbyID == "" && spec.Instance.ID != "" {
		spec.StandbyID = spec.Instance.ID + "-" + strconv.Itoa(spec.StandbyPort)
	}
	s := &Supervisor{spec: spec, o: o, multi: registry.Multi(spec.Registries), forced: make(chan struct{})}
	if spec.StandbyPort > 0 && len(spec.Registries) > 0 {
		if err := s.instance(1).Validate(); err != nil {
			return nil, fmt.Errorf("supervisor: standby: %w", err)
		}
	}
	// Check the drain options now rather than at SIGTERM, with the
	// registries, so that the budget check counts their confirmation.
	check := s.drainOptions(nil, true, nil)
	if len(spec.Registries) > 0 {
		check = append(check, drain.WithRegistries(spec.Registries...), drain.WithInstance(s.instance(0)))
	}
	if _, err := drain.New(&drain.Tracker{}, check...); err != nil {
		return nil, fmt.Errorf("supervisor: offline protocol: %w", err)
	}
	return s, nil
}

// instance returns the registry instance of the copy in slot 0 (Spec.Instance)
// or 1 (the copy on StandbyPort).
func (s *Supervisor) instance(slot int) registry.Instance {
	inst := s.spec.Instance
	if slot == 1 {
		inst.Port, inst.ID = s.spec.StandbyPort, s.spec.StandbyID
	}
	return inst
}

// Force cuts a running offline short: the children's process groups get
// SIGKILL at once and Run returns an error that wraps drain.ErrForced (nil
// if no copy was running, during a backoff say). If Run's ctx has not
// ended, Force ends the supervision as if it had. It is
// what a second SIGTERM does; safe to call more than once and from any
// goroutine.
func (s *Supervisor) Force() {
	s.forceOnce.Do(func() { close(s.forced) })
}

func (s *Supervisor) emit(e Event) {
	e.Time = s.o.clock.Now()
	e.Name = s.spec.Name
	e.Restarts = int(s.restarts.Load())
	s.o.onEvent(e)
}

// countFailure adds a failure to the decaying count and returns a
// *GaveUpError if the count passed the threshold. The count decays from
// the previous failure until good: now, or for a copy that never became
// ready, its start; time spent starting a copy that never became ready
// does not count as time without failures.
func (s *Supervisor) countFailure(fail error, good time.Time) error {
	now := s.o.clock.Now()
	if s.failures > 0 && good.After(s.lastFail) {
		s.failures *= math.Pow(0.5, float64(good.Sub(s.lastFail))/float64(s.o.halfLife))
	}
	s.failures++
	s.lastFail = now
	if s.failures > s.o.threshold {
		err := &GaveUpError{Name: s.spec.Name, Failures: s.failures, Threshold: s.o.threshold, Last: fail}
		s.emit(Event{Kind: EventGaveUp, Failures: s.failures, Err: err})
		return err
	}
	return nil
}

// exited reports a reaped copy's end and returns an error when it counts as
// a failure. reason is why the supervisor killed it (a failed liveness
// check, the ready timeout), if it did.
func (s *Supervisor) exited(p *proc, reason error) error {
	c := p.c
	code, sig := c.exitStatus()
	var exitErr error
	switch {
	case c.err != nil:
		exitErr = fmt.Errorf("supervisor: wait for child %d: %w", c.pid, c.err)
	case reason != nil:
		why := "liveness failed (" + reason.Error() + "), killed"
		var rt *readyTimeoutError
		if errors.As(reason, &rt) {
			why = fmt.Sprintf("not ready within %v (last check: %v), killed", rt.after, rt.last)
		}
		exitErr = &ExitError{PID: c.pid, Code: code, Signal: sig, Reason: why, Cause: reason}
	case sig != 0:
		exitErr = &ExitError{PID: c.pid, Code: code, Signal: sig, Reason: "killed"}
	case code != 0:
		exitErr = &ExitError{PID: c.pid, Code: code, Reason: "exited"}
	}
	s.emit(Event{Kind: EventExited, PID: c.pid, Port: p.port, Code: code, Signal: sig, Err: exitErr})
	return exitErr
}

// lifecycle waits for the copy's readiness and then polls its liveness,
// until ctx ends; it reports both to the run loop. A copy not ready within
// the ready timeout is reported as unhealthy, with an error wrapping
// ErrReadyTimeout.
func (s *Supervisor) lifecycle(ctx context.Context, p *proc, report func(msg)) {
	if s.spec.Ready != nil {
		if err := s.awaitReady(ctx, p); err != nil {
			if ctx.Err() == nil {
				report(msg{kind: msgUnhealthy, p: p, err: err})
			}
			return
		}
	}
	s.emit(Event{Kind: EventReady, PID: p.c.pid, Port: p.port})
	report(msg{kind: msgReady, p: p})
	if s.spec.Live == nil {
		return
	}
	for failed := 0; ; {
		t := s.o.clock.NewTimer(s.o.liveInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		err := s.check(ctx, s.spec.Live, p.port)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failed = 0
			continue
		}
		failed++
		s.emit(Event{Kind: EventUnhealthy, PID: p.c.pid, Port: p.port, Failures: float64(failed), Err: err})
		if failed >= s.o.liveFailures {
			report(msg{kind: msgUnhealthy, p: p, err: err})
			return
		}
	}
}

// awaitReady calls Spec.Ready until it passes (nil), ctx ends (ctx's
// error), or the ready timeout passes (an error wrapping ErrReadyTimeout
// and the last check's error). Between checks it backs off from the check
// interval to DefaultReadyMaxInterval; each wait is an EventNotReady.
func (s *Supervisor) awaitReady(ctx context.Context, p *proc) error {
	rctx := ctx
	if d := s.o.readyTimeout; d > 0 {
		var cancel context.CancelCauseFunc
		rctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		t := s.o.clock.AfterFunc(d, func() { cancel(ErrReadyTimeout) })
		defer t.Stop()
	}
	policy := s.o.readyPolicy()
	var last error // the last check that failed on its own, not cut short by the timeout
	for attempt := 0; ; attempt++ {
		err := s.check(rctx, s.spec.Ready, p.port)
		if err == nil {
			return nil
		}
		if rctx.Err() != nil {
			if last == nil {
				last = err
			}
			return s.readyErr(ctx, last)
		}
		last = err
		d := policy.Delay(attempt)
		t := s.o.clock.NewTimer(d)
		s.emit(Event{Kind: EventNotReady, PID: p.c.pid, Port: p.port, Delay: d, Err: err})
		select {
		case <-rctx.Done():
			t.Stop()
			return s.readyErr(ctx, last)
		case <-t.C():
		}
	}
}

// readyErr is awaitReady's error once rctx has ended: ctx's own error, or
// the ready timeout with the last check's error.
func (s *Supervisor) readyErr(ctx context.Context, last error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &readyTimeoutError{after: s.o.readyTimeout, last: last}
}

// check calls f with a context that ends after the check timeout.
func (s *Supervisor) check(ctx context.Context, f probe.Check, port int) error {
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t := s.o.clock.AfterFunc(s.o.checkTimeout, func() {
		cancel(fmt.Errorf("supervisor: check took longer than %v", s.o.checkTimeout))
	})
	defer t.Stop()
	if err := f(cctx, port); err != nil {
		if cause := context.Cause(cctx); cause != nil && ctx.Err() == nil {
			return errors.Join(err, cause)
		}
		return err
	}
	return nil
}

// retry is backoff.Retry on the supervisor's clock: f until it succeeds,
// the registry refuses for good (registry.ErrRejected), or ctx ends. Each
// failure is an EventRegistryRetry.
func (s *Supervisor) retry(ctx context.Context, port int, f func(context.Context) error) error {
	return backoff.Retry(ctx, s.o.clock, s.o.regRetry, f, func(err error, d time.Duration) {
		s.emit(Event{Kind: EventRegistryRetry, Port: port, Delay: d, Err: err})
	})
}

// deregister takes a copy's instance out of every registry, retrying for
// up to the deregistration timeout: a dead child must not stay routable
// because the supervisor is also stopping.
func (s *Supervisor) deregister(p *proc) {
	dctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t := s.o.clock.AfterFunc(s.o.deregTimeout, cancel)
	defer t.Stop()
	err := s.retry(dctx, p.port, func(ctx context.Context) error { return s.multi.Deregister(ctx, p.inst) })
	s.emit(Event{Kind: EventDeregistered, PID: p.c.pid, Port: p.port, Err: err})
}

// drainOptions are the offline protocol's options; p is nil when New only
// checks them. idle says whether the Draining phase waits for the port's
// connections to go quiet before SIGTERM (pointless for a copy that never
// took traffic). The stop grace is the protocol's stop reserve: the
// coordinator alone splits the budget. rec, when not nil, records the
// offline for its report, its curve read from the port's connections.
func (s *Supervisor) drainOptions(p *proc, idle bool, rec *recording) []drain.Option {
	opts := []drain.Option{
		drain.WithBudget(s.o.budget),
		drain.WithStopReserve(s.o.stopGrace),
		drain.WithQuietWindow(s.o.connQuiet),
		drain.WithEventHook(func(e drain.Event) {
			if rec != nil && rec.r != nil {
				rec.r.Observe(e)
			}
			ev := Event{Kind: EventDrain, Drain: &e}
			if p != nil {
				ev.PID, ev.Port = p.c.pid, p.port
			}
			s.emit(ev)
		}),
	}
	terminate := noop
	port := s.spec.Instance.Port
	if p != nil {
		terminate, port = s.terminate(p), p.port
	}
	opts = append(opts, drain.WithStopHook("terminate", terminate))
	var conns *conncount.Drainer
	if idle && port > 0 {
		counter, err := conncount.New(port)
		if err == nil {
			conns = &conncount.Drainer{Counter: counter, MaxWait: s.o.connWait, Bounded: s.o.connWaitSet, Every: connPoll}
			if p != nil {
				conns.OnLeft = func(n int) {
					s.emit(Event{Kind: EventConnsBusy, PID: p.c.pid, Port: p.port,
						Err: fmt.Errorf("%w: %d on port %d after %v; SIGTERM lets the child's graceful shutdown end them", ErrConnWait, n, p.port, s.o.connWait)})
				}
			}
			opts = append(opts, drain.WithSource(conns))
		}
	}
	if rec != nil {
		var sample func() (int64, int64)
		if conns != nil {
			sample = func() (int64, int64) { return int64(conns.Busy()), 0 }
		}
		rec.r = report.NewRecorder(sample)
	}
	if conns == nil {
		// The coordinator's own tracker counts nothing here: nothing to
		// drain.
		opts = append(opts, drain.WithSource(nil))
	}
	return append(opts, s.o.drainOpts...)
}

func noop(context.Context) error { return nil }

// recording is one offline's report recorder, made once its source is
// known (see drainOptions).
type recording struct{ r *report.Recorder }

// offline takes a running copy offline with the drain protocol: out of the
// registries (if registered says it may be in them) and confirmed, its
// connections quiet, SIGTERM, SIGKILL at the deadline. It returns once the
// child is reaped. Force cuts it short.
func (s *Supervisor) offline(p *proc, registered bool) error {
	c := p.c
	var rec *recording
	if s.o.reportPath != "" {
		rec = &recording{}
	}
	opts := s.drainOptions(p, registered, rec)
	if registered {
		opts = append(opts, drain.WithRegistries(s.spec.Registries...), drain.WithInstance(p.inst))
	}
	co, err := drain.New(&drain.Tracker{}, opts...)
	if err != nil {
		return errors.Join(fmt.Errorf("supervisor: offline protocol: %w", err), s.reap(c))
	}
	stopForce := make(chan struct{})
	go func() {
		select {
		case <-s.forced:
			co.Force()
		case <-stopForce:
		}
	}()
	// The budget bounds the protocol; nothing else should cut it short.
	rep, err := co.Offline(context.Background())
	close(stopForce)
	if rec != nil {
		off := rec.r.Report(rep)
		if werr := off.WriteFiles(s.o.reportPath); werr != nil {
			s.emit(Event{Kind: EventReport, PID: c.pid, Port: p.port, Err: werr})
		}
	}
	if !c.exited() { // only if a hook failed to stop it
		err = errors.Join(err, s.reap(c))
	}
	code, sig := c.exitStatus()
	var exitErr error
	if c.err != nil {
		exitErr = fmt.Errorf("supervisor: wait for child %d: %w", c.pid, c.err)
	} else if code != 0 && sig != syscall.SIGTERM && sig != syscall.SIGKILL {
		// Dying by our SIGTERM is a clean stop for a child without a
		// handler; SIGKILL is already reported by the protocol's error.
		exitErr = &ExitError{PID: c.pid, Code: code, Signal: sig, Reason: "exited during offline"}
	}
	s.emit(Event{Kind: EventExited, PID: c.pid, Port: p.port, Code: code, Signal: sig, Err: exitErr})
	return errors.Join(err, exitErr)
}

// reap kills the group and waits for the child, for paths that give up.
func (s *Supervisor) reap(c *child) error {
	err := c.signal(syscall.SIGKILL)
	<-c.done
	return err
}

// terminate is the stop hook that sends SIGTERM to the copy's group and
// waits for it to exit; at the deadline (or on Force) it sends SIGKILL.
func (s *Supervisor) terminate(p *proc) func(context.Context) error {
	c := p.c
	return func(ctx context.Context) error {
		if c.exited() {
			return nil
		}
		s.emit(Event{Kind: EventSignaled, PID: c.pid, Port: p.port, Signal: syscall.SIGTERM})
		if err := c.signal(syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-c.done:
			return nil
		case <-ctx.Done():
		}
		s.emit(Event{Kind: EventSignaled, PID: c.pid, Port: p.port, Signal: syscall.SIGKILL})
		err := c.signal(syscall.SIGKILL)
		<-c.done
		return errors.Join(fmt.Errorf("supervisor: child %d did not exit after SIGTERM; sent SIGKILL: %w", c.pid, context.Cause(ctx)), err)
	}
}

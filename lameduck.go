// Package lameduck wires the pieces for an application that links the
// library: the registries and instance, the in-flight tracker, the admin
// endpoint and signal handling, around one offline protocol.
//
//	app, err := lameduck.New(inst, []registry.Registry{reg},
//		lameduck.WithReady(probe.HTTP("http://127.0.0.1:8080/healthz").At(8080)),
//		lameduck.WithStopHook("http", srv.Shutdown))
//	mw, _ := httpdrain.Middleware(app.Tracker())
//	...
//	os.Exit(lameduck.ExitCode(app.Run(ctx)))
//
// Run registers the instance only once the app reports ready, then waits for
// SIGTERM or SIGINT, a POST to the admin endpoint, or the end of ctx, and
// takes the instance offline. A second signal forces an immediate stop.
package lameduck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/pkg/report"
	"github.com/lameduck/lameduck/registry"
)

// Exit codes shared by Run's callers and the lameduck commands; see
// drain.Outcome.ExitCode.
const (
	ExitOK       = drain.ExitOK       // drained cleanly
	ExitFailed   = drain.ExitFailed   // something else went wrong
	ExitBadInput = drain.ExitBadInput // bad flags, arguments, URLs or options
	ExitRegistry = drain.ExitRegistry // a registry could not be reached in time, or refused (the drain still happened)
	ExitForced   = drain.ExitForced   // the deadline or a second signal forced the stop
)

// MetaAdmin is the instance metadata key under which an App publishes its
// admin endpoint, so that `lameduck status` and `lameduck offline` can find
// it. Consul accepts only letters, digits, '_' and '-' in metadata keys.
const MetaAdmin = "lameduck_admin"

// ExitCode maps Run's error (or the coordinator's) to a process exit code,
// through its drain.OutcomeOf: ExitForced when the drain or the stop was
// cut short (the deadline or a second signal), ExitRegistry when only the
// registry work failed, was refused or ran out of time (the drain itself
// finished), ExitFailed otherwise.
func ExitCode(err error) int { return drain.OutcomeOf(err).ExitCode() }

// OutcomeExitCode is o.ExitCode(): the exit code for an outcome.
func OutcomeExitCode(o drain.Outcome) int { return o.ExitCode() }

// Option configures an App.
type Option func(*options)

type options struct {
	drain      []drain.Option
	adminAddr  string
	adminToken string
	adminSet   bool
	adminConns int // 0: admin.DefaultMaxConns
	adminPolls int // 0: admin.DefaultMaxLongPolls
	ready      func(ctx context.Context) error
	onEvent    func(drain.Event)
	log        *slog.Logger
	signals    []os.Signal
	backoff    backoff.Policy
	reportPath string
}

func (o *options) setDefaults() {
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.signals == nil {
		o.signals = []os.Signal{syscall.SIGTERM, os.Interrupt}
	}
}

// WithDrain passes options to the offline protocol: budget, quiet window,
// minimum wait, stop reserve, disable instead of deregister...
func WithDrain(opts ...drain.Option) Option {
	return func(o *options) { o.drain = append(o.drain, opts...) }
}

// WithStopHook adds a stop hook (a server's graceful shutdown, closing a
// database); hooks run in reverse order of registration.
func WithStopHook(name string, stop func(ctx context.Context) error) Option {
	return WithDrain(drain.WithStopHook(name, stop))
}

// WithReady sets the check that must pass before the instance is
// registered, so it takes no traffic before it can serve. It is retried with
// backoff until it returns nil.
func WithReady(check func(ctx context.Context) error) Option {
	return func(o *options) { o.ready = check }
}

// WithAdmin sets the admin endpoint's address (default admin.DefaultAddr,
// loopback) and bearer token. A non-loopback address needs a token. An empty
// address turns the endpoint off.
func WithAdmin(addr, token string) Option {
	return func(o *options) { o.adminAddr, o.adminToken, o.adminSet = addr, token, true }
}

// WithAdminLimits sets the admin endpoint's cap on open connections
// (default admin.DefaultMaxConns, 64) and on /wait long-polls held at once
// (default admin.DefaultMaxLongPolls, 32; beyond it /wait answers 429). A
// value <= 0 keeps the default. The long-poll cap must stay below the
// connection cap, so that POST /offline finds a connection when every
// long-poll slot is taken; New refuses it otherwise.
func WithAdminLimits(maxConns, maxLongPolls int) Option {
	return func(o *options) { o.adminConns, o.adminPolls = maxConns, maxLongPolls }
}

// WithEventHook receives every protocol event, after the App has logged it.
func WithEventHook(f func(drain.Event)) Option { return func(o *options) { o.onEvent = f } }

// WithReport makes Run write a report of the offline once it is done: JSON
// to path, and an SVG timeline next to it (report.SVGPath: path with its
// extension replaced by .svg). A report that cannot be written is logged;
// it does not change Run's result. New refuses a path ending in .svg or in
// a directory that does not exist.
func WithReport(path string) Option { return func(o *options) { o.reportPath = path } }

// WithLogger sets the logger; the default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithSignals sets the signals that start going offline; the default is
// SIGTERM and SIGINT.
func WithSignals(sig ...os.Signal) Option { return func(o *options) { o.signals = sig } }

// App is one instance of an application under lameduck. Create it with
// New, count requests with Tracker, and call Run once.
type App struct {
	o       options
	inst    registry.Instance
	regs    []registry.Registry
	tracker *drain.Tracker
	coord   *drain.Coordinator
	metrics *admin.Metrics
	handler http.Handler
	rec     *report.Recorder // nil without WithReport
	ran     sync.Once
}

// New checks everything it can before anything starts: the instance, the
// registries, the budget against the phases' minimums, and the admin
// address.
func New(inst registry.Instance, regs []registry.Registry, opts ...Option) (*App, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if !o.adminSet {
		o.adminAddr = admin.DefaultAddr
	}
	o.setDefaults()
	if err := inst.Validate(); err != nil {
		return nil, err
	}
	if o.adminAddr != "" {
		if err := admin.CheckAddr(o.adminAddr, o.adminToken != ""); err != nil {
			return nil, err
		}
	}
	conns, polls := admin.DefaultMaxConns, admin.DefaultMaxLongPolls // for a value <= 0, as pkg/admin does
	if o.adminConns > 0 {
		conns = o.adminConns
	}
	if o.adminPolls > 0 {
		polls = o.adminPolls
	}
	if polls >= conns {
		return nil, fmt.Errorf("lameduck: WithAdminLimits: the long-poll cap %d must be below the connection cap %d, so that POST /offline always finds a connection", polls, conns)
	}
	if o.adminAddr != "" {
		if _, set := inst.Metadata[MetaAdmin]; !set {
			md := make(map[string]string, len(inst.Metadata)+1)
			for k, v := range inst.Metadata {
				md[k] = v
			}
			md[MetaAdmin] = "http://" + o.adminAddr
			inst.Metadata = md
		}
	}
	a := &App{o: o, inst: inst, regs: regs, tracker: &drain.Tracker{}}
	if o.reportPath != "" {
		if err := report.CheckPath(o.reportPath); err != nil {
			return nil, fmt.Errorf("lameduck: WithReport: %w", err)
		}
		a.rec = report.NewRecorder(func() (int64, int64) { return a.tracker.InFlight(), a.tracker.LongLived() })
	}
	dopts := append([]drain.Option{
		drain.WithRegistries(regs...),
		drain.WithInstance(inst),
		drain.WithEventHook(a.event),
	}, o.drain...)
	coord, err := drain.New(a.tracker, dopts...)
	if err != nil {
		return nil, err
	}
	a.coord = coord
	if a.metrics, err = admin.NewMetrics(coord); err != nil {
		return nil, err
	}
	hopts := []admin.Option{admin.WithMetrics(a.metrics), admin.WithMaxLongPolls(o.adminPolls)}
	if o.adminToken != "" {
		hopts = append(hopts, admin.WithToken(o.adminToken))
	}
	if a.handler, err = admin.NewHandler(coord, hopts...); err != nil {
		return nil, err
	}
	return a, nil
}

// Tracker is the tracker to hand to the middleware.
func (a *App) Tracker() *drain.Tracker { return a.tracker }

// Coordinator runs the offline protocol; Run drives it.
func (a *App) Coordinator() *drain.Coordinator { return a.coord }

// AdminHandler is the admin endpoint, for apps that serve it themselves
// (with WithAdmin("", "")). Serve it with admin.Serve, whose limits keep
// it from taking the file descriptors the app's own listener needs.
func (a *App) AdminHandler() http.Handler { return a.handler }

func (a *App) event(e drain.Event) {
	a.metrics.Observe(e)
	if a.rec != nil {
		a.rec.Observe(e)
	}
	l := a.o.log
	switch e.Kind {
	case drain.EventPhase:
		l.Info("lameduck: phase", "phase", e.Phase.String(), "elapsed", e.Elapsed, "in_flight", e.InFlight)
	case drain.EventRegistered:
		l.Info("lameduck: registered", "registry", e.Registry, "instance", a.inst.Key())
	case drain.EventDeregistered:
		l.Info("lameduck: removed from registry", "registry", e.Registry)
	case drain.EventConfirmed:
		l.Info("lameduck: registry confirmed", "registry", e.Registry, "latency", e.Latency)
	case drain.EventRetry:
		l.Warn("lameduck: registry call failed, retrying", "registry", e.Registry, "delay", e.Delay, "err", e.Err)
	case drain.EventGaveUp:
		l.Error("lameduck: gave up on registry", "registry", e.Registry, "err", e.Err)
	case drain.EventView:
		logView(l, e)
	case drain.EventStopHook:
		if e.Err != nil {
			l.Error("lameduck: stop hook failed", "hook", e.Hook, "err", e.Err)
		}
	}
	if a.o.onEvent != nil {
		a.o.onEvent(e)
	}
}

// logView logs what one server of a clustered registry did during the
// confirmation: a server that stops answering or needs the removal again is
// worth a warning; the others are detail.
func logView(l *slog.Logger, e drain.Event) {
	attrs := []any{"registry", e.Registry, "server", e.View, "at", e.Latency}
	switch {
	case e.ViewKind == registry.ViewDown:
		l.Warn("lameduck: registry server does not answer; not waiting for it while it is down", append(attrs, "err", e.Err)...)
	case e.ViewKind == registry.ViewRemovedAgain && e.Err != nil:
		l.Warn("lameduck: could not remove the instance again through a registry server", append(attrs, "err", e.Err)...)
	case e.ViewKind == registry.ViewRemovedAgain:
		l.Warn("lameduck: registry server still listed the instance; removed it again", attrs...)
	case e.ViewKind == registry.ViewGone:
		l.Debug("lameduck: registry server no longer lists the instance", attrs...)
	default:
		l.Info("lameduck: registry server "+e.ViewKind.String(), attrs...)
	}
}

// Run serves the admin endpoint, waits for readiness, registers, waits for
// a reason to go offline and runs the protocol. It returns the protocol's
// error (nil for a clean offline); see ExitCode. Run may be called once.
func (a *App) Run(ctx context.Context) error {
	err := errors.New("lameduck: Run called twice; an App runs once")
	a.ran.Do(func() { err = a.run(ctx) })
	return err
}

func (a *App) run(ctx context.Context) error {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, a.o.signals...)
	defer signal.Stop(sig)

	if a.o.adminAddr != "" {
		ln, err := net.Listen("tcp", a.o.adminAddr)
		if err != nil {
			return fmt.Errorf("lameduck: admin endpoint on %s: %w", a.o.adminAddr, err)
		}
		// The endpoint outlives ctx: it reports the offline ctx started, and
		// stops once Run is done, letting long-polls waiting for Offline get
		// their answer.
		actx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := admin.Serve(actx, ln, a.handler, admin.WithMaxConns(a.o.adminConns)); err != nil {
				a.o.log.Error("lameduck: admin endpoint stopped", "err", err)
			}
		}()
		defer func() { stopAdmin(); <-served }()
		a.o.log.Info("lameduck: admin endpoint", "addr", ln.Addr().String())
	}

	// Anything that asks to go offline from here on: a signal, the admin
	// endpoint (which starts the coordinator itself), or ctx.
	started := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		if a.coord.WaitPhase(wctx, drain.Deregistering) == nil {
			close(started)
		}
	}()
	trigger, cancelTrigger := context.WithCancel(ctx)
	defer cancelTrigger()
	go func() {
		select {
		case s := <-sig:
			a.o.log.Info("lameduck: signal, going offline", "signal", s.String())
		case <-started:
		case <-trigger.Done():
			return
		}
		cancelTrigger()
	}()

	var regErr error
	if err := a.becomeReady(trigger); err == nil {
		// A registration the registry refused for good cannot take traffic:
		// go offline (the stop hooks still run) and say why.
		if regErr = a.register(trigger); regErr != nil {
			cancelTrigger()
		}
	}
	<-trigger.Done()
	stopWatch()

	a.coord.Start()
	for {
		select {
		case <-a.coord.Done():
			rep, err := a.coord.Wait(context.Background())
			a.metrics.ObserveResult(err)
			a.writeReport(rep)
			return errors.Join(regErr, err)
		case s := <-sig:
			a.o.log.Warn("lameduck: second signal, forcing the stop", "signal", s.String())
			a.coord.Force()
		}
	}
}

// writeReport writes the offline's report, with WithReport. A failure is
// only logged: the offline itself is done, and Run's result is its own.
func (a *App) writeReport(rep drain.Report) {
	if a.rec == nil {
		return
	}
	off := a.rec.Report(rep)
	if err := off.WriteFiles(a.o.reportPath); err != nil {
		a.o.log.Error("lameduck: could not write the offline report", "err", err)
		return
	}
	a.o.log.Info("lameduck: offline report written", "json", a.o.reportPath, "svg", report.SVGPath(a.o.reportPath), "summary", off.String())
}

// becomeReady runs the readiness check until it passes or ctx ends.
func (a *App) becomeReady(ctx context.Context) error {
	if a.o.ready == nil {
		return nil
	}
	return a.retry(ctx, "readiness check", a.o.ready)
}

// register registers the instance in every registry through the
// coordinator, which retries each until it succeeds, is refused for good,
// or ctx ends, and shows where each stands in /status. It returns the
// refusals that retrying cannot change (registry.ErrRejected).
func (a *App) register(ctx context.Context) error {
	var refused []error
	var failed []error // Register's errors.Join: one *registry.Error each
	if j, ok := a.coord.Register(ctx).(interface{ Unwrap() []error }); ok {
		failed = j.Unwrap()
	}
	for _, err := range failed {
		// The others ended with ctx: going offline before registering.
		if errors.Is(err, registry.ErrRejected) {
			a.o.log.Error("lameduck: the registry refused the registration; going offline", "err", err)
			refused = append(refused, err)
		}
	}
	return errors.Join(refused...)
}

func (a *App) retry(ctx context.Context, what string, f func(ctx context.Context) error) error {
	return backoff.Retry(ctx, clock.Real{}, a.o.backoff, f, func(err error, d time.Duration) {
		a.o.log.Warn("lameduck: "+what+" failed, retrying", "err", err, "delay", d)
	})
}

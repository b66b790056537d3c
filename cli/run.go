package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/pkg/supervisor"
)

// programFlags are run's flags that describe the one program of the
// command line; with --config each program sets them in the file instead.
var programFlags = []string{
	"service", "port", "id", "ready", "live", "standby", "standby-port", "standby-id", "recycle-after", "recycle-rss", "report",
}

func runCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "run",
		Usage:     "supervise a service: register it once ready, deregister the moment it dies, restart it, take it offline losslessly on SIGTERM",
		ArgsUsage: "-- COMMAND [ARGS...]  |  --config FILE",
		Description: "Starts COMMAND in its own process group, registers it in every --registry once --ready passes\n" +
			"(an HTTP URL; by default, once --port accepts connections), deregisters it at once when it exits\n" +
			"abnormally and restarts it with backoff, giving up after too many failures in a short time.\n" +
			"On SIGTERM or SIGINT: deregister, confirm, wait until none of its connections carries a request and\n" +
			"none has arrived for 250ms (at most --conn-wait), then SIGTERM to the child and SIGKILL at the\n" +
			"deadline. Idle keep-alive connections and streams are left to the child's graceful shutdown. A second\n" +
			"SIGTERM or SIGINT sends SIGKILL at once (exit 4).\n\n" +
			"--standby keeps a warm second copy on --standby-port (default --port + 1), ready but unregistered,\n" +
			"registered the moment the first one dies. --recycle-after and --recycle-rss replace a copy that is\n" +
			"too old or too big: its replacement is registered first, then it is taken offline losslessly.\n" +
			"Each copy is told its port: {port} in the command's arguments and in --ready and --live URLs is\n" +
			"replaced with it, and PORT and LAMEDUCK_PORT are set. A --ready or --live URL on --port itself is\n" +
			"read as {port}, so each copy is checked on its own port.\n\n" +
			"--config FILE supervises several programs, each with its own service, port, checks and command\n" +
			"(see examples/run-config.yaml); registries and credentials still come from the command line.\n" +
			"The programs run side by side: one that gives up leaves the others running, and SIGTERM takes\n" +
			"them all offline at once. The exit code is the worst of theirs once all have ended.\n\n" +
			"--metrics ADDR serves Prometheus metrics at /metrics (loopback, or any address with --admin-token).\n\n" +
			"A copy not ready --ready-timeout after its start is killed, as a failed start. The child gets\n" +
			"lameduck's environment without the secrets lameduck reads:\n" +
			"  " + strings.Join(secretEnv(), ", ") + "\n" +
			"--pass-env NAME passes one all the same. Everything the child starts stays in its cgroup (where a\n" +
			"cgroup v2 hierarchy is writable; lameduck is also a subreaper) and is killed with it, setsid or not.\n\n" +
			exitCodesHelp(),
		Flags: append(registryFlags(""),
			&ucli.StringFlag{Name: "config", Usage: "YAML file of programs to supervise, instead of -- COMMAND (see examples/run-config.yaml)"},
			&ucli.StringFlag{Name: "service", Usage: "service name (required)"},
			&ucli.IntFlag{Name: "port", Usage: "the port the child serves on (required)"},
			&ucli.StringFlag{Name: "addr", Value: "127.0.0.1", Usage: "the address consumers reach the child at", EnvVars: []string{EnvPodIP}},
			&ucli.StringFlag{Name: "id", Usage: "instance ID (default SERVICE-ADDR-PORT)"},
			&ucli.StringFlag{Name: "ready", Usage: "readiness URL, such as http://127.0.0.1:{port}/healthz; registered only once it answers 2xx (default: once the port accepts connections)"},
			&ucli.DurationFlag{Name: "ready-timeout", Value: 5 * time.Minute,
				Usage: "kill a copy not ready this long after its start, as a failed start: too many in a row and run gives up (0: wait forever)"},
			&ucli.StringFlag{Name: "live", Usage: "liveness URL; the child is restarted when it keeps failing"},
			&ucli.DurationFlag{Name: "budget", Value: 30 * time.Second, Usage: "the one deadline for taking the child offline"},
			&ucli.DurationFlag{Name: "consumer-lag", Usage: "how long consumers that cache the registry (Spring Cloud LoadBalancer: 35s) may keep " +
				"calling after the confirmation: until then quiet alone does not end the drain; refused if the budget cannot hold it"},
			&ucli.StringFlag{Name: "report", Usage: "write a report of each offline: JSON to this path and an SVG timeline next to it (.svg); each offline replaces the last"},
			&ucli.DurationFlag{Name: "conn-wait", DefaultText: "until the deadline",
				Usage: "after the registries confirm, wait at most this long for the requests on the port to end before SIGTERM " +
					"(0: no wait); requests still running are left to the child's graceful shutdown"},
			&ucli.BoolFlag{Name: "standby", Usage: "keep a warm standby on --standby-port, registered the moment the active copy dies"},
			&ucli.IntFlag{Name: "standby-port", Usage: "the second copy's port (default --port + 1 with --standby or a recycle limit)"},
			&ucli.StringFlag{Name: "standby-id", Usage: "the second copy's instance ID (default SERVICE-ADDR-STANDBYPORT, or ID-STANDBYPORT with --id)"},
			&ucli.DurationFlag{Name: "recycle-after", Usage: "replace a copy once it has run this long, such as 24h (0: no age limit)"},
			&ucli.StringFlag{Name: "recycle-rss", Usage: "replace a copy once its resident memory passes this size, such as 512MiB or 1GiB (0: no limit)"},
			&ucli.StringSliceFlag{Name: "pass-env", Usage: "let the child inherit this secret variable, such as " + adapters.EnvConsulToken + " (repeat for several; it gets every other variable anyway)"},
			&ucli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics at http://ADDR/metrics, such as 127.0.0.1:9464"},
			&ucli.StringFlag{Name: "admin-token", Usage: "bearer token /metrics then requires; lets --metrics bind a non-loopback address", EnvVars: []string{EnvAdminToken}},
		),
		Before: func(*ucli.Context) error { return linuxOnlyRun.onThisOS() },
		Action: runAction,
	}
}

func runAction(c *ucli.Context) error {
	var (
		progs    []programConfig
		fileRegs *runFile
		single   bool
	)
	if path := c.String("config"); path != "" {
		if c.NArg() > 0 {
			return badInput("--config and a command after -- do not mix; put the command under the program in %s, or drop --config", path)
		}
		for _, f := range programFlags {
			if c.IsSet(f) {
				return badInput("--%s is set per program in the config file; with --config the command line gives only registries, credentials, --addr, --budget, --consumer-lag, --conn-wait, --ready-timeout, --pass-env and --metrics; report is a key per program", f)
			}
		}
		def := programConfig{
			Addr: c.String("addr"), Budget: c.Duration("budget"),
			ConnWait: c.Duration("conn-wait"), ConnWaitSet: c.IsSet("conn-wait"),
			ReadyTimeout: c.Duration("ready-timeout"), PassEnv: c.StringSlice("pass-env"),
			ConsumerLag: c.Duration("consumer-lag"),
		}
		if err := def.checkDefaults(); err != nil {
			return err
		}
		rf, err := loadRunConfig(path, def)
		if err != nil {
			return err
		}
		progs, fileRegs = rf.programs, rf
	} else {
		p, err := programFromFlags(c)
		if err != nil {
			return err
		}
		progs, single = []programConfig{p}, true
	}
	if err := checkMetricsFlags(c); err != nil {
		return err
	}
	regs, err := openRunRegistries(c, fileRegs)
	if err != nil {
		return err
	}
	defer adapters.CloseAll(regs)
	var names []string
	for _, p := range progs {
		names = append(names, p.Name)
	}
	metrics, err := supervisor.NewMetrics(names...)
	if err != nil {
		return err
	}
	events := newEventLog(slog.Default(), nil)
	sups := make([]*supervisor.Supervisor, len(progs))
	for i, p := range progs {
		sup, err := newSupervisor(c, p, regs, metrics, events)
		if err != nil {
			if single {
				return badInput("%v", err)
			}
			return badInput("program %q: %v", p.Name, err)
		}
		sups[i] = sup
	}
	if addr := c.String("metrics"); addr != "" {
		stop, err := serveMetrics(addr, c.String("admin-token"), metrics)
		if err != nil {
			return err
		}
		defer stop()
	}
	return superviseAll(c.Context, progs, sups, metrics)
}

// programFromFlags is the program of `lameduck run ... -- COMMAND`.
func programFromFlags(c *ucli.Context) (programConfig, error) {
	argv := c.Args().Slice()
	switch {
	case len(argv) == 0:
		return programConfig{}, badInput("no command to run; put it after --, as in: lameduck run --service web --port 8080 -- ./web, or give --config FILE")
	case c.String("service") == "":
		return programConfig{}, badInput("missing --service; name the service the child serves")
	case len(c.StringSlice("registry")) == 0:
		return programConfig{}, noRegistry("")
	}
	p := programConfig{
		Name: filepath.Base(argv[0]), Command: argv,
		Service: c.String("service"), Addr: c.String("addr"), Port: c.Int("port"), ID: c.String("id"),
		Ready: c.String("ready"), Live: c.String("live"), Budget: c.Duration("budget"),
		ReadyTimeout: c.Duration("ready-timeout"), PassEnv: c.StringSlice("pass-env"),
		ConsumerLag: c.Duration("consumer-lag"), Report: c.String("report"),
		ConnWait: c.Duration("conn-wait"), ConnWaitSet: c.IsSet("conn-wait"),
		Standby: c.Bool("standby"), StandbyPort: c.Int("standby-port"), StandbyID: c.String("standby-id"),
		RecycleAfter: c.Duration("recycle-after"),
	}
	if s := c.String("recycle-rss"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			return p, badInput("--recycle-rss %v", err)
		}
		p.RecycleRSS = n
	}
	if err := p.finish(); err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return p, badInput("%s", fe.render("--"))
		}
		return p, badInput("%v", err)
	}
	return p, nil
}

// openRunRegistries opens the --registry flags, or else the config file's
// registries: (the flags win, so one file serves several environments).
func openRunRegistries(c *ucli.Context, rf *runFile) ([]adapters.Registry, error) {
	if len(c.StringSlice("registry")) > 0 || rf == nil {
		return openRegistries(c)
	}
	if len(rf.registries) == 0 {
		return nil, noRegistry(c.String("config"))
	}
	creds := registryCredentials(c)
	var regs []adapters.Registry
	for i, raw := range rf.registries {
		r, err := adapters.Open(c.Context, raw, creds)
		if err != nil {
			_ = adapters.CloseAll(regs)
			return nil, configError(filepath.Base(c.String("config")), rf.regLines[i], "registries: %v", err)
		}
		regs = append(regs, r)
	}
	return regs, nil
}

// newSupervisor builds the supervisor of one program.
func newSupervisor(c *ucli.Context, p programConfig, regs []adapters.Registry, metrics *supervisor.Metrics, events *eventLog) (*supervisor.Supervisor, error) {
	spec := supervisor.Spec{
		Name: p.Name, Path: p.Command[0], Args: p.Command[1:], Env: p.Env, DropEnv: p.dropEnv(), Dir: p.Dir,
		Instance: p.instance(), Ready: tcpReady,
		StandbyPort: p.StandbyPort, StandbyID: p.StandbyID,
	}
	if !p.needsStandbyPort() {
		spec.StandbyPort, spec.StandbyID = 0, ""
	}
	for _, r := range regs {
		spec.Registries = append(spec.Registries, r)
	}
	if p.Ready != "" {
		spec.Ready = probe.HTTP(p.Ready)
	}
	if p.Live != "" {
		spec.Live = probe.HTTP(p.Live)
	}
	opts := []supervisor.Option{
		supervisor.WithBudget(p.Budget),
		supervisor.WithOutput(c.App.Writer, c.App.ErrWriter),
		supervisor.WithEventHook(func(e supervisor.Event) {
			metrics.Observe(e)
			events.event(e)
		}),
		// lameduck run starts no processes but its children: the
		// subreaper may reap and kill every orphan it adopts.
		supervisor.WithSubreaper(),
		supervisor.WithReadyTimeout(p.ReadyTimeout),
	}
	if p.ConnWaitSet {
		opts = append(opts, supervisor.WithConnWait(p.ConnWait))
	}
	if p.ConsumerLag > 0 {
		opts = append(opts, supervisor.WithDrainOptions(drain.WithConsumerLag(p.ConsumerLag)))
	}
	if p.Report != "" {
		opts = append(opts, supervisor.WithReport(p.Report))
	}
	if p.Standby {
		opts = append(opts, supervisor.WithStandby())
	}
	if p.RecycleAfter > 0 || p.RecycleRSS > 0 {
		opts = append(opts, supervisor.WithRecycle(p.RecycleAfter, p.RecycleRSS))
	}
	return supervisor.New(spec, opts...)
}

// superviseAll runs every supervisor until all have ended. The programs
// are independent, as under supervisord or systemd: one that gives up
// (or exits 0 on its own) leaves the others running. ctx's end takes them
// all offline at once; a second interrupt forces them all.
func superviseAll(ctx context.Context, progs []programConfig, sups []*supervisor.Supervisor, metrics *supervisor.Metrics) error {
	forced := forceRequested(ctx)
	over := make(chan struct{})
	defer close(over)
	go func() {
		select {
		case <-forced:
			slog.Warn("lameduck run: second signal, killing every child now")
			for _, s := range sups {
				s.Force()
			}
		case <-over:
		}
	}()
	errs := make([]error, len(sups))
	var wg sync.WaitGroup
	for i, s := range sups {
		wg.Go(func() {
			errs[i] = s.Run(ctx)
			metrics.ObserveResult(progs[i].Name, errs[i])
			if errs[i] != nil && ctx.Err() == nil && len(sups) > 1 {
				slog.Error("lameduck run: program ended; the others keep running", "child", progs[i].Name, "err", errs[i])
			}
		})
	}
	wg.Wait()
	return runResult(progs, errs)
}

// runResult turns the supervisors' errors into the command's: the worst
// exit code among them, and every error, each named by its program when
// there are several.
func runResult(progs []programConfig, errs []error) error {
	if len(errs) == 1 {
		if errs[0] == nil {
			return nil
		}
		return &exitError{code: programExitCode(errs[0]), err: errs[0]}
	}
	code := ExitOK
	var all []error
	for i, err := range errs {
		if err == nil {
			continue
		}
		if c := programExitCode(err); severity(c) > severity(code) {
			code = c
		}
		all = append(all, fmt.Errorf("program %q: %w", progs[i].Name, err))
	}
	if len(all) == 0 {
		return nil
	}
	return &exitError{code: code, err: errors.Join(all...)}
}

// programExitCode is the exit code of one supervisor's error.
func programExitCode(err error) int {
	switch {
	case errors.Is(err, drain.ErrForced):
		return ExitForced
	case errors.Is(err, supervisor.ErrGaveUp):
		return ExitFailed
	}
	return lameduck.ExitCode(err)
}

// severity orders exit codes from best to worst: a forced stop may have
// lost requests, a program given up on serves none, an unreachable
// registry still drained.
func severity(code int) int {
	switch code {
	case ExitOK:
		return 0
	case ExitRegistry:
		return 1
	case ExitFailed:
		return 2
	case ExitForced:
		return 3
	}
	return 2
}

// logEvent writes one slog line per supervisor event. Errors in events
// hold no credentials: registry errors never include them, and check URLs
// with user info are refused.
func logEvent(log *slog.Logger, e supervisor.Event) { logEventRepeats(log, e, 0) }

// logEventRepeats is logEvent for a line that also stands for repeats
// identical lines not logged (see eventLog).
func logEventRepeats(log *slog.Logger, e supervisor.Event, repeats int) {
	attrs := []any{"child", e.Name}
	if e.Port != 0 {
		attrs = append(attrs, "port", e.Port)
	}
	if e.PID != 0 {
		attrs = append(attrs, "pid", e.PID)
	}
	switch {
	case e.Kind == supervisor.EventExited && e.Signal != 0:
		attrs = append(attrs, "signal", e.Signal.String())
	case e.Kind == supervisor.EventExited:
		attrs = append(attrs, "code", e.Code)
	case e.Kind == supervisor.EventSignaled:
		attrs = append(attrs, "signal", e.Signal.String())
	case e.Kind == supervisor.EventRestarted:
		attrs = append(attrs, "restarts", e.Restarts)
	case e.Drain != nil:
		attrs = append(attrs, "phase", e.Drain.Phase.String(), "event", e.Drain.Kind.String(), "elapsed", e.Drain.Elapsed)
		if e.Drain.Source != "" {
			attrs = append(attrs, "source", e.Drain.Source)
		}
		if e.Drain.Registry != "" {
			attrs = append(attrs, "registry", e.Drain.Registry)
		}
		if e.Drain.View != "" {
			attrs = append(attrs, "server", e.Drain.View, "view", e.Drain.ViewKind.String())
		}
		if e.Drain.Err != nil {
			attrs = append(attrs, "err", e.Drain.Err)
		}
	case e.Delay > 0:
		attrs = append(attrs, "delay", e.Delay)
	}
	if e.Kind == supervisor.EventCgroup && e.Cgroup != "" {
		attrs = append(attrs, "cgroup", e.Cgroup)
	}
	if e.Err != nil {
		attrs = append(attrs, "err", e.Err)
	}
	if repeats > 0 {
		attrs = append(attrs, "repeats", repeats)
	}
	level := slog.LevelInfo
	switch {
	case e.Kind == supervisor.EventGaveUp:
		level = slog.LevelError
	case e.Kind == supervisor.EventNotReady:
		// Expected while a copy starts; eventLog keeps its repeats down.
	case e.Err != nil, e.Drain != nil && e.Drain.Err != nil:
		level = slog.LevelWarn
	}
	log.Log(context.Background(), level, "lameduck run: "+e.Kind.String(), attrs...)
}

// checkMetricsFlags refuses a --metrics address off loopback without a
// token, before anything starts.
func checkMetricsFlags(c *ucli.Context) error {
	addr := c.String("metrics")
	if addr == "" {
		return nil
	}
	if err := admin.CheckAddr(addr, c.String("admin-token") != ""); err != nil {
		return badInput("--metrics: %v (--admin-token or %s; /metrics then requires it)", err, EnvAdminToken)
	}
	return nil
}

// serveMetrics serves m at GET /metrics on addr until stop is called.
func serveMetrics(addr, token string, m *supervisor.Metrics) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, badInput("--metrics %s: %v; choose a free address", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", admin.RequireToken(token, m.Handler()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := admin.Serve(ctx, ln, mux); err != nil {
			slog.Error("lameduck run: metrics endpoint stopped", "err", err)
		}
	}()
	slog.Info("lameduck run: metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		cancel()
		<-done
	}, nil
}

// tcpReady, the default readiness check, passes once something accepts
// connections on the copy's port.
func tcpReady(ctx context.Context, port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("run: nothing accepts connections on %s yet: %w", addr, err)
	}
	return conn.Close()
}

var _ probe.Check = tcpReady

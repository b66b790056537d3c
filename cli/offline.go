package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/registry"
)

// Result is what `offline` and `prestop` print with --output json.
type Result struct {
	Outcome      string            `json:"outcome"` // drained, forced, registry-unreachable, failed
	ExitCode     int               `json:"exit_code"`
	Instance     registry.Instance `json:"instance"`
	DurationMS   int64             `json:"duration_ms"`
	Registries   []registryResult  `json:"registries"`
	AdminPhase   string            `json:"admin_phase,omitempty"`
	LateRequests int64             `json:"late_requests"`
	// OpenConns counts the connections on prestop's --port still carrying
	// requests when --conn-wait ended the wait; the app's own shutdown after
	// SIGTERM ends them.
	OpenConns int    `json:"open_conns,omitempty"`
	Error     string `json:"error,omitempty"`
}

type registryResult struct {
	Name             string `json:"name"`
	State            string `json:"state"`
	ConfirmLatencyMS int64  `json:"confirm_latency_ms"`
	Error            string `json:"error,omitempty"`
	// Servers is where each server of a clustered registry stood (see
	// ?confirm= and multi-node nacos:// URLs).
	Servers []drain.ServerStatus `json:"servers,omitempty"`
}

func offlineFlags() []ucli.Flag {
	return append(registryFlags(""),
		&ucli.StringFlag{Name: "service", Usage: "service name (required)"},
		&ucli.StringFlag{Name: "id", Usage: "instance ID (give --id or --addr)"},
		&ucli.StringFlag{Name: "addr", Usage: "instance address as host:port (give --id or --addr)"},
		&ucli.BoolFlag{Name: "disable", Usage: "disable the instance (Consul maintenance, Nacos enabled=false) instead of deregistering it"},
		&ucli.StringFlag{Name: "admin", Usage: "the instance's lameduck admin endpoint, e.g. http://10.0.0.5:9901, to follow its drain"},
		&ucli.StringFlag{Name: "admin-token", Usage: "bearer token for the admin endpoint", EnvVars: []string{EnvAdminToken}},
		&ucli.DurationFlag{Name: "budget", Value: 30 * time.Second, Usage: "the one deadline for the whole offline"},
		&ucli.StringFlag{Name: "output", Value: "text", Usage: "text (progress on a terminal) or json (one result object)"},
	)
}

func offlineCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "offline",
		Usage: "take an instance offline from outside: deregister, confirm, follow its drain",
		Description: "Deregisters (or --disable's) the instance in every --registry, waits until each registry's watch\n" +
			"no longer lists it, then, with --admin, asks the instance to go offline and follows its drain.\n" +
			"--stop then ends the process: the admin endpoint's offline ends a lameduck app by itself;\n" +
			"--pid sends SIGTERM to a process on this host once it is drained.\n\n" +
			"Exit codes: 0 drained, 1 failed, 2 bad input, 3 registry unreachable, 4 forced at the deadline.",
		Flags: append(offlineFlags(),
			&ucli.BoolFlag{Name: "wait", Value: true, Usage: "wait for confirmation and the drain (--wait=false only deregisters)"},
			&ucli.BoolFlag{Name: "stop", Usage: "end the process once drained (needs --admin or --pid)"},
			&ucli.IntFlag{Name: "pid", Usage: "process to SIGTERM once drained (with --stop)"},
		),
		Action: func(c *ucli.Context) error {
			// Before parseOfflineJob opens the registries, which only
			// runOfflineJob closes.
			if c.Int("pid") != 0 && !c.Bool("stop") {
				return badInput("--pid %d is only used with --stop; add --stop to end that process once drained", c.Int("pid"))
			}
			if c.Bool("stop") && c.String("admin") == "" && c.Int("pid") == 0 {
				return badInput("--stop needs --admin (a lameduck app stops itself) or --pid")
			}
			pid := c.Int("pid")
			if pid != 0 && (pid < 0 || syscall.Kill(pid, 0) != nil) {
				return badInput("--pid %d is not a process this user can signal", pid)
			}
			job, err := parseOfflineJob(c)
			if err != nil {
				return err
			}
			job.pid = pid
			job.wait = c.Bool("wait")
			return runOfflineJob(c, job)
		},
	}
}

// offlineJob is one offline, from the flags.
type offlineJob struct {
	regs       []adapters.Registry
	inst       registry.Instance
	disable    bool
	budget     time.Duration
	quiet      time.Duration
	adminURL   string
	adminToken string
	json       bool
	wait       bool
	pid        int
	// drainLocal, when set, waits for the instance to drain by other means
	// (prestop's TCP count); it runs after confirmation. open is what it
	// leaves to the app's own shutdown (Result.OpenConns).
	drainLocal func(ctx context.Context, progress func(string)) (open int, err error)
}

// checkJobFlags checks the flags offline and prestop (both modes) share
// that need no I/O: no arguments, --output, --budget, and --admin with its
// token, so that a bad token is refused before anything is deregistered.
func checkJobFlags(c *ucli.Context) error {
	if c.NArg() > 0 {
		return badInput("unexpected argument %q; every input is a flag", c.Args().First())
	}
	switch out := c.String("output"); out {
	case "text", "json":
	default:
		return badInput("--output %q: want text or json", out)
	}
	if budget := c.Duration("budget"); budget <= 0 {
		return badInput("--budget %v: want a positive duration such as 30s", budget)
	}
	if u := c.String("admin"); u != "" {
		if _, err := admin.NewClient(u, admin.WithClientToken(c.String("admin-token"))); err != nil {
			return badInput("--admin: %v", err)
		}
	}
	return nil
}

func parseOfflineJob(c *ucli.Context) (*offlineJob, error) {
	if err := checkJobFlags(c); err != nil {
		return nil, err
	}
	budget := c.Duration("budget")
	service := c.String("service")
	if service == "" {
		return nil, badInput("missing --service; name the service the instance belongs to")
	}
	inst := registry.Instance{Service: service, ID: c.String("id")}
	if addr := c.String("addr"); addr != "" {
		host, port, err := splitHostPort(addr)
		if err != nil {
			return nil, badInput("--addr %q: %v", addr, err)
		}
		inst.Address, inst.Port = host, port
	}
	if inst.ID == "" && inst.Address == "" {
		return nil, badInput("give --id or --addr to name the instance of %q", service)
	}
	job := &offlineJob{
		inst:       inst,
		disable:    c.Bool("disable"),
		budget:     budget,
		quiet:      drain.DefaultQuietWindow,
		adminURL:   c.String("admin"),
		adminToken: c.String("admin-token"),
		json:       c.String("output") == "json",
	}
	if len(c.StringSlice("registry")) == 0 {
		return nil, badInput("no registry given; pass --registry URL (repeat for several) or set %s", EnvRegistry)
	}
	regs, err := openRegistries(c)
	if err != nil {
		return nil, err
	}
	job.regs = regs
	return job, nil
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, errors.New("want host:port")
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 || host == "" {
		return "", 0, errors.New("want host:port with a port between 1 and 65535")
	}
	return host, port, nil
}

// runOfflineJob runs the job under its budget and reports the result.
func runOfflineJob(c *ucli.Context, job *offlineJob) error {
	defer adapters.CloseAll(job.regs)
	out := c.App.Writer
	start := time.Now()
	ctx, cancel := context.WithTimeout(c.Context, job.budget)
	defer cancel()
	progress := newProgress(out, job.json)

	res := Result{Instance: job.inst}
	err := job.run(ctx, progress, &res)
	res.DurationMS = time.Since(start).Milliseconds()
	res.ExitCode = ExitCode(err)
	if err == nil && job.adminURL == "" && job.drainLocal == nil {
		res.Outcome = "deregistered" // nothing here followed its requests
	}
	progress.done()
	if job.json {
		return printResult(out, res, err)
	}
	if err != nil {
		return &exitError{code: res.ExitCode, err: err}
	}
	took := time.Since(start).Round(time.Millisecond)
	if job.adminURL == "" && job.drainLocal == nil {
		// Nothing here watched the instance's own requests: say so.
		fmt.Fprintf(out, "%s: %s is out of every registry, confirmed, in %s (its in-flight requests were not followed; give --admin to follow its drain)\n",
			job.inst.Service, job.inst.Key(), took)
		return nil
	}
	fmt.Fprintf(out, "%s: %s drained in %s\n", job.inst.Service, job.inst.Key(), took)
	return nil
}

// printResult prints res, completed from err, as one JSON object, and
// returns err as a quiet exitError with res.ExitCode, or nil.
func printResult(out io.Writer, res Result, err error) error {
	if res.Outcome == "" {
		res.Outcome = map[int]string{
			lameduck.ExitOK: "drained", lameduck.ExitRegistry: "registry-unreachable",
			lameduck.ExitForced: "forced", lameduck.ExitBadInput: "bad-input",
		}[res.ExitCode]
	}
	if res.Outcome == "" {
		res.Outcome = "failed"
	}
	if err != nil {
		res.Error = err.Error()
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	_ = enc.Encode(res)
	if err != nil {
		return &exitError{code: res.ExitCode, err: err, quiet: true}
	}
	return nil
}

// run: resolve the instance, take it out of the registries and confirm,
// then follow its drain.
func (job *offlineJob) run(ctx context.Context, progress *progress, res *Result) error {
	regs := make([]registry.Registry, len(job.regs))
	for k, r := range job.regs {
		regs[k] = r
	}
	inst, err := resolveInstance(ctx, regs, job.inst)
	if err != nil {
		return err
	}
	job.inst, res.Instance = inst, inst
	progress.say("Deregistering", fmt.Sprintf("%s from %s", inst.Key(), registry.Multi(regs)))

	opts := []drain.Option{
		drain.WithRegistries(regs...),
		drain.WithInstance(inst),
		drain.WithBudget(job.registryBudget()),
		drain.WithQuietWindow(0), // the drain itself happens in the instance
		drain.WithStopReserve(0),
		drain.WithEventHook(func(e drain.Event) {
			switch e.Kind {
			case drain.EventConfirmed:
				progress.say("Confirming", fmt.Sprintf("%s confirmed after %s", e.Registry, e.Latency.Round(time.Millisecond)))
			case drain.EventRetry:
				progress.say("Deregistering", fmt.Sprintf("%s: %v; retrying in %s", e.Registry, e.Err, e.Delay.Round(time.Millisecond)))
			case drain.EventView:
				progress.say("Confirming", viewProgress(e))
			}
		}),
	}
	if job.disable {
		opts = append(opts, drain.WithDisable())
	}
	if !job.wait {
		for _, r := range regs {
			var err error
			if job.disable {
				d, ok := r.(registry.Disabler)
				if !ok {
					return badInput("registry %s cannot disable instances; drop --disable", r)
				}
				err = d.Disable(ctx, inst)
			} else {
				err = r.Deregister(ctx, inst)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	coord, err := drain.New(&drain.Tracker{}, opts...)
	if err != nil {
		return &exitError{code: lameduck.ExitBadInput, err: err}
	}
	// The coordinator keeps its own deadline; waiting on ctx would lose its
	// report at the very moment it matters.
	coord.Start()
	rep, regErr := coord.Wait(context.Background())
	for _, r := range rep.Registries {
		res.Registries = append(res.Registries, registryResult{Name: r.Name, State: r.State, ConfirmLatencyMS: r.ConfirmLatency.Milliseconds(), Error: r.Error, Servers: r.Servers})
	}
	if regErr != nil {
		progress.say("Draining", "registries not all confirmed; draining anyway")
	}
	var errs []error
	if regErr != nil {
		errs = append(errs, regErr)
	}
	if job.adminURL != "" {
		phase, late, err := followAdmin(ctx, job.adminURL, job.adminToken, progress)
		res.AdminPhase, res.LateRequests = phase, late
		if err != nil {
			errs = append(errs, err)
		}
	}
	if job.drainLocal != nil {
		open, err := job.drainLocal(ctx, func(s string) { progress.say("Draining", s) })
		res.OpenConns = open
		if err != nil {
			errs = append(errs, err)
		}
	}
	if job.pid != 0 && len(errs) == 0 {
		progress.say("Stopping", fmt.Sprintf("SIGTERM to pid %d", job.pid))
		if err := syscall.Kill(job.pid, syscall.SIGTERM); err != nil {
			errs = append(errs, fmt.Errorf("offline: SIGTERM to pid %d: %w", job.pid, err))
		}
	}
	if ctx.Err() != nil && len(errs) > 0 {
		errs = append(errs, &drain.PhaseError{Phase: drain.Draining, Err: drain.ErrDeadline})
	}
	return errors.Join(errs...)
}

// registryBudget is the registries' share of the budget: all of it when
// nothing follows, half when a drain (the admin endpoint's, or the TCP
// count) must still fit after them.
func (job *offlineJob) registryBudget() time.Duration {
	if job.adminURL != "" || job.drainLocal != nil {
		return job.budget / 2
	}
	return job.budget
}

// resolveInstance finds the instance in the registries' lists, so that an
// ID alone or an address alone is enough to name it.
func resolveInstance(ctx context.Context, regs []registry.Registry, want registry.Instance) (registry.Instance, error) {
	// Each registry is asked apart, briefly, so that one that cannot be
	// reached delays the offline by seconds, not by the whole budget; the
	// coordinator then reports it.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	found := make(chan registry.Instance, len(regs))
	var wg sync.WaitGroup
	for _, r := range regs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			list, err := listOnce(ctx, r, want.Service)
			if err != nil {
				return
			}
			for _, in := range list {
				if (want.ID != "" && in.ID == want.ID) || (want.Address != "" && in.Address == want.Address && in.Port == want.Port) {
					found <- in
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(found) }()
	if in, ok := <-found; ok {
		return in, nil // the registry's own view, with the ID it knows the instance by
	}
	if want.Address != "" {
		// Not listed (already gone, disabled, or the registry is down):
		// still make sure it is out.
		return want, nil
	}
	return want, &exitError{code: lameduck.ExitBadInput, err: fmt.Errorf("offline: no instance with ID %q in %q; give --addr host:port, or check the ID with `lameduck status`", want.ID, want.Service)}
}

// followAdmin asks a lameduck app to go offline and follows its drain. One
// long-poll waits for Offline, so the answer arrives even if the app exits
// right after; a status poll beside it feeds the progress display.
func followAdmin(ctx context.Context, url, token string, progress *progress) (string, int64, error) {
	var opts []admin.ClientOption
	if token != "" {
		opts = append(opts, admin.WithClientToken(token))
	}
	cl, err := admin.NewClient(url, opts...)
	if err != nil {
		return "", 0, err
	}
	st, err := cl.Offline(ctx)
	if err != nil {
		return "", 0, err
	}
	show := func(st drain.Status) {
		progress.say(st.Phase.String(), fmt.Sprintf("%d in flight, %d long-lived, %d late", st.InFlight, st.LongLived, st.Late))
	}
	show(st)
	type waited struct {
		res admin.WaitResult
		err error
	}
	done := make(chan waited, 1)
	go func() {
		res, err := cl.Wait(ctx, drain.Offline, 0)
		done <- waited{res, err}
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case w := <-done:
			if w.err != nil {
				return st.Phase.String(), st.Late, w.err
			}
			show(w.res.Status)
			return w.res.Status.Phase.String(), w.res.Status.Late, nil
		case <-tick.C:
			if s, err := cl.Status(ctx); err == nil {
				st = s
				show(s)
			}
		}
	}
}

// progress prints phase lines; on a terminal it rewrites one line. It is
// safe for concurrent use: registry events arrive from several goroutines.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	quiet bool
	start time.Time
	last  string
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w, quiet: quiet, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) say(phase, detail string) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf("%7s  %-13s %s", time.Since(p.start).Round(time.Millisecond), phase, detail)
	if p.tty {
		if strings.HasPrefix(p.last, phase) {
			fmt.Fprintf(p.w, "\r\033[K%s", line)
		} else {
			if p.last != "" {
				fmt.Fprintln(p.w)
			}
			fmt.Fprint(p.w, line)
		}
		p.last = phase
		return
	}
	if line != p.last {
		fmt.Fprintln(p.w, line)
		p.last = line
	}
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.last != "" {
		fmt.Fprintln(p.w)
	}
}

// viewProgress says what one server of a clustered registry did.
func viewProgress(e drain.Event) string {
	at := e.Latency.Round(time.Millisecond)
	switch e.ViewKind {
	case registry.ViewGone:
		return fmt.Sprintf("server %s no longer lists it (%s)", e.View, at)
	case registry.ViewDown:
		return fmt.Sprintf("server %s does not answer (%v); not waiting for it while it is down", e.View, e.Err)
	case registry.ViewRemovedAgain:
		if e.Err != nil {
			return fmt.Sprintf("removing it again through server %s failed: %v", e.View, e.Err)
		}
		return fmt.Sprintf("a server still listed it; removed it again through %s (%s)", e.View, at)
	}
	return fmt.Sprintf("server %s %s (%s)", e.View, e.ViewKind, at)
}

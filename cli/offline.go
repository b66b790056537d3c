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
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/pkg/conncount"
	"github.com/lameduck/lameduck/pkg/report"
	"github.com/lameduck/lameduck/registry"
)

// Result is what `offline` and `prestop` print with --output json.
type Result struct {
	Outcome      drain.Outcome     `json:"outcome"` // see drain.Outcome; "deregistered" when nothing was followed
	ExitCode     int               `json:"exit_code"`
	Instance     registry.Instance `json:"instance"`
	DurationMS   int64             `json:"duration_ms"`
	Registries   []registryResult  `json:"registries"`
	AdminPhase   string            `json:"admin_phase,omitempty"`
	LateRequests int64             `json:"late_requests"`
	// OpenConns counts the connections on prestop's --port still carrying
	// requests when --conn-wait ended the wait; the app's own shutdown after
	// SIGTERM ends them.
	OpenConns int `json:"open_conns,omitempty"`
	// Consumers names the consumers that kept calling after the flag
	// (the app's, with --admin; the port's connections, in plain prestop).
	Consumers *drain.LateConsumers `json:"consumers,omitempty"`
	Error     string               `json:"error,omitempty"`
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
		&ucli.StringFlag{Name: "report", Usage: "write a report of the offline: JSON to this path and an SVG timeline next to it (.svg)"},
		&ucli.DurationFlag{Name: "consumer-lag", Usage: "how long consumers that cache the registry (Spring Cloud LoadBalancer: 35s) may keep " +
			"calling after the confirmation: until then quiet alone does not end the drain"},
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
			exitCodesHelp(),
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
			if err := checkPID(pid); err != nil {
				return err
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

// offlineJob is one offline, from the flags. Every way in (offline,
// prestop in both modes) runs it through one drain.Coordinator, which owns
// the deadline and splits the budget.
type offlineJob struct {
	regs       []adapters.Registry
	inst       registry.Instance
	disable    bool
	budget     time.Duration
	quiet      time.Duration // the drain's quiet window, for a source that uses it
	adminURL   string
	adminToken string
	json       bool
	wait       bool
	pid        int
	// consumerLag holds the drain for consumers with a cached view
	// (drain.WithConsumerLag). With lagFits, a budget too short for it is
	// a warning and the lag is cut to what fits (prestop: the pod spec
	// fixes the budget); otherwise it is refused.
	consumerLag time.Duration
	lagFits     bool
	// reportPath, when set, is where the offline's report goes
	// (pkg/report): JSON there, the SVG timeline next to it.
	reportPath string
	// conns, when set, drains the app's port's connections (plain
	// prestop) in the Draining phase.
	conns *conncount.Drainer
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
	if path := c.String("report"); path != "" {
		if err := report.CheckPath(path); err != nil {
			return badInput("--report: %v", err)
		}
	}
	if lag := c.Duration("consumer-lag"); lag < 0 {
		return badInput("--consumer-lag %v: want a duration of 0 or more, such as 35s", lag)
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
		inst:        inst,
		disable:     c.Bool("disable"),
		budget:      budget,
		adminURL:    c.String("admin"),
		adminToken:  c.String("admin-token"),
		json:        c.String("output") == "json",
		consumerLag: c.Duration("consumer-lag"),
		reportPath:  c.String("report"),
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

// runOfflineJob runs the job and reports the result.
func runOfflineJob(c *ucli.Context, job *offlineJob) error {
	defer adapters.CloseAll(job.regs)
	out := c.App.Writer
	start := time.Now()
	progress := newProgress(out, job.json)

	res := Result{Instance: job.inst}
	var err error
	if job.wait {
		err = job.run(c.Context, progress, &res)
	} else {
		err = job.removeOnly(c.Context, progress, &res)
	}
	res.DurationMS = time.Since(start).Milliseconds()
	progress.done()
	if res.Outcome == "" {
		res.Outcome = drain.OutcomeOf(err)
		if e := (*exitError)(nil); errors.As(err, &e) {
			res.Outcome = outcomeOfCode(e.code)
		}
	}
	res.ExitCode = lameduck.OutcomeExitCode(res.Outcome)
	if res.Outcome == drain.OutcomeDrained && job.adminURL == "" && job.conns == nil {
		res.Outcome = outcomeDeregistered
	}
	if job.json {
		return printResult(out, res, err)
	}
	if err != nil {
		return &exitError{code: res.ExitCode, err: err}
	}
	took := time.Since(start).Round(time.Millisecond)
	if len(job.regs) == 0 {
		fmt.Fprintf(out, "Offline after %s\n", took)
		return nil
	}
	if job.adminURL == "" && job.conns == nil {
		// Nothing here watched the instance's own requests: say so.
		fmt.Fprintf(out, "%s: %s is out of every registry, confirmed, in %s (its in-flight requests were not followed; give --admin to follow its drain)\n",
			job.inst.Service, res.Instance.Key(), took)
		return nil
	}
	fmt.Fprintf(out, "%s: %s drained in %s\n", job.inst.Service, res.Instance.Key(), took)
	return nil
}

// outcomeDeregistered is offline's outcome when it followed no drain: the
// instance is out of every registry, confirmed, and nothing more is known.
const outcomeDeregistered drain.Outcome = "deregistered"

// terminate sends SIGTERM to pid: offline --stop --pid's stop hook.
func terminate(pid int) error {
	if err := sendSIGTERM(pid); err != nil {
		return fmt.Errorf("offline: SIGTERM to pid %d: %w", pid, err)
	}
	return nil
}

// printResult prints res, completed from err, as one JSON object, and
// returns err as a quiet exitError with res.ExitCode, or nil.
func printResult(out io.Writer, res Result, err error) error {
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

// run takes the instance offline through the coordinator: look it up,
// take it out of the registries and confirm, drain it through the job's
// source (the app's admin endpoint, the port's connections, or nothing),
// then, with --pid, SIGTERM the process. The first interrupt forces the
// coordinator, which then reports at once.
func (job *offlineJob) run(ctx context.Context, progress *progress, res *Result) error {
	regs := make([]registry.Registry, len(job.regs))
	for k, r := range job.regs {
		regs[k] = r
	}
	var sources []drain.Source
	var follower *admin.Follower
	if job.adminURL != "" {
		cl, err := newAdminClient(job.adminURL, job.adminToken)
		if err != nil {
			return badInput("--admin: %v", err)
		}
		follower = &admin.Follower{Client: cl, OnStatus: func(st drain.Status) {
			line := fmt.Sprintf("the app: %d in flight, %d long-lived, %d late", st.InFlight, st.LongLived, st.Late)
			if calling := stillCallingLine(st.Consumers, time.Now()); calling != "" {
				line += "; " + calling
			}
			progress.say(st.Phase.String(), line)
		}}
		sources = append(sources, follower)
	}
	if job.conns != nil {
		job.conns.OnProgress = func(s string) { progress.say("Draining", s) }
		sources = append(sources, job.conns)
	}
	var source drain.Source // nil: nothing to drain here
	switch len(sources) {
	case 1:
		source = sources[0]
	case 2:
		source = drain.Sequence(sources...)
	}
	var rec *report.Recorder
	if job.reportPath != "" {
		rec = report.NewRecorder(job.sample(follower))
	}
	opts := []drain.Option{
		drain.WithBudget(job.budget),
		drain.WithQuietWindow(job.quiet),
		drain.WithStopReserve(0),
		drain.WithSource(source),
		drain.WithEventHook(func(e drain.Event) {
			progressEvent(progress, e, job.disable)
			if rec != nil {
				rec.Observe(e)
			}
		}),
	}
	if len(regs) > 0 {
		opts = append(opts, drain.WithRegistries(regs...), drain.WithInstance(job.inst), drain.WithLookup())
	}
	if job.disable {
		opts = append(opts, drain.WithDisable())
	}
	if job.consumerLag > 0 {
		opts = append(opts, drain.WithConsumerLag(job.consumerLag))
	}
	if job.pid != 0 {
		opts = append(opts, drain.WithStopHook(fmt.Sprintf("SIGTERM to pid %d", job.pid), func(context.Context) error {
			return terminate(job.pid)
		}))
	}
	coord, err := drain.New(&drain.Tracker{}, opts...)
	var lagErr *drain.LagError
	if errors.As(err, &lagErr) && job.lagFits {
		// The pod spec fixes prestop's budget: hold consumers as long as
		// it allows, and say which number to raise.
		fits := max(0, lagErr.Lag-(lagErr.Need-lagErr.Budget))
		progress.warn(fmt.Sprintf("warning: %v; holding consumers for %v instead", lagErr, fits.Round(time.Millisecond)))
		opts = append(opts, drain.WithConsumerLag(fits))
		coord, err = drain.New(&drain.Tracker{}, opts...)
	}
	if err != nil {
		return badInput("%v", err)
	}
	coord.Start()
	go func() {
		select {
		case <-ctx.Done():
			coord.Force()
		case <-coord.Done():
		}
	}()
	if job.conns != nil {
		go job.sayCalling(coord, progress)
	}
	rep, err := coord.Wait(context.Background())
	res.Outcome = rep.Outcome
	if rep.Instance.Service != "" {
		res.Instance = rep.Instance
	}
	for _, r := range rep.Registries {
		res.Registries = append(res.Registries, registryResult{Name: r.Name, State: r.State, ConfirmLatencyMS: r.ConfirmLatency.Milliseconds(), Error: r.Error, Servers: r.Servers})
	}
	res.Consumers = rep.Consumers
	if follower != nil {
		st := follower.Last()
		res.AdminPhase, res.LateRequests, res.Consumers = st.Phase.String(), st.Late, st.Consumers
	}
	if job.conns != nil {
		res.OpenConns = job.conns.Left()
	}
	if rec != nil {
		if rep.Consumers == nil {
			rep.Consumers = res.Consumers // the app's, through --admin
		}
		off := rec.Report(rep)
		if werr := off.WriteFiles(job.reportPath); werr != nil {
			progress.warn(fmt.Sprintf("warning: the report was not written: %v", werr))
		}
	}
	return err
}

// sayCalling shows, once a second while the port drains, which consumers
// still call (plain prestop; with --admin the app's status says it).
func (job *offlineJob) sayCalling(coord *drain.Coordinator, progress *progress) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-coord.Done():
			return
		case <-t.C:
		}
		if coord.Phase() != drain.Draining {
			continue
		}
		late := job.conns.Consumers().Late(drain.TopConsumers)
		if line := stillCallingLine(&late, time.Now()); line != "" {
			progress.say("Draining", line)
		}
	}
}

// sample is what the report's in-flight curve reads: the app's last
// status through --admin, the port's busy connections in plain prestop,
// or nothing.
func (job *offlineJob) sample(follower *admin.Follower) func() (int64, int64) {
	switch {
	case follower != nil:
		return func() (int64, int64) { st := follower.Last(); return st.InFlight, st.LongLived }
	case job.conns != nil:
		return func() (int64, int64) { return int64(job.conns.Busy()), 0 }
	}
	return nil
}

// removeOnly is --wait=false: the instance out of every registry, once
// each, not confirmed and not drained.
func (job *offlineJob) removeOnly(ctx context.Context, progress *progress, res *Result) error {
	regs := make(registry.Multi, len(job.regs))
	for k, r := range job.regs {
		regs[k] = r
	}
	ctx, cancel := context.WithTimeout(ctx, job.budget)
	defer cancel()
	inst, err := drain.Lookup(ctx, regs, job.inst)
	if err != nil {
		return &exitError{code: lameduck.ExitBadInput, err: err}
	}
	res.Instance = inst
	progress.say("Deregistering", fmt.Sprintf("%s from %s", inst.Key(), regs))
	if job.disable {
		return regs.Disable(ctx, inst)
	}
	return regs.Deregister(ctx, inst)
}

// progressEvent shows one of the coordinator's events; disabled says the
// instance is disabled rather than removed.
func progressEvent(p *progress, e drain.Event, disabled bool) {
	switch e.Kind {
	case drain.EventDeregistered:
		did := " removed it"
		if disabled {
			did = " disabled it"
		}
		p.say("Deregistering", e.Registry+did)
	case drain.EventConfirmed:
		p.say("Confirming", fmt.Sprintf("%s confirmed after %s", e.Registry, e.Latency.Round(time.Millisecond)))
	case drain.EventRetry:
		p.say(e.Phase.String(), fmt.Sprintf("%s: %v; retrying in %s", e.Registry, e.Err, e.Delay.Round(time.Millisecond)))
	case drain.EventGaveUp:
		p.say(e.Phase.String(), fmt.Sprintf("%s: gave up: %v", e.Registry, e.Err))
	case drain.EventView:
		p.say("Confirming", viewProgress(e))
	case drain.EventStopHook:
		if e.Err != nil {
			p.say("Stopping", fmt.Sprintf("%s: %v", e.Hook, e.Err))
		} else {
			p.say("Stopping", e.Hook+": done")
		}
	}
}

// newAdminClient is the one way the commands make an admin client.
func newAdminClient(url, token string) (*admin.Client, error) {
	var opts []admin.ClientOption
	if token != "" {
		opts = append(opts, admin.WithClientToken(token))
	}
	return admin.NewClient(url, opts...)
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

// warn prints a line that --output json does not silence, on stderr's
// behalf: progress writes to the command's output, so a warning goes to
// the same place unless the output is JSON, where it goes to os.Stderr.
func (p *progress) warn(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.quiet {
		fmt.Fprintln(os.Stderr, "lameduck: "+line)
		return
	}
	if p.tty && p.last != "" {
		fmt.Fprintln(p.w)
		p.last = ""
	}
	fmt.Fprintln(p.w, line)
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.last != "" {
		fmt.Fprintln(p.w)
	}
}

// stillCallingLine says which late consumers still call, for the live
// progress line: "2 consumers still calling: 10.0.0.7 (last 120ms ago),
// 10.0.0.9 (last 2.1s ago)". A consumer counts while its last request is
// under 5s old; "" when none does.
func stillCallingLine(lc *drain.LateConsumers, now time.Time) string {
	if lc == nil {
		return ""
	}
	all := lc.Top
	if lc.Others != nil {
		o := *lc.Others
		o.ID = fmt.Sprintf("%d others", o.IDs)
		all = append(all[:len(all):len(all)], o)
	}
	var names []string
	for _, c := range all {
		if ago := now.Sub(c.Last); ago < 5*time.Second {
			names = append(names, fmt.Sprintf("%s (last %v ago)", c.ID, ago.Round(time.Millisecond)))
		}
	}
	n := len(names)
	switch n {
	case 0:
		return ""
	case 1:
		return "1 consumer still calling: " + names[0]
	}
	if n > 3 {
		names = append(names[:3], fmt.Sprintf("and %d more", n-3))
	}
	return fmt.Sprintf("%d consumers still calling: %s", n, strings.Join(names, ", "))
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

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// The strategies, in the order they run.
const (
	stratNaive   = "naive"
	stratSleep   = "sleep"
	stratLibrary = "library"
	stratPrestop = "prestop"
	stratRun     = "run"
)

var allStrategies = []string{stratNaive, stratSleep, stratLibrary, stratPrestop, stratRun}

// strategyTitle describes each strategy for the report.
var strategyTitle = map[string]string{
	stratNaive:   "naive: SIGTERM, the app exits at once (the platform deregisters at the same moment)",
	stratSleep:   "today's practice: deregister, sleep a fixed time, SIGTERM, graceful shutdown",
	stratLibrary: "lameduck, library: SIGTERM to an app that links lameduck.App and httpdrain",
	stratPrestop: "lameduck prestop (plain mode) as the kubelet's preStop hook, then SIGTERM, on an app without the library",
	stratRun:     "lameduck run supervising an app without the library; SIGTERM to lameduck run",
}

// Timing constants of the harness (not of the strategies).
const (
	warmUp        = 2 * time.Second        // load before the first offline
	coolDown      = time.Second            // load after the last replacement
	sampleEvery   = 5 * time.Millisecond   // the in-flight curve's resolution
	sampleMargin  = 300 * time.Millisecond // curve before the offline and after the exit
	startTimeout  = 60 * time.Second       // an instance to start and be seen by every consumer
	removeTimeout = 30 * time.Second       // every consumer to drop an instance after it is gone
	gracePeriod   = 30 * time.Second       // the kubelet's, for prestop; lameduck's budgets fit in it
	budget        = 25 * time.Second       // lameduck's deadline for the library app and lameduck run
)

// target is one registry the proof runs against.
type target struct {
	name     string // consul or nacos
	url      string // the registry URL lameduck's commands take
	platform platform
	watch    func(service string, consumer int, update func([]string)) (watch, error)
}

// runner runs one strategy against one registry: its own service name,
// consumers, instances and book.
type runner struct {
	cfg      *config
	tgt      *target
	strategy string
	service  string
	ports    *ports
	log      func(format string, args ...any)

	book      *book
	consumers []*consumer
	watches   []watch

	mu    sync.Mutex
	procs []*instance // every instance started, for the final clean-up
}

// instance is one running instance of the service.
type instance struct {
	in    registry.Instance
	proc  *proc
	ep    *endpoint
	admin int  // admin endpoint port (library)
	ours  bool // registered by the harness's platform
	gone  bool // taken offline
}

// offline is what one instance's offline measured. Times are milliseconds.
type offline struct {
	Round    int    `json:"round"`
	Slot     int    `json:"slot"`
	Endpoint string `json:"endpoint"`

	Sent       int64            `json:"requests_sent"`
	Failed     int64            `json:"requests_failed"`
	Errors     map[string]int64 `json:"errors,omitempty"`
	StreamLost int64            `json:"streams_lost"`

	OfflineMS        float64 `json:"offline_ms"`          // start of the offline to the process's exit
	PMS              float64 `json:"p_ms"`                // start of the offline to the last consumer dropping it
	LMS              float64 `json:"l_ms"`                // start of the offline to the end of its last successful request
	LongestAtStartMS float64 `json:"longest_at_start_ms"` // longest successful request in flight when the offline began
	OverheadMS       float64 `json:"overhead_ms"`         // offline - max(P, L)
	ConfirmMS        float64 `json:"lameduck_confirm_ms,omitempty"`
	ExitCode         int     `json:"exit_code"`
	Error            string  `json:"error,omitempty"`

	timeline *timeline
}

func (r *runner) logf(format string, args ...any) { r.log(format, args...) }

// setUp starts the consumers' watches and the instances, and waits until
// every consumer lists every instance.
func (r *runner) setUp(ctx context.Context) ([]*instance, error) {
	r.book = newBook(r.cfg.consumers)
	for k := range r.cfg.consumers {
		c := newConsumer(k, r.book, r.cfg.streamFollow)
		w, err := r.tgt.watch(r.service, k, c.update)
		if err != nil {
			return nil, err
		}
		r.consumers = append(r.consumers, c)
		r.watches = append(r.watches, w)
	}
	insts := make([]*instance, r.cfg.instances)
	errs := make([]error, len(insts))
	var wg sync.WaitGroup
	for k := range insts {
		wg.Add(1)
		go func() { defer wg.Done(); insts[k], errs[k] = r.start(ctx) }()
	}
	wg.Wait()
	return insts, errors.Join(errs...)
}

// tearDown stops what is left: instances (SIGTERM, and SIGKILL if they do
// not exit within the grace period) and registrations, then the watches.
func (r *runner) tearDown() {
	// The load has stopped: drop the consumers' idle connections first, so
	// that drains which count connections need not wait for them.
	for _, c := range r.consumers {
		c.closeAll()
	}
	r.mu.Lock()
	all := append([]*instance(nil), r.procs...)
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, x := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if x.ours && !x.gone {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = r.tgt.platform.deregister(ctx, x.in)
				cancel()
			}
			_ = x.proc.signal(syscall.SIGTERM)
			if !x.proc.wait(gracePeriod) {
				x.proc.kill()
			}
			if r.tgt.name == "consul" {
				// An app that registered itself and was killed leaves its
				// registration behind; this is a no-op otherwise.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = r.tgt.platform.deregister(ctx, x.in)
				cancel()
			}
		}()
	}
	wg.Wait()
	for _, w := range r.watches {
		w.stop()
	}
}

// start starts one instance the strategy's way and waits until every
// consumer lists it.
func (r *runner) start(ctx context.Context) (*instance, error) {
	port, err := r.ports.take()
	if err != nil {
		return nil, err
	}
	x := &instance{in: registry.Instance{
		Service: r.service, ID: fmt.Sprintf("%s-%d", r.service, port), Address: "127.0.0.1", Port: port,
	}}
	x.ep = r.book.endpoint(x.in.Endpoint())
	listen := x.in.Endpoint()
	name := fmt.Sprintf("%s/%s %s", r.tgt.name, r.strategy, listen)
	switch r.strategy {
	case stratNaive, stratSleep, stratPrestop:
		mode := "plain"
		if r.strategy == stratNaive {
			mode = "naive"
		}
		x.proc, err = startProc(r.cfg, name, r.cfg.bins.demo, "-mode", mode, "-listen", listen)
	case stratLibrary:
		if x.admin, err = r.ports.take(); err != nil {
			return nil, err
		}
		x.proc, err = startProc(r.cfg, name, r.cfg.bins.demo, "-mode", "library", "-listen", listen,
			"-registry", r.tgt.url, "-service", r.service, "-admin", fmt.Sprintf("127.0.0.1:%d", x.admin),
			"-budget", budget.String())
	case stratRun:
		args := []string{"run", "--registry", r.tgt.url, "--service", r.service, "--port", strconv.Itoa(port),
			"--addr", "127.0.0.1", "--id", x.in.ID, "--ready", "http://" + listen + "/healthz", "--budget", budget.String()}
		if r.cfg.connWaitSet {
			args = append(args, "--conn-wait", r.cfg.connWait.String())
		}
		args = append(args, "--", r.cfg.bins.demo, "-mode", "plain", "-listen", listen)
		x.proc, err = startProc(r.cfg, name, r.cfg.bins.lameduck, args...)
	default:
		return nil, fmt.Errorf("unknown strategy %q", r.strategy)
	}
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.procs = append(r.procs, x)
	r.mu.Unlock()
	if r.strategy == stratNaive || r.strategy == stratSleep || r.strategy == stratPrestop {
		// The platform registers the app once it is ready.
		if err := waitHealthy(ctx, x.proc, "http://"+listen+"/healthz"); err != nil {
			return nil, err
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.tgt.platform.register(rctx, x.in)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("register %s in %s: %w", listen, r.tgt.name, err)
		}
		x.ours = true
	}
	err = poll(ctx, startTimeout, func() (bool, error) {
		if x.proc.exited() {
			return false, fmt.Errorf("exited before every consumer listed it: %s", x.proc.describe())
		}
		return x.ep.listedByAll(), nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return x, nil
}

// waitHealthy polls url until it answers 2xx, over connections that close
// at once (an idle keep-alive connection would count as in flight).
func waitHealthy(ctx context.Context, p *proc, url string) error {
	return poll(ctx, startTimeout, func() (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("exited before it was healthy: %s", p.describe())
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		req.Close = true
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode/100 == 2, nil
	})
}

// poll calls f every 2ms until it returns true or an error, ctx ends, or
// limit passes.
func poll(ctx context.Context, limit time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := f()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// takeOffline takes x offline the strategy's way and measures it. An error
// is returned only when the harness itself cannot go on; what went wrong
// with the offline is in offline.Error.
func (r *runner) takeOffline(ctx context.Context, x *instance, round, slot int, sample bool) (offline, error) {
	o := offline{Round: round, Slot: slot, Endpoint: x.in.Endpoint(), ExitCode: -1}
	var smp *sampler
	if sample {
		smp = startSampler(x.ep)
		if err := sleep(ctx, sampleMargin); err != nil {
			return o, err
		}
	}
	var problems []string
	t0 := mono()
	x.ep.offlineAt.Store(t0)
	x.gone = true
	switch r.strategy {
	case stratNaive:
		dereg := make(chan error, 1)
		go func() {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			dereg <- r.tgt.platform.deregister(dctx, x.in)
		}()
		if err := x.proc.signal(syscall.SIGTERM); err != nil {
			problems = append(problems, "SIGTERM: "+err.Error())
		}
		if !x.proc.wait(gracePeriod) {
			problems = append(problems, "still running after the grace period; killed")
			x.proc.kill()
		}
		if err := <-dereg; err != nil {
			problems = append(problems, "deregister: "+err.Error())
		}
	case stratSleep:
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.tgt.platform.deregister(dctx, x.in)
		cancel()
		if err != nil {
			problems = append(problems, "deregister: "+err.Error())
		}
		if err := sleep(ctx, r.cfg.sleep); err != nil {
			return o, err
		}
		problems = append(problems, r.terminate(x, gracePeriod)...)
	case stratLibrary, stratRun:
		problems = append(problems, r.terminate(x, gracePeriod)...)
	case stratPrestop:
		problems = append(problems, r.kubelet(x, &o)...)
	}
	exit := x.proc.exit
	o.OfflineMS = ms(exit - t0)
	o.ExitCode = x.proc.exitCode()
	if o.ExitCode != 0 && r.strategy != stratNaive {
		problems = append(problems, fmt.Sprintf("exit code %d: %s", o.ExitCode, x.proc.describe()))
	}

	// Every consumer must drop it, and every request to it must end.
	var gone int64
	err := poll(ctx, removeTimeout, func() (bool, error) {
		var ok bool
		gone, ok = x.ep.goneFromAll()
		return ok, nil
	})
	if err != nil {
		problems = append(problems, "a consumer still lists it: "+err.Error())
	}
	if err := poll(ctx, removeTimeout, func() (bool, error) { return x.ep.inFlight.Load() == 0, nil }); err != nil {
		problems = append(problems, "requests to it still in flight: "+err.Error())
	}
	if ctx.Err() != nil {
		return o, ctx.Err()
	}
	if gone > 0 {
		o.PMS = ms(gone - t0)
	}
	if last := x.ep.lastOK.Load(); last > t0 {
		o.LMS = ms(last - t0)
	}
	o.LongestAtStartMS = ms(x.ep.longestAtOff.Load())
	o.OverheadMS = o.OfflineMS - max(o.PMS, o.LMS)
	o.Sent, o.Failed, o.Errors = x.ep.sent.Load(), x.ep.failed(), x.ep.errors()
	o.StreamLost = x.ep.streamsLost()
	if r.strategy == stratLibrary {
		for _, e := range x.proc.appEvents() {
			if e.Kind == "confirmed" {
				o.ConfirmMS = max(o.ConfirmMS, ms(e.LatencyNS))
			}
		}
	}
	if ctx.Err() == nil && x.ours {
		// prestop took the instance out of Nacos by disabling it (it did
		// not register it); the platform still holds the registration.
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = r.tgt.platform.deregister(dctx, x.in)
		cancel()
	}
	if smp != nil {
		_ = sleep(ctx, sampleMargin)
		o.timeline = &timeline{
			Registry: r.tgt.name, Topology: r.cfg.topology, Strategy: r.strategy, Endpoint: o.Endpoint,
			Samples: smp.stop(t0), Consumers: rel(x.ep.gone(), t0),
			OfflineMS: o.OfflineMS, PMS: o.PMS, LMS: o.LMS, OverheadMS: o.OverheadMS,
		}
		for _, e := range x.proc.appEvents() {
			o.timeline.Events = append(o.timeline.Events, timelineEvent{
				AtMS: ms(fromWall(e.UnixNano) - t0), Kind: e.Kind, Phase: e.Phase, Registry: e.Registry,
			})
		}
	}
	o.Error = strings.Join(problems, "; ")
	return o, nil
}

// terminate sends SIGTERM and waits up to grace for the exit, then kills.
func (r *runner) terminate(x *instance, grace time.Duration) []string {
	var problems []string
	if err := x.proc.signal(syscall.SIGTERM); err != nil {
		problems = append(problems, "SIGTERM: "+err.Error())
	}
	if !x.proc.wait(grace) {
		problems = append(problems, fmt.Sprintf("still running %v after SIGTERM; killed", grace))
		x.proc.kill()
	}
	return problems
}

// prestopResult is the part of `lameduck prestop --output json` we read.
type prestopResult struct {
	Outcome    string `json:"outcome"`
	ExitCode   int    `json:"exit_code"`
	Registries []struct {
		ConfirmLatencyMS int64 `json:"confirm_latency_ms"`
	} `json:"registries"`
	Error string `json:"error"`
}

// kubelet stops x the way the kubelet stops a pod with a preStop hook: run
// the hook and wait for it, for at most the grace period; then SIGTERM;
// then SIGKILL once the grace period, counted from the start, is over.
func (r *runner) kubelet(x *instance, o *offline) []string {
	var problems []string
	start := time.Now()
	args := []string{"prestop", "--registry", r.tgt.url, "--service", r.service, "--addr", x.in.Endpoint(),
		"--port", strconv.Itoa(x.in.Port), "--grace-period", gracePeriod.String(), "--output", "json"}
	if r.cfg.connWaitSet {
		args = append(args, "--conn-wait", r.cfg.connWait.String())
	}
	if r.cfg.prestopQuiet > 0 {
		args = append(args, "--quiet", r.cfg.prestopQuiet.String())
	}
	hook, err := startProc(r.cfg, "prestop "+x.in.Endpoint(), r.cfg.bins.lameduck, args...)
	if err != nil {
		return []string{err.Error()}
	}
	if !hook.wait(gracePeriod) {
		problems = append(problems, "prestop still running at the end of the grace period; killed")
		hook.kill()
	}
	var res prestopResult
	parsed := json.Unmarshal([]byte(hook.stdout.String()), &res) == nil
	for _, reg := range res.Registries {
		o.ConfirmMS = max(o.ConfirmMS, float64(reg.ConfirmLatencyMS))
	}
	switch code := hook.exitCode(); {
	case code == 0:
	case parsed:
		problems = append(problems, fmt.Sprintf("prestop exit code %d (%s): %s", code, res.Outcome, strings.ReplaceAll(res.Error, "\n", "; ")))
	default:
		problems = append(problems, fmt.Sprintf("prestop exit code %d: %s", code, hook.describe()))
	}
	left := gracePeriod - time.Since(start)
	return append(problems, r.terminate(x, max(left, 0))...)
}

// sampler records the consumers' in-flight requests to one endpoint.
type sampler struct {
	stopCh chan struct{}
	done   chan struct{}
	points []sample
}

type sample struct {
	AtMS     float64 `json:"t_ms"`
	InFlight int64   `json:"in_flight"`
	at       int64
}

func startSampler(ep *endpoint) *sampler {
	s := &sampler{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			s.points = append(s.points, sample{at: mono(), InFlight: ep.inFlight.Load()})
			select {
			case <-s.stopCh:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the samples, timed from t0.
func (s *sampler) stop(t0 int64) []sample {
	close(s.stopCh)
	<-s.done
	for k := range s.points {
		s.points[k].AtMS = ms(s.points[k].at - t0)
	}
	return s.points
}

func rel(ts []int64, t0 int64) []float64 {
	out := make([]float64, 0, len(ts))
	for _, t := range ts {
		if t != 0 {
			out = append(out, ms(t-t0))
		}
	}
	return out
}

// ms converts nanoseconds to milliseconds, to 0.1ms.
func ms(ns int64) float64 { return float64(ns/100_000) / 10 }

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// run runs the whole rolling restart of one strategy on one
// registry: set up, warm up, rounds × instances offlines with a replacement
// after each, cool down, tear down.
func (r *runner) run(ctx context.Context) (*strategyRun, error) {
	res := &strategyRun{Registry: r.tgt.name, Topology: r.cfg.topology, Strategy: r.strategy, Title: strategyTitle[r.strategy], Service: r.service}
	started := time.Now()
	defer r.tearDown()
	insts, err := r.setUp(ctx)
	if err != nil {
		return nil, err
	}
	ld := startLoad(r.consumers, float64(r.cfg.rps))
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			took := ld.stop()
			res.LoadSeconds = took.Seconds()
			res.RatePerSecond = float64(ld.sent.Load()) / took.Seconds()
		}
	}
	defer stopLoad()
	if err := sleep(ctx, warmUp); err != nil {
		return nil, err
	}
	for round := 1; round <= r.cfg.rounds; round++ {
		for slot := range insts {
			sample := r.strategy == stratLibrary
			o, err := r.takeOffline(ctx, insts[slot], round, slot+1, sample)
			if err != nil {
				return nil, err
			}
			r.logf("%-6s %-7s round %d/%d slot %d %s: offline %8.1fms  P %6.1fms  L %7.1fms  overhead %8.1fms  sent %5d failed %3d streams lost %d%s",
				r.tgt.name, r.strategy, round, r.cfg.rounds, slot+1, o.Endpoint, o.OfflineMS, o.PMS, o.LMS, o.OverheadMS,
				o.Sent, o.Failed, o.StreamLost, errSuffix(o.Error))
			res.Offlines = append(res.Offlines, o)
			repl, err := r.start(ctx)
			if err != nil {
				return nil, fmt.Errorf("replacement for %s: %w", o.Endpoint, err)
			}
			insts[slot] = repl
			if err := sleep(ctx, r.cfg.settle); err != nil {
				return nil, err
			}
		}
	}
	if err := sleep(ctx, coolDown); err != nil {
		return nil, err
	}
	stopLoad()
	res.Totals = r.book.totals()
	res.Seconds = time.Since(started).Seconds()
	res.summarize()
	return res, nil
}

func errSuffix(s string) string {
	if s == "" {
		return ""
	}
	return "  ERROR: " + firstLine(s)
}

// nacosWatchFactory makes one SDK client per consumer, each with its own
// cache and log directory under dir, connected to one node: consumer k to
// the k-th node (mod their number).
func nacosWatchFactory(cfg *config, dir string) func(string, int, func([]string)) (watch, error) {
	nodes := cfg.nacosWatchPoints()
	return func(service string, k int, update func([]string)) (watch, error) {
		return startNacosWatch(nodes[k%len(nodes)], cfg.nacosUser, cfg.nacosPassword,
			filepath.Join(dir, fmt.Sprintf("nacos-consumer-%s-%d", service, k)), service, update)
	}
}

// consulWatchFactory makes one API client per consumer: consumer k watches
// at the k-th watch point (mod their number).
func consulWatchFactory(cfg *config) func(string, int, func([]string)) (watch, error) {
	points := cfg.consulWatchPoints()
	return func(service string, k int, update func([]string)) (watch, error) {
		p := points[k%len(points)]
		return startConsulWatch(p.addr, cfg.consulToken, p.stale, service, update)
	}
}

package integration

// The fault-injection suite (issue 13). examples/app, an app that links the
// library, serves a steady load and goes offline while its registry
// misbehaves:
//
//   - through a TCP fault proxy (toxiproxy, in process; faultproxy_test.go)
//     between the app and the shared Consul agent or Nacos server: the
//     registry down when the app starts, then back; the link cut during
//     Deregistering, during Confirming and during Draining, for 3 s; every
//     call slowed by 2 s;
//   - on a private Consul agent or Nacos server of the suite's own, killed
//     or stopped and started again while the app serves, and after the
//     instance was taken offline from outside (`lameduck offline`, with and
//     without --disable) while the app still runs.
//
// Each case checks the exit code and outcome (of the app, or of the
// command), the offline's time against its budget (the app's own clock,
// from its log, within budget + 100 ms), the requests lost while the app
// could still serve them, and that the instance is out of the registry, as
// the server itself lists it, and stays out for 30 s.
//
// The cases wait far more than they compute (the 30 s holds, a JVM's
// start), so they all run at once: each in its own goroutine through t.Run,
// which -parallel (GOMAXPROCS, 2 here) does not limit, unlike t.Parallel.

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

const (
	faultBudget = 25 * time.Second // every app's -budget (examples/app's default): 5 s for the stop hooks, 10 s for the drain, 10 s for the registries
	faultRate   = 100              // requests a second, per case
	faultHold   = 30 * time.Second // how long an instance taken offline must stay out of the registry
	faultOutage = 3 * time.Second  // how long a cut lasts: well within the registries' 10 s
	faultSlow   = 2 * time.Second  // the delay of every call to a slowed registry
)

func TestFaults(t *testing.T) {
	t.Parallel()
	bins := e2eBuild(t, "app", "lameduck")
	type suiteCase struct {
		name string
		run  func(t *testing.T)
	}
	var cases []suiteCase
	for _, kind := range []string{"consul", "nacos"} {
		for _, f := range []faultKind{faultDownAtStart, faultCutDeregistering, faultCutConfirming, faultCutDraining, faultSlowed} {
			cases = append(cases, suiteCase{kind + "/" + f.String(), func(t *testing.T) { faultProxyCase(t, bins, kind, f) }})
		}
	}
	cases = append(cases,
		suiteCase{"consul/restart-serving", func(t *testing.T) { faultConsulRestartServing(t, bins) }},
		suiteCase{"consul/restart-after-offline-disable", func(t *testing.T) { faultConsulRestartAfterOffline(t, bins, true) }},
		suiteCase{"consul/restart-after-offline", func(t *testing.T) { faultConsulRestartAfterOffline(t, bins, false) }},
		suiteCase{"nacos/restarts", func(t *testing.T) { faultNacosRestarts(t, bins) }},
	)
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() { defer wg.Done(); t.Run(c.name, c.run) }()
	}
	wg.Wait()
}

// faultKind is what the proxy does to the link in a proxied case.
type faultKind int

const (
	faultDownAtStart      faultKind = iota // refused when the app starts, back 3 s later
	faultCutDeregistering                  // cut for 3 s from the start of Deregistering
	faultCutConfirming                     // cut for 3 s from the start of Confirming
	faultCutDraining                       // cut for 3 s from the start of Draining
	faultSlowed                            // every call 2 s late, from the app's start to its exit
)

func (f faultKind) String() string {
	return [...]string{"down-at-start", "cut-deregistering", "cut-confirming", "cut-draining", "slowed"}[f]
}

// cutIn is the phase a cut starts in, or Serving for the others.
func (f faultKind) cutIn() drain.Phase {
	switch f {
	case faultCutDeregistering:
		return drain.Deregistering
	case faultCutConfirming:
		return drain.Confirming
	case faultCutDraining:
		return drain.Draining
	}
	return drain.Serving
}

// faultServer is a registry server as the suite reads it, never through a
// proxy: its address, a client of the suite's own for the load's watch, and
// the server's own list of a service's passing (Consul) or healthy and
// enabled (Nacos) instances, which is what consumers route to.
type faultServer struct {
	kind   string // consul or nacos
	addr   string
	watch  registry.Registry
	listed func(ctx context.Context, service string) ([]string, error)
}

func faultSharedServer(t *testing.T, kind string) faultServer {
	if kind == "consul" {
		needConsul(t)
		return faultServer{kind: kind, addr: consulAddr(), watch: newConsul(t), listed: consulLister(t, consulAddr())}
	}
	needNacos(t)
	return faultServer{kind: kind, addr: nacosAddr(), watch: newNacos(t), listed: nacosServerView(nacosAddr())}
}

// env is what a child needs to reach the server: the Nacos user.
func (s faultServer) env() []string {
	if s.kind == "nacos" {
		return []string{"NACOS_USERNAME=" + nacosUser(), "NACOS_PASSWORD=" + nacosPass()}
	}
	return nil
}

// faultProxyCase runs one proxied case: the app registers through a fault
// proxy in front of the shared server, the load finds it through the server
// itself, and the fault hits the link between the app and its registry.
func faultProxyCase(t *testing.T, bins map[string]string, kind string, f faultKind) {
	srv := faultSharedServer(t, kind)
	service := registrytest.UniqueService(t)
	proxy := newFaultProxy(t, srv.addr, kind == "nacos")
	switch f {
	case faultDownAtStart:
		proxy.cut()
	case faultSlowed:
		proxy.slow(faultSlow, "upstream")
	}
	app := e2eStartLibraryAppsWith(t, bins["app"], kind+"://"+proxy.addr, service, 1, srv.env(), "-budget", faultBudget.String())[0]
	load := startFaultLoad(t, srv.watch, service, faultRate)
	if f == faultDownAtStart {
		faultWaitRegistryState(t, app, "retrying")
		proxy.heal()
		back := time.Now()
		// nacos-sdk-go logs in again only every 5 s after a failed login,
		// and until then the server refuses the registration.
		load.waitServed(t, app.endpoint(), 1, 45*time.Second)
		t.Logf("registry back: the app registered and served its first request %v later", time.Since(back).Round(time.Millisecond))
	}
	// Two seconds of steady state first: the offline should not meet
	// Register's own follow-up (Nacos: a look for a stale disable, which
	// Deregister waits for).
	load.waitServed(t, app.endpoint(), 2*faultRate, 30*time.Second)

	cut := f.cutIn()
	if cut == drain.Deregistering || cut == drain.Confirming {
		// Each call then lasts over a second, so the cut surely lands
		// inside the phase, before the call it interrupts has its answer.
		proxy.slow(500*time.Millisecond, "upstream", "downstream")
	}
	off := faultSIGTERM(t, app)
	if cut != drain.Serving {
		waitPhase(t, app, cut)
		proxy.cut()
		st := faultStatus(t, app)
		t.Logf("cut at %v, in %v", time.Since(off.start).Round(time.Millisecond), st.Phase)
		if st.Phase != cut {
			t.Fatalf("the cut was meant for %v but landed in %v; the case did not test what it says", cut, st.Phase)
		}
		select {
		case <-app.done:
		case <-time.After(faultOutage): // the outage's length, by design
		}
		proxy.unslow()
		proxy.heal()
	}
	off.check(t, load, srv, service, drain.ExitOK, drain.OutcomeDrained)
}

// faultConsulRestartServing: a private dev agent is killed and started
// again (losing every registration) while the app serves; the app's keeper
// registers it again, and its offline afterwards is clean.
func faultConsulRestartServing(t *testing.T, bins map[string]string) {
	p := startPrivateConsul(t)
	srv := faultServer{kind: "consul", addr: p.addr(), watch: newConsulAt(t, p.addr()), listed: consulLister(t, p.addr())}
	service := registrytest.UniqueService(t)
	app := e2eStartLibraryAppsWith(t, bins["app"], "consul://"+p.addr(), service, 1, nil, "-budget", faultBudget.String())[0]
	load := startFaultLoad(t, srv.watch, service, faultRate)
	load.waitServed(t, app.endpoint(), 50, 30*time.Second)

	p.kill()
	p.start()
	restarted := time.Now()
	faultWaitListed(t, srv, service, app.endpoint(), 30*time.Second)
	t.Logf("agent restarted: the app's keeper registered it again %v later", time.Since(restarted).Round(time.Millisecond))
	load.waitServed(t, app.endpoint(), load.counts(app.endpoint()).Sent+50, 30*time.Second)

	faultSIGTERM(t, app).check(t, load, srv, service, drain.ExitOK, drain.OutcomeDrained)
}

// faultConsulRestartAfterOffline: `lameduck offline` (with --disable, or a
// plain deregistration) takes a running app's instance out; then the
// private dev agent restarts and loses its state. The instance must stay
// out: the app's keeper, which sees a new node ID, must not put it back.
// The keeper learns of the outside change within one resync interval (at
// once, through its blocking query); the restart follows as soon as the
// app logs that it learnt it.
func faultConsulRestartAfterOffline(t *testing.T, bins map[string]string, disable bool) {
	p := startPrivateConsul(t)
	srv := faultServer{kind: "consul", addr: p.addr(), watch: newConsulAt(t, p.addr()), listed: consulLister(t, p.addr())}
	service := registrytest.UniqueService(t)
	app := e2eStartLibraryAppsWith(t, bins["app"], "consul://"+p.addr(), service, 1, nil, "-budget", faultBudget.String())[0]
	load := startFaultLoad(t, srv.watch, service, faultRate)
	load.waitServed(t, app.endpoint(), 50, 30*time.Second)

	faultOfflineCommand(t, bins, srv, service, app, disable)
	learnt := "deregistered by someone else"
	if disable {
		learnt = "disabled (maintenance mode on) by someone else"
	}
	faultWaitLearnt(t, app, learnt)
	p.kill()
	p.start()
	restarted := time.Now()
	faultStaysOut(t, srv, service, app.endpoint(), restarted, "the agent's restart")
	faultCheckServed(t, load, app, time.Time{})
}

// faultNacosRestarts: four apps on a private Nacos, which is restarted
// twice. Before each restart `lameduck offline` takes one app's instance out
// (Nacos: a disable through the admin API, as an ephemeral instance belongs
// to its app's connection) while the app keeps running. The first restart
// keeps the server's data directory, as a restarted server keeps its disk;
// the second loses its naming state, which holds that disable (see
// privateNacos.loseNamingState). After each,
// an app that was serving is registered again by its SDK and its offline is
// clean, and the instance taken offline stays out.
func faultNacosRestarts(t *testing.T, bins map[string]string) {
	p := startPrivateNacos(t)
	srv := faultServer{kind: "nacos", addr: p.addr(), watch: newNacosAt(t, p.addr()), listed: nacosServerView(p.addr())}
	service := registrytest.UniqueService(t)
	apps := e2eStartLibraryAppsWith(t, bins["app"], "nacos://"+p.addr(), service, 4, srv.env(), "-budget", faultBudget.String())
	load := startFaultLoad(t, srv.watch, service, faultRate)
	for _, a := range apps {
		load.waitServed(t, a.endpoint(), 50, 30*time.Second)
	}
	for k, name := range []string{"kept-state", "lost-state"} {
		serving, offlined := apps[2*k], apps[2*k+1]
		faultOfflineCommand(t, bins, srv, service, offlined, false)
		faultWaitLearnt(t, offlined, "disabled by someone else")
		p.stop()
		if name == "lost-state" {
			p.loseNamingState()
		}
		p.start()
		restarted := time.Now()
		faultWaitListed(t, srv, service, serving.endpoint(), 60*time.Second)
		t.Logf("nacos restarted (%s): the serving app's SDK registered it again %v later", name, time.Since(restarted).Round(time.Millisecond))
		load.waitServed(t, serving.endpoint(), load.counts(serving.endpoint()).Sent+50, 30*time.Second)

		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			t.Run(name+"/serving", func(t *testing.T) {
				faultSIGTERM(t, serving).check(t, load, srv, service, drain.ExitOK, drain.OutcomeDrained)
			})
		}()
		go func() {
			defer wg.Done()
			t.Run(name+"/after-offline", func(t *testing.T) {
				faultStaysOut(t, srv, service, offlined.endpoint(), restarted, "the server's restart")
				faultCheckServed(t, load, offlined, time.Time{})
			})
		}()
		wg.Wait()
	}
}

// faultResync is the backends' resync interval: a change made elsewhere
// reaches an app's keeper within it.
const faultResync = 5 * time.Second

// faultWaitLearnt waits until app logs that its keeper learnt of a change
// made elsewhere (line), which it must within one resync interval; slack
// for a loaded machine on top.
func faultWaitLearnt(t *testing.T, app *e2eApp, line string) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(faultResync + 5*time.Second)
	for !strings.Contains(app.stderr.String(), line) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: want its keeper to log %q within one resync interval (%v, plus 5s of slack), got none\n%s", app.name, line, faultResync, app.describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%s: its keeper learnt of the change %v after the command returned", app.name, time.Since(start).Round(time.Millisecond))
}

// faultOfflineCommand takes app's instance out from outside with
// `lameduck offline` (--disable, or a plain deregistration), not following
// the app, which keeps running; it checks the command's exit code, outcome
// and time against its budget, and that the server no longer lists the
// instance.
func faultOfflineCommand(t *testing.T, bins map[string]string, srv faultServer, service string, app *e2eApp, disable bool) {
	t.Helper()
	const budget = 20 * time.Second // Nacos: a disable through the admin API, then the push; seconds on a loaded machine
	args := []string{"offline", "--registry", srv.kind + "://" + srv.addr, "--service", service, "--addr", app.endpoint(),
		"--budget", budget.String(), "--output", "json"}
	if disable {
		args = append(args, "--disable")
	}
	off := e2eStartEnv(t, "offline", bins["lameduck"], srv.env(), args...)
	if !off.wait(budget + 10*time.Second) {
		t.Fatalf("offline: still running 10s after its %v budget\n%s", budget, off.output())
	}
	res := e2eParseResult(t, off)
	t.Logf("lameduck %s: exit %d, outcome %s, %d ms (budget %v)", strings.Join(args, " "), off.exitCode(), res.Outcome, res.DurationMS, budget)
	if off.exitCode() != drain.ExitOK || res.Outcome != "deregistered" {
		t.Fatalf("offline: want exit 0, outcome deregistered; got exit %d, %+v\n%s", off.exitCode(), res, off.output())
	}
	if took := time.Duration(res.DurationMS) * time.Millisecond; took > budget+100*time.Millisecond {
		t.Errorf("offline: want it done within its budget %v + 100 ms, took %v", budget, took)
	}
	if eps := faultList(t, srv, service); slices.Contains(eps, app.endpoint()) {
		t.Fatalf("offline: want %s out of %s's list once the command is done, still there: %v", app.endpoint(), srv.addr, eps)
	}
}

// faultOffline is an app's offline under way, started by SIGTERM.
type faultOffline struct {
	app     *e2eApp
	start   time.Time
	outcome chan faultResult // the app's own outcome, from its admin endpoint
}

type faultResult struct {
	status drain.Status
	err    error
}

// faultSIGTERM starts the app's offline and follows it through its admin
// endpoint, which answers a long poll for Offline before it closes.
func faultSIGTERM(t *testing.T, app *e2eApp) *faultOffline {
	t.Helper()
	c, err := admin.NewClient("http://" + e2eEndpoint(app.admin))
	if err != nil {
		t.Fatalf("%s: admin client: %v", app.name, err)
	}
	o := &faultOffline{app: app, outcome: make(chan faultResult, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), faultBudget+15*time.Second)
	t.Cleanup(cancel)
	go func() {
		res, err := c.Wait(ctx, drain.Offline, 0)
		o.outcome <- faultResult{res.Status, err}
	}()
	o.start = time.Now()
	if err := app.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", app.name, err)
	}
	return o
}

// faultOfflineElapsed reads the Offline phase's elapsed time, the app's own
// clock from the start of its offline, from the app's log.
var faultOfflineElapsed = regexp.MustCompile(`phase=Offline elapsed=(\S+)`)

// check waits for the app's exit and checks the offline: exit code and
// outcome, time against the budget, no request lost while the app could
// serve it and none sent to it after it exited, and the instance out of the
// server's list for faultHold.
func (o *faultOffline) check(t *testing.T, load *faultLoad, srv faultServer, service string, code int, outcome drain.Outcome) {
	t.Helper()
	app := o.app
	if !app.wait(faultBudget + 10*time.Second) {
		t.Fatalf("%s: still running 10s after its %v budget\n%s", app.name, faultBudget, app.output())
	}
	exited := time.Now()
	res := <-o.outcome
	var elapsed time.Duration
	if m := faultOfflineElapsed.FindStringSubmatch(app.stderr.String()); m != nil {
		elapsed, _ = time.ParseDuration(m[1])
	}
	t.Logf("%s: exit %d, outcome %q, offline %v by its own clock (budget %v), exited %v after SIGTERM",
		app.name, app.exitCode(), res.status.Outcome, elapsed, faultBudget, exited.Sub(o.start).Round(time.Millisecond))
	if app.exitCode() != code {
		t.Errorf("%s: want exit code %d, got %s\n%s", app.name, code, app.describe(), app.output())
	}
	switch {
	case res.err != nil:
		t.Errorf("%s: could not follow its offline through the admin endpoint: %v", app.name, res.err)
	case res.status.Outcome != outcome:
		t.Errorf("%s: want outcome %q, got %q (%s)", app.name, outcome, res.status.Outcome, res.status.Error)
	}
	switch {
	case elapsed == 0:
		t.Errorf("%s: no \"phase=Offline elapsed=\" in its log; cannot check its time against the budget\n%s", app.name, app.output())
	case elapsed > faultBudget+100*time.Millisecond:
		t.Errorf("%s: want it offline within its budget %v + 100 ms, took %v", app.name, faultBudget, elapsed)
	}
	faultStaysOut(t, srv, service, app.endpoint(), exited, "its offline")
	faultCheckServed(t, load, app, exited)
}

// faultCheckServed checks that the load reached app and lost nothing: no
// request failed while the app was up (before exited, if it has exited),
// and none was sent to it after.
func faultCheckServed(t *testing.T, load *faultLoad, app *e2eApp, exited time.Time) {
	t.Helper()
	c := load.counts(app.endpoint())
	var lost, late []faultFailure
	for _, f := range c.Failures {
		if exited.IsZero() || f.At.Before(exited) {
			lost = append(lost, f)
		} else {
			late = append(late, f)
		}
	}
	t.Logf("load on %s: sent %d, failed %d (%d while the app was up)", app.endpoint(), c.Sent, c.Failed, len(lost))
	if c.Sent-c.Failed == 0 {
		t.Errorf("%s: want requests served, got none", app.endpoint())
	}
	if len(lost) > 0 {
		t.Errorf("%s: want no request lost while the app was up, got %d: %v", app.endpoint(), len(lost), lost)
	}
	if len(late) > 0 {
		t.Errorf("%s: want no request sent to it after it exited (consumers still listed it), got %d: %v", app.endpoint(), len(late), late)
	}
}

// faultList is the server's own list of service, failing the test if it
// cannot be read within 10 s.
func faultList(t *testing.T, srv faultServer, service string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eps, err := srv.listed(ctx, service)
	if err != nil {
		t.Fatalf("list %s on %s: %v", service, srv.addr, err)
	}
	return eps
}

// faultWaitListed polls the server (which has no event to wait on) until
// it lists endpoint, or fails the test after d.
func faultWaitListed(t *testing.T, srv faultServer, service, endpoint string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		var eps []string
		if eps, err = srv.listed(ctx, service); err == nil && slices.Contains(eps, endpoint) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("want %s in %s's list of %s within %v; not yet (last error: %v)", endpoint, srv.addr, service, d, err)
		case <-tick.C:
		}
	}
}

// faultStaysOut polls the server's own list for faultHold and fails at the
// first sighting of endpoint, saying how long after since (the event named
// after) it came back.
func faultStaysOut(t *testing.T, srv faultServer, service, endpoint string, since time.Time, after string) {
	t.Helper()
	end := time.NewTimer(faultHold)
	defer end.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	reads, failed := 0, 0
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		eps, err := srv.listed(ctx, service)
		cancel()
		reads++
		switch {
		case err != nil:
			failed++
			lastErr = err
		case slices.Contains(eps, endpoint):
			t.Errorf("want %s out of %s's list of %s for %v after %s; it is back %v after it",
				endpoint, srv.addr, service, faultHold, after, time.Since(since).Round(time.Millisecond))
			return
		}
		select {
		case <-end.C:
			if failed > reads/2 {
				t.Errorf("could read %s's list only %d times of %d over %v (last error: %v); cannot tell whether %s stayed out",
					srv.addr, reads-failed, reads, faultHold, lastErr, endpoint)
			}
			return
		case <-tick.C:
		}
	}
}

// faultWaitRegistryState waits until the app's admin endpoint shows its
// registry in state (registering, retrying, registered...).
func faultWaitRegistryState(t *testing.T, app *e2eApp, state string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := faultStatus(t, app)
		if len(st.Registries) == 1 && st.Registries[0].State == state {
			t.Logf("%s: registry %s: %s", app.name, state, st.Registries[0].Error)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: want its registry in state %q within 15s, got %+v", app.name, state, st.Registries)
		}
		time.Sleep(50 * time.Millisecond) // polling the app's status, which has no event to wait on
	}
}

func faultStatus(t *testing.T, app *e2eApp) drain.Status {
	t.Helper()
	c, err := admin.NewClient("http://" + e2eEndpoint(app.admin))
	if err != nil {
		t.Fatalf("%s: admin client: %v", app.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("%s: status: %v", app.name, err)
	}
	return st
}

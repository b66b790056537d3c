//go:build linux

// Linux only: the supervisor (`lameduck run`) is.

package integration

// The integration proof of the supervisor (`lameduck run`, pkg/supervisor)
// against the memory registry and real Consul and Nacos. Run it alone to
// read the figures:
//
//	LAMEDUCK_INTEGRATION=1 go test -count=1 ./integration -run 'TestSupervisor' -v
//
// LAMEDUCK_SUPERVISOR_RUNS sets the runs per figure (default 20).
//
// Definitions used throughout:
//
//   - crash instant: the moment the test sends GET /crash to the child,
//     whose handler calls os.Exit(3). The child dies within that request's
//     delivery, so measuring from here never flatters a figure.
//   - deregistered: the consumer's watch (a second client of the registry,
//     opened before the supervisor, as a consumer's is) delivers a list
//     without the instance.
//   - P, the registry's confirmation latency, measured once per crash in
//     the same run as TestConfirmationLatency measures it: a probe
//     instance is registered and deregistered through the consumer's
//     client, and P is from its Deregister returning to that same watch
//     delivering a list without it. P(sup) is the same measure on the
//     supervisor's own deregistration (EventDeregistered -> watch).
//     "dereg - P" is the supervisor's share of a crash's deregistration.
//   - start-up time: EventStarted to EventReady of the new copy (readiness
//     is polled every 100ms, the supervisor's default).
//   - back: the crash instant to the consumer's watch listing the
//     restarted copy again. It includes the restart backoff (WithBackoff
//     100ms with a 100ms cap, so every crash waits a first failure's delay,
//     80-100ms with jitter) and the registry's propagation of the
//     registration. "registered" is the crash instant to EventRegistered
//     (the Register call returned).
//   - promotion: the crash instant to EventPromoted (the standby's Register
//     call has returned in every registry), and to the consumer's watch
//     listing the standby.
//
// A registry that pushes late can carry a crash's deregistration and the
// restarted copy's registration in one push (Nacos does: its push comes
// about 0.5s after a change, and the copy is back after about 0.2s). The
// consumer then never sees the instance gone; the figures table says in
// how many runs it did, and dereg and back are over those runs.
//
// Nothing here asserts wall-clock time: the tests assert the behaviour
// (deregistered, back, promoted, no request lost, every loss accounted
// for, no process left) and log the figures as medians and p90.

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/pkg/supervisor"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// crashFigures are the measurements of crashes without a standby.
type crashFigures struct {
	runs        int
	gapSeen     int     // runs in which the consumer saw the instance gone at all
	pProbe      samples // the probe's Deregister returned -> the consumer's watch drops it
	pSup        samples // the supervisor's Deregister returned (EventDeregistered) -> the watch drops the instance
	exitSeen    samples // crash -> EventExited (the supervisor reaped the child)
	deregCall   samples // crash -> EventDeregistered (the Deregister call returned)
	dereg       samples // crash -> the consumer's watch drops the instance
	deregMinusP samples // dereg - the same run's probe P
	startup     samples // EventStarted -> EventReady of the restarted copy
	backoff     samples // the restart delay the supervisor chose (EventBackoff)
	registered  samples // crash -> EventRegistered of the restarted copy
	back        samples // crash -> the consumer's watch lists the restarted copy again
	backMinusSU samples // back - startup, paired per run
	regMinusSU  samples // registered - startup, paired per run
}

// promoFigures are the measurements of crashes with a warm standby.
type promoFigures struct {
	promoted samples // crash -> EventPromoted (the standby's registration returned)
	seen     samples // crash -> the consumer's watch lists the standby
	gone     samples // crash -> the consumer's watch drops the crashed copy
	pSup     samples // EventDeregistered of the crashed copy -> the watch drops it
	goneMinP samples // gone - pSup, paired: the supervisor's share
}

// supervisorTestOptions are the supervisor options of every test here, for
// a test that crashes the child up to runs times: every restart waits the
// default first delay (100ms, capped there), the restart-intensity limit
// outlasts all the crashes, and an offline has 10s.
func supervisorTestOptions(runs int) []supervisor.Option {
	return []supervisor.Option{
		supervisor.WithBackoff(100*time.Millisecond, 100*time.Millisecond),
		supervisor.WithRestartIntensity(float64(runs+10), supervisor.DefaultFailureHalfLife),
		supervisor.WithBudget(10 * time.Second),
	}
}

// TestSupervisorFigures measures, on each registry, how fast a crash is
// deregistered, how fast the crashed child is back, and how fast a warm
// standby takes over, over LAMEDUCK_SUPERVISOR_RUNS crashes each (default
// 20), and logs one table line per registry for each.
func TestSupervisorFigures(t *testing.T) {
	n := supRuns(t)
	child := supChild(t)
	type row struct {
		name  string
		crash crashFigures
		promo promoFigures
	}
	var rows []row
	for _, b := range supBackends {
		t.Run(b.name, func(t *testing.T) {
			r := row{name: b.name}
			t.Run("crash", func(t *testing.T) {
				reg, cons := b.open(t)
				r.crash = measureCrashes(t, child, reg, cons, n)
			})
			t.Run("standby", func(t *testing.T) {
				reg, cons := b.open(t)
				r.promo = measurePromotions(t, child, reg, cons, n)
			})
			rows = append(rows, r)
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "supervisor figures over %d crashes per registry and table; median/p90 in ms; crash = the test sends GET /crash\n", n)
	b.WriteString("1. a crash, no standby: deregistration (target: dereg - P <= 100ms)\n")
	fmt.Fprintf(&b, "   %-8s %13s %13s %11s %13s %13s %13s %13s\n", "registry", "P", "P(sup)", "gap seen", "dereg", "dereg-P", "exit seen", "dereg call")
	for _, r := range rows {
		c := r.crash
		fmt.Fprintf(&b, "   %-8s %13s %13s %11s %13s %13s %13s %13s\n", r.name, c.pProbe.ms(), c.pSup.ms(),
			fmt.Sprintf("%d/%d", c.gapSeen, c.runs), c.dereg.ms(), c.deregMinusP.ms(), c.exitSeen.ms(), c.deregCall.ms())
	}
	b.WriteString("2. a crash, no standby: back (target: back - startup <= 200ms)\n")
	fmt.Fprintf(&b, "   %-8s %13s %13s %13s %13s %13s %13s\n", "registry", "startup", "backoff", "back", "back-startup", "registered", "reg-startup")
	for _, r := range rows {
		c := r.crash
		fmt.Fprintf(&b, "   %-8s %13s %13s %13s %13s %13s %13s\n", r.name, c.startup.ms(), c.backoff.ms(),
			c.back.ms(), c.backMinusSU.ms(), c.registered.ms(), c.regMinusSU.ms())
	}
	b.WriteString("3. a crash with a warm standby: promotion (target: promoted <= 100ms)\n")
	fmt.Fprintf(&b, "   %-8s %13s %13s %13s %13s %13s\n", "registry", "promoted", "promo seen", "dead dropped", "P(sup)", "dropped-P")
	for _, r := range rows {
		p := r.promo
		fmt.Fprintf(&b, "   %-8s %13s %13s %13s %13s %13s\n", r.name, p.promoted.ms(), p.seen.ms(), p.gone.ms(), p.pSup.ms(), p.goneMinP.ms())
	}
	b.WriteString("P: a probe instance's Deregister returned -> the consumer's watch drops it (TestConfirmationLatency's measure), once per run;\n" +
		"P(sup): the supervisor's own Deregister returned -> the watch drops the instance; gap seen: runs in which the consumer's\n" +
		"list ever lacked the crashed instance (dereg, back and their differences are over those runs); registered: EventRegistered\n" +
		"(the Register call returned); promoted: EventPromoted; promo seen: the consumer lists the standby")
	t.Log(b.String())
}

// measureCrashes crashes a supervised child without a standby n times and
// measures each crash's deregistration and restart as the consumer's watch
// saw them. After each restart, a probe instance is registered and
// deregistered through the consumer's client: once the watch lists the
// probe, it has delivered every earlier change (a fence), and the probe's
// deregistration gives the run's P.
func measureCrashes(t *testing.T, child string, reg, cons registry.Registry, n int) crashFigures {
	service := registrytest.UniqueService(t)
	ports := e2ePorts(t, 2)
	port, ep, probeEP := ports[0], e2eEndpoint(ports[0]), e2eEndpoint(ports[1])
	probe := registry.Instance{Service: service, ID: service + "-probe", Address: "127.0.0.1", Port: ports[1]}
	view := watchService(t, cons, service)
	run := startSupervisor(t, supSpec(child, service, reg, port, 0), supervisorTestOptions(n)...)
	first, _ := run.await(t, 0, supervisor.EventRegistered, "of the first copy", nil)
	view.until(t, ep+" listed", func(s viewSnap) bool { return s.has(ep) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	f := crashFigures{runs: n}
	pid := first.PID
	for k := 0; k < n; k++ {
		em, vm := run.events.mark(), view.snaps.mark()
		sent, _ := crashChild(t, port)

		ex, _ := run.await(t, em, supervisor.EventExited, "of the crashed child", ofPID(pid))
		var ee *supervisor.ExitError
		if !errors.As(ex.Err, &ee) || ee.Code != 3 {
			t.Fatalf("run %d: want the crash reported as an *ExitError with code 3, got %v", k, ex.Err)
		}
		de, _ := run.await(t, em, supervisor.EventDeregistered, "of the crashed child", ofPID(pid))
		if de.Err != nil {
			t.Fatalf("run %d: want the crashed child deregistered, got %v", k, de.Err)
		}
		bo, _ := run.await(t, em, supervisor.EventBackoff, "after the crash", nil)
		st, si := run.await(t, em, supervisor.EventStarted, "of the replacement", nil)
		rd, _ := run.await(t, si, supervisor.EventReady, "of the replacement", ofPID(st.PID))
		rg, _ := run.await(t, si, supervisor.EventRegistered, "of the replacement", ofPID(st.PID))

		// The fence, then this run's P.
		fm := view.snaps.mark()
		if err := cons.Register(ctx, probe); err != nil {
			t.Fatalf("run %d: register the probe: %v", k, err)
		}
		fence, fi := view.await(t, fm, probeEP+" (the probe) listed", func(s viewSnap) bool { return s.has(probeEP) })
		if !fence.has(ep) {
			t.Fatalf("run %d: want the restarted %s listed once the consumer lists the probe registered after it, got %v", k, ep, fence.eps)
		}
		if err := cons.Deregister(ctx, probe); err != nil {
			t.Fatalf("run %d: deregister the probe: %v", k, err)
		}
		probeGoneAt := time.Now()
		pg, _ := view.await(t, fi+1, probeEP+" (the probe) gone", func(s viewSnap) bool { return !s.has(probeEP) })
		pProbe := pg.at.Sub(probeGoneAt)
		f.pProbe = append(f.pProbe, pProbe)

		f.exitSeen = append(f.exitSeen, ex.Time.Sub(sent))
		f.deregCall = append(f.deregCall, de.Time.Sub(sent))
		startup, regT := rd.Time.Sub(st.Time), rg.Time.Sub(sent)
		f.startup = append(f.startup, startup)
		f.backoff = append(f.backoff, bo.Delay)
		f.registered = append(f.registered, regT)
		f.regMinusSU = append(f.regMinusSU, regT-startup)

		// Did the consumer see the instance gone, and when back?
		snaps := view.snaps.all()[vm : fi+1]
		if gi := slices.IndexFunc(snaps, func(s viewSnap) bool { return !s.has(ep) }); gi >= 0 {
			gone := snaps[gi]
			bi := slices.IndexFunc(snaps[gi:], func(s viewSnap) bool { return s.has(ep) })
			back := snaps[gi+bi] // there is one: the fence
			if back.at.Before(st.Time) {
				t.Fatalf("run %d: the consumer listed %s again at %s, before the replacement started at %s: a stale list", k,
					ep, back.at.Format("15:04:05.000000"), st.Time.Format("15:04:05.000000"))
			}
			f.gapSeen++
			dereg, backT := gone.at.Sub(sent), back.at.Sub(sent)
			f.dereg = append(f.dereg, dereg)
			f.pSup = append(f.pSup, gone.at.Sub(de.Time))
			f.deregMinusP = append(f.deregMinusP, dereg-pProbe)
			f.back = append(f.back, backT)
			f.backMinusSU = append(f.backMinusSU, backT-startup)
		}
		pid = st.PID
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run after %d crashes and a cancel: want nil, got %v", n, err)
	}
	view.until(t, ep+" gone after the supervisor stopped", func(s viewSnap) bool { return !s.has(ep) })
	t.Logf("%d crashes (the consumer saw the gap in %d), median/p90 ms: P %s, P(sup) %s, dereg %s (call returned %s), dereg-P %s; startup %s, backoff %s, registered %s, back %s, back-startup %s",
		n, f.gapSeen, f.pProbe.ms(), f.pSup.ms(), f.dereg.ms(), f.deregCall.ms(), f.deregMinusP.ms(), f.startup.ms(), f.backoff.ms(),
		f.registered.ms(), f.back.ms(), f.backMinusSU.ms())
	return f
}

// measurePromotions crashes the active copy n times with a warm standby:
// each time the standby must be promoted, the crashed copy must leave the
// consumer's view, and come back as the new standby, unregistered.
func measurePromotions(t *testing.T, child string, reg, cons registry.Registry, n int) promoFigures {
	service := registrytest.UniqueService(t)
	ports := e2ePorts(t, 2)
	view := watchService(t, cons, service)
	opts := append(supervisorTestOptions(n), supervisor.WithStandby())
	run := startSupervisor(t, supSpec(child, service, reg, ports[0], ports[1]), opts...)
	active, standby := ports[0], ports[1]
	first, _ := run.await(t, 0, supervisor.EventRegistered, "of the first copy", onPort(active))
	sb, _ := run.await(t, 0, supervisor.EventReady, "of the standby", onPort(standby))
	only := func(port int) func(viewSnap) bool {
		return func(s viewSnap) bool { return slices.Equal(s.eps, []string{e2eEndpoint(port)}) }
	}
	view.until(t, "only "+e2eEndpoint(active)+" listed", only(active))

	var f promoFigures
	activePID, standbyPID := first.PID, sb.PID
	for k := 0; k < n; k++ {
		em, vm := run.events.mark(), view.snaps.mark()
		sent, _ := crashChild(t, active)

		pr, _ := run.await(t, em, supervisor.EventPromoted, "of the standby", onPort(standby))
		if pr.PID != standbyPID {
			t.Fatalf("run %d: want the warm standby (pid %d) promoted, got pid %d", k, standbyPID, pr.PID)
		}
		de, _ := run.await(t, em, supervisor.EventDeregistered, "of the crashed copy", ofPID(activePID))
		if de.Err != nil {
			t.Fatalf("run %d: want the crashed copy deregistered, got %v", k, de.Err)
		}
		seen, _ := view.await(t, vm, e2eEndpoint(standby)+" listed", func(s viewSnap) bool { return s.has(e2eEndpoint(standby)) })
		gone, _ := view.await(t, vm, e2eEndpoint(active)+" gone", func(s viewSnap) bool { return !s.has(e2eEndpoint(active)) })
		// The crashed copy comes back as the new standby: ready, unregistered.
		st, si := run.await(t, em, supervisor.EventStarted, "of the new standby", onPort(active))
		run.await(t, si, supervisor.EventReady, "of the new standby", ofPID(st.PID))
		view.until(t, "only the promoted "+e2eEndpoint(standby)+" listed", only(standby))

		f.promoted = append(f.promoted, pr.Time.Sub(sent))
		f.seen = append(f.seen, seen.at.Sub(sent))
		f.gone = append(f.gone, gone.at.Sub(sent))
		f.pSup = append(f.pSup, gone.at.Sub(de.Time))
		f.goneMinP = append(f.goneMinP, de.Time.Sub(sent))
		active, standby = standby, active
		activePID, standbyPID = pr.PID, st.PID
	}
	// No standby was ever registered while standing by.
	promoted := map[int]bool{first.PID: true}
	for _, e := range run.events.all() {
		if e.Kind == supervisor.EventPromoted {
			promoted[e.PID] = true
		}
	}
	for _, e := range run.events.all() {
		if e.Kind == supervisor.EventRegistered && !promoted[e.PID] {
			t.Fatalf("copy pid %d was registered without being promoted; events: %s", e.PID, run.describe())
		}
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run after %d promotions and a cancel: want nil, got %v", n, err)
	}
	t.Logf("%d promotions, median/p90 ms: promoted (Register returned) %s, consumer sees the standby %s, consumer drops the crashed copy %s (P(sup) %s)",
		n, f.promoted.ms(), f.seen.ms(), f.gone.ms(), f.pSup.ms())
	return f
}

// The load tests' client: loadRate requests a second, each POST
// /slow?ms=loadWork, so that about loadRate*loadWork/1000 requests are in
// flight at any time.
const (
	loadRate = 250
	loadWork = 50
)

var loadPath = "/slow?ms=" + strconv.Itoa(loadWork)

// loadRow is one load test's outcome, for the table.
type loadRow struct {
	registry, test string
	sent, failed   int
	note           string
}

// TestSupervisorUnderLoad puts a steady open-loop load through a consumer
// that routes by the registry's current view and retries nothing, and
// checks that recycling (with and without a standby) and the supervisor's
// SIGTERM lose no request, and that a crash with a warm standby loses only
// the requests the crash explains: those in flight in the dying copy, and
// those sent before the consumer's view switched to the standby.
//
// The registries run in parallel (the figures are counts, not times); the
// cases on one registry run one after another.
func TestSupervisorUnderLoad(t *testing.T) {
	child := supChild(t)
	var mu sync.Mutex
	var rows []loadRow
	t.Cleanup(func() { // after every parallel subtest
		slices.SortStableFunc(rows, func(x, y loadRow) int {
			return slices.IndexFunc(supBackends, func(b supBackend) bool { return b.name == x.registry }) -
				slices.IndexFunc(supBackends, func(b supBackend) bool { return b.name == y.registry })
		})
		var sb strings.Builder
		fmt.Fprintf(&sb, "supervisor under load: %d req/s open loop, POST %s, no retries\n", loadRate, loadPath)
		fmt.Fprintf(&sb, "%-8s %-16s %6s %6s  %s\n", "registry", "test", "sent", "failed", "notes")
		for _, r := range rows {
			fmt.Fprintf(&sb, "%-8s %-16s %6d %6d  %s\n", r.registry, r.test, r.sent, r.failed, r.note)
		}
		t.Log(sb.String())
	})
	for _, b := range supBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name string
				run  func(t *testing.T, child string, reg, cons registry.Registry) loadRow
			}{
				{"recycle", func(t *testing.T, c string, reg, cons registry.Registry) loadRow {
					return loadRecycle(t, c, reg, cons, false)
				}},
				{"recycle-standby", func(t *testing.T, c string, reg, cons registry.Registry) loadRow {
					return loadRecycle(t, c, reg, cons, true)
				}},
				{"sigterm", loadSIGTERM},
				{"crash-standby", loadCrashStandby},
			} {
				t.Run(tc.name, func(t *testing.T) {
					reg, cons := b.open(t)
					row := tc.run(t, child, reg, cons)
					row.registry, row.test = b.name, tc.name
					mu.Lock()
					rows = append(rows, row)
					mu.Unlock()
				})
			}
		})
	}
}

// countFailed returns how many requests failed.
func countFailed(reqs []loadReq) int {
	n := 0
	for _, r := range reqs {
		if r.err != nil {
			n++
		}
	}
	return n
}

// loadRecycle recycles the serving copy every 2s of age, three times,
// under load: no request may fail, and the consumer's view may never be
// empty.
func loadRecycle(t *testing.T, child string, reg, cons registry.Registry, standby bool) loadRow {
	const recycles = 3
	service := registrytest.UniqueService(t)
	ports := e2ePorts(t, 2)
	view := watchService(t, cons, service)
	opts := append(supervisorTestOptions(10), supervisor.WithRecycle(2*time.Second, 0))
	if standby {
		opts = append(opts, supervisor.WithStandby())
	}
	run := startSupervisor(t, supSpec(child, service, reg, ports[0], ports[1]), opts...)
	first, _ := run.await(t, 0, supervisor.EventRegistered, "of the first copy", onPort(ports[0]))
	view.until(t, e2eEndpoint(ports[0])+" listed", func(s viewSnap) bool { return s.has(e2eEndpoint(ports[0])) })
	load := startOpenLoad(t, view, loadRate, loadPath)
	load.servedBy(t, 0, e2eEndpoint(ports[0]), 20)

	// Each recycle of the serving copy: its replacement is promoted, then
	// the old copy is taken offline and reported recycled.
	serving, from := first.PID, 0
	var took []string
	for k := 0; k < recycles; k++ {
		rc, ri := run.await(t, from, supervisor.EventRecycling, "of the serving copy", ofPID(serving))
		pr, pi := run.await(t, ri, supervisor.EventPromoted, "of its replacement", nil)
		done, _ := run.await(t, pi, supervisor.EventRecycled, "of the old serving copy", ofPID(serving))
		if done.Err != nil {
			t.Fatalf("recycle %d: want the old copy (pid %d) offline cleanly, got %v", k, serving, done.Err)
		}
		took = append(took, fmt.Sprintf("%dms", done.Time.Sub(rc.Time).Milliseconds()))
		serving, from = pr.PID, pi+1
	}
	lm := load.mark()
	for _, e := range run.events.all() {
		if e.Kind == supervisor.EventRegistered && e.PID == serving {
			load.servedBy(t, lm, e2eEndpoint(e.Port), 20)
		}
	}
	load.stop(t)
	reqs := load.results()
	if failed := countFailed(reqs); failed != 0 {
		t.Fatalf("%d recycles under load: want 0 failed requests, got %d of %d; %s", recycles, failed, len(reqs), failureSummary(reqs))
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run after the recycles and a cancel: want nil, got %v", err)
	}
	return loadRow{sent: len(reqs), failed: 0, note: fmt.Sprintf("%d recycles of the serving copy (recycling -> old copy offline: %s)", recycles, strings.Join(took, ", "))}
}

// loadSIGTERM cancels Run's ctx (what SIGTERM does to `lameduck run`) under
// load, with a second instance of the service (a plain copy of the child,
// registered by the test) so that consumers keep somewhere to go: no
// request may fail.
func loadSIGTERM(t *testing.T, child string, reg, cons registry.Registry) loadRow {
	service := registrytest.UniqueService(t)
	ports := e2ePorts(t, 2)
	sup, peer := e2eEndpoint(ports[0]), e2eEndpoint(ports[1])
	view := watchService(t, cons, service)

	pc := e2eStart(t, "peer", child, "-addr="+peer)
	e2eWaitListening(t, pc, peer, 10*time.Second)
	peerInst := registry.Instance{Service: service, ID: service + "-peer", Address: "127.0.0.1", Port: ports[1]}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cons.Register(ctx, peerInst); err != nil {
		t.Fatalf("register the peer: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = cons.Deregister(ctx, peerInst)
	})

	run := startSupervisor(t, supSpec(child, service, reg, ports[0], 0), supervisorTestOptions(10)...)
	run.await(t, 0, supervisor.EventRegistered, "of the child", nil)
	view.until(t, "both instances listed", func(s viewSnap) bool { return s.has(sup) && s.has(peer) })
	load := startOpenLoad(t, view, loadRate, loadPath)
	load.servedBy(t, 0, sup, 50)

	stopAt := time.Now()
	if err := run.stop(t); err != nil {
		t.Fatalf("Run after its ctx ended under load: want nil (a clean offline), got %v; events: %s", err, run.describe())
	}
	took := time.Since(stopAt)
	gone, _ := view.until(t, sup+" gone", func(s viewSnap) bool { return !s.has(sup) })
	lm := load.mark()
	load.servedBy(t, lm, peer, 50)
	load.stop(t)
	reqs := load.results()
	during := 0
	for _, r := range reqs {
		if r.ep == sup && !r.start.Before(stopAt) {
			during++
		}
	}
	if failed := countFailed(reqs); failed != 0 {
		t.Fatalf("SIGTERM under load: want 0 failed requests, got %d of %d; %s", failed, len(reqs), failureSummary(reqs))
	}
	return loadRow{sent: len(reqs), failed: 0, note: fmt.Sprintf(
		"%d sent to the supervised copy after the stop began, all served; consumer dropped it after %dms; Run returned after %dms",
		during, gone.at.Sub(stopAt).Milliseconds(), took.Milliseconds())}
}

// loadCrashStandby crashes the serving copy under load with a warm
// standby. Every failed request must be one the crash explains: in flight
// in the crashed copy when it died (started before the test saw the
// /crash connection cut, not finished when /crash was sent), or sent after
// the crash while the consumer's view had not yet switched to the standby
// (to the dead copy, or nowhere when the view was empty for a moment).
// Every request routed by the switched view must succeed.
func loadCrashStandby(t *testing.T, child string, reg, cons registry.Registry) loadRow {
	service := registrytest.UniqueService(t)
	ports := e2ePorts(t, 2)
	a, b := e2eEndpoint(ports[0]), e2eEndpoint(ports[1])
	view := watchService(t, cons, service)
	opts := append(supervisorTestOptions(10), supervisor.WithStandby())
	run := startSupervisor(t, supSpec(child, service, reg, ports[0], ports[1]), opts...)
	run.await(t, 0, supervisor.EventRegistered, "of the first copy", onPort(ports[0]))
	sb, _ := run.await(t, 0, supervisor.EventReady, "of the standby", onPort(ports[1]))
	view.until(t, "only "+a+" listed", func(s viewSnap) bool { return slices.Equal(s.eps, []string{a}) })
	load := startOpenLoad(t, view, loadRate, loadPath)
	load.servedBy(t, 0, a, loadRate) // a second of steady load

	em, vm := run.events.mark(), view.snaps.mark()
	sent, cut := crashChild(t, ports[0])
	pr, _ := run.await(t, em, supervisor.EventPromoted, "of the standby", onPort(ports[1]))
	if pr.PID != sb.PID {
		t.Fatalf("want the warm standby (pid %d) promoted, got pid %d", sb.PID, pr.PID)
	}
	switched, si := view.await(t, vm, a+" gone and "+b+" listed", func(s viewSnap) bool { return !s.has(a) && s.has(b) })
	lm := load.mark()
	load.servedBy(t, lm, b, loadRate) // a second more
	load.stop(t)
	reqs := load.results()

	var inFlight, lostInFlight, stale, lostStale, empty, later int
	var other []loadReq
	for _, r := range reqs {
		switch {
		case r.ep == a && r.start.Before(cut) && !r.end.Before(sent):
			inFlight++
			if r.err != nil {
				lostInFlight++
			}
		case !r.start.Before(cut) && r.ver < si && r.ep == a:
			stale++
			if r.err != nil {
				lostStale++
			}
		case !r.start.Before(cut) && r.ver < si && r.ep == "":
			empty++ // each a failure: errNoInstance
		default:
			if r.ver >= si {
				later++
			}
			if r.err != nil {
				other = append(other, r)
			}
		}
	}
	failed := countFailed(reqs)
	note := fmt.Sprintf("in flight at the crash %d, failed %d; before the view switched (%dms): sent to the dead copy %d, failed %d, view empty %d; after: %d, all served",
		inFlight, lostInFlight, switched.at.Sub(sent).Milliseconds(), stale, lostStale, empty, later)
	t.Log(note)
	if len(other) > 0 {
		t.Fatalf("crash with a standby: want every failure in flight in the crashed copy %s or sent before the consumer's view switched to %s; got %d others; %s",
			a, b, len(other), failureSummary(other))
	}
	if failed != lostInFlight+lostStale+empty {
		t.Fatalf("loss accounting: %d failed, but %d in flight + %d to the dead copy + %d with an empty view", failed, lostInFlight, lostStale, empty)
	}
	return loadRow{sent: len(reqs), failed: failed, note: note}
}

// childListening matches the child's start-up line, as `lameduck run` passes it
// through.
var childListening = regexp.MustCompile(`listening on 127\.0\.0\.1:(\d+) pid (\d+)`)

// TestSupervisorOrphansAfterSIGKILL runs the real `lameduck run`, SIGKILLs
// it, and checks that every process group it started is gone: the
// children die with their supervisor (Pdeathsig), nothing is left behind.
func TestSupervisorOrphansAfterSIGKILL(t *testing.T) {
	child := supChild(t)
	lameduck := supBuild(t, "./cli/lameduck", "lameduck")
	help, _ := exec.Command(lameduck, "run", "--help").CombinedOutput()
	for _, tc := range []struct {
		name   string
		copies int
		args   func(ports []int) []string // after --registry, --service, --port, --ready
	}{
		{"one copy", 1, func(p []int) []string {
			return []string{"--", child, "-addr=127.0.0.1:{port}"}
		}},
		{"standby", 2, func(p []int) []string {
			return []string{"--standby", "--standby-port", strconv.Itoa(p[1]), "--", child, "-addr=127.0.0.1:{port}"}
		}},
		// The child forks a grandchild into its process group, as a shell
		// wrapper or a pre-forking server does.
		{"child with a grandchild", 1, func(p []int) []string {
			return []string{"--", "/bin/sh", "-c", "sleep 300 & exec " + child + " -addr=127.0.0.1:{port}"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.copies > 1 && !strings.Contains(string(help), "--standby-port") {
				t.Fatalf("want lameduck run to take --standby and --standby-port, got run --help:\n%s", help)
			}
			ports := e2ePorts(t, 2)
			service := registrytest.UniqueService(t)
			args := append([]string{"run", "--registry", "memory://", "--service", service,
				"--port", strconv.Itoa(ports[0]), "--ready", "http://127.0.0.1:{port}/healthz"}, tc.args(ports)...)
			ld := e2eStart(t, "lameduck run", lameduck, args...)

			// Every copy up, and the first one registered. Another process's
			// output and the process table give no event to wait on: poll.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			up := time.NewTimer(supWait)
			defer up.Stop()
			var pgids []int
			for {
				pgids = pgids[:0]
				for _, m := range childListening.FindAllStringSubmatch(ld.stdout.String(), -1) {
					pid, _ := strconv.Atoi(m[2])
					pgids = append(pgids, pid)
				}
				if len(pgids) >= tc.copies && strings.Contains(ld.stderr.String(), "lameduck run: registered") {
					break
				}
				select {
				case <-tick.C:
				case <-ld.done:
					t.Fatalf("lameduck run exited (%s) before %d copies were listening and registered\n%s", ld.describe(), tc.copies, ld.output())
				case <-up.C:
					t.Fatalf("want %d copies listening and registered within %v, got pids %v\n%s", tc.copies, supWait, pgids, ld.output())
				}
			}
			members := 0
			for _, g := range pgids {
				members += len(groupMembers(g))
			}

			killed := time.Now()
			if err := ld.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatalf("SIGKILL lameduck run: %v", err)
			}
			if !ld.wait(10 * time.Second) {
				t.Fatalf("lameduck run still alive 10s after SIGKILL")
			}
			// A dead process stays a zombie until its new parent (init, here)
			// reaps it; kill(-pgid, 0) fails with ESRCH only after that.
			// "dead" is when no member is left alive, "gone" when ESRCH.
			const bound = 15 * time.Second
			limit := time.NewTimer(bound)
			defer limit.Stop()
			var dead, gone time.Duration
			for {
				alive, present := 0, 0
				left := map[int]map[int]string{}
				for _, g := range pgids {
					left[g] = groupMembers(g)
					for _, st := range left[g] {
						present++
						if st != "Z" {
							alive++
						}
					}
				}
				if alive == 0 && dead == 0 {
					dead = time.Since(killed)
				}
				if !slices.ContainsFunc(pgids, func(g int) bool { return !groupGone(g) }) {
					gone = time.Since(killed)
					break
				}
				select {
				case <-tick.C:
				case <-limit.C:
					for _, g := range pgids {
						_ = syscall.Kill(-g, syscall.SIGKILL) // leave nothing behind
					}
					t.Fatalf("%v after SIGKILL of lameduck run: want every child process group gone (kill(-pgid, 0) = ESRCH), "+
						"got members (pgid: pid: state) %v, %d alive of %d; only the group leader has a parent-death signal, "+
						"so a process it forked outlives a supervisor that cannot sweep the group", bound, left, alive, present)
				}
			}
			t.Logf("%d process groups (%d processes) after SIGKILL of lameduck run: no member alive after %dms, all reaped (ESRCH) after %dms",
				len(pgids), members, dead.Milliseconds(), gone.Milliseconds())
		})
	}
}

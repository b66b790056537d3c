package supervisor

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/promtest"
	"github.com/lameduck/lameduck/pkg/admin"
)

// scrapeTimeout bounds each scrape; these tests run on every OS, without
// the Linux-only harness and its wait.
const scrapeTimeout = 5 * time.Second

func newMetrics(t *testing.T, programs ...string) (*Metrics, *httptest.Server) {
	t.Helper()
	m, err := NewMetrics(programs...)
	if err != nil {
		t.Fatalf("NewMetrics: want metrics, got error %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return m, srv
}

// Every series exists, with its type, before any event, for the programs
// named up front.
func TestMetricsTypes(t *testing.T) {
	t.Parallel()
	_, srv := newMetrics(t, "web", "worker")
	text := promtest.Scrape(t, srv.URL, scrapeTimeout)
	for name, typ := range map[string]string{
		MetricRestarts:          "counter",
		MetricPromotions:        "counter",
		MetricGaveUp:            "counter",
		MetricExits:             "counter",
		MetricChildren:          "gauge",
		admin.MetricForcedStops: "counter",
	} {
		if want := "# TYPE " + name + " " + typ + "\n"; !strings.Contains(text, want) {
			t.Errorf("exposition: want %q, got:\n%s", want, text)
		}
	}
	promtest.WantSamples(t, text, "at start", map[string]float64{
		`lameduck_supervisor_restarts_total{program="web"}`:                  0,
		`lameduck_supervisor_promotions_total{program="worker"}`:             0,
		`lameduck_supervisor_gave_up_total{program="web"}`:                   0,
		`lameduck_supervisor_exits_total{outcome="failed",program="web"}`:    0,
		`lameduck_supervisor_children{program="web",role="active"}`:          0,
		`lameduck_supervisor_children{program="worker",role="standby"}`:      0,
		`lameduck_forced_stops_total{cause="forced",program="worker"}`:       0,
		`lameduck_supervisor_children{program="worker",role="starting"}`:     0,
		`lameduck_supervisor_exits_total{outcome="clean",program="worker"}`:  0,
		`lameduck_supervisor_exits_total{outcome="killed",program="worker"}`: 0,
	})
	if strings.Contains(text, "go_goroutines") {
		t.Errorf("exposition: want only lameduck's metrics on a private registry, got Go runtime metrics")
	}
}

// A warm standby's life: two copies start, one is registered, it crashes,
// the standby is promoted, the crashed one comes back, the new active is
// recycled, and the end of Run is forced.
func TestMetricsLifecycle(t *testing.T) {
	t.Parallel()
	m, srv := newMetrics(t, "web")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := func(kind EventKind, port, pid int) Event {
		return Event{Kind: kind, Name: "web", Port: port, PID: pid, Time: t0}
	}
	m.Observe(ev(EventStarted, 8080, 10))
	m.Observe(ev(EventStarted, 8081, 11))
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "started", map[string]float64{
		`lameduck_supervisor_children{program="web",role="starting"}`: 2,
		`lameduck_supervisor_children{program="web",role="active"}`:   0,
	})
	m.Observe(ev(EventReady, 8080, 10))
	m.Observe(ev(EventReady, 8081, 11))
	m.Observe(ev(EventRegistered, 8080, 10))
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "registered", map[string]float64{
		`lameduck_supervisor_children{program="web",role="starting"}`: 0,
		`lameduck_supervisor_children{program="web",role="active"}`:   1,
		`lameduck_supervisor_children{program="web",role="standby"}`:  1,
	})

	crash := ev(EventExited, 8080, 10)
	crash.Code, crash.Signal, crash.Err = -1, syscall.SIGSEGV, errors.New("killed")
	m.Observe(crash)
	m.Observe(ev(EventDeregistered, 8080, 10))
	m.Observe(ev(EventPromoted, 8081, 11))
	m.Observe(ev(EventStarted, 8080, 12))
	m.Observe(ev(EventRestarted, 8080, 12))
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "promoted", map[string]float64{
		`lameduck_supervisor_exits_total{outcome="killed",program="web"}`: 1,
		`lameduck_supervisor_promotions_total{program="web"}`:             1,
		`lameduck_supervisor_restarts_total{program="web"}`:               1,
		`lameduck_supervisor_children{program="web",role="active"}`:       1,
		`lameduck_supervisor_children{program="web",role="starting"}`:     1,
	})

	// The active copy on 8081 passes a limit; 8080 replaces it.
	rec := ev(EventRecycling, 8081, 11)
	rec.Err = fmt.Errorf("%w: age 24h passed 24h0m0s", ErrRecycleAge)
	m.Observe(rec)
	m.Observe(ev(EventReady, 8080, 12))
	m.Observe(ev(EventPromoted, 8080, 12))
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "recycling", map[string]float64{
		`lameduck_supervisor_recycles_total{program="web",reason="age"}`: 1,
		`lameduck_supervisor_children{program="web",role="active"}`:      1,
		`lameduck_supervisor_children{program="web",role="retiring"}`:    1,
		`lameduck_supervisor_promotions_total{program="web"}`:            2,
	})
	phase := func(p drain.Phase, at time.Duration) Event {
		e := ev(EventDrain, 8081, 11)
		e.Drain = &drain.Event{Kind: drain.EventPhase, Phase: p, Time: t0.Add(at)}
		return e
	}
	m.Observe(phase(drain.Deregistering, 0))
	confirmed := ev(EventDrain, 8081, 11)
	confirmed.Drain = &drain.Event{Kind: drain.EventConfirmed, Registry: "consul", Latency: 10 * time.Millisecond}
	m.Observe(confirmed)
	m.Observe(phase(drain.Confirming, 500*time.Millisecond))
	m.Observe(phase(drain.Draining, 2*time.Second))
	m.Observe(phase(drain.Draining, 3*time.Second)) // not forward: ignored
	m.Observe(phase(drain.Stopping, 5*time.Second))
	m.Observe(phase(drain.Offline, 6*time.Second))
	m.Observe(ev(EventExited, 8081, 11)) // by our SIGTERM: clean
	m.Observe(ev(EventRecycled, 8081, 11))
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "recycled", map[string]float64{
		`lameduck_phase_duration_seconds_sum{phase="Deregistering",program="web"}`:         0.5,
		`lameduck_phase_duration_seconds_sum{phase="Confirming",program="web"}`:            1.5,
		`lameduck_phase_duration_seconds_sum{phase="Draining",program="web"}`:              3,
		`lameduck_phase_duration_seconds_count{phase="Draining",program="web"}`:            1,
		`lameduck_phase_duration_seconds_sum{phase="Stopping",program="web"}`:              1,
		`lameduck_registry_confirm_latency_seconds_sum{program="web",registry="consul"}`:   0.01,
		`lameduck_registry_confirm_latency_seconds_count{program="web",registry="consul"}`: 1,
		`lameduck_supervisor_exits_total{outcome="clean",program="web"}`:                   1,
		`lameduck_supervisor_children{program="web",role="retiring"}`:                      0,
		`lameduck_supervisor_children{program="web",role="active"}`:                        1,
	})

	m.ObserveResult("web", &drain.PhaseError{Phase: drain.Stopping, Err: drain.ErrForced})
	m.ObserveResult("web", nil)
	failed := ev(EventExited, 8080, 12)
	failed.Code, failed.Err = 3, errors.New("exited")
	m.Observe(failed)
	m.Observe(Event{Kind: EventGaveUp, Name: "web"})
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "end", map[string]float64{
		`lameduck_forced_stops_total{cause="forced",program="web"}`:       1,
		`lameduck_forced_stops_total{cause="deadline",program="web"}`:     0,
		`lameduck_supervisor_exits_total{outcome="failed",program="web"}`: 1,
		`lameduck_supervisor_gave_up_total{program="web"}`:                1,
		`lameduck_supervisor_children{program="web",role="active"}`:       0,
	})
}

// A program not named up front gets its series with its first event, and a
// nil *Metrics ignores everything.
func TestMetricsLateProgramAndNil(t *testing.T) {
	t.Parallel()
	m, srv := newMetrics(t)
	m.Observe(Event{Kind: EventStarted, Name: "late", Port: 9000, PID: 5})
	promtest.WantSamples(t, promtest.Scrape(t, srv.URL, scrapeTimeout), "late", map[string]float64{
		`lameduck_supervisor_children{program="late",role="starting"}`: 1,
	})
	var none *Metrics
	none.Observe(Event{Kind: EventRestarted, Name: "x"})
	none.ObserveResult("x", drain.ErrForced)
}

package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/promtest"
)

// fakeController is a Controller whose status the test sets by hand and
// whose WaitPhase is a function the test chooses.
type fakeController struct {
	mu     sync.Mutex
	status drain.Status
	// waitPhase, when set, answers WaitPhase; otherwise it waits for ctx.
	waitPhase func(ctx context.Context, p drain.Phase) error
}

func (f *fakeController) Status() drain.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.status
	s.Registries = append([]drain.RegistryStatus(nil), s.Registries...)
	return s
}

func (f *fakeController) set(change func(s *drain.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.status)
}

func (f *fakeController) Start() {}

func (f *fakeController) WaitPhase(ctx context.Context, p drain.Phase) error {
	if f.waitPhase != nil {
		return f.waitPhase(ctx, p)
	}
	<-ctx.Done()
	return ctx.Err()
}

func newMetrics(t *testing.T, src StatusSource) *Metrics {
	t.Helper()
	m, err := NewMetrics(src)
	if err != nil {
		t.Fatalf("NewMetrics: want metrics, got error %v", err)
	}
	return m
}

// serve starts an admin endpoint for c on 127.0.0.1.
func serve(t *testing.T, c Controller, opts ...Option) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(newHandler(t, c, opts...))
	t.Cleanup(srv.Close)
	return srv
}

// scrape GETs /metrics over HTTP and returns the text exposition.
func scrape(t *testing.T, base string) string {
	t.Helper()
	return promtest.Scrape(t, base, wait)
}

func TestNewMetricsNil(t *testing.T) {
	t.Parallel()
	if m, err := NewMetrics(nil); err == nil || m != nil || !strings.HasPrefix(err.Error(), "admin: ") {
		t.Errorf("NewMetrics(nil): want an admin: error and no metrics, got %v, %v", m, err)
	}
}

// TestMetricsTypes: every metric is exposed, with the documented type,
// before anything has happened (the confirmation latency once per
// registry the coordinator has).
func TestMetricsTypes(t *testing.T) {
	t.Parallel()
	f := &fakeController{status: drain.Status{Registries: []drain.RegistryStatus{{Name: "consul"}}}}
	srv := serve(t, f, WithMetrics(newMetrics(t, f)))
	text := scrape(t, srv.URL)
	for name, typ := range map[string]string{
		MetricInFlight:       "gauge",
		MetricLongLived:      "gauge",
		MetricPhase:          "gauge",
		MetricPhaseDuration:  "histogram",
		MetricLateRequests:   "counter",
		MetricForcedStops:    "counter",
		MetricConfirmLatency: "histogram",
	} {
		if want := "# TYPE " + name + " " + typ + "\n"; !strings.Contains(text, want) {
			t.Errorf("exposition: want %q, got:\n%s", want, text)
		}
	}
	if !strings.Contains(text, "0 Serving, 1 Deregistering, 2 Confirming, 3 Draining, 4 Stopping, 5 Offline") {
		t.Errorf("%s help: want the phase legend, got:\n%s", MetricPhase, text)
	}
	if strings.Contains(text, "go_goroutines") {
		t.Errorf("exposition: want only lameduck's metrics on a private registry, got Go runtime metrics")
	}
}

// TestMetricsScrape: the values a scrape shows follow the tracker, the
// events and the results.
func TestMetricsScrape(t *testing.T) {
	t.Parallel()
	f := &fakeController{status: drain.Status{Registries: []drain.RegistryStatus{{Name: "consul"}, {Name: "nacos"}}}}
	m := newMetrics(t, f)
	srv := serve(t, f, WithMetrics(m))

	promtest.WantSamples(t, scrape(t, srv.URL), "at start", map[string]float64{
		`lameduck_in_flight`:           0,
		`lameduck_long_lived`:          0,
		`lameduck_phase`:               0,
		`lameduck_late_requests_total`: 0,
		`lameduck_phase_duration_seconds_count{phase="Deregistering"}`:       0,
		`lameduck_phase_duration_seconds_count{phase="Stopping"}`:            0,
		`lameduck_registry_confirm_latency_seconds_count{registry="consul"}`: 0,
		`lameduck_registry_confirm_latency_seconds_count{registry="nacos"}`:  0,
		`lameduck_forced_stops_total{cause="deadline"}`:                      0,
		`lameduck_forced_stops_total{cause="forced"}`:                        0,
	})

	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	f.set(func(s *drain.Status) { s.Phase, s.InFlight, s.LongLived = drain.Confirming, 3, 1 })
	m.Observe(drain.Event{Kind: drain.EventPhase, Phase: drain.Deregistering, Time: t0})
	m.Observe(drain.Event{Kind: drain.EventDeregistered, Registry: "consul", Time: t0})
	m.Observe(drain.Event{Kind: drain.EventPhase, Phase: drain.Confirming, Time: t0.Add(1500 * time.Millisecond)})
	m.Observe(drain.Event{Kind: drain.EventConfirmed, Registry: "consul", Latency: 250 * time.Millisecond})
	promtest.WantSamples(t, scrape(t, srv.URL), "confirming", map[string]float64{
		`lameduck_in_flight`:  3,
		`lameduck_long_lived`: 1,
		`lameduck_phase`:      2,
		`lameduck_phase_duration_seconds_count{phase="Deregistering"}`:                  1,
		`lameduck_phase_duration_seconds_sum{phase="Deregistering"}`:                    1.5,
		`lameduck_phase_duration_seconds_bucket{phase="Deregistering",le="1"}`:          0,
		`lameduck_phase_duration_seconds_bucket{phase="Deregistering",le="2.5"}`:        1,
		`lameduck_phase_duration_seconds_count{phase="Confirming"}`:                     0,
		`lameduck_registry_confirm_latency_seconds_count{registry="consul"}`:            1,
		`lameduck_registry_confirm_latency_seconds_sum{registry="consul"}`:              0.25,
		`lameduck_registry_confirm_latency_seconds_bucket{registry="consul",le="0.1"}`:  0,
		`lameduck_registry_confirm_latency_seconds_bucket{registry="consul",le="0.25"}`: 1,
		`lameduck_registry_confirm_latency_seconds_count{registry="nacos"}`:             0,
	})

	f.set(func(s *drain.Status) { s.Phase, s.InFlight, s.LongLived, s.Late = drain.Offline, 0, 0, 2 })
	for k, p := range []drain.Phase{drain.Draining, drain.Stopping, drain.Offline} {
		m.Observe(drain.Event{Kind: drain.EventPhase, Phase: p, Time: t0.Add(time.Duration(2+k) * time.Second)})
	}
	// Neither a repeat nor a step back counts.
	m.Observe(drain.Event{Kind: drain.EventPhase, Phase: drain.Offline, Time: t0.Add(time.Hour)})
	m.Observe(drain.Event{Kind: drain.EventPhase, Phase: drain.Draining, Time: t0.Add(time.Hour)})
	m.ObserveResult(nil)
	m.ObserveResult(context.Canceled)
	m.ObserveResult(errors.New("drain: stop hook \"http\": boom"))
	m.ObserveResult(errors.Join(errors.New("registry: consul: down"), &drain.PhaseError{Phase: drain.Draining, Err: drain.ErrDeadline}))
	m.ObserveResult(fmt.Errorf("run: %w", &drain.PhaseError{Phase: drain.Stopping, Err: drain.ErrForced}))
	// Forced wins when a run was both late and forced.
	m.ObserveResult(errors.Join(&drain.PhaseError{Phase: drain.Confirming, Err: drain.ErrDeadline}, &drain.PhaseError{Phase: drain.Draining, Err: drain.ErrForced}))
	promtest.WantSamples(t, scrape(t, srv.URL), "offline", map[string]float64{
		`lameduck_in_flight`:           0,
		`lameduck_phase`:               5,
		`lameduck_late_requests_total`: 2,
		`lameduck_phase_duration_seconds_count{phase="Confirming"}`: 1,
		`lameduck_phase_duration_seconds_sum{phase="Confirming"}`:   0.5,
		`lameduck_phase_duration_seconds_count{phase="Draining"}`:   1,
		`lameduck_phase_duration_seconds_sum{phase="Draining"}`:     1,
		`lameduck_phase_duration_seconds_count{phase="Stopping"}`:   1,
		`lameduck_forced_stops_total{cause="deadline"}`:             1,
		`lameduck_forced_stops_total{cause="forced"}`:               2,
	})
	if text := scrape(t, srv.URL); strings.Contains(text, `phase="Serving"`) || strings.Contains(text, `phase="Offline"`) {
		t.Errorf("%s: want no Serving or Offline series (neither ends within a run), got:\n%s", MetricPhaseDuration, text)
	}
}

// TestMetricsCoordinator wires Metrics into a real coordinator the way an
// app does and drains it.
func TestMetricsCoordinator(t *testing.T) {
	t.Parallel()
	var m *Metrics // set before the protocol starts; the hook reads it after
	c, err := drain.New(&drain.Tracker{},
		drain.WithBudget(10*time.Second),
		drain.WithQuietWindow(time.Millisecond),
		drain.WithEventHook(func(e drain.Event) { m.Observe(e) }),
	)
	if err != nil {
		t.Fatalf("drain.New: %v", err)
	}
	m = newMetrics(t, c)
	srv := serve(t, c, WithMetrics(m))

	req := c.Tracker().Begin()
	long := c.Tracker().BeginLongLived()
	promtest.WantSamples(t, scrape(t, srv.URL), "serving", map[string]float64{
		`lameduck_in_flight`:  1,
		`lameduck_long_lived`: 1,
		`lameduck_phase`:      0,
	})
	if err := req.End(); err != nil {
		t.Fatalf("End: %v", err)
	}
	if err := long.End(); err != nil {
		t.Fatalf("End long-lived: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	_, err = c.Offline(ctx)
	m.ObserveResult(err)
	if err != nil {
		t.Fatalf("Offline: want a clean offline, got %v", err)
	}
	late := c.Tracker().Begin() // after the flag: counted as late
	if err := late.End(); err != nil {
		t.Fatalf("End late: %v", err)
	}
	want := map[string]float64{
		`lameduck_in_flight`:                            0,
		`lameduck_long_lived`:                           0,
		`lameduck_phase`:                                float64(drain.Offline),
		`lameduck_late_requests_total`:                  1,
		`lameduck_forced_stops_total{cause="deadline"}`: 0,
		`lameduck_forced_stops_total{cause="forced"}`:   0,
	}
	for p := drain.Deregistering; p < drain.Offline; p++ {
		want[`lameduck_phase_duration_seconds_count{phase="`+p.String()+`"}`] = 1
	}
	promtest.WantSamples(t, scrape(t, srv.URL), "offline", want)
}

// TestMetricsConcurrent: Observe, ObserveResult and scrapes from many
// goroutines at once (run with -race).
func TestMetricsConcurrent(t *testing.T) {
	t.Parallel()
	f := &fakeController{}
	m := newMetrics(t, f)
	srv := serve(t, f, WithMetrics(m))
	const workers, each = 4, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := range each {
				m.Observe(drain.Event{Kind: drain.EventConfirmed, Registry: fmt.Sprint("r", w), Latency: time.Millisecond})
				m.Observe(drain.Event{Kind: drain.EventPhase, Phase: drain.Phase(k%int(drain.Offline)) + 1, Time: time.Unix(int64(k), 0)})
				m.ObserveResult(&drain.PhaseError{Err: drain.ErrDeadline})
			}
		})
	}
	wg.Go(func() {
		// Not scrape: t.Fatal must not run outside the test's goroutine.
		for range 5 {
			resp, err := srv.Client().Get(srv.URL + "/metrics")
			if err != nil {
				t.Errorf("GET /metrics during observations: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET /metrics during observations: want 200, got %d", resp.StatusCode)
			}
		}
	})
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("concurrent observers: want them done within %v, got still running", wait)
	}
	text := scrape(t, srv.URL)
	for w := range workers {
		series := fmt.Sprintf(`lameduck_registry_confirm_latency_seconds_count{registry="r%d"}`, w)
		if got := promtest.Sample(t, text, series); got != each {
			t.Errorf("%s: want %d, got %v", series, each, got)
		}
	}
	if got := promtest.Sample(t, text, `lameduck_forced_stops_total{cause="deadline"}`); got != workers*each {
		t.Errorf("forced stops: want %d, got %v", workers*each, got)
	}
	var ended float64
	for p := drain.Deregistering; p < drain.Offline; p++ {
		ended += promtest.Sample(t, text, `lameduck_phase_duration_seconds_count{phase="`+p.String()+`"}`)
	}
	// Phases only move forward, so at most four of them can end.
	if ended < 1 || ended > 4 {
		t.Errorf("phase durations observed: want 1 to 4, got %v", ended)
	}
}

func TestMetricsNil(t *testing.T) {
	t.Parallel()
	var m *Metrics
	m.Observe(drain.Event{Kind: drain.EventPhase, Phase: drain.Draining})
	m.ObserveResult(drain.ErrForced)
	c, _ := newCoordinator(t)
	h := newHandler(t, c, WithMetrics(nil))
	if rec := do(t, h, http.MethodGet, "/metrics", nil); rec.Code != http.StatusNotFound {
		t.Errorf("GET /metrics with WithMetrics(nil): want 404, got %d", rec.Code)
	}
}

// BenchmarkObserve measures the event hook's cost per event, against a
// hook that does nothing.
func BenchmarkObserve(b *testing.B) {
	m, err := NewMetrics(&fakeController{})
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Unix(0, 0)
	phase := func(k int) drain.Event {
		return drain.Event{Kind: drain.EventPhase, Phase: drain.Confirming, Time: t0.Add(time.Duration(k))}
	}
	b.Run("baseline-noop", func(b *testing.B) {
		hook := func(drain.Event) {}
		for k := 0; b.Loop(); k++ {
			hook(phase(k))
		}
	})
	b.Run("phase", func(b *testing.B) {
		b.ReportAllocs()
		for k := 0; b.Loop(); k++ {
			// Phases only move forward: reset so that every event counts.
			m.mu.Lock()
			m.seen, m.lastPhase = true, drain.Deregistering
			m.mu.Unlock()
			m.Observe(phase(k))
		}
	})
	b.Run("confirmed", func(b *testing.B) {
		b.ReportAllocs()
		e := drain.Event{Kind: drain.EventConfirmed, Registry: "consul", Latency: time.Millisecond}
		for b.Loop() {
			m.Observe(e)
		}
	})
	b.Run("other", func(b *testing.B) {
		b.ReportAllocs()
		e := drain.Event{Kind: drain.EventRetry, Registry: "consul"}
		for b.Loop() {
			m.Observe(e)
		}
	})
}

// TestMetricsLateConsumersBounded: 10,000 distinct late consumers make at
// most drain.TopConsumers+1 series per consumer metric, "other" summing
// the rest, and a consumer named "other" does not collide with it.
func TestMetricsLateConsumersBounded(t *testing.T) {
	t.Parallel()
	var cs drain.Consumers
	t0 := time.Unix(1000, 0)
	cs.Start(t0)
	cs.Confirmed(t0)
	cs.Saw("other", t0.Add(time.Second))
	cs.Saw("other", t0.Add(time.Second))
	for i := range 10000 {
		cs.Saw(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), t0.Add(time.Millisecond))
	}
	late := cs.Late(drain.TopConsumers)
	c := &fakeController{status: drain.Status{Phase: drain.Draining, Consumers: &late}}
	srv := serve(t, c, WithMetrics(newMetrics(t, c)))
	body := scrape(t, srv.URL)
	var series, sum int
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, MetricLateConsumer+"{") {
			continue
		}
		series++
		var n int
		if _, err := fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%d", &n); err != nil {
			t.Fatalf("series %q: %v", line, err)
		}
		sum += n
	}
	if series != drain.TopConsumers+1 {
		t.Errorf("%s series: want %d, got %d\n%s", MetricLateConsumer, drain.TopConsumers+1, series, body)
	}
	if sum != 10002 {
		t.Errorf("late requests summed over the series: want 10002, got %d", sum)
	}
	if !strings.Contains(body, `consumer="id:other"} 2`) || !strings.Contains(body, `consumer="other"}`) {
		t.Errorf("want the consumer named other apart from the aggregate, got\n%s", body)
	}
}

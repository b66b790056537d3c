package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lameduck/lameduck/drain"
)

// Metric names, for dashboards and alerts.
const (
	MetricInFlight       = "lameduck_in_flight"
	MetricLongLived      = "lameduck_long_lived"
	MetricPhase          = "lameduck_phase"
	MetricPhaseDuration  = "lameduck_phase_duration_seconds"
	MetricLateRequests   = "lameduck_late_requests_total"
	MetricForcedStops    = "lameduck_forced_stops_total"
	MetricConfirmLatency = "lameduck_registry_confirm_latency_seconds"
	MetricLateConsumer   = "lameduck_late_consumer_requests"
	MetricConsumerLag    = "lameduck_late_consumer_lag_seconds"
)

// OtherConsumers is the consumer label of the series that aggregates the
// late consumers beyond the top drain.TopConsumers.
const OtherConsumers = "other"

// DurationBuckets are the histogram buckets, in seconds, of phase durations
// and confirmation latencies, here and in the supervisor's metrics: from a
// registry push (milliseconds) to a long budget (minutes). Do not modify
// it.
var DurationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120}

var (
	inFlightDesc = prometheus.NewDesc(MetricInFlight,
		"Ordinary requests in flight, read from the tracker at scrape time.", nil, nil)
	longLivedDesc = prometheus.NewDesc(MetricLongLived,
		"Long-lived requests (streams, WebSockets) in flight, read from the tracker at scrape time.", nil, nil)
	phaseDesc = prometheus.NewDesc(MetricPhase,
		"Offline protocol phase, which only moves forward: "+phaseLegend()+".", nil, nil)
	lateDesc = prometheus.NewDesc(MetricLateRequests,
		"Requests begun after the draining flag was set: traffic that still reached the instance after it left the registries.", nil, nil)
	lateConsumerDesc = prometheus.NewDesc(MetricLateConsumer,
		"Requests a consumer sent after the draining flag was set, for the top consumers by count and one \"other\" series for the rest.", []string{"consumer"}, nil)
	consumerLagDesc = prometheus.NewDesc(MetricConsumerLag,
		"How long after the draining flag a consumer kept sending, for the top consumers by count and one \"other\" series for the rest.", []string{"consumer"}, nil)
)

// phaseLegend lists the phases with their numbers: "0 Serving, 1 ...".
func phaseLegend() string {
	var b strings.Builder
	for p := drain.Serving; p <= drain.Offline; p++ {
		if p > drain.Serving {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", int(p), p)
	}
	return b.String()
}

// StatusSource gives a snapshot of a coordinator; *drain.Coordinator
// implements it.
type StatusSource interface {
	Status() drain.Status
}

// Metrics exposes one coordinator's offline protocol to Prometheus, on a
// registry of its own (never the global default). Mount it on the admin
// endpoint with WithMetrics; it is also a prometheus.Collector, so an
// application that serves its own metrics may register it there as well.
//
// Series:
//
//	lameduck_in_flight                         gauge      tracker, at scrape time
//	lameduck_long_lived                        gauge      tracker, at scrape time
//	lameduck_phase                             gauge      phase number (0 Serving ... 5 Offline), at scrape time
//	lameduck_late_requests_total               counter    tracker's Late, at scrape time
//	lameduck_phase_duration_seconds{phase}     histogram  time spent in each phase that ended (from Observe)
//	lameduck_registry_confirm_latency_seconds{registry}
//	                                           histogram  deregistration to confirmation (from Observe)
//	lameduck_forced_stops_total{cause}         counter    runs cut short, cause "deadline" or "forced" (from ObserveResult)
//	lameduck_late_consumer_requests{consumer}  gauge      late requests per consumer, at scrape time, once Draining
//	lameduck_late_consumer_lag_seconds{consumer}
//	                                           gauge      how long after the flag each kept sending
//
// The consumer label is bounded: the top drain.TopConsumers consumers by
// late requests, and "other" for the rest, whatever number of addresses
// called.
//
// The phase is one unlabelled gauge holding the phase's number rather than
// a series per phase: phases are ordered, so `lameduck_phase >= 3` reads
// "draining or later", and the number never leaves a stale series behind.
//
// A Metrics is safe for concurrent use. Observe and ObserveResult do
// nothing on a nil *Metrics, so code may call them whether or not metrics
// are wanted.
type Metrics struct {
	src     StatusSource
	reg     *prometheus.Registry
	handler http.Handler

	phaseDur   *prometheus.HistogramVec
	phaseObs   [drain.Offline + 1]prometheus.Observer // phaseDur by phase, looked up once
	confirmLat *prometheus.HistogramVec
	forced     *prometheus.CounterVec
	byDeadline prometheus.Counter
	byForce    prometheus.Counter

	mu        sync.Mutex
	seen      bool        // an EventPhase has been observed
	lastPhase drain.Phase // the phase the last EventPhase entered
	lastAt    time.Time   // and when
}

var _ prometheus.Collector = (*Metrics)(nil)

// NewMetrics returns metrics for the coordinator src (usually a
// *drain.Coordinator; its Status is read at every scrape). The gauges and
// the late counter need nothing more; the histograms need Observe wired
// into the coordinator's event hook, and the forced-stop counter needs
// ObserveResult called with the protocol's result.
func NewMetrics(src StatusSource) (*Metrics, error) {
	if src == nil {
		return nil, errors.New("admin: NewMetrics needs a status source such as a *drain.Coordinator")
	}
	m := &Metrics{
		src: src,
		reg: prometheus.NewRegistry(),
		phaseDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricPhaseDuration,
			Help:    "Time spent in each phase of the offline protocol, observed when the next phase begins.",
			Buckets: DurationBuckets,
		}, []string{"phase"}),
		confirmLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricConfirmLatency,
			Help:    "Time from deregistering the instance to the registry's watch no longer listing it, per registry.",
			Buckets: DurationBuckets,
		}, []string{"registry"}),
		forced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricForcedStops,
			Help: `Protocol runs cut short: cause="deadline" when the budget ran out, cause="forced" when Force (a second signal) cut it.`,
		}, []string{"cause"}),
	}
	// Create the series up front, so they read 0 before the first drain
	// instead of being absent.
	for p := drain.Deregistering; p < drain.Offline; p++ {
		m.phaseObs[p] = m.phaseDur.WithLabelValues(p.String())
	}
	for _, r := range src.Status().Registries {
		m.confirmLat.WithLabelValues(r.Name)
	}
	m.byDeadline = m.forced.WithLabelValues("deadline")
	m.byForce = m.forced.WithLabelValues("forced")
	if err := m.reg.Register(m); err != nil {
		return nil, fmt.Errorf("admin: registering metrics: %w", err)
	}
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return m, nil
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- inFlightDesc
	ch <- longLivedDesc
	ch <- phaseDesc
	ch <- lateDesc
	ch <- lateConsumerDesc
	ch <- consumerLagDesc
	m.phaseDur.Describe(ch)
	m.confirmLat.Describe(ch)
	m.forced.Describe(ch)
}

// Collect implements prometheus.Collector. It takes one status snapshot,
// so the gauges of one scrape agree with each other.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.src.Status()
	ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(s.InFlight))
	ch <- prometheus.MustNewConstMetric(longLivedDesc, prometheus.GaugeValue, float64(s.LongLived))
	ch <- prometheus.MustNewConstMetric(phaseDesc, prometheus.GaugeValue, float64(s.Phase))
	ch <- prometheus.MustNewConstMetric(lateDesc, prometheus.CounterValue, float64(s.Late))
	if s.Consumers != nil {
		emit := func(id string, c drain.ConsumerStat) {
			ch <- prometheus.MustNewConstMetric(lateConsumerDesc, prometheus.GaugeValue, float64(c.After), id)
			ch <- prometheus.MustNewConstMetric(consumerLagDesc, prometheus.GaugeValue, c.Lag.Seconds(), id)
		}
		for _, c := range s.Consumers.Top {
			id := c.ID
			if id == OtherConsumers { // a consumer that calls itself "other" must not collide
				id = "id:" + id
			}
			emit(id, c)
		}
		if o := s.Consumers.Others; o != nil {
			emit(OtherConsumers, *o)
		}
	}
	m.phaseDur.Collect(ch)
	m.confirmLat.Collect(ch)
	m.forced.Collect(ch)
}

// Observe records e. Call it from the coordinator's event hook
// (drain.WithEventHook): it does not block beyond a short lock, allocates
// nothing for phase events, and is safe for concurrent use.
//
// An EventPhase observes the time spent in the phase it ends, measured
// between the two events' Time; the first one (leaving Serving) observes
// nothing, as Serving's length is the process's uptime. An EventPhase that
// does not move forward is ignored. An EventConfirmed observes its Latency
// under its Registry. Other kinds are ignored.
func (m *Metrics) Observe(e drain.Event) {
	if m == nil {
		return
	}
	switch e.Kind {
	case drain.EventPhase:
		m.mu.Lock()
		if m.seen && e.Phase <= m.lastPhase {
			m.mu.Unlock()
			return
		}
		prev, at, seen := m.lastPhase, m.lastAt, m.seen
		m.seen, m.lastPhase, m.lastAt = true, e.Phase, e.Time
		m.mu.Unlock()
		if seen && prev >= 0 && prev < drain.Offline && m.phaseObs[prev] != nil {
			m.phaseObs[prev].Observe(max(e.Time.Sub(at), 0).Seconds())
		}
	case drain.EventConfirmed:
		m.confirmLat.WithLabelValues(e.Registry).Observe(max(e.Latency, 0).Seconds())
	}
}

// ObserveResult records how a run of the protocol ended, given the error
// from (*drain.Coordinator).Wait or Offline. Call it once per run. An error
// wrapping drain.ErrForced counts as cause "forced", else one wrapping
// drain.ErrDeadline as cause "deadline"; anything else (nil, a registry or
// stop hook error, a caller's ctx ending) counts nothing.
func (m *Metrics) ObserveResult(err error) {
	if m == nil {
		return
	}
	switch {
	case errors.Is(err, drain.ErrForced):
		m.byForce.Inc()
	case errors.Is(err, drain.ErrDeadline):
		m.byDeadline.Inc()
	}
}

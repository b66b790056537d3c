package supervisor

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
)

// Metric names of Metrics, for dashboards and alerts. The offline
// protocol's histograms and forced-stop counter keep admin.Metrics' names
// (admin.MetricPhaseDuration, admin.MetricConfirmLatency,
// admin.MetricForcedStops), with a program label added.
const (
	MetricRestarts   = "lameduck_supervisor_restarts_total"
	MetricPromotions = "lameduck_supervisor_promotions_total"
	MetricRecycles   = "lameduck_supervisor_recycles_total"
	MetricGaveUp     = "lameduck_supervisor_gave_up_total"
	MetricExits      = "lameduck_supervisor_exits_total"
	MetricChildren   = "lameduck_supervisor_children"
)

// Roles of lameduck_supervisor_children, and outcomes of
// lameduck_supervisor_exits_total.
const (
	ChildStarting = "starting" // started, readiness not passed yet
	ChildActive   = "active"   // the copy registered for consumers
	ChildStandby  = "standby"  // ready and not registered: a warm standby, or a recycle's replacement about to be promoted
	ChildRetiring = "retiring" // replaced by a promotion; being taken offline

	OutcomeClean  = "clean"  // not a failure: exit 0, or the end of an offline
	OutcomeFailed = "failed" // a non-zero exit code
	OutcomeKilled = "killed" // killed by a signal that counts as a failure (a crash, failed liveness)
)

var childRoles = []string{ChildStarting, ChildActive, ChildStandby, ChildRetiring}

var childrenDesc = prometheus.NewDesc(MetricChildren,
	"Child processes running, per program and role (starting, active, standby, retiring); computed from the supervisor's events at scrape time.",
	[]string{"program", "role"}, nil)

// Metrics exposes supervisors (`lameduck run`'s) to Prometheus, on a
// registry of its own (never the global default). One Metrics serves every
// program of a host: series carry a program label, the supervisor's
// Spec.Name (Event.Name).
//
// Series:
//
//	lameduck_supervisor_restarts_total{program}          counter    copies restarted after a failure (EventRestarted)
//	lameduck_supervisor_promotions_total{program}        counter    standbys registered in place of the active copy (EventPromoted)
//	lameduck_supervisor_recycles_total{program,reason}   counter    copies past a recycle limit (EventRecycling); reason "age" or "memory"
//	lameduck_supervisor_gave_up_total{program}           counter    restart-intensity limit passed (EventGaveUp)
//	lameduck_supervisor_exits_total{program,outcome}     counter    child exits: clean, failed, killed (EventExited)
//	lameduck_supervisor_children{program,role}           gauge      running copies by role, at scrape time
//	lameduck_phase_duration_seconds{program,phase}       histogram  offline protocol phases of the supervisor's offlines
//	lameduck_registry_confirm_latency_seconds{program,registry}
//	                                                     histogram  deregistration to confirmation
//	lameduck_forced_stops_total{program,cause}           counter    offlines cut short: "deadline" or "forced"
//
// Feed it with Observe from every supervisor's event hook, and
// ObserveResult with each Run's error. It is safe for concurrent use, and
// its methods do nothing on a nil *Metrics.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	restarts   *prometheus.CounterVec
	promotions *prometheus.CounterVec
	recycles   *prometheus.CounterVec
	gaveUp     *prometheus.CounterVec
	exits      *prometheus.CounterVec
	phaseDur   *prometheus.HistogramVec
	confirmLat *prometheus.HistogramVec
	forced     *prometheus.CounterVec

	mu       sync.Mutex
	programs map[string]*programState
}

// programState is what the children gauge and the phase histograms need
// to remember of one program.
type programState struct {
	copies map[int]*copyState // by port
	active int                // port of the registered copy; 0 when none
}

type copyState struct {
	pid      int
	ready    bool
	retiring bool
	// offline protocol of this copy
	inDrain   bool
	lastPhase drain.Phase
	lastAt    time.Time
}

var _ prometheus.Collector = (*Metrics)(nil)

// NewMetrics returns metrics for supervisors. The programs named
// get their series at 0 from the start, so rates and alerts work before
// the first event; others appear with their first event.
func NewMetrics(programs ...string) (*Metrics, error) {
	byProgram := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"program"})
	}
	m := &Metrics{
		reg:        prometheus.NewRegistry(),
		restarts:   byProgram(MetricRestarts, "Copies of the program restarted after a failure."),
		promotions: byProgram(MetricPromotions, "Warm standbys (or recycle replacements) registered in place of the active copy."),
		gaveUp:     byProgram(MetricGaveUp, "Times the supervisor gave up restarting the program: its restart-intensity limit was passed."),
		recycles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRecycles,
			Help: "Copies of the program that passed their age or memory limit and were replaced.",
		}, []string{"program", "reason"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricExits,
			Help: `Child process exits: outcome="clean" (exit 0 or the end of an offline), "failed" (non-zero code), "killed" (a signal that counts as a failure).`,
		}, []string{"program", "outcome"}),
		phaseDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    admin.MetricPhaseDuration,
			Help:    "Time spent in each phase of the offline protocol the supervisor ran for a copy of the program.",
			Buckets: admin.DurationBuckets,
		}, []string{"program", "phase"}),
		confirmLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    admin.MetricConfirmLatency,
			Help:    "Time from deregistering a copy of the program to the registry's watch no longer listing it, per registry.",
			Buckets: admin.DurationBuckets,
		}, []string{"program", "registry"}),
		forced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: admin.MetricForcedStops,
			Help: `Offlines of the program cut short: cause="deadline" when the budget ran out, cause="forced" when a second signal cut it.`,
		}, []string{"program", "cause"}),
		programs: map[string]*programState{},
	}
	for _, p := range programs {
		m.restarts.WithLabelValues(p)
		m.promotions.WithLabelValues(p)
		m.gaveUp.WithLabelValues(p)
		for _, o := range []string{OutcomeClean, OutcomeFailed, OutcomeKilled} {
			m.exits.WithLabelValues(p, o)
		}
		m.forced.WithLabelValues(p, "deadline")
		m.forced.WithLabelValues(p, "forced")
		m.programs[p] = &programState{copies: map[int]*copyState{}}
	}
	if err := m.reg.Register(m); err != nil {
		return nil, fmt.Errorf("supervisor: registering metrics: %w", err)
	}
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return m, nil
}

// Handler serves the metrics in Prometheus' exposition formats. Mount it at
// GET /metrics; wrap it in admin.RequireToken off loopback.
func (m *Metrics) Handler() http.Handler { return m.handler }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.restarts.Describe(ch)
	m.promotions.Describe(ch)
	m.recycles.Describe(ch)
	m.gaveUp.Describe(ch)
	m.exits.Describe(ch)
	m.phaseDur.Describe(ch)
	m.confirmLat.Describe(ch)
	m.forced.Describe(ch)
	ch <- childrenDesc
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.restarts.Collect(ch)
	m.promotions.Collect(ch)
	m.recycles.Collect(ch)
	m.gaveUp.Collect(ch)
	m.exits.Collect(ch)
	m.phaseDur.Collect(ch)
	m.confirmLat.Collect(ch)
	m.forced.Collect(ch)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, ps := range m.programs {
		counts := map[string]int{}
		for port, c := range ps.copies {
			counts[ps.role(port, c)]++
		}
		for _, r := range childRoles {
			ch <- prometheus.MustNewConstMetric(childrenDesc, prometheus.GaugeValue, float64(counts[r]), name, r)
		}
	}
}

func (ps *programState) role(port int, c *copyState) string {
	switch {
	case c.retiring:
		return ChildRetiring
	case port == ps.active:
		return ChildActive
	case c.ready:
		return ChildStandby
	}
	return ChildStarting
}

// program returns the state of name, creating it. m.mu must be held.
func (m *Metrics) program(name string) *programState {
	ps := m.programs[name]
	if ps == nil {
		ps = &programState{copies: map[int]*copyState{}}
		m.programs[name] = ps
	}
	return ps
}

// Observe records e. Call it from the supervisor's event hook
// (WithEventHook): it does not block beyond a short lock and is
// safe for concurrent use.
func (m *Metrics) Observe(e Event) {
	if m == nil {
		return
	}
	switch e.Kind {
	case EventRestarted:
		m.restarts.WithLabelValues(e.Name).Inc()
	case EventPromoted:
		m.promotions.WithLabelValues(e.Name).Inc()
	case EventRecycling:
		m.recycles.WithLabelValues(e.Name, recycleReason(e.Err)).Inc()
	case EventRecycled:
		m.countForced(e.Name, e.Err)
	case EventGaveUp:
		m.gaveUp.WithLabelValues(e.Name).Inc()
	case EventExited:
		outcome := OutcomeClean
		switch {
		case e.Err != nil && e.Signal != 0:
			outcome = OutcomeKilled
		case e.Err != nil:
			outcome = OutcomeFailed
		}
		m.exits.WithLabelValues(e.Name, outcome).Inc()
	case EventDrain:
		if e.Drain != nil && e.Drain.Kind == drain.EventConfirmed {
			m.confirmLat.WithLabelValues(e.Name, e.Drain.Registry).Observe(max(e.Drain.Latency, 0).Seconds())
		}
	}
	m.track(e)
}

// track keeps the per-copy state behind the children gauge and the phase
// histograms.
func (m *Metrics) track(e Event) {
	switch e.Kind {
	case EventStarted, EventReady, EventRegistered, EventPromoted,
		EventExited, EventDeregistered, EventDrain:
	default:
		return
	}
	if e.Port == 0 {
		return
	}
	var observe func()
	m.mu.Lock()
	ps := m.program(e.Name)
	c := ps.copies[e.Port]
	switch e.Kind {
	case EventStarted:
		ps.copies[e.Port] = &copyState{pid: e.PID}
	case EventReady:
		if c != nil {
			c.ready = true
		}
	case EventRegistered, EventPromoted:
		if e.Kind == EventPromoted && ps.active != 0 && ps.active != e.Port {
			if old := ps.copies[ps.active]; old != nil {
				old.retiring = true
			}
		}
		ps.active = e.Port
	case EventDeregistered:
		if ps.active == e.Port {
			ps.active = 0
		}
	case EventExited:
		if c != nil && (e.PID == 0 || c.pid == e.PID) {
			delete(ps.copies, e.Port)
		}
		if ps.active == e.Port {
			ps.active = 0
		}
	case EventDrain:
		if c == nil || e.Drain == nil || e.Drain.Kind != drain.EventPhase {
			break
		}
		d := e.Drain
		switch {
		case d.Phase == drain.Deregistering || !c.inDrain:
			// A new run of the protocol for this copy.
			c.inDrain, c.lastPhase, c.lastAt = true, d.Phase, d.Time
		case d.Phase > c.lastPhase:
			prev, at := c.lastPhase, c.lastAt
			c.lastPhase, c.lastAt = d.Phase, d.Time
			if prev < drain.Offline {
				h := m.phaseDur.WithLabelValues(e.Name, prev.String())
				secs := max(d.Time.Sub(at), 0).Seconds()
				observe = func() { h.Observe(secs) }
			}
		}
		// Going offline: no longer a copy consumers are sent to.
		c.retiring = true
		if ps.active == e.Port {
			ps.active = 0
		}
	}
	m.mu.Unlock()
	if observe != nil {
		observe()
	}
}

// ObserveResult records how one supervisor's Run ended, given its error:
// an error wrapping drain.ErrForced counts a forced stop, one wrapping
// drain.ErrDeadline a stop at the deadline. Call it once per Run.
func (m *Metrics) ObserveResult(program string, err error) {
	if m == nil {
		return
	}
	m.countForced(program, err)
}

func (m *Metrics) countForced(program string, err error) {
	switch {
	case errors.Is(err, drain.ErrForced):
		m.forced.WithLabelValues(program, "forced").Inc()
	case errors.Is(err, drain.ErrDeadline):
		m.forced.WithLabelValues(program, "deadline").Inc()
	}
}

// recycleReason names the limit a recycled copy passed: "age" or "memory".
func recycleReason(err error) string {
	switch {
	case errors.Is(err, ErrRecycleAge):
		return "age"
	case errors.Is(err, ErrRecycleRSS):
		return "memory"
	}
	return "other"
}

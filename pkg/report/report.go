// Package report records one offline and writes it for the people who run
// it: a JSON file and an SVG timeline of the phases, the in-flight curve,
// each registry's confirmation and the consumers that kept calling late,
// with the causes of the offline's time, which add up to its total.
//
// A Recorder follows the protocol through its event hook (Observe) and
// samples the in-flight counts while the offline runs; Report joins what
// it saw with the coordinator's drain.Report into an Offline, which
// WriteFiles writes. Every part of a report is bounded, so that a report
// stays well under 100 KB however long the offline and however many
// consumers called:
//
//	rec := report.NewRecorder(func() (int64, int64) { return t.InFlight(), t.LongLived() })
//	coord, _ := drain.New(t, drain.WithEventHook(rec.Observe), ...)
//	rep, err := coord.Offline(ctx)
//	off := rec.Report(rep)
//	_ = off.WriteFiles("offline.json") // and offline.svg
package report

import (
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/clock"
)

// Limits on what a report holds, so that its size is bounded whatever the
// offline did.
const (
	// DefaultInterval is how often a Recorder samples the in-flight counts.
	DefaultInterval = 10 * time.Millisecond
	// MaxPoints is the most points an in-flight curve keeps; see Curve.
	MaxPoints = 500
	// MaxRows is the most registries, stop hooks and late consumers a
	// report lists; further ones are left out (late consumers beyond
	// drain.TopConsumers are already aggregated by the coordinator).
	MaxRows = 32
	// maxText bounds every string taken from elsewhere: errors, names,
	// consumer IDs (which come from clients).
	maxText = 256
	// maxIDText bounds a consumer ID, as consumerid.MaxLen bounds one
	// taken from a header.
	maxIDText = 64
)

// Offline is the report of one offline. Times within it are offsets from
// Start, in nanoseconds, as drain's reports give durations.
type Offline struct {
	Outcome  drain.Outcome `json:"outcome"`
	Instance Instance      `json:"instance"`
	Source   string        `json:"source"` // what the Draining phase waited on
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
	// Causes splits Duration into what it was spent on; its parts add up
	// to Duration exactly.
	Causes     Causes     `json:"causes"`
	Phases     []Phase    `json:"phases"`
	Registries []Registry `json:"registries"`
	Hooks      []Hook     `json:"hooks,omitempty"`
	InFlight   Curve      `json:"in_flight"`
	// Late counts the requests begun after the shutdown flag was set.
	Late int64 `json:"late_requests"`
	// Consumers is the consumers that kept calling after the
	// confirmation, most late requests first, the rest aggregated into
	// the last (whose Others is set); empty when the source does not
	// attribute requests (see drain.ConsumerSource) or nobody was late.
	Consumers []Consumer `json:"late_consumers,omitempty"`
	// Abandoned names the stop hooks still running when the protocol gave
	// up on them.
	Abandoned []string `json:"abandoned,omitempty"`
}

// Instance is the instance taken offline, as the registries knew it,
// without its tags and metadata.
type Instance struct {
	Service   string `json:"service"`
	ID        string `json:"id,omitempty"`
	Address   string `json:"address"`
	Port      int    `json:"port"`
	Namespace string `json:"namespace,omitempty"`
	Group     string `json:"group,omitempty"`
	Cluster   string `json:"cluster,omitempty"`
}

// Causes splits an offline's duration into consecutive spans, each ending
// where the next begins, so that they add up to the total exactly:
//
//	Start ─ Confirmation ─▶ Draining ─ ConsumerLag ─▶ last late request
//	      ─ LongestRequest ─▶ idle ─ Quiet ─▶ Stopping ─ Hooks ─▶ end
//
// Each boundary is clamped between the one before it and the end, so a
// span is never negative; a phase the protocol never entered (a lookup
// that found no instance ends it before Draining) starts at the end, and
// its spans are 0.
type Causes struct {
	// Confirmation is from the start to the Draining phase: the lookup,
	// the removal from every registry and their confirmation.
	Confirmation time.Duration `json:"confirmation_ns"`
	// ConsumerLag is from the Draining phase to the last request of a
	// late consumer (the last Consumer.Last, at most the Stopping phase);
	// 0 when nobody was late or the source does not attribute requests.
	ConsumerLag time.Duration `json:"consumer_lag_ns"`
	// LongestRequest is from there to the moment the in-flight count
	// (ordinary and long-lived requests) last fell to zero, as sampled
	// (to within the Recorder's interval): the tail of the longest
	// request. When the count was still above zero as the drain ended, it
	// runs to the Stopping phase; 0 without samples.
	LongestRequest time.Duration `json:"longest_request_ns"`
	// Quiet is the rest of the Draining phase: the quiet window and the
	// floors set by drain.WithMinWait and drain.WithConsumerLag, and,
	// without samples, the requests themselves.
	Quiet time.Duration `json:"quiet_ns"`
	// Hooks is the Stopping phase: the stop hooks, to the end.
	Hooks time.Duration `json:"hooks_ns"`
}

// Sum is the total of the causes: the offline's Duration.
func (c Causes) Sum() time.Duration {
	return c.Confirmation + c.ConsumerLag + c.LongestRequest + c.Quiet + c.Hooks
}

// Phase is one phase of the protocol: when it began and how long it took.
type Phase struct {
	Phase    drain.Phase   `json:"phase"`
	At       time.Duration `json:"at_ns"`
	Duration time.Duration `json:"duration_ns"`
}

// Registry is one registry's part of the offline.
type Registry struct {
	Name     string `json:"name"`
	State    string `json:"state"` // as drain.RegistryStatus.State
	Attempts int    `json:"attempts"`
	// DeregisteredAt is when the instance was removed (or disabled), and
	// ConfirmedAt when the registry's watch confirmed it; nil if it did
	// not happen. Latency is the time between them.
	DeregisteredAt *time.Duration `json:"deregistered_at_ns,omitempty"`
	ConfirmedAt    *time.Duration `json:"confirmed_at_ns,omitempty"`
	Latency        time.Duration  `json:"latency_ns"`
	Error          string         `json:"error,omitempty"`
}

// Hook is one stop hook's end.
type Hook struct {
	Name  string        `json:"name"`
	At    time.Duration `json:"at_ns"` // when it returned, or was abandoned
	Error string        `json:"error,omitempty"`
}

// Curve is the in-flight counts through the offline, from its start to
// Offline, as a step function: each point holds until the next. Only
// change points are kept. When more than MaxPoints changes come, pairs of
// neighbouring points are merged, each into one carrying the higher
// counts of the two (Merged says so), so that the curve never shows less
// than was in flight; Peak stays exact.
type Curve struct {
	Interval time.Duration `json:"interval_ns"` // the sampling interval
	Peak     int64         `json:"peak"`        // most ordinary requests in flight at once
	Merged   bool          `json:"merged,omitempty"`
	Points   []Point       `json:"points"`
}

// Point is the in-flight counts from At on.
type Point struct {
	At        time.Duration `json:"at_ns"`
	InFlight  int64         `json:"in_flight"`
	LongLived int64         `json:"long_lived,omitempty"`
}

// Consumer is a consumer that kept calling after the confirmation, or the
// aggregate of the others.
type Consumer struct {
	ID string `json:"id,omitempty"`
	// Others is set on the aggregate of the late consumers not listed one
	// by one, and IDs counts them.
	Others bool `json:"others,omitempty"`
	IDs    int  `json:"ids,omitempty"`
	// First and Last are its first and last request since the
	// deregistration began; Last is the one the consumer lag ends at.
	First  time.Duration `json:"first_ns"`
	Last   time.Duration `json:"last_ns"`
	Before int64         `json:"before_confirmation"`
	After  int64         `json:"after_confirmation"`
	Lag    time.Duration `json:"lag_ns"` // Last minus the confirmation
}

// Option configures a Recorder.
type Option func(*options)

type options struct {
	interval time.Duration
	clock    clock.Clock
}

func (o *options) setDefaults() {
	if o.interval <= 0 {
		o.interval = DefaultInterval
	}
	o.interval = max(o.interval, time.Millisecond)
	o.clock = clock.OrReal(o.clock)
}

// WithInterval sets how often the in-flight counts are sampled: by
// default DefaultInterval, at least 1ms.
func WithInterval(d time.Duration) Option {
	return func(o *options) { o.interval = d }
}

func withClock(c clock.Clock) Option {
	return func(o *options) { o.clock = c }
}

// Recorder follows one offline. Pass Observe to drain.WithEventHook (or
// call it from the hook already there); it samples the in-flight counts
// from the moment the protocol enters Deregistering until it reaches
// Offline, in a goroutine of its own. It is safe for concurrent use.
type Recorder struct {
	o      options
	sample func() (inFlight, longLived int64)

	mu       sync.Mutex
	started  bool
	phase    drain.Phase   // the last phase observed
	lastAt   time.Time     // the last sample's time
	stop     chan struct{} // closed to end sampling; nil until started
	stopped  bool
	points   []timedPoint
	merged   bool
	peak     int64
	lastBusy time.Time // last sample with anything in flight
	idleAt   time.Time // first sample with nothing in flight after lastBusy
	regs     map[string]*regTimes
	hooks    []timedHook
}

type timedPoint struct {
	at        time.Time
	inFlight  int64
	longLived int64
}

type regTimes struct{ deregistered, confirmed time.Time }

type timedHook struct {
	name string
	at   time.Time
	err  error
}

// NewRecorder returns a Recorder that reads the in-flight counts with
// sample, which must be quick and safe for concurrent use (a Tracker's
// InFlight and LongLived are). A nil sample records no curve.
func NewRecorder(sample func() (inFlight, longLived int64), opts ...Option) *Recorder {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	return &Recorder{o: o, sample: sample, regs: map[string]*regTimes{}}
}

// Observe records e. It does not block: entering Deregistering starts the
// sampling goroutine, and entering Offline takes a last sample and ends
// it.
func (r *Recorder) Observe(e drain.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.Kind {
	case drain.EventPhase:
		if e.Phase < drain.Deregistering || r.stopped {
			return
		}
		if !r.started {
			r.started = true
			if r.sample != nil && e.Phase < drain.Offline {
				r.stop = make(chan struct{})
				go r.loop(r.stop)
			}
		}
		// The sample as a phase begins belongs to the one before: the
		// counts as the drain ended decide the longest request.
		r.recordLocked(e.Time)
		r.phase = e.Phase
		if e.Phase == drain.Offline {
			r.stopLocked()
		}
	case drain.EventDeregistered:
		r.reg(e.Registry).deregistered = e.Time
	case drain.EventConfirmed:
		r.reg(e.Registry).confirmed = e.Time
	case drain.EventStopHook:
		if len(r.hooks) < MaxRows {
			r.hooks = append(r.hooks, timedHook{name: e.Hook, at: e.Time, err: e.Err})
		}
	}
}

// reg returns the times of the registry named name. Registries with the
// same name share them.
func (r *Recorder) reg(name string) *regTimes {
	t := r.regs[name]
	if t == nil {
		t = &regTimes{}
		if len(r.regs) < MaxRows {
			r.regs[name] = t
		}
	}
	return t
}

// loop samples every interval until stop is closed.
func (r *Recorder) loop(stop <-chan struct{}) {
	for {
		t := r.o.clock.NewTimer(r.o.interval)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C():
		}
		r.mu.Lock()
		if !r.stopped {
			r.recordLocked(r.o.clock.Now())
		}
		r.mu.Unlock()
	}
}

func (r *Recorder) stopLocked() {
	if r.stopped {
		return
	}
	r.stopped = true
	if r.stop != nil {
		close(r.stop)
	}
}

// recordLocked samples the counts at now and keeps a change point.
func (r *Recorder) recordLocked(now time.Time) {
	if r.sample == nil {
		return
	}
	// An event's time is read before its Observe takes the lock, so a
	// sample taken meanwhile may be later: keep the curve in order.
	now = later(now, r.lastAt)
	r.lastAt = now
	in, ll := r.sample()
	r.peak = max(r.peak, in)
	switch {
	case r.phase >= drain.Stopping:
		// The hooks' time is theirs, whatever is still in flight.
	case in+ll > 0:
		r.lastBusy, r.idleAt = now, time.Time{}
	case !r.lastBusy.IsZero() && r.idleAt.IsZero():
		r.idleAt = now
	}
	if n := len(r.points); n > 0 && r.points[n-1].inFlight == in && r.points[n-1].longLived == ll {
		return
	}
	if len(r.points) >= MaxPoints {
		r.points = mergePairs(r.points)
		r.merged = true
	}
	r.points = append(r.points, timedPoint{at: now, inFlight: in, longLived: ll})
}

// mergePairs halves ps: each pair of neighbours becomes one point at the
// first's time with the higher counts of the two, and neighbours left
// equal are joined.
func mergePairs(ps []timedPoint) []timedPoint {
	out := ps[:0]
	for i := 0; i < len(ps); i += 2 {
		p := ps[i]
		if i+1 < len(ps) {
			p.inFlight = max(p.inFlight, ps[i+1].inFlight)
			p.longLived = max(p.longLived, ps[i+1].longLived)
		}
		if n := len(out); n > 0 && out[n-1].inFlight == p.inFlight && out[n-1].longLived == p.longLived {
			continue
		}
		out = append(out, p)
	}
	return out
}

// Stop ends the sampling, if it runs; Report calls it, and so does the
// Offline event. Call it when the protocol may never reach Offline (it was
// never started). It does not block.
func (r *Recorder) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
}

// Report ends the sampling and builds the report of the offline that dr
// describes (the coordinator's report, from Offline or Wait) with what the
// recorder saw. It may be called more than once; it does not block.
func (r *Recorder) Report(dr drain.Report) Offline {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
	start := dr.Started
	end := start.Add(max(dr.Duration, 0))
	at := func(t time.Time) time.Duration { return clampTime(t, start, end).Sub(start) }
	in := dr.Instance
	off := Offline{
		Outcome: dr.Outcome,
		Instance: Instance{Service: clip(in.Service, maxText), ID: clip(in.ID, maxText), Address: clip(in.Address, maxText),
			Port: in.Port, Namespace: clip(in.Namespace, maxText), Group: clip(in.Group, maxText), Cluster: clip(in.Cluster, maxText)},
		Source:   clip(dr.Source, maxText),
		Start:    start,
		Duration: end.Sub(start),
		Late:     dr.Late,
		InFlight: Curve{Interval: r.o.interval, Peak: r.peak, Merged: r.merged, Points: []Point{}},
	}
	if r.sample == nil {
		off.InFlight.Interval = 0
	}
	phaseAt := map[drain.Phase]time.Time{}
	for _, p := range dr.Phases {
		off.Phases = append(off.Phases, Phase{Phase: p.Phase, At: at(p.Start), Duration: max(p.Duration, 0)})
		phaseAt[p.Phase] = p.Start
	}
	for _, p := range r.points {
		off.InFlight.Points = append(off.InFlight.Points, Point{At: at(p.at), InFlight: p.inFlight, LongLived: p.longLived})
	}
	for _, s := range dr.Registries[:min(len(dr.Registries), MaxRows)] {
		reg := Registry{Name: clip(s.Name, maxText), State: clip(s.State, maxText), Attempts: s.Attempts,
			Latency: s.ConfirmLatency, Error: clip(s.Error, maxText)}
		if t := r.regs[s.Name]; t != nil {
			if !t.deregistered.IsZero() {
				d := at(t.deregistered)
				reg.DeregisteredAt = &d
			}
			if !t.confirmed.IsZero() {
				d := at(t.confirmed)
				reg.ConfirmedAt = &d
			}
		}
		off.Registries = append(off.Registries, reg)
	}
	for _, h := range r.hooks {
		hk := Hook{Name: clip(h.name, maxText), At: at(h.at)}
		if h.err != nil {
			hk.Error = clip(h.err.Error(), maxText)
		}
		off.Hooks = append(off.Hooks, hk)
	}
	for _, name := range dr.Abandoned[:min(len(dr.Abandoned), MaxRows)] {
		off.Abandoned = append(off.Abandoned, clip(name, maxText))
	}
	var lastLate time.Time
	if lc := dr.Consumers; lc != nil {
		add := func(s drain.ConsumerStat, others bool) {
			off.Consumers = append(off.Consumers, Consumer{ID: clip(s.ID, maxIDText), Others: others, IDs: s.IDs,
				First: at(s.First), Last: at(s.Last), Before: s.Before, After: s.After, Lag: s.Lag})
			lastLate = later(lastLate, s.Last)
		}
		for _, s := range lc.Top[:min(len(lc.Top), MaxRows-1)] {
			add(s, false)
		}
		if lc.Others != nil {
			add(*lc.Others, true)
		}
	}
	off.Causes = causes(start, end, phaseAt, lastLate, r.lastBusy, r.idleAt)
	return off
}

// causes splits start..end at the boundaries that Causes documents.
func causes(start, end time.Time, phaseAt map[drain.Phase]time.Time, lastLate, lastBusy, idleAt time.Time) Causes {
	// next clamps t between the previous boundary and the end; a zero t
	// (an event that did not happen) is the end.
	prev := start
	next := func(t time.Time) time.Time {
		if t.IsZero() {
			t = end
		}
		prev = clampTime(t, prev, end)
		return prev
	}
	draining, stopping := phaseAt[drain.Draining], phaseAt[drain.Stopping]
	if stopping.IsZero() {
		stopping = end
	}
	b1 := next(draining)
	b2 := b1
	if !lastLate.IsZero() {
		b2 = next(earlier(lastLate, stopping))
	}
	b3 := b2
	switch {
	case lastBusy.IsZero():
	case idleAt.IsZero():
		b3 = next(stopping) // still busy as the drain ended
	default:
		b3 = next(earlier(idleAt, stopping))
	}
	b4 := next(stopping)
	return Causes{
		Confirmation:   b1.Sub(start),
		ConsumerLag:    b2.Sub(b1),
		LongestRequest: b3.Sub(b2),
		Quiet:          b4.Sub(b3),
		Hooks:          end.Sub(b4),
	}
}

func clampTime(t, lo, hi time.Time) time.Time {
	if t.Before(lo) {
		return lo
	}
	if t.After(hi) {
		return hi
	}
	return t
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// clip cuts s to at most n bytes, on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// String summarises the report in one line, with its causes.
func (o *Offline) String() string {
	c := o.Causes
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return fmt.Sprintf("offline of %s %s: %s in %s (confirmation %s, consumer lag %s, longest request %s, quiet %s, hooks %s)",
		o.Instance.Service, o.Instance.ID, o.Outcome, ms(o.Duration),
		ms(c.Confirmation), ms(c.ConsumerLag), ms(c.LongestRequest), ms(c.Quiet), ms(c.Hooks))
}

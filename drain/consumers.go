package drain

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Consumers attributes requests to the consumers that sent them during an
// offline, so that the offline can say who kept calling after the registry
// confirmed the removal, and for how long. A consumer is whatever ID the
// caller gives: a remote IP by default, or a header's value (see
// pkg/httpdrain).
//
// Attribution runs from Start (the coordinator calls it as the
// deregistration begins) to the end of the offline; before Start, Saw does
// nothing but one atomic load, so a serving instance pays nothing for it.
// Memory is bounded: the first MaxTracked distinct IDs are kept one by
// one, and the requests of any further ID are added to one aggregate.
//
// The zero value is ready to use. It is safe for concurrent use.
type Consumers struct {
	on atomic.Bool

	mu        sync.Mutex
	started   time.Time
	confirmed time.Time // zero until Confirmed
	byID      map[string]*ConsumerStat
	rest      ConsumerStat // requests of IDs beyond MaxTracked
	restIDs   map[string]struct{}
}

// MaxTracked is how many distinct consumer IDs a Consumers keeps one by
// one; further IDs share one aggregate.
const MaxTracked = 256

// ConsumerStat is what one consumer (or the aggregate of the rest) sent
// during an offline.
type ConsumerStat struct {
	// ID names the consumer; empty for the aggregate of the others.
	ID string `json:"id,omitempty"`
	// First and Last are its first and last request since the
	// deregistration began.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// Before and After count its requests before and after the registry
	// confirmed the removal.
	Before int64 `json:"before_confirmation"`
	After  int64 `json:"after_confirmation"`
	// Lag is how long after the confirmation it kept sending: Last minus
	// the confirmation, or 0 when it sent nothing after it.
	Lag time.Duration `json:"lag_ns"`
	// IDs counts the distinct consumers in the aggregate; 1 otherwise.
	IDs int `json:"ids,omitempty"`
}

func (s *ConsumerStat) add(at, confirmed time.Time) {
	if s.First.IsZero() || at.Before(s.First) {
		s.First = at
	}
	if at.After(s.Last) {
		s.Last = at
	}
	if confirmed.IsZero() || at.Before(confirmed) {
		s.Before++
	} else {
		s.After++
	}
}

// Start begins attribution at t. Later calls do nothing.
func (c *Consumers) Start(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started.IsZero() {
		c.started = t
		c.on.Store(true)
	}
}

// Confirmed records when the registries confirmed the removal: requests
// from then on count as after the confirmation, and lags count from it.
// Later calls do nothing.
func (c *Consumers) Confirmed(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.confirmed.IsZero() {
		c.confirmed = t
	}
}

// Active reports whether attribution has started: callers that must work
// to name a consumer (parse an address, read a header) check it first.
func (c *Consumers) Active() bool { return c.on.Load() }

// Saw records a request from consumer id at t. Before Start it does
// nothing.
func (c *Consumers) Saw(id string, t time.Time) {
	if !c.on.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.byID[id]; s != nil {
		s.add(t, c.confirmed)
		return
	}
	if len(c.byID) < MaxTracked {
		if c.byID == nil {
			c.byID = map[string]*ConsumerStat{}
		}
		s := &ConsumerStat{ID: id, IDs: 1}
		s.add(t, c.confirmed)
		c.byID[id] = s
		return
	}
	// Distinct IDs of the aggregate are counted up to MaxTracked more,
	// so memory stays bounded whatever the clients send.
	if _, ok := c.restIDs[id]; !ok && len(c.restIDs) < MaxTracked {
		if c.restIDs == nil {
			c.restIDs = map[string]struct{}{}
		}
		c.restIDs[id] = struct{}{}
	}
	c.rest.add(t, c.confirmed)
}

// LateConsumers is the consumers that kept calling after the
// confirmation, for /status, metrics and reports.
type LateConsumers struct {
	// Confirmed is when the registries confirmed the removal; zero if
	// they did not.
	Confirmed time.Time `json:"confirmed,omitzero"`
	// Top is the late consumers with the most requests after the
	// confirmation, most first, at most the n that Late was asked for.
	Top []ConsumerStat `json:"top,omitempty"`
	// Others aggregates the late consumers beyond Top, if any.
	Others *ConsumerStat `json:"others,omitempty"`
	// MaxLag is the longest lag of any late consumer, aggregate included.
	MaxLag time.Duration `json:"max_lag_ns"`
}

// Late returns the consumers that sent at least one request after the
// confirmation: the n with the most such requests one by one, the rest
// aggregated. Without a confirmation nobody is late.
func (c *Consumers) Late(n int) LateConsumers {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := LateConsumers{Confirmed: c.confirmed}
	if c.confirmed.IsZero() {
		return out
	}
	var late []ConsumerStat
	for _, s := range c.byID {
		if s.After > 0 {
			late = append(late, c.withLag(*s))
		}
	}
	slices.SortFunc(late, func(a, b ConsumerStat) int {
		if d := cmp.Compare(b.After, a.After); d != 0 {
			return d
		}
		return cmp.Compare(a.ID, b.ID)
	})
	var others ConsumerStat
	if c.rest.After > 0 {
		others = c.withLag(c.rest)
		others.IDs = max(1, len(c.restIDs))
	}
	if len(late) > n {
		for _, s := range late[n:] {
			merge(&others, s)
		}
		late = late[:n]
	}
	out.Top = late
	if others.After > 0 {
		out.Others = &others
	}
	for _, s := range out.Top {
		out.MaxLag = max(out.MaxLag, s.Lag)
	}
	if out.Others != nil {
		out.MaxLag = max(out.MaxLag, out.Others.Lag)
	}
	return out
}

func (c *Consumers) withLag(s ConsumerStat) ConsumerStat {
	if s.After > 0 {
		s.Lag = s.Last.Sub(c.confirmed)
	}
	return s
}

// merge adds s into the aggregate a.
func merge(a *ConsumerStat, s ConsumerStat) {
	if a.First.IsZero() || s.First.Before(a.First) {
		a.First = s.First
	}
	if s.Last.After(a.Last) {
		a.Last = s.Last
	}
	a.Before += s.Before
	a.After += s.After
	a.Lag = max(a.Lag, s.Lag)
	a.IDs += max(1, s.IDs)
}

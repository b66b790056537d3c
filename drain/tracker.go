// Package drain is lameduck's engine: the Tracker counts in-flight requests
// and holds the shutdown flag, and the Coordinator runs the offline protocol
// (Serving -> Deregistering -> Confirming -> Draining -> Stopping -> Offline)
// under one deadline budget.
package drain

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// The tracker's state word packs three fields so that a request's start is
// one atomic add and its end one atomic subtract:
//
//	bit  0      the shutdown (draining) flag
//	bits 1-31   requests in flight
//	bits 32-63  requests started, modulo 2^32
//
// The flag sits below the in-flight count so that a wrong End, which
// borrows from the bits above the count until it is undone, can never
// clear or set the flag, even for a moment.
const (
	drainingBit  = 1
	inflightUnit = 2
	inflightMask = 1<<32 - inflightUnit
	startedUnit  = 1 << 32
	// endSlowMask picks out what sends an End off the fast path: the flag,
	// or the top bit of the count, which a count below zero sets (a count of
	// 2^30 requests in flight never happens).
	endSlowMask = drainingBit | 1<<31
)

var (
	// ErrEndedTwice is returned by Request.End when the request already ended.
	ErrEndedTwice = errors.New("drain: request ended twice; call End exactly once per Begin")
	// ErrNotBegun is returned by End on a Request that no Begin returned.
	ErrNotBegun = errors.New("drain: End on a request that was never begun; use the Request that Tracker.Begin returned")
)

// Tracker counts in-flight requests and holds the shutdown flag. The zero
// value is ready to use and is safe for concurrent use; a Tracker must not
// be copied after first use.
type Tracker struct {
	// state is alone on its cache line: it is the only word the hot path
	// writes.
	state atomic.Uint64
	_     [56]byte

	longLived atomic.Int64
	late      atomic.Int64 // requests begun while draining
	misuse    atomic.Int64 // Ends refused as double or unbegun
	lastReq   atomic.Int64 // unix nanos: last late End, or last long-lived start
	drainedAt atomic.Int64 // unix nanos when the flag was set

	clock clock.Clock // nil means the real clock

	consumers Consumers

	mu         sync.Mutex
	idle       chan struct{} // closed when a counter reaches zero while draining
	drainingCh chan struct{} // closed when the flag is set
	afterDrain map[*afterDrain]struct{}
}

type afterDrain struct{ f func() }

func (t *Tracker) now() time.Time { return clock.OrReal(t.clock).Now() }

// Request is one counted request. End it exactly once, typically with
// defer. The zero Request is not begun.
type Request struct {
	t        *Tracker
	state    uint8 // reqLive, reqLong or reqEnded; 0 before Begin
	draining bool
}

// Request states. reqLate is reqLive with the draining bit, so Begin can
// compute it without a branch.
const (
	reqLive  uint8 = 2
	reqLate  uint8 = reqLive | drainingBit
	reqLong  uint8 = 4
	reqEnded uint8 = 5
)

// Begin counts the start of a request. It does not block and does not
// allocate. Before the flag is set it costs one atomic add.
func (t *Tracker) Begin() Request {
	// No call and no clock: small enough to inline. A late request (begun
	// after the flag) is accounted for when it ends.
	v := t.state.Add(startedUnit + inflightUnit)
	return Request{t: t, state: reqLive | uint8(v&drainingBit), draining: v&drainingBit != 0}
}

// BeginLongLived counts the start of a long-lived request (a stream, a
// WebSocket, a hijacked connection). Long-lived requests are counted apart
// from ordinary ones and have their own deadline in the offline condition.
func (t *Tracker) BeginLongLived() Request {
	// Counted before the start is published, so a waiter that sees the
	// start also sees the request.
	t.longLived.Add(1)
	v := t.state.Add(startedUnit)
	r := Request{t: t, state: reqLong}
	if v&drainingBit != 0 {
		r.draining = true
		t.lateStart()
	} else {
		t.lastReq.Store(t.now().UnixNano())
	}
	return r
}

func (t *Tracker) lateStart() {
	t.late.Add(1)
	t.lastReq.Store(t.now().UnixNano())
}

// Draining reports whether the shutdown flag was set when r began: the
// request came from a consumer whose view of the registry is stale.
func (r *Request) Draining() bool { return r.draining }

// End counts the end of r. Ending a request twice, or one that was never
// begun, changes no count and returns an error. When the flag is set and the
// last request ends, End wakes whoever waits in WaitIdle.
func (r *Request) End() error {
	// Small enough to inline: one atomic add and one branch when serving;
	// everything else is in endSlow.
	st := r.state
	v := uint64(endSlowMask) // anything but a live request goes to endSlow
	if st == reqLive {
		r.state = reqEnded
		v = r.t.state.Add(^uint64(inflightUnit - 1)) // -inflightUnit
	}
	if v&endSlowMask == 0 {
		return nil
	}
	return r.endSlow(st, v)
}

// endSlow ends a request off the fast path. st is the request's state at
// End. For a live request the count is already decremented, leaving v, and
// the flag is set or the count went below zero.
func (r *Request) endSlow(st uint8, v uint64) error {
	t := r.t
	switch st {
	case reqLive:
		return t.endedAt(v)
	case reqLate:
		r.state = reqEnded
		t.late.Add(1)
		// The quiet window counts from here, which is no earlier than the
		// request's start; record it before the count can reach zero.
		t.lastReq.Store(t.now().UnixNano())
		return t.endedAt(t.state.Add(^uint64(inflightUnit - 1)))
	case reqLong:
		r.state = reqEnded
		return t.endLongLived()
	case reqEnded:
		t.misuse.Add(1)
		return ErrEndedTwice
	}
	return ErrNotBegun
}

// endedAt finishes the End of an ordinary request that left state v, when
// the flag is set or the count was already zero.
func (t *Tracker) endedAt(v uint64) error {
	switch {
	case v&inflightMask == inflightMask:
		// The count was already zero (a copied Request ended twice): undo
		// the borrow so the count never goes negative. A waiter that saw
		// the borrowed count needs waking again.
		if t.state.Add(inflightUnit)&(drainingBit|inflightMask) == drainingBit {
			t.wake()
		}
		t.misuse.Add(1)
		return ErrEndedTwice
	case v&(drainingBit|inflightMask) == drainingBit:
		t.wake()
	}
	return nil
}

// endLongLived counts the end of a long-lived request. It refuses to go
// below zero, which a copied Request ended twice would otherwise do.
func (t *Tracker) endLongLived() error {
	for {
		n := t.longLived.Load()
		if n <= 0 {
			t.misuse.Add(1)
			return ErrEndedTwice
		}
		if t.longLived.CompareAndSwap(n, n-1) {
			if n == 1 && t.IsDraining() {
				t.wake()
			}
			return nil
		}
	}
}

// wake tells waiters that a counter reached zero while draining.
func (t *Tracker) wake() {
	t.mu.Lock()
	if t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
	t.mu.Unlock()
}

// idleChan returns a channel that is closed at the next wake.
func (t *Tracker) idleChan() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	return t.idle
}

// SetDraining sets the shutdown flag. From then on Begin marks requests as
// draining, and the functions registered with AfterDraining run. It reports
// whether this call set the flag; later calls do nothing.
func (t *Tracker) SetDraining() bool {
	for {
		v := t.state.Load()
		if v&drainingBit != 0 {
			return false
		}
		if t.state.CompareAndSwap(v, v|drainingBit) {
			break
		}
	}
	t.drainedAt.Store(t.now().UnixNano())
	t.mu.Lock()
	if t.drainingCh == nil {
		t.drainingCh = make(chan struct{})
	}
	close(t.drainingCh)
	fs := make([]func(), 0, len(t.afterDrain))
	for a := range t.afterDrain {
		fs = append(fs, a.f)
	}
	t.afterDrain = nil
	t.mu.Unlock()
	for _, f := range fs {
		go f()
	}
	t.wake()
	return true
}

// IsDraining reports whether the shutdown flag is set.
func (t *Tracker) IsDraining() bool { return t.state.Load()&drainingBit != 0 }

// Draining returns a channel that is closed when the flag is set, so that
// long-lived handlers can say goodbye to their clients.
func (t *Tracker) Draining() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	// Only SetDraining closes the channel: between its setting the flag and
	// its closing the channel, a channel made here is still open, and
	// closing it here too would make SetDraining close it twice.
	if t.drainingCh == nil {
		t.drainingCh = make(chan struct{})
	}
	return t.drainingCh
}

// AfterDraining arranges for f to run in its own goroutine when the flag is
// set (at once if it already is), like context.AfterFunc. The returned stop
// cancels the arrangement and reports whether it did so before f started.
func (t *Tracker) AfterDraining(f func()) (stop func() bool) {
	a := &afterDrain{f: f}
	t.mu.Lock()
	if t.IsDraining() {
		t.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	if t.afterDrain == nil {
		t.afterDrain = map[*afterDrain]struct{}{}
	}
	t.afterDrain[a] = struct{}{}
	t.mu.Unlock()
	return func() bool {
		t.mu.Lock()
		defer t.mu.Unlock()
		_, ok := t.afterDrain[a]
		delete(t.afterDrain, a)
		return ok
	}
}

// InFlight returns the number of ordinary requests in flight.
func (t *Tracker) InFlight() int64 { return int64(t.state.Load()&inflightMask) / inflightUnit }

// Consumers is the tracker's attribution of requests to consumers, which
// the coordinator starts as the deregistration begins. Middleware that can
// name a request's consumer calls Saw when Active (pkg/httpdrain and
// pkg/grpcdrain do).
func (t *Tracker) Consumers() *Consumers { return &t.consumers }

// Saw records a request from consumer id now, once attribution is on.
func (t *Tracker) Saw(id string) {
	if t.consumers.Active() {
		t.consumers.Saw(id, t.now())
	}
}

// LongLived returns the number of long-lived requests in flight.
func (t *Tracker) LongLived() int64 { return t.longLived.Load() }

// Stats is a snapshot of a Tracker.
type Stats struct {
	InFlight    int64     `json:"in_flight"`
	LongLived   int64     `json:"long_lived"`
	Draining    bool      `json:"draining"`
	Started     uint32    `json:"started_mod_2_32"`
	Late        int64     `json:"late"`   // requests begun after the flag was set
	Misuse      int64     `json:"misuse"` // Ends refused as double or unbegun
	LastRequest time.Time `json:"last_request,omitzero"`
	DrainedAt   time.Time `json:"draining_since,omitzero"`
}

// Stats returns a snapshot. LastRequest is when a request last ended after
// the flag was set, or a long-lived request last began: ordinary requests
// read no clock while serving, to keep the hot path to one atomic add.
func (t *Tracker) Stats() Stats {
	v := t.state.Load()
	s := Stats{
		InFlight:  int64(v&inflightMask) / inflightUnit,
		LongLived: t.longLived.Load(),
		Draining:  v&drainingBit != 0,
		Started:   uint32(v >> 32),
		Late:      t.late.Load(),
		Misuse:    t.misuse.Load(),
	}
	if n := t.lastReq.Load(); n != 0 {
		s.LastRequest = time.Unix(0, n)
	}
	if n := t.drainedAt.Load(); n != 0 {
		s.DrainedAt = time.Unix(0, n)
	}
	return s
}

// Condition is the offline condition that WaitIdle waits for.
type Condition struct {
	// Quiet is how long the instance must stay idle (nothing in flight,
	// nothing arriving) before it counts as drained, measured from the
	// later of the moment the flag was set and the end of the last request
	// that arrived after it.
	Quiet time.Duration
	// NotBefore is the earliest time the condition can hold: the minimum
	// wait for consumers known to poll the registry instead of watching it.
	NotBefore time.Time
	// LongLivedUntil is when long-lived requests stop counting. Until then
	// they must reach zero too. The zero time means they always count.
	LongLivedUntil time.Time
}

// WaitIdle sets nothing; it blocks until the flag is set and c holds:
// nothing in flight, no request begun for c.Quiet, c.NotBefore passed, and
// long-lived requests done or past their deadline. The wait is driven by
// events (the last request out wakes it) and by timers for the time-based
// parts; nothing polls. It returns ctx.Err() if ctx ends first.
func (t *Tracker) WaitIdle(ctx context.Context, c Condition) error {
	clk := clock.OrReal(t.clock)
	// Wait for the channel, not the bit: SetDraining closes the channel
	// after it has recorded the time the quiet window counts from.
	if draining := t.Draining(); !isDone(draining) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-draining:
		}
	}
	for {
		idle := t.idleChan()
		ok, wakeAt := t.holds(c, clk.Now())
		if ok {
			return nil
		}
		var fire <-chan time.Time
		var timer clock.Timer
		if !wakeAt.IsZero() {
			timer = clk.NewTimer(wakeAt.Sub(clk.Now()))
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return ctx.Err()
		case <-idle:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// holds evaluates c at now. When it does not hold, wakeAt is the next time
// it could hold without any request ending (zero if only an End can help).
func (t *Tracker) holds(c Condition, now time.Time) (ok bool, wakeAt time.Time) {
	if t.InFlight() > 0 {
		return false, time.Time{}
	}
	if t.LongLived() > 0 && (c.LongLivedUntil.IsZero() || now.Before(c.LongLivedUntil)) {
		return false, c.LongLivedUntil
	}
	due := c.NotBefore
	last := time.Unix(0, max(t.lastReq.Load(), t.drainedAt.Load()))
	if q := last.Add(c.Quiet); q.After(due) {
		due = q
	}
	if now.Before(due) {
		return false, due
	}
	return true, time.Time{}
}

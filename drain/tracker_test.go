package drain

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

func newFakeTracker() (*Tracker, *clock.Fake) {
	f := clock.NewFake(t0)
	return &Tracker{clock: f}, f
}

func TestTrackerCountsInAndOut(t *testing.T) {
	t.Parallel()
	var tr Tracker // the zero value is ready to use
	rs := []Request{tr.Begin(), tr.Begin(), tr.Begin()}
	if got := tr.InFlight(); got != 3 {
		t.Fatalf("after 3 Begins: want 3 in flight, got %d", got)
	}
	for k := range rs {
		if err := rs[k].End(); err != nil {
			t.Fatalf("End of request %d: want nil, got %v", k, err)
		}
		if want, got := int64(len(rs)-k-1), tr.InFlight(); got != want {
			t.Fatalf("after %d Ends: want %d in flight, got %d", k+1, want, got)
		}
	}
	s := tr.Stats()
	if s.Started != 3 || s.Late != 0 || s.Misuse != 0 || s.Draining {
		t.Fatalf("want Stats{Started:3 Late:0 Misuse:0 Draining:false}, got %+v", s)
	}
}

func TestTrackerDrainingMarksLateRequests(t *testing.T) {
	t.Parallel()
	tr, f := newFakeTracker()
	early := tr.Begin()
	if early.Draining() {
		t.Fatalf("request begun before SetDraining: want Draining()=false, got true")
	}
	f.Advance(time.Second)
	tr.SetDraining()
	f.Advance(time.Second)
	late := tr.Begin()
	f.Advance(time.Second)
	lateLong := tr.BeginLongLived()
	if !late.Draining() || !lateLong.Draining() {
		t.Fatalf("requests begun after SetDraining: want Draining()=true for both, got %v (ordinary) and %v (long-lived)",
			late.Draining(), lateLong.Draining())
	}
	if got := tr.Stats().Late; got != 1 {
		t.Fatalf("want Late 1 (the long-lived one counts at its start, the ordinary one when served), got %d", got)
	}
	_ = late.End()
	s := tr.Stats()
	if s.Late != 2 {
		t.Fatalf("want Late 2 once the late request was served, got %d", s.Late)
	}
	if want := t0.Add(time.Second); !s.DrainedAt.Equal(want) {
		t.Fatalf("want DrainedAt %v, got %v", want, s.DrainedAt)
	}
	if want := t0.Add(3 * time.Second); !s.LastRequest.Equal(want) {
		t.Fatalf("want LastRequest %v (exact while draining), got %v", want, s.LastRequest)
	}
	for _, r := range []*Request{&early, &lateLong} {
		if err := r.End(); err != nil {
			t.Fatalf("End: want nil, got %v", err)
		}
	}
	if s := tr.Stats(); s.InFlight != 0 || s.LongLived != 0 || s.Late != 2 {
		t.Fatalf("after every End: want InFlight 0, LongLived 0, Late 2, got %+v", s)
	}
}

func TestRequestEndMisuse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		draining bool
		// misuse ends a request wrongly and returns the error of the wrong End.
		misuse     func(tr *Tracker) error
		wantErr    error
		wantMisuse int64
	}{
		{
			name: "End twice",
			misuse: func(tr *Tracker) error {
				r := tr.Begin()
				_ = r.End()
				return r.End()
			},
			wantErr: ErrEndedTwice, wantMisuse: 1,
		},
		{
			name: "End both copies of a Request",
			misuse: func(tr *Tracker) error {
				r := tr.Begin()
				c := r
				_ = r.End()
				return c.End()
			},
			wantErr: ErrEndedTwice, wantMisuse: 1,
		},
		{
			name:     "End both copies of a Request while draining",
			draining: true,
			misuse: func(tr *Tracker) error {
				r := tr.Begin()
				c := r
				_ = r.End()
				return c.End()
			},
			wantErr: ErrEndedTwice, wantMisuse: 1,
		},
		{
			name: "End both copies of a long-lived Request",
			misuse: func(tr *Tracker) error {
				r := tr.BeginLongLived()
				c := r
				_ = r.End()
				return c.End()
			},
			wantErr: ErrEndedTwice, wantMisuse: 1,
		},
		{
			name: "End twice on a long-lived Request",
			misuse: func(tr *Tracker) error {
				r := tr.BeginLongLived()
				_ = r.End()
				return r.End()
			},
			wantErr: ErrEndedTwice, wantMisuse: 1,
		},
		{
			name: "End a zero Request",
			misuse: func(*Tracker) error {
				var r Request
				return r.End()
			},
			wantErr: ErrNotBegun,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr Tracker
			if tc.draining {
				tr.SetDraining()
			}
			if err := tc.misuse(&tr); !errors.Is(err, tc.wantErr) {
				t.Fatalf("want %v, got %v", tc.wantErr, err)
			}
			s := tr.Stats()
			if s.InFlight != 0 || s.LongLived != 0 {
				t.Fatalf("want counts 0 and 0 (never negative), got InFlight %d, LongLived %d", s.InFlight, s.LongLived)
			}
			if s.Misuse != tc.wantMisuse {
				t.Fatalf("want Misuse %d, got %d", tc.wantMisuse, s.Misuse)
			}
			if s.Draining != tc.draining {
				t.Fatalf("want Draining %v after the misuse, got %v", tc.draining, s.Draining)
			}
			// The tracker still counts correctly afterwards.
			r := tr.Begin()
			if got := tr.InFlight(); got != 1 {
				t.Fatalf("Begin after the misuse: want 1 in flight, got %d", got)
			}
			if err := r.End(); err != nil {
				t.Fatalf("End after the misuse: want nil, got %v", err)
			}
		})
	}
}

func TestTrackerLongLivedCountedApart(t *testing.T) {
	t.Parallel()
	var tr Tracker
	long := tr.BeginLongLived()
	short := tr.Begin()
	if in, ll := tr.InFlight(), tr.LongLived(); in != 1 || ll != 1 {
		t.Fatalf("want 1 in flight and 1 long-lived, got %d and %d", in, ll)
	}
	if err := long.End(); err != nil {
		t.Fatalf("End of long-lived: want nil, got %v", err)
	}
	if in, ll := tr.InFlight(), tr.LongLived(); in != 1 || ll != 0 {
		t.Fatalf("after the long-lived End: want 1 in flight and 0 long-lived, got %d and %d", in, ll)
	}
	if err := short.End(); err != nil {
		t.Fatalf("End: want nil, got %v", err)
	}
	if s := tr.Stats(); s.Started != 2 {
		t.Fatalf("want Started 2 (both kinds count as started), got %d", s.Started)
	}
}

func TestSetDrainingIdempotent(t *testing.T) {
	t.Parallel()
	tr, f := newFakeTracker()
	if tr.IsDraining() {
		t.Fatalf("new tracker: want IsDraining false, got true")
	}
	if !tr.SetDraining() {
		t.Fatalf("first SetDraining: want true, got false")
	}
	f.Advance(time.Minute)
	if tr.SetDraining() {
		t.Fatalf("second SetDraining: want false, got true")
	}
	if !tr.IsDraining() {
		t.Fatalf("want IsDraining true, got false")
	}
	if got := tr.Stats().DrainedAt; !got.Equal(t0) {
		t.Fatalf("want DrainedAt %v (the first call), got %v", t0, got)
	}
}

func TestTrackerDrainingChannel(t *testing.T) {
	t.Parallel()
	var tr Tracker
	before := tr.Draining()
	if isClosed(before) {
		t.Fatalf("before SetDraining: want Draining() open, got closed")
	}
	tr.SetDraining()
	if !isClosed(before) {
		t.Fatalf("after SetDraining: want the channel taken before closed, got open")
	}
	if !isClosed(tr.Draining()) {
		t.Fatalf("after SetDraining: want a new Draining() closed, got open")
	}
}

// TestTrackerDrainingRacesSetDraining calls Draining while SetDraining runs:
// the channel must close exactly once, with no panic.
func TestTrackerDrainingRacesSetDraining(t *testing.T) {
	t.Parallel()
	for range 2000 {
		var tr Tracker
		start := make(chan struct{})
		got := make(chan (<-chan struct{}), 1)
		var wg sync.WaitGroup
		wg.Go(func() { <-start; tr.SetDraining() })
		wg.Go(func() { <-start; got <- tr.Draining() })
		close(start)
		wg.Wait()
		if ch := <-got; !isClosed(ch) {
			t.Fatalf("after SetDraining returned: want Draining() closed, got open")
		}
	}
}

func TestAfterDraining(t *testing.T) {
	t.Parallel()
	t.Run("runs once when the flag is set", func(t *testing.T) {
		t.Parallel()
		var tr Tracker
		var runs atomic.Int32
		ran := make(chan struct{}, 2)
		tr.AfterDraining(func() { runs.Add(1); ran <- struct{}{} })
		notYet(t, ran, "AfterDraining call before SetDraining")
		tr.SetDraining()
		tr.SetDraining()
		recv(t, ran, "AfterDraining call after SetDraining")
		notYet(t, ran, "second AfterDraining call")
		if got := runs.Load(); got != 1 {
			t.Fatalf("want 1 run, got %d", got)
		}
	})
	t.Run("stop prevents the call", func(t *testing.T) {
		t.Parallel()
		var tr Tracker
		ran := make(chan struct{}, 1)
		stop := tr.AfterDraining(func() { ran <- struct{}{} })
		if !stop() {
			t.Fatalf("stop before SetDraining: want true, got false")
		}
		if stop() {
			t.Fatalf("second stop: want false, got true")
		}
		tr.SetDraining()
		notYet(t, ran, "AfterDraining call after stop")
	})
	t.Run("registered after the flag runs at once", func(t *testing.T) {
		t.Parallel()
		var tr Tracker
		tr.SetDraining()
		ran := make(chan struct{}, 1)
		stop := tr.AfterDraining(func() { ran <- struct{}{} })
		recv(t, ran, "AfterDraining call registered after SetDraining")
		if stop() {
			t.Fatalf("stop after the call started: want false, got true")
		}
	})
}

func TestWaitIdleWakesOnLastEnd(t *testing.T) {
	t.Parallel()
	tr, f := newFakeTracker()
	anyTimer := f.TimerAdded()
	r1, r2 := tr.Begin(), tr.Begin()
	tr.SetDraining()
	done := waitIdleAsync(t.Context(), tr, Condition{})
	notYet(t, done, "WaitIdle return with 2 in flight")
	_ = r1.End()
	notYet(t, done, "WaitIdle return with 1 in flight")
	_ = r2.End()
	if err := recv(t, done, "WaitIdle return after the last End"); err != nil {
		t.Fatalf("want nil, got %v", err)
	}
	// The clock never moved and no timer was made: the End woke it.
	if isClosed(anyTimer) {
		t.Fatalf("want no timer made (event-driven wait), got %d pending", f.Timers())
	}
}

func TestWaitIdleWaitsForTheFlag(t *testing.T) {
	t.Parallel()
	tr, _ := newFakeTracker()
	done := waitIdleAsync(t.Context(), tr, Condition{})
	notYet(t, done, "WaitIdle return before SetDraining")
	tr.SetDraining()
	if err := recv(t, done, "WaitIdle return after SetDraining"); err != nil {
		t.Fatalf("want nil, got %v", err)
	}
}

// TestWaitIdleTimeConditions checks each time-based part of Condition: the
// wait must not end one nanosecond before it is due, and must end when it is.
func TestWaitIdleTimeConditions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(tr *Tracker) // before SetDraining at t0
		cond  Condition
		due   time.Duration // after t0
	}{
		{name: "quiet", cond: Condition{Quiet: 100 * time.Millisecond}, due: 100 * time.Millisecond},
		{name: "not before", cond: Condition{NotBefore: t0.Add(time.Second)}, due: time.Second},
		{
			name: "quiet longer than not before",
			cond: Condition{Quiet: 300 * time.Millisecond, NotBefore: t0.Add(100 * time.Millisecond)},
			due:  300 * time.Millisecond,
		},
		{
			name: "not before longer than quiet",
			cond: Condition{Quiet: 100 * time.Millisecond, NotBefore: t0.Add(300 * time.Millisecond)},
			due:  300 * time.Millisecond,
		},
		{
			name:  "long-lived until",
			setup: func(tr *Tracker) { tr.BeginLongLived() },
			cond:  Condition{LongLivedUntil: t0.Add(500 * time.Millisecond)},
			due:   500 * time.Millisecond,
		},
		{
			name:  "long-lived until, then quiet",
			setup: func(tr *Tracker) { tr.BeginLongLived() },
			cond:  Condition{Quiet: time.Second, LongLivedUntil: t0.Add(500 * time.Millisecond)},
			due:   time.Second,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr, f := newFakeTracker()
			if tc.setup != nil {
				tc.setup(tr)
			}
			tr.SetDraining()
			done := waitIdleAsync(t.Context(), tr, tc.cond)
			waitPending(t, f, 1)
			f.Advance(tc.due - time.Nanosecond)
			notYet(t, done, "WaitIdle return 1ns before the condition is due")
			waitPending(t, f, 1)
			f.Advance(time.Nanosecond)
			if err := recv(t, done, "WaitIdle return once the condition is due"); err != nil {
				t.Fatalf("want nil, got %v", err)
			}
		})
	}
}

func TestWaitIdleLateRequestRestartsQuiet(t *testing.T) {
	t.Parallel()
	tr, f := newFakeTracker()
	const quiet = 100 * time.Millisecond
	tr.SetDraining()
	done := waitIdleAsync(t.Context(), tr, Condition{Quiet: quiet})
	waitPending(t, f, 1)
	f.Advance(60 * time.Millisecond)
	r := tr.Begin() // a late request at t0+60ms
	f.Advance(50 * time.Millisecond)
	// t0+110ms: the first quiet window has passed, but a request is in flight.
	notYet(t, done, "WaitIdle return with a request in flight")
	added := f.TimerAdded()
	_ = r.End()
	recv(t, added, "WaitIdle arming a timer for the new quiet window")
	// The window counts from the moment the count reached zero again.
	f.Advance(quiet - time.Nanosecond)
	notYet(t, done, "WaitIdle return before the quiet window after the late request ended")
	f.Advance(time.Nanosecond)
	if err := recv(t, done, "WaitIdle return after the quiet window"); err != nil {
		t.Fatalf("want nil, got %v", err)
	}
}

func TestWaitIdleLongLivedWithoutDeadline(t *testing.T) {
	t.Parallel()
	tr, f := newFakeTracker()
	long := tr.BeginLongLived()
	tr.SetDraining()
	done := waitIdleAsync(t.Context(), tr, Condition{})
	f.Advance(time.Hour)
	notYet(t, done, "WaitIdle return with a long-lived request and no LongLivedUntil")
	_ = long.End()
	if err := recv(t, done, "WaitIdle return after the long-lived End"); err != nil {
		t.Fatalf("want nil, got %v", err)
	}
}

func TestWaitIdleContextEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(tr *Tracker)
	}{
		{name: "flag not set", setup: func(*Tracker) {}},
		{name: "request in flight", setup: func(tr *Tracker) { tr.Begin(); tr.SetDraining() }},
		{name: "quiet window running", setup: func(tr *Tracker) { tr.SetDraining() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr, f := newFakeTracker()
			tc.setup(tr)
			ctx, cancel := context.WithCancel(t.Context())
			done := waitIdleAsync(ctx, tr, Condition{Quiet: time.Second})
			notYet(t, done, "WaitIdle return before cancel")
			cancel()
			if err := recv(t, done, "WaitIdle return after cancel"); !errors.Is(err, context.Canceled) {
				t.Fatalf("want %v, got %v", context.Canceled, err)
			}
			if n := f.Timers(); n != 0 {
				t.Fatalf("want 0 timers left pending after cancel, got %d", n)
			}
		})
	}
}

// TestWaitIdleRacesSetDraining starts WaitIdle while SetDraining runs: the
// quiet window counts from the flag, so WaitIdle must arm a timer, never
// return at once.
func TestWaitIdleRacesSetDraining(t *testing.T) {
	t.Parallel()
	for range 500 {
		tr, f := newFakeTracker()
		ctx, cancel := context.WithCancel(t.Context())
		added := f.TimerAdded()
		start := make(chan struct{})
		go func() { <-start; tr.SetDraining() }()
		done := make(chan error, 1)
		go func() { <-start; done <- tr.WaitIdle(ctx, Condition{Quiet: time.Second}) }()
		close(start)
		select {
		case <-added:
		case err := <-done:
			t.Fatalf("want WaitIdle waiting for the quiet window, got return %v at once", err)
		case <-time.After(waitLong):
			t.Fatalf("want WaitIdle to arm its quiet timer within %v, got nothing", waitLong)
		}
		cancel()
		if err := recv(t, done, "WaitIdle return after cancel"); !errors.Is(err, context.Canceled) {
			t.Fatalf("want %v, got %v", context.Canceled, err)
		}
	}
}

// TestTrackerStress runs many goroutines through Begin and End while the
// flag is set, under -race. Each worker holds one request across all of its
// work, so WaitIdle may only return after every worker has finished. Worker
// 0 sets the flag half-way through and waits for it, so some requests are
// late and some are not.
func TestTrackerStress(t *testing.T) {
	t.Parallel()
	const (
		workers = 16
		perWork = 2000
	)
	var tr Tracker
	var finished, sawDraining atomic.Int64
	holds := make([]Request, workers)
	for k := range holds {
		holds[k] = tr.Begin()
	}
	idle := waitIdleAsync(t.Context(), &tr, Condition{})
	start := make(chan struct{})
	half := make(chan struct{})
	var wg sync.WaitGroup
	for k := range workers {
		wg.Go(func() {
			<-start
			for i := range perWork {
				if k == 0 && i == perWork/2 {
					close(half)
					select {
					case <-tr.Draining():
					case <-time.After(waitLong):
						t.Errorf("want the flag set within %v, got nothing", waitLong)
						return
					}
				}
				var r Request
				if i%97 == 0 {
					r = tr.BeginLongLived()
				} else {
					r = tr.Begin()
				}
				if r.Draining() {
					sawDraining.Add(1)
				}
				if err := r.End(); err != nil {
					t.Errorf("worker %d End %d: want nil, got %v", k, i, err)
					return
				}
			}
			finished.Add(1)
			if err := holds[k].End(); err != nil {
				t.Errorf("worker %d End of its held request: want nil, got %v", k, err)
			}
		})
	}
	wg.Go(func() {
		<-half
		tr.SetDraining()
	})
	close(start)
	if err := recv(t, idle, "WaitIdle return after every request ended"); err != nil {
		t.Fatalf("want nil, got %v", err)
	}
	if got := finished.Load(); got != workers {
		t.Fatalf("when WaitIdle returned: want %d workers finished, got %d", workers, got)
	}
	wg.Wait()
	s := tr.Stats()
	if s.InFlight != 0 || s.LongLived != 0 || s.Misuse != 0 {
		t.Fatalf("want InFlight 0, LongLived 0, Misuse 0, got %+v", s)
	}
	if want := uint32(workers * (perWork + 1)); s.Started != want {
		t.Fatalf("want Started %d, got %d", want, s.Started)
	}
	if got := sawDraining.Load(); s.Late != got {
		t.Fatalf("want Late equal to the %d requests that reported Draining(), got %d", got, s.Late)
	}
	if lo, hi := int64(perWork/2), int64(workers*perWork-perWork/2); s.Late < lo || s.Late > hi {
		t.Fatalf("want Late between %d (worker 0's second half) and %d (all but its first half), got %d", lo, hi, s.Late)
	}
}

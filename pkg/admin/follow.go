package admin

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/lameduck/lameduck/drain"
)

// Follower is the drain.Source of an app followed from another process
// through its admin endpoint: `lameduck offline --admin` and `lameduck
// prestop --admin`. Its Drain asks the app to go offline and waits until
// the app's own protocol reaches Offline; the app drains its own requests
// by its own conditions, so the Condition passed in is not used. When the
// app's protocol ended other than drained (forced at its deadline, say),
// Drain returns a *drain.SourceError carrying the app's outcome and error,
// so the caller reports the app's result, not its own.
type Follower struct {
	Client *Client
	// OnStatus, if not nil, gets each status seen while following, for a
	// progress display. It is called from Drain's goroutines, one at a
	// time.
	OnStatus func(drain.Status)

	mu   sync.Mutex
	last drain.Status
}

// followPoll is how often Drain polls the status for OnStatus, beside its
// long-poll.
const followPoll = 250 * time.Millisecond

// Drain implements drain.Source. One long-poll waits for Offline, so the
// answer arrives even if the app exits right after; a status poll beside
// it feeds OnStatus, and ends Drain too when it sees Offline first (the
// long-poll may be waiting out a 429 from a busy endpoint, which the
// Client retries within ctx).
func (f *Follower) Drain(ctx context.Context, _ drain.Condition) error {
	st, err := f.Client.Offline(ctx)
	if err != nil {
		return err
	}
	f.seen(st)
	type waited struct {
		res WaitResult
		err error
	}
	done := make(chan waited, 1)
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		res, err := f.Client.Wait(wctx, drain.Offline, 0)
		done <- waited{res, err}
	}()
	waiting := true
	defer func() {
		// Leave no long-poll behind when the status poll saw Offline.
		cancel()
		if waiting {
			<-done
		}
	}()
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	for {
		select {
		case w := <-done:
			waiting = false
			if w.err != nil {
				return w.err
			}
			f.seen(w.res.Status)
			return f.outcome(w.res.Status)
		case <-tick.C:
			if s, err := f.Client.Status(ctx); err == nil {
				f.seen(s)
				if s.Phase == drain.Offline {
					return f.outcome(s)
				}
			}
		}
	}
}

// outcome turns the app's final status into Drain's result. An app too old
// to report its outcome counts as drained: it reached Offline.
func (f *Follower) outcome(st drain.Status) error {
	if st.Outcome == "" || st.Outcome == drain.OutcomeDrained {
		return nil
	}
	var err error
	if st.Error != "" {
		err = errors.New(st.Error)
	}
	return &drain.SourceError{Source: f.String(), Outcome: st.Outcome, Err: err}
}

func (f *Follower) seen(st drain.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = st
	if f.OnStatus != nil {
		f.OnStatus(st)
	}
}

// Last returns the last status Drain saw (the zero value before any).
func (f *Follower) Last() drain.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// String names the app as a drain.Source.
func (f *Follower) String() string { return "the app at " + f.Client.base }

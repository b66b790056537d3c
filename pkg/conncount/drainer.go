package conncount

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/lameduck/lameduck/drain"
)

// DefaultPoll is how often a Drainer counts the port's connections.
const DefaultPoll = 10 * time.Millisecond

// Drainer is the drain.Source of an app that does not link lameduck: its
// port's connections, seen through the kernel. Plain `lameduck prestop`
// and `lameduck run` drain through it. Drain waits until no connection
// carries a request and none has arrived for the Condition's quiet window
// (WaitIdle), after the Condition's NotBefore.
//
// With Bounded, MaxWait bounds the wait: once it has passed, the requests
// still running are left to the app's own graceful shutdown after SIGTERM,
// which is not a failure: Drain returns nil and Left says how many. A
// MaxWait of 0 takes one look and does not wait. Without Bounded only the
// drain's share of the budget (Drain's ctx) ends the wait, as a cut drain.
type Drainer struct {
	Counter *Counter
	MaxWait time.Duration
	Bounded bool
	// Every is the poll interval; DefaultPoll when 0.
	Every time.Duration
	// OnProgress, if not nil, gets a line when the wait starts (what is
	// counted, and how many connections there are) and when it ends.
	OnProgress func(string)
	// OnLeft, if not nil, is called with the number of busy connections
	// when MaxWait passed with some still busy, before Drain returns.
	OnLeft func(busy int)

	left      atomic.Int64
	busy      atomic.Int64
	consumers drain.Consumers
}

// Consumers is the Drainer's attribution of late requests to consumers,
// by the remote IPs of the connections they arrive on (sock_diag only: the
// /proc fallback does not say when data arrived). A request is seen at
// most once per connection and poll, so back-to-back requests on one
// connection within a poll count as one. The coordinator starts it; the
// Drainer sees requests only from the Draining phase on, so none count as
// before the confirmation.
func (d *Drainer) Consumers() *drain.Consumers { return &d.consumers }

var _ drain.ConsumerSource = (*Drainer)(nil)

// errMaxWait is the cause of the wait's end when MaxWait passed.
var errMaxWait = errors.New("conncount: the connection wait passed")

// Drain implements drain.Source.
func (d *Drainer) Drain(ctx context.Context, cond drain.Condition) error {
	c := d.Counter
	say := func(format string, args ...any) {
		if d.OnProgress != nil {
			d.OnProgress(fmt.Sprintf(format, args...))
		}
	}
	left := func(n int) error {
		d.left.Store(int64(max(n, 0)))
		if n > 0 && d.OnLeft != nil {
			d.OnLeft(n)
		}
		if n > 0 {
			say("the connection wait (%v) passed; %d connections on port %d still carry requests, "+
				"left to the app's graceful shutdown after SIGTERM", d.MaxWait, n, c.port)
		}
		return nil
	}
	a, err := c.Activity(ctx)
	if err != nil {
		return err
	}
	if d.Bounded && d.MaxWait == 0 {
		return left(a.Busy) // no wait: one look, for the report
	}
	if a.Timed {
		say("waiting for the requests on port %d to end: %d connections, %d busy", c.port, a.Established, a.Busy)
	} else {
		say("waiting for the %d established connections on port %d to close "+
			"(the kernel does not say which carry requests here; a connection wait bounds this)", a.Established, c.port)
	}
	wctx := ctx
	if d.Bounded {
		var cancel context.CancelCauseFunc
		wctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		t := c.clock.AfterFunc(d.MaxWait, func() { cancel(errMaxWait) })
		defer t.Stop()
	}
	if wait := cond.NotBefore.Sub(c.clock.Now()); wait > 0 {
		t := c.clock.NewTimer(wait)
		select {
		case <-wctx.Done():
		case <-t.C():
		}
		t.Stop()
	}
	every := d.Every
	if every <= 0 {
		every = DefaultPoll
	}
	err = c.waitIdle(wctx, cond.Quiet, every, watchHooks{
		saw:    func(ip netip.Addr, at time.Time) { d.consumers.Saw(ip.Unmap().String(), at) },
		polled: func(busy int) { d.busy.Store(int64(busy)) },
	})
	var ni *NotIdleError
	if errors.As(err, &ni) && ctx.Err() == nil && errors.Is(context.Cause(wctx), errMaxWait) {
		return left(ni.Conns)
	}
	if err == nil {
		say("no request on port %d for %v", c.port, cond.Quiet)
	}
	return err
}

// Busy returns how many connections carried a request at the last poll
// of a Drain; cheap enough to read on a timer (a report's curve).
func (d *Drainer) Busy() int { return int(d.busy.Load()) }

// Left returns how many busy connections the last Drain left to the app's
// own shutdown when the connection wait passed.
func (d *Drainer) Left() int { return int(d.left.Load()) }

// String names the port as a drain.Source.
func (d *Drainer) String() string { return fmt.Sprintf("connections on port %d", d.Counter.port) }

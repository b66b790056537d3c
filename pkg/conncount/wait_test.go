package conncount

import (
	"context"
	"errors"
	"io/fs"
	"strconv"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// TestWaitIdle drives WaitIdle on a fake clock. Before each poll the test
// rewrites the fixture table to hold the next count, then advances the clock
// until WaitIdle's timer fires.
func TestWaitIdle(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	tests := []struct {
		name         string
		quiet, every time.Duration
		step         time.Duration // clock advance per step; default every
		counts       []int         // the count each poll sees, in order
		cancelAfter  int           // cancel ctx after this many polls instead of advancing; 0 never
		wantAt       time.Duration // fake time at which WaitIdle returns nil
	}{
		{name: "quiet 0 returns on first idle poll", quiet: 0, every: 100 * ms, counts: []int{0}, wantAt: 0},
		{name: "quiet 0 after busy polls", quiet: 0, every: 100 * ms, counts: []int{2, 1, 0}, wantAt: 200 * ms},
		{name: "idle from the start", quiet: 300 * ms, every: 100 * ms, counts: []int{0, 0, 0, 0}, wantAt: 300 * ms},
		{name: "busy then idle", quiet: 300 * ms, every: 100 * ms, counts: []int{3, 1, 0, 0, 0, 0}, wantAt: 500 * ms},
		{name: "a busy poll restarts the window", quiet: 300 * ms, every: 100 * ms, counts: []int{0, 0, 2, 0, 0, 0, 0}, wantAt: 600 * ms},
		{name: "last poll lands on the window's end", quiet: 250 * ms, every: 100 * ms, step: 10 * ms, counts: []int{0, 0, 0, 0}, wantAt: 250 * ms},
		{name: "quiet shorter than every", quiet: 30 * ms, every: 100 * ms, step: 10 * ms, counts: []int{1, 0, 0}, wantAt: 130 * ms},
		{name: "cancel while busy", quiet: 100 * ms, every: 100 * ms, counts: []int{4, 2, 2}, cancelAfter: 3},
		{name: "cancel while idle but short of quiet", quiet: time.Second, every: 100 * ms, counts: []int{1, 0, 0}, cancelAfter: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			step := tt.step
			if step == 0 {
				step = tt.every
			}
			dir := t.TempDir()
			setCount(t, dir, tt.counts[0])
			f := clock.NewFake(t0)
			c, err := New(8080, WithProcRoot(dir), withClock(f))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()

			added := f.TimerAdded()
			done := make(chan error, 1)
			go func() { done <- c.WaitIdle(ctx, tt.quiet, tt.every) }()
			for polls := 1; ; polls++ {
				// Poll number polls has run; WaitIdle has either returned
				// or armed the timer for the next one.
				select {
				case err := <-done:
					at := f.Now().Sub(t0)
					if tt.cancelAfter != 0 || err != nil || polls != len(tt.counts) || at != tt.wantAt {
						t.Fatalf("want nil after poll %d at %v, got %v after poll %d at %v (counts %v)",
							len(tt.counts), tt.wantAt, err, polls, at, tt.counts)
					}
					return
				case <-added:
				case <-time.After(waitLong):
					t.Fatalf("after poll %d: want WaitIdle to return or arm a timer within %v, got neither", polls, waitLong)
				}
				if polls == tt.cancelAfter {
					cancel()
					err := recv(t, done, "WaitIdle to return after cancel")
					var ni *NotIdleError
					last := tt.counts[polls-1]
					if !errors.As(err, &ni) || !errors.Is(err, context.Canceled) || ni.Conns != last || ni.Port != 8080 {
						t.Fatalf("want *NotIdleError{Port: 8080, Conns: %d} wrapping context.Canceled, got %#v", last, err)
					}
					return
				}
				if polls == len(tt.counts) {
					t.Fatalf("want nil after poll %d at %v, got a timer armed after it at %v", polls, tt.wantAt, f.Now().Sub(t0))
				}
				setCount(t, dir, tt.counts[polls])
				added = f.TimerAdded()
				// Advance until the armed timer fires; stop as soon as it
				// has, even if WaitIdle has already armed the next one, or
				// the next poll would run before its fixture is written.
				for i := 0; f.Timers() > 0 && !closed(added); i++ {
					if i == 1000 {
						t.Fatalf("after poll %d: timer still pending after advancing %v", polls, 1000*step)
					}
					f.Advance(step)
				}
			}
		})
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// setCount rewrites dir's tables to hold n ESTABLISHED connections to port
// 8080, among sockets that do not count.
func setCount(t *testing.T, dir string, n int) {
	t.Helper()
	socks := []sock{
		{"0.0.0.0:8080", "0.0.0.0:0", stateListen},
		{"10.0.0.5:8080", "10.0.0.9:50001", 0x06},                   // TIME_WAIT
		{"10.0.0.5:40000", "10.0.0.9:8080", stateEstablished},       // outbound
		{"[::ffff:10.0.0.5]:8080", "[::ffff:10.0.0.9]:50002", 0x08}, // CLOSE_WAIT
	}
	for i := range n {
		remote := "10.0.0.9:" + strconv.Itoa(41000+i)
		if i%2 == 1 {
			remote = "[fd00::9]:" + strconv.Itoa(41000+i)
			socks = append(socks, sock{"[fd00::2]:8080", remote, stateEstablished})
			continue
		}
		socks = append(socks, sock{"10.0.0.5:8080", remote, stateEstablished})
	}
	tcp, tcp6 := tables(t, socks...)
	writeTables(t, dir, tcp, tcp6)
}

func TestWaitIdleRejects(t *testing.T) {
	t.Parallel()
	c, err := New(8080, WithProcRoot(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name         string
		ctx          context.Context
		quiet, every time.Duration
		check        func(error) bool
		want         string
	}{
		{name: "zero interval", ctx: t.Context(), every: 0, want: "conncount: poll interval 0s is not positive",
			check: func(err error) bool {
				return err != nil && err.Error() == "conncount: poll interval 0s is not positive"
			}},
		{name: "negative quiet", ctx: t.Context(), quiet: -1, every: time.Second, want: "conncount: quiet window -1ns is negative",
			check: func(err error) bool { return err != nil && err.Error() == "conncount: quiet window -1ns is negative" }},
		{name: "missing tables", ctx: t.Context(), every: time.Second, want: "an error wrapping fs.ErrNotExist, not *NotIdleError",
			check: func(err error) bool {
				var ni *NotIdleError
				return errors.Is(err, fs.ErrNotExist) && !errors.As(err, &ni)
			}},
		{name: "cancelled before the first poll", ctx: ctx, every: time.Second, want: "*NotIdleError{Conns: -1}",
			check: func(err error) bool {
				var ni *NotIdleError
				return errors.As(err, &ni) && ni.Conns == -1 && errors.Is(err, context.Canceled)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := c.WaitIdle(tt.ctx, tt.quiet, tt.every); !tt.check(err) {
				t.Fatalf("want %s, got %v", tt.want, err)
			}
		})
	}
}

//go:build linux

// Linux only: these tests run real children under the supervisor.

package supervisor

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/pkg/probe"
)

func neverReady(*harness) probe.Check {
	return func(context.Context, int) error { return errors.New("not yet") }
}

// Readiness checks back off: 100ms at first, doubling, capped at 2s, each
// within the 20% jitter.
func TestReadyChecksBackOff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noAdvance: true, ready: neverReady})
	h.run()
	for k := range 10 {
		e := h.next(EventNotReady)
		nominal := min(DefaultCheckInterval<<k, DefaultReadyMaxInterval)
		lo, hi := time.Duration(float64(nominal)*0.8), min(time.Duration(float64(nominal)*1.2), DefaultReadyMaxInterval)
		if e.Delay < lo || e.Delay > hi {
			t.Fatalf("not-ready %d: want a delay in [%v, %v], got %v", k, lo, hi, e.Delay)
		}
		h.clk.Advance(e.Delay)
	}
}

// A child that never becomes ready is killed at the ready timeout, counts
// as a failed start, and is given up on like a crash loop: the time spent
// starting does not decay the failure count, so a 10s timeout gives up
// after six starts (threshold 5), as six crashes in a row would.
func TestReadyTimeoutGivesUp(t *testing.T) {
	t.Parallel()
	var clk *clock.Fake
	h := newHarness(t, harnessOpts{
		ready:       neverReady,
		supervisorO: []Option{WithReadyTimeout(10 * time.Second)},
		onEvent: func(e Event) {
			if e.Kind == EventBackoff {
				clk.Advance(e.Delay) // the timer is armed before the event
			}
		},
	})
	clk = h.clk
	h.run()
	starts, kills := 0, 0
	for {
		e := h.nextOf(EventStarted, EventSignaled, EventExited, EventRegistered, EventGaveUp)
		switch e.Kind {
		case EventStarted:
			if starts++; starts > 20 {
				t.Fatalf("want Run to give up, got %d starts; failures decay while copies start?", starts)
			}
		case EventSignaled:
			if e.Signal != syscall.SIGKILL {
				t.Fatalf("want SIGKILL for a copy not ready in time, got %v", e.Signal)
			}
			kills++
		case EventExited:
			var ee *ExitError
			if !errors.As(e.Err, &ee) || !errors.Is(e.Err, ErrReadyTimeout) || !strings.Contains(e.Err.Error(), "not ready within 10s (last check: not yet), killed by signal 9") {
				t.Fatalf("want an *ExitError wrapping ErrReadyTimeout with the last check's error, got %v", e.Err)
			}
		case EventRegistered:
			t.Fatal("registered a child that never became ready")
		}
		if e.Kind == EventGaveUp {
			break
		}
	}
	err := h.result()
	var gave *GaveUpError
	if !errors.As(err, &gave) || !errors.Is(err, ErrReadyTimeout) {
		t.Fatalf("want a *GaveUpError wrapping ErrReadyTimeout, got %v", err)
	}
	if starts != 6 || kills != 6 {
		t.Errorf("want 6 starts, each killed at the ready timeout, before giving up at threshold 5; got %d starts and %d kills (failure count %.2f)", starts, kills, gave.Failures)
	}
}

// The same with a real clock and a real child that serves but never passes
// its check (404): killed at the timeout, given up on, nothing left.
func TestReadyTimeoutRealChild(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{
		realClock: true,
		ready:     func(h *harness) probe.Check { return probe.HTTP(h.url + "/nope") },
		supervisorO: []Option{
			WithReadyTimeout(300 * time.Millisecond),
			WithRestartIntensity(1, time.Hour),
			WithBackoff(10*time.Millisecond, 10*time.Millisecond),
		},
	})
	h.run()
	err := h.result()
	var gave *GaveUpError
	if !errors.As(err, &gave) || !errors.Is(err, ErrReadyTimeout) || !strings.Contains(err.Error(), "not ready within 300ms") {
		t.Fatalf("want a *GaveUpError wrapping ErrReadyTimeout, got %v", err)
	}
	h.mu.Lock()
	n := len(h.pids)
	h.mu.Unlock()
	if n != 2 {
		t.Errorf("want 2 starts before giving up at threshold 1, got %d; events: %s", n, h.history())
	}
	// The harness's cleanup checks that no process group is left.
}

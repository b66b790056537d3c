package drain

import (
	"context"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

const (
	// waitLong bounds every wait for something that must happen.
	waitLong = 5 * time.Second
	// waitShort is how long a test watches for something that must not
	// happen. It is a real-time window, not a synchronisation point.
	waitShort = 50 * time.Millisecond
)

// t0 is where every fake clock starts.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// recv waits for ch to deliver (or close) and returns the value.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLong):
		t.Fatalf("want %s within %v, got nothing", what, waitLong)
		panic("unreachable")
	}
}

// notYet fails if ch delivers (or is closed) within waitShort.
func notYet[T any](t testing.TB, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("want no %s within %v, got one (%v)", what, waitShort, v)
	case <-time.After(waitShort):
	}
}

// isClosed reports whether ch is closed, without blocking.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitPending waits until exactly n timers are pending on f: the code under
// test has armed the timers it waits on, so advancing f will fire them.
func waitPending(t testing.TB, f *clock.Fake, n int) {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		added := f.TimerAdded()
		if got := f.Timers(); got == n {
			return
		}
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("want %d pending timers within %v, got %d", n, waitLong, f.Timers())
		}
	}
}

// waitIdleAsync runs tr.WaitIdle in its own goroutine and delivers its result.
func waitIdleAsync(ctx context.Context, tr *Tracker, c Condition) <-chan error {
	done := make(chan error, 1)
	go func() { done <- tr.WaitIdle(ctx, c) }()
	return done
}

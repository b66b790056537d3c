package supervisor

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdConnection opens a keep-alive connection to url and leaves it idle in
// its pool, as a consumer's connection pool does, until the test ends.
func holdConnection(t *testing.T, url string) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	resp, err := (&http.Client{Transport: tr, Timeout: wait}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// A consumer that holds its connection open would keep the offline waiting
// until the deadline (55s with this budget); with WithConnWait the wait
// ends once the conn wait has passed, the open connection is reported, and
// the child, which drains itself on SIGTERM, exits cleanly.
func TestConnWaitEndsWithConnectionOpen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		wait time.Duration
	}{
		{"50ms", 50 * time.Millisecond},
		{"0 means no wait", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOpts{
				realClock:   true,
				supervisorO: []Option{WithBudget(time.Minute), WithConnWait(tc.wait)},
			})
			h.run()
			h.next(EventRegistered)
			holdConnection(t, h.url+"/healthz")
			h.cancel()
			busy := h.nextOf(EventConnsBusy, EventSignaled)
			if busy.Kind != EventConnsBusy {
				t.Fatalf("want conns-busy before SIGTERM, got %v; events: %s", busy.Kind, h.history())
			}
			if !errors.Is(busy.Err, ErrConnWait) {
				t.Fatalf("want the conns-busy error to wrap ErrConnWait (the conn wait ended the wait, not the deadline), got %v", busy.Err)
			}
			if !strings.Contains(busy.Err.Error(), "1 on port") {
				t.Errorf("want the report to count the 1 open connection, got %q", busy.Err)
			}
			if e := h.next(EventSignaled); e.Signal != syscall.SIGTERM {
				t.Fatalf("want SIGTERM after the conn wait, got %v", e.Signal)
			}
			ex := h.next(EventExited)
			if ex.Code != 0 || ex.Err != nil {
				t.Fatalf("want the child's clean exit after SIGTERM, got code %d signal %v err %v", ex.Code, ex.Signal, ex.Err)
			}
			if err := h.result(); err != nil {
				t.Fatalf("want nil from Run, got %v", err)
			}
		})
	}
}

// With no connection open, the conn wait changes nothing: the quiet window
// ends the wait and nothing is reported.
func TestConnWaitIdlePortReportsNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{
		realClock:   true,
		supervisorO: []Option{WithBudget(time.Minute), WithConnWait(time.Minute)},
	})
	h.run()
	h.next(EventRegistered)
	h.cancel()
	if e := h.nextOf(EventConnsBusy, EventSignaled); e.Kind != EventSignaled || e.Signal != syscall.SIGTERM {
		t.Fatalf("want SIGTERM with no conns-busy report, got %v (%v); events: %s", e.Kind, e.Err, h.history())
	}
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run, got %v", err)
	}
}

func TestConnWaitNegativeRejected(t *testing.T) {
	t.Parallel()
	_, err := New(Spec{Path: "x"}, WithConnWait(-time.Second))
	if err == nil || !strings.Contains(err.Error(), "must not be negative") {
		t.Fatalf("want an error saying durations must not be negative, got %v", err)
	}
}

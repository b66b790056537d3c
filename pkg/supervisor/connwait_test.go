//go:build linux

// Linux only: these tests run real children under the supervisor.

package supervisor

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/conncount"
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

// startSlow sends GET /slow?ms=... to the child and waits until the kernel
// shows its connection busy; the answer's status comes on the channel.
func startSlow(t *testing.T, h *harness, ms int) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: wait}).Get(h.url + "/slow?ms=" + strconv.Itoa(ms))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		done <- err
	}()
	c, err := conncount.New(h.inst.Port)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		a, err := c.Activity(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if a.Busy == 1 {
			return done
		}
		if time.Now().After(deadline) {
			t.Fatalf("want the slow request's connection busy within %v, got %+v", wait, a)
		}
		time.Sleep(time.Millisecond)
	}
}

// A request that runs longer than the conn wait: the wait ends once the
// conn wait has passed, the running request is reported, and the child,
// which drains itself on SIGTERM, answers it and exits cleanly.
func TestConnWaitEndsWithRequestRunning(t *testing.T) {
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
			slow := startSlow(t, h, 1500)
			h.cancel()
			// The wait is the Draining phase's: conns-busy comes after
			// Draining begins and before Stopping (and SIGTERM).
			draining := false
			var busy recorded
			for {
				busy = h.nextOf(EventConnsBusy, EventSignaled, EventDrain)
				if busy.Kind != EventDrain {
					break
				}
				if busy.Drain.Kind == drain.EventPhase {
					if busy.Drain.Phase == drain.Stopping {
						t.Fatalf("want conns-busy during Draining, got Stopping first; events: %s", h.history())
					}
					draining = draining || busy.Drain.Phase == drain.Draining
				}
			}
			if busy.Kind != EventConnsBusy || !draining {
				t.Fatalf("want conns-busy during Draining, before SIGTERM, got %v (Draining begun: %v); events: %s", busy.Kind, draining, h.history())
			}
			if !errors.Is(busy.Err, ErrConnWait) {
				t.Fatalf("want the conns-busy error to wrap ErrConnWait (the conn wait ended the wait, not the deadline), got %v", busy.Err)
			}
			if !strings.Contains(busy.Err.Error(), "1 on port") {
				t.Errorf("want the report to count the 1 running request, got %q", busy.Err)
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
			if err := <-slow; err != nil {
				t.Fatalf("want the slow request answered by the child's graceful shutdown, got %v", err)
			}
		})
	}
}

// Without a conn wait, the offline waits for a running request, however
// long, and SIGTERM follows its answer; nothing is reported.
func TestConnWaitForRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{realClock: true, supervisorO: []Option{WithBudget(time.Minute)}})
	h.run()
	h.next(EventRegistered)
	slow := startSlow(t, h, 300)
	h.cancel()
	if e := h.nextOf(EventConnsBusy, EventSignaled); e.Kind != EventSignaled || e.Signal != syscall.SIGTERM {
		t.Fatalf("want SIGTERM with no conns-busy report, got %v (%v); events: %s", e.Kind, e.Err, h.history())
	}
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run, got %v", err)
	}
	if err := <-slow; err != nil {
		t.Fatalf("want the slow request answered, got %v", err)
	}
	out := h.out.String()
	answered, termed := strings.Index(out, "slow answered"), strings.Index(out, "got SIGTERM")
	if answered < 0 || termed < 0 || answered > termed {
		t.Fatalf("want the child to answer the slow request before it got SIGTERM; output:\n%s", out)
	}
}

// An idle keep-alive connection, as a consumer's pool holds, carries no
// request: it does not hold the offline up, without a conn wait, and the
// child's graceful shutdown closes it.
func TestIdleKeepAliveDoesNotHoldOffline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{realClock: true, supervisorO: []Option{WithBudget(time.Minute)}})
	h.run()
	h.next(EventRegistered)
	holdConnection(t, h.url+"/healthz")
	h.cancel()
	if e := h.nextOf(EventConnsBusy, EventSignaled); e.Kind != EventSignaled || e.Signal != syscall.SIGTERM {
		t.Fatalf("want SIGTERM with no conns-busy report, got %v (%v); events: %s", e.Kind, e.Err, h.history())
	}
	if err := h.result(); err != nil {
		t.Fatalf("want nil from Run, got %v", err)
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

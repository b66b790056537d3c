//go:build linux

// Linux only: these tests run real children under the supervisor.

package supervisor

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
)

// nextAt returns the next event of kind k about the copy on port. Events
// it reads past are kept for later nextAt calls, since the two copies'
// events interleave in no fixed order.
func (h *harness) nextAt(k EventKind, port int) recorded {
	h.t.Helper()
	h.mu.Lock()
	exited := maps.Clone(h.exitedPIDs)
	h.mu.Unlock()
	for i, e := range h.backlog {
		// A copy's life events are stale once it has exited: a later
		// nextAt wants its successor's.
		stale := exited[e.PID] && k != EventExited && k != EventDeregistered && k != EventBackoff && k != EventRecycled
		if e.Kind == k && e.Port == port && !stale {
			h.backlog = slices.Delete(h.backlog, i, i+1)
			return e
		}
	}
	timeout := time.After(wait)
	for {
		select {
		case e := <-h.events:
			h.note(e)
			if e.Kind == k && e.Port == port {
				return e
			}
			h.backlog = append(h.backlog, e)
		case <-timeout:
			h.t.Fatalf("want event %v on port %d within %v, got none; events so far: %s", k, port, wait, h.history())
		}
	}
}

func TestStandbyPromotedWhenActiveDies(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{standby: true, supervisorO: []Option{WithStandby()}})
	a, b := h.inst.Port, h.port2
	h.run()
	h.nextAt(EventReady, b)
	if reg := h.nextAt(EventRegistered, a); !slices.Equal(reg.ports, []int{a}) {
		t.Fatalf("want only the active copy (port %d) registered, got ports %v", a, reg.ports)
	}
	for _, e := range append(h.backlog, h.drainEvents()...) {
		if e.Kind == EventRegistered && e.Port == b {
			t.Fatalf("the standby was registered while the active copy served; events: %s", h.history())
		}
	}

	h.get("/crash")
	ex := h.nextAt(EventExited, a)
	if ex.Code != 3 {
		t.Fatalf("want the active copy's exit code 3, got %d", ex.Code)
	}
	pr := h.nextAt(EventPromoted, b)
	if !slices.Contains(pr.ports, b) {
		t.Fatalf("want the standby (port %d) visible when promoted, got ports %v", b, pr.ports)
	}
	h.nextAt(EventDeregistered, a)
	bo := h.nextAt(EventBackoff, a)
	h.clk.Advance(bo.Delay)
	st := h.nextAt(EventStarted, a)
	if st.Restarts != 1 {
		t.Fatalf("want Restarts 1 for the dead copy's replacement, got %d", st.Restarts)
	}
	// The dead copy comes back as the new standby: ready, not registered.
	if rd := h.nextAt(EventReady, a); !slices.Equal(rd.ports, []int{b}) {
		t.Fatalf("want the new standby unregistered (only port %d visible), got %v", b, rd.ports)
	}

	// The new standby takes over when the promoted copy dies in turn.
	h.getAt(h.url2, "/crash")
	h.nextAt(EventExited, b)
	if pr := h.nextAt(EventPromoted, a); !slices.Contains(pr.ports, a) {
		t.Fatalf("want port %d promoted back, got ports %v", a, pr.ports)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
	if got := h.visiblePorts(); len(got) != 0 {
		t.Fatalf("want nothing registered after Run, got ports %v", got)
	}
}

func TestStandbyCrashLeavesActiveAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{standby: true, supervisorO: []Option{WithStandby()}})
	a, b := h.inst.Port, h.port2
	h.run()
	h.nextAt(EventReady, b)
	first := h.nextAt(EventRegistered, a)
	h.getAt(h.url2, "/crash")
	ex := h.nextAt(EventExited, b)
	var ee *ExitError
	if !errors.As(ex.Err, &ee) {
		t.Fatalf("want a standby's crash to count as a failure, got %v", ex.Err)
	}
	bo := h.nextAt(EventBackoff, b)
	if bo.Failures != 1 || !slices.Equal(bo.ports, []int{a}) {
		t.Fatalf("want failure count 1 and the active copy still the only one visible, got %g and %v", bo.Failures, bo.ports)
	}
	h.clk.Advance(bo.Delay)
	h.nextAt(EventReady, b)
	for _, e := range append(h.backlog, h.drainEvents()...) {
		if (e.Kind == EventDeregistered || e.Kind == EventPromoted) && e.Port == a {
			t.Fatalf("the active copy was touched by the standby's crash: %v; events: %s", e.Kind, h.history())
		}
	}
	if got := h.visiblePorts(); !slices.Equal(got, []int{a}) || first.PID == 0 {
		t.Fatalf("want the active copy (port %d) still registered, got %v", a, got)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
}

// recycleEvents follows a run until n copies were recycled. It fails if at
// any event after the first registration no instance was visible: a
// recycle must never leave the service without an instance.
func recycleEvents(t *testing.T, h *harness, n int) (recycled []recorded) {
	t.Helper()
	h.next(EventRegistered)
	for len(recycled) < n {
		e := h.nextOf(EventRecycled, EventExited, EventDeregistered, EventPromoted, EventRecycling, EventRegistered, EventBackoff)
		if e.visible == 0 {
			t.Fatalf("no instance visible at %v (port %d); events: %s", e.Kind, e.Port, h.history())
		}
		switch e.Kind {
		case EventBackoff:
			t.Fatalf("a recycle counted as a failure: %v; events: %s", e.Err, h.history())
		case EventRecycled:
			if e.Err != nil {
				t.Fatalf("want a clean offline of the recycled copy, got %v", e.Err)
			}
			recycled = append(recycled, e)
		}
	}
	return recycled
}

func TestRecycleByAge(t *testing.T) {
	t.Parallel()
	for _, standby := range []bool{false, true} {
		name := "without standby"
		if standby {
			name = "with standby"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			opts := []Option{WithRecycle(400*time.Millisecond, 0), withRecycleInterval(20 * time.Millisecond)}
			if standby {
				opts = append(opts, WithStandby())
			}
			h := newHarness(t, harnessOpts{standby: true, realClock: true, supervisorO: opts})
			h.run()
			recycled := recycleEvents(t, h, 3)
			// The active copy alternates between the two ports.
			ports := map[int]bool{}
			for _, e := range recycled {
				ports[e.Port] = true
			}
			if len(ports) != 2 {
				t.Fatalf("want recycles on both ports, got %v; events: %s", ports, h.history())
			}
			if err := h.stop(); err != nil {
				t.Fatalf("want nil from Run after cancel, got %v", err)
			}
			if !strings.Contains(h.history(), "recycling") {
				t.Fatalf("want recycling events, got %s", h.history())
			}
		})
	}
}

func TestRecycleByMemory(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{standby: true, realClock: true, supervisorO: []Option{
		WithStandby(), WithRecycle(0, 200<<20), withRecycleInterval(20 * time.Millisecond),
	}})
	a, b := h.inst.Port, h.port2
	h.run()
	h.nextAt(EventReady, b)
	h.nextAt(EventRegistered, a)
	h.get("/leak?mb=256")
	rc := h.nextAt(EventRecycling, a)
	if !errors.Is(rc.Err, ErrRecycleRSS) || !strings.Contains(rc.Err.Error(), "resident memory") {
		t.Fatalf("want a memory reason, got %v", rc.Err)
	}
	if pr := h.nextAt(EventPromoted, b); !slices.Contains(pr.ports, b) {
		t.Fatalf("want the standby visible once promoted, got %v", pr.ports)
	}
	done := h.nextAt(EventRecycled, a)
	if done.Err != nil || !slices.Equal(done.ports, []int{b}) {
		t.Fatalf("want a clean offline leaving only port %d visible, got err %v, ports %v", b, done.Err, done.ports)
	}
	// The recycled slot comes back as a fresh standby.
	h.nextAt(EventStarted, a)
	if rd := h.nextAt(EventReady, a); !slices.Equal(rd.ports, []int{b}) {
		t.Fatalf("want the fresh standby unregistered, got ports %v; events %s", rd.ports, h.history())
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
}

func TestForceCutsOfflineShort(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{mode: "ignore-term", realClock: true, supervisorO: []Option{WithBudget(time.Hour), WithStopGrace(time.Minute)}})
	h.run()
	h.next(EventRegistered)
	h.cancel()
	if e := h.next(EventSignaled); e.Signal != syscall.SIGTERM {
		t.Fatalf("want SIGTERM first, got %v", e.Signal)
	}
	h.sup.Force()
	if e := h.next(EventSignaled); e.Signal != syscall.SIGKILL {
		t.Fatalf("want SIGKILL after Force, got %v", e.Signal)
	}
	err := h.result()
	if !errors.Is(err, drain.ErrForced) {
		t.Fatalf("want an error wrapping drain.ErrForced, got %v", err)
	}
}

func TestRegistryOutageRetriesRegistration(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.reg.SetFault(errors.New("registry down"))
	h.run()
	h.next(EventReady)
	for k := 0; k < 3; k++ {
		e := h.next(EventRegistryRetry)
		if e.Err == nil || !strings.Contains(e.Err.Error(), "registry down") {
			t.Fatalf("want the registry's error in the retry event, got %v", e.Err)
		}
		if k == 2 {
			h.reg.SetFault(nil)
		}
		h.clk.Advance(e.Delay)
	}
	if e := h.next(EventRegistered); !slices.Equal(e.ports, []int{h.inst.Port}) {
		t.Fatalf("want the instance registered once the registry is back, got ports %v", e.ports)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run after cancel, got %v", err)
	}
}

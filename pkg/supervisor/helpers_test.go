//go:build linux

// Linux only: these tests run real children under the supervisor.

package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/registry"
)

// wait bounds every wait in these tests.
const wait = 20 * time.Second

var childBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "supervisor-child-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	childBin = filepath.Join(dir, "child")
	out, err := exec.Command("go", "build", "-o", childBin, "./testdata/child").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build test child: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// recorded is an event with what consumers of the service saw at the moment
// the hook was called.
type recorded struct {
	Event
	visible    int
	ports      []int           // the ports of the visible instances
	timerAdded <-chan struct{} // closed when the next timer after the event is armed
}

type harness struct {
	t       *testing.T
	clk     *clock.Fake
	reg     *memory.Registry
	inst    registry.Instance
	url     string // the first copy's base URL
	url2    string // the second copy's, with standby
	port2   int
	out     *syncBuffer
	events  chan recorded
	backlog []recorded // read past by nextAt, for a later nextAt

	mu         sync.Mutex
	pids       []int
	seen       []string
	exitedPIDs map[int]bool

	sup    *Supervisor
	cancel context.CancelFunc
	runErr chan error
}

type harnessOpts struct {
	mode        string
	args        []string                     // more arguments for the child
	ready       func(h *harness) probe.Check // default probe.HTTP of /healthz
	noAdvance   bool                         // do not advance the clock on EventNotReady
	noRegistry  bool
	standby     bool        // a second port: Spec.StandbyPort, {port} in the args and the check
	realClock   bool        // the real clock, for tests driven by recycling's ticks
	onEvent     func(Event) // called synchronously from the hook, first
	spec        func(*Spec) // changes the spec last
	supervisorO []Option
}

// newHarness builds a supervisor over the test child and the memory
// registry. Unless noAdvance, the fake clock moves by the check interval
// each time readiness fails, so readiness polling runs at full speed.
func newHarness(t *testing.T, ho harnessOpts) *harness {
	t.Helper()
	reg, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	h := &harness{
		t:      t,
		clk:    clock.NewFake(time.Unix(1_700_000_000, 0)),
		reg:    reg,
		inst:   registry.Instance{Service: "web", Address: "127.0.0.1", Port: port},
		url:    fmt.Sprintf("http://127.0.0.1:%d", port),
		out:    &syncBuffer{},
		events: make(chan recorded, 1000),
		runErr: make(chan error, 1),
	}
	if ho.mode == "" {
		ho.mode = "serve"
	}
	spec := Spec{
		Name: "web",
		Path: childBin,
		Args: append([]string{"-mode=" + ho.mode, "-addr=127.0.0.1:" + strconv.Itoa(port)}, ho.args...),
	}
	check := probe.HTTP(h.url + "/healthz")
	if ho.standby {
		h.port2 = freePort(t)
		h.url2 = fmt.Sprintf("http://127.0.0.1:%d", h.port2)
		spec.StandbyPort = h.port2
		spec.Args[1] = "-addr=127.0.0.1:" + probe.PortPlaceholder
		check = probe.HTTP("http://127.0.0.1:" + probe.PortPlaceholder + "/healthz")
	}
	if !ho.noRegistry {
		spec.Instance, spec.Registries = h.inst, []registry.Registry{reg}
	}
	if ho.ready != nil {
		spec.Ready = ho.ready(h)
	} else {
		spec.Ready = check
	}
	if ho.spec != nil {
		ho.spec(&spec)
	}
	hook := func(e Event) {
		if ho.onEvent != nil {
			ho.onEvent(e)
		}
		r := recorded{Event: e, visible: len(reg.Instances("web")), ports: h.visiblePorts(), timerAdded: h.clk.TimerAdded()}
		if e.Kind == EventStarted {
			h.mu.Lock()
			h.pids = append(h.pids, e.PID)
			h.mu.Unlock()
		}
		if e.Kind == EventNotReady && !ho.noAdvance {
			// Readiness polls spin until the child listens: count them,
			// do not queue them.
			h.clk.Advance(e.Delay) // the timer is armed before the event
			return
		}
		h.events <- r
	}
	var clk Option = withClock(h.clk)
	if ho.realClock {
		clk = withClock(clock.Real{})
	}
	opts := append([]Option{
		clk,
		WithEventHook(hook),
		WithOutput(h.out, h.out),
		WithBudget(5 * time.Second),
		WithConnQuiet(20 * time.Millisecond),
	}, ho.supervisorO...)
	h.sup, err = New(spec, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stop()
		h.checkNoProcessGroups()
	})
	return h
}

// ports returns the ports of the instances consumers see.
func (h *harness) visiblePorts() []int {
	var ports []int
	for _, in := range h.reg.Instances("web") {
		ports = append(ports, in.Port)
	}
	return ports
}

func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.sup.Run(ctx) }()
}

// stop cancels Run's ctx and waits for Run to return; idempotent.
func (h *harness) stop() error {
	if h.cancel == nil {
		return nil
	}
	h.cancel()
	select {
	case err := <-h.runErr:
		h.runErr <- err // for a later call
		return err
	case <-time.After(wait):
		h.t.Fatalf("Run did not return within %v of cancel; events: %s", wait, h.history())
		return nil
	}
}

// result waits for Run to return on its own.
func (h *harness) result() error {
	h.t.Helper()
	select {
	case err := <-h.runErr:
		h.runErr <- err
		return err
	case <-time.After(wait):
		h.t.Fatalf("Run did not return within %v; events: %s", wait, h.history())
		return nil
	}
}

// next returns the next event of kind k, skipping others (they are kept
// in the history).
func (h *harness) next(k EventKind) recorded {
	h.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case e := <-h.events:
			h.note(e)
			if e.Kind == k {
				return e
			}
		case <-timeout:
			h.t.Fatalf("want event %v within %v, got none; events so far: %s", k, wait, h.history())
		}
	}
}

// nextOf returns the next event whose kind is one of ks.
func (h *harness) nextOf(ks ...EventKind) recorded {
	h.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case e := <-h.events:
			h.note(e)
			for _, k := range ks {
				if e.Kind == k {
					return e
				}
			}
		case <-timeout:
			h.t.Fatalf("want one of %v within %v, got none; events so far: %s", ks, wait, h.history())
		}
	}
}

// drainEvents moves every buffered event to the history and returns them.
func (h *harness) drainEvents() []recorded {
	var got []recorded
	for {
		select {
		case e := <-h.events:
			h.note(e)
			got = append(got, e)
		default:
			return got
		}
	}
}

func (h *harness) note(e recorded) {
	s := e.Kind.String()
	if e.Kind == EventDrain {
		s += "/" + e.Drain.Kind.String() + "/" + e.Drain.Phase.String()
	}
	if e.Kind == EventSignaled {
		s += "/" + e.Signal.String()
	}
	h.mu.Lock()
	h.seen = append(h.seen, s)
	if e.Kind == EventExited {
		if h.exitedPIDs == nil {
			h.exitedPIDs = map[int]bool{}
		}
		h.exitedPIDs[e.PID] = true
	}
	h.mu.Unlock()
}

func (h *harness) history() string {
	h.drainEvents()
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.seen, " ") + "\noutput:\n" + h.out.String()
}

// armed waits for the timer that follows e.
func (h *harness) armed(e recorded) {
	h.t.Helper()
	select {
	case <-e.timerAdded:
	case <-time.After(wait):
		h.t.Fatalf("want a timer armed after %v, got none; events: %s", e.Kind, h.history())
	}
}

// get asks the first copy to do something; it may die before answering.
func (h *harness) get(path string) { h.getAt(h.url, path) }

// getClient leaves no idle connection behind, as the checks do, so that the
// test's own requests never count as in flight on a copy's port.
var getClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// getAt asks the copy at base to do something.
func (h *harness) getAt(base, path string) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if resp, err := getClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// checkNoProcessGroups fails if any child's process group still exists.
func (h *harness) checkNoProcessGroups() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, pid := range h.pids {
		if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
			h.t.Errorf("process group %d: want ESRCH after Run returned, got %v", pid, err)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is an io.Writer safe for concurrent use whose readers can
// wait for a pattern to appear.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced at every write; nil until a waiter needs it
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits until the text matches re and returns the submatches of
// the first match.
func (s *syncBuffer) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	timeout := time.After(wait)
	for {
		s.mu.Lock()
		m := re.FindStringSubmatch(s.b.String())
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		if m != nil {
			return m
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("want output matching %q within %v, got:\n%s", re, wait, s.String())
		}
	}
}

//go:build linux

// Linux only: the supervisor (`lameduck run`) is.

package integration

// Helpers for supervisor_test.go: the supervisor's test child, the three
// registries with a consumer-side view of each, an in-process supervisor
// whose events are kept, an open-loop client load that routes by the
// consumer's view, and the checks that no process outlives a test.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/pkg/supervisor"
	"github.com/lameduck/lameduck/registry"
)

// supWait bounds every wait for an event or a consumer-visible change.
const supWait = 30 * time.Second

// supBuild builds the Go package pkg (relative to the module root) into a
// fresh temporary directory as name and returns its path. When the test
// ends, no process may still be running that binary: supBuild's cleanup,
// registered first, runs after every other cleanup of the test and fails it
// for each such process (and kills it).
func supBuild(t *testing.T, pkg, name string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", bin, pkg)
	cmd.Dir = ".." // the module root; tests run in the package directory
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	t.Cleanup(func() {
		for _, pid := range procsRunning(bin) {
			t.Errorf("process %d still runs %s after the test: an orphan", pid, filepath.Base(bin))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return bin
}

// supChild builds the supervisor's misbehaving test child.
func supChild(t *testing.T) string {
	return supBuild(t, "./pkg/supervisor/testdata/child", "supchild")
}

// procsRunning returns the live processes whose executable is bin. Zombies
// have no executable any more and are not listed.
func procsRunning(bin string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink("/proc/" + e.Name() + "/exe"); err == nil && exe == bin {
			pids = append(pids, pid)
		}
	}
	return pids
}

// groupMembers returns the processes of process group pgid, each with its
// state letter from /proc/PID/stat ("Z" for a zombie not yet reaped).
func groupMembers(pgid int) map[int]string {
	ents, _ := os.ReadDir("/proc")
	out := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			out[pid] = f[0]
		}
	}
	return out
}

// groupGone reports whether no process is left in group pgid, zombies
// included: kill(-pgid, 0) fails with ESRCH.
func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

// supBackend is a registry the supervisor registers in, and a second client
// of the same registry for the consumers' side.
type supBackend struct {
	name string
	open func(t *testing.T) (reg, consumer registry.Registry)
}

// supBackends are the memory registry (in-process, no push delay: the
// supervisor's own overhead), real Consul and real Nacos.
var supBackends = []supBackend{
	{"memory", func(t *testing.T) (registry.Registry, registry.Registry) {
		r, err := memory.New()
		if err != nil {
			t.Fatalf("memory.New: %v", err)
		}
		t.Cleanup(func() { _ = r.Close() })
		return r, r // in-process: the consumer's watch is on the same registry
	}},
	{"consul", func(t *testing.T) (registry.Registry, registry.Registry) {
		needConsul(t)
		return newConsul(t), newConsul(t)
	}},
	{"nacos", func(t *testing.T) (registry.Registry, registry.Registry) {
		needNacos(t)
		return newNacos(t), newNacos(t) // two clients: two Nacos connections
	}},
}

// history is an append-only record that waiters can follow.
type history[T any] struct {
	mu    sync.Mutex
	items []T
	wake  chan struct{} // closed and replaced on every add
}

func newHistory[T any]() *history[T] { return &history[T]{wake: make(chan struct{})} }

func (h *history[T]) add(x T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.items = append(h.items, x)
	close(h.wake)
	h.wake = make(chan struct{})
}

// mark is the index the next item will have.
func (h *history[T]) mark() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.items)
}

func (h *history[T]) all() []T {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.items)
}

// await returns the first item at index from or later that ok accepts, and
// its index; it waits for new items up to supWait, then fails the test with
// describe's account of what was seen.
func (h *history[T]) await(t *testing.T, from int, what string, ok func(T) bool, describe func() string) (T, int) {
	t.Helper()
	deadline := time.NewTimer(supWait)
	defer deadline.Stop()
	for i := from; ; {
		h.mu.Lock()
		for ; i < len(h.items); i++ {
			if ok(h.items[i]) {
				x := h.items[i]
				h.mu.Unlock()
				return x, i
			}
		}
		wake := h.wake
		h.mu.Unlock()
		select {
		case <-wake:
		case <-deadline.C:
			t.Fatalf("want %s within %v, got none; %s", what, supWait, describe())
		}
	}
}

// viewSnap is one list a consumer's watch delivered: the endpoints it
// routes to, and when it got them.
type viewSnap struct {
	at  time.Time
	eps []string // sorted
}

func (s viewSnap) has(ep string) bool { return slices.Contains(s.eps, ep) }

// consumerView is what one consumer of a service sees: every list its
// registry watch delivered, the last one current. A load routes by it.
type consumerView struct {
	service string
	snaps   *history[viewSnap]
	rr      uint64 // round-robin position; under snaps.mu
}

// watchService opens a consumer's watch of service on reg and records each
// list as the watch delivers it, until the test ends.
func watchService(t *testing.T, reg registry.Registry, service string) *consumerView {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := reg.Watch(ctx, service)
	if err != nil {
		cancel()
		t.Fatalf("consumer's watch of %s on %s: %v", service, reg, err)
	}
	v := &consumerView{service: service, snaps: newHistory[viewSnap]()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			list, err := w.Next(ctx)
			at := time.Now()
			if err != nil {
				return // ended by the cleanup, or failed: waits then time out with the history
			}
			eps := make([]string, 0, len(list))
			for _, in := range list {
				eps = append(eps, in.Endpoint())
			}
			slices.Sort(eps)
			v.snaps.add(viewSnap{at: at, eps: eps})
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = w.Stop()
		<-done
	})
	return v
}

func (v *consumerView) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the consumer's view of %s:", v.service)
	snaps := v.snaps.all()
	if len(snaps) > 12 {
		snaps = snaps[len(snaps)-12:]
		b.WriteString(" ...")
	}
	for _, s := range snaps {
		fmt.Fprintf(&b, " %s%v", s.at.Format("15:04:05.000"), s.eps)
	}
	return b.String()
}

// await returns the first list delivered at index from or later that ok
// accepts.
func (v *consumerView) await(t *testing.T, from int, what string, ok func(viewSnap) bool) (viewSnap, int) {
	t.Helper()
	return v.snaps.await(t, from, what+" in "+v.service+"'s consumer view", ok, v.describe)
}

// until waits until the current list (or a later one) satisfies ok.
func (v *consumerView) until(t *testing.T, what string, ok func(viewSnap) bool) (viewSnap, int) {
	t.Helper()
	return v.await(t, max(v.snaps.mark()-1, 0), what, ok)
}

// pick returns the next endpoint round-robin from the current list and the
// list's index, or ok false when the list is empty.
func (v *consumerView) pick() (ep string, ver int, ok bool) {
	h := v.snaps
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.items) == 0 {
		return "", -1, false
	}
	ver = len(h.items) - 1
	eps := h.items[ver].eps
	if len(eps) == 0 {
		return "", ver, false
	}
	v.rr++
	return eps[v.rr%uint64(len(eps))], ver, true
}

// supRun is a supervisor running in the test process, with every event it
// reported.
type supRun struct {
	sup    *supervisor.Supervisor
	events *history[supervisor.Event]
	out    *lockedBuffer
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, set before done is closed
}

// startSupervisor runs a supervisor of spec. When the test ends it is
// stopped (if still running), and every child process group it started
// must be gone.
func startSupervisor(t *testing.T, spec supervisor.Spec, opts ...supervisor.Option) *supRun {
	t.Helper()
	r := &supRun{events: newHistory[supervisor.Event](), out: &lockedBuffer{}, done: make(chan struct{})}
	opts = append(opts,
		supervisor.WithEventHook(r.events.add),
		supervisor.WithOutput(r.out, r.out))
	sup, err := supervisor.New(spec, opts...)
	if err != nil {
		t.Fatalf("supervisor.New: %v", err)
	}
	r.sup = sup
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.err = sup.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		if err := r.stop(t); err != nil {
			t.Errorf("supervisor's Run at the end of the test: want nil, got %v", err)
		}
		for _, e := range r.events.all() {
			if e.Kind == supervisor.EventStarted && !groupGone(e.PID) {
				t.Errorf("child process group %d (port %d): want it gone (ESRCH) once Run returned, got members %v", e.PID, e.Port, groupMembers(e.PID))
				_ = syscall.Kill(-e.PID, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("supervisor events: %s\nchild output:\n%s", r.describe(), r.out)
		}
	})
	return r
}

// stop cancels Run's ctx (what SIGTERM does to `lameduck run`) and returns
// Run's error; it may be called again.
func (r *supRun) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(2 * supWait):
		t.Fatalf("supervisor's Run did not return within %v of its ctx's end; events: %s", 2*supWait, r.describe())
		return nil
	}
}

func (r *supRun) describe() string {
	var parts []string
	for _, e := range r.events.all() {
		s := fmt.Sprintf("%s:%d", e.Kind, e.Port)
		if e.Kind == supervisor.EventDrain {
			s += "/" + e.Drain.Kind.String()
		}
		if e.Err != nil {
			s += fmt.Sprintf("(%v)", e.Err)
		}
		parts = append(parts, s)
	}
	if len(parts) > 60 {
		parts = append([]string{"..."}, parts[len(parts)-60:]...)
	}
	return strings.Join(parts, " ")
}

// await returns the first event at index from or later of kind k that ok
// (if not nil) accepts.
func (r *supRun) await(t *testing.T, from int, k supervisor.EventKind, what string, ok func(supervisor.Event) bool) (supervisor.Event, int) {
	t.Helper()
	return r.events.await(t, from, "supervisor event "+k.String()+" "+what, func(e supervisor.Event) bool {
		return e.Kind == k && (ok == nil || ok(e))
	}, func() string { return "events: " + r.describe() })
}

func onPort(port int) func(supervisor.Event) bool {
	return func(e supervisor.Event) bool { return e.Port == port }
}

func ofPID(pid int) func(supervisor.Event) bool {
	return func(e supervisor.Event) bool { return e.PID == pid }
}

// supSpec is a supervisor spec for the test child on port (and on standby,
// if not 0), registered as service in reg once GET /healthz passes.
func supSpec(child, service string, reg registry.Registry, port, standby int) supervisor.Spec {
	return supervisor.Spec{
		Name: "supchild",
		Path: child,
		Args: []string{"-addr=127.0.0.1:" + probe.PortPlaceholder},
		Instance: registry.Instance{
			Service: service, ID: service + "-" + strconv.Itoa(port), Address: "127.0.0.1", Port: port,
		},
		Registries:  []registry.Registry{reg},
		Ready:       probe.HTTP("http://127.0.0.1:" + probe.PortPlaceholder + "/healthz"),
		StandbyPort: standby,
	}
}

// crashChild asks the child on port to exit with code 3 (GET /crash, whose
// handler calls os.Exit). It returns when the request was sent and when the
// test saw its connection cut: the kernel closes a process's sockets as it
// exits, so the child died in between.
func crashChild(t *testing.T, port int) (sent, cut time.Time) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	sent = time.Now()
	resp, err := c.Get("http://" + e2eEndpoint(port) + "/crash")
	cut = time.Now()
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET /crash on port %d: want the connection cut by the child's exit, got %s", port, resp.Status)
	}
	return sent, cut
}

// errNoInstance is a request the load could not send: the consumer's view
// was empty.
var errNoInstance = errors.New("no instance in the consumer's view")

// loadReq is one request of an openLoad.
type loadReq struct {
	ep         string // "" when the view was empty
	ver        int    // index of the consumer's list it was routed by
	start, end time.Time
	err        error
}

// openLoad sends requests at a steady rate, whatever the answers (an open
// loop: a slow or dead instance does not slow it down), each to the next
// endpoint of the consumer's current view, round-robin. It retries nothing:
// each request is a POST whose body cannot be replayed, so net/http does
// not resend it either, and every failure counts.
type openLoad struct {
	view   *consumerView
	path   string
	client *http.Client
	cancel context.CancelFunc
	ticks  chan struct{} // closed when the ticker goroutine is done
	wg     sync.WaitGroup

	mu   sync.Mutex
	reqs []*loadReq
	done chan struct{} // closed and replaced whenever a request ends
}

// startOpenLoad sends rate requests a second of path to the endpoints in
// view, until stop. Pooled keep-alive connections idle for a second are
// closed, as a consumer's pool does, so a copy taken offline sees its
// connections go quiet.
func startOpenLoad(t *testing.T, view *consumerView, rate int, path string) *openLoad {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Second}
	l := &openLoad{view: view, path: path, client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		ticks: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() {
		defer close(l.ticks)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				l.fire()
			}
		}
	}()
	t.Cleanup(func() { l.stop(t) })
	return l
}

func (l *openLoad) fire() {
	ep, ver, ok := l.view.pick()
	r := &loadReq{ep: ep, ver: ver, start: time.Now()}
	l.mu.Lock()
	l.reqs = append(l.reqs, r)
	if !ok {
		r.end, r.err = r.start, errNoInstance
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		err := l.send(ep)
		l.mu.Lock()
		r.end, r.err = time.Now(), err
		close(l.done)
		l.done = make(chan struct{})
		l.mu.Unlock()
	}()
}

func (l *openLoad) send(ep string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+ep+l.path, strings.NewReader("x"))
	if err != nil {
		return err
	}
	req.GetBody = nil // no transparent retry, even on a reused connection that wrote nothing
	resp, err := l.client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// stop ends the load and waits for every request to end; it may be called
// again.
func (l *openLoad) stop(t *testing.T) {
	t.Helper()
	l.cancel()
	<-l.ticks
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(supWait):
		t.Fatalf("load: requests still running %v after it stopped", supWait)
	}
	l.client.CloseIdleConnections()
}

// results returns a copy of every request so far (call after stop for
// final figures).
func (l *openLoad) results() []loadReq {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]loadReq, len(l.reqs))
	for i, r := range l.reqs {
		out[i] = *r
	}
	return out
}

// servedBy waits until n requests sent at index from or later to ep have
// succeeded.
func (l *openLoad) servedBy(t *testing.T, from int, ep string, n int) {
	t.Helper()
	deadline := time.NewTimer(supWait)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got := 0
		for _, r := range l.reqs[from:] {
			if r.ep == ep && r.err == nil && !r.end.IsZero() {
				got++
			}
		}
		done := l.done
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-done:
		case <-deadline.C:
			t.Fatalf("load: want %d requests served by %s within %v, got %d; %s", n, ep, supWait, got, l.view.describe())
		}
	}
}

func (l *openLoad) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reqs)
}

// failureKind names a load failure for the report.
func failureKind(err error) string {
	switch {
	case errors.Is(err, errNoInstance):
		return "no instance"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed mid-request"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other: " + err.Error()
}

// failureSummary lists up to 5 failures and counts them by kind.
func failureSummary(reqs []loadReq) string {
	kinds := map[string]int{}
	var ex []string
	for _, r := range reqs {
		if r.err == nil {
			continue
		}
		kinds[failureKind(r.err)]++
		if len(ex) < 5 {
			ex = append(ex, fmt.Sprintf("%s %s to %q: %v", r.start.Format("15:04:05.000"), r.end.Sub(r.start).Round(time.Millisecond), r.ep, r.err))
		}
	}
	return fmt.Sprintf("failures by kind %v; first: %s", kinds, strings.Join(ex, "; "))
}

// samples is a set of durations for a figure.
type samples []time.Duration

// median is the upper median, as latency_test.go reports it.
func (s samples) median() time.Duration {
	c := slices.Clone(s)
	slices.Sort(c)
	return c[len(c)/2]
}

// p90 is the smallest sample at least 90% of the samples do not exceed.
func (s samples) p90() time.Duration {
	c := slices.Clone(s)
	slices.Sort(c)
	return c[int(math.Ceil(0.9*float64(len(c))))-1]
}

// ms renders a figure's median/p90 in milliseconds.
func (s samples) ms() string {
	if len(s) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f/%.1f", float64(s.median())/1e6, float64(s.p90())/1e6)
}

// supRuns is the number of runs per figure: LAMEDUCK_SUPERVISOR_RUNS, or 20.
func supRuns(t *testing.T) int {
	s := os.Getenv("LAMEDUCK_SUPERVISOR_RUNS")
	if s == "" {
		return 20
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("LAMEDUCK_SUPERVISOR_RUNS=%q: want a positive number", s)
	}
	return n
}

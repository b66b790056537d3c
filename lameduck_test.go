package lameduck

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/report"
	"github.com/lameduck/lameduck/registry"
)

func TestExitCode(t *testing.T) {
	t.Parallel()
	regErr := &registry.Error{Registry: "consul://127.0.0.1:1", Op: "deregister", Err: errors.New("connection refused")}
	cut := func(p drain.Phase, cause error) error { return &drain.PhaseError{Phase: p, Err: cause} }
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"clean", nil, ExitOK},
		{"registry unreachable, drain finished", errors.Join(cut(drain.Deregistering, drain.ErrDeadline), regErr), ExitRegistry},
		{"registry error alone", regErr, ExitRegistry},
		{"confirmation ran out", cut(drain.Confirming, drain.ErrDeadline), ExitRegistry},
		{"drain cut by the deadline", errors.Join(regErr, cut(drain.Draining, drain.ErrDeadline)), ExitForced},
		{"second signal", cut(drain.Deregistering, drain.ErrForced), ExitForced},
		{"stop hook failed", fmt.Errorf("drain: stop hook %q: %w", "http", errors.New("boom")), ExitFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if got := ExitCode(c.err); got != c.want {
				t.Fatalf("ExitCode(%v): want %d, got %d", c.err, c.want, got)
			}
		})
	}
}

// rejecting refuses every registration, as Consul does a malformed one.
type rejecting struct{ registry.Registry }

func (rejecting) Register(context.Context, registry.Instance) error {
	return &registry.Error{Registry: "fake://", Op: "register", Err: fmt.Errorf("%w: 400 Bad Request", registry.ErrRejected)}
}

func testInstance() registry.Instance {
	return registry.Instance{Service: "web", ID: "web-1", Address: "127.0.0.1", Port: 8080}
}

// unsentSignal is what Apps under test listen for instead of SIGTERM and
// SIGINT: nothing sends it to a test, and syscall defines it on every OS
// (SIGUSR2 is not on Windows). It must be a real signal: with none enabled,
// signal.Stop never returns.
const unsentSignal = syscall.SIGALRM

// A registration refused for good ends Run at once, with the stop hooks run
// and the refusal returned, instead of retrying forever.
func TestRunStopsOnRejectedRegistration(t *testing.T) {
	t.Parallel()
	mem, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	app, err := New(testInstance(), []registry.Registry{rejecting{mem}},
		WithAdmin("", ""), WithSignals(unsentSignal),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		WithStopHook("server", func(context.Context) error { close(stopped); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, registry.ErrRejected) || ExitCode(err) != ExitRegistry {
			t.Fatalf("want an error wrapping ErrRejected and exit code %d, got %v (exit %d)", ExitRegistry, err, ExitCode(err))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("want Run to return after a rejected registration, still running after 10s")
	}
	select {
	case <-stopped:
	default:
		t.Fatal("want the stop hook run, it was not")
	}
}

// Ending ctx takes a registered instance offline cleanly: registered, then
// removed, exit code 0.
func TestRunGoesOfflineWhenCtxEnds(t *testing.T) {
	t.Parallel()
	mem, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	var registered atomic.Bool
	app, err := New(testInstance(), []registry.Registry{mem},
		WithAdmin("", ""), WithSignals(unsentSignal),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		WithDrain(drain.WithBudget(5*time.Second), drain.WithQuietWindow(0)),
		WithReady(func(context.Context) error { registered.Store(true); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	w, err := mem.Watch(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		list, err := w.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if registry.Contains(list, testInstance()) {
			break
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("want a clean offline, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("want Run to return once ctx ended, still running after 10s")
	}
	if got := mem.Instances("web"); len(got) != 0 {
		t.Fatalf("want the instance deregistered, got %v", got)
	}
	if !registered.Load() {
		t.Fatal("want the readiness check run before registering")
	}
}

// WithAdminLimits refuses a long-poll cap that would leave no connection
// for POST /offline.
func TestAdminLimitsChecked(t *testing.T) {
	t.Parallel()
	cases := []struct {
		conns, polls int
		ok           bool
	}{
		{conns: 0, polls: 0, ok: true}, // the defaults
		{conns: 8, polls: 4, ok: true},
		{conns: 8, polls: 8},
		{conns: 16, polls: 0}, // the default 32 long-polls
		{conns: 0, polls: 64}, // the default 64 connections
		{conns: -1, polls: -1, ok: true},
	}
	for _, c := range cases {
		_, err := New(testInstance(), nil, WithAdmin("", ""), WithAdminLimits(c.conns, c.polls))
		if c.ok && err != nil {
			t.Errorf("WithAdminLimits(%d, %d): want accepted, got %v", c.conns, c.polls, err)
		}
		if !c.ok && (err == nil || !strings.HasPrefix(err.Error(), "lameduck: WithAdminLimits: ")) {
			t.Errorf("WithAdminLimits(%d, %d): want a lameduck: WithAdminLimits: error, got %v", c.conns, c.polls, err)
		}
	}
}

// Run serves its admin endpoint with the limits WithAdminLimits sets: the
// long-poll beyond the cap is refused, and a connection beyond the cap
// waits unserved.
func TestRunServesAdminWithLimits(t *testing.T) {
	t.Parallel()
	mem, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	app, err := New(testInstance(), []registry.Registry{mem},
		WithAdmin(addr, ""), WithAdminLimits(2, 1), WithSignals(unsentSignal),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		WithDrain(drain.WithBudget(5*time.Second), drain.WithQuietWindow(0)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("want Run to return once ctx ended, still running after 10s")
		}
	}()

	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		var conn net.Conn
		var err error
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if conn, err = net.DialTimeout("tcp", addr, time.Second); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("dial the admin endpoint at %s: %v", addr, err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn, bufio.NewReader(conn)
	}
	get := func(conn net.Conn, path string) {
		t.Helper()
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	read := func(conn net.Conn, r *bufio.Reader, d time.Duration) (int, error) {
		_ = conn.SetReadDeadline(time.Now().Add(d))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	// Two long-polls for the one slot: one is held, the other refused
	// with 429, which closes its connection.
	a, ar := dial()
	b, br := dial()
	get(a, "/wait?phase=Offline&timeout=1m")
	get(b, "/wait?phase=Offline&timeout=1m")
	type answer struct {
		code int
		err  error
	}
	answers := make(chan answer, 2)
	go func() { code, err := read(a, ar, 500*time.Millisecond); answers <- answer{code, err} }()
	go func() { code, err := read(b, br, 500*time.Millisecond); answers <- answer{code, err} }()
	got := []answer{<-answers, <-answers}
	if got[0].err == nil {
		got[0], got[1] = got[1], got[0]
	}
	if got[0].err == nil || got[1].err != nil || got[1].code != http.StatusTooManyRequests {
		t.Fatalf("two long-polls with a cap of 1: want one held and one answered 429, got (%d, %v) and (%d, %v)", got[0].code, got[0].err, got[1].code, got[1].err)
	}
	// Two connections are the cap: the held long-poll and this one.
	idle, ir := dial()
	get(idle, "/status")
	if code, err := read(idle, ir, 5*time.Second); err != nil || code != http.StatusOK {
		t.Fatalf("GET /status on a second connection: want 200, got %d %v", code, err)
	}
	extra, er := dial() // a third: the kernel's backlog holds it
	get(extra, "/status")
	if code, err := read(extra, er, 200*time.Millisecond); err == nil {
		t.Fatalf("a third connection with the cap of 2 taken: want no answer, got %d", code)
	}
	idle.Close()
	if code, err := read(extra, er, 5*time.Second); err != nil || code != http.StatusOK {
		t.Fatalf("the third connection once one closed: want 200, got %d %v", code, err)
	}
}

// WithReport writes the offline's report, JSON and SVG, once Run is done,
// and New refuses a report path it could not write to.
func TestRunWritesReport(t *testing.T) {
	t.Parallel()
	mem, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "offline.json")
	if _, err := New(testInstance(), nil, WithAdmin("", ""), WithReport(report.SVGPath(path))); err == nil || !strings.Contains(err.Error(), ".svg") {
		t.Fatalf("want New to refuse a report path ending in .svg, got %v", err)
	}
	app, err := New(testInstance(), []registry.Registry{mem},
		WithAdmin("", ""), WithSignals(unsentSignal), WithReport(path),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		WithDrain(drain.WithBudget(5*time.Second), drain.WithQuietWindow(0)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// A request in flight as the offline starts, ended once it drains.
	req := app.Tracker().Begin()
	go func() { done <- app.Run(ctx) }()
	cancel()
	if err := app.Coordinator().WaitPhase(t.Context(), drain.Draining); err != nil {
		t.Fatal(err)
	}
	if err := req.End(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("want a clean offline, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("want Run to return once ctx ended, still running after 10s")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("want the report written: %v", err)
	}
	var off report.Offline
	if err := json.Unmarshal(b, &off); err != nil {
		t.Fatal(err)
	}
	if off.Outcome != drain.OutcomeDrained || off.Causes.Sum() != off.Duration || off.InFlight.Peak != 1 {
		t.Fatalf("want a drained report whose causes add up, with the one request in flight; got %+v", off)
	}
	if _, err := os.Stat(report.SVGPath(path)); err != nil {
		t.Fatalf("want the SVG beside the report: %v", err)
	}
}

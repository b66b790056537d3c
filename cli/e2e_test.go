//go:build unix

// Unix only: it checks with kill(pid, 0) that the app is gone.

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
)

// child is a started process whose end is observed once, by one goroutine.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned
	err  error         // Wait's error, once done is closed
	log  string        // the file its stdout and stderr go to
}

// start starts bin and, in t.Cleanup, kills it if it is still running and
// waits for it, so no child outlives the test.
func start(t *testing.T, logPath, bin string, args ...string) *child {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create log: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f // an *os.File: no copying goroutine
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	c := &child{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
			return
		default:
		}
		_ = cmd.Process.Kill()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) still running 10s after SIGKILL", bin, cmd.Process.Pid)
		}
	})
	return c
}

func (c *child) output() string {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", c.log, err)
	}
	return string(b)
}

// waitAdmin polls the app's admin /status until it answers, the app exits,
// or the timeout passes.
func waitAdmin(t *testing.T, app *child, cl *admin.Client, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cl.Status(ctx)
		cancel()
		if err == nil {
			if st.Phase != drain.Serving {
				t.Fatalf("want the app Serving before prestop, got %v", st.Phase)
			}
			return
		}
		select {
		case <-app.done:
			t.Fatalf("the app exited before its admin endpoint answered: %v\n%s", app.err, app.output())
		case <-deadline:
			t.Fatalf("the app's admin endpoint did not answer within %v: %v\n%s", timeout, err, app.output())
		case <-tick.C:
		}
	}
}

// load is a few consumers sending requests to one instance until they learn
// that it is going away: a response with "Connection: close", or its admin
// endpoint reporting Draining or later (as a registry watch would tell
// them). Every request they start must succeed.
type load struct {
	started, failed atomic.Int64
	stop            atomic.Bool // the admin endpoint said Draining or later
	mu              sync.Mutex
	errs            []string // the first few failures
	warm            chan struct{}
	warmOnce        sync.Once
	wg              sync.WaitGroup
}

func (l *load) fail(format string, args ...any) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

// consume sends GETs to url one after another until the instance says it is
// going away or ctx ends.
func (l *load) consume(ctx context.Context, url string, warmAt int64) {
	defer l.wg.Done()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for ctx.Err() == nil && !l.stop.Load() {
		l.started.Add(1)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			l.fail("new request: %v", err)
			return
		}
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				l.fail("GET %s: %v", url, err)
			}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
			l.fail("GET %s: %s %q (read error %v)", url, resp.Status, body, err)
			return
		}
		if l.started.Load() >= warmAt {
			l.warmOnce.Do(func() { close(l.warm) })
		}
		if resp.Close { // "Connection: close": the instance is draining
			return
		}
	}
}

// watch polls the app's admin status and sets stop once it reports
// Draining or later, or stops answering.
func (l *load) watch(ctx context.Context, cl *admin.Client) {
	defer l.wg.Done()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := cl.Status(ctx)
		if err != nil || st.Phase >= drain.Draining {
			l.stop.Store(true)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// The example app, run on the embedded registry under a steady load, is
// taken offline by `lameduck prestop --admin`: prestop exits 0 once the app
// is Offline, the app exits 0 by itself within the grace period, and every
// request the consumers started succeeded.
func TestPrestopEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs lameduck and the example app")
	}
	t.Parallel()
	dir := t.TempDir()
	lameduckBin := build(t, dir, "lameduck", "./lameduck")
	appBin := build(t, dir, "app", "../examples/app")

	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	adminURL := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	app := start(t, filepath.Join(dir, "app.log"), appBin,
		"-registry", "memory://",
		"-http", httpAddr,
		"-grpc", "127.0.0.1:"+strconv.Itoa(freePort(t)),
		"-admin", strings.TrimPrefix(adminURL, "http://"))
	cl, err := admin.NewClient(adminURL)
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	waitAdmin(t, app, cl, 30*time.Second)

	// A steady stream of requests, well under way before prestop starts.
	const consumers, warmAt = 4, 200
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := &load{warm: make(chan struct{})}
	l.wg.Add(consumers + 1)
	go l.watch(ctx, cl)
	for range consumers {
		go l.consume(ctx, "http://"+httpAddr+"/", warmAt)
	}
	loadDone := make(chan struct{})
	go func() { l.wg.Wait(); close(loadDone) }()
	t.Cleanup(func() { cancel(); <-loadDone })
	select {
	case <-l.warm:
	case <-loadDone:
		t.Fatalf("want the load running before prestop, but it stopped after %d requests (%d failed: %v)\napp:\n%s",
			l.started.Load(), l.failed.Load(), l.errs, app.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("want %d requests within 30s, got %d\napp:\n%s", warmAt, l.started.Load(), app.output())
	}

	const grace = 20 * time.Second
	began := time.Now()
	pctx, pcancel := context.WithTimeout(context.Background(), grace+10*time.Second)
	defer pcancel()
	prestop := exec.CommandContext(pctx, lameduckBin, "prestop", "--admin", adminURL, "--grace-period", grace.String())
	out, err := prestop.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		t.Fatalf("want prestop to exit 0, got %d\nprestop:\n%s\napp:\n%s", ee.ExitCode(), out, app.output())
	case err != nil:
		t.Fatalf("prestop: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "Offline after ") {
		t.Fatalf("want prestop's output to end with \"Offline after ...\", got %q\nprestop:\n%s", last, out)
	}

	select {
	case <-app.done:
	case <-time.After(grace - time.Since(began)):
		t.Fatalf("want the app to exit by itself within the grace period %v, still running\nprestop:\n%s\napp:\n%s", grace, out, app.output())
	}
	if app.err != nil {
		t.Fatalf("want the app to exit 0, got %v\napp:\n%s", app.err, app.output())
	}
	if err := syscall.Kill(app.cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("want the app's pid %d gone after it was reaped, kill(0) says %v", app.cmd.Process.Pid, err)
	}

	select {
	case <-loadDone:
	case <-time.After(10 * time.Second):
		t.Fatalf("want the consumers to stop once the app went away, still running after 10s")
	}
	t.Logf("%d requests started, %d failed; prestop took %v", l.started.Load(), l.failed.Load(), time.Since(began).Round(time.Millisecond))
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("want every started request to succeed, got %d failures of %d: %v\nprestop:\n%s\napp:\n%s",
			n, l.started.Load(), l.errs, out, app.output())
	}
}

//go:build linux

// Linux only: prestop's plain mode and `lameduck run` are (see platform.go).

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// heldConnection listens on 127.0.0.1 and opens one connection to the
// listener that stays ESTABLISHED until the test ends; with busy, the
// client sends a request that is never answered. It returns the port.
func heldConnection(t *testing.T, busy bool) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if busy {
		if _, err := io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	return ln.Addr().(*net.TCPAddr).Port
}

// holdKeepAlive makes one request to url and leaves its connection idle in
// a keep-alive pool until the test ends.
func holdKeepAlive(t *testing.T, url string) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// Plain prestop with a request that is never answered: --conn-wait ends
// the wait with exit 0 and reports the request left to the app's shutdown;
// without it the wait runs into the deadline (exit 4). An idle connection
// holds nothing up.
func TestPrestopConnWait(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		idle     bool // the held connection carries no request
		args     []string
		wantCode int
		wantOpen int
		wantOut  string // in the text output
	}{
		{"conn-wait json", false, []string{"--conn-wait", "100ms", "--output", "json"}, ExitOK, 1, ""},
		{"conn-wait 0 json", false, []string{"--conn-wait", "0", "--output", "json"}, ExitOK, 1, ""},
		{"conn-wait text", false, []string{"--conn-wait", "100ms"}, ExitOK, 0,
			"the connection wait (100ms) passed; 1 connections on port PORT still carry requests, left to the app's graceful shutdown after SIGTERM"},
		{"unset: forced at the deadline", false, []string{"--grace-period", "2s", "--margin", "1s", "--output", "json"}, ExitForced, 0, ""},
		{"idle connection, unset: drained", true, []string{"--grace-period", "20s", "--margin", "1s", "--output", "json"}, ExitOK, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			port := strconv.Itoa(heldConnection(t, !tc.idle))
			args := append([]string{"prestop", "--registry", "memory://", "--service", "web", "--port", port,
				"--addr", "127.0.0.1:" + port}, tc.args...)
			code, stdout, stderr := run(t, args...)
			if code != tc.wantCode {
				t.Fatalf("lameduck %s: want exit code %d, got %d\nstdout: %q\nstderr: %q", strings.Join(args, " "), tc.wantCode, code, stdout, stderr)
			}
			if tc.wantOut != "" {
				if want := strings.ReplaceAll(tc.wantOut, "PORT", port); !strings.Contains(stdout, want) {
					t.Fatalf("want the progress to say %q, got:\n%s", want, stdout)
				}
				return
			}
			var res Result
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("want one JSON object on stdout, got %v:\n%s", err, stdout)
			}
			if res.ExitCode != tc.wantCode || res.OpenConns != tc.wantOpen {
				t.Fatalf("want exit_code %d and open_conns %d, got %d and %d: %+v", tc.wantCode, tc.wantOpen, res.ExitCode, res.OpenConns, res)
			}
		})
	}
}

// As the kubelet runs it, against an app that drains itself on SIGTERM: a
// consumer's idle keep-alive connection carries no request, so prestop
// exits 0 once the registries confirmed and the quiet window passed, not
// at the deadline (58s here, exit 4), and the app's own graceful shutdown
// then closes the connection and exits 0.
func TestPrestopBinaryIdleKeepAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs lameduck and an app")
	}
	t.Parallel()
	dir := t.TempDir()
	lameduck := build(t, dir, "lameduck", "./lameduck")
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	app := start(t, filepath.Join(dir, "app.log"), childBinary(t), "-addr", addr)
	waitServing(t, port, app)
	holdKeepAlive(t, "http://"+addr+"/healthz")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, lameduck, "prestop", "--registry", "memory://", "--service", "web",
		"--port", strconv.Itoa(port), "--addr", addr, "--grace-period", "60s", "--output", "json").Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("want prestop to exit 0, got %d:\n%s%s", ee.ExitCode(), out, ee.Stderr)
	} else if err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("want one JSON object, got %v:\n%s", err, out)
	}
	if res.Outcome != "drained" || res.OpenConns != 0 {
		t.Fatalf("want outcome drained with open_conns 0 (the keep-alive connection carries no request), got %+v", res)
	}

	if err := app.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-app.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("want the app to exit after SIGTERM, still running:\n%s", app.output())
	}
	if app.err != nil {
		t.Fatalf("want the app's graceful shutdown to end with exit 0, got %v:\n%s", app.err, app.output())
	}
}

// waitServing waits until something accepts connections on port, failing
// if app exits first.
func waitServing(t *testing.T, port int, app *child) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !dialOK(port) {
		select {
		case <-app.done:
			t.Fatalf("the app exited before serving on %d: %v\n%s", port, app.err, app.output())
		case <-deadline:
			t.Fatalf("want the app serving on %d within 30s:\n%s", port, app.output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var registeredRe = regexp.MustCompile(`lameduck run: registered child=`)

// `lameduck run` with a consumer's idle keep-alive connection held open:
// it carries no request, so SIGTERM is not held back until the deadline
// (55s with this budget): nothing is reported busy, the child drains
// itself and lameduck exits 0.
func TestRunBinaryIdleKeepAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two binaries")
	}
	t.Parallel()
	dir := t.TempDir()
	lameduck := build(t, dir, "lameduck", "./lameduck")
	port := freePort(t)
	out := newWatchBuffer()
	cmd := exec.Command(lameduck, "run", "--registry", "memory://", "--service", "web", "--port", strconv.Itoa(port),
		"--budget", "60s", "--", childBinary(t), "-addr", "127.0.0.1:{port}")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	out.waitFor(t, registeredRe, 30*time.Second)
	holdKeepAlive(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/healthz")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err // for Cleanup
		if err != nil {
			t.Fatalf("want exit 0, got %v; output:\n%s", err, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("want lameduck run to exit once the port went quiet, still running after 30s; output:\n%s", out)
	}
	got := out.String()
	if !strings.Contains(got, "[child] got SIGTERM") {
		t.Errorf("want %q in the output, got:\n%s", "[child] got SIGTERM", got)
	}
	if strings.Contains(got, "conns-busy") {
		t.Errorf("want no conns-busy report for an idle keep-alive connection, got:\n%s", got)
	}
}

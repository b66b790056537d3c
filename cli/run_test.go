//go:build linux

// Linux only: `lameduck run` is (see platform.go).

package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	ucli "github.com/urfave/cli/v2"

	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/pkg/supervisor"
)

func TestRunBadInput(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"--registry", "memory://", "--service", "web", "--port", "8080"}, "no command to run"},
		{"no service", []string{"--registry", "memory://", "--port", "8080", "--", "true"}, "missing --service"},
		{"no port", []string{"--registry", "memory://", "--service", "web", "--", "true"}, "--port 0"},
		{"port 70000", []string{"--registry", "memory://", "--service", "web", "--port", "70000", "--", "true"}, "--port 70000"},
		{"no registry", []string{"--service", "web", "--port", "8080", "--", "true"}, "no registry given"},
		{"bad budget", []string{"--registry", "memory://", "--service", "web", "--port", "8080", "--budget", "0s", "--", "true"}, "--budget"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := run(t, append([]string{"run"}, c.args...)...)
			if code != ExitBadInput {
				t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitBadInput, code, stdout, stderr)
			}
			checkOneLine(t, stdout, stderr, c.want)
		})
	}
}

// lameduck run, built and run as a user would: the child is registered,
// and SIGTERM to the supervisor takes it offline and ends it; exit 0, and
// no process of the child's group is left.
func TestRunBinarySupervisesAndStops(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	t.Parallel()
	dir := t.TempDir()
	for _, b := range [][2]string{{"lameduck", "./lameduck"}, {"child", "../pkg/supervisor/testdata/child"}} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b[0]), b[1]).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "lameduck"), "run", "--registry", "memory://", "--service", "web",
		"--port", strconv.Itoa(port), "--budget", "10s", "--", filepath.Join(dir, "child"), "-addr", "127.0.0.1:"+strconv.Itoa(port))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait (bounded) until the child serves: a child process has nothing
	// to wait on but its port.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child never served on port %d:\n%s", port, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("want exit 0 after SIGTERM, got %v:\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "[child] got SIGTERM") {
		t.Fatalf("want the child to get SIGTERM from the supervisor, got:\n%s", out.String())
	}
	if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
		conn.Close()
		t.Fatalf("want nothing serving on port %d after the supervisor exited, the child still answers", port)
	}
}

// The new flags' mistakes: one line, exit 2, what to write instead, and no
// credential echoed.
func TestRunFlagsBadInput(t *testing.T) {
	t.Parallel()
	base := []string{"--registry", "memory://", "--service", "web", "--port", "8080"}
	with := func(args ...string) []string {
		return append(append(append([]string(nil), base...), args...), "--", "./web")
	}
	runBadInput(t, "run", []badInputCase{
		{"rss without unit", with("--recycle-rss", "512M"), `--recycle-rss "512M" is not a size; want one such as 512MiB, 1GiB, 300MB or a number of bytes`},
		{"rss words", with("--recycle-rss", "lots"), `--recycle-rss "lots" is not a size`},
		{"negative age", with("--recycle-after", "-1h"), "--recycle-after -1h0m0s: want a positive duration"},
		{"negative conn-wait", with("--conn-wait", "-1s"), "--conn-wait -1s: want a duration of 0 or more, such as 250ms"},
		{"negative conn-wait with =", with("--conn-wait=-250ms"), "--conn-wait -250ms: want a duration of 0 or more"},
		{"conn-wait not a duration", with("--conn-wait", "soon"), "conn-wait"},
		{"standby port alone", with("--standby-port", "9000"), "--standby-port 9000: is only used with standby, recycle-after or recycle-rss"},
		{"standby id alone", with("--standby-id", "web-2"), `--standby-id "web-2": is only used with standby`},
		{"standby port is port", with("--standby", "--standby-port", "8080"), "--standby-port 8080: is the program's own port"},
		{"standby port out of range", with("--standby", "--standby-port", "70000"), "--standby-port 70000: want a port between 1 and 65535"},
		{"no room for standby", []string{"--registry", "memory://", "--service", "web", "--port", "65535", "--standby", "--", "./web"}, "--port 65535: leaves no port+1 for the second copy; give standby-port"},
		{"same ids", with("--standby", "--id", "a", "--standby-id", "a"), `--standby-id "a": is the first copy's ID`},
		{"ready not http", with("--ready", "tcp://127.0.0.1:8080"), `--ready "tcp://127.0.0.1:8080": want an http:// or https:// URL such as http://127.0.0.1:{port}/healthz`},
		{"ready with credentials", with("--ready", "http://u:"+secret+"@127.0.0.1:8080/"), `--ready "http://***@127.0.0.1:8080/": carries credentials`},
		{"live one port for two copies", with("--standby", "--live", "http://127.0.0.1:9999/healthz"), "--live \"http://127.0.0.1:9999/healthz\": names neither the program's port nor {port}"},
		{"negative ready-timeout", with("--ready-timeout", "-1s"), "--ready-timeout -1s: want a duration of 0 or more, such as 5m (0: wait for readiness forever)"},
		{"pass-env not a secret", with("--pass-env", "PATH"), "--pass-env PATH: is not a variable lameduck keeps from the child, which inherits every other one anyway; pass-env takes CONSUL_HTTP_TOKEN"},
		{"metrics not host:port", with("--metrics", "9464"), `--metrics: admin: address "9464" is not host:port`},
		{"bad addr", append([]string{"--addr", ""}, with()...), "--addr \"\": instance of \"web\" has an empty address"},
	})
}

// --metrics off loopback needs a token, which /metrics then requires.
func TestRunMetricsOffLoopbackNeedsToken(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "run", "--registry", "memory://", "--service", "web", "--port", "8080",
		"--metrics", "0.0.0.0:9464", "--", "./web")
	if code != ExitBadInput {
		t.Fatalf("want exit code %d, got %d (stderr %q)", ExitBadInput, code, stderr)
	}
	checkOneLine(t, stdout, stderr, "is not loopback; bind 127.0.0.1 or set a token (--admin-token or LAMEDUCK_ADMIN_TOKEN; /metrics then requires it)")
}

// watchBuffer is an io.Writer safe for concurrent use whose readers can
// wait for a string to appear.
type watchBuffer struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{} // closed and replaced at every write
}

func newWatchBuffer() *watchBuffer { return &watchBuffer{changed: make(chan struct{})} }

func (w *watchBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	close(w.changed)
	w.changed = make(chan struct{})
	return len(p), nil
}

func (w *watchBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// waitFor waits until the text matches re and returns the submatches of
// the first match.
func (w *watchBuffer) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		m := re.FindStringSubmatch(w.b.String())
		ch := w.changed
		w.mu.Unlock()
		if m != nil {
			return m
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("want output matching %q within %v, got:\n%s", re, timeout, w.String())
		}
	}
}

// mainRun is one in-process run of Main under Interrupts that a test
// drives by hand.
type mainRun struct {
	in     *Interrupts
	stdout *watchBuffer
	stderr *watchBuffer
	code   chan int
}

func startMain(t *testing.T, args ...string) *mainRun {
	t.Helper()
	m := &mainRun{in: NewInterrupts(context.Background()), stdout: newWatchBuffer(), stderr: newWatchBuffer(), code: make(chan int, 1)}
	go func() { m.code <- Main(m.in.Context(), append([]string{"lameduck"}, args...), m.stdout, m.stderr) }()
	t.Cleanup(func() {
		select {
		case <-m.code:
		default:
			m.in.Interrupt(syscall.SIGTERM)
			m.in.Interrupt(syscall.SIGTERM)
			m.in.Interrupt(syscall.SIGTERM)
		}
	})
	return m
}

// wait returns Main's exit code, failing the test if it takes longer than
// timeout.
func (m *mainRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case code := <-m.code:
		m.code <- code // for Cleanup
		return code
	case <-time.After(timeout):
		t.Fatalf("want lameduck to exit within %v, it is still running; stdout:\n%s\nstderr:\n%s", timeout, m.stdout, m.stderr)
		return 0
	}
}

// childBinary builds the supervisor tests' child into the test's own
// directory (the build cache makes every build after the first quick).
func childBinary(t *testing.T) string {
	t.Helper()
	return build(t, t.TempDir(), "child", "../pkg/supervisor/testdata/child")
}

// groupGone reports whether no process is left in process group pgid.
func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

var (
	listeningRe = regexp.MustCompile(`\[(\w+)\] listening on 127\.0\.0\.1:(\d+) pid (\d+)`)
	gotTermRe   = regexp.MustCompile(`\[child\] got SIGTERM`)
)

// The second interrupt forces `run`: the child, which ignores SIGTERM, gets
// SIGKILL at once instead of at the end of the minute-long budget; exit 4,
// and nothing is left of its process group.
func TestRunSecondInterruptForces(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process")
	}
	t.Parallel()
	bin := childBinary(t)
	port := freePort(t)
	m := startMain(t, "run", "--registry", "memory://", "--service", "web", "--port", strconv.Itoa(port), "--budget", "60s",
		"--", bin, "-mode=ignore-term", "-addr", "127.0.0.1:{port}")
	match := m.stdout.waitFor(t, listeningRe, 30*time.Second)
	if match[2] != strconv.Itoa(port) {
		t.Fatalf("want {port} in the arguments replaced with %d, the child listens on %s", port, match[2])
	}
	pid, _ := strconv.Atoi(match[3])
	m.in.Interrupt(syscall.SIGTERM)
	m.stdout.waitFor(t, gotTermRe, 30*time.Second) // the offline reached SIGTERM, which the child ignores
	forcedAt := time.Now()
	m.in.Interrupt(syscall.SIGTERM)
	if code := m.wait(t, 10*time.Second); code != ExitForced {
		t.Fatalf("want exit code %d after a second interrupt, got %d; stderr:\n%s", ExitForced, code, m.stderr)
	}
	if took := time.Since(forcedAt); took > 5*time.Second {
		t.Errorf("want the forced stop within 5s, took %v", took)
	}
	if !groupGone(pid) {
		t.Errorf("want nothing left of the child's process group %d, it still has processes", pid)
	}
	if !strings.Contains(m.stderr.String(), "forced") {
		t.Errorf("want the error line to say the stop was forced, got %q", m.stderr)
	}
}

// The same, as a user runs it: two SIGTERMs to the lameduck process.
func TestRunBinaryTwoSIGTERMs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two binaries")
	}
	t.Parallel()
	dir := t.TempDir()
	lameduck := build(t, dir, "lameduck", "./lameduck")
	bin := childBinary(t)
	port := freePort(t)
	out := newWatchBuffer()
	cmd := exec.Command(lameduck, "run", "--registry", "memory://", "--service", "web", "--port", strconv.Itoa(port),
		"--budget", "60s", "--", bin, "-mode=ignore-term", "-addr", "127.0.0.1:{port}")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		done <- cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	match := out.waitFor(t, listeningRe, 30*time.Second)
	pid, _ := strconv.Atoi(match[3])
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, gotTermRe, 30*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != ExitForced {
			t.Fatalf("want exit code %d after two SIGTERMs, got %v; output:\n%s", ExitForced, err, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("want lameduck to exit within 10s of the second SIGTERM; output:\n%s", out)
	}
	if !groupGone(pid) {
		t.Errorf("want nothing left of the child's process group %d, it still has processes", pid)
	}
}

// A command that does not handle the second interrupt is left behind: Main
// returns 4 at once. One that handles it is waited for, until a third.
func TestMainSecondInterrupt(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	claimed := make(chan struct{})
	// A fresh App per run: urfave/cli's App is not safe for concurrent runs.
	newApp := func() *ucli.App {
		return &ucli.App{
			Name:            "test",
			ExitErrHandler:  func(*ucli.Context, error) {},
			HideHelp:        true, // urfave/cli's shared help flag races between parallel apps; see helpFlag
			HideHelpCommand: true,
			Flags:           []ucli.Flag{helpFlag()},
			Commands: withUsageErrors(
				&ucli.Command{Name: "stuck", Action: func(c *ucli.Context) error { <-release; return nil }},
				&ucli.Command{Name: "graceful", Action: func(c *ucli.Context) error { <-c.Context.Done(); return nil }},
				&ucli.Command{Name: "claims", Action: func(c *ucli.Context) error {
					forceRequested(c.Context)
					close(claimed)
					<-release
					return nil
				}},
			),
		}
	}
	start := func(cmd string) (*Interrupts, *watchBuffer, chan int) {
		in := NewInterrupts(context.Background())
		stderr := newWatchBuffer()
		code := make(chan int, 1)
		go func() { code <- runApp(in.Context(), newApp(), []string{"test", cmd}, stderr) }()
		return in, stderr, code
	}
	waitCode := func(t *testing.T, code chan int) int {
		t.Helper()
		select {
		case c := <-code:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("want Main to return within 10s, it did not")
			return 0
		}
	}
	t.Run("stuck", func(t *testing.T) {
		t.Parallel()
		in, stderr, code := start("stuck")
		in.Interrupt(syscall.SIGTERM)
		in.Interrupt(syscall.SIGINT)
		if c := waitCode(t, code); c != ExitForced {
			t.Errorf("want exit code %d, got %d", ExitForced, c)
		}
		if got := stderr.String(); got != "lameduck: stopped at once by a second signal\n" {
			t.Errorf("want one line saying the second signal stopped it, got %q", got)
		}
	})
	t.Run("graceful", func(t *testing.T) {
		t.Parallel()
		in, _, code := start("graceful")
		in.Interrupt(syscall.SIGTERM)
		if c := waitCode(t, code); c != ExitOK {
			t.Errorf("want exit code %d after one interrupt, got %d", ExitOK, c)
		}
		if cause := context.Cause(in.Context()); cause == nil || !strings.Contains(cause.Error(), "terminated") {
			t.Errorf("want the context's cause to name the signal, got %v", cause)
		}
	})
	t.Run("claims", func(t *testing.T) {
		t.Parallel()
		in, _, code := start("claims")
		select {
		case <-claimed:
		case <-time.After(10 * time.Second):
			t.Fatal("the command never started")
		}
		in.Interrupt(syscall.SIGTERM)
		in.Interrupt(syscall.SIGTERM)
		select {
		case c := <-code:
			t.Fatalf("want Main to wait for a command that handles the second interrupt, it returned %d", c)
		case <-time.After(200 * time.Millisecond):
		}
		in.Interrupt(syscall.SIGTERM)
		if c := waitCode(t, code); c != ExitForced {
			t.Errorf("want exit code %d after a third interrupt, got %d", ExitForced, c)
		}
	})
}

// scrapeMetrics GETs /metrics from a running `run --metrics`.
func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitMetric polls /metrics (the supervisor's state seen from outside)
// until every series has its value.
func waitMetric(t *testing.T, m *mainRun, addr string, want map[string]string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		text := scrapeMetrics(t, addr)
		ok := true
		for series, v := range want {
			if !strings.Contains(text, "\n"+series+" "+v+"\n") {
				ok = false
			}
		}
		if ok {
			return
		}
		select {
		case <-tick.C:
		case code := <-m.code:
			m.code <- code
			t.Fatalf("lameduck exited with %d before the metrics showed %v; stderr:\n%s\nstdout:\n%s", code, want, m.stderr, m.stdout)
		case <-deadline:
			t.Fatalf("want metrics %v within %v, got:\n%s\nstdout:\n%s", want, timeout, text, m.stdout)
		}
	}
}

func dialOK(port int) bool {
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// --config runs the programs side by side: one that gives up leaves the
// other serving; SIGTERM then takes the rest offline, and the exit code is
// the worst outcome (1, gave up), with the program named.
func TestRunConfigProgramsAreIndependent(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	t.Parallel()
	bin := childBinary(t)
	webPort, metricsPort := freePort(t), freePort(t)
	cfg := writeConfig(t, `
programs:
  web:
    port: `+strconv.Itoa(webPort)+`
    ready: http://127.0.0.1:`+strconv.Itoa(webPort)+`/healthz
    command: [`+strconv.Quote(bin)+`, -addr, "127.0.0.1:{port}"]
  crashy:
    port: `+strconv.Itoa(freePort(t))+`
    command: [`+strconv.Quote(bin)+`, -mode=crash]
`)
	metrics := "127.0.0.1:" + strconv.Itoa(metricsPort)
	m := startMain(t, "run", "--registry", "memory://", "--config", cfg, "--budget", "10s", "--metrics", metrics)
	waitMetric(t, m, metrics, map[string]string{
		`lameduck_supervisor_gave_up_total{program="crashy"}`:                "1",
		`lameduck_supervisor_children{program="web",role="active"}`:          "1",
		`lameduck_supervisor_exits_total{outcome="failed",program="crashy"}`: "6",
	}, 60*time.Second)
	if !dialOK(webPort) {
		t.Fatalf("want web still serving on %d after crashy gave up; stdout:\n%s", webPort, m.stdout)
	}
	m.in.Interrupt(syscall.SIGTERM)
	code := m.wait(t, 30*time.Second)
	if code != ExitFailed {
		t.Fatalf("want exit code %d (a program gave up), got %d; stderr:\n%s", ExitFailed, code, m.stderr)
	}
	var errLines []string // the children's own stderr lines are "[name] ..."
	for line := range strings.Lines(m.stderr.String()) {
		if strings.HasPrefix(line, "lameduck: ") {
			errLines = append(errLines, line)
		}
	}
	stderr := strings.Join(errLines, "")
	if len(errLines) != 1 || !strings.Contains(stderr, `lameduck: program "crashy": supervisor: gave up restarting crashy`) {
		t.Errorf("want one error line naming crashy and why it was given up, got %q", stderr)
	}
	if strings.Contains(stderr, `program "web"`) {
		t.Errorf("want web's clean offline not reported as an error, got %q", stderr)
	}
	if !strings.Contains(m.stdout.String(), "[web] got SIGTERM") {
		t.Errorf("want web taken offline with SIGTERM, got:\n%s", m.stdout)
	}
	if dialOK(webPort) {
		t.Errorf("want nothing serving on %d after lameduck exited", webPort)
	}
}

// --standby keeps a second copy on --port + 1, each copy told its own
// port; both are stopped by SIGTERM.
func TestRunStandby(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	t.Parallel()
	bin := childBinary(t)
	port := freePort(t)
	if !portFree(port + 1) {
		t.Skipf("port %d, the standby's, is taken", port+1)
	}
	metrics := "127.0.0.1:" + strconv.Itoa(freePort(t))
	m := startMain(t, "run", "--registry", "memory://", "--service", "web", "--port", strconv.Itoa(port), "--standby",
		"--ready", "http://127.0.0.1:"+strconv.Itoa(port)+"/healthz", "--metrics", metrics,
		"--", bin, "-addr", "127.0.0.1:{port}")
	waitMetric(t, m, metrics, map[string]string{
		`lameduck_supervisor_children{program="child",role="active"}`:  "1",
		`lameduck_supervisor_children{program="child",role="standby"}`: "1",
	}, 30*time.Second)
	for _, p := range []int{port, port + 1} {
		if !dialOK(p) {
			t.Errorf("want a copy serving on %d, none answers", p)
		}
	}
	m.in.Interrupt(syscall.SIGTERM)
	if code := m.wait(t, 30*time.Second); code != ExitOK {
		t.Fatalf("want exit code 0, got %d; stderr:\n%s", code, m.stderr)
	}
	for _, p := range []int{port, port + 1} {
		if dialOK(p) {
			t.Errorf("want nothing serving on %d after lameduck exited", p)
		}
	}
}

func portFree(port int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// One slog line per event, at a level that says how bad it is.
func TestRunLogEvent(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	logEvent(log, supervisor.Event{Kind: supervisor.EventStarted, Name: "web", PID: 42, Port: 8081})
	logEvent(log, supervisor.Event{Kind: supervisor.EventExited, Name: "web", PID: 42, Port: 8081, Code: -1, Signal: syscall.SIGKILL, Err: errors.New("killed")})
	logEvent(log, supervisor.Event{Kind: supervisor.EventGaveUp, Name: "web", Err: errors.New("too many")})
	logEvent(log, supervisor.Event{Kind: supervisor.EventPromoted, Name: "web", Port: 8081})
	want := []string{
		`level=INFO msg="lameduck run: started" child=web port=8081 pid=42`,
		`level=WARN msg="lameduck run: exited" child=web port=8081 pid=42 signal=killed err=killed`,
		`level=ERROR msg="lameduck run: gave-up" child=web err="too many"`,
		`level=INFO msg="lameduck run: promoted" child=web port=8081`,
	}
	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("want log lines\n%s\ngot\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}

// runBinary starts the built lameduck with args and extra environment
// variables; its stdout and stderr go to one watchBuffer. Cleanup kills it.
func runBinary(t *testing.T, lameduck string, env []string, args ...string) (*exec.Cmd, *watchBuffer, chan error) {
	t.Helper()
	cmd := exec.Command(lameduck, args...)
	cmd.Env = append(os.Environ(), env...)
	out := newWatchBuffer()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		done <- nil
	})
	return cmd, out, done
}

// exitOf waits (at most timeout) for the process to exit and returns its
// exit code.
func exitOf(t *testing.T, done chan error, out *watchBuffer, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-done:
		done <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(timeout):
		t.Fatalf("want lameduck to exit within %v; output:\n%s", timeout, out.String())
		return 0
	}
}

// The child of lameduck run holds none of the secrets lameduck reads, but
// the one --pass-env names; and no secret shows in lameduck's output.
func TestRunChildGetsNoSecrets(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	t.Parallel()
	dir := t.TempDir()
	lameduck, child := build(t, dir, "lameduck", "./lameduck"), build(t, dir, "child", "../pkg/supervisor/testdata/child")
	port := strconv.Itoa(freePort(t))
	envFile := filepath.Join(dir, "env")
	secrets := map[string]string{}
	var env []string
	for _, name := range secretEnv() {
		secrets[name] = "s3cret-" + strings.ToLower(name)
		env = append(env, name+"="+secrets[name])
	}
	cmd, out, done := runBinary(t, lameduck, env, "run", "--registry", "memory://", "--service", "web", "--port", port,
		"--pass-env", adapters.EnvNacosUsername, "--", child, "-addr", "127.0.0.1:"+port, "-env-out", envFile)
	out.waitFor(t, regexp.MustCompile(`lameduck run: registered`), 30*time.Second)
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	childEnv := strings.Split(strings.TrimSpace(string(b)), "\n")
	for name, value := range secrets {
		passed := slices.Contains(childEnv, name+"="+value)
		if want := name == adapters.EnvNacosUsername; passed != want {
			t.Errorf("%s in the child's environment: want %v (--pass-env %s), got %v", name, want, adapters.EnvNacosUsername, passed)
		}
		if slices.ContainsFunc(childEnv, func(kv string) bool { return strings.HasPrefix(kv, name+"=") && kv != name+"="+value }) {
			t.Errorf("want %s absent or passed as is, got another value in the child's environment", name)
		}
	}
	if !slices.Contains(childEnv, "LAMEDUCK_PORT="+port) {
		t.Errorf("want LAMEDUCK_PORT=%s in the child's environment, got %q", port, childEnv)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, done, out, 30*time.Second); code != 0 {
		t.Fatalf("want exit 0 after SIGTERM, got %d:\n%s", code, out.String())
	}
	if strings.Contains(out.String(), "s3cret") {
		t.Errorf("want no secret in lameduck's output, got:\n%s", out.String())
	}
}

// The case: a grandchild that called setsid and holds the child's
// stdout. SIGTERM of lameduck run exits 0, and the grandchild is gone.
func TestRunBinarySetsidGrandchild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	t.Parallel()
	dir := t.TempDir()
	lameduck, child := build(t, dir, "lameduck", "./lameduck"), build(t, dir, "child", "../pkg/supervisor/testdata/child")
	port := strconv.Itoa(freePort(t))
	cmd, out, done := runBinary(t, lameduck, nil, "run", "--registry", "memory://", "--service", "web", "--port", port,
		"--", child, "-addr", "127.0.0.1:"+port, "-grandchild")
	m := out.waitFor(t, regexp.MustCompile(`\[child\] grandchild pid (\d+)`), 30*time.Second)
	out.waitFor(t, regexp.MustCompile(`lameduck run: registered`), 30*time.Second)
	pid, _ := strconv.Atoi(m[1])
	p, err := procfs.NewProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if now, err := p.Stat(); err == nil && now.Starttime == st.Starttime {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, done, out, 30*time.Second); code != 0 {
		t.Fatalf("want exit 0 after SIGTERM with a setsid grandchild holding the child's stdout, got %d:\n%s", code, out.String())
	}
	// Killed before lameduck exited, it may still await its reaper (init).
	deadline := time.Now().Add(10 * time.Second)
	for {
		now, err := p.Stat()
		if err != nil || now.Starttime != st.Starttime || now.State == "Z" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want the setsid grandchild %d gone after lameduck run exited, got state %s; output:\n%s", pid, now.State, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

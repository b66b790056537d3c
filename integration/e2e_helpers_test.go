package integration

// Helpers for the end-to-end tests (e2e_*_test.go): they build the real
// binaries, run them as child processes the way a user or the kubelet would,
// and put a client load on them through a real Consul.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/cli/demo"
	"github.com/lameduck/lameduck/registry"
)

// e2eBinaries are the packages the end-to-end tests build, by short name.
var e2eBinaries = map[string]string{
	"lameduck": "./cli/lameduck",
	"app":      "./examples/app",
	"plainapp": "./integration/testdata/plainapp",
}

// e2eBuild builds the named binaries (keys of e2eBinaries) into a fresh
// temporary directory and returns their paths by name. The build cache makes
// every build after the first a link.
func e2eBuild(t *testing.T, names ...string) map[string]string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := map[string]string{}
	for _, n := range names {
		pkg, ok := e2eBinaries[n]
		if !ok {
			t.Fatalf("e2eBuild: unknown binary %q", n)
		}
		bin := filepath.Join(dir, n)
		cmd := exec.CommandContext(ctx, gobin, "build", "-o", bin, pkg)
		cmd.Dir = ".." // the module root; tests run in the package directory
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		out[n] = bin
	}
	return out
}

// lockedBuffer collects a child's output; the child writes while the test
// reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// child is a process the test started. done is closed once it has exited
// and been reaped; state is set before.
type child struct {
	name   string
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	done   chan struct{}
	state  *os.ProcessState
	err    error // from Wait, other than a non-zero exit
}

// e2eStart starts bin with args. Its environment is the test's without
// LAMEDUCK_* variables, so a developer's LAMEDUCK_REGISTRY cannot change a
// command's mode. In t.Cleanup the child is killed if still running and
// reaped, its PID is checked to be gone, and its output is logged if the
// test failed.
func e2eStart(t *testing.T, name, bin string, args ...string) *child {
	t.Helper()
	return e2eStartEnv(t, name, bin, nil, args...)
}

// e2eStartEnv is e2eStart with env (NAME=value entries) added to the
// child's environment: for a parallel test, which cannot use t.Setenv.
func e2eStartEnv(t *testing.T, name, bin string, env []string, args ...string) *child {
	t.Helper()
	c := &child{name: name, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = c.stdout, c.stderr
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LAMEDUCK_") {
			c.cmd.Env = append(c.cmd.Env, kv)
		}
	}
	c.cmd.Env = append(c.cmd.Env, env...)
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		err := c.cmd.Wait()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			c.err = err
		}
		c.state = c.cmd.ProcessState
		close(c.done)
	}()
	pid := c.cmd.Process.Pid
	t.Cleanup(func() {
		if !c.exited() {
			_ = c.cmd.Process.Signal(syscall.SIGKILL)
		}
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) not reaped 10s after SIGKILL", name, pid)
		}
		if err := processGone(pid); err != nil {
			t.Errorf("%s (pid %d) outlived the test: %v", name, pid, err)
		}
		if t.Failed() {
			t.Logf("%s %s: %s\n--- stdout:\n%s--- stderr:\n%s", name, strings.Join(args, " "), c.describe(), c.stdout, c.stderr)
		}
	})
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the child to exit and reports whether it did.
func (c *child) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
		return false
	}
}

// exitCode is the exit code, or -1 if a signal ended the child. Call it
// after done.
func (c *child) exitCode() int { return c.state.ExitCode() }

func (c *child) describe() string {
	if !c.exited() {
		return "still running"
	}
	if c.err != nil {
		return "wait: " + c.err.Error()
	}
	return c.state.String()
}

// output is everything the child wrote, for failure messages.
func (c *child) output() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", c.stdout, c.stderr)
}

// e2ePorts returns n distinct loopback ports that nothing listens on, none
// handed out twice in this process.
func e2ePorts(t *testing.T, n int) []int {
	t.Helper()
	// Below the kernel's ephemeral range, as freePortSet picks them: a
	// port the kernel handed out for a moment (127.0.0.1:0) may go to the
	// next outgoing connection, of a load generator say, before the child
	// binds it.
	ports := make([]int, n)
	for k := range ports {
		ports[k] = freePortSet(t, 0)
	}
	return ports
}

// e2eWaitListening polls addr until it accepts a TCP connection, the child
// exits, or d passes.
func e2eWaitListening(t *testing.T, c *child, addr string, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-c.done:
			t.Fatalf("%s exited (%s) before listening on %s\n%s", c.name, c.describe(), addr, c.output())
		case <-deadline.C:
			t.Fatalf("%s: want it listening on %s within %v, got %v", c.name, addr, d, err)
		case <-tick.C:
		}
	}
}

// e2eDeregisterLeftovers removes the given Consul service IDs from the
// agent when the test ends, for instances the test did not take offline.
func e2eDeregisterLeftovers(t *testing.T, ids ...string) {
	c, err := api.NewClient(&api.Config{Address: consulAddr()})
	if err != nil {
		t.Fatalf("consul api client: %v", err)
	}
	t.Cleanup(func() {
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = c.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
			cancel()
		}
	})
}

// e2eLoad is a running demo.Load.
type e2eLoad struct {
	*demo.Load
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // Run's error, set before done
	once   sync.Once
}

// e2eStartLoad starts a round-robin load of workers over the service's
// instances, discovered through a Consul watch like any consumer's, and
// waits until it sees want instances and every endpoint in busy has served
// 20 requests.
func e2eStartLoad(t *testing.T, service string, workers, want int, busy ...string) *e2eLoad {
	t.Helper()
	return e2eStartLoadOn(t, newConsul(t), service, workers, want, busy...)
}

// e2eStartLoadOn is e2eStartLoad over any registry's watch.
func e2eStartLoadOn(t *testing.T, reg registry.Registry, service string, workers, want int, busy ...string) *e2eLoad {
	t.Helper()
	l := demo.NewLoad(reg, service, workers, want)
	ctx, cancel := context.WithCancel(context.Background())
	el := &e2eLoad{Load: l, cancel: cancel, done: make(chan struct{})}
	go func() { el.err = l.Run(ctx); close(el.done) }()
	t.Cleanup(func() { el.stop(t) })
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	select {
	case <-l.Ready():
	case <-el.done:
		t.Fatalf("load stopped before it saw %d instances of %s: %v", want, service, el.err)
	case <-deadline.C:
		t.Fatalf("load: want %d instances of %s in %s's watch within 30s, not yet", want, service, reg)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, ep := range busy {
		for c := l.Counts(ep); c.Sent-c.Failed < 20; c = l.Counts(ep) {
			select {
			case <-deadline.C:
				t.Fatalf("load: want 20 requests served by %s within 30s, got %+v", ep, c)
			case <-tick.C:
			}
		}
	}
	return el
}

// keepGoing lets the load run for d more, then stops it.
func (el *e2eLoad) keepGoing(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-el.done:
		t.Fatalf("load stopped early: %v", el.err)
	case <-time.After(d):
	}
	el.stop(t)
}

// stop ends the load and waits for its workers; it may be called again.
func (el *e2eLoad) stop(t *testing.T) {
	el.cancel()
	select {
	case <-el.done:
	case <-time.After(15 * time.Second):
		t.Errorf("load did not stop within 15s of its cancel")
		return
	}
	el.once.Do(func() {
		if el.err != nil {
			t.Errorf("load: %v", el.err)
		}
		el.Close()
	})
}

// e2eKubelet is what happened when the kubelet stopped a pod.
type e2eKubelet struct {
	prestopTook    time.Duration
	prestopDone    bool // the hook exited within the grace period
	goneBeforeTERM bool // the app had already exited when SIGTERM was due
	killed         bool // SIGKILL was needed at the end of the grace period
}

// e2eKubeletStop stops app the way the kubelet stops a pod: run the preStop
// hook (started by prestop) and wait for it, for at most the grace period;
// then SIGTERM the app; then SIGKILL it if it is still alive when the grace
// period, counted from the start, has passed.
func e2eKubeletStop(t *testing.T, app *child, grace time.Duration, prestop func() *child) e2eKubelet {
	t.Helper()
	var k e2eKubelet
	start := time.Now()
	end := time.NewTimer(grace)
	defer end.Stop()
	hook := prestop()
	select {
	case <-hook.done:
		k.prestopDone = true
	case <-end.C:
		t.Errorf("preStop hook still running after the grace period %v", grace)
		_ = hook.cmd.Process.Signal(syscall.SIGKILL) // as the kubelet does
		end.Reset(0)
	}
	k.prestopTook = time.Since(start)
	if app.exited() {
		k.goneBeforeTERM = true
		return k
	}
	if err := app.cmd.Process.Signal(syscall.SIGTERM); errors.Is(err, os.ErrProcessDone) {
		k.goneBeforeTERM = true // exited as the hook returned; Wait reaped it first
		if !app.wait(10 * time.Second) {
			t.Fatalf("%s: reaped but not done 10s later", app.name)
		}
		return k
	} else if err != nil {
		t.Fatalf("SIGTERM to %s: %v", app.name, err)
	}
	select {
	case <-app.done:
	case <-end.C:
		_ = app.cmd.Process.Signal(syscall.SIGKILL)
		k.killed = true
		if !app.wait(10 * time.Second) {
			t.Fatalf("%s (pid %d) still alive 10s after SIGKILL", app.name, app.pid())
		}
	}
	return k
}

// e2eConsulHas reports whether Consul's passing health list, as a consumer
// reads it, holds an instance at endpoint.
func e2eConsulHas(t *testing.T, see func(context.Context, string) ([]registry.Instance, error), service, endpoint string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := see(ctx, service)
	if err != nil {
		t.Fatalf("read consul's list of %s: %v", service, err)
	}
	for _, in := range list {
		if in.Endpoint() == endpoint {
			return true
		}
	}
	return false
}

func e2eEndpoint(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// e2eApp is one running instance of examples/app or of the plain app.
type e2eApp struct {
	*child
	id    string // Consul service ID
	port  int    // HTTP port, the registered one
	admin int    // admin endpoint port (examples/app only)
}

func (a *e2eApp) endpoint() string { return e2eEndpoint(a.port) }

// e2eStartLibraryApps starts n instances of examples/app (built at bin),
// registered in Consul as service, and waits until each admin endpoint
// listens. Instances still registered when the test ends are removed.
func e2eStartLibraryApps(t *testing.T, bin, service string, n int) []*e2eApp {
	t.Helper()
	return e2eStartLibraryAppsOn(t, bin, "consul://"+consulAddr(), service, n)
}

// e2eStartLibraryAppsOn is e2eStartLibraryApps on the registry at regURL.
func e2eStartLibraryAppsOn(t *testing.T, bin, regURL, service string, n int) []*e2eApp {
	t.Helper()
	return e2eStartLibraryAppsWith(t, bin, regURL, service, n, nil)
}

// e2eStartLibraryAppsWith is e2eStartLibraryAppsOn with env added to each
// app's environment (see e2eStartEnv) and extra flags after the others,
// such as -budget.
func e2eStartLibraryAppsWith(t *testing.T, bin, regURL, service string, n int, env []string, extra ...string) []*e2eApp {
	t.Helper()
	ports := e2ePorts(t, 3*n)
	apps := make([]*e2eApp, n)
	for k := range apps {
		h, g, a := ports[3*k], ports[3*k+1], ports[3*k+2]
		id := fmt.Sprintf("%s-%d", service, h) // examples/app names itself so
		if strings.HasPrefix(regURL, "consul://") {
			e2eDeregisterLeftovers(t, id) // runs after the child is killed
		}
		args := append([]string{"-registry", regURL, "-service", service,
			"-http", e2eEndpoint(h), "-grpc", e2eEndpoint(g), "-admin", e2eEndpoint(a)}, extra...)
		c := e2eStartEnv(t, fmt.Sprintf("app[%d]", k), bin, env, args...)
		apps[k] = &e2eApp{child: c, id: id, port: h, admin: a}
	}
	for _, a := range apps {
		e2eWaitListening(t, a.child, e2eEndpoint(a.admin), 30*time.Second)
	}
	return apps
}

// e2eStartPlainApps starts n instances of the plain app (built at bin),
// which register themselves in Consul as service, and waits until each
// listens. idle is the apps' keep-alive idle timeout.
func e2eStartPlainApps(t *testing.T, bin, service string, n int, idle time.Duration) []*e2eApp {
	t.Helper()
	ports := e2ePorts(t, n)
	apps := make([]*e2eApp, n)
	for k, p := range ports {
		id := fmt.Sprintf("%s-%d", service, p)
		e2eDeregisterLeftovers(t, id)
		c := e2eStart(t, fmt.Sprintf("plainapp[%d]", k), bin,
			"-listen", e2eEndpoint(p), "-consul", consulAddr(), "-service", service, "-id", id,
			"-idle-timeout", idle.String())
		apps[k] = &e2eApp{child: c, id: id, port: p}
	}
	for _, a := range apps {
		e2eWaitListening(t, a.child, a.endpoint(), 30*time.Second)
	}
	return apps
}

// e2eCheckLoad fails the test unless every app served requests and none
// failed.
func e2eCheckLoad(t *testing.T, load *e2eLoad, apps []*e2eApp) {
	t.Helper()
	for _, a := range apps {
		c := load.Counts(a.endpoint())
		t.Logf("load on %s (%s): sent %d, failed %d, longest %v", a.endpoint(), a.name, c.Sent, c.Failed, c.Longest)
		if c.Failed != 0 {
			t.Errorf("%s at %s: want 0 failed requests, got %d of %d: %v", a.name, a.endpoint(), c.Failed, c.Sent, c.Errors)
		}
		if c.Sent-c.Failed == 0 {
			t.Errorf("%s at %s: want some requests served, got none", a.name, a.endpoint())
		}
	}
}

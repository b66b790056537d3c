//go:build linux

// Linux only: these tests run real process trees, in cgroups where one is writable.

package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// hostEnv makes the test binary a supervising process (testHost); its
// value is a hostConfig in JSON.
const hostEnv = "SUPERVISOR_TEST_HOST"

// hostConfig is what testHost supervises, and how.
type hostConfig struct {
	Path      string
	Args      []string
	Cgroups   bool   // false: no cgroups (the fallback)
	Parent    string // with Cgroups, the cgroup the Run's goes under; "": the process's own
	Subreaper bool
}

func init() {
	if cfg := os.Getenv(hostEnv); cfg != "" {
		os.Exit(testHost(cfg))
	}
}

// testHost supervises hc's program until SIGTERM and exits 0 if Run
// returned nil, 1 with the error on stderr otherwise. It prints "guard PID"
// once the child has started and "cgroup DIR" (or "cgroup none: why") at
// the start, and passes the child's output through.
func testHost(cfg string) int {
	_ = os.Unsetenv(hostEnv)
	var hc hostConfig
	if err := json.Unmarshal([]byte(cfg), &hc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var s *Supervisor
	opts := []Option{WithOutput(os.Stdout, os.Stderr), WithEventHook(func(e Event) {
		switch e.Kind {
		case EventStarted:
			pid := 0
			if s.guard != nil {
				pid = s.guard.cmd.Process.Pid
			}
			fmt.Printf("guard %d\n", pid)
		case EventCgroup:
			if e.Err != nil {
				fmt.Printf("cgroup none: %v\n", e.Err)
			} else {
				fmt.Printf("cgroup %s\n", e.Cgroup)
			}
		case EventOutputHeld:
			fmt.Println("output held")
		}
	})}
	if !hc.Cgroups || hc.Parent != "" {
		opts = append(opts, withCgroupParent(hc.Parent))
	}
	if hc.Subreaper {
		opts = append(opts, WithSubreaper())
	}
	s, err := New(Spec{Name: "web", Path: hc.Path, Args: hc.Args}, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := s.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "Run returned: %v\n", err)
		return 1
	}
	return 0
}

// host is a running testHost.
type host struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *syncBuffer // stdout and stderr
	done chan struct{}
	err  error // from Wait, once done is closed
}

// startHost starts a supervising process. Cleanup kills it and every
// process the test named with kill.
func startHost(t *testing.T, hc hostConfig) *host {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(hc)
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, cmd: exec.Command(exe), out: &syncBuffer{}, done: make(chan struct{})}
	h.cmd.Env = append(os.Environ(), hostEnv+"="+string(cfg))
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		h.err = h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		_ = h.cmd.Process.Kill()
		<-h.done
	})
	return h
}

// pid waits for the output to match re and returns its first submatch as
// a process, to be killed at cleanup whatever happens.
func (h *host) pid(re *regexp.Regexp) procID {
	h.t.Helper()
	m := h.out.waitFor(h.t, re)
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid <= 1 {
		h.t.Fatalf("want a PID from %q, got %q", re, m[1])
	}
	id := identify(h.t, pid)
	h.t.Cleanup(func() { id.kill() })
	return id
}

// exitCode waits for the host to exit and returns its exit code.
func (h *host) exitCode() int {
	h.t.Helper()
	select {
	case <-h.done:
	case <-time.After(wait):
		h.t.Fatalf("want the supervising process to exit within %v; output:\n%s", wait, h.out.String())
	}
	var ee *exec.ExitError
	if errors.As(h.err, &ee) {
		return ee.ExitCode()
	}
	if h.err != nil {
		h.t.Fatal(h.err)
	}
	return 0
}

var (
	hostGuardRe     = regexp.MustCompile(`(?m)^guard (\d+)$`)
	hostCgroupRe    = regexp.MustCompile(`(?m)^cgroup (/\S*)$`)
	childPIDRe      = regexp.MustCompile(`\[web\] listening on \S+ pid (\d+)`)
	grandchildPIDRe = regexp.MustCompile(`\[web\] grandchild pid (\d+)`)
	orphanPIDRe     = regexp.MustCompile(`\[web\] orphan pid (\d+)`)
)

// procID names one process: a PID and its start time, so that a reused
// PID is not taken for it.
type procID struct {
	pid   int
	start uint64
}

func identify(t *testing.T, pid int) procID {
	t.Helper()
	p, err := procfs.NewProc(pid)
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	st, err := p.Stat()
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	return procID{pid: pid, start: st.Starttime}
}

// state returns the process's state letter (R, S, Z...) and parent, or ""
// once it is gone (its PID free, or taken by another process).
func (id procID) state() (string, int) {
	p, err := procfs.NewProc(id.pid)
	if err != nil {
		return "", 0
	}
	st, err := p.Stat()
	if err != nil || st.Starttime != id.start {
		return "", 0
	}
	return st.State, st.PPID
}

// kill sends SIGKILL to the process if it is still the same one.
func (id procID) kill() {
	if s, _ := id.state(); s != "" {
		_ = syscall.Kill(id.pid, syscall.SIGKILL)
	}
}

// waitDead waits (at most 10s) until every process is dead: gone, or a
// zombie when reaped is false (a zombie runs nothing; its parent, maybe
// init, reaps it in its own time). The process table gives no event to
// wait on: poll.
func waitDead(t *testing.T, what string, reaped bool, ids ...procID) {
	t.Helper()
	const bound = 10 * time.Second
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	limit := time.After(bound)
	for {
		var alive []string
		for _, id := range ids {
			if s, ppid := id.state(); s != "" && (reaped || s != "Z") {
				alive = append(alive, fmt.Sprintf("%d (state %s, parent %d)", id.pid, s, ppid))
			}
		}
		if len(alive) == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-limit:
			t.Fatalf("%s: want processes gone within %v, got still there: %s", what, bound, strings.Join(alive, ", "))
		}
	}
}

// needCgroups skips the test where no cgroup v2 hierarchy is writable.
func needCgroups(t *testing.T) string {
	t.Helper()
	own, err := ownCgroup()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	dir, err := os.MkdirTemp(own, "lameduck-test-")
	if err != nil {
		t.Skipf("cgroup %s is not writable: %v", own, err)
	}
	t.Cleanup(func() {
		if err := emptyCgroup(dir, cgroupEmptyTimeout); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// cgroupOf returns the cgroup v2 path of process pid, relative to the
// hierarchy's root.
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	p, err := procfs.NewProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	cgs, err := p.Cgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cgs {
		if c.HierarchyID == 0 {
			return c.Path
		}
	}
	t.Fatalf("process %d: no cgroup v2 line", pid)
	return ""
}

// A clean stop leaves nothing: the child's cgroup takes with it a
// grandchild that called setsid and holds the child's output, and an
// orphan whose parent is gone, so Run returns nil at once, and the cgroups
// are removed.
func TestCleanStopKillsSetsidDescendants(t *testing.T) {
	t.Parallel()
	parent := needCgroups(t)
	h := newHarness(t, harnessOpts{args: []string{"-grandchild", "-orphan"}, supervisorO: []Option{withCgroupParent(parent)}})
	h.run()
	cg := h.next(EventCgroup)
	if cg.Err != nil || filepath.Dir(cg.Cgroup) != parent {
		t.Fatalf("want the Run's cgroup under %s, got %q (err %v)", parent, cg.Cgroup, cg.Err)
	}
	started := h.next(EventStarted)
	h.next(EventRegistered)
	child := identify(t, started.PID)
	grandchild := identify(t, atoi(t, h.out.waitFor(t, grandchildPIDRe)[1]))
	orphan := identify(t, atoi(t, h.out.waitFor(t, orphanPIDRe)[1]))
	t.Cleanup(func() { grandchild.kill(); orphan.kill() })
	childCg := cgroupOf(t, child.pid)
	if want := "/" + filepath.Base(cg.Cgroup) + "/child-1"; !strings.HasSuffix(childCg, want) {
		t.Errorf("want the child in a cgroup of its own, ending %s, got %s", want, childCg)
	}
	for _, id := range []procID{grandchild, orphan} {
		if got := cgroupOf(t, id.pid); got != childCg {
			t.Errorf("process %d: want it in the child's cgroup %s, got %s", id.pid, childCg, got)
		}
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want Run to end cleanly, got %v; events: %s", err, h.history())
	}
	waitDead(t, "after a clean stop", false, child, grandchild, orphan)
	for _, e := range h.drainEvents() {
		if e.Kind == EventOutputHeld || e.Kind == EventCgroup {
			t.Errorf("want no %v once the cgroup was killed, got one: %v", e.Kind, e.Err)
		}
	}
	if _, err := os.Stat(cg.Cgroup); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("want the Run's cgroup %s removed, got %v", cg.Cgroup, err)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Without a cgroup, a grandchild that called setsid keeps the child's
// output open after the child exits 0; Run waits a second for it, says
// so, and still returns nil: the child stopped cleanly.
func TestOutputHeldIsNotAFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{args: []string{"-grandchild"}, supervisorO: []Option{withCgroupParent("")}})
	h.run()
	if e := h.next(EventCgroup); e.Err == nil {
		t.Fatalf("want no cgroup with withCgroupParent(\"\"), got %s", e.Cgroup)
	}
	h.next(EventRegistered)
	grandchild := identify(t, atoi(t, h.out.waitFor(t, grandchildPIDRe)[1]))
	t.Cleanup(grandchild.kill) // nothing else will: the fallback without the subreaper
	h.cancel()
	held := h.next(EventOutputHeld)
	if held.Err == nil || !strings.Contains(held.Err.Error(), "held its output") {
		t.Errorf("want EventOutputHeld to say a descendant held the output, got %v", held.Err)
	}
	if e := h.next(EventExited); e.Err != nil || e.Code != 0 {
		t.Errorf("want the child's exit 0 reported as clean, got code %d, err %v", e.Code, e.Err)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want nil from Run when the child exited 0 and a descendant held its output, got %v", err)
	}
}

// lameduck run as it runs: a supervising process with the subreaper, with
// and without cgroups, stopped by SIGTERM. It exits 0, a setsid grandchild
// holding the child's output included; an orphan it adopted and that dies
// is reaped; nothing is left, the guard included.
func TestSIGTERMLeavesNoDescendant(t *testing.T) {
	t.Parallel()
	for _, cgroups := range []bool{true, false} {
		t.Run(fmt.Sprintf("cgroups=%v", cgroups), func(t *testing.T) {
			t.Parallel()
			var parent string
			if cgroups {
				parent = needCgroups(t)
			}
			h := startHost(t, hostConfig{Path: childBin, Args: []string{"-addr=127.0.0.1:0", "-grandchild", "-orphan"}, Cgroups: cgroups, Parent: parent, Subreaper: true})
			child, grandchild, orphan := h.pid(childPIDRe), h.pid(grandchildPIDRe), h.pid(orphanPIDRe)
			guard := h.pid(hostGuardRe)
			var dir string
			if cgroups {
				dir = h.out.waitFor(t, hostCgroupRe)[1]
			}
			// The orphan's parent exited: the subreaper adopted it, and
			// reaps it once it dies.
			if _, ppid := orphan.state(); ppid != h.cmd.Process.Pid {
				t.Fatalf("want the orphan %d adopted by the supervisor %d, got parent %d", orphan.pid, h.cmd.Process.Pid, ppid)
			}
			orphan.kill()
			waitDead(t, "an adopted orphan that died", true, orphan)

			if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := h.exitCode(); code != 0 {
				t.Fatalf("want exit 0 after SIGTERM, got %d; output:\n%s", code, h.out.String())
			}
			waitDead(t, "after SIGTERM of the supervisor", false, child, grandchild, guard)
			if dir != "" {
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("want the Run's cgroup %s removed, got %v", dir, err)
				}
			}
		})
	}
}

// A supervisor killed with SIGKILL leaves nothing behind when it has a
// cgroup: the guard kills the cgroup, setsid grandchild and orphan
// included.
func TestSIGKILLLeavesNoDescendant(t *testing.T) {
	t.Parallel()
	parent := needCgroups(t)
	h := startHost(t, hostConfig{Path: childBin, Args: []string{"-addr=127.0.0.1:0", "-grandchild", "-orphan"}, Cgroups: true, Parent: parent, Subreaper: true})
	child, grandchild, orphan := h.pid(childPIDRe), h.pid(grandchildPIDRe), h.pid(orphanPIDRe)
	guard := h.pid(hostGuardRe)
	dir := h.out.waitFor(t, hostCgroupRe)[1]
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-h.done
	waitDead(t, "after SIGKILL of the supervisor", false, child, grandchild, orphan, guard)
	waitRemoved(t, dir)
}

// waitRemoved waits (at most 10s) until the guard has removed cgroup dir.
func waitRemoved(t *testing.T, dir string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	limit := time.After(10 * time.Second)
	for {
		_, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return
		}
		select {
		case <-tick.C:
		case <-limit:
			t.Fatalf("want cgroup %s removed within 10s, got %v", dir, err)
		}
	}
}

// emptyCgroup kills a cgroup's processes, setsid or not, in cgroups below
// too, with cgroup.kill and without it (kernels before 5.14), and removes
// the cgroups.
func TestEmptyCgroup(t *testing.T) {
	t.Parallel()
	for _, killFile := range []bool{true, false} {
		t.Run(fmt.Sprintf("cgroup.kill=%v", killFile), func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(needCgroups(t), "c")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Close(fd)
			cmd := exec.Command("/bin/sh", "-c", "setsid sleep 300 & sleep 300 & echo started; wait")
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			if _, err := out.Read(make([]byte, 16)); err != nil { // "started": both sleeps forked
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				t.Fatal(err)
			}
			var ids []procID
			for _, f := range strings.Fields(string(b)) {
				ids = append(ids, identify(t, atoi(t, f)))
			}
			if len(ids) != 3 {
				t.Fatalf("want the shell and two sleeps in %s, got PIDs %s", dir, b)
			}
			if err := emptyCgroupVia(dir, cgroupEmptyTimeout, killFile); err != nil {
				t.Fatalf("want the cgroup emptied and removed, got %v", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("want %s removed, got %v", dir, err)
			}
			waitDead(t, "after emptyCgroup", false, ids...)
		})
	}
}

// A cgroup the kernel will not start a child in (here a plain directory
// posing as one) turns cgroups off for the Run, says why, and the child
// starts without one.
func TestRefusedCgroupFallsBack(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	h := newHarness(t, harnessOpts{supervisorO: []Option{withCgroupParent(parent)}})
	h.run()
	if e := h.next(EventCgroup); e.Err != nil || filepath.Dir(e.Cgroup) != parent {
		t.Fatalf("want the Run's cgroup made under %s, got %q (err %v)", parent, e.Cgroup, e.Err)
	}
	refused := h.nextOf(EventCgroup, EventStarted)
	if refused.Kind != EventCgroup || refused.Err == nil || !strings.Contains(refused.Err.Error(), "the kernel refused to start a child in cgroup") {
		t.Fatalf("want EventCgroup saying the kernel refused the cgroup before the start, got %v (err %v)", refused.Kind, refused.Err)
	}
	started := h.next(EventStarted)
	h.next(EventRegistered)
	if got := cgroupOf(t, started.PID); got != cgroupOf(t, os.Getpid()) {
		t.Errorf("want the child in the supervisor's own cgroup %s, got %s", cgroupOf(t, os.Getpid()), got)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want Run to end cleanly without cgroups, got %v", err)
	}
}

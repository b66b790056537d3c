//go:build linux

// Linux only: these tests run real children under the supervisor.

package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestGuardLoop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		in      string
		want    []int    // the process groups killed, sorted
		cgroups []string // the cgroups emptied, in order
	}{
		{"nothing held", "", nil, nil},
		{"held groups", "+100\n+200\n", []int{100, 200}, nil},
		{"removed group", "+100\n+200\n-100\n", []int{200}, nil},
		{"reused group ID", "+100\n-100\n+100\n", []int{100}, nil},
		{"removal of an unknown group", "-100\n+200\n", []int{200}, nil},
		{"last line without newline", "+100\n+200", []int{100, 200}, nil},
		// kill(-1) is every process, kill(0) the guard's own group.
		{"garbage", "+abc\n+1\n+0\n+-5\n100\n*100\n+\n\n+300\n", []int{300}, nil},
		// The Run's cgroup first: it takes its children's with it.
		{"cgroups", "+/cg/run\n+/cg/run/child-1\n+100\n+/cg/run/child-2\n-/cg/run/child-1\n", []int{100}, []string{"/cg/run", "/cg/run/child-2"}},
		{"removed cgroups", "+/cg/run\n+/cg/run/child-1\n-/cg/run/child-1\n-/cg/run\n", nil, nil},
		// Never the root of the hierarchy, nor a path that is not clean.
		{"bad cgroup paths", "+/\n+/cg/../x\n+/cg//x\n+/cg/x/\n+cg/x\n+/cg/ok\n", nil, []string{"/cg/ok"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []int
			var emptied []string
			guardLoop(strings.NewReader(tc.in), func(pid int, sig syscall.Signal) error {
				if sig != syscall.SIGKILL {
					t.Errorf("kill(%d): want SIGKILL, got %v", pid, sig)
				}
				got = append(got, -pid)
				return nil
			}, func(dir string) error {
				emptied = append(emptied, dir)
				return nil
			})
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("input %q: want process groups %v killed, got %v", tc.in, tc.want, got)
			}
			if !slices.Equal(emptied, tc.cgroups) {
				t.Errorf("input %q: want cgroups %q emptied, got %q", tc.in, tc.cgroups, emptied)
			}
		})
	}
}

// A supervisor killed with SIGKILL leaves nothing behind without a cgroup
// either, if nothing called setsid: its child dies by its parent-death
// signal, and the guard kills the grandchild the child forked into its
// group.
func TestGuardKillsGrandchildrenAfterSupervisorSIGKILL(t *testing.T) {
	t.Parallel()
	h := startHost(t, hostConfig{Path: "/bin/sh", Args: []string{"-c", "sleep 300 & exec " + childBin + " -addr=127.0.0.1:0"}})
	pgid := h.pid(childPIDRe).pid
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	guardPID := h.pid(hostGuardRe).pid
	if m := groupMembers(pgid); len(m) < 2 {
		t.Fatalf("want the child and its grandchild in process group %d, got members (pid: state) %v", pgid, m)
	}
	if pg, err := syscall.Getpgid(guardPID); err != nil || pg != guardPID {
		t.Errorf("want the guard %d in a process group of its own, got group %d (err %v)", guardPID, pg, err)
	}

	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-h.done

	// The orphans' new parent (init) reaps them in its own time: poll.
	const bound = 10 * time.Second
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	limit := time.After(bound)
	for {
		groupErr, guardErr := syscall.Kill(-pgid, 0), syscall.Kill(guardPID, 0)
		if errors.Is(groupErr, syscall.ESRCH) && errors.Is(guardErr, syscall.ESRCH) {
			return
		}
		select {
		case <-tick.C:
		case <-limit:
			t.Fatalf("%v after SIGKILL of the supervisor: want process group %d and guard %d gone (ESRCH), got %v and %v; group members (pid: state) %v",
				bound, pgid, guardPID, groupErr, guardErr, groupMembers(pgid))
		}
	}
}

// A Run that ends normally reaps its guard, which exits on its own when
// the pipe closes, and the guard shrugs off the signals a terminal or a
// stop sends to everything.
func TestGuardEndsWithRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.run()
	h.next(EventRegistered)
	g := h.sup.guard
	if g == nil {
		t.Fatal("want a guard process while Run runs, got none")
	}
	pid := g.cmd.Process.Pid
	if pg, err := syscall.Getpgid(pid); err != nil || pg != pid {
		t.Errorf("want the guard %d in a process group of its own, got group %d (err %v)", pid, pg, err)
	}
	// Signals sent before the guard ignores them would kill it: wait
	// until it does. The process table gives no event to wait on: poll.
	ignored := []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(wait)
	for {
		mask, err := sigIgn(pid)
		if err != nil {
			t.Fatalf("guard %d: %v", pid, err)
		}
		if !slices.ContainsFunc(ignored, func(s syscall.Signal) bool { return mask&(1<<(s-1)) == 0 }) {
			break
		}
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("want the guard to ignore %v within %v, got SigIgn %#x", ignored, wait, mask)
		}
	}
	for _, sig := range ignored {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatalf("send %v to the guard: %v", sig, err)
		}
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want Run to end cleanly, got %v", err)
	}
	st := g.cmd.ProcessState
	if st == nil {
		t.Fatalf("want the guard %d reaped when Run returns, got it unreaped", pid)
	}
	if ws := st.Sys().(syscall.WaitStatus); ws.Signaled() || ws.ExitStatus() != 0 {
		t.Errorf("want the guard to exit 0 at end of file, got %v", st)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("want the guard %d gone after Run returned (ESRCH), got %v", pid, err)
	}
}

// A guard that cannot be started does not stop Run.
func TestRunWithoutGuard(t *testing.T) {
	// Not parallel: it changes guardExe.
	old := guardExe
	guardExe = filepath.Join(t.TempDir(), "missing")
	t.Cleanup(func() { guardExe = old })
	h := newHarness(t, harnessOpts{})
	h.run()
	h.next(EventRegistered)
	if h.sup.guard != nil {
		t.Errorf("want no guard when %s cannot run, got process %d", guardExe, h.sup.guard.cmd.Process.Pid)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("want Run to end cleanly without a guard, got %v", err)
	}
}

// A guard whose pipe breaks is killed, not left to see end of file later.
func TestGuardBrokenPipe(t *testing.T) {
	t.Parallel()
	g := startGuard()
	if g == nil {
		t.Fatal("want a guard, got none")
	}
	// The guard dies (as if killed by someone); the next write fails.
	if err := g.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = g.cmd.Process.Wait() // let the pipe's read end close
	g.add(12345)
	g.mu.Lock()
	broken := g.broken
	g.mu.Unlock()
	if !broken {
		t.Errorf("want the guard marked broken after a write to a dead guard, got not broken")
	}
	g.close() // must not block or panic
	g.add(12345)
}

// groupMembers returns the processes in process group pgid and their
// states (R, S, Z, ...), from /proc.
func groupMembers(pgid int) map[int]string {
	m := map[int]string{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) {
			m[pid] = f[0]
		}
	}
	return m
}

// sigIgn returns the mask of signals process pid ignores.
func sigIgn(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no SigIgn in /proc/%d/status", pid)
}

package supervisor

import (
	"bufio"
	"cmp"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The guard covers the one case the supervisor cannot handle itself: its
// own death by SIGKILL (or any death that skips Run's cleanup). Each child
// then dies by its parent-death signal, but only the child: a process it
// forked into its group (a shell wrapper's `sleep &`, a pre-forked worker)
// is reparented to init and lives on.
//
// So Run starts one guard process per Run: the host program's own
// executable (/proc/self/exe) run again with guardEnv set and guardArg as
// its only argument, in a process group of its own (a signal to the
// supervisor's group, such as a terminal's Ctrl-C or a kill of the whole
// group, does not reach it), outside the Run's cgroup, ignoring SIGINT,
// SIGTERM and SIGHUP. The package's init function sees the marker and runs
// the guard loop instead of the host's main, before any of the host's own
// code runs. The guard reads a pipe whose write end only the supervisor
// holds (close-on-exec, so no child inherits it), one line each:
//
//	+PGID   a child started in process group PGID
//	-PGID   the group was sent SIGKILL and its leader is about to be reaped
//	+/DIR   the cgroup DIR (the Run's, or a child's, told before the fork)
//	-/DIR   the cgroup DIR is empty and removed
//
// A group is let go while its leader, a zombie, still keeps the ID from
// being reused, so the guard never holds an ID that a stranger's group may
// take. At end of file, which the kernel delivers when the supervisor dies
// or Run closes the pipe, the guard sends SIGKILL to every group it still
// holds, kills and removes every cgroup it still holds (the Run's first,
// which takes every child's cgroup with it), and exits. Run closes the
// pipe once every child is reaped, and reaps the guard.
//
// The guard is best effort and degrades silently: if it cannot be started
// (no /proc/self/exe, exec fails), or a write to it fails (it died) or
// stalls for guardWriteTimeout (it is stopped), Run goes on without it,
// kills it if it still runs, and children's grandchildren are then
// covered only while the supervisor lives. Without a cgroup (see tree.go),
// a process that leaves its child's group (setsid, setpgid) is not covered
// by the guard.

const (
	// guardEnv marks the guard process; it is set only in the guard's
	// environment, never in a child's.
	guardEnv = "LAMEDUCK_SUPERVISOR_GUARD"
	// guardArg is the guard's only argument, for ps and as a second mark.
	guardArg = "supervisor-guard"
	// guardFD is the guard's end of the pipe.
	guardFD = 3
	// guardWriteTimeout bounds a write to the guard; the guard reads
	// continuously, so only a stopped guard makes a write wait.
	guardWriteTimeout = time.Second
	// guardExitTimeout bounds the wait for the guard to exit once the
	// pipe is closed; past it the guard gets SIGKILL.
	guardExitTimeout = 5 * time.Second
)

// guardLoop reads the guard's lines (see above) from r until end of file
// or a read error, then sends SIGKILL to every process group added and not
// removed, and empties every such cgroup, shortest path first. A line it
// cannot parse is skipped.
func guardLoop(r io.Reader, kill func(pid int, sig syscall.Signal) error, empty func(dir string) error) {
	groups := map[int]bool{}
	cgroups := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 2 || line[0] != '+' && line[0] != '-' {
			continue
		}
		add := line[0] == '+'
		if dir := line[1:]; dir[0] == '/' {
			if path.Clean(dir) != dir || dir == "/" {
				continue // only a cgroup the supervisor named, never the root
			}
			if add {
				cgroups[dir] = true
			} else {
				delete(cgroups, dir)
			}
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue // never kill(-1) or kill(0): everything, or the guard's own group
		}
		if add {
			groups[pgid] = true
		} else {
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		_ = kill(-pgid, syscall.SIGKILL)
	}
	dirs := slices.Collect(maps.Keys(cgroups))
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b)) })
	for _, dir := range dirs {
		_ = empty(dir)
	}
}

// guard is the supervisor's side of a running guard process. A nil *guard
// is a guard that could not be started: every method does nothing. Its
// methods are safe for concurrent use.
type guard struct {
	cmd *exec.Cmd

	mu     sync.Mutex
	w      *os.File // the pipe's write end
	broken bool     // a write failed; the guard was sent SIGKILL and is no longer written to
	closed bool
}

// add tells the guard about a child's process group.
func (g *guard) add(pgid int) { g.send('+', strconv.Itoa(pgid)) }

// remove tells the guard a child's group has been sent SIGKILL and the
// child is about to be reaped.
func (g *guard) remove(pgid int) { g.send('-', strconv.Itoa(pgid)) }

// cgroup tells the guard about a cgroup to kill at end of file (add), or
// that the cgroup is empty and removed.
func (g *guard) cgroup(dir string, add bool) {
	op := byte('-')
	if add {
		op = '+'
	}
	g.send(op, dir)
}

// send writes one line to the guard. It blocks for at most
// guardWriteTimeout; if the write fails, the guard is killed and no
// longer used.
func (g *guard) send(op byte, arg string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.broken || g.closed {
		return
	}
	line := append(append([]byte{op}, arg...), '\n') // at most PIPE_BUF bytes (4096; paths are shorter): written whole or not at all
	_ = g.w.SetWriteDeadline(time.Now().Add(guardWriteTimeout))
	if _, err := g.w.Write(line); err != nil {
		// EPIPE (it died) or a timeout (it is stopped). Kill it before the
		// pipe is ever closed: a guard that woke up to end of file would
		// kill the groups of children that still run.
		g.broken = true
		_ = g.cmd.Process.Kill()
	}
}

// close ends the guard and reaps it; call it once every child has been
// reaped, so that the guard holds no group. It blocks for at most about
// guardExitTimeout. Later sends do nothing.
func (g *guard) close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	if g.broken {
		_ = g.cmd.Wait() // it was sent SIGKILL; reap it before it can see end of file
		untrack(g.cmd.Process.Pid)
		g.w.Close()
		return
	}
	g.w.Close()
	t := time.AfterFunc(guardExitTimeout, func() { _ = g.cmd.Process.Kill() })
	defer t.Stop()
	_ = g.cmd.Wait() // its exit status tells nothing Run could act on
	untrack(g.cmd.Process.Pid)
}

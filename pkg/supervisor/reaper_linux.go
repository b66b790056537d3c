// Linux only: PR_SET_CHILD_SUBREAPER and /proc.

package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// orphanKillTimeout bounds the killing of the orphans left when the last
// Run with WithSubreaper ends.
const orphanKillTimeout = 5 * time.Second

// reaper is the process-wide state behind WithSubreaper, and the set of
// the processes this package started (children and guards), whose exit
// status belongs to their os/exec.Cmd and is never taken by the reaper.
var reaper struct {
	// forking is held for reading from just before a fork until the new
	// PID is in tracked, and for writing by a sweep, so that a sweep never
	// sees a child of ours whose PID is not tracked yet.
	forking sync.RWMutex

	mu      sync.Mutex // guards tracked
	tracked map[int]bool

	// life serialises enterSubreaper and leaveSubreaper, and guards the
	// fields below.
	life sync.Mutex
	runs int           // Runs with WithSubreaper under way
	was  bool          // whether the process was a subreaper before the first of them
	stop chan struct{} // ends the SIGCHLD loop
	done chan struct{} // closed when it has ended
}

// startTracked starts cmd and tracks its PID until untrack.
func startTracked(cmd *exec.Cmd) error {
	reaper.forking.RLock()
	defer reaper.forking.RUnlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	reaper.mu.Lock()
	if reaper.tracked == nil {
		reaper.tracked = map[int]bool{}
	}
	reaper.tracked[cmd.Process.Pid] = true
	reaper.mu.Unlock()
	return nil
}

// untrack forgets a PID once its os/exec.Cmd has reaped it.
func untrack(pid int) {
	reaper.mu.Lock()
	delete(reaper.tracked, pid)
	reaper.mu.Unlock()
}

// enterSubreaper makes the process a child subreaper for a Run, and reaps
// the orphans it adopts whenever SIGCHLD arrives. Every call is paired
// with leaveSubreaper.
func enterSubreaper() error {
	reaper.life.Lock()
	defer reaper.life.Unlock()
	if reaper.runs > 0 {
		reaper.runs++
		return nil
	}
	var was int32
	_ = unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&was)), 0, 0, 0)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("supervisor: become a child subreaper: %w", err)
	}
	reaper.runs, reaper.was = 1, was != 0
	reaper.stop, reaper.done = make(chan struct{}), make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func(stop, done chan struct{}) {
		defer close(done)
		defer signal.Stop(sigs)
		for {
			select {
			case <-stop:
				return
			case <-sigs:
				sweep(false)
			}
		}
	}(reaper.stop, reaper.done)
	return nil
}

// leaveSubreaper ends a Run's share of the subreaper. The last Run to
// leave kills the orphans left (and, as their children are adopted in
// turn, the trees below them) and reaps them, for at most
// orphanKillTimeout, then stops reaping and restores the process's
// subreaper flag. A Run that starts meanwhile waits for it.
func leaveSubreaper() {
	reaper.life.Lock()
	defer reaper.life.Unlock()
	reaper.runs--
	if reaper.runs > 0 {
		return
	}
	// A killed orphan is reaped only once it has died, and its own
	// children are adopted only then: sweep again at each SIGCHLD (or
	// shortly, for one that came before Notify), until none is left.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	limit := time.After(orphanKillTimeout)
sweeping:
	for sweep(true) > 0 {
		select {
		case <-sigs:
		case <-time.After(cgroupRecheck):
		case <-limit:
			break sweeping
		}
	}
	signal.Stop(sigs)
	close(reaper.stop)
	<-reaper.done
	if !reaper.was {
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	}
}

// sweep reaps every zombie child of the process that this package is not
// tracking and that is outside the process's own process group: orphans
// adopted as subreaper, from the children's trees, which all start in
// process groups of their own. The host program's own children, started in
// its group as os/exec does by default, are left to their Wait. With kill
// it also sends SIGKILL to every such child still alive. It returns how
// many it found (reaped or killed).
func sweep(kill bool) int {
	reaper.forking.Lock()
	defer reaper.forking.Unlock()
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0
	}
	me, group := os.Getpid(), syscall.Getpgrp()
	found := 0
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil || st.PPID != me || st.PGRP == group {
			continue
		}
		reaper.mu.Lock()
		mine := reaper.tracked[p.PID]
		reaper.mu.Unlock()
		if mine {
			continue
		}
		found++
		if st.State == "Z" {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(p.PID, &ws, unix.WNOHANG, nil)
		} else if kill {
			_ = unix.Kill(p.PID, unix.SIGKILL)
		}
	}
	return found
}

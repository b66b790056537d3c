package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/lameduck/lameduck/pkg/probe"
)

// child is one running (or exited) child process. Its PID is also its
// process group ID.
type child struct {
	pid    int
	cgroup string        // its own cgroup; "" without one
	done   chan struct{} // closed once the child is reaped
	state  *os.ProcessState
	err    error // from cmd.Wait, when it failed for another reason than the exit status
}

// exited reports whether the child has been reaped.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// start starts the child in its own process group and, where the Run has
// one, its own cgroup (see tree.go). SIGKILL reaches it if the supervisor
// dies (Pdeathsig), and the rest of its group and cgroup through the
// guard, which is told about both at once. A goroutine reaps it: once the
// leader has exited, and while it is still an unreaped zombie that keeps
// its process group ID from being reused, whatever is left of the group
// (grandchildren) gets SIGKILL, the cgroup is killed, awaited and removed
// (which takes every descendant, setsid or not, and so closes the output
// pipes they hold), the guard lets go of both, and cmd.Wait reaps the
// leader.
func (s *Supervisor) start(port int) (*child, error) {
	args := s.spec.Args
	env := dropEnv(os.Environ(), s.spec.DropEnv)
	env = append(env, s.spec.Env...)
	if port > 0 {
		p := strconv.Itoa(port)
		args = make([]string, len(s.spec.Args))
		for i, a := range s.spec.Args {
			args[i] = strings.ReplaceAll(a, probe.PortPlaceholder, p)
		}
		env = append(env, "PORT="+p, "LAMEDUCK_PORT="+p)
	}
	prefix := "[" + s.spec.Name + "] "
	stdout := &lineWriter{mu: &s.outMu, w: s.o.stdout, prefix: prefix}
	stderr := &lineWriter{mu: &s.outMu, w: s.o.stderr, prefix: prefix}
	build := func() *exec.Cmd {
		cmd := exec.Command(s.spec.Path, args...)
		cmd.Env = env
		cmd.Dir = s.spec.Dir
		cmd.SysProcAttr = procAttr()
		cmd.Stdout, cmd.Stderr = stdout, stderr
		// The group and the cgroup are killed before Wait, so the pipes
		// close; this only bounds the wait for a descendant that left the
		// group with our pipes when there is no cgroup.
		cmd.WaitDelay = time.Second
		return cmd
	}
	cmd, cg, err := s.tree.start(build, s.guard.cgroup, func(err error) {
		s.emit(Event{Kind: EventCgroup, Port: port, Err: err})
	})
	if err != nil {
		return nil, fmt.Errorf("supervisor: start %s: %w", s.spec.Path, err)
	}
	c := &child{pid: cmd.Process.Pid, cgroup: cg, done: make(chan struct{})}
	s.guard.add(c.pid)
	go func() {
		defer close(c.done)
		waitExited(c.pid)
		_ = c.signal(syscall.SIGKILL) // sweep the rest of the group
		if c.cgroup != "" {
			if err := s.tree.release(c.cgroup); err != nil {
				s.emit(Event{Kind: EventCgroup, PID: c.pid, Port: port, Cgroup: c.cgroup, Err: err})
			} else {
				s.guard.cgroup(c.cgroup, false)
			}
		}
		s.guard.remove(c.pid) // before the ID can be reused
		err := cmd.Wait()
		untrack(c.pid)
		c.state = cmd.ProcessState
		if errors.Is(err, exec.ErrWaitDelay) && c.state != nil && c.state.Success() {
			// The child is done and exited 0; what a descendant kept
			// writing is lost, but that is no failure of the child.
			s.emit(Event{Kind: EventOutputHeld, PID: c.pid, Port: port,
				Err: fmt.Errorf("supervisor: child %d exited 0, but a descendant outside its process group still held its output %v later; the rest of that output is lost", c.pid, cmd.WaitDelay)})
			err = nil
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			c.err = err
		}
		stdout.flush()
		stderr.flush()
	}()
	return c, nil
}

// dropEnv returns env without the variables named in drop.
func dropEnv(env, drop []string) []string {
	if len(drop) == 0 {
		return env
	}
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(drop, name) {
			out = append(out, kv)
		}
	}
	return out
}

// exitStatus returns the child's exit code (-1 when killed by a signal) and
// the signal that killed it.
func (c *child) exitStatus() (code int, sig syscall.Signal) {
	if c.state == nil {
		return -1, 0
	}
	if ws, ok := c.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, ws.Signal()
	}
	return c.state.ExitCode(), 0
}

// maxLine is the longest partial line held back; a longer one is written
// in pieces.
const maxLine = 64 << 10

// lineWriter writes whole lines to w, each prefixed. It holds a partial
// line until its newline arrives or flush. Errors writing to w are dropped:
// failing the child's write would break the child over a log sink.
type lineWriter struct {
	mu     *sync.Mutex // shared by every writer of one Supervisor, so lines do not interleave
	w      io.Writer
	prefix string
	buf    []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.emitLocked(l.buf[:i+1])
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) >= maxLine {
		l.emitLocked(append(l.buf, '\n'))
		l.buf = nil
	}
	if len(l.buf) == 0 {
		l.buf = nil // let a large buffer go
	}
	return len(p), nil
}

func (l *lineWriter) emitLocked(line []byte) {
	out := make([]byte, 0, len(l.prefix)+len(line))
	out = append(append(out, l.prefix...), line...)
	_, _ = l.w.Write(out)
}

// flush writes a held partial line, with a newline.
func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emitLocked(append(l.buf, '\n'))
		l.buf = nil
	}
}

// rss returns the resident memory of process pid in bytes: VmRSS in
// /proc/PID/status, read through procfs. Once the process is gone the error
// wraps fs.ErrNotExist; a zombie, which has no VmRSS, is an error too.
func rss(pid int) (uint64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	s, err := p.NewStatus()
	if err != nil {
		return 0, fmt.Errorf("read the status of process %d: %w", pid, err)
	}
	if s.VmRSS == 0 {
		return 0, fmt.Errorf("no VmRSS for process %d (a zombie?)", pid)
	}
	return s.VmRSS, nil
}

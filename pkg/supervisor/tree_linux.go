// Linux only: cgroup v2 and clone3's CLONE_INTO_CGROUP (see tree.go).

package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// treeSeq numbers the Runs of this process, for their cgroups' names.
var treeSeq atomic.Int64

// tree is one Run's cgroup: a cgroup per child under dir. A tree without
// dir (err says why) starts children without a cgroup. Its methods are
// safe for concurrent use; a nil *tree has no cgroup.
type tree struct {
	mu   sync.Mutex
	dir  string // the Run's cgroup; "" once given up (err)
	next int    // numbers the children's cgroups
	err  error  // why there is no cgroup
}

// ownCgroup returns the directory of this process's cgroup in the cgroup
// v2 hierarchy: where cgroup2 is mounted (/proc/self/mountinfo) joined with
// the path of the "0::" line of /proc/self/cgroup, both read through procfs.
func ownCgroup() (string, error) {
	self, err := procfs.Self()
	if err != nil {
		return "", err
	}
	cgs, err := self.Cgroups()
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(cgs, func(c procfs.Cgroup) bool { return c.HierarchyID == 0 })
	if i < 0 {
		return "", errors.New("no cgroup v2 hierarchy (no 0:: line in /proc/self/cgroup)")
	}
	path := cgs[i].Path
	mounts, err := self.MountInfo()
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if m.FSType != "cgroup2" {
			continue
		}
		rel, err := filepath.Rel(m.Root, path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue // this mount does not show our cgroup
		}
		return filepath.Join(m.MountPoint, rel), nil
	}
	return "", fmt.Errorf("cgroup2 is not mounted where this process's cgroup %s can be reached", path)
}

// newTree makes the Run's cgroup under parent, or under this process's own
// cgroup when discover is true. It never fails: a tree that could not get
// a cgroup says why in err and starts children without one.
func newTree(parent string, discover bool) *tree {
	if discover {
		p, err := ownCgroup()
		if err != nil {
			return &tree{err: fmt.Errorf("supervisor: no cgroup for the children: %w", err)}
		}
		parent = p
	}
	if parent == "" {
		return &tree{err: errors.New("supervisor: cgroups are off")}
	}
	dir := filepath.Join(parent, fmt.Sprintf("lameduck-%d-%d", os.Getpid(), treeSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return &tree{err: fmt.Errorf("supervisor: no cgroup for the children: %w", err)}
	}
	return &tree{dir: dir}
}

// cgroup returns the Run's cgroup, or "" and why there is none.
func (t *tree) cgroup() (string, error) {
	if t == nil {
		return "", errors.New("supervisor: no cgroup")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dir, t.err
}

// start starts the command that build makes in a cgroup of its own, made
// for it, and returns that cgroup's directory. held is told the cgroup
// before the fork. If there is no cgroup, or the kernel refuses to start
// the command in one (clone3 needs Linux 5.7; a cgroup in threaded mode or
// with controllers refuses processes), start gives up cgroups for the rest
// of the Run, calls fallback with why (once), and starts a new command
// without one: dir is then "".
func (t *tree) start(build func() *exec.Cmd, held func(dir string, add bool), fallback func(error)) (cmd *exec.Cmd, dir string, err error) {
	dir, fd, err := t.child()
	if err != nil {
		if t.giveUp(err) {
			fallback(err)
		}
		cmd = build()
		return cmd, "", startTracked(cmd)
	}
	if dir == "" {
		cmd = build()
		return cmd, "", startTracked(cmd)
	}
	held(dir, true)
	cmd = build()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	err = startTracked(cmd)
	_ = syscall.Close(fd)
	if err == nil {
		return cmd, dir, nil
	}
	_ = unix.Rmdir(dir)
	held(dir, false)
	// The same start without the cgroup tells whether the cgroup was the
	// trouble: an error of the program's own (exec failed) comes back.
	cmd = build()
	if err2 := startTracked(cmd); err2 != nil {
		return cmd, "", err2
	}
	if t.giveUp(fmt.Errorf("supervisor: the kernel refused to start a child in cgroup %s: %w", dir, err)) {
		fallback(t.err)
	}
	return cmd, "", nil
}

// child makes a cgroup for the next child and opens it for clone3; dir is
// "" when the tree has no cgroup, or gave up on cgroups.
func (t *tree) child() (dir string, fd int, err error) {
	if t == nil {
		return "", -1, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dir == "" || t.err != nil {
		return "", -1, nil
	}
	t.next++
	dir = filepath.Join(t.dir, "child-"+strconv.Itoa(t.next))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", -1, fmt.Errorf("supervisor: make a cgroup for the child: %w", err)
	}
	fd, err = syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		_ = unix.Rmdir(dir)
		return "", -1, fmt.Errorf("supervisor: open cgroup %s: %w", dir, err)
	}
	return dir, fd, nil
}

// giveUp turns cgroups off for the rest of the Run; the Run's cgroup stays
// until Run's end, for the children already in it. It reports whether
// this call turned them off.
func (t *tree) giveUp(err error) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return false
	}
	t.err = err
	return true
}

// release empties and removes a cgroup of the tree: a child's once its
// leader has exited, the Run's once every child has been reaped.
func (t *tree) release(dir string) error { return emptyCgroup(dir, cgroupEmptyTimeout) }

// emptyCgroup kills every process in cgroup dir and in the cgroups below
// it, waits until cgroup.events says "populated 0" for at most timeout,
// and removes dir and the cgroups below it. A dir already gone is not an
// error. It blocks until then; it is safe for concurrent use.
func emptyCgroup(dir string, timeout time.Duration) error {
	return emptyCgroupVia(dir, timeout, true)
}

// emptyCgroupVia is emptyCgroup; killFile false kills each process in
// cgroup.procs instead of writing cgroup.kill, as on kernels before 5.14.
func emptyCgroupVia(dir string, timeout time.Duration, killFile bool) error {
	deadline := time.Now().Add(timeout)
	w := watchCgroup(dir) // nil if inotify fails: then the recheck interval alone
	defer w.close()
	for {
		pop, err := populated(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("supervisor: %w", err)
		}
		if !pop {
			break
		}
		if killFile {
			killFile = killCgroupFile(dir) // false: no cgroup.kill, kill one by one from now on
		}
		if !killFile {
			killProcs(dir)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("supervisor: cgroup %s still holds processes %v after SIGKILL (in uninterruptible sleep?); the guard kills them when Run ends", dir, timeout)
		}
		w.wait(min(left, cgroupRecheck))
	}
	return removeCgroup(dir)
}

// populated reads cgroup.events: whether any process is in dir or below.
func populated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("no populated line in %s/cgroup.events", dir)
}

// killCgroupFile writes cgroup.kill (Linux 5.14+), which sends SIGKILL to
// every process in dir and below, new forks included. It reports false if
// the kernel has no cgroup.kill.
func killCgroupFile(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, "cgroup.kill"), os.O_WRONLY, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = f.WriteString("1")
	return err == nil
}

// killProcs sends SIGKILL to every process listed in cgroup.procs of dir
// and of the cgroups below it. Processes forked meanwhile are left for the
// next call.
func killProcs(dir string) {
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}

// removeCgroup removes dir and the cgroups below it, deepest first.
func removeCgroup(dir string) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	var errs []error
	for _, d := range slices.Backward(dirs) {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("supervisor: remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupWatch wakes a waiter when dir's cgroup.events changes (inotify:
// the kernel reports a change of "populated" as a modification). A nil
// *cgroupWatch only waits out the timeout.
type cgroupWatch struct{ fd int }

func watchCgroup(dir string) *cgroupWatch {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Join(dir, "cgroup.events"), unix.IN_MODIFY); err != nil {
		_ = unix.Close(fd)
		return nil
	}
	return &cgroupWatch{fd: fd}
}

// wait blocks until cgroup.events changes or d has passed.
func (w *cgroupWatch) wait(d time.Duration) {
	if w == nil {
		time.Sleep(d)
		return
	}
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return
		}
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}, ms)
		if err == unix.EINTR {
			continue
		}
		var buf [4096]byte
		for { // read the events, so the next Poll waits for new ones
			if n, err := unix.Read(w.fd, buf[:]); n <= 0 || err != nil {
				break
			}
		}
		return
	}
}

func (w *cgroupWatch) close() {
	if w != nil {
		_ = unix.Close(w.fd)
	}
}

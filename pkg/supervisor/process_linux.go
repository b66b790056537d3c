// Linux only: Pdeathsig and waitid(WNOWAIT) have no equivalent elsewhere.

package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// procAttr puts the child in a process group of its own, and has the
// kernel send it SIGKILL when the supervisor's thread that started it dies.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// signal sends sig to the child's whole process group. A group that is
// already gone is not an error.
func (c *child) signal(sig syscall.Signal) error {
	if err := syscall.Kill(-c.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("supervisor: send %v to process group %d: %w", sig, c.pid, err)
	}
	return nil
}

// waitExited blocks until process pid has exited, without reaping it
// (waitid with WNOWAIT), so that its PID and process group ID stay taken.
func waitExited(pid int) {
	const pPID, wNoWait = 1, 0x1000000
	var info [128]byte // siginfo_t
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info[0])), syscall.WEXITED|wNoWait, 0, 0)
		if errno != syscall.EINTR {
			return // 0, or ECHILD: nothing left to wait for either way
		}
	}
}

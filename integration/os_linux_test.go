// Linux only: Pdeathsig and kill(2) are how these tests leave no process behind.

package integration

import (
	"errors"
	"fmt"
	"syscall"
)

// childAttr has the kernel kill a process the tests start (a server, an
// app) when the test binary dies, so that none outlives a crashed run.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processGone returns nil when no process has pid, and otherwise what
// kill(pid, 0) said.
func processGone(pid int) error {
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill(%d, 0) = %v, want ESRCH", pid, err)
	}
	return nil
}

// killPID sends SIGKILL to pid.
func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

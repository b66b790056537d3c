//go:build unix

// Unix only: --pid signals another process, which Windows has no SIGTERM for.

package cli

import "syscall"

// checkPID refuses a --pid that is not a process this user can signal; 0
// (no --pid) passes.
func checkPID(pid int) error {
	if pid != 0 && (pid < 0 || syscall.Kill(pid, 0) != nil) {
		return badInput("--pid %d is not a process this user can signal", pid)
	}
	return nil
}

// sendSIGTERM sends SIGTERM to pid.
func sendSIGTERM(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }

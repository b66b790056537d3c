//go:build !unix

// Not Unix: there is no SIGTERM to send another process, so --pid is refused.

package cli

import (
	"runtime"

	"github.com/lameduck/lameduck/internal/platform"
)

// checkPID refuses any --pid: there is no signal that asks a process here
// to stop gracefully. 0 (no --pid) passes.
func checkPID(pid int) error {
	if pid == 0 {
		return nil
	}
	return &exitError{code: ExitBadInput, err: &platform.UnsupportedError{Feature: "--pid", GOOS: runtime.GOOS,
		Instead: "there is no SIGTERM to stop a process gracefully here: stop it yourself once offline has drained it, or give --admin and --stop for an app that links lameduck"}}
}

// sendSIGTERM is never reached: checkPID refuses every --pid.
func sendSIGTERM(pid int) error { return checkPID(pid) }

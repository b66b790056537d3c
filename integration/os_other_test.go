//go:build !linux

// Off Linux these tests only build: `make test` starts their servers on Linux.

package integration

import (
	"os"
	"syscall"
)

// childAttr is nil: without Pdeathsig a crashed run may leave its children.
func childAttr() *syscall.SysProcAttr { return nil }

// processGone cannot tell here, and says nil; the check runs on Linux.
func processGone(int) error { return nil }

// killPID kills pid.
func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

//go:build !linux

// Off Linux: no Pdeathsig, so New refuses (checkOS) and none of this runs.

package supervisor

import (
	"runtime"
	"syscall"
)

// procAttr is Linux's; elsewhere no child is ever started.
func procAttr() *syscall.SysProcAttr { return nil }

// signal refuses: New does not return a Supervisor off Linux.
func (c *child) signal(syscall.Signal) error { return checkOS(runtime.GOOS) }

// waitExited is Linux's; elsewhere no child is ever started.
func waitExited(int) {}

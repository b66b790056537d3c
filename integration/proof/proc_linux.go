// Linux only: Pdeathsig, so that no child outlives a harness that is killed.

package main

import "syscall"

// childAttr has the kernel send SIGKILL to a child when the harness dies.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

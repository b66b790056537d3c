//go:build !linux

// Off Linux the proof only builds: it needs Linux's servers, scripts and /proc.

package main

import "syscall"

// childAttr is nil: without Pdeathsig, children outlive a harness that is
// killed.
func childAttr() *syscall.SysProcAttr { return nil }

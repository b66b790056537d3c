package cli

import (
	"runtime"

	"github.com/lameduck/lameduck/internal/platform"
)

// linuxOnly is a command, or a mode of one, that works on Linux only,
// with what to do instead elsewhere. The code that needs Linux sits behind
// build tags in its own package (pkg/supervisor, pkg/conncount); this
// answers, in one line and before anything starts, where that code cannot
// work.
type linuxOnly struct{ feature, instead string }

var (
	// linuxOnlyRun: the supervisor needs Pdeathsig and the kernel's TCP
	// tables (see pkg/supervisor).
	linuxOnlyRun = linuxOnly{"lameduck run",
		"its supervisor needs Linux, so that no child outlives it (Pdeathsig) and so that it sees a child's requests end (sock_diag): " +
			"run it on a Linux host or in a container, or stop the service yourself after `lameduck offline`"}
	// linuxOnlyPlainPrestop: plain mode counts the app's connections
	// through the kernel's TCP tables (see pkg/conncount).
	linuxOnlyPlainPrestop = linuxOnly{"lameduck prestop without --admin",
		"it watches the app's connections through Linux's sock_diag or /proc/net/tcp: " +
			"run the hook in the app's Linux pod, or give --admin for an app that links lameduck"}
)

// check returns nil when goos is linux, and otherwise a bad-input error
// (exit code 2) for which errors.Is(err, errors.ErrUnsupported) is true.
func (f linuxOnly) check(goos string) error {
	if err := platform.LinuxOnly(goos, f.feature, f.instead); err != nil {
		return &exitError{code: ExitBadInput, err: err}
	}
	return nil
}

// onThisOS is check on the OS lameduck runs on.
func (f linuxOnly) onThisOS() error { return f.check(runtime.GOOS) }

package supervisor

import (
	"fmt"

	"github.com/lameduck/lameduck/internal/platform"
)

// checkOS refuses every OS but Linux, where the supervisor could not keep
// its promises: without Pdeathsig a child outlives a supervisor that is
// killed, and without sock_diag or /proc/net/tcp the offline cannot see a
// child's requests end before SIGTERM. goos is runtime.GOOS but in tests.
func checkOS(goos string) error {
	err := platform.LinuxOnly(goos, "the supervisor",
		"it needs Linux's Pdeathsig, so that no child outlives it, and the kernel's TCP tables, to see a child's requests end before SIGTERM; run it on Linux (a container or VM will do)")
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	return nil
}

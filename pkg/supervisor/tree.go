package supervisor

import "time"

// The tree: everything a child starts belongs to the supervisor, however
// it detaches itself (a new process group, setsid, a double fork).
//
// Where a cgroup v2 hierarchy is writable, each Run makes a cgroup of its
// own, named lameduck-PID-N, under the cgroup the supervisor runs in
// (found from /proc/self/mountinfo and the "0::" line of /proc/self/cgroup),
// and each child starts in a cgroup of its own under it: the kernel puts it
// there at fork (clone3's CLONE_INTO_CGROUP), so nothing the child starts
// can get out first. Once the child's leader has exited, and before it is
// reaped, its cgroup is killed (cgroup.kill, or SIGKILL to every process in
// cgroup.procs on kernels before 5.14), awaited until cgroup.events says
// "populated 0" (at most cgroupEmptyTimeout), and removed. The guard holds
// every cgroup path, so after a SIGKILL of the supervisor it kills them.
//
// Where no cgroup is writable (cgroup v1 only, no permission, a kernel
// that refuses CLONE_INTO_CGROUP), the children run in process groups
// only: a descendant that calls setsid is reached only through the
// subreaper (WithSubreaper), which adopts and reaps orphans and kills
// those left when the last Run of the process ends. In that fallback, and
// only there, such a descendant outlives a SIGKILL of the supervisor.

const (
	// cgroupEmptyTimeout bounds the wait for a killed cgroup to empty: a
	// process in uninterruptible sleep (D state) dies only when it wakes.
	cgroupEmptyTimeout = 5 * time.Second
	// cgroupRecheck is how often a killed cgroup is looked at again when
	// no event from cgroup.events arrives, and when processes in it are
	// killed one by one (kernels without cgroup.kill), how often the
	// newly forked ones are.
	cgroupRecheck = 20 * time.Millisecond
)

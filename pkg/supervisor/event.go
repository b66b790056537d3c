package supervisor

import (
	"fmt"
	"syscall"
	"time"

	"github.com/lameduck/lameduck/drain"
)

// EventKind says what an Event reports.
type EventKind int

const (
	EventStarted       EventKind = iota // a child process started (Event.PID)
	EventNotReady                       // the readiness check failed (Event.Err); next check after Event.Delay
	EventReady                          // the readiness check passed
	EventRegistered                     // the instance is in every registry
	EventRegistryRetry                  // a register or deregister call failed (Event.Err); retrying after Event.Delay
	EventUnhealthy                      // the liveness check failed (Event.Err), Event.Failures times in a row
	EventSignaled                       // the supervisor sent Event.Signal to the child's process group
	EventExited                         // the child exited (Event.Code, or Event.Signal when killed; Event.Err says why it counts as a failure)
	EventDeregistered                   // the instance left every registry after the child died (Event.Err if it could not within the deregistration timeout)
	EventBackoff                        // the next start waits Event.Delay; Event.Failures is the decayed failure count
	EventRestarted                      // a child replaced a failed one; Event.Restarts counts the replacements
	EventGaveUp                         // the restart intensity limit was passed (Event.Err); Run returns
	EventConnsBusy                      // requests on the instance's port did not end before SIGTERM (Event.Err)
	EventDrain                          // the offline protocol reported Event.Drain
	EventPromoted                       // the warm standby (or a recycle's replacement) on Event.Port is registered in place of the active copy
	EventRecycling                      // the copy on Event.Port passed its age or memory limit (Event.Err says which); its replacement is on the way
	EventRecycled                       // a recycled copy is offline and stopped (Event.Err if its offline was not clean)
	EventCgroup                         // Event.Cgroup is the Run's cgroup, the children's go under it (at Run's start); with Event.Err: there is none, or the kernel refused one (cgroups are off from then on; see WithSubreaper), or a cgroup (Event.Cgroup, a child's when Event.PID is set) would not empty
	EventOutputHeld                     // the child exited 0, but a descendant that left its process group held its output open (Event.Err); not a failure
	EventReport                         // the report of an offline (WithReport) could not be written (Event.Err)
)

var eventNames = [...]string{
	"started", "not-ready", "ready", "registered", "registry-retry", "unhealthy", "signaled",
	"exited", "deregistered", "backoff", "restarted", "gave-up", "conns-busy", "drain",
	"promoted", "recycling", "recycled", "cgroup", "output-held", "report",
}

func (k EventKind) String() string {
	if k >= 0 && int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is what a Supervisor reports through its one hook (WithEventHook).
// Events that announce a wait (EventNotReady, EventBackoff,
// EventRegistryRetry) are sent after the wait's timer is armed, so a test
// that advances a fake clock on receiving one cannot advance too early.
type Event struct {
	Kind     EventKind
	Time     time.Time
	Name     string         // Spec.Name
	PID      int            // the child's PID (also its process group ID); 0 when none runs
	Port     int            // the port of the copy the event is about (0 when not about one)
	Restarts int            // replacements started so far
	Code     int            // EventExited: exit code, -1 when killed by a signal
	Signal   syscall.Signal // EventExited: the signal that killed the child; EventSignaled: the signal sent
	Delay    time.Duration  // EventNotReady, EventBackoff, EventRegistryRetry
	Failures float64        // EventBackoff, EventGaveUp: decayed failure count; EventUnhealthy: failures in a row
	Drain    *drain.Event   // EventDrain
	Cgroup   string         // EventCgroup: the directory of the cgroup
	Err      error
}

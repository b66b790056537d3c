package drain

import (
	"fmt"
	"strings"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// Phase is a step of the offline protocol. Phases only move forward.
type Phase int32

const (
	Serving       Phase = iota // taking traffic; the protocol has not started
	Deregistering              // removing the instance from every registry
	Confirming                 // waiting for the registries' watches to drop it
	Draining                   // flag set; waiting for in-flight requests and quiet
	Stopping                   // running stop hooks in reverse order
	Offline                    // done; the process may exit
)

var phaseNames = [...]string{"Serving", "Deregistering", "Confirming", "Draining", "Stopping", "Offline"}

func (p Phase) String() string {
	if p >= 0 && int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("Phase(%d)", int32(p))
}

// MarshalText writes the phase's name.
func (p Phase) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a phase name, case-insensitively.
func (p *Phase) UnmarshalText(b []byte) error {
	q, err := ParsePhase(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// ParsePhase returns the phase named s, case-insensitively.
func ParsePhase(s string) (Phase, error) {
	for k, n := range phaseNames {
		if strings.EqualFold(n, s) {
			return Phase(k), nil
		}
	}
	return 0, fmt.Errorf("drain: unknown phase %q; want one of %s", s, strings.Join(phaseNames[:], ", "))
}

// EventKind says what an Event reports.
type EventKind int

const (
	EventPhase        EventKind = iota // the protocol entered Event.Phase
	EventDeregistered                  // Event.Registry no longer lists the instance (or disabled it)
	EventRetry                         // a call to Event.Registry failed with Event.Err; retrying after Event.Delay
	EventConfirmed                     // Event.Registry's watch dropped the instance, Event.Latency after deregistration
	EventGaveUp                        // Event.Registry could not be handled within the budget (Event.Err)
	EventStopHook                      // stop hook Event.Hook returned Event.Err (nil on success)
	EventView                          // Event.View, one server of Event.Registry's cluster, did Event.ViewKind (see registry.ViewEvent)
	EventRegistered                    // Register put the instance in Event.Registry
	EventSource                        // the Draining phase's Source (Event.Source) returned Event.Err (nil: drained)
)

var eventNames = [...]string{"phase", "deregistered", "retry", "confirmed", "gave-up", "stop-hook", "view", "registered", "source"}

func (k EventKind) String() string {
	if k >= 0 && int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is what the coordinator reports through its one hook, for logs,
// metrics and progress displays.
type Event struct {
	Kind     EventKind
	Phase    Phase                  // the phase the protocol is in
	Time     time.Time              // when it happened
	Elapsed  time.Duration          // since the protocol started
	Registry string                 // for registry events
	Hook     string                 // for EventStopHook
	Source   string                 // for EventSource: the Source's String
	Delay    time.Duration          // for EventRetry
	Latency  time.Duration          // for EventConfirmed: deregistration to confirmation; for EventView: the watch's opening to the event
	View     string                 // for EventView: the server, as in "consul://127.0.0.12:8500"
	ViewKind registry.ViewEventKind // for EventView
	InFlight int64                  // in-flight requests at the time
	Err      error
}

package drain

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/lameduck/lameduck/registry"
)

// A Source is what the Draining phase waits on: the instance's requests,
// wherever they are counted. There is one per way in: the in-process
// *Tracker (the library, the default), an app's admin endpoint followed
// from outside (admin.Client: `offline --admin`, `prestop --admin`), and a
// port's connections seen through the kernel (conncount.Drainer: plain
// `prestop`, `run`). The coordinator calls Drain once, after it has set its
// own tracker draining, with a context that ends at the drain's share of
// the budget (or at once on Force).
type Source interface {
	// Drain waits until the requests it follows have drained by cond, and
	// returns nil. When ctx ends first it returns an error wrapping
	// ctx.Err(). A drain that ran elsewhere and ended badly there (the app
	// behind an admin endpoint was forced) is reported as a *SourceError.
	Drain(ctx context.Context, cond Condition) error
	// String names the source in events, errors and reports.
	String() string
}

// Drain sets t draining and waits for cond (see WaitIdle): the Tracker as
// the Source of an app that links the library.
func (t *Tracker) Drain(ctx context.Context, cond Condition) error {
	t.SetDraining()
	return t.WaitIdle(ctx, cond)
}

// String names the tracker as a Source.
func (t *Tracker) String() string { return "in-process requests" }

// nothing is the Source of a protocol with nothing to drain here: `offline`
// without --admin, which only takes the instance out of the registries.
type nothing struct{}

func (nothing) Drain(context.Context, Condition) error { return nil }
func (nothing) String() string                         { return "nothing (not followed)" }

// SourceError is a Source's report that the drain it followed ran elsewhere
// and did not end cleanly: the app behind an admin endpoint was forced at
// its own deadline, say. Its Outcome is the app's own.
type SourceError struct {
	Source  string
	Outcome Outcome
	Err     error // the app's own error text, if it gave one
}

func (e *SourceError) Error() string {
	msg := fmt.Sprintf("drain: %s ended %s", e.Source, e.Outcome)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *SourceError) Unwrap() error { return e.Err }

// Outcome names how an offline ended, as `--output json` and the admin
// endpoint's status say it. ExitCode in package lameduck maps each to the
// process exit code.
type Outcome string

// The outcomes, from best to worst for the requests.
const (
	// OutcomeDrained: every phase finished within the budget.
	OutcomeDrained Outcome = "drained"
	// OutcomeRegistryUnreachable: the drain finished, but a registry could
	// not be reached, or did not confirm, within its share of the budget.
	OutcomeRegistryUnreachable Outcome = "registry-unreachable"
	// OutcomeRegistryRejected: the drain finished, but a registry refused
	// a call for good (401, 403, a malformed request); it was not retried.
	OutcomeRegistryRejected Outcome = "registry-rejected"
	// OutcomeForced: the deadline or a second signal cut the drain or the
	// stop hooks short.
	OutcomeForced Outcome = "forced"
	// OutcomeBadInput: the protocol could not start as asked (an instance
	// no registry knows).
	OutcomeBadInput Outcome = "bad-input"
	// OutcomeFailed: anything else.
	OutcomeFailed Outcome = "failed"
)

// Process exit codes, one per kind of Outcome (see ExitCode). Package
// lameduck and the commands use these.
const (
	ExitOK       = 0 // drained
	ExitFailed   = 1 // failed
	ExitBadInput = 2 // bad input
	ExitRegistry = 3 // registry-unreachable or registry-rejected: the drain still happened
	ExitForced   = 4 // forced
)

// exitCodes is the one table from an Outcome to a process exit code.
var exitCodes = map[Outcome]int{
	OutcomeDrained:             ExitOK,
	OutcomeFailed:              ExitFailed,
	OutcomeBadInput:            ExitBadInput,
	OutcomeRegistryUnreachable: ExitRegistry,
	OutcomeRegistryRejected:    ExitRegistry,
	OutcomeForced:              ExitForced,
}

// ExitCode is the process exit code for o; an outcome this version does not
// know (from a newer app, say) is ExitFailed.
func (o Outcome) ExitCode() int {
	if code, ok := exitCodes[o]; ok {
		return code
	}
	return ExitFailed
}

// OutcomeOf classifies the coordinator's error (Wait, Offline): nil is
// drained; a cut Draining or Stopping phase, Force, or a Source reporting a
// forced app is forced; registry trouble alone (the drain itself finished)
// is registry-rejected when a registry refused and registry-unreachable
// otherwise; a lookup that found no such instance is bad-input; anything
// else failed.
func OutcomeOf(err error) Outcome {
	if err == nil {
		return OutcomeDrained
	}
	if errors.Is(err, ErrForced) {
		return OutcomeForced
	}
	var unreachable, rejected, other bool
	for _, e := range leaves(err) {
		var pe *PhaseError
		var se *SourceError
		var re *registry.Error
		switch {
		case errors.As(e, &pe) && pe.Phase >= Draining:
			return OutcomeForced
		case errors.As(e, &se):
			if se.Outcome == OutcomeForced {
				return OutcomeForced
			}
			other = true
		case errors.Is(e, ErrNoInstance):
			return OutcomeBadInput
		case errors.Is(e, registry.ErrRejected):
			rejected = true
		case errors.As(e, &pe), errors.As(e, &re):
			unreachable = true
		default:
			other = true
		}
	}
	switch {
	case other:
		return OutcomeFailed
	case rejected:
		return OutcomeRegistryRejected
	case unreachable:
		return OutcomeRegistryUnreachable
	}
	return OutcomeFailed
}

// leaves flattens the errors.Join tree of err.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	}
	return []error{err}
}

// Sequence is a Source that drains through each of sources in turn, under
// the one context: an app followed through its admin endpoint, then its
// port's connections, say. It stops at the first error.
func Sequence(sources ...Source) Source { return sequence(sources) }

type sequence []Source

func (s sequence) Drain(ctx context.Context, cond Condition) error {
	for _, src := range s {
		if err := src.Drain(ctx, cond); err != nil {
			return err
		}
	}
	return nil
}

func (s sequence) String() string {
	names := make([]string, len(s))
	for k, src := range s {
		names[k] = src.String()
	}
	return strings.Join(names, ", then ")
}

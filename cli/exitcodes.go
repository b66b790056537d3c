package cli

import (
	"fmt"
	"strings"

	"github.com/lameduck/lameduck"
	"github.com/lameduck/lameduck/drain"
)

// Exit codes, documented in README. The numbers are package lameduck's, so
// that an app on the library and the commands agree.
const (
	ExitOK       = lameduck.ExitOK
	ExitFailed   = lameduck.ExitFailed
	ExitBadInput = lameduck.ExitBadInput
	ExitRegistry = lameduck.ExitRegistry
	ExitForced   = lameduck.ExitForced
)

// outcomes is the commands' one list of how they end, in the order of
// their exit codes: each drain.Outcome (its name is --output json's
// "outcome"), with what it means in the commands' help. Its exit code is
// lameduck.OutcomeExitCode's, so a refusing registry exits 3 like an
// unreachable one: the registry work failed and the drain still happened.
var outcomes = []struct {
	outcome drain.Outcome
	meaning string
}{
	{drain.OutcomeDrained, "drained"},
	{drain.OutcomeFailed, "failed"},
	{drain.OutcomeBadInput, "bad input"},
	{drain.OutcomeRegistryUnreachable, "registry unreachable"},
	{drain.OutcomeRegistryRejected, "refused (401, 403, malformed request; not retried)"},
	{drain.OutcomeForced, "forced (deadline or second signal)"},
}

// outcomeOfCode names the outcome of an error that carries only its exit
// code: the first outcome with that code, or failed.
func outcomeOfCode(code int) drain.Outcome {
	for _, o := range outcomes {
		if lameduck.OutcomeExitCode(o.outcome) == code {
			return o.outcome
		}
	}
	return drain.OutcomeFailed
}

// exitCodesHelp is the line of the commands' help that lists their exit
// codes, each with what its outcomes mean.
func exitCodesHelp() string {
	var parts []string
	prev := -1
	for _, o := range outcomes {
		code := lameduck.OutcomeExitCode(o.outcome)
		if code == prev {
			parts[len(parts)-1] += " or " + o.meaning
			continue
		}
		parts = append(parts, fmt.Sprintf("%d %s", code, o.meaning))
		prev = code
	}
	return "Exit codes: " + strings.Join(parts, ", ") + "."
}

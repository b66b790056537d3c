package cli

import (
	"testing"

	"github.com/lameduck/lameduck/drain"
)

// The help line keeps README's codes, in order, and every code names its
// outcome.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	want := "Exit codes: 0 drained, 1 failed, 2 bad input, " +
		"3 registry unreachable or refused (401, 403, malformed request; not retried), 4 forced (deadline or second signal)."
	if got := exitCodesHelp(); got != want {
		t.Errorf("exitCodesHelp:\nwant %q\ngot  %q", want, got)
	}
	for code, want := range map[int]drain.Outcome{
		ExitOK: drain.OutcomeDrained, ExitFailed: drain.OutcomeFailed, ExitBadInput: drain.OutcomeBadInput,
		ExitRegistry: drain.OutcomeRegistryUnreachable, ExitForced: drain.OutcomeForced, 99: drain.OutcomeFailed,
	} {
		if got := outcomeOfCode(code); got != want {
			t.Errorf("outcomeOfCode(%d): want %q, got %q", code, want, got)
		}
	}
}

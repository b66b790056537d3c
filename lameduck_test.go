package lameduck

import (
	"errors"
	"fmt"
	"testing"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry"
)

func TestExitCode(t *testing.T) {
	t.Parallel()
	regErr := &registry.Error{Registry: "consul://127.0.0.1:1", Op: "deregister", Err: errors.New("connection refused")}
	cut := func(p drain.Phase, cause error) error { return &drain.PhaseError{Phase: p, Err: cause} }
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"clean", nil, ExitOK},
		{"registry unreachable, drain finished", errors.Join(cut(drain.Deregistering, drain.ErrDeadline), regErr), ExitRegistry},
		{"registry error alone", regErr, ExitRegistry},
		{"confirmation ran out", cut(drain.Confirming, drain.ErrDeadline), ExitRegistry},
		{"drain cut by the deadline", errors.Join(regErr, cut(drain.Draining, drain.ErrDeadline)), ExitForced},
		{"second signal", cut(drain.Deregistering, drain.ErrForced), ExitForced},
		{"stop hook failed", fmt.Errorf("drain: stop hook %q: %w", "http", errors.New("boom")), ExitFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if got := ExitCode(c.err); got != c.want {
				t.Fatalf("ExitCode(%v): want %d, got %d", c.err, c.want, got)
			}
		})
	}
}

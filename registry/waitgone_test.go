package registry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// result waits for done and returns its error, failing t when nothing comes
// within wait.
func result(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		t.Fatalf("%s: want it to return within %v, got no return", what, wait)
		return nil
	}
}

// TestGoneWatchOverMulti: through a Multi, the instance counts as gone only
// once it has left every registry.
func TestGoneWatchOverMulti(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	m := registry.Multi{a, b}
	i := inst(0)
	mustRegister(t, m, i)
	g, err := registry.WatchGone(t.Context(), m, i, registry.GoneOptions{})
	if err != nil {
		t.Fatalf("WatchGone over Multi: want a watch, got %v", err)
	}
	defer g.Stop()
	mustDeregister(t, a, i)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := result(t, waitAsync(ctx, g), "Wait over Multi"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait over Multi with %s still in %s: want context.DeadlineExceeded, got %v", i.Endpoint(), b, err)
	}
	done := waitAsync(t.Context(), g)
	mustDeregister(t, b, i)
	if err := result(t, done, "Wait over Multi"); err != nil {
		t.Fatalf("Wait over Multi after %s left every registry: want nil, got %v", i.Endpoint(), err)
	}
}

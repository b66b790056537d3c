package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// WaitGone blocks until no registry in regs lists i among the instances its
// consumers see. This is the registry's "call back": the evidence that
// consumers have dropped i, which replaces a fixed sleep.
//
// Each registry is watched in parallel. WaitGone returns nil once all are
// confirmed. When ctx ends first it returns an error that wraps ctx.Err() and
// names the registries still showing i; a watch that fails returns at once
// with an *Error naming its registry. onGone, when not nil, is called once per
// registry as it confirms (from that registry's goroutine), so callers can
// record each registry's confirmation latency.
func WaitGone(ctx context.Context, i Instance, onGone func(Registry), regs ...Registry) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	errs := make([]error, len(regs))
	var wg sync.WaitGroup
	for k, r := range regs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := waitGoneOne(ctx, r, i); err != nil {
				errs[k] = err
				if ctx.Err() == nil {
					cancel() // one registry failed for good: stop waiting on the rest
				}
				return
			}
			if onGone != nil {
				onGone(r)
			}
		}()
	}
	wg.Wait()

	var pending []string
	var failed []error
	for k, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			pending = append(pending, regs[k].String())
		default:
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return errors.Join(failed...)
	}
	if len(pending) > 0 {
		cause := context.Cause(ctx)
		if cause == nil {
			cause = context.Canceled
		}
		return fmt.Errorf("registry: %s still listed by %s: %w", i.Key(), strings.Join(pending, ", "), cause)
	}
	return nil
}

func waitGoneOne(ctx context.Context, r Registry, i Instance) error {
	g, err := WatchGone(ctx, r, i)
	if err != nil {
		return err
	}
	defer g.Stop()
	return g.Wait(ctx)
}

// GoneWatch follows one registry's consumer-visible list of an instance's
// service across a change, so that the change is confirmed by the same kind
// of push its consumers get. Open it before deregistering: a watch opened
// afterwards reads the registry's current state, which shows the instance
// gone at once and proves nothing about what consumers have seen.
type GoneWatch struct {
	r       Registry
	i       Instance
	w       Watcher
	present bool // the first list held the instance
	gone    bool
}

// WatchGone opens a watch on i's service in r and reads its first list.
func WatchGone(ctx context.Context, r Registry, i Instance) (*GoneWatch, error) {
	w, err := r.Watch(ctx, i.Service)
	if err != nil {
		return nil, wrap(r, "watch", err)
	}
	list, err := w.Next(ctx)
	if err != nil {
		_ = w.Stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, wrap(r, "watch", err)
	}
	present := Contains(list, i)
	return &GoneWatch{r: r, i: i, w: w, present: present, gone: !present}, nil
}

// Listed reports whether the first list held the instance.
func (g *GoneWatch) Listed() bool { return g.present }

// Wait blocks until a list without the instance arrives (at once if the
// last one seen lacked it) or ctx ends. Not safe for concurrent use.
func (g *GoneWatch) Wait(ctx context.Context) error {
	for !g.gone {
		list, err := g.w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return wrap(g.r, "watch", err)
		}
		g.gone = !Contains(list, g.i)
	}
	return nil
}

// Stop ends the watch.
func (g *GoneWatch) Stop() { _ = g.w.Stop() }

// Contains reports whether list holds i (see Instance.Same).
func Contains(list []Instance, i Instance) bool {
	for _, o := range list {
		if o.Same(i) {
			return true
		}
	}
	return false
}

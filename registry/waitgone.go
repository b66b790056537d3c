package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// GoneWatch follows one registry's consumer-visible list of an instance's
// service across a change, so that the change is confirmed by the same kind
// of push its consumers get. Open it before deregistering: a watch opened
// afterwards reads the registry's current state, which shows the instance
// gone at once and proves nothing about what consumers have seen.
//
// When the registry is a Viewer, the watch also follows every server of its
// cluster (see View), and confirms only once each of them that answers has
// dropped the instance. A server that does not answer holds nothing up while
// it is down, and is reported through GoneOptions.OnView; one that lags far
// behind is told again, through a live server (see ViewRemover).
type GoneWatch struct {
	r      Registry
	i      Instance
	o      GoneOptions
	w      Watcher
	opened time.Time

	present bool // the first list held the instance
	gone    bool // the registry's own watch no longer lists it
	// covered: the views include the own watch's server (OwnViewer), so
	// Wait need not wait for the own watch while a view answers.
	covered bool

	views  []*viewState
	cancel context.CancelFunc // ends the views' goroutines
	wg     sync.WaitGroup
	wake   chan struct{} // capacity 1: a view changed
	mu     sync.Mutex    // guards views' fields and downs
	downs  int           // how many times a view went down
	// downsAtOpen is downs when WatchGone returned.
	downsAtOpen int
	evMu        sync.Mutex // serialises OnView
}

// viewState is what one view last showed. Its fields are guarded by the
// GoneWatch's mu.
type viewState struct {
	v        View
	answered chan struct{} // closed at the first answer or error
	first    bool          // answered is closed
	listed   bool          // its last list held the instance
	down     bool          // its last read failed
}

// viewFirstRead bounds how long WatchGone waits for a view's first list
// before it counts the view as down and goes on.
const viewFirstRead = 2 * time.Second

// WatchGone opens a watch on i's service in r and reads its first list. When
// r is a Viewer it opens a watch on each of its views too, and waits up to
// 2s for each view's first list (a view that gives none by then is counted
// as down, and watched on). The views are followed until Stop.
func WatchGone(ctx context.Context, r Registry, i Instance, o GoneOptions) (*GoneWatch, error) {
	o.setDefaults()
	opened := time.Now()
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
	g := &GoneWatch{r: r, i: i, o: o, w: w, opened: opened, present: present, gone: !present, cancel: func() {}}
	v, ok := r.(Viewer)
	if !ok {
		return g, nil
	}
	views, err := v.Views(ctx)
	if err != nil {
		_ = w.Stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, wrap(r, "list the servers to confirm through", err)
	}
	if len(views) == 0 {
		return g, nil
	}
	if ov, ok := r.(OwnViewer); ok {
		g.covered = ov.ViewsIncludeOwn(views)
	}
	// The views outlive ctx, which may be a call's; Stop ends them.
	vctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g.cancel, g.wake = cancel, make(chan struct{}, 1)
	for _, view := range views {
		vs := &viewState{v: view, answered: make(chan struct{})}
		g.views = append(g.views, vs)
		g.wg.Add(1)
		go func() { defer g.wg.Done(); g.follow(vctx, vs) }()
	}
	timer := time.NewTimer(viewFirstRead)
	defer timer.Stop()
	expired := false // every view still silent now is counted as down
	for _, vs := range g.views {
		if !expired {
			select {
			case <-vs.answered:
				continue
			case <-timer.C:
				expired = true
			case <-ctx.Done():
				g.Stop()
				return nil, ctx.Err()
			}
		}
		select {
		case <-vs.answered:
		default:
			g.setDown(vs, fmt.Errorf("no list within %v", viewFirstRead))
		}
	}
	g.mu.Lock()
	for _, vs := range g.views {
		g.present = g.present || vs.listed
	}
	// A view down before the change cannot be the server that took it and
	// died: only later deaths make Wait remove the instance again at once.
	g.downsAtOpen = g.downs
	g.mu.Unlock()
	return g, nil
}

// follow reads one view until ctx ends, asking again after the
// RetryDelay when it does not answer.
func (g *GoneWatch) follow(ctx context.Context, vs *viewState) {
	var w Watcher
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	for attempt := 0; ; {
		var list []Instance
		var err error
		if w == nil {
			w, err = vs.v.Watch(ctx, g.i.Service)
		}
		if err == nil {
			list, err = w.Next(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			g.setDown(vs, err)
			t := time.NewTimer(g.o.RetryDelay(attempt))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			attempt++
			continue
		}
		attempt = 0
		g.setListed(vs, Contains(list, g.i))
	}
}

func (g *GoneWatch) setDown(vs *viewState, err error) {
	g.mu.Lock()
	was := vs.down
	vs.down = true
	if !was {
		g.downs++
	}
	g.answer(vs)
	g.mu.Unlock()
	if !was {
		g.report(ViewEvent{Kind: ViewDown, View: vs.v.String(), Err: err})
	}
	g.poke()
}

func (g *GoneWatch) setListed(vs *viewState, listed bool) {
	g.mu.Lock()
	wasDown, wasListed, first := vs.down, vs.listed, !vs.first
	vs.down, vs.listed = false, listed
	g.answer(vs)
	g.mu.Unlock()
	if wasDown {
		g.report(ViewEvent{Kind: ViewUp, View: vs.v.String()})
	}
	if !listed && (wasListed || first) {
		g.report(ViewEvent{Kind: ViewGone, View: vs.v.String()})
	}
	g.poke()
}

// answer closes vs.answered once; g.mu is held.
func (g *GoneWatch) answer(vs *viewState) {
	if !vs.first {
		vs.first = true
		close(vs.answered)
	}
}

func (g *GoneWatch) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *GoneWatch) report(e ViewEvent) {
	if g.o.OnView == nil {
		return
	}
	e.At = time.Since(g.opened)
	g.evMu.Lock()
	defer g.evMu.Unlock()
	g.o.OnView(e)
}

// Listed reports whether the first lists held the instance.
func (g *GoneWatch) Listed() bool { return g.present }

// Wait blocks until the registry's own watch and every view that answers
// show the instance gone (at once if the last lists seen lacked it, and
// with views, once they have stayed so for GoneOptions.Settle), or ctx
// ends. When the views include the own watch's server (OwnViewer), the own
// watch is not waited for while some view answers. A view still listing the instance RemoveAgainAfter after Wait began,
// or when another view has gone down, gets the removal again through a live
// view (see ViewRemover), and again at that interval. An error from the
// registry's own watch ends Wait, unless the views cover its server; reopen
// the watch to go on. Not safe for
// concurrent use.
func (g *GoneWatch) Wait(ctx context.Context) error {
	if len(g.views) == 0 {
		return g.waitOwn(ctx)
	}
	own := make(chan error, 1)
	running := !g.gone
	if running {
		octx, cancel := context.WithCancel(ctx)
		defer func() {
			cancel()
			if running {
				<-own
			}
		}()
		go func() { own <- g.waitOwn(octx) }()
	}
	began := time.Now()
	var lastAgain time.Time
	g.mu.Lock()
	downsAtAgain := g.downsAtOpen
	g.mu.Unlock()
	timer := time.NewTimer(g.o.RemoveAgainAfter)
	defer timer.Stop()
	// settle ticks once every view has been clear for Settle.
	settleT := time.NewTimer(g.o.Settle)
	settleT.Stop()
	defer settleT.Stop()
	var settle <-chan time.Time
	for {
		ownDone := !running && g.gone
		switch clear := g.viewsClear() && (ownDone || g.covered && g.anyLive()); {
		case clear && settle == nil:
			settleT.Reset(g.o.Settle)
			settle = settleT.C
		case !clear && settle != nil:
			settleT.Stop()
			settle = nil
		}
		g.mu.Lock()
		downs := g.downs
		g.mu.Unlock()
		now := time.Now()
		late := now.Sub(began) >= g.o.RemoveAgainAfter && now.Sub(lastAgain) >= g.o.RemoveAgainAfter
		if (late || downs > downsAtAgain) && !g.viewsClear() {
			g.removeAgain(ctx)
			lastAgain, downsAtAgain = time.Now(), downs
			timer.Reset(g.o.RemoveAgainAfter)
		}
		select {
		case <-ctx.Done():
			if p := g.Pending(); len(p) > 0 {
				return fmt.Errorf("registry: %s still listed by %s: %w", g.i.Key(), strings.Join(p, ", "), ctx.Err())
			}
			return ctx.Err()
		case err := <-own:
			running = false
			if err != nil && !g.covered {
				return err
			}
			// Covered by the views: the own watch's failure holds nothing up.
		case <-g.wake:
		case <-timer.C:
			timer.Reset(g.o.RemoveAgainAfter)
		case <-settle:
			if g.viewsClear() {
				return nil
			}
			settle = nil // a view lists the instance again: wait anew
		}
	}
}

// waitOwn follows the registry's own watch until it drops the instance.
func (g *GoneWatch) waitOwn(ctx context.Context) error {
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

// viewsClear reports whether no view that answers lists the instance.
func (g *GoneWatch) viewsClear() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, vs := range g.views {
		if vs.listed && !vs.down {
			return false
		}
	}
	return true
}

// anyLive reports whether some view answers.
func (g *GoneWatch) anyLive() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, vs := range g.views {
		if vs.first && !vs.down {
			return true
		}
	}
	return false
}

// Pending names the views that answer and still list the instance.
func (g *GoneWatch) Pending() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, vs := range g.views {
		if vs.listed && !vs.down {
			out = append(out, vs.v.String())
		}
	}
	return out
}

// removeAgain makes the removal again through the first live view that can,
// trying those that still list the instance first.
func (g *GoneWatch) removeAgain(ctx context.Context) {
	g.mu.Lock()
	var order []*viewState
	for _, listed := range []bool{true, false} {
		for _, vs := range g.views {
			if !vs.down && vs.listed == listed {
				order = append(order, vs)
			}
		}
	}
	g.mu.Unlock()
	for _, vs := range order {
		rm, ok := vs.v.(ViewRemover)
		if !ok {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, removeAgainTimeout)
		err := rm.RemoveAgain(cctx, g.i, g.o.Disable)
		cancel()
		g.report(ViewEvent{Kind: ViewRemovedAgain, View: vs.v.String(), Err: err})
		if err == nil || errors.Is(err, ErrNotSupported) {
			return
		}
	}
}

// removeAgainTimeout bounds one removal made again through a view.
const removeAgainTimeout = 5 * time.Second

// Stop ends the watch and its views' goroutines.
func (g *GoneWatch) Stop() {
	_ = g.w.Stop()
	g.cancel()
	g.wg.Wait()
}

// Contains reports whether list holds i (see Instance.Same).
func Contains(list []Instance, i Instance) bool {
	for _, o := range list {
		if o.Same(i) {
			return true
		}
	}
	return false
}

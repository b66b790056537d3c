package consul

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

// Watch follows the passing health list of service with blocking queries.
// It survives errors (retrying with capped backoff) and index resets; it
// ends when ctx ends or Stop is called.
func (r *Registry) Watch(ctx context.Context, service string) (registry.Watcher, error) {
	if service == "" {
		return nil, r.wrap("watch", errors.New("empty service name"))
	}
	wctx, cancel := context.WithCancel(ctx)
	return &watcher{r: r, c: r.c, service: service, ctx: wctx, cancel: cancel}, nil
}

type watcher struct {
	r       *Registry
	c       client // the agent or server asked
	service string
	// stale reads the answering server's own copy rather than the
	// leader's; failFast returns a failed query's error instead of
	// retrying. Both are set for a view (see views.go).
	stale, failFast bool
	ctx             context.Context
	cancel          context.CancelFunc
	stop            sync.Once

	index   uint64
	last    []registry.Instance
	sent    bool
	lastReq time.Time
}

// minQueryGap rate-limits blocking queries, as Consul's docs ask, so that a
// misbehaving index cannot turn the watch into a busy loop.
const minQueryGap = 10 * time.Millisecond

// queryWait bounds each blocking query; Consul answers with an unchanged
// index when it passes, and the watch asks again.
const queryWait = 5 * time.Minute

func (w *watcher) Next(ctx context.Context) ([]registry.Instance, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	unbind := context.AfterFunc(w.ctx, cancel)
	defer unbind()

	for {
		if err := w.ctxErr(ctx); err != nil {
			return nil, err
		}
		var entries []*api.ServiceEntry
		var meta *api.QueryMeta
		query := func(ctx context.Context) error {
			if gap := time.Since(w.lastReq); gap < minQueryGap {
				if err := sleep(ctx, minQueryGap-gap); err != nil {
					return w.ctxErr(ctx)
				}
			}
			w.lastReq = time.Now()
			q := (&api.QueryOptions{WaitIndex: w.index, WaitTime: queryWait, AllowStale: w.stale}).WithContext(ctx)
			var err error
			entries, meta, err = w.c.HealthService(w.service, "", true, q)
			return err
		}
		var err error
		if w.failFast || !w.sent {
			// A view, and every watch's first read, fail fast: the
			// caller learns at once that the agent cannot answer, and
			// why, and retries on its own terms.
			err = query(ctx)
		} else {
			err = backoff.Retry(ctx, clock.Real{}, w.r.o.backoff, query, nil)
		}
		if err != nil {
			var gaveUp *backoff.GaveUpError
			if cerr := w.ctxErr(ctx); cerr != nil && !errors.As(err, &gaveUp) {
				// Cut by ctx or Stop, not failing: as the contract says.
				return nil, cerr
			}
			// A failure, or failures until ctx ended, which the error
			// names with ctx's cause.
			return nil, err
		}
		w.advance(meta.LastIndex)
		list := toInstances(w.service, entries)
		if !w.sent || !sameSet(list, w.last) {
			w.sent, w.last = true, list
			return list, nil
		}
	}
}

// advance applies Consul's rules for blocking-query indexes: an index that
// goes backwards resets the watch to 0 (a full fetch), and an index below 1
// is clamped to 1 so the next query still blocks.
func (w *watcher) advance(idx uint64) {
	switch {
	case idx < w.index:
		w.index = 0
	case idx < 1:
		w.index = 1
	default:
		w.index = idx
	}
}

func (w *watcher) ctxErr(ctx context.Context) error {
	if w.ctx.Err() != nil {
		return context.Canceled
	}
	return ctx.Err()
}

func (w *watcher) Stop() error {
	w.stop.Do(w.cancel)
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func toInstances(service string, entries []*api.ServiceEntry) []registry.Instance {
	out := make([]registry.Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		addr := e.Service.Address
		if addr == "" && e.Node != nil {
			addr = e.Node.Address
		}
		in := registry.Instance{
			Service:  service,
			ID:       e.Service.ID,
			Address:  addr,
			Port:     e.Service.Port,
			Tags:     slices.Clone(e.Service.Tags),
			Metadata: e.Service.Meta,
		}
		if e.Service.Weights.Passing > 0 {
			in.Weight = float64(e.Service.Weights.Passing)
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b registry.Instance) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// sameSet compares two sorted lists by what consumers route on.
func sameSet(a, b []registry.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y registry.Instance) bool {
		return x.ID == y.ID && x.Address == y.Address && x.Port == y.Port &&
			x.Weight == y.Weight && slices.Equal(x.Tags, y.Tags)
	})
}

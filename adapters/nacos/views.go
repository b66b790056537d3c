package nacos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// In a Nacos cluster, a consumer connected to node B learns of a change
// made on node A only after the Distro protocol has carried it to B and B
// has pushed it: about a second after A's own subscribers, and not before
// the client's expiry (minutes) when A dies first. So with several nodes
// (WithAddresses) the backend is a registry.Viewer: the confirmation waits
// for every node's own push, each taken by a client of its own connected to
// that node alone, and a node that still lists the instance long after the
// change gets it again as a disable through the admin API of a live node.

var _ registry.OwnViewer = (*Registry)(nil)

// ViewsIncludeOwn reports true: the views are every node given, and the
// SDK's own client is connected to one of them.
func (r *Registry) ViewsIncludeOwn([]registry.View) bool { return len(r.o.nodes) > 1 }

// Views returns one view per node given with WithAddresses, or none for a
// single node. Each view connects on first use.
func (r *Registry) Views(context.Context) ([]registry.View, error) {
	if len(r.o.nodes) < 2 {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, r.wrap("views", errors.New("backend is closed"))
	}
	out := make([]registry.View, 0, len(r.o.nodes))
	for _, a := range r.o.nodes {
		v := r.views[a]
		if v == nil {
			v = &view{parent: r, addr: a, name: "nacos://" + a}
			r.views[a] = v
		}
		out = append(out, v)
	}
	return out, nil
}

// warmViews connects every view in the background, once, so that the
// offline does not wait for three new connections (1.3 s here) before its
// removal. Close waits for it.
func (r *Registry) warmViews() {
	r.warm.Do(func() {
		views, err := r.Views(context.Background())
		if err != nil || len(views) == 0 {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		r.calls.Add(1) // under mu, as in call: Close waits only after closed is set
		r.mu.Unlock()
		go func() {
			defer r.calls.Done()
			for _, v := range views {
				_, _ = v.(*view).node() // a failure is met again, and reported, by the watch
			}
		}()
	})
}

// view is one node's own pushes, through a client connected to it alone.
type view struct {
	parent *Registry
	addr   string
	name   string

	mu  sync.Mutex
	reg *Registry // made on first use
}

var (
	_ registry.View        = (*view)(nil)
	_ registry.ViewRemover = (*view)(nil)
)

func (v *view) String() string { return v.name }

// node returns the client of this node alone, making it on first use.
func (v *view) node() (*Registry, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.reg != nil {
		return v.reg, nil
	}
	if v.parent.isClosed() {
		return nil, v.parent.wrap("watch", errors.New("backend is closed"))
	}
	o := v.parent.o
	o.addr, o.nodes, o.client = v.addr, nil, nil
	if o.viewClient != nil {
		o.client = o.viewClient(v.addr)
	}
	if o.dataDir != "" {
		o.dataDir = filepath.Join(o.dataDir, "view-"+strings.NewReplacer(":", "-", "/", "-").Replace(v.addr))
	}
	reg, err := newFrom(o)
	if err != nil {
		return nil, err
	}
	v.reg = reg
	return reg, nil
}

func (v *view) close() {
	v.mu.Lock()
	reg := v.reg
	v.reg = nil
	v.mu.Unlock()
	if reg != nil {
		_ = reg.Close()
	}
}

// viewProbeEvery is how often a view asks its node whether it is up while
// it waits for a push, since a node that died pushes nothing.
const viewProbeEvery = 250 * time.Millisecond

// alive asks the node's readiness endpoint, within a second.
func (v *view) alive(ctx context.Context) error {
	if v.parent.o.noAdminAPI {
		return nil // unit tests: no server behind the fake SDK
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+v.addr+"/nacos/v3/admin/core/state/readiness", nil)
	if err != nil {
		return err
	}
	resp, err := v.parent.hc.Do(req)
	if err != nil {
		return fmt.Errorf("nacos: node %s does not answer: %w", v.addr, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("nacos: node %s is not ready (HTTP %d)", v.addr, resp.StatusCode)
	}
	return nil
}

// Watch follows service as this node pushes it. Next returns an error when
// the node does not answer its readiness probe.
func (v *view) Watch(_ context.Context, service string) (registry.Watcher, error) {
	if service == "" {
		return nil, v.parent.wrap("watch", errors.New("empty service name"))
	}
	return &viewWatcher{v: v, service: service}, nil
}

type viewWatcher struct {
	v       *view
	service string
	inner   registry.Watcher // made once the node answers

	mu      sync.Mutex
	stopped bool
}

func (w *viewWatcher) Next(ctx context.Context) ([]registry.Instance, error) {
	if err := w.v.alive(ctx); err != nil {
		return nil, err
	}
	if w.inner == nil {
		reg, err := w.v.node()
		if err != nil {
			return nil, err
		}
		inner, err := reg.Watch(ctx, w.service)
		if err != nil {
			return nil, err
		}
		w.mu.Lock()
		if w.stopped {
			w.mu.Unlock()
			_ = inner.Stop()
			return nil, context.Canceled
		}
		w.inner = inner
		w.mu.Unlock()
	}
	// The node is asked every viewProbeEvery while the push is awaited.
	pctx, cancel := context.WithCancelCause(ctx)
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		t := time.NewTicker(viewProbeEvery)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				if err := w.v.alive(pctx); err != nil && pctx.Err() == nil {
					cancel(err)
					return
				}
			}
		}
	}()
	list, err := w.inner.Next(pctx)
	cause := context.Cause(pctx)
	cancel(nil)
	<-probing
	if err != nil && ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return nil, cause
	}
	return list, err
}

func (w *viewWatcher) Stop() error {
	w.mu.Lock()
	w.stopped = true
	inner := w.inner
	w.mu.Unlock()
	if inner != nil {
		return inner.Stop()
	}
	return nil
}

// RemoveAgain disables i through this node's admin API, whether it was
// deregistered or disabled: Nacos lets only the connection that registered
// an ephemeral instance remove it, and that connection's node may be dead.
// An instance the node no longer holds is gone already.
func (v *view) RemoveAgain(ctx context.Context, i registry.Instance, _ bool) error {
	reg, err := v.node()
	if err != nil {
		return err
	}
	err = reg.setEnabledRemote(ctx, "disable", i, false)
	if errors.Is(err, ErrInstanceNotFound) {
		return nil
	}
	return err
}

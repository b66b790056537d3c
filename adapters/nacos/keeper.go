package nacos

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// The SDK re-registers what this backend last published whenever its gRPC
// connection comes back: after a server restart, a failover to another
// node, a network blip (its "redo"). What it re-registers must be the
// intent, so the backend keeps its published set in step with it:
//
//   - going offline (Deregister) drops the instance from the set, so no
//     redo brings it back;
//   - the owner's Disable publishes enabled=false, which the redo repeats;
//   - a disable or enable by someone else (`lameduck offline --disable` in
//     another process, an operator in the console) is a server-side
//     override that a restarted standalone server no longer has. The
//     keeper reads each published instance's enabled flag through the
//     admin API at every push for its service (so within a second of the
//     change) and at least once per resync interval and, when it differs
//     from what the backend publishes, adopts it and publishes it, so the
//     redo repeats it too.
//
// A difference is adopted only when the backend's own last publish is
// settled (older than settleAfter: a cluster node may show a publish a
// second or two late) and nothing was published between the read and the
// adoption. Without the admin API (withoutAdminAPI, a server before 3.0,
// refused credentials) the keeper learns nothing, and says so once.

// settleAfter is how old the backend's last publish must be before a
// difference the admin API shows is taken for someone else's change
// (options.settle, which unit tests shorten).
const settleAfter = 2 * time.Second

// startKeeper starts the keeper once, after the first Register.
func (r *Registry) startKeeper() {
	if r.o.noAdminAPI || r.o.resync <= 0 {
		return
	}
	r.keepOnce.Do(func() {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.keepStop = cancel
		r.calls.Add(1) // under mu, as in call: Close waits only after closed is set
		r.mu.Unlock()
		go func() {
			defer r.calls.Done()
			r.keep(ctx)
		}()
	})
}

func (r *Registry) keep(ctx context.Context) {
	warned := false
	// A push for a service the backend publishes (a disable elsewhere
	// changes what consumers see) starts a look at once, at most one per
	// kickGap; the resync interval bounds the wait when pushes fail.
	kick := make(chan struct{}, 1)
	followed := map[string]bool{}
	for {
		for _, svc := range r.publishedServices() {
			if !followed[svc] && r.follow(ctx, svc, kick) {
				followed[svc] = true
			}
		}
		t := time.NewTimer(r.o.resync)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-kick:
			t.Stop()
		}
		if err := r.resyncOnce(ctx); err != nil && !warned && ctx.Err() == nil {
			warned = true
			slog.Warn("nacos: cannot read instances through the admin API, so a disable by someone else is not kept across a server restart",
				"registry", r.name, "err", err)
		}
		gap := time.NewTimer(min(kickGap, r.o.resync))
		select {
		case <-ctx.Done():
			gap.Stop()
			return
		case <-gap.C:
		}
	}
}

// kickGap is the least time between two looks that pushes start.
const kickGap = 500 * time.Millisecond

// publishedServices returns the names of the services the backend
// publishes in its own group, which its watches can follow.
func (r *Registry) publishedServices() []string {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	var names []string
	for _, set := range r.pubs {
		for _, p := range set {
			if r.group(p.inst) == r.o.group {
				names = append(names, p.inst.Service)
			}
			break
		}
	}
	return names
}

// follow watches service until ctx ends, kicking the keeper at every
// push. It reports whether the watch started.
func (r *Registry) follow(ctx context.Context, service string, kick chan<- struct{}) bool {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	r.calls.Add(1)
	r.mu.Unlock()
	w, err := r.Watch(ctx, service)
	if err != nil {
		r.calls.Done()
		return false
	}
	go func() {
		defer r.calls.Done()
		defer w.Stop()
		for {
			if _, err := w.Next(ctx); err != nil {
				return
			}
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}()
	return true
}

// resyncOnce compares every published instance with the server's view and
// adopts differences made by someone else. It returns the last read error.
func (r *Registry) resyncOnce(ctx context.Context) error {
	r.pubMu.Lock()
	gen, settled := r.pubGen, time.Since(r.pubAt) >= r.o.settle
	var pubs []published
	for _, set := range r.pubs {
		for _, p := range set {
			pubs = append(pubs, *p)
		}
	}
	r.pubMu.Unlock()
	if !settled {
		return nil
	}
	var last error
	for _, p := range pubs {
		if r.clearPending(p.inst) {
			continue // Register's own look decides first
		}
		rctx, cancel := context.WithTimeout(ctx, r.o.timeout)
		on, err := r.readEnabled(rctx, p.inst)
		cancel()
		key := r.serviceKey(p.inst) + "/" + r.instanceKey(p.inst)
		if errors.Is(err, ErrInstanceNotFound) {
			r.relist(ctx, p.inst, key, gen)
			continue
		}
		delete(r.missing, key)
		if err != nil {
			last = err
			continue
		}
		if on == p.enabled {
			continue
		}
		err = r.change(ctx, "resync", p.inst, func(set map[string]*published) error {
			cur := set[r.instanceKey(p.inst)]
			if r.pubGen != gen || cur == nil || cur.enabled != p.enabled {
				return errPublishedSince
			}
			cur.enabled = on
			return nil
		})
		if err == nil {
			what := "disabled"
			if on {
				what = "enabled"
			}
			slog.Info("nacos: the instance was "+what+" by someone else; a reconnect re-registers it so",
				"registry", r.name, "instance", p.inst.Endpoint())
		}
	}
	return last
}

// relist handles a published instance the server does not hold. The
// SDK re-registers what was published when its connection comes back,
// but only once: if that fails (a restarted server that does not know the
// user yet answers 403), nothing would bring the instance back while the
// backend believes it registered. So an instance missing at two looks in
// a row, with nothing published between them, is published again; one
// look alone may just precede the SDK's own re-registration.
func (r *Registry) relist(ctx context.Context, i registry.Instance, key string, gen uint64) {
	if r.missing == nil {
		r.missing = map[string]uint64{}
	}
	if seen, ok := r.missing[key]; !ok || seen != gen {
		r.missing[key] = gen
		return
	}
	delete(r.missing, key)
	err := r.change(ctx, "resync", i, func(set map[string]*published) error {
		if r.pubGen != gen || set[r.instanceKey(i)] == nil {
			return errPublishedSince
		}
		return nil // the same set, published again
	})
	if err == nil {
		slog.Warn("nacos: the server no longer held a registered instance (its re-registration after a reconnect failed?); registered it again",
			"registry", r.name, "instance", i.Endpoint())
	}
}

// errPublishedSince aborts an adoption: the backend published after the read.
var errPublishedSince = errors.New("published since the look")

// clearPending reports whether Register's look for a stale disable of i is
// still running.
func (r *Registry) clearPending(i registry.Instance) bool {
	r.clearMu.Lock()
	defer r.clearMu.Unlock()
	return r.clears[r.serviceKey(i)+"/"+r.instanceKey(i)] != nil
}

// readEnabled returns i's enabled flag as consumers see it, through the
// admin API.
func (r *Registry) readEnabled(ctx context.Context, i registry.Instance) (bool, error) {
	token, err := r.login(ctx)
	if err != nil {
		return false, err
	}
	var cur adminInstance
	if err := r.admin(ctx, i, token, http.MethodGet, adminInstancePath, r.adminID(i), &cur); err != nil {
		return false, err
	}
	return cur.Enabled, nil
}

// adminID is the admin API's name for i.
func (r *Registry) adminID(i registry.Instance) url.Values {
	id := url.Values{
		"groupName":   {r.group(i)},
		"serviceName": {i.Service},
		"clusterName": {r.cluster(i)},
		"ip":          {i.Address},
		"port":        {strconv.Itoa(i.Port)},
	}
	if r.o.namespace != "" {
		id.Set("namespaceId", r.o.namespace)
	}
	return id
}

package registry

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Multi acts on several registries at once, for services registered in more
// than one during a migration (Consul and Nacos, say). Every call fans out in
// parallel and waits for all of them; it never stops at the first failure, so
// a failure in one registry does not leave the others untried. The error is
// the errors.Join of one *Error per failed registry. The zero value (no
// registries) succeeds at everything and watches an always-empty list.
type Multi []Registry

var _ Registry = Multi(nil)

func (m Multi) Register(ctx context.Context, i Instance) error {
	return m.each(func(r Registry) error { return r.Register(ctx, i) }, "register")
}

func (m Multi) Deregister(ctx context.Context, i Instance) error {
	return m.each(func(r Registry) error { return r.Deregister(ctx, i) }, "deregister")
}

// Disable disables i in every registry; a registry without the Disabler
// capability fails with ErrNotSupported.
func (m Multi) Disable(ctx context.Context, i Instance) error {
	return m.each(func(r Registry) error {
		d, ok := r.(Disabler)
		if !ok {
			return ErrNotSupported
		}
		return d.Disable(ctx, i)
	}, "disable")
}

// Enable is the reverse of Disable.
func (m Multi) Enable(ctx context.Context, i Instance) error {
	return m.each(func(r Registry) error {
		d, ok := r.(Disabler)
		if !ok {
			return ErrNotSupported
		}
		return d.Enable(ctx, i)
	}, "enable")
}

func (m Multi) String() string {
	names := make([]string, len(m))
	for k, r := range m {
		names[k] = r.String()
	}
	return strings.Join(names, ",")
}

func (m Multi) each(op func(Registry) error, name string) error {
	errs := make([]error, len(m))
	Each(m, func(k int, r Registry) {
		if err := op(r); err != nil {
			errs[k] = wrap(r, name, err)
		}
	})
	return errors.Join(errs...)
}

// Each calls f for every registry at once, each in its own goroutine, and
// returns when all calls have returned. It is lameduck's one fan-out over
// registries: Multi and the drain coordinator both go through it, so that a
// slow or unreachable registry delays no other.
func Each(regs []Registry, f func(k int, r Registry)) {
	var wg sync.WaitGroup
	for k, r := range regs {
		wg.Go(func() { f(k, r) })
	}
	wg.Wait()
}

func wrap(r Registry, op string, err error) error {
	var re *Error
	if errors.As(err, &re) {
		return err
	}
	return &Error{Registry: r.String(), Op: op, Err: err}
}

// Watch watches service in every registry and returns the union of what
// consumers see: an instance is visible while any registry shows it. The
// first Next returns once every registry has delivered its first list.
func (m Multi) Watch(ctx context.Context, service string) (Watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	mw := &multiWatcher{
		cancel:  cancel,
		lists:   make([][]Instance, len(m)),
		seen:    make([]bool, len(m)),
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	watchers := make([]Watcher, 0, len(m))
	for _, r := range m {
		w, err := r.Watch(ctx, service)
		if err != nil {
			cancel()
			for _, w := range watchers {
				_ = w.Stop()
			}
			return nil, wrap(r, "watch", err)
		}
		watchers = append(watchers, w)
	}
	mw.wg.Add(len(watchers))
	for k, w := range watchers {
		go mw.pump(ctx, k, m[k], w)
	}
	go func() {
		mw.wg.Wait()
		if len(watchers) == 0 {
			<-ctx.Done() // nothing to pump: the empty list stands until Stop or ctx ends
		}
		close(mw.done)
	}()
	return mw, nil
}

type multiWatcher struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	done    chan struct{} // closed when every pump has returned
	changed chan struct{} // capacity 1: bursts collapse into one wake-up

	mu    sync.Mutex
	lists [][]Instance
	seen  []bool
	dirty bool       // a list arrived since the last Next returned
	sent  bool       // Next has returned a list
	last  []Instance // copy of the list Next last returned
	err   error
}

func (mw *multiWatcher) pump(ctx context.Context, k int, r Registry, w Watcher) {
	defer mw.wg.Done()
	defer w.Stop()
	for {
		list, err := w.Next(ctx)
		mw.mu.Lock()
		if err != nil {
			if mw.err == nil && ctx.Err() == nil {
				mw.err = wrap(r, "watch", err)
			}
			mw.mu.Unlock()
			mw.notify()
			return
		}
		mw.lists[k] = list
		mw.seen[k] = true
		mw.dirty = true
		mw.mu.Unlock()
		mw.notify()
	}
}

func (mw *multiWatcher) notify() {
	select {
	case mw.changed <- struct{}{}:
	default:
	}
}

// Next returns the union once every registry has reported, and after that
// each time a registry's new list changes the union.
func (mw *multiWatcher) Next(ctx context.Context) ([]Instance, error) {
	for {
		select {
		case <-mw.done: // stopped: a list that arrived before does not count
			return nil, mw.endErr()
		default:
		}
		mw.mu.Lock()
		if mw.err != nil {
			err := mw.err
			mw.mu.Unlock()
			return nil, err
		}
		all := true
		for _, s := range mw.seen {
			all = all && s
		}
		if all && (mw.dirty || !mw.sent) {
			out := union(mw.lists)
			changed := !mw.sent || !sameInstances(out, mw.last)
			mw.sent, mw.dirty = true, false
			if changed {
				mw.last = slices.Clone(out)
				mw.mu.Unlock()
				return out, nil
			}
		}
		mw.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-mw.done:
			return nil, mw.endErr()
		case <-mw.changed:
		}
	}
}

// endErr is what Next returns once every pump has returned: the first
// watch failure, or context.Canceled after Stop or the Watch ctx ending.
func (mw *multiWatcher) endErr() error {
	mw.mu.Lock()
	defer mw.mu.Unlock()
	if mw.err != nil {
		return mw.err
	}
	return context.Canceled
}

func (mw *multiWatcher) Stop() error {
	mw.cancel()
	<-mw.done
	return nil
}

// union concatenates the lists, dropping instances already listed by an
// earlier registry.
func union(lists [][]Instance) []Instance {
	var out []Instance
	for _, l := range lists {
	next:
		for _, in := range l {
			for _, o := range out {
				if o.Same(in) {
					continue next
				}
			}
			out = append(out, in)
		}
	}
	return out
}

// sameInstances reports whether a and b hold equal instances, in any order.
func sameInstances(a, b []Instance) bool {
	if len(a) != len(b) {
		return false
	}
	used := make([]bool, len(b))
next:
	for _, x := range a {
		for k, y := range b {
			if !used[k] && x.equal(y) {
				used[k] = true
				continue next
			}
		}
		return false
	}
	return true
}

// equal reports whether i and o are equal in every field.
func (i Instance) equal(o Instance) bool {
	return i.Service == o.Service && i.ID == o.ID && i.Address == o.Address && i.Port == o.Port &&
		slices.Equal(i.Tags, o.Tags) && maps.Equal(i.Metadata, o.Metadata) &&
		i.Namespace == o.Namespace && i.Group == o.Group && i.Cluster == o.Cluster && i.Weight == o.Weight
}

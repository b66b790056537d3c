// Package memory is an in-process registry. It is lameduck's embedded
// default for the demo and for unit tests, and behaves like the real
// backends where it matters: watchers receive whole snapshots, and they see a
// change only after the configured push delay, as consumers of Consul or Nacos
// see a deregistration only after the registry has pushed it.
package memory

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/internal/snapshot"
	"github.com/lameduck/lameduck/registry"
)

// Registry is an in-process registry, safe for concurrent use.
type Registry struct {
	opts options

	mu       sync.Mutex
	services map[string][]*entry
	watchers map[string]map[*watcher]struct{}
	fault    error
	closed   bool
}

type entry struct {
	inst     registry.Instance
	disabled bool
	health   registry.Health
}

var (
	_ registry.Registry     = (*Registry)(nil)
	_ registry.Disabler     = (*Registry)(nil)
	_ registry.HealthSetter = (*Registry)(nil)
)

// Option configures a Registry.
type Option func(*options)

type options struct {
	name      string
	pushDelay time.Duration
	clock     clock.Clock
}

func defaults(o *options) {
	if o.name == "" {
		o.name = "memory://"
	}
	o.clock = clock.OrReal(o.clock)
}

// WithPushDelay makes watchers see each change only d after it happened.
// The default is 0 (immediate).
func WithPushDelay(d time.Duration) Option {
	return func(o *options) { o.pushDelay = d }
}

// WithName sets what String returns; the default is "memory://".
func WithName(name string) Option {
	return func(o *options) { o.name = name }
}

func withClock(c clock.Clock) Option {
	return func(o *options) { o.clock = c }
}

// New returns an empty registry.
func New(opts ...Option) (*Registry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.pushDelay < 0 {
		return nil, fmt.Errorf("memory: push delay %v is negative; use 0 or more", o.pushDelay)
	}
	defaults(&o)
	return &Registry{
		opts:     o,
		services: map[string][]*entry{},
		watchers: map[string]map[*watcher]struct{}{},
	}, nil
}

func (r *Registry) String() string { return r.opts.name }

// SetFault makes every call fail with err until SetFault(nil), to simulate
// an unreachable registry. Watches already running keep their last list.
func (r *Registry) SetFault(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fault = err
}

func (r *Registry) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.closed {
		return errors.New("memory: registry is closed")
	}
	return r.fault
}

// Register adds i, or replaces the registration with the same key.
func (r *Registry) Register(ctx context.Context, i registry.Instance) error {
	if err := i.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(ctx); err != nil {
		return err
	}
	i.Tags = slices.Clone(i.Tags)
	i.Metadata = cloneMap(i.Metadata)
	list := r.services[i.Service]
	for _, e := range list {
		if e.inst.Same(i) {
			e.inst = i
			r.publishLocked(i.Service)
			return nil
		}
	}
	r.services[i.Service] = append(list, &entry{inst: i})
	r.publishLocked(i.Service)
	return nil
}

// Deregister removes i. An unknown instance is not an error.
func (r *Registry) Deregister(ctx context.Context, i registry.Instance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(ctx); err != nil {
		return err
	}
	list := r.services[i.Service]
	for k, e := range list {
		if e.inst.Same(i) {
			r.services[i.Service] = slices.Delete(list, k, k+1)
			r.publishLocked(i.Service)
			return nil
		}
	}
	return nil
}

// Disable hides i from consumers while keeping it registered.
func (r *Registry) Disable(ctx context.Context, i registry.Instance) error {
	return r.update(ctx, i, func(e *entry) { e.disabled = true })
}

// Enable reverses Disable.
func (r *Registry) Enable(ctx context.Context, i registry.Instance) error {
	return r.update(ctx, i, func(e *entry) { e.disabled = false })
}

// SetHealth sets i's health; consumers see only passing instances.
func (r *Registry) SetHealth(ctx context.Context, i registry.Instance, h registry.Health, _ string) error {
	return r.update(ctx, i, func(e *entry) { e.health = h })
}

func (r *Registry) update(ctx context.Context, i registry.Instance, f func(*entry)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(ctx); err != nil {
		return err
	}
	for _, e := range r.services[i.Service] {
		if e.inst.Same(i) {
			f(e)
			r.publishLocked(i.Service)
			return nil
		}
	}
	return fmt.Errorf("memory: instance %s of service %q is not registered; register it first", i.Key(), i.Service)
}

// Instances returns what consumers of service see now, ignoring the push
// delay: the registry's own view.
func (r *Registry) Instances(service string) []registry.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.visibleLocked(service)
}

func (r *Registry) visibleLocked(service string) []registry.Instance {
	var out []registry.Instance
	for _, e := range r.services[service] {
		if e.disabled || e.health != registry.HealthPassing {
			continue
		}
		in := e.inst
		in.Tags = slices.Clone(in.Tags)
		in.Metadata = cloneMap(in.Metadata)
		out = append(out, in)
	}
	return out
}

// publishLocked schedules delivery of the current snapshot to every watcher
// of service after the push delay. Snapshots are delivered in order. snap is
// never handed out: each watcher gets its own copy, so a caller that edits
// what Next returned cannot change another watcher's list.
func (r *Registry) publishLocked(service string) {
	snap := r.visibleLocked(service)
	for w := range r.watchers[service] {
		w.schedule(snap)
	}
}

// Watch streams the consumer-visible list of service. The first Next
// returns the current list at once; later lists arrive after the push delay.
// The watch ends when ctx ends or Stop is called.
func (r *Registry) Watch(ctx context.Context, service string) (registry.Watcher, error) {
	if service == "" {
		return nil, errors.New("memory: watch needs a service name")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	w := &watcher{reg: r, service: service, slot: snapshot.New(func(a, b []registry.Instance) bool {
		return slices.EqualFunc(a, b, sameFields)
	})}
	w.slot.Put(r.visibleLocked(service))
	w.last = r.visibleLocked(service)
	if r.watchers[service] == nil {
		r.watchers[service] = map[*watcher]struct{}{}
	}
	r.watchers[service][w] = struct{}{}
	unbind := context.AfterFunc(ctx, func() { _ = w.Stop() })
	w.mu.Lock()
	w.unbind = unbind
	w.mu.Unlock()
	return w, nil
}

// Close stops every watcher and makes later calls fail.
func (r *Registry) Close() error {
	r.mu.Lock()
	var ws []*watcher
	for _, set := range r.watchers {
		for w := range set {
			ws = append(ws, w)
		}
	}
	r.closed = true
	r.mu.Unlock()
	for _, w := range ws {
		_ = w.Stop()
	}
	return nil
}

type watcher struct {
	reg     *Registry
	service string
	slot    *snapshot.Slot
	unbind  func() bool // detaches the Watch ctx

	mu      sync.Mutex
	last    []registry.Instance // newest list scheduled; shared, never handed out
	pending []clock.Timer       // scheduled deliveries
	seq     uint64              // deliveries scheduled
	applied uint64              // highest delivery applied
}

// schedule delivers a copy of shared after the push delay, unless shared
// equals the list last scheduled: Next returns only lists that differ. Called with
// reg.mu held, so calls are ordered; a delivery never overwrites a later one,
// whichever timer goroutine runs first, because of the sequence check.
func (w *watcher) schedule(shared []registry.Instance) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if slices.EqualFunc(w.last, shared, sameFields) {
		return
	}
	w.last = shared
	snap := cloneList(shared)
	w.seq++
	seq := w.seq
	deliver := func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if seq > w.applied {
			w.applied = seq
			w.slot.Put(snap)
		}
	}
	if w.reg.opts.pushDelay == 0 {
		w.applied = seq
		w.slot.Put(snap)
		return
	}
	t := w.reg.opts.clock.AfterFunc(w.reg.opts.pushDelay, deliver)
	w.pending = append(w.pending, t)
	if len(w.pending) > 64 { // forget fired timers now and then
		w.pending = w.pending[len(w.pending)-32:]
	}
}

func (w *watcher) Next(ctx context.Context) ([]registry.Instance, error) { return w.slot.Next(ctx) }

func (w *watcher) Stop() error {
	if !w.slot.Stop() {
		return nil
	}
	w.mu.Lock()
	unbind := w.unbind
	for _, t := range w.pending {
		t.Stop()
	}
	w.pending = nil
	w.mu.Unlock()
	if unbind != nil {
		unbind()
	}
	w.reg.mu.Lock()
	delete(w.reg.watchers[w.service], w)
	w.reg.mu.Unlock()
	return nil
}

func cloneList(l []registry.Instance) []registry.Instance {
	if l == nil {
		return nil
	}
	out := make([]registry.Instance, len(l))
	for k, in := range l {
		in.Tags = slices.Clone(in.Tags)
		in.Metadata = cloneMap(in.Metadata)
		out[k] = in
	}
	return out
}

// sameFields reports whether a and b are equal in every field.
func sameFields(a, b registry.Instance) bool {
	return a.Service == b.Service && a.ID == b.ID && a.Address == b.Address && a.Port == b.Port &&
		slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Metadata, b.Metadata) &&
		a.Namespace == b.Namespace && a.Group == b.Group && a.Cluster == b.Cluster && a.Weight == b.Weight
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

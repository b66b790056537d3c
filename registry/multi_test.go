package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

func newMem(t *testing.T, name string, opts ...memory.Option) *memory.Registry {
	t.Helper()
	r, err := memory.New(append([]memory.Option{memory.WithName(name)}, opts...)...)
	if err != nil {
		t.Fatalf("memory.New: want a registry, got error %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func inst(n int) registry.Instance {
	return registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8000 + n}
}

func ports(l []registry.Instance) []int {
	out := make([]int, len(l))
	for k, i := range l {
		out[k] = i.Port
	}
	return out
}

func mustRegister(t *testing.T, r registry.Registry, in ...registry.Instance) {
	t.Helper()
	for _, i := range in {
		if err := r.Register(t.Context(), i); err != nil {
			t.Fatalf("Register(%s) on %s: want nil error, got %v", i.Endpoint(), r, err)
		}
	}
}

func mustDeregister(t *testing.T, r registry.Registry, i registry.Instance) {
	t.Helper()
	if err := r.Deregister(t.Context(), i); err != nil {
		t.Fatalf("Deregister(%s) on %s: want nil error, got %v", i.Endpoint(), r, err)
	}
}

func watch(t *testing.T, r registry.Registry) registry.Watcher {
	t.Helper()
	w, err := r.Watch(t.Context(), "svc")
	if err != nil {
		t.Fatalf("Watch on %s: want nil error, got %v", r, err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return w
}

func next(t *testing.T, w registry.Watcher) []registry.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	list, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("Next: want a list within %v, got error %v", wait, err)
	}
	return list
}

// nextUntil returns the first list from w that ok accepts, checking that
// every list differs from the one before it.
func nextUntil(t *testing.T, w registry.Watcher, prev []registry.Instance, want string, ok func([]registry.Instance) bool) []registry.Instance {
	t.Helper()
	for !ok(prev) {
		list := next(t, w)
		if fmt.Sprint(ports(list)) == fmt.Sprint(ports(prev)) {
			t.Errorf("Next returned ports %v again; want Next to block until the list differs", ports(list))
		}
		prev = list
	}
	return prev
}

// registeredIn reports whether r's own view lists i.
func registeredIn(r *memory.Registry, i registry.Instance) bool {
	return registry.Contains(r.Instances(i.Service), i)
}

// noDisabler hides every capability of the registry it wraps.
type noDisabler struct{ registry.Registry }

func TestMultiContract(t *testing.T) {
	t.Parallel()
	a := newMem(t, "memory://a")
	b := newMem(t, "memory://b", memory.WithPushDelay(20*time.Millisecond))
	registrytest.Run(t, registrytest.Harness{
		New:     func(*testing.T) registry.Registry { return registry.Multi{a, b} },
		Timeout: wait,
	})
}

func TestMultiFansOut(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	m := registry.Multi{a, b}
	i := inst(0)
	mustRegister(t, m, i)
	for _, r := range []*memory.Registry{a, b} {
		if !registeredIn(r, i) {
			t.Errorf("after Multi.Register: want %s in %s, got ports %v", i.Endpoint(), r, ports(r.Instances("svc")))
		}
	}
	if err := m.Disable(t.Context(), i); err != nil {
		t.Fatalf("Multi.Disable: want nil error, got %v", err)
	}
	for _, r := range []*memory.Registry{a, b} {
		if registeredIn(r, i) {
			t.Errorf("after Multi.Disable: want %s hidden in %s, got ports %v", i.Endpoint(), r, ports(r.Instances("svc")))
		}
	}
	if err := m.Enable(t.Context(), i); err != nil {
		t.Fatalf("Multi.Enable: want nil error, got %v", err)
	}
	for _, r := range []*memory.Registry{a, b} {
		if !registeredIn(r, i) {
			t.Errorf("after Multi.Enable: want %s visible in %s, got ports %v", i.Endpoint(), r, ports(r.Instances("svc")))
		}
	}
	mustDeregister(t, m, i)
	for _, r := range []*memory.Registry{a, b} {
		if registeredIn(r, i) {
			t.Errorf("after Multi.Deregister: want no %s in %s, got ports %v", i.Endpoint(), r, ports(r.Instances("svc")))
		}
	}
	if got, want := m.String(), "memory://a,memory://b"; got != want {
		t.Errorf("Multi.String(): want %q, got %q", want, got)
	}
}

func TestMultiOneFails(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	m := registry.Multi{a, b}
	boom := errors.New("boom")
	b.SetFault(boom)
	i := inst(0)

	ops := []struct {
		op       string
		call     func() error
		aHasItAf bool
	}{
		{"register", func() error { return m.Register(t.Context(), i) }, true},
		{"deregister", func() error { return m.Deregister(t.Context(), i) }, false},
	}
	for _, o := range ops {
		err := o.call()
		var re *registry.Error
		if !errors.As(err, &re) {
			t.Fatalf("Multi %s with %s failing: want a *registry.Error, got %v", o.op, b, err)
		}
		if re.Registry != b.String() || re.Op != o.op {
			t.Errorf("Multi %s error: want Registry %q Op %q, got Registry %q Op %q", o.op, b, o.op, re.Registry, re.Op)
		}
		if !errors.Is(err, boom) {
			t.Errorf("Multi %s error: want it to wrap boom, got %v", o.op, err)
		}
		if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 1 {
			t.Errorf("Multi %s error: want 1 joined error (only %s failed), got %d: %v", o.op, b, n, err)
		}
		if got := registeredIn(a, i); got != o.aHasItAf {
			t.Errorf("after Multi %s: want %s registered in healthy %s = %v, got %v", o.op, i.Endpoint(), a, o.aHasItAf, got)
		}
	}
}

func TestMultiDisableNotSupported(t *testing.T) {
	t.Parallel()
	a := newMem(t, "memory://a")
	plain := noDisabler{newMem(t, "memory://plain")}
	m := registry.Multi{a, plain}
	i := inst(0)
	mustRegister(t, m, i)
	err := m.Disable(t.Context(), i)
	if !errors.Is(err, registry.ErrNotSupported) {
		t.Fatalf("Multi.Disable with a registry lacking Disabler: want ErrNotSupported, got %v", err)
	}
	var re *registry.Error
	if !errors.As(err, &re) || re.Registry != "memory://plain" || re.Op != "disable" {
		t.Errorf("Multi.Disable error: want *registry.Error for memory://plain op disable, got %v", err)
	}
	if registeredIn(a, i) {
		t.Errorf("after Multi.Disable: want %s disabled in %s all the same, got it visible", i.Endpoint(), a)
	}
}

func TestMultiZeroValue(t *testing.T) {
	t.Parallel()
	var m registry.Multi
	if err := m.Register(t.Context(), inst(0)); err != nil {
		t.Errorf("zero Multi Register: want nil, got %v", err)
	}
	if err := m.Deregister(t.Context(), inst(0)); err != nil {
		t.Errorf("zero Multi Deregister: want nil, got %v", err)
	}
	w := watch(t, m)
	if got := next(t, w); len(got) != 0 {
		t.Errorf("zero Multi first Next: want an empty list, got ports %v", ports(got))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := w.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("zero Multi second Next: want it to block until ctx ends (context.DeadlineExceeded), got %v", err)
	}
	if err := w.Stop(); err != nil {
		t.Errorf("Stop: want nil, got %v", err)
	}
	if _, err := w.Next(t.Context()); !errors.Is(err, context.Canceled) {
		t.Errorf("zero Multi Next after Stop: want context.Canceled, got %v", err)
	}
}

// TestMultiWatchUnion: an instance stays visible while any registry lists it.
func TestMultiWatchUnion(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b", memory.WithPushDelay(20*time.Millisecond))
	m := registry.Multi{a, b}
	x, y := inst(0), inst(1)
	mustRegister(t, a, x, y)
	mustRegister(t, b, y)
	w := watch(t, m)
	got := next(t, w)
	if len(got) != 2 || !registry.Contains(got, x) || !registry.Contains(got, y) {
		t.Fatalf("first Next of the union: want ports [%d %d] each once, got %v", x.Port, y.Port, ports(got))
	}
	// y leaves a but stays in b: the union does not change, so Next must
	// not return until x leaves too.
	mustDeregister(t, a, y)
	mustDeregister(t, a, x)
	got = nextUntil(t, w, got, "x gone", func(l []registry.Instance) bool { return !registry.Contains(l, x) })
	if !registry.Contains(got, y) {
		t.Errorf("union after y left a only: want y (port %d) still visible through b, got %v", y.Port, ports(got))
	}
	mustDeregister(t, b, y)
	got = nextUntil(t, w, got, "y gone", func(l []registry.Instance) bool { return !registry.Contains(l, y) })
	if len(got) != 0 {
		t.Errorf("union after y left every registry: want an empty list, got ports %v", ports(got))
	}
}

func TestMultiWatchFails(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	boom := errors.New("boom")
	b.SetFault(boom)
	_, err := registry.Multi{a, b}.Watch(t.Context(), "svc")
	var re *registry.Error
	if !errors.As(err, &re) || re.Registry != "memory://b" || re.Op != "watch" || !errors.Is(err, boom) {
		t.Errorf("Multi.Watch with memory://b failing: want *registry.Error{memory://b, watch, boom}, got %v", err)
	}
	// goleak in TestMain checks that a's watcher was stopped.
}

func TestMultiWatchEndsWhenARegistryCloses(t *testing.T) {
	t.Parallel()
	a, b := newMem(t, "memory://a"), newMem(t, "memory://b")
	w := watch(t, registry.Multi{a, b})
	next(t, w)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: want nil, got %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	_, err := w.Next(ctx)
	var re *registry.Error
	if !errors.As(err, &re) || re.Registry != "memory://b" || re.Op != "watch" {
		t.Errorf("Multi Next after memory://b closed: want *registry.Error naming memory://b op watch, got %v", err)
	}
}

func TestMultiNextAfterStopIgnoresPendingList(t *testing.T) {
	t.Parallel()
	a := newMem(t, "memory://a")
	m := registry.Multi{a}
	w := watch(t, m)
	next(t, w)
	// The pump may or may not have taken this list before Stop; either
	// way Next after Stop must report the stop.
	mustRegister(t, a, inst(0))
	if err := w.Stop(); err != nil {
		t.Fatalf("Stop: want nil, got %v", err)
	}
	if got, err := w.Next(t.Context()); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after Stop: want context.Canceled, got ports %v, error %v", ports(got), err)
	}
}

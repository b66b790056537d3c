package registrytest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry"
)

func testRegisterThenWatch(t *testing.T, e *env) {
	a := e.inst(0)
	if e.reg.String() == "" {
		t.Errorf("String(): want a name for logs and errors, got \"\"")
	}
	e.register(t, a)
	list := e.consumer.await(t, "a list holding "+show(a), has(a))
	if n := count(list, a); n != 1 {
		t.Errorf("consumer list %s: want %s once, got it %d times", showList(list), show(a), n)
	}
	got, _ := find(list, a)
	e.checkFields(t, a, got)
	if l := e.freshList(t); !registry.Contains(l, a) {
		t.Errorf("first list of a new watch on %s: want it to hold %s, got %s", e.reg, show(a), showList(l))
	}
}

func testDeregisterConfirmed(t *testing.T, e *env) {
	a := e.inst(0)
	e.register(t, a)
	e.consumer.await(t, "a list holding "+show(a), has(a))
	e.confirmGone(t, a, func() { e.deregister(t, a) })
	if l := e.freshList(t); registry.Contains(l, a) {
		t.Errorf("first list of a new watch after the confirmation: want no %s, got %s", show(a), showList(l))
	}
	e.consumer.await(t, "a list without "+show(a), lacks(a))
}

func testDeregisterUnknownAndTwice(t *testing.T, e *env) {
	unknown := e.inst(7)
	if err := e.reg.Deregister(e.ctx(t), unknown); err != nil {
		t.Errorf("Deregister(%s) of an instance never registered: want nil error (already gone), got %v", show(unknown), err)
	}
	a := e.inst(0)
	e.register(t, a)
	e.consumer.await(t, "a list holding "+show(a), has(a))
	e.confirmGone(t, a, func() {
		e.deregister(t, a)
		if err := e.reg.Deregister(e.ctx(t), a); err != nil {
			t.Errorf("second Deregister(%s): want nil error (already gone), got %v", show(a), err)
		}
	})
}

func testRegisterIdempotent(t *testing.T, e *env) {
	a, b := e.inst(0), e.inst(1)
	e.register(t, a, a)
	// b, registered after the second a, marks the point by which a
	// duplicate of a would be visible too.
	e.register(t, b)
	list := e.consumer.await(t, "a list holding "+show(a)+" and "+show(b), all(has(a), has(b)))
	if n := count(list, a); n != 1 || len(list) != 2 {
		t.Errorf("after registering %s twice and %s once: want 2 instances, %s once; got %s (%s %d times)",
			show(a), show(b), show(a), showList(list), show(a), n)
	}
}

func testRemoveOneOfTwo(t *testing.T, e *env) {
	a, b := e.inst(0), e.inst(1)
	e.register(t, a, b)
	e.consumer.await(t, "a list holding "+show(a)+" and "+show(b), all(has(a), has(b)))
	e.confirmGone(t, a, func() { e.deregister(t, a) })
	list := e.consumer.await(t, "a list without "+show(a), lacks(a))
	if !registry.Contains(list, b) {
		t.Errorf("consumer list after removing %s: want %s still there, got %s", show(a), show(b), showList(list))
	}
	if l := e.freshList(t); !registry.Contains(l, b) || registry.Contains(l, a) {
		t.Errorf("first list of a new watch after removing %s: want %s only, got %s", show(a), show(b), showList(l))
	}
}

func testDisableEnable(t *testing.T, e *env) {
	d, ok := e.reg.(registry.Disabler)
	if !ok {
		t.Skipf("capability: %s does not implement registry.Disabler", e.reg)
	}
	a, b := e.inst(0), e.inst(1)
	e.register(t, a, b)
	e.consumer.await(t, "a list holding "+show(a)+" and "+show(b), all(has(a), has(b)))
	e.confirmGone(t, a, func() {
		if err := d.Disable(e.ctx(t), a); err != nil {
			t.Fatalf("Disable(%s): want nil error, got %v", show(a), err)
		}
	})
	list := e.consumer.await(t, "a list without disabled "+show(a), lacks(a))
	if !registry.Contains(list, b) {
		t.Errorf("consumer list after disabling %s: want %s still there, got %s", show(a), show(b), showList(list))
	}
	if err := d.Enable(e.ctx(t), a); err != nil {
		t.Fatalf("Enable(%s): want nil error, got %v", show(a), err)
	}
	list = e.consumer.await(t, "a list holding re-enabled "+show(a), has(a))
	if n := count(list, a); n != 1 {
		t.Errorf("consumer list after Enable: want %s once, got %s", show(a), showList(list))
	}
}

func testHealth(t *testing.T, e *env) {
	hs, ok := e.reg.(registry.HealthSetter)
	if !ok {
		t.Skipf("capability: %s does not implement registry.HealthSetter", e.reg)
	}
	a, b := e.inst(0), e.inst(1)
	e.register(t, a, b)
	e.consumer.await(t, "a list holding "+show(a)+" and "+show(b), all(has(a), has(b)))
	for _, h := range []registry.Health{registry.HealthCritical, registry.HealthWarning} {
		e.confirmGone(t, a, func() {
			if err := hs.SetHealth(e.ctx(t), a, h, "registrytest"); err != nil {
				t.Fatalf("SetHealth(%s, %v): want nil error, got %v", show(a), h, err)
			}
		})
		list := e.consumer.await(t, fmt.Sprintf("a list without %v %s", h, show(a)), lacks(a))
		if !registry.Contains(list, b) {
			t.Errorf("consumer list after %s turned %v: want %s still there, got %s", show(a), h, show(b), showList(list))
		}
		if err := hs.SetHealth(e.ctx(t), a, registry.HealthPassing, "registrytest"); err != nil {
			t.Fatalf("SetHealth(%s, passing): want nil error, got %v", show(a), err)
		}
		e.consumer.await(t, "a list holding passing "+show(a), has(a))
	}
}

func testWatchWholeSnapshots(t *testing.T, e *env) {
	ctx := e.ctx(t)
	w, err := e.reg.Watch(ctx, e.service)
	if err != nil {
		t.Fatalf("Watch(%q): want nil error, got %v", e.service, err)
	}
	defer w.Stop()
	first, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("first Next: want the current list at once, got error %v", err)
	}
	if len(first) != 0 {
		t.Errorf("first Next on new service %q: want an empty list, got %s", e.service, showList(first))
	}
	in := []registry.Instance{e.inst(0), e.inst(1), e.inst(2)}
	for _, i := range in {
		e.register(t, i)
	}
	prev, last := first, first
	for !all(has(in[0]), has(in[1]), has(in[2]))(last) {
		list, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("Next: want a list with all of %s within %v, got error %v (last list %s)", showList(in), e.h.Timeout, err, showList(last))
		}
		if sameList(list, prev) {
			t.Errorf("Next returned %s, equal to the list before it; want Next to block until the list differs", showList(list))
		}
		for _, o := range list {
			if count(in, o) != 1 {
				t.Errorf("Next returned %s holding %s; want only instances of %s", showList(list), show(o), showList(in))
			}
			if n := count(list, o); n != 1 {
				t.Errorf("Next returned %s holding %s %d times; want each instance once", showList(list), show(o), n)
			}
		}
		prev, last = list, list
	}
	if len(last) != 3 {
		t.Errorf("last snapshot: want the 3 instances %s, got %s", showList(in), showList(last))
	}
	e.consumer.await(t, "a list holding all of "+showList(in), all(has(in[0]), has(in[1]), has(in[2])))
}

func testWatcherCancelAndStop(t *testing.T, e *env) {
	ctx := e.ctx(t)
	w, err := e.reg.Watch(ctx, e.service)
	if err != nil {
		t.Fatalf("Watch(%q): want nil error, got %v", e.service, err)
	}
	if _, err := w.Next(ctx); err != nil {
		t.Fatalf("first Next: want the current list, got error %v", err)
	}

	expired, cancelExpired := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancelExpired()
	next := func(ctx context.Context, w registry.Watcher) error {
		_, err := w.Next(ctx)
		return err
	}
	err = bounded(t, e.h.Timeout, func() error { return next(expired, w) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Next with an expired ctx on an unchanged list: want context.DeadlineExceeded, got %v", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	got := make(chan error, 1)
	go func() { got <- next(cctx, w) }()
	cancel()
	if err := receive(t, got, e.h.Timeout, "Next after its ctx was canceled"); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after its ctx was canceled: want context.Canceled, got %v", err)
	}

	go func() { got <- next(ctx, w) }()
	if err := w.Stop(); err != nil {
		t.Errorf("Stop: want nil error, got %v", err)
	}
	if err := receive(t, got, e.h.Timeout, "Next blocked across Stop"); !errors.Is(err, context.Canceled) {
		t.Errorf("Next blocked across Stop: want context.Canceled, got %v", err)
	}
	err = bounded(t, e.h.Timeout, func() error { return next(ctx, w) })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Next after Stop: want context.Canceled, got %v", err)
	}
	if err := bounded(t, e.h.Timeout, w.Stop); err != nil {
		t.Errorf("second Stop: want nil error (idempotent), got %v", err)
	}

	// Ending the ctx given to Watch ends the watch as Stop does.
	wctx, wcancel := context.WithCancel(ctx)
	w2, err := e.reg.Watch(wctx, e.service)
	if err != nil {
		t.Fatalf("Watch(%q): want nil error, got %v", e.service, err)
	}
	defer w2.Stop()
	if _, err := w2.Next(ctx); err != nil {
		t.Fatalf("first Next: want the current list, got error %v", err)
	}
	wcancel()
	err = bounded(t, e.h.Timeout, func() error { return next(ctx, w2) })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Next after the Watch ctx was canceled: want context.Canceled, got %v", err)
	}
}

func receive(t *testing.T, ch <-chan error, d time.Duration, what string) error {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-ch:
		return err
	case <-timer.C:
		t.Fatalf("%s: want it to return within %v, got no return", what, d)
		return nil
	}
}

func testRegisterRejectsInvalid(t *testing.T, e *env) {
	valid := e.inst(0)
	bad := []struct {
		name string
		edit func(*registry.Instance)
	}{
		{"empty service", func(i *registry.Instance) { i.Service = "" }},
		{"empty address", func(i *registry.Instance) { i.Address = "" }},
		{"port 0", func(i *registry.Instance) { i.Port = 0 }},
		{"port -1", func(i *registry.Instance) { i.Port = -1 }},
		{"port 70000", func(i *registry.Instance) { i.Port = 70000 }},
	}
	for _, c := range bad {
		i := valid
		c.edit(&i)
		err := noPanic(t, "Register("+c.name+")", func() error { return e.reg.Register(e.ctx(t), i) })
		if err == nil {
			t.Errorf("Register with %s (%+v): want an error, got nil", c.name, i)
			_ = e.reg.Deregister(e.ctx(t), i)
		}
		_ = noPanic(t, "Deregister("+c.name+")", func() error { return e.reg.Deregister(e.ctx(t), i) })
	}
	err := noPanic(t, "Watch(\"\")", func() error {
		w, err := e.reg.Watch(e.ctx(t), "")
		if err == nil {
			_ = w.Stop()
		}
		return err
	})
	if err == nil {
		t.Errorf("Watch with an empty service name: want an error, got nil")
	}
	// A valid instance registered after the invalid ones marks the point by
	// which they would be visible had any been accepted.
	sentinel := e.inst(1)
	e.register(t, sentinel)
	list := e.consumer.await(t, "a list holding "+show(sentinel), has(sentinel))
	if len(list) != 1 {
		t.Errorf("consumer list after invalid registrations: want only %s, got %s", show(sentinel), showList(list))
	}
}

// noPanic calls f and turns a panic into a test error.
func noPanic(t *testing.T, what string, f func() error) (err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Errorf("%s: want an error or nil, got panic: %v", what, p)
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}

func testCanceledContext(t *testing.T, e *env) {
	a := e.inst(0)
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	if err := e.reg.Register(canceled, a); !errors.Is(err, context.Canceled) {
		t.Errorf("Register with a canceled ctx: want an error wrapping context.Canceled, got %v", err)
	}
	if err := e.reg.Deregister(canceled, a); !errors.Is(err, context.Canceled) {
		t.Errorf("Deregister with a canceled ctx: want an error wrapping context.Canceled, got %v", err)
	}
	// Watch may refuse at once or return a watch that has already ended.
	w, err := e.reg.Watch(canceled, e.service)
	if err == nil {
		err = bounded(t, e.h.Timeout, func() error {
			defer w.Stop()
			ctx := e.ctx(t)
			for {
				if _, err := w.Next(ctx); err != nil {
					return err
				}
			}
		})
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Watch with a canceled ctx: want an error wrapping context.Canceled from Watch or Next, got %v", err)
	}
	sentinel := e.inst(1)
	e.register(t, sentinel)
	list := e.consumer.await(t, "a list holding "+show(sentinel), has(sentinel))
	if registry.Contains(list, a) {
		t.Errorf("consumer list: want no %s (its Register had a canceled ctx), got %s", show(a), showList(list))
	}
}

func testGoneWatchDeadline(t *testing.T, e *env) {
	a := e.inst(0)
	e.register(t, a)
	e.consumer.await(t, "a list holding "+show(a), has(a))
	g, err := registry.WatchGone(e.ctx(t), e.reg, a, registry.GoneOptions{})
	if err != nil {
		t.Fatalf("WatchGone(%s) on %s: want a watch, got %v", show(a), e.reg, err)
	}
	defer g.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err = bounded(t, e.h.Timeout, func() error { return g.Wait(ctx) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GoneWatch.Wait(%s) while it is still registered, ctx ending: want an error wrapping context.DeadlineExceeded, got %v", show(a), err)
	}
}

package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// An instance registered by one client (A, the app) is disabled and enabled
// again by another (B, `lameduck offline` or prestop in another process),
// through the server's admin API. An independent consumer stops seeing it
// and then sees it again; a watch on a third connection times the pushes.
func TestNacosRemoteDisable(t *testing.T) {
	needNacos(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b, c := newNacos(t), newNacos(t), newNacos(t)
	see := nacosConsumer(t)
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	in.Tags = nil
	in.Weight = 2.5
	if err := a.Register(ctx, in); err != nil {
		t.Fatalf("A registers %s: want nil, got %v", in.Endpoint(), err)
	}
	w, err := c.Watch(ctx, in.Service)
	if err != nil {
		t.Fatalf("watch %s: want a watcher, got %v", in.Service, err)
	}
	defer func() { _ = w.Stop() }()
	visible := func(want bool) func() bool {
		return func() bool {
			list, err := see(ctx, in.Service)
			return err == nil && registry.Contains(list, in) == want
		}
	}
	waitFor(t, ctx, "the consumer to see the instance A registered", visible(true))
	waitWatch(t, ctx, w, in, "the watch to show the instance", true)

	// B cannot remove A's instance; its Deregister disables it instead.
	if err := b.Deregister(ctx, in); err != nil {
		t.Fatalf("B deregisters A's instance: want nil, got %v", err)
	}
	waitWatch(t, ctx, w, in, "the watch to drop the instance B deregistered", false)
	if err := b.Enable(ctx, in); err != nil {
		t.Fatalf("B enables A's instance again: %v", err)
	}
	waitWatch(t, ctx, w, in, "the watch to show the instance again", true)

	missing := in
	missing.Port = freePort(t)
	if err := b.Disable(ctx, missing); !errors.Is(err, nacos.ErrInstanceNotFound) {
		t.Errorf("B disables %s, which nobody registered: want an error matching ErrInstanceNotFound, got %v", missing.Endpoint(), err)
	}

	start := time.Now()
	if err := b.Disable(ctx, in); err != nil {
		t.Fatalf("B disables A's instance: want nil, got %v", err)
	}
	took := time.Since(start)
	waitWatch(t, ctx, w, in, "the watch to drop the disabled instance", false)
	pushed := time.Since(start)
	waitFor(t, ctx, "the consumer to stop seeing the disabled instance", visible(false))
	t.Logf("disable: call %v, watch saw it %v after the call began, consumer %v", took.Round(time.Millisecond), pushed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := b.Enable(ctx, in); err != nil {
		t.Fatalf("B enables A's instance: want nil, got %v", err)
	}
	got := waitWatch(t, ctx, w, in, "the watch to show the enabled instance again", true)
	pushed = time.Since(start)
	waitFor(t, ctx, "the consumer to see the enabled instance again", visible(true))
	t.Logf("enable: watch saw it %v after the call began, consumer %v", pushed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if got.Weight != in.Weight {
		t.Errorf("weight after disable and enable: want %g (as A registered it), got %g", in.Weight, got.Weight)
	}
}

// waitWatch reads w until in's presence is want, and returns the instance as
// the watch last showed it (zero when absent). It fails the test when ctx
// ends first.
func waitWatch(t *testing.T, ctx context.Context, w registry.Watcher, in registry.Instance, what string, want bool) registry.Instance {
	t.Helper()
	for {
		list, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("want %s, got watch error %v", what, err)
		}
		var found registry.Instance
		for _, x := range list {
			if x.Same(in) {
				found = x
			}
		}
		if (found.Port != 0) == want {
			return found
		}
	}
}

// Nacos keeps a disable made by another client after the instance is gone;
// an instance that registers again on the same endpoint must not come back
// invisible.
func TestNacosReRegisterClearsStaleDisable(t *testing.T) {
	needNacos(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	see := nacosConsumer(t)
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 7)
	visible := func(want bool) func() bool {
		return func() bool {
			list, err := see(ctx, in.Service)
			return err == nil && registry.Contains(list, in) == want
		}
	}
	a := newNacos(t)
	if err := a.Register(ctx, in); err != nil {
		t.Fatalf("A register: %v", err)
	}
	waitFor(t, ctx, "the consumer to see the instance", visible(true))
	if err := newNacos(t).Disable(ctx, in); err != nil {
		t.Fatalf("B disable: %v", err)
	}
	waitFor(t, ctx, "the consumer to stop seeing the disabled instance", visible(false))
	if err := a.Deregister(ctx, in); err != nil {
		t.Fatalf("A deregister: %v", err)
	}
	// The process restarts: a new client registers the same endpoint.
	if err := newNacos(t).Register(ctx, in); err != nil {
		t.Fatalf("re-register: %v", err)
	}
	waitFor(t, ctx, "the consumer to see the re-registered instance", visible(true))
}

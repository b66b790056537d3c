package integration

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lameduck/lameduck/adapters/consul"
	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// exercise registers, watches, deregisters and closes r.
func exercise(t *testing.T, r registry.Registry, closeFn func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	if err := r.Register(ctx, in); err != nil {
		t.Fatalf("register: %v", err)
	}
	w, err := r.Watch(ctx, in.Service)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if _, err := w.Next(ctx); err != nil {
		t.Fatalf("next: %v", err)
	}
	if err := r.Deregister(ctx, in); err != nil {
		t.Fatalf("deregister: %v", err)
	}
	_ = w.Stop()
	if err := closeFn(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// No goroutine outlives a closed backend.
func TestNoGoroutineOutlivesClose(t *testing.T) {
	t.Run("consul", func(t *testing.T) {
		needConsul(t)
		before := goleak.IgnoreCurrent()
		r, err := consul.New(consul.WithAddress(consulAddr()))
		if err != nil {
			t.Fatal(err)
		}
		exercise(t, r, r.Close)
		goleak.VerifyNone(t, before)
	})
	t.Run("nacos", func(t *testing.T) {
		needNacos(t)
		before := goleak.IgnoreCurrent()
		r, err := nacos.New(nacos.WithAddress(nacosAddr()), nacos.WithCredentials(nacosUser(), nacosPass()))
		if err != nil {
			t.Fatal(err)
		}
		exercise(t, r, r.Close)
		goleak.VerifyNone(t, before)
	})
}

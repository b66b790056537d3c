package integration

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// TestConfirmationLatency measures, on each real registry, the time from
// Deregister returning to a watch (opened before, as consumers' are)
// delivering a list without the instance: the registry's confirmation
// latency P. Run it alone to read the figures:
//
//	go test ./integration -run TestConfirmationLatency -v -count=1
//
// LAMEDUCK_LATENCY_SAMPLES sets the number of deregistrations (default 50).
func TestConfirmationLatency(t *testing.T) {
	n := 50
	if s := os.Getenv("LAMEDUCK_LATENCY_SAMPLES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("LAMEDUCK_LATENCY_SAMPLES=%q: want a positive number", s)
		}
		n = v
	}
	backends := []struct {
		name string
		need func(*testing.T)
		open func(*testing.T) registry.Registry
	}{
		{"consul", needConsul, func(t *testing.T) registry.Registry { return newConsul(t) }},
		{"nacos", needNacos, func(t *testing.T) registry.Registry { return newNacos(t) }},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			b.need(t)
			r := b.open(t)
			service := registrytest.UniqueService(t)
			inst := registrytest.DefaultInstance(service, 1)
			lat := make([]time.Duration, 0, n)
			for k := 0; k < n; k++ {
				lat = append(lat, confirmOnce(t, r, inst))
			}
			slices.Sort(lat)
			t.Logf("%s confirmation latency over %d deregistrations: median %v, p99 %v, min %v, max %v",
				b.name, n, lat[n/2].Round(time.Microsecond), lat[(n*99+99)/100-1].Round(time.Microsecond),
				lat[0].Round(time.Microsecond), lat[n-1].Round(time.Microsecond))
		})
	}
}

// confirmOnce registers inst, waits until a watch shows it, then measures
// Deregister-to-confirmation on that same watch.
func confirmOnce(t *testing.T, r registry.Registry, inst registry.Instance) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Register(ctx, inst); err != nil {
		t.Fatalf("register: %v", err)
	}
	w, err := r.Watch(ctx, inst.Service)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer w.Stop()
	for {
		list, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %s to be listed: %v", inst.Endpoint(), err)
		}
		if registry.Contains(list, inst) {
			break
		}
	}

	if err := r.Deregister(ctx, inst); err != nil {
		t.Fatalf("deregister: %v", err)
	}
	deregistered := time.Now()
	for {
		list, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %s to be gone (%v after Deregister): %v", inst.Endpoint(), time.Since(deregistered), err)
		}
		if !registry.Contains(list, inst) {
			return time.Since(deregistered)
		}
	}
}

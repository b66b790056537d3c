package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/cli/demo"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// An instance registered in Consul and Nacos at once (a migration) is taken
// offline from both, each confirmed by its own watch.
func TestOfflineFromConsulAndNacosTogether(t *testing.T) {
	needConsul(t)
	needNacos(t)
	cr, nr := newConsul(t), newNacos(t)
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	both := registry.Multi{cr, nr}
	if err := both.Register(ctx, in); err != nil {
		t.Fatalf("register in both: %v", err)
	}
	consumers := map[string]func(context.Context, string) ([]registry.Instance, error){
		"consul": consulConsumer(t), "nacos": nacosConsumer(t),
	}
	for name, see := range consumers {
		waitFor(t, ctx, name+" consumer sees the instance", func() bool {
			list, err := see(ctx, in.Service)
			return err == nil && registry.Contains(list, in)
		})
	}

	tr := &drain.Tracker{}
	var stopped bool
	c, err := drain.New(tr,
		drain.WithRegistries(cr, nr),
		drain.WithInstance(in),
		drain.WithBudget(30*time.Second),
		drain.WithQuietWindow(50*time.Millisecond),
		drain.WithStopHook("server", func(context.Context) error { stopped = true; return nil }),
	)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Offline(ctx)
	if err != nil {
		t.Fatalf("offline: want nil error, got %v", err)
	}
	if !stopped {
		t.Fatalf("want the stop hook run, it was not")
	}
	if len(rep.Registries) != 2 {
		t.Fatalf("want 2 registries in the report, got %+v", rep.Registries)
	}
	for _, r := range rep.Registries {
		if r.State != "confirmed" || r.ConfirmLatency <= 0 {
			t.Fatalf("want %s confirmed with a latency, got state %q latency %v", r.Name, r.State, r.ConfirmLatency)
		}
		t.Logf("%s confirmed after %v", r.Name, r.ConfirmLatency.Round(time.Millisecond))
	}
	for name, see := range consumers {
		list, err := see(ctx, in.Service)
		if err != nil || registry.Contains(list, in) {
			t.Fatalf("after offline, %s consumer: want the instance gone, got %v (err %v)", name, list, err)
		}
	}
}

// Disabling instead of deregistering also takes the instance out of both.
func TestDisableInConsulAndNacosTogether(t *testing.T) {
	needConsul(t)
	needNacos(t)
	cr, nr := newConsul(t), newNacos(t)
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	both := registry.Multi{cr, nr}
	if err := both.Register(ctx, in); err != nil {
		t.Fatalf("register in both: %v", err)
	}
	c, err := drain.New(&drain.Tracker{},
		drain.WithRegistries(cr, nr), drain.WithInstance(in), drain.WithDisable(),
		drain.WithBudget(30*time.Second), drain.WithQuietWindow(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Offline(ctx); err != nil {
		t.Fatalf("offline by disabling: want nil error, got %v", err)
	}
	if err := both.Enable(ctx, in); err != nil {
		t.Fatalf("enable again: %v", err)
	}
	for name, see := range map[string]func(context.Context, string) ([]registry.Instance, error){
		"consul": consulConsumer(t), "nacos": nacosConsumer(t),
	} {
		waitFor(t, ctx, name+" consumer sees the re-enabled instance", func() bool {
			list, err := see(ctx, in.Service)
			return err == nil && registry.Contains(list, in)
		})
	}
	if err := both.Deregister(ctx, in); err != nil {
		t.Fatalf("deregister: %v", err)
	}
}

// The demo runs on each real registry, and on both at once, and lameduck
// loses no request on any of them.
func TestDemoOnRealRegistries(t *testing.T) {
	needConsul(t)
	needNacos(t)
	cases := map[string]func(t *testing.T) registry.Registry{
		"consul": func(t *testing.T) registry.Registry { return newConsul(t) },
		"nacos":  func(t *testing.T) registry.Registry { return newNacos(t) },
		"both":   func(t *testing.T) registry.Registry { return registry.Multi{newConsul(t), newNacos(t)} },
	}
	for name, open := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var log strings.Builder
			res, err := demo.Run(ctx, demo.Config{
				Registry: open(t),
				Log:      func(f string, a ...any) { log.WriteString(strings.TrimSpace(sprintf(f, a...)) + "\n") },
			})
			if err != nil {
				t.Fatalf("demo: %v\n%s", err, log.String())
			}
			var out strings.Builder
			demo.PrintTable(&out, res)
			t.Logf("demo on %s:\n%s", name, out.String())
			failed, ok := res.Failed("lameduck")
			if !ok || failed != 0 {
				t.Fatalf("want 0 failed for lameduck, got %d:\n%s\n%s", failed, out.String(), log.String())
			}
			for _, row := range res.Rows {
				if row.Way == "lameduck" && row.Sent == 0 {
					t.Fatalf("want the lameduck instance to have served requests, got none")
				}
			}
		})
	}
}

package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/adapters/consul"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// A stopped agent yields a clear error, naming it, within the caller's
// deadline.
func TestConsulStoppedServerErrorsWithinDeadline(t *testing.T) {
	needConsul(t)
	p := startPrivateConsul(t)
	r := newConsul(t, consul.WithAddress(p.addr()))
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	p.stop()

	for name, call := range map[string]func(ctx context.Context) error{
		"register":   func(ctx context.Context) error { return r.Register(ctx, in) },
		"deregister": func(ctx context.Context) error { return r.Deregister(ctx, in) },
		"watch": func(ctx context.Context) error {
			w, err := r.Watch(ctx, in.Service)
			if err != nil {
				return err
			}
			defer w.Stop()
			_, err = w.Next(ctx)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			const budget = 2 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			start := time.Now()
			err := call(ctx)
			took := time.Since(start)
			if err == nil {
				t.Fatalf("want an error from a stopped agent, got nil")
			}
			if took > budget+time.Second {
				t.Fatalf("want the call to end within the %v deadline, it took %v", budget, took)
			}
			if name != "watch" && !strings.Contains(err.Error(), p.addr()) {
				t.Fatalf("want the error to name the agent %s, got %q", p.addr(), err)
			}
			var re *registry.Error
			if name != "watch" && !errors.As(err, &re) {
				t.Fatalf("want a *registry.Error, got %T: %v", err, err)
			}
		})
	}
}

// A dev agent that restarts forgets every registration; the backend's
// keeper puts ours back.
func TestConsulAgentRestartIsSurvived(t *testing.T) {
	needConsul(t)
	p := startPrivateConsul(t)
	r := newConsul(t, consul.WithAddress(p.addr()), consul.WithCheck(consul.Check{TTL: 3 * time.Second}), consul.WithResync(300*time.Millisecond))
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.Register(ctx, in); err != nil {
		t.Fatalf("register: %v", err)
	}
	c, err := api.NewClient(&api.Config{Address: p.addr()})
	if err != nil {
		t.Fatal(err)
	}
	visible := func() (int, error) {
		entries, _, err := c.Health().Service(in.Service, "", true, (&api.QueryOptions{}).WithContext(ctx))
		return len(entries), err
	}
	waitFor(t, ctx, "instance visible before restart", func() bool { n, err := visible(); return err == nil && n == 1 })
	p.restart()
	start := time.Now()
	waitFor(t, ctx, "instance restored after restart", func() bool { n, err := visible(); return err == nil && n == 1 })
	t.Logf("registration restored %v after the agent came back", time.Since(start).Round(time.Millisecond))
}

// waitFor polls cond (a real server's state, which has no event to wait on)
// until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("want %s, still not after the test's deadline", what)
		case <-tick.C:
		}
	}
}

// A service deregistered on purpose by another process (`lameduck offline`)
// stays gone: the keeper restores registrations only for an agent that lost
// its state.
func TestConsulKeeperDoesNotFightADeregistration(t *testing.T) {
	needConsul(t)
	owner := newConsul(t, consul.WithCheck(consul.Check{TTL: 3 * time.Second}), consul.WithResync(200*time.Millisecond))
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	in.ID = in.Service + "-1"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := owner.Register(ctx, in); err != nil {
		t.Fatalf("register: %v", err)
	}
	see := consulConsumer(t)
	waitFor(t, ctx, "the instance visible", func() bool {
		list, err := see(ctx, in.Service)
		return err == nil && registry.Contains(list, in)
	})
	if err := newConsul(t).Deregister(ctx, in); err != nil {
		t.Fatalf("deregister from another client: %v", err)
	}
	// Five resync intervals: a keeper that restored the service would have
	// done so by then. Waiting on a real server that has nothing to report.
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			return
		case <-tick.C:
			list, err := see(ctx, in.Service)
			if err == nil && registry.Contains(list, in) {
				t.Fatalf("want the deregistered instance to stay gone, the keeper put it back")
			}
		}
	}
}

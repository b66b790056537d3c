package integration

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/adapters/consul"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

func newConsul(t *testing.T, opts ...consul.Option) *consul.Registry {
	t.Helper()
	r, err := consul.New(append([]consul.Option{consul.WithAddress(consulAddr())}, opts...)...)
	if err != nil {
		t.Fatalf("consul.New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// consulConsumer is what a consumer using Consul's own SDK sees: the
// passing health list, read independently of the backend under test.
func consulConsumer(t *testing.T) func(ctx context.Context, service string) ([]registry.Instance, error) {
	c, err := api.NewClient(&api.Config{Address: consulAddr()})
	if err != nil {
		t.Fatalf("consul api client: %v", err)
	}
	return func(ctx context.Context, service string) ([]registry.Instance, error) {
		entries, _, err := c.Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, err
		}
		out := make([]registry.Instance, 0, len(entries))
		for _, e := range entries {
			out = append(out, registry.Instance{
				Service: service, ID: e.Service.ID, Address: e.Service.Address, Port: e.Service.Port,
				Tags: e.Service.Tags, Metadata: e.Service.Meta,
			})
		}
		return out, nil
	}
}

func TestConsulContract(t *testing.T) {
	needConsul(t)
	registrytest.Run(t, registrytest.Harness{
		New:      func(t *testing.T) registry.Registry { return newConsul(t) },
		Consumer: consulConsumer(t),
		Timeout:  20 * time.Second,
	})
}

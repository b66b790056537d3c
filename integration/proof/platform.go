package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
)

// A platform registers and deregisters instances of apps that do not do it
// themselves (strategies naive, sleep and prestop), as a deployment system
// does. It is safe for concurrent use.
type platform interface {
	register(ctx context.Context, in registry.Instance) error
	deregister(ctx context.Context, in registry.Instance) error
	close()
}

// consulPlatform registers through the local agent's HTTP API, without a
// health check: the instance passes until it is deregistered, the way
// integration/testdata/plainapp registers itself.
type consulPlatform struct{ c *api.Client }

func newConsulPlatform(addr, token string) (*consulPlatform, error) {
	c, err := api.NewClient(&api.Config{Address: addr, Token: token})
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", addr, err)
	}
	return &consulPlatform{c: c}, nil
}

func (p *consulPlatform) register(ctx context.Context, in registry.Instance) error {
	return p.c.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port,
	}, api.ServiceRegisterOpts{}.WithContext(ctx))
}

func (p *consulPlatform) deregister(ctx context.Context, in registry.Instance) error {
	return p.c.Agent().ServiceDeregisterOpts(in.ID, (&api.QueryOptions{}).WithContext(ctx))
}

func (p *consulPlatform) close() {}

// nacosPlatform registers ephemeral instances over one SDK connection, the
// lameduck Nacos backend's (which publishes the connection's whole set of
// instances on every change, as Nacos 2+ requires). Given a cluster's
// nodes, the SDK connects to one of them and fails over to another.
type nacosPlatform struct{ r *nacos.Registry }

func newNacosPlatform(nodes []string, user, password, dir string) (*nacosPlatform, error) {
	r, err := nacos.New(nacos.WithAddresses(nodes...), nacos.WithCredentials(user, password),
		nacos.WithDataDir(filepath.Join(dir, "nacos-platform")))
	if err != nil {
		return nil, err
	}
	return &nacosPlatform{r: r}, nil
}

func (p *nacosPlatform) register(ctx context.Context, in registry.Instance) error {
	return p.r.Register(ctx, in)
}

func (p *nacosPlatform) deregister(ctx context.Context, in registry.Instance) error {
	return p.r.Deregister(ctx, in)
}

func (p *nacosPlatform) close() { _ = p.r.Close() }

package consul

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/registry"
)

// Consumers of a Consul datacenter read from many agents, and each client
// agent answers from a view fed by the one server it is connected to. A
// follower applies a deregistration some milliseconds after the leader, and
// seconds later, or never, when the leader dies right after taking it. So
// the registry's confirmation, taken on the app's own agent, can come before
// consumers elsewhere stop seeing the instance.
//
// With WithConfirmThrough or WithConfirmThroughServers the backend is a
// registry.Viewer: the confirmation also waits for every server's own copy
// of the health list (blocking queries with ?stale, which a server answers
// from its own state store), and a deregistration that has not reached a
// server long after it was made is sent again through a live server as a
// catalog deregistration.

// WithConfirmThrough confirms through each Consul server (or agent) at the
// given host:port addresses too, not only through the agent the instance is
// registered with.
func WithConfirmThrough(addrs ...string) Option {
	return func(o *options) { o.confirm = append(o.confirm, addrs...) }
}

// WithConfirmThroughServers confirms through every server in the
// datacenter's raft peer set (/v1/status/peers), asked anew at each
// confirmation. Servers are reached at their peer address with the agent's
// HTTP port, so it suits servers that serve HTTP on the same port as the
// agent; list them with WithConfirmThrough otherwise.
func WithConfirmThroughServers() Option { return func(o *options) { o.confirmServers = true } }

// WithConfirmThroughAgents confirms through every live agent of the LAN
// gossip pool (/v1/agent/members), servers and clients, asked anew at each
// confirmation, at the agent's HTTP port. A client agent relays what its
// server streams to it, and under load that relay lagged the servers by up
// to 37 ms (BENCHMARKS.md); consumers that read their local agent are
// covered exactly only this way. It costs one blocking query per agent
// during the confirmation, so it suits clusters of up to some hundreds of
// agents.
func WithConfirmThroughAgents() Option { return func(o *options) { o.confirmAgents = true } }

// memberAlive is serf's StatusAlive, which api.AgentMember.Status
// documents but the api package does not name.
const memberAlive = 1

var _ registry.OwnViewer = (*Registry)(nil)

// ViewsIncludeOwn reports whether the agent the backend talks to is among
// the views (with confirm=agents it is).
func (r *Registry) ViewsIncludeOwn(views []registry.View) bool {
	own := "consul://" + r.agentAddr()
	for _, v := range views {
		if v.String() == own {
			return true
		}
	}
	return false
}

// Views returns the servers to confirm through: those given with
// WithConfirmThrough, then the raft peers (WithConfirmThroughServers), then
// the live agents (WithConfirmThroughAgents), each once. It is empty when
// none is set.
func (r *Registry) Views(ctx context.Context) ([]registry.View, error) {
	addrs := append([]string(nil), r.o.confirm...)
	if r.o.confirmServers || r.o.confirmAgents {
		found, err := r.discover(ctx)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, found...)
	}
	var out []registry.View
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			continue
		}
		seen[a] = true
		v, err := r.view(a)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// discover asks the agent for the raft peers and the live LAN members, as
// set, and returns their hosts at the agent's own HTTP port.
func (r *Registry) discover(ctx context.Context) ([]string, error) {
	_, port, err := net.SplitHostPort(r.agentAddr())
	if err != nil {
		return nil, fmt.Errorf("consul: agent address %q has no port to reach the other agents on; list them with ?confirm=host:port,...", r.agentAddr())
	}
	var hosts []string
	if r.o.confirmServers {
		peers, err := r.c.StatusPeers((&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("consul: ask %s for the servers to confirm through: %w; list them with ?confirm=host:port,... instead", r.name, err)
		}
		for _, p := range peers {
			host, _, err := net.SplitHostPort(p)
			if err != nil {
				return nil, fmt.Errorf("consul: raft peer %q is not host:port", p)
			}
			hosts = append(hosts, host)
		}
	}
	if r.o.confirmAgents {
		members, err := r.c.LANMembers((&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("consul: ask %s for the agents to confirm through: %w; list them with ?confirm=host:port,... instead", r.name, err)
		}
		for _, m := range members {
			if m.Status == memberAlive && m.Addr != "" {
				hosts = append(hosts, m.Addr)
			}
		}
	}
	out := make([]string, len(hosts))
	for k, h := range hosts {
		out[k] = net.JoinHostPort(h, port)
	}
	return out, nil
}

// agentAddr is the agent's host:port, as the registry's name shows it.
func (r *Registry) agentAddr() string {
	return r.o.apiConfig(r.o.address).Address
}

// view returns the cached view of the server at addr, making it on first use.
func (r *Registry) view(addr string) (*view, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v := r.views[addr]; v != nil {
		return v, nil
	}
	v := &view{r: r, addr: addr, name: "consul://" + addr, closeIdle: func() {}}
	if r.o.viewClient != nil {
		v.c = r.o.viewClient(addr)
	} else {
		c, closeIdle, err := newSDK(r.o.apiConfig(addr))
		if err != nil {
			return nil, fmt.Errorf("consul: configure client for server %s: %w", addr, err)
		}
		v.c, v.closeIdle = c, closeIdle
	}
	r.views[addr] = v
	return v, nil
}

// view is one server's own copy of the health lists.
type view struct {
	r         *Registry
	addr      string
	name      string
	c         client
	closeIdle func()
}

var (
	_ registry.View        = (*view)(nil)
	_ registry.ViewRemover = (*view)(nil)
)

func (v *view) String() string { return v.name }

// Watch follows the passing health list of service as this server holds it
// (?stale). A query that fails is returned, not retried.
func (v *view) Watch(ctx context.Context, service string) (registry.Watcher, error) {
	if service == "" {
		return nil, v.r.wrap("watch", errors.New("empty service name"))
	}
	wctx, cancel := context.WithCancel(ctx)
	return &watcher{r: v.r, c: v.c, service: service, ctx: wctx, cancel: cancel, stale: true, failFast: true}, nil
}

// RemoveAgain deregisters i from the catalog through this server, on every
// node that lists it. It cannot put an instance in maintenance again: that
// mode lives in the agent alone.
func (v *view) RemoveAgain(ctx context.Context, i registry.Instance, disable bool) error {
	if disable {
		return fmt.Errorf("consul: maintenance mode is held by the instance's agent and cannot be set through server %s: %w", v.addr, registry.ErrNotSupported)
	}
	id := ServiceID(i)
	entries, _, err := v.c.HealthService(i.Service, "", false, (&api.QueryOptions{AllowStale: true}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul: list %s on server %s: %w", i.Service, v.addr, err)
	}
	var errs []error
	for _, e := range entries {
		if e.Service == nil || e.Node == nil || e.Service.ID != id {
			continue
		}
		d := &api.CatalogDeregistration{Node: e.Node.Node, ServiceID: id, Datacenter: v.r.o.datacenter}
		if err := v.c.CatalogDeregister(d, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			errs = append(errs, fmt.Errorf("consul: deregister %s of node %s through server %s: %w", id, e.Node.Node, v.addr, err))
		}
	}
	return errors.Join(errs...)
}

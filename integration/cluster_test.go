package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/adapters/consul"
	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// The clusters that integration/scripts/start-consul-cluster.sh and
// start-nacos-cluster.sh start (make test starts both).
func consulServers() []string {
	return strings.Split(envOr("CONSUL_CLUSTER_SERVERS", "127.0.0.11:8500,127.0.0.12:8500,127.0.0.13:8500"), ",")
}

func consulClients() []string {
	return strings.Split(envOr("CONSUL_CLUSTER_CLIENTS", "127.0.0.21:8500,127.0.0.22:8500"), ",")
}

func nacosNodes() []string {
	return strings.Split(envOr("NACOS_CLUSTER_ADDRS", "127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878"), ",")
}

func needConsulCluster(t *testing.T) {
	t.Helper()
	for _, a := range append(consulServers(), consulClients()...) {
		needServer(t, "consul-cluster", "http://"+a+"/v1/status/leader")
	}
}

func needNacosCluster(t *testing.T) {
	t.Helper()
	for _, a := range nacosNodes() {
		needServer(t, "nacos-cluster", "http://"+a+"/nacos/v3/admin/core/state/readiness")
	}
}

// clusterRounds is how many deregistrations each way of confirming gets in
// the gap measurement: LAMEDUCK_CLUSTER_ROUNDS, default 8 (CI); the
// figures in BENCHMARKS.md use 50 for Consul and 30 for Nacos.
func clusterRounds(t *testing.T) int {
	if s := os.Getenv("LAMEDUCK_CLUSTER_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("LAMEDUCK_CLUSTER_ROUNDS=%q: want a positive number", s)
		}
		return n
	}
	return 8
}

// observer is a consumer on one agent or node: it records when each
// instance it was told to track left its list.
type observer struct {
	name string // "c2/stale", "node2"
	mode string // the consistency mode, for the table

	mu      sync.Mutex
	key     string
	seen    bool      // the tracked instance was listed
	dropped time.Time // when it left the list after being seen
	changed chan struct{}
}

func newObserver(name, mode string) *observer {
	return &observer{name: name, mode: mode, changed: make(chan struct{}, 1)}
}

func (o *observer) track(key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.key, o.seen, o.dropped = key, false, time.Time{}
}

func (o *observer) see(keys []string) {
	now := time.Now()
	o.mu.Lock()
	listed := slices.Contains(keys, o.key)
	switch {
	case listed:
		o.seen = true
	case o.seen && o.dropped.IsZero():
		o.dropped = now
	}
	o.mu.Unlock()
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

func (o *observer) state() (seen bool, dropped time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen, o.dropped
}

// await waits until every observer satisfies cond, or fails the test.
func awaitObservers(t *testing.T, obs []*observer, what string, d time.Duration, cond func(seen bool, dropped time.Time) bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for _, o := range obs {
		for {
			if cond(o.state()) {
				break
			}
			select {
			case <-o.changed:
			case <-deadline.C:
				t.Fatalf("%s: want %s within %v", o.name, what, d)
			}
		}
	}
}

// consulObserver follows service's passing list on one agent in one
// consistency mode, with blocking queries of its own, as consumers that use
// Consul's SDK or HTTP API do.
func consulObserver(t *testing.T, ctx context.Context, addr, name, mode, service string) *observer {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatalf("consul client for %s: %v", addr, err)
	}
	o := newObserver(name+"/"+mode, mode)
	go func() {
		var idx uint64
		for ctx.Err() == nil {
			q := &api.QueryOptions{WaitIndex: idx, WaitTime: time.Minute, AllowStale: mode == "stale", RequireConsistent: mode == "consistent"}
			entries, meta, err := c.Health().Service(service, "", true, q.WithContext(ctx))
			if err != nil {
				time.Sleep(50 * time.Millisecond) // a bounded loop: ctx ends it
				continue
			}
			if meta.LastIndex < idx {
				idx = 0
			} else {
				idx = max(meta.LastIndex, 1)
			}
			keys := make([]string, 0, len(entries))
			for _, e := range entries {
				keys = append(keys, e.Service.ID)
			}
			o.see(keys)
		}
	}()
	return o
}

// watchObserver follows a registry's own watch (a Nacos SDK subscriber).
func watchObserver(t *testing.T, ctx context.Context, r registry.Registry, name, mode, service string) *observer {
	t.Helper()
	w, err := r.Watch(ctx, service)
	if err != nil {
		t.Fatalf("watch %s on %s: %v", service, r, err)
	}
	o := newObserver(name, mode)
	go func() {
		defer w.Stop()
		for {
			list, err := w.Next(ctx)
			if err != nil {
				return
			}
			keys := make([]string, 0, len(list))
			for _, i := range list {
				keys = append(keys, i.Key())
			}
			o.see(keys)
		}
	}()
	return o
}

// gapSample is one deregistration: how long after lameduck's confirmation
// each observer dropped the instance (negative: before it).
type gapSample struct {
	way     string // "before" (the app's own agent or node), "servers", "agents" or "after" (every node)
	gaps    map[string]time.Duration
	confirm time.Duration // from the deregistration's return (the leader's raft commit; on Nacos, node A's write) to the confirmation
}

// measureGaps registers and deregisters an instance rounds times for each
// way of confirming, interleaved so that noise hits both alike, and returns
// every round's gaps.
func measureGaps(t *testing.T, rounds int, owner registry.Registry, ways map[string]registry.Registry, obs []*observer, service string, settle time.Duration) []gapSample {
	t.Helper()
	order := slices.Sorted(func(yield func(string) bool) {
		for w := range ways {
			if !yield(w) {
				return
			}
		}
	})
	var out []gapSample
	for n := range rounds {
		for _, way := range order {
			inst := registrytest.DefaultInstance(service, 1)
			inst.ID = fmt.Sprintf("%s-%s-%d", service, way, n)
			inst.Port = 20000 + n
			if strings.HasPrefix(owner.String(), "nacos") {
				inst.ID = "" // Nacos keys instances by endpoint
			}
			key := inst.Key()
			for _, o := range obs {
				o.track(key)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			if err := owner.Register(ctx, inst); err != nil {
				cancel()
				t.Fatalf("register %s: %v", key, err)
			}
			awaitObservers(t, obs, "the instance listed", 30*time.Second, func(seen bool, _ time.Time) bool { return seen })
			g, err := registry.WatchGone(ctx, ways[way], inst, registry.GoneOptions{})
			if err != nil {
				cancel()
				t.Fatalf("WatchGone through %s: %v", ways[way], err)
			}
			if err := owner.Deregister(ctx, inst); err != nil {
				cancel()
				t.Fatalf("deregister %s: %v", key, err)
			}
			deregistered := time.Now()
			err = g.Wait(ctx)
			confirmed := time.Now()
			g.Stop()
			if err != nil {
				cancel()
				t.Fatalf("%s confirmation through %s: %v", way, ways[way], err)
			}
			awaitObservers(t, obs, "the instance dropped", 30*time.Second, func(_ bool, d time.Time) bool { return !d.IsZero() })
			cancel()
			s := gapSample{way: way, gaps: map[string]time.Duration{}, confirm: confirmed.Sub(deregistered)}
			for _, o := range obs {
				_, d := o.state()
				s.gaps[o.name] = d.Sub(confirmed)
			}
			out = append(out, s)
			time.Sleep(settle) // let every server settle before the next round's registration
		}
	}
	return out
}

// gapTable reduces samples to, per way and consistency mode, the median and
// p99 of the last consumer's gap, and logs every observer's median.
func gapTable(t *testing.T, registryName string, samples []gapSample, obs []*observer, ways ...string) map[[2]string][2]time.Duration {
	t.Helper()
	modes := map[string][]string{}
	for _, o := range obs {
		modes[o.mode] = append(modes[o.mode], o.name)
	}
	out := map[[2]string][2]time.Duration{}
	for _, way := range ways {
		var conf []time.Duration
		for _, s := range samples {
			if s.way == way {
				conf = append(conf, s.confirm)
			}
		}
		if len(conf) > 0 {
			t.Logf("%s %-7s deregistration returned -> lameduck's confirmation: median %8.1f ms, p99 %8.1f ms",
				registryName, way, ms(quantile(conf, 0.5)), ms(quantile(conf, 0.99)))
		}
		for mode, names := range modes {
			var last []time.Duration
			per := map[string][]time.Duration{}
			for _, s := range samples {
				if s.way != way {
					continue
				}
				worst := time.Duration(-1 << 62)
				for _, n := range names {
					worst = max(worst, s.gaps[n])
					per[n] = append(per[n], s.gaps[n])
				}
				last = append(last, worst)
			}
			if len(last) == 0 {
				continue
			}
			med, p99 := quantile(last, 0.5), quantile(last, 0.99)
			out[[2]string{way, mode}] = [2]time.Duration{med, p99}
			t.Logf("%s %-7s %-10s last consumer's gap after lameduck's confirmation: median %8.1f ms, p99 %8.1f ms (%d rounds)",
				registryName, way, mode, ms(med), ms(p99), len(last))
			for _, n := range names {
				t.Logf("    %-22s median %8.1f ms, max %8.1f ms", n, ms(quantile(per[n], 0.5)), ms(quantile(per[n], 1)))
			}
		}
	}
	return out
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	k := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(k, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestClusterConfirmationGap measures, on the Consul and Nacos clusters, the
// gap between lameduck's confirmation and the moment the last consumer,
// watching through another agent or node in each consistency mode it can
// use, stops seeing the instance: before (confirmed on the app's own agent
// or node) and after (Consul: through every server, and through every
// agent; Nacos: through every node). It fails if any consumer still saw the
// instance after the confirmation through every Consul agent or Nacos node. BENCHMARKS.md has the figures; run it alone to read them:
//
//	LAMEDUCK_CLUSTER_ROUNDS=50 LAMEDUCK_CLUSTER_TOLERANCE=0 go test ./integration -run TestClusterConfirmationGap -v -count=1
func TestClusterConfirmationGap(t *testing.T) {
	rounds := clusterRounds(t)
	t.Run("consul", func(t *testing.T) {
		needConsulCluster(t)
		app := consulClients()[0]
		owner := newConsulAt(t, app)
		ways := map[string]registry.Registry{
			"before":  newConsulAt(t, app),
			"servers": newConsulAt(t, app, consul.WithConfirmThroughServers()),
			"agents":  newConsulAt(t, app, consul.WithConfirmThroughAgents()),
		}
		service := registrytest.UniqueService(t)
		var obs []*observer
		agents := append(slices.Clone(consulClients()), consulServers()...)
		for _, a := range agents {
			for _, mode := range []string{"default", "stale", "consistent"} {
				obs = append(obs, consulObserver(t, t.Context(), a, a, mode, service))
			}
		}
		samples := measureGaps(t, rounds, owner, ways, obs, service, 20*time.Millisecond)
		gapTable(t, "consul", samples, obs, "before", "servers", "agents")
		// Through the servers alone, a client agent's relay can still lag
		// (up to 37 ms under load): reported above, checked only through
		// every agent, where consumers read.
		checkAfter(t, samples, obs, "agents", tolerance(t))
	})
	t.Run("nacos", func(t *testing.T) {
		needNacosCluster(t)
		nodes := nacosNodes()
		owner := newNacosAt(t, nodes[0])
		viewed := newNacosAt(t, nodes...)
		service := registrytest.UniqueService(t)
		var obs []*observer
		for k, n := range nodes {
			obs = append(obs, watchObserver(t, t.Context(), newNacosAt(t, n), fmt.Sprintf("node%d", k+1), "push", service))
		}
		samples := measureGaps(t, rounds, owner, map[string]registry.Registry{"before": owner, "after": viewed}, obs, service, 0)
		gapTable(t, "nacos", samples, obs, "before", "after")
		checkAfter(t, samples, obs, "after", tolerance(t))
	})
}

// tolerance is how late a consumer may drop the instance after the
// confirmation through every server and still pass:
// LAMEDUCK_CLUSTER_TOLERANCE, default 25ms. A consumer on the same server as
// a view learns of the change up to 25 ms after the view on a loaded 2-core
// machine, which GoneOptions.Settle (50 ms) covers; the default keeps CI from
// failing on a machine busier still, and still fails on a confirmation taken
// on one node (Nacos: 1.1 s early) or through the Consul servers alone (up
// to 37 ms early). BENCHMARKS.md's figures are taken with 0.
func tolerance(t *testing.T) time.Duration {
	s := os.Getenv("LAMEDUCK_CLUSTER_TOLERANCE")
	if s == "" {
		return 25 * time.Millisecond
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("LAMEDUCK_CLUSTER_TOLERANCE=%q: want a duration", s)
	}
	return d
}

// checkAfter fails for every consumer that dropped the instance more than
// tol after a confirmation taken the given way.
func checkAfter(t *testing.T, samples []gapSample, obs []*observer, way string, tol time.Duration) {
	t.Helper()
	for k, s := range samples {
		if s.way != way {
			continue
		}
		for _, o := range obs {
			if g := s.gaps[o.name]; g > tol {
				t.Errorf("sample %d: consumer %s still saw the instance %.1f ms after the confirmation %s; want none after it", k, o.name, ms(g), way)
			}
		}
	}
}

func newConsulAt(t *testing.T, addr string, opts ...consul.Option) *consul.Registry {
	t.Helper()
	r, err := consul.New(append([]consul.Option{consul.WithAddress(addr)}, opts...)...)
	if err != nil {
		t.Fatalf("consul.New(%s): %v", addr, err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func newNacosAt(t *testing.T, nodes ...string) *nacos.Registry {
	t.Helper()
	r, err := nacos.New(nacos.WithAddresses(nodes...), nacos.WithCredentials(nacosUser(), nacosPass()), nacos.WithDataDir(t.TempDir()))
	if err != nil {
		t.Fatalf("nacos.New(%s): %v", strings.Join(nodes, ","), err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// killMember SIGKILLs a cluster member through the PID file its start
// script wrote, and returns a function that restarts it through that
// script (which restarts only dead members) and waits until it is whole.
func killMember(t *testing.T, pidfile, script string) (heal func()) {
	t.Helper()
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("read %s: %v", pidfile, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s holds %q, not a PID", pidfile, b)
	}
	if err := killPID(pid); err != nil {
		t.Fatalf("SIGKILL %d (%s): %v", pid, pidfile, err)
	}
	healed := false
	heal = func() {
		if healed {
			return
		}
		healed = true
		out, err := exec.Command(script).CombinedOutput()
		if err != nil {
			t.Errorf("heal the cluster with %s: %v\n%s", script, err, out)
		}
	}
	t.Cleanup(heal)
	return heal
}

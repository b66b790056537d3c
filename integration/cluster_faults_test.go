package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// The faults of a clustered registry in the middle of an offline, under
// load: examples/app goes offline on SIGTERM through a registry URL that
// confirms through every server, a cluster member is SIGKILLed the moment
// the app enters Confirming, and the test checks that the offline ends
// within the app's 25 s budget with exit code 0, that no request failed
// while the app was reachable, and that no live server lists the instance
// afterwards.

// clusterFault is one run: the apps, the load, the target and how to break
// the cluster.
type clusterFault struct {
	target   *e2eApp
	load     *e2eLoad
	apps     []*e2eApp
	live     []func(ctx context.Context, service string) ([]string, error) // every member that stays up: its list of endpoints
	killed   func(ctx context.Context, service string) ([]string, error)   // the killed member's, once healed
	heal     func()
	service  string
	killedAs string // the member's name, for messages
}

// run sends SIGTERM to the target, waits for its phase
// Confirming, calls kill, and checks the outcome.
func (f *clusterFault) run(t *testing.T, kill func() (name string, heal func())) {
	t.Helper()
	start := time.Now()
	if err := f.target.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", f.target.name, err)
	}
	waitPhase(t, f.target, drain.Confirming)
	f.killedAs, f.heal = kill()
	t.Logf("killed %s %v after SIGTERM", f.killedAs, time.Since(start).Round(time.Millisecond))
	if !f.target.wait(40 * time.Second) {
		t.Fatalf("%s: want it offline within its 25s budget, still running after 40s", f.target.name)
	}
	took := time.Since(start)
	t.Logf("%s went offline in %v", f.target.name, took.Round(time.Millisecond))
	f.load.keepGoing(t, time.Second)
	if code := f.target.exitCode(); code != 0 {
		t.Errorf("%s: want exit code 0 (a server down is reported, not waited for), got %s", f.target.name, f.target.describe())
	}
	if took > 25*time.Second {
		t.Errorf("%s: offline took %v; want it within the app's budget of 25s", f.target.name, took)
	}
	e2eCheckLoad(t, f.load, f.apps)
	f.checkOut(t, f.live, "live")
	f.heal()
	if f.killed != nil {
		f.checkOut(t, []func(context.Context, string) ([]string, error){f.killed}, "healed")
	}
}

// checkOut fails if any of the members lists the target, looking for 2s.
func (f *clusterFault) checkOut(t *testing.T, members []func(context.Context, string) ([]string, error), what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		for k, see := range members {
			eps, err := see(ctx, f.service)
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("%s member %d: list %s: %v", what, k, f.service, err)
				}
				continue
			}
			if slices.Contains(eps, f.target.endpoint()) {
				t.Fatalf("%s member %d lists %s after its offline (%s killed); want it out", what, k, f.target.endpoint(), f.killedAs)
			}
		}
		time.Sleep(200 * time.Millisecond) // a bounded look over 2s
	}
}

// waitPhase waits, through the app's admin endpoint, until it reaches phase.
func waitPhase(t *testing.T, a *e2eApp, phase drain.Phase) {
	t.Helper()
	c, err := admin.NewClient("http://" + e2eEndpoint(a.admin))
	if err != nil {
		t.Fatalf("%s: admin client: %v", a.name, err)
	}
	res, err := c.Wait(t.Context(), phase, 25*time.Second)
	if err != nil || !res.Reached {
		t.Fatalf("%s: wait for phase %v: reached %v, err %v", a.name, phase, res.Reached, err)
	}
}

// consulLister lists the passing endpoints of a service as one Consul
// agent holds them (?stale: its own copy).
func consulLister(t *testing.T, addr string) func(ctx context.Context, service string) ([]string, error) {
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatalf("consul client for %s: %v", addr, err)
	}
	return func(ctx context.Context, service string) ([]string, error) {
		entries, _, err := c.Health().Service(service, "", true, (&api.QueryOptions{AllowStale: true}).WithContext(ctx))
		if err != nil {
			return nil, err
		}
		var out []string
		for _, e := range entries {
			out = append(out, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
		}
		return out, nil
	}
}

// nacosLister lists what a consumer connected to one node sees.
func nacosLister(t *testing.T, node string) func(ctx context.Context, service string) ([]string, error) {
	r := newNacosAt(t, node)
	return func(ctx context.Context, service string) ([]string, error) {
		w, err := r.Watch(ctx, service)
		if err != nil {
			return nil, err
		}
		defer w.Stop()
		list, err := w.Next(ctx)
		var out []string
		for _, i := range list {
			out = append(out, i.Endpoint())
		}
		return out, err
	}
}

func consulClusterDir() string {
	return envOr("CONSUL_CLUSTER_DIR", filepath.Join(envOr("LAMEDUCK_RUN_DIR", "/tmp/lameduck-run"), "consul-cluster"))
}

func nacosClusterDir() string {
	return filepath.Join(envOr("LAMEDUCK_RUN_DIR", "/tmp/lameduck-run"), "nacos-cluster")
}

// consulFault starts the target on the first client agent and two more
// apps with the load's consumer on the second, all confirming through
// every server.
func consulFault(t *testing.T) *clusterFault {
	t.Helper()
	needConsulCluster(t)
	bins := e2eBuild(t, "app")
	service := registrytest.UniqueService(t)
	clients := consulClients()
	target := e2eStartLibraryAppsOn(t, bins["app"], "consul://"+clients[0]+"?confirm=servers", service, 1)[0]
	others := e2eStartLibraryAppsOn(t, bins["app"], "consul://"+clients[1]+"?confirm=servers", service, 2)
	apps := append([]*e2eApp{target}, others...)
	t.Cleanup(func() { consulCatalogCleanup(t, service) })
	load := e2eStartLoadOn(t, newConsulAt(t, clients[1]), service, 8, len(apps), target.endpoint())
	return &clusterFault{target: target, load: load, apps: apps, service: service}
}

// consulCatalogCleanup removes what a killed agent may have left behind.
func consulCatalogCleanup(t *testing.T, service string) {
	c, err := api.NewClient(&api.Config{Address: consulServers()[0]})
	if err != nil {
		return
	}
	entries, _, _ := c.Health().Service(service, "", false, nil)
	for _, e := range entries {
		_, _ = c.Catalog().Deregister(&api.CatalogDeregistration{Node: e.Node.Node, ServiceID: e.Service.ID}, nil)
	}
}

func consulHealScript() string { return "scripts/start-consul-cluster.sh" }

// consulLeader returns the index in consulServers of the raft leader.
func consulLeader(t *testing.T) int {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: consulServers()[0]})
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	leader, err := c.Status().Leader()
	if err != nil {
		t.Fatalf("consul leader: %v", err)
	}
	host, _, _ := net.SplitHostPort(leader)
	for k, s := range consulServers() {
		if h, _, _ := net.SplitHostPort(s); h == host {
			return k
		}
	}
	t.Fatalf("leader %s is none of %v", leader, consulServers())
	return -1
}

func TestClusterFaultConsulLeaderKilled(t *testing.T) {
	f := consulFault(t)
	servers := consulServers()
	leader := consulLeader(t)
	for k, s := range servers {
		if k != leader {
			f.live = append(f.live, consulLister(t, s))
		}
	}
	f.killed = consulLister(t, servers[leader])
	f.run(t, func() (string, func()) {
		name := fmt.Sprintf("consul-s%d", leader+1)
		return name + " (leader)", killMember(t, filepath.Join(consulClusterDir(), name+".pid"), consulHealScript())
	})
	if !strings.Contains(f.target.output(), "does not answer") {
		t.Errorf("%s: want the dead server reported (\"does not answer\") in its log, got\n%s", f.target.name, f.target.output())
	}
}

func TestClusterFaultConsulAgentRestarted(t *testing.T) {
	f := consulFault(t)
	for _, s := range consulServers() {
		f.live = append(f.live, consulLister(t, s))
	}
	f.live = append(f.live, consulLister(t, consulClients()[1]))
	f.killed = consulLister(t, consulClients()[0])
	f.run(t, func() (string, func()) {
		heal := killMember(t, filepath.Join(consulClusterDir(), "consul-c1.pid"), consulHealScript())
		heal() // restarted at once, on its data dir, as a supervisor would
		return "consul-c1 (the app's agent, restarted)", func() {}
	})
}

// nacosFault starts three apps on the Nacos cluster, finds the node the
// target's own client is connected to, and puts the load's consumer on
// another node.
func nacosFault(t *testing.T) (f *clusterFault, own int) {
	t.Helper()
	needNacosCluster(t)
	t.Setenv("NACOS_USERNAME", nacosUser())
	t.Setenv("NACOS_PASSWORD", nacosPass())
	bins := e2eBuild(t, "app")
	service := registrytest.UniqueService(t)
	nodes := nacosNodes()
	apps := e2eStartLibraryAppsOn(t, bins["app"], "nacos://"+strings.Join(nodes, ","), service, 3)
	target := apps[0]
	own = nacosNodeOf(t, target.pid(), nodes)
	consumer := (own + 1) % len(nodes)
	load := e2eStartLoadOn(t, newNacosAt(t, nodes[consumer]), service, 8, len(apps), target.endpoint())
	return &clusterFault{target: target, load: load, apps: apps, service: service}, own
}

// nacosNodeOf finds the node whose gRPC port (main port + 1000) the process
// pid holds a connection to.
func nacosNodeOf(t *testing.T, pid int, nodes []string) int {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("list the fds of %d: %v", pid, err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	grpc := map[int]int{}
	for k, n := range nodes {
		_, p, _ := net.SplitHostPort(n)
		port, _ := strconv.Atoi(p)
		grpc[port+1000] = k
	}
	found := -1
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			remote := f[2]
			port, err := strconv.ParseUint(remote[strings.LastIndex(remote, ":")+1:], 16, 16)
			if err != nil {
				continue
			}
			if k, ok := grpc[int(port)]; ok {
				if found >= 0 && found != k {
					t.Fatalf("pid %d holds gRPC connections to two nodes (%s and %s); want one before its offline", pid, nodes[found], nodes[k])
				}
				found = k
			}
		}
	}
	if found < 0 {
		t.Fatalf("pid %d holds no gRPC connection to any of %v", pid, nodes)
	}
	return found
}

func (f *clusterFault) nacosMembers(t *testing.T, killed int) {
	for k, n := range nacosNodes() {
		if k == killed {
			f.killed = nacosLister(t, n)
		} else {
			f.live = append(f.live, nacosLister(t, n))
		}
	}
}

func nacosKill(t *testing.T, k int) (string, func()) {
	name := fmt.Sprintf("nacos node%d", k+1)
	return name, killMember(t, filepath.Join(nacosClusterDir(), fmt.Sprintf("node%d", k+1), "nacos.pid"), "scripts/start-nacos-cluster.sh")
}

func TestClusterFaultNacosOwnNodeKilled(t *testing.T) {
	f, own := nacosFault(t)
	f.nacosMembers(t, own)
	f.run(t, func() (string, func()) {
		name, heal := nacosKill(t, own)
		return name + " (the app's own)", heal
	})
	if !strings.Contains(f.target.output(), "removed it again") {
		t.Errorf("%s: want the removal made again through a live node reported, got\n%s", f.target.name, f.target.output())
	}
}

func TestClusterFaultNacosFollowerKilled(t *testing.T) {
	f, own := nacosFault(t)
	other := (own + 2) % len(nacosNodes()) // neither the app's nor the consumer's
	f.nacosMembers(t, other)
	f.run(t, func() (string, func()) { return nacosKill(t, other) })
}

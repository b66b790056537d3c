// Command proof restarts a service under load on real Consul and Nacos, in
// every way there is to take an instance offline, and counts what the
// service's consumers lose. It is the proof harness of issue 6; `make proof`
// runs it after starting the servers, and BENCHMARKS.md explains the method
// and shows the last results.
//
//	go run ./integration/proof -rounds 3 -out /tmp/lameduck-proof
//	go run ./integration/proof -topology cluster -rounds 3 -out /tmp/lameduck-proof-cluster
//
// For each registry and strategy it starts the service's instances
// (integration/proof/demosvc), consumers that discover them with the
// registry's own client (Consul: blocking queries on the passing health
// list; Nacos: nacos-sdk-go's Subscribe), and an open-loop load of -rps
// requests per second with one long-lived stream per consumer. It then
// restarts every instance -rounds times, one after the other, taking each
// offline the strategy's way and waiting for its replacement to be seen by
// every consumer.
//
// -topology standalone (the default) runs against one Consul agent (-consul)
// and one standalone Nacos (-nacos). -topology cluster runs against the
// clusters of integration/scripts/start-consul-cluster.sh and
// start-nacos-cluster.sh: on Consul, every instance registers through the
// first client agent of -consul-cluster-clients, lameduck confirms through
// every server (consul://AGENT?confirm=servers), and the consumers watch
// through the other client agents (default consistency) and directly on
// each server (?stale, the server's own state), never through the
// instances' agent; on Nacos, instances register through the cluster URL
// (nacos://NODE,NODE,NODE: the SDK connects to one node, lameduck confirms
// through every node's push) and the consumers connect to one node each,
// spread over every node. The strategies:
//
//	naive    SIGTERM; the app exits at once, the platform deregisters it
//	sleep    deregister, sleep -sleep (15s, the preStop habit), SIGTERM,
//	         graceful shutdown
//	library  SIGTERM to an app that links lameduck
//	prestop  `lameduck prestop` as the preStop hook, then SIGTERM, on an app
//	         without the library
//	run      SIGTERM to `lameduck run`, which supervises an app without the
//	         library
//
// It prints a line per offline and a table, writes proof.json (everything
// measured) and one timeline-<registry>.svg per registry (one library
// instance's offline: its phases and the in-flight curve) into -out, and
// exits 1 if a lameduck strategy lost a request or a stream, or if the
// naive strategy lost nothing (the harness would be blind). Bad flags exit
// 2. Timings are reported, never gated on: they depend on the machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is the parsed command line.
type config struct {
	registries    []string
	strategies    []string
	topology      string // standalone or cluster
	rounds        int
	rps           int
	consumers     int
	instances     int
	sleep         time.Duration
	settle        time.Duration
	streamFollow  bool
	prestopQuiet  time.Duration
	connWait      time.Duration // with connWaitSet
	connWaitSet   bool          // -conn-wait was given: pass it on
	out           string
	consulAddr    string
	consulToken   string
	nacosAddr     string
	consulServers []string // cluster: the servers' HTTP addresses
	consulClients []string // cluster: the client agents' HTTP addresses; instances use the first
	nacosNodes    []string // cluster: every node's HTTP address
	nacosUser     string
	nacosPassword string
	bins          struct{ demo, lameduck string }
}

// configJSON is the part of the config that goes in proof.json (no
// credentials).
type configJSON struct {
	Registries []string `json:"registries"`
	Strategies []string `json:"strategies"`
	Rounds     int      `json:"rounds"`
	RPS        int      `json:"rps_per_registry"`
	Consumers  int      `json:"consumers"`
	Instances  int      `json:"instances"`
	SleepMS    int64    `json:"sleep_ms"`
	SettleMS   int64    `json:"settle_ms"`
	Follow     bool     `json:"stream_follow"`
	PrestopQ   string   `json:"prestop_quiet,omitempty"`
	ConnWait   string   `json:"conn_wait,omitempty"` // prestop's and run's --conn-wait, when passed
	Topology   string   `json:"topology"`
	ConsulAddr string   `json:"consul"` // the agent instances register through
	NacosAddr  string   `json:"nacos"`  // the node, or the comma-separated nodes, instances register through
	// Cluster topology: the registry URL the lameduck ways get, and where
	// each consumer watches (consumer k uses entry k mod len).
	ConsulURL       string   `json:"consul_url,omitempty"`
	NacosURL        string   `json:"nacos_url,omitempty"`
	ConsulConsumers []string `json:"consul_consumers,omitempty"`
	NacosConsumers  []string `json:"nacos_consumers,omitempty"`
	Workload        string   `json:"workload"`
}

const workload = "POST /work: 90% 1-10ms, 8% 10-100ms, 2% 100ms-2s (uniform within each); one SSE stream per consumer"

// errBadInput marks a command-line error: exit 2.
var errBadInput = errors.New("bad input")

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("proof", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line; -h prints the flags below
	regs := fs.String("registries", "consul,nacos", "registries to run against, comma-separated: consul, nacos")
	strats := fs.String("strategies", strings.Join(allStrategies, ","), "strategies, comma-separated: "+strings.Join(allStrategies, ", "))
	fs.IntVar(&cfg.rounds, "rounds", 3, "rolling restarts of every instance, per strategy and registry")
	fs.IntVar(&cfg.rps, "rps", 500, "requests per second per registry, open loop")
	fs.IntVar(&cfg.consumers, "consumers", 4, "consumers per strategy run, each with its own registry client and one stream")
	fs.IntVar(&cfg.instances, "instances", 3, "instances of the service")
	fs.DurationVar(&cfg.sleep, "sleep", 15*time.Second, "the fixed sleep of the sleep strategy")
	fs.DurationVar(&cfg.settle, "settle", time.Second, "load time after each replacement is seen, before the next offline")
	fs.BoolVar(&cfg.streamFollow, "stream-follow", false, "consumers also move their stream off an instance as soon as their registry watch drops it (by default only the instance's goodbye ends it)")
	fs.DurationVar(&cfg.prestopQuiet, "prestop-quiet", 0, "pass --quiet to lameduck prestop (0: prestop's default)")
	fs.DurationVar(&cfg.connWait, "conn-wait", 0, "pass --conn-wait to lameduck prestop and lameduck run (unset: not passed, so they wait until the requests end)")
	fs.StringVar(&cfg.out, "out", filepath.Join(os.TempDir(), "lameduck-proof"), "directory for proof.json and the timeline SVGs")
	fs.StringVar(&cfg.consulAddr, "consul", envOr("CONSUL_HTTP_ADDR", "127.0.0.1:8500"), "Consul agent's HTTP address (CONSUL_HTTP_ADDR)")
	fs.StringVar(&cfg.nacosAddr, "nacos", envOr("NACOS_ADDR", "127.0.0.1:8848"), "Nacos server's HTTP address (NACOS_ADDR)")
	fs.StringVar(&cfg.topology, "topology", topoStandalone, "standalone (one Consul agent, one Nacos) or cluster (the Consul and Nacos clusters below)")
	servers := fs.String("consul-cluster-servers", envOr("CONSUL_CLUSTER_SERVERS", "127.0.0.11:8500,127.0.0.12:8500,127.0.0.13:8500"),
		"-topology cluster: the Consul servers' HTTP addresses, comma-separated (CONSUL_CLUSTER_SERVERS); consumers watch on each")
	clients := fs.String("consul-cluster-clients", envOr("CONSUL_CLUSTER_CLIENTS", "127.0.0.21:8500,127.0.0.22:8500"),
		"-topology cluster: the Consul client agents' HTTP addresses, comma-separated (CONSUL_CLUSTER_CLIENTS); instances register through the first, consumers watch through the others")
	nodes := fs.String("nacos-cluster", envOr("NACOS_CLUSTER_ADDRS", "127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878"),
		"-topology cluster: the Nacos nodes' HTTP addresses, comma-separated (NACOS_CLUSTER_ADDRS)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "usage: go run ./integration/proof [flags]   (see BENCHMARKS.md)")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v (see -h)", errBadInput, err)
	}
	fs.Visit(func(f *flag.Flag) { cfg.connWaitSet = cfg.connWaitSet || f.Name == "conn-wait" })
	cfg.consulToken = os.Getenv("CONSUL_HTTP_TOKEN")
	cfg.nacosUser = envOr("NACOS_USERNAME", "nacos")
	cfg.nacosPassword = envOr("NACOS_PASSWORD", "lameduck-nacos-pw")
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errBadInput, fmt.Sprintf(format, args...))
	}
	if fs.NArg() > 0 {
		return nil, bad("unexpected argument %q; every input is a flag", fs.Arg(0))
	}
	var err error
	if cfg.registries, err = list(*regs, []string{"consul", "nacos"}); err != nil {
		return nil, bad("-registries: %v", err)
	}
	if cfg.strategies, err = list(*strats, allStrategies); err != nil {
		return nil, bad("-strategies: %v", err)
	}
	switch {
	case cfg.rounds < 1 || cfg.rounds > 100:
		return nil, bad("-rounds %d: want 1 to 100", cfg.rounds)
	case cfg.rps < 1 || cfg.rps > 5000:
		return nil, bad("-rps %d: want 1 to 5000", cfg.rps)
	case cfg.consumers < 1 || cfg.consumers > 64:
		return nil, bad("-consumers %d: want 1 to 64", cfg.consumers)
	case cfg.instances < 2 || cfg.instances > 20:
		return nil, bad("-instances %d: want 2 to 20 (one is always offline)", cfg.instances)
	case cfg.sleep <= 0 || cfg.sleep > gracePeriod-5*time.Second:
		return nil, bad("-sleep %v: want a positive duration of at most %v, inside the grace period", cfg.sleep, gracePeriod-5*time.Second)
	case cfg.settle < 0:
		return nil, bad("-settle %v: want a duration of 0 or more", cfg.settle)
	case cfg.prestopQuiet < 0:
		return nil, bad("-prestop-quiet %v: want a duration of 0 or more", cfg.prestopQuiet)
	case cfg.connWait < 0:
		return nil, bad("-conn-wait %v: want a duration of 0 or more", cfg.connWait)
	case cfg.out == "":
		return nil, bad("-out: give a directory for the results")
	case cfg.topology != topoStandalone && cfg.topology != topoCluster:
		return nil, bad("-topology %q: want %s or %s", cfg.topology, topoStandalone, topoCluster)
	}
	for name, addr := range map[string]string{"-consul": cfg.consulAddr, "-nacos": cfg.nacosAddr} {
		if err := checkLoopback(addr); err != nil {
			return nil, bad("%s %q: %v", name, addr, err)
		}
	}
	if cfg.topology == topoCluster {
		for _, f := range []struct {
			name string
			val  string
			min  int
			dst  *[]string
		}{
			{"-consul-cluster-servers", *servers, 1, &cfg.consulServers},
			{"-consul-cluster-clients", *clients, 1, &cfg.consulClients},
			{"-nacos-cluster", *nodes, 2, &cfg.nacosNodes},
		} {
			addrs, err := addrList(f.val)
			if err != nil {
				return nil, bad("%s %q: %v", f.name, f.val, err)
			}
			if len(addrs) < f.min {
				return nil, bad("%s %q: want at least %d address(es)", f.name, f.val, f.min)
			}
			*f.dst = addrs
		}
		for _, s := range cfg.consulServers {
			if slices.Contains(cfg.consulClients, s) {
				return nil, bad("-consul-cluster-clients: %s is also a server; list the client agents only", s)
			}
		}
	}
	return cfg, nil
}

// The topologies.
const (
	topoStandalone = "standalone"
	topoCluster    = "cluster"
)

// addrList parses a comma-separated list of distinct loopback host:port.
func addrList(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if err := checkLoopback(a); err != nil {
			return nil, fmt.Errorf("%s: %v", a, err)
		}
		if slices.Contains(out, a) {
			return nil, fmt.Errorf("%s is listed twice", a)
		}
		out = append(out, a)
	}
	return out, nil
}

// consulAgent is the agent the instances register through.
func (cfg *config) consulAgent() string {
	if cfg.topology == topoCluster {
		return cfg.consulClients[0]
	}
	return cfg.consulAddr
}

// consulURL is the registry URL the lameduck ways get.
func (cfg *config) consulURL() string {
	if cfg.topology == topoCluster {
		return "consul://" + cfg.consulAgent() + "?confirm=servers"
	}
	return "consul://" + cfg.consulAddr
}

// consulWatchPoint is where one consumer watches Consul.
type consulWatchPoint struct {
	addr  string
	stale bool // ?stale: the server's own state, not the leader's
}

func (p consulWatchPoint) String() string {
	if p.stale {
		return p.addr + " (stale)"
	}
	return p.addr + " (default)"
}

// consulWatchPoints lists where the consumers watch, consumer k at entry k
// mod len. In a cluster, never through the instances' agent: the other
// client agents in the default consistency mode, then every server with
// ?stale, so that each consumer sees its own server's state.
func (cfg *config) consulWatchPoints() []consulWatchPoint {
	if cfg.topology != topoCluster {
		return []consulWatchPoint{{addr: cfg.consulAddr}}
	}
	var out []consulWatchPoint
	for _, a := range cfg.consulClients[1:] {
		out = append(out, consulWatchPoint{addr: a})
	}
	for _, a := range cfg.consulServers {
		out = append(out, consulWatchPoint{addr: a, stale: true})
	}
	return out
}

// nacosRegNodes are the nodes the instances register through: the SDK
// connects to one of them.
func (cfg *config) nacosRegNodes() []string {
	if cfg.topology == topoCluster {
		return cfg.nacosNodes
	}
	return []string{cfg.nacosAddr}
}

// nacosURL is the registry URL the lameduck ways get.
func (cfg *config) nacosURL() string { return "nacos://" + strings.Join(cfg.nacosRegNodes(), ",") }

// nacosWatchPoints lists the node each consumer connects to (consumer k at
// entry k mod len): every node in turn.
func (cfg *config) nacosWatchPoints() []string { return cfg.nacosRegNodes() }

// consumerPlaces says where each consumer watches registry in a cluster,
// for the report; nil in the standalone topology.
func (cfg *config) consumerPlaces(registry string) []string {
	if cfg.topology != topoCluster {
		return nil
	}
	var out []string
	for k := range cfg.consumers {
		switch registry {
		case "consul":
			ps := cfg.consulWatchPoints()
			out = append(out, ps[k%len(ps)].String())
		case "nacos":
			ps := cfg.nacosWatchPoints()
			out = append(out, ps[k%len(ps)])
		}
	}
	return out
}

// list parses a comma-separated list of known names, keeping the order of
// known.
func list(s string, known []string) ([]string, error) {
	var got []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !slices.Contains(known, part) {
			return nil, fmt.Errorf("unknown %q; want some of %s", part, strings.Join(known, ", "))
		}
		got = append(got, part)
	}
	if len(got) == 0 {
		return nil, fmt.Errorf("empty; want some of %s", strings.Join(known, ", "))
	}
	var out []string
	for _, k := range known {
		if slices.Contains(got, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// checkLoopback accepts host:port on a loopback address: everything the
// harness starts or talks to stays on this machine.
func checkLoopback(addr string) error {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return errors.New("want a loopback address such as 127.0.0.1:" + strconv.Itoa(port))
	}
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i <= 0 {
		return "", 0, errors.New("want host:port")
	}
	port, err := strconv.Atoi(addr[i+1:])
	if err != nil || port < 1 || port > 65535 {
		return "", 0, errors.New("want host:port with a port between 1 and 65535")
	}
	return strings.Trim(addr[:i], "[]"), port, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "proof: %v\n", strings.TrimPrefix(err.Error(), errBadInput.Error()+": "))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proof: %v\n", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// run runs the whole proof and reports whether every gating claim holds.
func run(ctx context.Context, cfg *config, w io.Writer) (bool, error) {
	started := time.Now()
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return false, fmt.Errorf("-out: %w", err)
	}
	tmp, err := os.MkdirTemp("", "lameduck-proof-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	if err := checkServers(ctx, cfg); err != nil {
		return false, err
	}
	fmt.Fprintln(w, "proof: building the demo service and the lameduck binary")
	if err := build(ctx, cfg, tmp); err != nil {
		return false, err
	}
	m := describeMachine(ctx, cfg)
	fmt.Fprintf(w, "proof: %s\n", m)
	fmt.Fprintf(w, "proof: %d rounds x %d instances, %d rps per registry, %d consumers, strategies %s, registries %s, topology %s\n",
		cfg.rounds, cfg.instances, cfg.rps, cfg.consumers, strings.Join(cfg.strategies, ","), strings.Join(cfg.registries, ","), cfg.topology)
	if cfg.topology == topoCluster {
		for _, reg := range cfg.registries {
			url := map[string]string{"consul": cfg.consulURL(), "nacos": cfg.nacosURL()}[reg]
			fmt.Fprintf(w, "proof: %s cluster: instances and lameduck on %s; consumers on %s\n",
				reg, url, strings.Join(cfg.consumerPlaces(reg), ", "))
		}
	}

	runID := strconv.FormatInt(time.Now().Unix()%1_000_000, 36) + strconv.Itoa(os.Getpid()%1000)
	var ps ports
	var runs []*strategyRun
	logf := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	for _, regName := range cfg.registries {
		tgt, err := openTarget(cfg, regName, tmp)
		if err != nil {
			return false, err
		}
		for _, s := range cfg.strategies {
			logf("proof: %s, %s", regName, strategyTitle[s])
			r := &runner{
				cfg: cfg, tgt: tgt, strategy: s, ports: &ps, log: logf,
				service: fmt.Sprintf("proof-%s-%s%s-%s", runID, regName, map[string]string{topoCluster: "-cl"}[cfg.topology], s),
			}
			res, err := r.run(ctx)
			if err != nil {
				tgt.platform.close()
				return false, fmt.Errorf("%s %s: %w", regName, s, err)
			}
			runs = append(runs, res)
			logf("proof: %s %s done in %.0fs: %d requests (%.0f/s), %d failed, %d streams, %d cut",
				regName, s, res.Seconds, res.Totals.Requests, res.RatePerSecond, res.Totals.Failed, res.Totals.Streams,
				res.Totals.StreamCut+res.Totals.StreamNoOpen)
		}
		tgt.platform.close()
	}

	vs := verdicts(runs)
	ok := true
	for _, v := range vs {
		if v.Gate && !v.Holds {
			ok = false
		}
	}
	tls := pickTimelines(runs)
	prestopQuiet, connWait := "", ""
	if cfg.prestopQuiet > 0 {
		prestopQuiet = cfg.prestopQuiet.String()
	}
	if cfg.connWaitSet {
		connWait = cfg.connWait.String()
	}
	res := result{
		Machine: m, Started: started, Seconds: time.Since(started).Seconds(), Runs: runs, Verdicts: vs, Timelines: tls, OK: ok,
		Config: configJSON{
			Registries: cfg.registries, Strategies: cfg.strategies, Rounds: cfg.rounds, RPS: cfg.rps,
			Consumers: cfg.consumers, Instances: cfg.instances, SleepMS: cfg.sleep.Milliseconds(),
			SettleMS: cfg.settle.Milliseconds(), Follow: cfg.streamFollow, PrestopQ: prestopQuiet, ConnWait: connWait,
			Topology: cfg.topology, ConsulAddr: cfg.consulAgent(), NacosAddr: strings.Join(cfg.nacosRegNodes(), ","), Workload: workload,
		},
	}
	if cfg.topology == topoCluster {
		res.Config.ConsulURL, res.Config.NacosURL = cfg.consulURL(), cfg.nacosURL()
		res.Config.ConsulConsumers, res.Config.NacosConsumers = cfg.consumerPlaces("consul"), cfg.consumerPlaces("nacos")
	}
	fmt.Fprintln(w)
	printSummary(w, runs)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "claims (%s topology):\n", cfg.topology)
	printVerdicts(w, vs)
	jsonPath := filepath.Join(cfg.out, "proof.json")
	if err := writeJSON(jsonPath, res); err != nil {
		return false, err
	}
	fmt.Fprintf(w, "\nproof: wrote %s", jsonPath)
	for _, t := range tls {
		p := filepath.Join(cfg.out, t.File)
		if err := os.WriteFile(p, []byte(t.svg()), 0o644); err != nil {
			return false, err
		}
		fmt.Fprintf(w, ", %s", p)
	}
	fmt.Fprintf(w, "\nproof: %s in %s\n", map[bool]string{true: "PASS", false: "FAIL"}[ok], time.Since(started).Round(time.Second))
	return ok, nil
}

// openTarget opens what the harness needs of one registry.
func openTarget(cfg *config, name, tmp string) (*target, error) {
	switch name {
	case "consul":
		p, err := newConsulPlatform(cfg.consulAgent(), cfg.consulToken)
		if err != nil {
			return nil, err
		}
		return &target{name: name, url: cfg.consulURL(), platform: p, watch: consulWatchFactory(cfg)}, nil
	case "nacos":
		p, err := newNacosPlatform(cfg.nacosRegNodes(), cfg.nacosUser, cfg.nacosPassword, tmp)
		if err != nil {
			return nil, err
		}
		return &target{name: name, url: cfg.nacosURL(), platform: p, watch: nacosWatchFactory(cfg, tmp)}, nil
	}
	return nil, fmt.Errorf("unknown registry %q", name)
}

// build compiles the demo service and the lameduck binary into dir, from
// the module this command belongs to.
func build(ctx context.Context, cfg *config, dir string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	cfg.bins.demo = filepath.Join(dir, "demosvc")
	cfg.bins.lameduck = filepath.Join(dir, "lameduck")
	for bin, pkg := range map[string]string{cfg.bins.demo: "./integration/proof/demosvc", cfg.bins.lameduck: "./cli/lameduck"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the proof from inside the lameduck module (its go.mod was not found)")
	}
	return filepath.Dir(mod), nil
}

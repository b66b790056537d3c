package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatalf("defaults: want no error, got %v", err)
	}
	if cfg.rounds != 3 || cfg.rps != 500 || cfg.sleep != 15*time.Second || len(cfg.strategies) != 5 || len(cfg.registries) != 2 {
		t.Errorf("defaults: want 3 rounds, 500 rps, a 15s sleep, 5 strategies, 2 registries; got %d, %d, %v, %v, %v",
			cfg.rounds, cfg.rps, cfg.sleep, cfg.strategies, cfg.registries)
	}
	cfg, err = parseFlags([]string{"-strategies", "run, naive", "-registries", "nacos"}, io.Discard)
	if err != nil || strings.Join(cfg.strategies, ",") != "naive,run" || strings.Join(cfg.registries, ",") != "nacos" {
		t.Errorf("want strategies naive,run on nacos, got %v on %v (err %v)", cfg.strategies, cfg.registries, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-rounds", "0"}, "-rounds 0"},
		{[]string{"-rps", "-5"}, "-rps -5"},
		{[]string{"-strategies", "naive,yolo"}, `unknown "yolo"`},
		{[]string{"-strategies", ","}, "-strategies: empty"},
		{[]string{"-registries", "etcd"}, `unknown "etcd"`},
		{[]string{"-sleep", "0s"}, "-sleep 0s"},
		{[]string{"-sleep", "40s"}, "-sleep 40s"},
		{[]string{"-instances", "1"}, "-instances 1"},
		{[]string{"-consul", "10.0.0.5:8500"}, "loopback"},
		{[]string{"-nacos", "127.0.0.1"}, "host:port"},
		{[]string{"-out", ""}, "-out"},
		{[]string{"-prestop-quiet", "-1s"}, "-prestop-quiet"},
		{[]string{"-conn-wait", "-2s"}, "-conn-wait"},
		{[]string{"-topology", "mesh"}, `-topology "mesh"`},
		{[]string{"-topology", "cluster", "-consul-cluster-servers", "10.0.0.11:8500"}, "loopback"},
		{[]string{"-topology", "cluster", "-consul-cluster-clients", ","}, "at least 1"},
		{[]string{"-topology", "cluster", "-consul-cluster-clients", "127.0.0.11:8500"}, "also a server"},
		{[]string{"-topology", "cluster", "-nacos-cluster", "127.0.0.1:8858"}, "at least 2"},
		{[]string{"-topology", "cluster", "-nacos-cluster", "127.0.0.1:8858,127.0.0.1:8858"}, "listed twice"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-no-such-flag"}, "not defined"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			_, err := parseFlags(tc.args, io.Discard)
			if !errors.Is(err, errBadInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a bad-input error mentioning %q, got %v", tc.want, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("want a one-line error, got %q", err)
			}
		})
	}
}

func TestTopology(t *testing.T) {
	t.Setenv("CONSUL_CLUSTER_SERVERS", "")
	t.Setenv("CONSUL_CLUSTER_CLIENTS", "")
	t.Setenv("NACOS_CLUSTER_ADDRS", "")
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.topology != topoStandalone || cfg.consulURL() != "consul://127.0.0.1:8500" || cfg.nacosURL() != "nacos://127.0.0.1:8848" ||
		len(cfg.consulWatchPoints()) != 1 || cfg.consulWatchPoints()[0].stale || cfg.consumerPlaces("consul") != nil {
		t.Errorf("standalone: want one agent and one Nacos for everything, got %s, %s, %v", cfg.consulURL(), cfg.nacosURL(), cfg.consulWatchPoints())
	}
	cfg, err = parseFlags([]string{"-topology", "cluster"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.consulURL(), "consul://127.0.0.21:8500?confirm=servers"; got != want {
		t.Errorf("cluster consul URL: want %s, got %s", want, got)
	}
	if got, want := cfg.nacosURL(), "nacos://127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878"; got != want {
		t.Errorf("cluster nacos URL: want %s, got %s", want, got)
	}
	if got, want := strings.Join(cfg.consumerPlaces("consul"), ", "),
		"127.0.0.22:8500 (default), 127.0.0.11:8500 (stale), 127.0.0.12:8500 (stale), 127.0.0.13:8500 (stale)"; got != want {
		t.Errorf("cluster consul consumers: want %s, got %s", want, got)
	}
	if got, want := strings.Join(cfg.consumerPlaces("nacos"), ","), "127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878,127.0.0.1:8858"; got != want {
		t.Errorf("cluster nacos consumers: want %s, got %s", want, got)
	}
	for _, p := range cfg.consulWatchPoints() {
		if p.addr == cfg.consulAgent() {
			t.Errorf("a consumer watches through the instances' agent %s", p.addr)
		}
	}
}

func TestMedian(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{7}, 7},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{-1, 5}, 2},
	} {
		in := append([]float64(nil), tc.in...)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v): want %v, got %v", tc.in, tc.want, got)
		}
		for k := range in {
			if in[k] != tc.in[k] {
				t.Errorf("median reordered its input: %v became %v", in, tc.in)
			}
		}
	}
}

// fakeRun builds a strategyRun with the given losses and offline overheads.
func fakeRun(reg, strat string, failed, cut int64, overheads ...float64) *strategyRun {
	r := &strategyRun{Registry: reg, Strategy: strat, Totals: totals{Requests: 1000, Failed: failed, StreamCut: cut}}
	for _, o := range overheads {
		r.Offlines = append(r.Offlines, offline{OverheadMS: o, OfflineMS: 100 + o})
	}
	r.summarize()
	return r
}

func TestVerdictsGate(t *testing.T) {
	t.Parallel()
	gateFails := func(vs []verdict) []string {
		var out []string
		for _, v := range vs {
			if v.Gate && !v.Holds {
				out = append(out, v.Registry+" "+v.Claim)
			}
		}
		return out
	}
	good := []*strategyRun{
		fakeRun("consul", stratNaive, 12, 1, 1, 2, 3),
		fakeRun("consul", stratLibrary, 0, 0, 3, 4, 900),
		fakeRun("consul", stratPrestop, 0, 0, 600, 700, 800),
	}
	if got := gateFails(verdicts(good)); len(got) != 0 {
		t.Errorf("a naive loss and lossless lameduck ways: want every gate to hold, got failures %v", got)
	}
	for name, runs := range map[string][]*strategyRun{
		"naive lost nothing":    {fakeRun("nacos", stratNaive, 0, 0, 1), fakeRun("nacos", stratLibrary, 0, 0, 1)},
		"library lost one":      {fakeRun("nacos", stratNaive, 5, 0, 1), fakeRun("nacos", stratLibrary, 1, 0, 1)},
		"run cut a stream":      {fakeRun("nacos", stratNaive, 5, 0, 1), fakeRun("nacos", stratRun, 0, 1, 1)},
		"prestop failed a open": {fakeRun("nacos", stratNaive, 5, 0, 1), &strategyRun{Registry: "nacos", Strategy: stratPrestop, Totals: totals{StreamNoOpen: 1}}},
	} {
		if got := gateFails(verdicts(runs)); len(got) != 1 {
			t.Errorf("%s: want exactly one failed gate, got %v", name, got)
		}
	}
	// Timings are reported, not gated on.
	slow := []*strategyRun{fakeRun("consul", stratNaive, 5, 0, 1), fakeRun("consul", stratRun, 0, 0, 500, 600, 700)}
	vs := verdicts(slow)
	if got := gateFails(vs); len(got) != 0 {
		t.Errorf("slow but lossless: want no failed gate, got %v", got)
	}
	found := false
	for _, v := range vs {
		if strings.Contains(v.Claim, "median overhead") {
			found = true
			if v.Holds || !strings.Contains(v.Detail, "median 600.0 ms") {
				t.Errorf("overhead claim: want it not to hold with median 600.0 ms, got holds=%v %q", v.Holds, v.Detail)
			}
		}
	}
	if !found {
		t.Error("want an overhead claim for lameduck run, got none")
	}
}

func TestWorkMix(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	const n = 200_000
	var short, mid, long int
	for range n {
		d := work(r)
		switch {
		case d < time.Millisecond || d > 2*time.Second:
			t.Fatalf("want a service time between 1ms and 2s, got %v", d)
		case d <= 10*time.Millisecond:
			short++
		case d < 100*time.Millisecond:
			mid++
		default:
			long++
		}
	}
	// 90% / 8% / 2%, with a wide margin for the draw.
	for _, c := range []struct {
		name      string
		got       int
		want, tol float64
	}{{"1-10ms", short, 0.90, 0.01}, {"10-100ms", mid, 0.08, 0.01}, {"100ms-2s", long, 0.02, 0.005}} {
		if f := float64(c.got) / n; f < c.want-c.tol || f > c.want+c.tol {
			t.Errorf("%s: want a share of %.3f±%.3f, got %.4f", c.name, c.want, c.tol, f)
		}
	}
}

func TestLongestAtOfflineStart(t *testing.T) {
	t.Parallel()
	ep := newBook(1).endpoint("127.0.0.1:1")
	ep.ok(10, 50) // before the offline: not counted
	ep.offlineAt.Store(100)
	ep.ok(20, 150)  // in flight at 100: 130
	ep.ok(90, 400)  // in flight at 100: 310
	ep.ok(120, 900) // started after: not in flight at the start
	if got := ep.longestAtOff.Load(); got != 310 {
		t.Errorf("longest request in flight when the offline began: want 310, got %d", got)
	}
	if got := ep.lastOK.Load(); got != 900 {
		t.Errorf("last successful reply: want 900, got %d", got)
	}
}

// testServer serves h on 127.0.0.1 and returns its host:port.
func testServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// The consumer sends a non-replayable request: when the server drops a
// reused connection without answering, net/http must not send the request
// again, and the consumer must count one failure.
func TestConsumerRetriesNothing(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	hits, perConn := 0, map[string]int{}
	addr := testServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		perConn[r.RemoteAddr]++
		second := perConn[r.RemoteAddr] == 2
		mu.Unlock()
		if second {
			panic(http.ErrAbortHandler) // closes the connection, no response
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
	b := newBook(1)
	c := newConsumer(0, b, false)
	c.update([]string{addr})
	ep := b.endpoint(addr)
	sent := 0
	for ; sent < 50 && ep.failed() == 0; sent++ {
		c.send(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if ep.failed() != 1 {
		t.Fatalf("want exactly one failure after %d requests, got %d: %v", sent, ep.failed(), ep.errors())
	}
	if hits != sent || ep.sent.Load() != int64(sent) {
		t.Errorf("want the server to see each of the %d requests once, got %d hits (%d counted sent): a request was replayed", sent, hits, ep.sent.Load())
	}
}

func TestConsumerCountsFailures(t *testing.T) {
	t.Parallel()
	addr := testServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	b := newBook(1)
	c := newConsumer(0, b, false)
	c.update([]string{addr, dead})
	c.send(time.Millisecond)
	c.send(time.Millisecond)
	c.update(nil)
	c.send(time.Millisecond)
	tot := b.totals()
	want := map[string]int64{"HTTP 503 Service Unavailable": 1, "connection refused": 1, "no instance listed": 1}
	if tot.Requests != 3 || tot.Failed != 3 || fmt.Sprint(tot.Errors) != fmt.Sprint(want) {
		t.Errorf("want 3 requests, 3 failed as %v; got %d, %d as %v", want, tot.Requests, tot.Failed, tot.Errors)
	}
}

// streamServer streams ticks until end is closed, then does what end
// says: "goodbye" says goodbye, "cut" drops the connection. started gets a
// value once the stream is open.
func streamServer(t *testing.T, end <-chan string, started chan<- struct{}) string {
	return testServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept") != "text/event-stream" {
			t.Errorf("want Accept: text/event-stream (httpdrain's long-lived mark), got %q", r.Header.Get("Accept"))
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: 0\n\n")
		w.(http.Flusher).Flush()
		started <- struct{}{}
		select {
		case how := <-end:
			if how == "cut" {
				panic(http.ErrAbortHandler)
			}
			_, _ = io.WriteString(w, "event: goodbye\ndata: bye\n\n")
		case <-r.Context().Done():
		}
	}))
}

func TestStreamOutcomes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		follow bool
		act    func(c *consumer, end chan<- string)
		want   streamOutcome
	}{
		{"goodbye", false, func(_ *consumer, end chan<- string) { end <- "goodbye" }, streamGoodbye},
		{"cut", false, func(_ *consumer, end chan<- string) { end <- "cut" }, streamCut},
		{"moved when the watch drops it", true, func(c *consumer, _ chan<- string) { c.update(nil) }, streamMoved},
		{"kept without follow until goodbye", false, func(c *consumer, end chan<- string) { c.update(nil); end <- "goodbye" }, streamGoodbye},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			end, started := make(chan string, 1), make(chan struct{}, 1)
			addr := streamServer(t, end, started)
			b := newBook(1)
			c := newConsumer(0, b, tc.follow)
			c.update([]string{addr})
			ep, tr := c.pick(nil)
			type outcome struct {
				o   streamOutcome
				why string
			}
			got := make(chan outcome, 1)
			go func() { o, why := c.stream1(context.Background(), ep, tr); got <- outcome{o, why} }()
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("the stream did not open within 10s")
			}
			tc.act(c, end)
			select {
			case g := <-got:
				if g.o != tc.want {
					t.Errorf("want outcome %d, got %d (%s)", tc.want, g.o, g.why)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the stream did not end within 10s")
			}
		})
	}
}

func TestTimelineSVG(t *testing.T) {
	t.Parallel()
	tl := &timeline{
		Registry: "nacos", Strategy: stratLibrary, Endpoint: "127.0.0.1:1234",
		OfflineMS: 900, PMS: 600, LMS: 880, OverheadMS: 20, Consumers: []float64{590, 600},
		Events: []timelineEvent{
			{AtMS: 0.2, Kind: "phase", Phase: "Deregistering"},
			{AtMS: 5, Kind: "deregistered", Phase: "Deregistering"},
			{AtMS: 5, Kind: "phase", Phase: "Confirming"},
			{AtMS: 598, Kind: "confirmed", Phase: "Confirming"},
			{AtMS: 598, Kind: "phase", Phase: "Draining"},
			{AtMS: 885, Kind: "phase", Phase: "Stopping"},
			{AtMS: 887, Kind: "phase", Phase: "Offline"},
		},
	}
	for k := -60; k <= 240; k++ {
		tl.Samples = append(tl.Samples, sample{AtMS: float64(k * 5), InFlight: int64(max(0, 7-k/20))})
	}
	svg := tl.svg()
	dec := xml.NewDecoder(strings.NewReader(svg))
	var texts []string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("want well-formed XML, got %v\n%s", err, svg)
		}
		if cd, ok := tok.(xml.CharData); ok {
			texts = append(texts, string(cd))
		}
	}
	all := strings.Join(texts, "|")
	for _, want := range []string{"deregistering", "confirming", "draining", "Nacos", "overhead 20.0ms", "confirmed 598ms", "exit 900ms"} {
		if !strings.Contains(all, want) {
			t.Errorf("want the picture to say %q; its texts: %s", want, all)
		}
	}
	if got := len(tl.phases()); got != 6 {
		t.Errorf("want 6 phase bands (signal, deregistering, confirming, draining, stopping, exit), got %d: %+v", got, tl.phases())
	}
}

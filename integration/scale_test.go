//go:build unix

package integration

// Scale: lameduck's confirmation watch on a service of 1,000 and of 5,000
// instances, measured against the registry client's own watch in the same
// run, on the same deregistrations:
//
//   - confirmation latency: from the deregistration of one instance to the
//     return of lameduck's registry.WatchGone(...).Wait, and to the moment a
//     raw client's watch (Consul: a Health().Service blocking-query loop;
//     Nacos: a nacos-sdk-go Subscribe callback), opened on a client of its
//     own, gets a list without it. Consul is timed twice: straight to the
//     agent, and through a loopback proxy that sends the two watches'
//     identical blocking query upstream once and gives both the one answer
//     at the same moment (scaleFanout), so that the gap is the clients' own
//     work, not the order in which the agent answers its watchers;
//   - cost of watching: the live heap a watch holds on the service, and the
//     CPU time and allocation of each list update it processes, for
//     lameduck's watch and the raw one, one after the other in this process.
//
// The service is filled with synthetic instances (Consul: catalog
// registrations without checks, 100 per synthetic node; Nacos: ephemeral
// instances published with BatchRegisterInstance by a few SDK clients), all
// removed at the end. It runs only when asked, and needs the servers:
//
//	LAMEDUCK_SCALE=1 go test ./integration -run '^TestScale' -v -count=1 -timeout 60m
//
// LAMEDUCK_SCALE_SIZES (default 1000,5000), LAMEDUCK_SCALE_SAMPLES
// (deregistrations per size, default 20), LAMEDUCK_SCALE_UPDATES (list
// updates per cost measurement, default 20) and LAMEDUCK_SCALE_ROUNDS (cost
// measurements per watcher, alternating which goes first, default 5) tune it;
// LAMEDUCK_SCALE_NACOS_PER_CLIENT (default 1000) is how many instances one
// populating Nacos client publishes.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/nacos-group/nacos-sdk-go/v2/clients/naming_client"
	"github.com/nacos-group/nacos-sdk-go/v2/common/constant"
	"github.com/nacos-group/nacos-sdk-go/v2/model"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"

	"github.com/lameduck/lameduck/adapters/consul"
	"github.com/lameduck/lameduck/registry"
)

// Targets checked (and reported, never failed on: timings depend on the
// machine) at the largest size.
const (
	scaleGapTarget  = 10 * time.Millisecond // lameduck's confirmation within this of the raw watch's (median)
	scaleHeapTarget = 2.0                   // lameduck's watch holds less than this times the raw watch's heap
)

type scaleConfig struct {
	sizes                    []int
	samples, updates, rounds int
	nacosPerClient           int
}

func scaleSetup(t *testing.T) scaleConfig {
	t.Helper()
	if os.Getenv("LAMEDUCK_SCALE") == "" {
		t.Skip("scale measurements run only with LAMEDUCK_SCALE=1 (see integration/scale_test.go)")
	}
	c := scaleConfig{
		samples:        scaleEnvInt(t, "LAMEDUCK_SCALE_SAMPLES", 20),
		updates:        scaleEnvInt(t, "LAMEDUCK_SCALE_UPDATES", 20),
		rounds:         scaleEnvInt(t, "LAMEDUCK_SCALE_ROUNDS", 5),
		nacosPerClient: scaleEnvInt(t, "LAMEDUCK_SCALE_NACOS_PER_CLIENT", 1000),
	}
	for _, f := range strings.Split(envOr("LAMEDUCK_SCALE_SIZES", "1000,5000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			t.Fatalf("LAMEDUCK_SCALE_SIZES=%q: want numbers of 2 or more, comma-separated", os.Getenv("LAMEDUCK_SCALE_SIZES"))
		}
		c.sizes = append(c.sizes, n)
	}
	return c
}

func scaleEnvInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		t.Fatalf("%s=%q: want a positive number", name, s)
	}
	return v
}

// scaleAddr is the address of synthetic instance i: loopback, never dialled.
func scaleAddr(i int) string { return fmt.Sprintf("127.1.%d.%d", i/250, i%250+1) }

// scaleMeta is what every synthetic instance carries, as real ones do.
func scaleMeta() map[string]string { return map[string]string{"version": "v1.2.3", "zone": "zone-a"} }

// scaleTags are the tags of every Consul instance here.
func scaleTags() []string { return []string{"scale", "v1"} }

// ---- measurements shared by both registries ----

// scaleProbe follows one instance through a raw watch's lists: present
// once a list holds it, then gone, with the time, at the first list after
// that lacks it.
type scaleProbe struct {
	inst    registry.Instance
	mu      sync.Mutex
	state   int           // 0 not seen yet, 1 listed, 2 gone
	present chan struct{} // closed when a list first holds inst
	gone    chan time.Time
}

func newScaleProbe(inst registry.Instance) *scaleProbe {
	return &scaleProbe{inst: inst, present: make(chan struct{}), gone: make(chan time.Time, 1)}
}

func (p *scaleProbe) see(has bool, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case has && p.state == 0:
		p.state = 1
		close(p.present)
	case !has && p.state == 1:
		p.state = 2
		p.gone <- at
	}
}

// scaleSample is one deregistration, timed from just before the call.
type scaleSample struct{ lameduck, raw time.Duration }

// scaleConfirmOnce deregisters an instance both watches follow and times
// each watch. register and deregister act on lameduck's backend, arm points
// the raw watch at the instance.
func scaleConfirmOnce(t *testing.T, r registry.Registry, inst registry.Instance, arm func(*scaleProbe), settle time.Duration) (scaleSample, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := newScaleProbe(inst)
	arm(p)
	defer arm(nil)
	if err := r.Register(ctx, inst); err != nil {
		t.Fatalf("register %s: %v", inst.Key(), err)
	}
	select {
	case <-p.present:
	case <-ctx.Done():
		t.Fatalf("the raw watch never listed %s", inst.Key())
	}
	g, err := registry.WatchGone(ctx, r, inst, registry.GoneOptions{})
	if err != nil {
		t.Fatalf("WatchGone: %v", err)
	}
	defer g.Stop()
	if !g.Listed() {
		t.Logf("lameduck's first list lacked %s; sample dropped", inst.Key())
		_ = r.Deregister(ctx, inst)
		return scaleSample{}, false
	}
	confirmed := make(chan time.Time, 1)
	go func() {
		err := g.Wait(ctx)
		at := time.Now()
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		confirmed <- at
	}()
	time.Sleep(settle) // both watches are parked on the server
	t0 := time.Now()
	if err := r.Deregister(ctx, inst); err != nil {
		t.Fatalf("deregister %s: %v", inst.Key(), err)
	}
	var s scaleSample
	for got := 0; got < 2; got++ {
		select {
		case at := <-confirmed:
			s.lameduck = at.Sub(t0)
		case at := <-p.gone:
			s.raw = at.Sub(t0)
		case <-ctx.Done():
			t.Fatalf("%s: a watch never confirmed (lameduck %v, raw %v)", inst.Key(), s.lameduck, s.raw)
		}
	}
	return s, true
}

// scaleCost is what one watch cost, in one measurement.
type scaleCost struct {
	heap       int64         // live heap held by the open watch, bytes
	cpu        time.Duration // process CPU per list update processed
	alloc      float64       // bytes allocated per update
	mallocs    float64       // heap objects allocated per update
	wallPerUpd time.Duration // from a change to the watch having processed it
}

// scaleWatch is one watch under measurement.
type scaleWatch interface {
	// open starts the watch the heap is measured on and returns once it
	// has its first list. Its client exists already.
	open(ctx context.Context) error
	// follow switches to the loop the updates are counted on (it may be
	// the same watch) and returns once its first list is processed; after
	// that each processed list sends whether it holds the toggled instance.
	follow(ctx context.Context, seen chan<- bool) error
	close()
}

// scaleLiveHeap is the heap still reachable after a full collection.
func scaleLiveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func scaleCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// scaleMeasure measures one watch: the heap it holds once open, then the
// CPU and allocations of n updates (the toggled instance added and removed
// in turn by toggle, each awaited on the watch).
func scaleMeasure(t *testing.T, w scaleWatch, toggle func(on bool) error, n int, settle time.Duration) scaleCost {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	defer w.close()
	time.Sleep(settle) // the client's own start-up is done
	base := scaleLiveHeap()
	if err := w.open(ctx); err != nil {
		t.Fatalf("open the watch: %v", err)
	}
	time.Sleep(settle)
	var c scaleCost
	c.heap = scaleLiveHeap() - base

	seen := make(chan bool, 1024)
	if err := w.follow(ctx, seen); err != nil {
		t.Fatalf("follow: %v", err)
	}
	time.Sleep(settle)
	for len(seen) > 0 {
		<-seen
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0, wall0 := scaleCPU(), time.Now()
	for k := 0; k < n; k++ {
		on := k%2 == 0
		if err := toggle(on); err != nil {
			t.Fatalf("toggle %v: %v", on, err)
		}
		for has := !on; has != on; {
			select {
			case has = <-seen:
			case <-ctx.Done():
				t.Fatalf("update %d never reached the watch", k)
			}
		}
	}
	cpu1, wall1 := scaleCPU(), time.Now()
	runtime.ReadMemStats(&m1)
	c.cpu = (cpu1 - cpu0) / time.Duration(n)
	c.wallPerUpd = wall1.Sub(wall0) / time.Duration(n)
	c.alloc = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	c.mallocs = float64(m1.Mallocs-m0.Mallocs) / float64(n)
	return c
}

// scaleMutationCost is the CPU and allocation of n toggles with no watch
// open: the part of each update that is the test's own.
func scaleMutationCost(t *testing.T, toggle func(on bool) error, n int) scaleCost {
	t.Helper()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := scaleCPU()
	for k := 0; k < n; k++ {
		if err := toggle(k%2 == 0); err != nil {
			t.Fatalf("toggle: %v", err)
		}
	}
	cpu1 := scaleCPU()
	runtime.ReadMemStats(&m1)
	return scaleCost{
		cpu:     (cpu1 - cpu0) / time.Duration(n),
		alloc:   float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n),
		mallocs: float64(m1.Mallocs-m0.Mallocs) / float64(n),
	}
}

// scaleCosts measures the raw and the lameduck watch rounds times each,
// alternating which goes first, and returns the medians.
func scaleCosts(t *testing.T, cfg scaleConfig, raw, lameduck func() scaleWatch, toggle func(bool) error, settle time.Duration) (rawC, ldC, mut scaleCost) {
	t.Helper()
	if err := toggle(false); err != nil {
		t.Fatalf("toggle: %v", err)
	}
	mut = scaleMutationCost(t, toggle, cfg.updates)
	var rs, ls []scaleCost
	for round := 0; round < cfg.rounds; round++ {
		order := []string{"raw", "lameduck"}
		if round%2 == 1 {
			order = []string{"lameduck", "raw"}
		}
		for _, kind := range order {
			var c scaleCost
			if kind == "raw" {
				c = scaleMeasure(t, raw(), toggle, cfg.updates, settle)
				rs = append(rs, c)
			} else {
				c = scaleMeasure(t, lameduck(), toggle, cfg.updates, settle)
				ls = append(ls, c)
			}
			t.Logf("round %d %-8s heap %6d KB, per update: CPU %6s ms, alloc %6.0f KB, %7.0f allocs, wall %6s ms",
				round+1, kind, c.heap/1024, scaleMs(c.cpu), c.alloc/1024, c.mallocs, scaleMs(c.wallPerUpd))
		}
	}
	return scaleMedianCost(rs), scaleMedianCost(ls), mut
}

func scaleMedianCost(cs []scaleCost) scaleCost {
	med := func(f func(scaleCost) float64) float64 {
		v := make([]float64, len(cs))
		for k, c := range cs {
			v[k] = f(c)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return scaleCost{
		heap:       int64(med(func(c scaleCost) float64 { return float64(c.heap) })),
		cpu:        time.Duration(med(func(c scaleCost) float64 { return float64(c.cpu) })),
		alloc:      med(func(c scaleCost) float64 { return c.alloc }),
		mallocs:    med(func(c scaleCost) float64 { return c.mallocs }),
		wallPerUpd: time.Duration(med(func(c scaleCost) float64 { return float64(c.wallPerUpd) })),
	}
}

// scaleQuantile is the nearest-rank q-quantile of d.
func scaleQuantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	k := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(k, len(s)-1))]
}

func scaleMs(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
}

// scaleSeries is one way of timing the confirmations.
type scaleSeries struct {
	name    string
	samples []scaleSample
}

// scaleReport logs one size's results as tables and checks the targets.
func scaleReport(t *testing.T, backend string, n int, series []scaleSeries, rawC, ldC, mut scaleCost, largest bool) {
	t.Helper()
	var b strings.Builder
	var gaps []string
	for _, sr := range series {
		var ld, rw, gap []time.Duration
		for _, s := range sr.samples {
			ld, rw, gap = append(ld, s.lameduck), append(rw, s.raw), append(gap, s.lameduck-s.raw)
		}
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(&b, "\n%s, %d instances, %s: confirmation over %d deregistrations (ms from the Deregister call)\n", backend, n, sr.name, len(sr.samples))
		fmt.Fprintln(tw, "\tp50\tp90\tmin\tmax\t")
		for _, row := range []struct {
			name string
			d    []time.Duration
		}{{"raw watch", rw}, {"lameduck WatchGone", ld}, {"gap (lameduck - raw)", gap}} {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", row.name, scaleMs(scaleQuantile(row.d, .5)), scaleMs(scaleQuantile(row.d, .9)),
				scaleMs(slices.Min(row.d)), scaleMs(slices.Max(row.d)))
		}
		tw.Flush()
		g := scaleQuantile(gap, .5)
		gaps = append(gaps, fmt.Sprintf("%s %s (%s ms)", sr.name, scaleMet(g <= scaleGapTarget), scaleMs(g)))
	}
	net := func(c scaleCost) scaleCost {
		c.cpu -= mut.cpu
		c.alloc -= mut.alloc
		c.mallocs -= mut.mallocs
		return c
	}
	r, l := net(rawC), net(ldC)
	fmt.Fprintf(&b, "\n%s, %d instances: cost of watching (medians; per update, net of the change's own cost: %s ms CPU, %.0f KB)\n",
		backend, n, scaleMs(mut.cpu), mut.alloc/1024)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\theap KB\tCPU ms/update\talloc KB/update\tallocs/update\twall ms/update\t")
	for _, row := range []struct {
		name string
		c    scaleCost
	}{{"raw watch", r}, {"lameduck", l}} {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%.0f\t%s\t\n", row.name, row.c.heap/1024, scaleMs(row.c.cpu), row.c.alloc/1024, row.c.mallocs, scaleMs(row.c.wallPerUpd))
	}
	ratio := func(a, b float64) string {
		if b <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	fmt.Fprintf(tw, "lameduck / raw\t%s\t%s\t%s\t%s\t\t\n", ratio(float64(l.heap), float64(r.heap)),
		ratio(float64(l.cpu), float64(r.cpu)), ratio(l.alloc, r.alloc), ratio(l.mallocs, r.mallocs))
	tw.Flush()
	if largest {
		fmt.Fprintf(&b, "target: median gap within %v: %s; heap under %.0fx the raw watch's: %s (%s)\n",
			scaleGapTarget, strings.Join(gaps, ", "),
			scaleHeapTarget, scaleMet(r.heap > 0 && float64(l.heap) < scaleHeapTarget*float64(r.heap)), ratio(float64(l.heap), float64(r.heap)))
	}
	t.Log(b.String())
}

func scaleMet(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// ---- Consul ----

// TestScaleConsul: see the top of this file.
func TestScaleConsul(t *testing.T) {
	cfg := scaleSetup(t)
	needConsul(t)
	for k, n := range cfg.sizes {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			scaleConsulSize(t, cfg, n, k == len(cfg.sizes)-1)
		})
	}
}

// scaleConsulAPI is a Consul SDK client with a connection pool of its own,
// whose idle connections are closed at the end of the test.
func scaleConsulAPI(t *testing.T, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	tr := api.DefaultConfig().Transport
	cfg.Transport = tr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("consul api client: %v", err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

func scaleConsulSize(t *testing.T, cfg scaleConfig, n int, largest bool) {
	svc := fmt.Sprintf("lameduck-scale-%d-%d", n, time.Now().UnixNano()%1e6)
	admin := scaleConsulAPI(t, consulAddr())
	scalePopulateConsul(t, admin, svc, n-1) // lameduck's own instance makes n

	// Confirmation latency, straight to the agent, then through a proxy that
	// gives both watches one response at the same moment.
	direct := scaleConsulConfirm(t, cfg, svc, consulAddr(), 0)
	fan := newScaleFanout(t, consulAddr())
	fanned := scaleConsulConfirm(t, cfg, svc, fan.addr, 100)
	t.Logf("fan-out: %d of the blocking queries that returned were shared by both watches", fan.shared.Load())

	// Cost of watching, one watch at a time.
	toggleID := svc + "-toggle"
	toggle := func(on bool) error {
		if on {
			_, err := admin.Catalog().Register(&api.CatalogRegistration{
				Node: svc + "-node-0", Address: scaleAddr(0), SkipNodeUpdate: true,
				Service: &api.AgentService{ID: toggleID, Service: svc, Address: "127.0.0.2", Port: 9999, Tags: scaleTags(), Meta: scaleMeta()},
			}, nil)
			return err
		}
		_, err := admin.Catalog().Deregister(&api.CatalogDeregistration{Node: svc + "-node-0", ServiceID: toggleID}, nil)
		return err
	}
	watched := registry.Instance{Service: svc, ID: svc + "-1", Address: scaleAddr(1), Port: 8080}
	toggleInst := registry.Instance{Service: svc, ID: toggleID, Address: "127.0.0.2", Port: 9999}
	rawC, ldC, mut := scaleCosts(t, cfg,
		func() scaleWatch {
			return &scaleRawConsulWatch{c: scaleConsulAPI(t, consulAddr()), svc: svc, toggleID: toggleID}
		},
		func() scaleWatch {
			return &scaleLameduckWatch{r: newConsul(t), watched: watched, toggle: toggleInst}
		},
		toggle, 200*time.Millisecond)
	_ = toggle(false)
	scaleReport(t, "consul", n, []scaleSeries{
		{"to the agent", direct},
		{"one response to both (fan-out proxy)", fanned},
	}, rawC, ldC, mut, largest)
}

// scaleConsulConfirm times cfg.samples deregistrations on lameduck's
// WatchGone and on a raw watch that runs all along, both through the agent
// (or proxy) at addr. Targets use ports from 30000+offset.
func scaleConsulConfirm(t *testing.T, cfg scaleConfig, svc, addr string, offset int) []scaleSample {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var probe atomic.Pointer[scaleProbe]
	raw := &scaleRawConsul{c: scaleConsulAPI(t, addr), svc: svc, onList: func(entries []*api.ServiceEntry) {
		if p := probe.Load(); p != nil {
			id := consul.ServiceID(p.inst)
			p.see(slices.ContainsFunc(entries, func(e *api.ServiceEntry) bool { return e.Service != nil && e.Service.ID == id }), time.Now())
		}
	}}
	first := make(chan struct{})
	go raw.run(ctx, first)
	<-first
	r := newConsul(t, consul.WithAddress(addr))
	var samples []scaleSample
	for k := 0; k < cfg.samples; k++ {
		inst := registry.Instance{
			Service: svc, ID: fmt.Sprintf("%s-target-%d", svc, offset+k), Address: "127.0.0.1", Port: 30000 + offset + k,
			Tags: scaleTags(), Metadata: scaleMeta(),
		}
		if s, ok := scaleConfirmOnce(t, r, inst, func(p *scaleProbe) { probe.Store(p) }, 200*time.Millisecond); ok {
			samples = append(samples, s)
		}
	}
	cancel()
	<-raw.done
	_ = r.Close()
	if len(samples) == 0 {
		t.Fatal("no deregistration was measured")
	}
	return samples
}

// scaleFanout is a loopback proxy in front of the Consul agent. It sends
// blocking queries that are the same (path, index, passing filter) upstream
// once, and gives every caller waiting on it the same response at the same
// moment; anything else it passes through. Behind it, both watches learn of
// a change at once, so their gap is their own processing, not the order in
// which the agent answers its watchers.
type scaleFanout struct {
	addr   string
	up     string
	proxy  *httputil.ReverseProxy
	client *http.Client
	ctx    context.Context

	mu       sync.Mutex
	inflight map[string]*scaleFanCall
	shared   atomic.Int64 // responses given to more than one caller
}

type scaleFanCall struct {
	done    chan struct{}
	callers int
	status  int
	header  http.Header
	body    []byte
	err     error
}

func newScaleFanout(t *testing.T, upstream string) *scaleFanout {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: upstream}
	ctx, cancel := context.WithCancel(context.Background())
	f := &scaleFanout{
		up: u.String(), proxy: httputil.NewSingleHostReverseProxy(u), ctx: ctx,
		client:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
		inflight: map[string]*scaleFanCall{},
	}
	srv := httptest.NewServer(f)
	f.addr = strings.TrimPrefix(srv.URL, "http://")
	t.Cleanup(func() {
		cancel()
		srv.Close()
		f.client.CloseIdleConnections()
	})
	return f
}

func (f *scaleFanout) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/v1/health/service/") || q.Get("index") == "" {
		f.proxy.ServeHTTP(w, r)
		return
	}
	key := r.URL.Path + "?index=" + q.Get("index") + "&passing=" + q.Get("passing")
	f.mu.Lock()
	c := f.inflight[key]
	if c == nil {
		c = &scaleFanCall{done: make(chan struct{})}
		f.inflight[key] = c
		go f.fetch(key, c, r.URL.RequestURI())
	}
	c.callers++
	f.mu.Unlock()
	select {
	case <-c.done:
	case <-r.Context().Done():
		f.mu.Lock()
		c.callers--
		f.mu.Unlock()
		return
	}
	if c.err != nil {
		http.Error(w, c.err.Error(), http.StatusBadGateway)
		return
	}
	for k, v := range c.header {
		switch k {
		case "Content-Length", "Content-Encoding", "Connection", "Transfer-Encoding":
		default:
			w.Header()[k] = v
		}
	}
	w.WriteHeader(c.status)
	_, _ = w.Write(c.body)
}

func (f *scaleFanout) fetch(key string, c *scaleFanCall, uri string) {
	defer close(c.done)
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.up+uri, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = f.client.Do(req); err == nil {
			c.status, c.header = resp.StatusCode, resp.Header
			c.body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
	}
	c.err = err
	f.mu.Lock()
	delete(f.inflight, key)
	if c.callers > 1 {
		f.shared.Add(1)
	}
	f.mu.Unlock()
}

// scalePopulateConsul registers n synthetic instances of svc in the catalog,
// 100 per synthetic node, with no checks (so passing), and removes the
// nodes at the end.
func scalePopulateConsul(t *testing.T, c *api.Client, svc string, n int) {
	t.Helper()
	const perNode = 100
	nodes := (n + perNode - 1) / perNode
	t.Cleanup(func() {
		for k := 0; k < nodes; k++ {
			if _, err := c.Catalog().Deregister(&api.CatalogDeregistration{Node: fmt.Sprintf("%s-node-%d", svc, k)}, nil); err != nil {
				t.Logf("clean up node %d: %v", k, err)
			}
		}
	})
	began := time.Now()
	jobs := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				_, err := c.Catalog().Register(&api.CatalogRegistration{
					Node: fmt.Sprintf("%s-node-%d", svc, i/perNode), Address: scaleAddr(i / perNode), SkipNodeUpdate: i%perNode != 0,
					Service: &api.AgentService{
						ID: fmt.Sprintf("%s-%d", svc, i), Service: svc, Address: scaleAddr(i), Port: 8080,
						Tags: scaleTags(), Meta: scaleMeta(),
					},
				}, nil)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	// Each node's first service creates the node; send those first.
	for k := 0; k < nodes; k++ {
		jobs <- k * perNode
	}
	for i := 0; i < n; i++ {
		if i%perNode != 0 {
			jobs <- i
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("catalog register: %v", err)
	default:
	}
	entries, _, err := c.Health().Service(svc, "", true, nil)
	if err != nil || len(entries) != n {
		t.Fatalf("health list of %s: %d entries, want %d (%v)", svc, len(entries), n, err)
	}
	t.Logf("registered %d catalog instances of %s on %d nodes in %v", n, svc, nodes, time.Since(began).Round(time.Millisecond))
}

// scaleRawConsul is what a consumer on Consul's own SDK runs: blocking queries
// on the passing health list, keeping the last list it got.
type scaleRawConsul struct {
	c      *api.Client
	svc    string
	onList func([]*api.ServiceEntry)
	last   []*api.ServiceEntry
	done   chan struct{}
}

func (w *scaleRawConsul) run(ctx context.Context, first chan<- struct{}) {
	w.done = make(chan struct{})
	defer close(w.done)
	var idx uint64
	for ctx.Err() == nil {
		entries, meta, err := w.c.Health().Service(w.svc, "", true, (&api.QueryOptions{WaitIndex: idx}).WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		if meta.LastIndex < idx {
			idx = 0
		} else {
			idx = meta.LastIndex
		}
		w.last = entries
		w.onList(entries)
		if first != nil {
			close(first)
			first = nil
		}
	}
}

// scaleRawConsulWatch measures scaleRawConsul.
type scaleRawConsulWatch struct {
	c        *api.Client
	svc      string
	toggleID string
	w        *scaleRawConsul
	cancel   context.CancelFunc
	seen     atomic.Pointer[chan<- bool]
}

func (rw *scaleRawConsulWatch) open(ctx context.Context) error {
	ctx, rw.cancel = context.WithCancel(ctx)
	rw.w = &scaleRawConsul{c: rw.c, svc: rw.svc, onList: func(entries []*api.ServiceEntry) {
		if ch := rw.seen.Load(); ch != nil {
			*ch <- slices.ContainsFunc(entries, func(e *api.ServiceEntry) bool { return e.Service != nil && e.Service.ID == rw.toggleID })
		}
	}}
	first := make(chan struct{})
	go rw.w.run(ctx, first)
	select {
	case <-first:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (rw *scaleRawConsulWatch) follow(_ context.Context, seen chan<- bool) error {
	rw.seen.Store(&seen)
	return nil
}

func (rw *scaleRawConsulWatch) close() {
	if rw.cancel != nil {
		rw.cancel()
		<-rw.w.done
	}
}

// scaleLameduckWatch measures lameduck's watch on r. The heap is taken with
// what Offline runs, registry.WatchGone and Wait, on an instance that stays;
// the updates are counted on the loop Wait runs (GoneWatch.waitOwn: Next,
// then Contains), on a watch of its own, since Wait says nothing until the
// instance goes.
type scaleLameduckWatch struct {
	r       registry.Registry
	watched registry.Instance // an instance that stays
	toggle  registry.Instance

	g      *registry.GoneWatch
	cancel context.CancelFunc
	done   chan struct{}
}

func (lw *scaleLameduckWatch) open(ctx context.Context) error {
	g, err := registry.WatchGone(ctx, lw.r, lw.watched, registry.GoneOptions{})
	if err != nil {
		return err
	}
	if !g.Listed() {
		g.Stop()
		return fmt.Errorf("lameduck's first list lacks %s", lw.watched.Key())
	}
	lw.g = g
	wctx, cancel := context.WithCancel(ctx)
	lw.cancel, lw.done = cancel, make(chan struct{})
	go func() { defer close(lw.done); _ = g.Wait(wctx) }()
	return nil
}

func (lw *scaleLameduckWatch) stopGone() {
	if lw.g != nil {
		lw.cancel()
		<-lw.done
		lw.g.Stop()
		lw.g = nil
	}
}

func (lw *scaleLameduckWatch) follow(ctx context.Context, seen chan<- bool) error {
	lw.stopGone()
	w, err := lw.r.Watch(ctx, lw.watched.Service)
	if err != nil {
		return err
	}
	list, err := w.Next(ctx)
	if err != nil {
		_ = w.Stop()
		return err
	}
	_ = registry.Contains(list, lw.watched)
	wctx, cancel := context.WithCancel(ctx)
	lw.cancel, lw.done = cancel, make(chan struct{})
	go func() {
		defer close(lw.done)
		defer w.Stop()
		for {
			list, err := w.Next(wctx)
			if err != nil {
				return
			}
			_ = registry.Contains(list, lw.watched) // what waitOwn does with each list
			seen <- registry.Contains(list, lw.toggle)
		}
	}()
	return nil
}

func (lw *scaleLameduckWatch) close() {
	lw.stopGone()
	if lw.cancel != nil {
		lw.cancel()
		<-lw.done
	}
	if c, ok := lw.r.(io.Closer); ok {
		_ = c.Close()
	}
}

// ---- Nacos ----

// TestScaleNacos: see the top of this file.
func TestScaleNacos(t *testing.T) {
	cfg := scaleSetup(t)
	needNacos(t)
	for k, n := range cfg.sizes {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			scaleNacosSize(t, cfg, n, k == len(cfg.sizes)-1)
		})
	}
}

// scaleNacosClient is a consumer's own naming client (see rawNacosClient),
// with a longer timeout for lists of thousands; the caller closes it.
func scaleNacosClient(t *testing.T) naming_client.INamingClient {
	t.Helper()
	return rawNacosClient(t, 10*time.Second)
}

func scaleNacosSize(t *testing.T, cfg scaleConfig, n int, largest bool) {
	// A lameduck backend first: it installs the SDK logger every client
	// here then keeps (see scaleNacosClient).
	r := newNacos(t)
	svc := fmt.Sprintf("lameduck-scale-%d-%d", n, time.Now().UnixNano()%1e6)
	scalePopulateNacos(t, svc, n-1, cfg.nacosPerClient)

	var probe atomic.Pointer[scaleProbe]
	rawC := scaleNacosClient(t)
	raw, err := scaleSubscribeNacos(rawC, svc, func(hosts []model.Instance) {
		if p := probe.Load(); p != nil {
			p.see(slices.ContainsFunc(hosts, func(h model.Instance) bool { return scaleNacosRoutable(h) && scaleNacosIs(h, p.inst) }), time.Now())
		}
	})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	var samples []scaleSample
	for k := 0; k < cfg.samples; k++ {
		inst := registry.Instance{
			Service: svc, ID: fmt.Sprintf("%s-target-%d", svc, k), Address: "127.0.0.1", Port: 30000 + k, Metadata: scaleMeta(),
		}
		if s, ok := scaleConfirmOnce(t, r, inst, func(p *scaleProbe) { probe.Store(p) }, 1500*time.Millisecond); ok {
			samples = append(samples, s)
		}
	}
	_ = rawC.Unsubscribe(raw.param)
	rawC.CloseClient()
	_ = r.Close()
	if len(samples) == 0 {
		t.Fatal("no deregistration was measured")
	}

	mutator := scaleNacosClient(t)
	defer mutator.CloseClient()
	toggleInst := registry.Instance{Service: svc, Address: "127.0.0.2", Port: 9999}
	toggle := func(on bool) error {
		var ok bool
		var err error
		if on {
			ok, err = mutator.RegisterInstance(vo.RegisterInstanceParam{
				Ip: toggleInst.Address, Port: uint64(toggleInst.Port), Weight: 1, Enable: true, Healthy: true, Ephemeral: true,
				Metadata: scaleMeta(), ServiceName: svc, ClusterName: "DEFAULT",
			})
		} else {
			ok, err = mutator.DeregisterInstance(vo.DeregisterInstanceParam{
				Ip: toggleInst.Address, Port: uint64(toggleInst.Port), Cluster: "DEFAULT", ServiceName: svc, Ephemeral: true,
			})
		}
		if err == nil && !ok {
			err = errors.New("refused")
		}
		return err
	}
	watched := registry.Instance{Service: svc, Address: scaleAddr(1), Port: 8080}
	rawCost, ldCost, mut := scaleCosts(t, cfg,
		func() scaleWatch { return &scaleRawNacosWatch{c: scaleNacosClient(t), svc: svc, toggle: toggleInst} },
		func() scaleWatch {
			return &scaleLameduckWatch{r: newNacos(t), watched: watched, toggle: toggleInst}
		},
		toggle, time.Second)
	_ = toggle(false)
	scaleReport(t, "nacos", n, []scaleSeries{{"to the server", samples}}, rawCost, ldCost, mut, largest)
}

// scaleNacosRoutable is what SelectInstances(HealthyOnly) keeps.
func scaleNacosRoutable(h model.Instance) bool { return h.Enable && h.Healthy && h.Weight > 0 }

func scaleNacosIs(h model.Instance, i registry.Instance) bool {
	return h.Ip == i.Address && int(h.Port) == i.Port
}

// scalePopulateNacos publishes n ephemeral instances of svc, perClient to a
// client, and closes the clients (which removes the instances) at the end.
func scalePopulateNacos(t *testing.T, svc string, n, perClient int) {
	t.Helper()
	began := time.Now()
	for from := 0; from < n; from += perClient {
		c := scaleNacosClient(t)
		t.Cleanup(c.CloseClient)
		var batch []vo.RegisterInstanceParam
		for i := from; i < min(n, from+perClient); i++ {
			batch = append(batch, vo.RegisterInstanceParam{
				Ip: scaleAddr(i), Port: 8080, Weight: 1, Enable: true, Healthy: true, Ephemeral: true,
				Metadata: scaleMeta(), ClusterName: "DEFAULT", ServiceName: svc,
			})
		}
		ok, err := c.BatchRegisterInstance(vo.BatchRegisterInstanceParam{ServiceName: svc, Instances: batch})
		if err != nil || !ok {
			t.Fatalf("batch register %d instances from one client: ok=%v, %v", len(batch), ok, err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := scaleNacosCount(svc)
		if err == nil && got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Nacos lists %d instances of %s, want %d (%v)", got, svc, n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("registered %d ephemeral instances of %s from %d clients in %v", n, svc, (n+perClient-1)/perClient, time.Since(began).Round(time.Millisecond))
}

// scaleNacosCount asks the admin API how many healthy, enabled instances svc
// has, without subscribing a client in this process.
func scaleNacosCount(svc string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	eps, err := nacosServerView(nacosAddr())(ctx, svc)
	return len(eps), err
}

// scaleRawNacos is what a consumer on nacos-sdk-go runs: Subscribe. It
// keeps nothing of its own: the SDK's cache, which SelectInstances reads, is
// its list. (Keeping the callback's slice would hold a second copy after a
// push that changes nothing, which replaces the cache's.)
type scaleRawNacos struct{ param *vo.SubscribeParam }

func scaleSubscribeNacos(c naming_client.INamingClient, svc string, onList func([]model.Instance)) (*scaleRawNacos, error) {
	w := &scaleRawNacos{}
	w.param = &vo.SubscribeParam{ServiceName: svc, GroupName: constant.DEFAULT_GROUP, SubscribeCallback: func(hosts []model.Instance, err error) {
		if err == nil {
			onList(hosts)
		}
	}}
	return w, c.Subscribe(w.param)
}

// scaleRawNacosWatch measures scaleRawNacos.
type scaleRawNacosWatch struct {
	c      naming_client.INamingClient
	svc    string
	toggle registry.Instance
	w      *scaleRawNacos
	seen   atomic.Pointer[chan<- bool]
}

func (rw *scaleRawNacosWatch) open(ctx context.Context) error {
	first := make(chan struct{})
	var once sync.Once
	w, err := scaleSubscribeNacos(rw.c, rw.svc, func(hosts []model.Instance) {
		once.Do(func() { close(first) })
		if ch := rw.seen.Load(); ch != nil {
			*ch <- slices.ContainsFunc(hosts, func(h model.Instance) bool { return scaleNacosRoutable(h) && scaleNacosIs(h, rw.toggle) })
		}
	})
	if err != nil {
		return err
	}
	rw.w = w
	select {
	case <-first:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (rw *scaleRawNacosWatch) follow(_ context.Context, seen chan<- bool) error {
	rw.seen.Store(&seen)
	return nil
}

func (rw *scaleRawNacosWatch) close() {
	if rw.w != nil {
		_ = rw.c.Unsubscribe(rw.w.param)
	}
	rw.c.CloseClient()
}

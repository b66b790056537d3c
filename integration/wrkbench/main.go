// Command wrkbench measures drain.Tracker and httpdrain.Middleware under a
// real HTTP load tool, wrk, at the highest request rate the machine reaches,
// against a bare handler in the same run. `make bench-wrk` runs it through
// run.sh, which installs wrk first when it is missing; BENCHMARKS.md ("HTTP
// middleware under wrk") shows the last results.
//
//	go run ./integration/wrkbench -rounds 5 -d 5s -c 32 -t 1
//
// It serves one trivial handler (200, "ok") on three loopback ports:
//
//	bare        the handler alone
//	tracker     the handler between a drain.Tracker's Begin and End
//	middleware  httpdrain.Middleware(tracker)(handler), default options
//	bare2       the handler alone again, on its own port: the A/A control,
//	            whose "ratio to bare" is the noise floor (-control=false
//	            leaves it out)
//
// and runs wrk against each in turn, -rounds times, interleaved (each round
// starts one variant later, so no variant always runs first), so that noise
// from other work on the machine falls on all of them alike. It prints every
// run, then a table of medians with the ratio of throughput to bare, the
// latency added to bare's, and the server's CPU time per request (this
// process's user and system time over the run, divided by wrk's request
// count; on Unix only), which other work on the machine disturbs less than
// throughput.
//
// wrk and the server share the machine's cores: nothing is pinned, wrk runs
// -t threads and the server runs with Go's default GOMAXPROCS. The rate is
// that of the pair, client included, not of the server alone.
//
// After each run it checks that the variant's tracker is back to 0 in
// flight, that it counted the requests wrk counted (no fewer, and at most
// one more per connection: requests cut off when wrk stops), and that the
// other trackers did not move; and that wrk saw no non-2xx answer and few
// socket errors. A failed check exits 1, so a middleware that fell out of
// the path fails loudly. Bad flags exit 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/httpdrain"
)

// config is the parsed command line.
type config struct {
	rounds  int
	dur     time.Duration
	warmup  time.Duration
	conns   int
	threads int
	wrk     string
	addr    string
	control bool
}

func main() {
	var c config
	fs := flag.NewFlagSet("wrkbench", flag.ContinueOnError)
	fs.IntVar(&c.rounds, "rounds", 5, "rounds; each runs wrk once against every variant")
	fs.DurationVar(&c.dur, "d", 5*time.Second, "duration of each wrk run (wrk -d)")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "one unmeasured wrk run of this length per variant first (0: none)")
	fs.IntVar(&c.conns, "c", 32, "connections (wrk -c)")
	fs.IntVar(&c.threads, "t", 1, "wrk threads (wrk -t)")
	fs.StringVar(&c.wrk, "wrk", "wrk", "the wrk binary")
	fs.BoolVar(&c.control, "control", true, "also run bare2, a second bare handler, to show the noise floor")
	fs.StringVar(&c.addr, "addr", "127.0.0.1", "loopback address to serve on (127.0.0.0/8 or ::1 only)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "wrkbench:", err)
		os.Exit(2)
	}
	if err := run(c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "wrkbench: FAIL:", err)
		os.Exit(1)
	}
}

func (c config) check() error {
	switch {
	case c.rounds < 1:
		return errors.New("-rounds must be at least 1")
	case c.dur < time.Second:
		return errors.New("-d must be at least 1s")
	case c.warmup != 0 && c.warmup < time.Second:
		return errors.New("-warmup must be 0 or at least 1s")
	case c.threads < 1 || c.conns < c.threads:
		return errors.New("-t must be at least 1 and -c at least -t")
	}
	ip := net.ParseIP(c.addr)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %q is not a loopback address", c.addr)
	}
	return nil
}

// variant is one way of serving the handler.
type variant struct {
	name string
	tr   *drain.Tracker // nil for bare
	url  string
	srv  *http.Server
	open atomic.Int64 // connections accepted and not yet closed
	runs []result
}

// countingListener counts the connections it accepts until they close, so
// that a run can wait for the server to finish with the last one's
// requests: when wrk stops, requests it already sent may still be in the
// socket, and the server reads and serves them after wrk has gone.
type countingListener struct {
	net.Listener
	open *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("accepted a %T, want a *net.TCPConn", c)
	}
	l.open.Add(1)
	return &countedConn{TCPConn: tc, open: l.open}, nil
}

// countedConn embeds the *net.TCPConn itself, so that every method the
// HTTP server looks for (ReadFrom, CloseWrite) is still there; only Close
// is added to, once per connection, never per request.
type countedConn struct {
	*net.TCPConn
	open   *atomic.Int64
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		defer c.open.Add(-1)
	}
	return c.TCPConn.Close()
}

// ok is the handler every variant serves: a few bytes, headers set so that
// net/http sniffs nothing.
func ok(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h["Content-Type"] = []string{"text/plain"}
	h["Content-Length"] = []string{"2"}
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "ok")
}

func newVariants(addr string, control bool) ([]*variant, error) {
	bare := http.HandlerFunc(ok)
	var trTracker, mwTracker drain.Tracker
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := trTracker.Begin()
		defer req.End()
		bare.ServeHTTP(w, r)
	})
	mw, err := httpdrain.Middleware(&mwTracker)
	if err != nil {
		return nil, err
	}
	vs := []*variant{
		{name: "bare"},
		{name: "tracker", tr: &trTracker},
		{name: "middleware", tr: &mwTracker},
	}
	handlers := []http.Handler{bare, counted, mw(bare)}
	if control {
		vs = append(vs, &variant{name: "bare2"})
		handlers = append(handlers, bare)
	}
	for i, v := range vs {
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			closeAll(vs)
			return nil, err
		}
		v.url = "http://" + ln.Addr().String() + "/"
		v.srv = &http.Server{Handler: handlers[i], ReadHeaderTimeout: 10 * time.Second}
		go v.srv.Serve(countingListener{Listener: ln, open: &v.open})
	}
	return vs, nil
}

func closeAll(vs []*variant) {
	for _, v := range vs {
		if v.srv != nil {
			v.srv.Close()
		}
	}
}

func run(c config, out io.Writer) error {
	wrkVersion, err := wrkVersion(c.wrk)
	if err != nil {
		return err
	}
	vs, err := newVariants(c.addr, c.control)
	if err != nil {
		return err
	}
	defer closeAll(vs)
	fmt.Fprintf(out, "wrkbench: %s; wrk -t%d -c%d -d%s --latency, %d rounds (+%s warm-up each)\n",
		wrkVersion, c.threads, c.conns, c.dur, c.rounds, c.warmup)
	fmt.Fprintf(out, "server: %s, GOMAXPROCS=%d, NumCPU=%d; wrk and the server share the cores, nothing pinned\n",
		runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU())

	if c.warmup > 0 {
		for _, v := range vs {
			if _, err := measure(c, vs, v, c.warmup); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	for round := range c.rounds {
		for i := range vs {
			v := vs[(round+i)%len(vs)]
			r, err := measure(c, vs, v, c.dur)
			if err != nil {
				return fmt.Errorf("round %d: %w", round+1, err)
			}
			v.runs = append(v.runs, r)
			fmt.Fprintf(out, "round %d %-10s %9.0f req/s  p50 %7.1f µs  p99 %7.1f µs  CPU/req server %5.2f µs, wrk %5.2f µs  %8d reqs%s\n",
				round+1, v.name, r.rps, us(r.p50), us(r.p99), r.perReq(r.srvCPU), r.perReq(r.wrkCPU), r.requests, r.note())
		}
	}
	report(out, vs)
	return nil
}

// measure runs wrk once against v and checks every tracker against wrk's
// count.
func measure(c config, vs []*variant, v *variant, d time.Duration) (result, error) {
	before := make([]uint32, len(vs))
	for i, o := range vs {
		if o.tr != nil {
			before[i] = o.tr.Stats().Started
		}
	}
	cpu0, cpuOK := processCPU()
	r, err := runWrk(c, v.url, d)
	if err != nil {
		return r, fmt.Errorf("%s: %w", v.name, err)
	}
	if r.non2xx > 0 {
		return r, fmt.Errorf("%s: wrk saw %d non-2xx answers", v.name, r.non2xx)
	}
	if r.sockErrs*100 > r.requests {
		return r, fmt.Errorf("%s: wrk saw %d socket errors in %d requests (over 1%%)", v.name, r.sockErrs, r.requests)
	}
	if r.requests == 0 {
		return r, fmt.Errorf("%s: wrk completed no request", v.name)
	}
	if err := closed(vs); err != nil {
		return r, fmt.Errorf("after %s: %w", v.name, err)
	}
	if cpu1, ok := processCPU(); ok && cpuOK {
		r.srvCPU = cpu1 - cpu0
	}
	for i, o := range vs {
		if o.tr == nil {
			continue
		}
		s, err := settled(o.tr)
		if err != nil {
			return r, fmt.Errorf("after %s: %s's tracker: %w", v.name, o.name, err)
		}
		// Started counts modulo 2^32; the difference is exact for fewer
		// than 2^32 requests per run.
		n := int64(s.Started - before[i])
		if o != v {
			if n != 0 {
				return r, fmt.Errorf("after %s: %s's tracker counted %d requests that were not its own", v.name, o.name, n)
			}
			continue
		}
		if n < r.requests || n > r.requests+int64(c.conns) {
			return r, fmt.Errorf("%s: the tracker counted %d requests, wrk %d (want %d to %d): the counting is not in the path",
				v.name, n, r.requests, r.requests, r.requests+int64(c.conns))
		}
		if s.LongLived != 0 || s.Late != 0 || s.Misuse != 0 || s.Draining {
			return r, fmt.Errorf("%s: tracker stats %+v, want no long-lived, late or misused request and no flag", v.name, s)
		}
		r.counted = n
	}
	return r, nil
}

// closed waits for every server to have closed all its connections, and
// so to have served every request that wrk sent.
func closed(vs []*variant) error {
	deadline := time.Now().Add(5 * time.Second)
	for _, v := range vs {
		for v.open.Load() != 0 {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still has %d connections open 5s after wrk ended", v.name, v.open.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// settled waits briefly for the tracker to reach 0 in flight: when wrk
// stops, the server may still be finishing the requests it cut off.
func settled(t *drain.Tracker) (drain.Stats, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		s := t.Stats()
		if s.InFlight == 0 {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("%d requests still in flight 2s after wrk ended", s.InFlight)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// result is what one wrk run measured.
type result struct {
	rps      float64
	p50, p99 time.Duration
	requests int64
	non2xx   int64
	sockErrs int64
	counted  int64 // requests the variant's tracker counted; 0 for bare
	// srvCPU is the CPU time this process (the servers) used from wrk's
	// start until the server closed wrk's last connection; 0 where it is
	// not measured. wrkCPU is wrk's own.
	srvCPU, wrkCPU time.Duration
}

// perReq returns d per completed request, in µs.
func (r result) perReq(d time.Duration) float64 { return us(d) / float64(r.requests) }

func (r result) note() string {
	var b strings.Builder
	if r.counted != 0 {
		fmt.Fprintf(&b, "  tracker counted %d (+%d)", r.counted, r.counted-r.requests)
	}
	if r.sockErrs != 0 {
		fmt.Fprintf(&b, "  socket errors %d", r.sockErrs)
	}
	return b.String()
}

func wrkVersion(bin string) (string, error) {
	if _, err := exec.LookPath(bin); err != nil {
		return "", fmt.Errorf("wrk not found (%w); run integration/wrkbench/run.sh, which installs it", err)
	}
	// wrk -v prints its version and exits non-zero.
	outb, _ := exec.Command(bin, "-v").CombinedOutput()
	line, _, _ := strings.Cut(string(outb), "\n")
	if v, _, ok := strings.Cut(line, " Copyright"); ok {
		line = v
	}
	if !strings.HasPrefix(line, "wrk ") {
		return "", fmt.Errorf("%s -v printed %q, not a wrk version", bin, line)
	}
	return strings.TrimSpace(line), nil
}

func runWrk(c config, url string, d time.Duration) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	secs := strconv.Itoa(int((d + time.Second/2) / time.Second))
	cmd := exec.CommandContext(ctx, c.wrk,
		"-t"+strconv.Itoa(c.threads), "-c"+strconv.Itoa(c.conns), "-d"+secs+"s", "--latency", url)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %w\n%s", err, outb)
	}
	r, err := parseWrk(string(outb))
	if err != nil {
		return r, fmt.Errorf("%w\nwrk printed:\n%s", err, outb)
	}
	r.wrkCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return r, nil
}

var (
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	rePct      = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	reNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses:\s+(\d+)`)
	reSockErrs = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

var timeUnits = map[string]time.Duration{
	"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour,
}

// parseWrk reads requests/sec, the request count, the 50th and 99th
// percentile latencies (from --latency), and errors from wrk's report.
func parseWrk(s string) (result, error) {
	var r result
	m := reRPS.FindStringSubmatch(s)
	if m == nil {
		return r, errors.New("no Requests/sec line in wrk's output")
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m = reRequests.FindStringSubmatch(s); m == nil {
		return r, errors.New(`no "N requests in" line in wrk's output`)
	}
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	for _, m := range rePct.FindAllStringSubmatch(s, -1) {
		f, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return r, fmt.Errorf("latency %q: %w", m[0], err)
		}
		d := time.Duration(f * float64(timeUnits[m[3]]))
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if r.p50 == 0 || r.p99 == 0 {
		return r, errors.New("no 50% and 99% lines in wrk's latency distribution (was --latency given?)")
	}
	if m = reNon2xx.FindStringSubmatch(s); m != nil {
		r.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m = reSockErrs.FindStringSubmatch(s); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.ParseInt(x, 10, 64)
			r.sockErrs += n
		}
	}
	return r, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// report prints a markdown table of medians. The ratio and the added
// latencies and CPU compare medians over all rounds; the per-round ratios
// compare each run with bare's run in the same round.
func report(out io.Writer, vs []*variant) {
	col := func(v *variant, f func(result) float64) []float64 {
		xs := make([]float64, len(v.runs))
		for i, r := range v.runs {
			xs[i] = f(r)
		}
		return xs
	}
	rps := func(r result) float64 { return r.rps }
	p50 := func(r result) float64 { return us(r.p50) }
	p99 := func(r result) float64 { return us(r.p99) }
	cpu := func(r result) float64 { return r.perReq(r.srvCPU) }
	bare := vs[0]
	bRPS, bP50, bP99, bCPU := median(col(bare, rps)), median(col(bare, p50)), median(col(bare, p99)), median(col(bare, cpu))
	cpuCell := func(m float64) string {
		if bCPU == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f µs", m)
	}

	rows := [][]string{{"variant", "req/s", "ratio to bare", "per-round ratio: median (range)",
		"p50", "added p50", "p99", "added p99", "server CPU/req", "added CPU/req"}}
	for _, v := range vs {
		mRPS, mP50, mP99, mCPU := median(col(v, rps)), median(col(v, p50)), median(col(v, p99)), median(col(v, cpu))
		if v == bare {
			rows = append(rows, []string{v.name, fmt.Sprintf("%.0f", mRPS), "1", "",
				fmt.Sprintf("%.1f µs", mP50), "", fmt.Sprintf("%.1f µs", mP99), "", cpuCell(mCPU), ""})
			continue
		}
		added := "n/a"
		if bCPU != 0 {
			added = fmt.Sprintf("%+.2f µs", mCPU-bCPU)
		}
		ratios := make([]float64, len(v.runs))
		for i, r := range v.runs {
			ratios[i] = r.rps / bare.runs[i].rps
		}
		rows = append(rows, []string{v.name, fmt.Sprintf("%.0f", mRPS), fmt.Sprintf("%.3f", mRPS/bRPS),
			fmt.Sprintf("%.3f (%.3f–%.3f)", median(ratios), slices.Min(ratios), slices.Max(ratios)),
			fmt.Sprintf("%.1f µs", mP50), fmt.Sprintf("%+.1f µs", mP50-bP50),
			fmt.Sprintf("%.1f µs", mP99), fmt.Sprintf("%+.1f µs", mP99-bP99), cpuCell(mCPU), added})
	}
	fmt.Fprintf(out, "\nmedians of %d rounds:\n\n", len(bare.runs))
	writeTable(out, rows)
}

// writeTable prints rows as a markdown table, the first row as its header,
// with columns padded to line up.
func writeTable(out io.Writer, rows [][]string) {
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			width[i] = max(width[i], utf8.RuneCountInString(cell))
		}
	}
	line := func(row []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, cell := range row {
			fmt.Fprintf(&b, " %s%s |", cell, strings.Repeat(" ", width[i]-utf8.RuneCountInString(cell)))
		}
		fmt.Fprintln(out, b.String())
	}
	line(rows[0])
	sep := make([]string, len(width))
	for i, n := range width {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, row := range rows[1:] {
		line(row)
	}
}

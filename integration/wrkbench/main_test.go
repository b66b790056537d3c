package main

import (
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
)

// wrkOut is wrk 4.1.0's report (Debian's build), with the error lines it
// adds when there are errors.
const wrkOut = `Running 1s test @ http://127.0.0.1:18089/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.51ms    1.31ms  14.35ms   82.07%
    Req/Sec    20.49k     2.23k   24.51k    80.00%
  Latency Distribution
     50%  811.00us
     75%    1.86ms
     90%    3.10ms
     99%    6.37ms
  20414 requests in 1.01s, 2.30MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 7
Requests/sec:  20260.33
Transfer/sec:      2.28MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkOut)
	if err != nil {
		t.Fatalf("parseWrk: want no error, got %v", err)
	}
	want := result{rps: 20260.33, p50: 811 * time.Microsecond, p99: 6370 * time.Microsecond,
		requests: 20414, non2xx: 7, sockErrs: 4}
	if r != want {
		t.Errorf("parseWrk: got %+v, want %+v", r, want)
	}
}

func TestParseWrkWithoutLatency(t *testing.T) {
	const noLatency = "  100 requests in 1.00s, 1.00KB read\nRequests/sec:    100.00\n"
	if _, err := parseWrk(noLatency); err == nil {
		t.Error("parseWrk without --latency: want an error, got none")
	}
}

// TestMeasureFailsWithoutCounting checks the sanity check: a variant whose
// tracker is not in the request path must fail the run.
func TestMeasureFailsWithoutCounting(t *testing.T) {
	if testing.Short() {
		t.Skip("runs wrk for 1s")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is not installed (integration/wrkbench/run.sh installs it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	v := &variant{name: "middleware", tr: new(drain.Tracker), url: "http://" + ln.Addr().String() + "/",
		srv: &http.Server{Handler: http.HandlerFunc(ok)}}
	go v.srv.Serve(ln)
	defer v.srv.Close()
	c := config{rounds: 1, dur: time.Second, conns: 4, threads: 1, wrk: "wrk", addr: "127.0.0.1"}
	_, err = measure(c, []*variant{v}, v, time.Second)
	if err == nil || !strings.Contains(err.Error(), "not in the path") {
		t.Errorf("measure with the tracker out of the path: want a \"not in the path\" error, got %v", err)
	}
}

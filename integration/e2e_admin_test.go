//go:build linux

// Linux only: the app's file limit is set through sh's ulimit and its open files are read from /proc.

package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/admin"
)

// TestAdminCannotStarveTheApp is issue 13's reproduction: examples/app under
// `ulimit -n 512`, 600 GET /wait long-polls held open on its admin port, and
// 500 requests, each on a connection of its own, to its own HTTP port. The
// admin port used to take a file descriptor per long-poll until the app's
// own listener failed with "accept4: too many open files" (430 of 500
// requests failed). Now none may fail, the long-polls beyond the cap are
// refused with 429, and the admin endpoint still takes the app offline.
func TestAdminCannotStarveTheApp(t *testing.T) {
	t.Parallel()
	const (
		fileLimit = 512
		longPolls = 600
		requests  = 500
		workers   = 50
	)
	bins := e2eBuild(t, "app")
	ports := e2ePorts(t, 3)
	httpAddr, grpcAddr, adminAddr := e2eEndpoint(ports[0]), e2eEndpoint(ports[1]), e2eEndpoint(ports[2])
	app := e2eStart(t, "app", "/bin/sh", "-c", `ulimit -n `+strconv.Itoa(fileLimit)+` && exec "$0" "$@"`, bins["app"],
		"-registry", "memory://", "-http", httpAddr, "-grpc", grpcAddr, "-admin", adminAddr, "-budget", "10s")
	e2eWaitListening(t, app, httpAddr, 30*time.Second)
	e2eWaitListening(t, app, adminAddr, 30*time.Second)
	if got := openFileLimit(t, app.pid()); got != fileLimit {
		t.Fatalf("app's open file limit: want %d, got %d", fileLimit, got)
	}

	// The long-polls, each on a connection of its own, as a careless
	// script (or an attacker) would hold them.
	var (
		dialed, refused, reached, other, broken atomic.Int32
		sent                                    sync.WaitGroup
		polls                                   sync.WaitGroup
		connsMu                                 sync.Mutex
		conns                                   []net.Conn
	)
	defer func() {
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		polls.Wait()
	}()
	// enough is closed once every long-poll beyond the cap is refused.
	enough := make(chan struct{})
	sent.Add(longPolls)
	polls.Add(longPolls)
	for range longPolls {
		go func() {
			defer polls.Done()
			conn, err := net.DialTimeout("tcp", adminAddr, 10*time.Second)
			if err == nil {
				connsMu.Lock()
				conns = append(conns, conn)
				connsMu.Unlock()
				_, err = fmt.Fprintf(conn, "GET /wait?phase=Offline&timeout=5m HTTP/1.1\r\nHost: %s\r\n\r\n", adminAddr)
			}
			if err != nil {
				broken.Add(1)
				sent.Done()
				return
			}
			dialed.Add(1)
			sent.Done()
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			switch {
			case err != nil:
				broken.Add(1)
			case resp.StatusCode == http.StatusTooManyRequests:
				if refused.Add(1) == longPolls-admin.DefaultMaxLongPolls {
					close(enough)
				}
			case resp.StatusCode == http.StatusOK:
				reached.Add(1)
			default:
				other.Add(1)
			}
		}()
	}
	if !waitGroupWithin(&sent, 60*time.Second) {
		t.Fatalf("long-polls: want all %d sent within 60s, got %d sent and %d broken", longPolls, dialed.Load(), broken.Load())
	}
	// The admin endpoint takes the long-polls it will take; the cap is the
	// default, so the rest are refused. Without a cap nothing is refused:
	// go on after a while anyway, to count what the app's port suffers.
	select {
	case <-enough:
	case <-time.After(10 * time.Second):
	}
	t.Logf("long-polls: %d sent, %d refused with 429, %d broken before the load", dialed.Load(), refused.Load(), broken.Load())

	// The app's own port, each request on a new connection, so that each
	// needs the app to accept one.
	var failed, peakFiles atomic.Int32
	var firstErr atomic.Value
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := openFiles(app.pid()); int32(n) > peakFiles.Load() {
				peakFiles.Store(int32(n))
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	jobs := make(chan int)
	var load sync.WaitGroup
	for range workers {
		load.Go(func() {
			for range jobs {
				resp, err := hc.Get("http://" + httpAddr + "/")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	for k := range requests {
		jobs <- k
	}
	close(jobs)
	load.Wait()
	close(stopSampling)
	<-sampled
	t.Logf("app port: %d of %d requests failed (first: %v); the app held at most %d files of %d",
		failed.Load(), requests, firstErr.Load(), peakFiles.Load(), fileLimit)
	if n := failed.Load(); n != 0 {
		t.Errorf("app port under %d admin long-polls: want 0 of %d requests failed, got %d (first: %v)", longPolls, requests, n, firstErr.Load())
	}
	if refused.Load() == 0 {
		t.Errorf("long-polls: want those beyond the cap (%d) refused with 429, got none refused of %d", admin.DefaultMaxLongPolls, longPolls)
	}

	// The admin endpoint still answers the one request that matters, and
	// the long-polls it holds get their answer.
	cl, err := admin.NewClient("http://" + adminAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Offline(ctx); err != nil {
		t.Fatalf("POST /offline with %d long-polls held: want it accepted, got %v", admin.DefaultMaxLongPolls, err)
	}
	if !app.wait(30 * time.Second) {
		t.Fatalf("app: want it to exit within 30s of POST /offline, got still running")
	}
	if code := app.exitCode(); code != 0 {
		t.Errorf("app: want exit 0 after POST /offline, got %d", code)
	}
	if !waitGroupWithin(&polls, 10*time.Second) {
		t.Fatalf("long-polls: want every one answered or closed within 10s of the app's exit")
	}
	t.Logf("long-polls: %d refused, %d reached %v, %d other answers, %d broken", refused.Load(), reached.Load(), drain.Offline, other.Load(), broken.Load())
	if reached.Load() == 0 {
		t.Errorf("long-polls: want the ones the endpoint held answered with 200 once Offline, got none (%d refused, %d broken)", refused.Load(), broken.Load())
	}
}

// waitGroupWithin waits up to d for wg and reports whether it finished.
func waitGroupWithin(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// openFiles is how many files pid has open now (0 once it has gone).
func openFiles(pid int) int {
	ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return len(ents)
}

// openFileLimit reads pid's soft limit on open files from /proc.
func openFileLimit(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		t.Fatalf("read limits of pid %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 5 && strings.HasPrefix(line, "Max open files") {
			n, err := strconv.Atoi(f[3])
			if err != nil {
				t.Fatalf("limits of pid %d: %q: %v", pid, line, err)
			}
			return n
		}
	}
	t.Fatalf("limits of pid %d: no \"Max open files\" line in\n%s", pid, b)
	return 0
}

// Package integration tests lameduck against real Consul and Nacos servers,
// which integration/scripts install and start on loopback (`make test` does
// both). In CI (CI=true) or with LAMEDUCK_INTEGRATION=1 a missing server
// fails the test; elsewhere it is skipped with a hint.
package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Server addresses, overridable like the scripts' ports.
func consulAddr() string { return envOr("CONSUL_HTTP_ADDR", "127.0.0.1:8500") }
func nacosAddr() string  { return envOr("NACOS_ADDR", "127.0.0.1:8848") }
func nacosUser() string  { return envOr("NACOS_USERNAME", "nacos") }
func nacosPass() string  { return envOr("NACOS_PASSWORD", "lameduck-nacos-pw") }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// required reports whether a missing server must fail the run.
func required() bool { return os.Getenv("CI") != "" || os.Getenv("LAMEDUCK_INTEGRATION") != "" }

// needServer fails (in CI) or skips (elsewhere) unless url answers 200.
func needServer(t *testing.T, name, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return
		}
		err = fmt.Errorf("status %s", resp.Status)
	}
	msg := fmt.Sprintf("%s is not reachable at %s (%v); start it with integration/scripts/start-%s.sh or run `make test`", name, url, err, name)
	if required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func needConsul(t *testing.T) {
	needServer(t, "consul", "http://"+consulAddr()+"/v1/status/leader")
}

func needNacos(t *testing.T) {
	needServer(t, "nacos", "http://"+nacosAddr()+"/nacos/v3/admin/core/state/readiness")
}

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	// Not 127.0.0.1:0: the kernel's ephemeral range is where every
	// outgoing connection (a load generator's, say) takes its source port,
	// so a port handed out there may be taken before the server binds it.
	return freePortSet(t, 0)
}

// portSets remembers the ports freePortSet handed out, so that two tests
// running at once never get the same.
var portSets struct {
	sync.Mutex
	taken map[int]bool
}

// freePortSet returns a port p such that p+off is free on loopback for
// every offset given, for servers that derive ports from a base (Nacos:
// gRPC at +1000). The ports are free when checked and never handed out
// twice in this process; the caller binds them soon after.
func freePortSet(t *testing.T, offsets ...int) int {
	t.Helper()
	portSets.Lock()
	defer portSets.Unlock()
	if portSets.taken == nil {
		portSets.taken = map[int]bool{}
	}
	free := func(p int) bool {
		if portSets.taken[p] {
			return false
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		ln.Close()
		return true
	}
	const lo, hi = 21000, 29000 // below the kernel's ephemeral range
	start := lo + rand.IntN(hi-lo)
	for k := 0; k < hi-lo; k += 37 {
		p := lo + (start-lo+k)%(hi-lo)
		ok := true
		for _, off := range offsets {
			ok = ok && free(p+off)
		}
		if ok {
			for _, off := range offsets {
				portSets.taken[p+off] = true
			}
			return p
		}
	}
	t.Fatalf("no free set of loopback ports at offsets %v", offsets)
	return 0
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

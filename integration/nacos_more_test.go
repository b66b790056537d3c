package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// privateNacos starts a Nacos of the test's own with the project's script,
// on ports nothing else uses, so that it can be stopped mid-test.
func privateNacos(t *testing.T) (addr string, stop func()) {
	t.Helper()
	port := nacosPorts(t)
	env := append(os.Environ(), "NACOS_PORT="+strconv.Itoa(port), "LAMEDUCK_RUN_DIR="+t.TempDir(),
		"NACOS_USERNAME="+nacosUser(), "NACOS_PASSWORD="+nacosPass())
	script := func(name string) error {
		cmd := exec.Command("./scripts/" + name)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", name, err, out)
		}
		return nil
	}
	if err := script("start-nacos.sh"); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			if err := script("stop-nacos.sh"); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(stop)
	return "127.0.0.1:" + strconv.Itoa(port), stop
}

// nacosPorts finds a main port whose derived ports (gRPC +1000 and +1001,
// raft -1000) are free too.
func nacosPorts(t *testing.T) int {
	t.Helper()
	free := func(p int) bool {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		ln.Close()
		return true
	}
	for p := 21000; p < 29000; p += 37 {
		if free(p) && free(p+1000) && free(p+1001) && free(p-1000) {
			return p
		}
	}
	t.Fatal("no free set of ports for a private Nacos")
	return 0
}

// A Nacos that stops mid-test yields a clear error, naming it, within the
// caller's deadline.
func TestNacosStoppedServerErrorsWithinDeadline(t *testing.T) {
	needNacos(t)
	addr, stop := privateNacos(t)
	r := newNacos(t, nacos.WithAddress(addr))
	in := registrytest.DefaultInstance(registrytest.UniqueService(t), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Register(ctx, in); err != nil {
		t.Fatalf("register while the server runs: %v", err)
	}
	stop()

	for _, c := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"deregister", func(ctx context.Context) error { return r.Deregister(ctx, in) }},
		{"register", func(ctx context.Context) error { return r.Register(ctx, in) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			const budget = 3 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			start := time.Now()
			err := c.call(ctx)
			took := time.Since(start)
			if err == nil {
				t.Fatalf("want an error from a stopped server, got nil")
			}
			if took > budget+time.Second {
				t.Fatalf("want the call to end within the %v deadline, it took %v", budget, took)
			}
			var re *registry.Error
			if !errors.As(err, &re) || !strings.Contains(err.Error(), addr) {
				t.Fatalf("want a *registry.Error naming %s, got %T: %v", addr, err, err)
			}
			t.Logf("%s after %v: %v", c.name, took.Round(time.Millisecond), err)
		})
	}
}

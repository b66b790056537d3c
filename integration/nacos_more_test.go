package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/nacos"
	"github.com/lameduck/lameduck/registry"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// privateNacos is a Nacos of the test's own, run by the project's scripts
// on ports nothing else uses, so that it can be stopped, and started again,
// mid-test. Its run directory lives as long as the test: a restart keeps
// the data (users, persistent state) and the auth secrets, as a restarted
// server keeps its disk, and loses what Nacos holds in memory (every
// ephemeral instance).
type privateNacos struct {
	t       *testing.T
	port    int
	runDir  string // LAMEDUCK_RUN_DIR; the scripts use runDir/nacos
	env     []string
	running bool
}

// startPrivateNacos starts a private Nacos and stops it when the test ends.
// Start-up takes 30-60 s on 2 cores.
func startPrivateNacos(t *testing.T) *privateNacos {
	t.Helper()
	port := nacosPorts(t)
	p := &privateNacos{t: t, port: port, runDir: t.TempDir()}
	p.env = append(os.Environ(), "NACOS_PORT="+strconv.Itoa(port), "LAMEDUCK_RUN_DIR="+p.runDir,
		"NACOS_USERNAME="+nacosUser(), "NACOS_PASSWORD="+nacosPass())
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *privateNacos) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

func (p *privateNacos) script(name string) error {
	cmd := exec.Command("./scripts/" + name)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", name, err, out)
	}
	return nil
}

// start starts the server and waits until the test user can log in.
func (p *privateNacos) start() {
	p.t.Helper()
	if err := p.script("start-nacos.sh"); err != nil {
		p.t.Fatal(err)
	}
	p.running = true
}

// stop stops the server (TERM, then KILL after 30 s); it may be called
// again.
func (p *privateNacos) stop() {
	if !p.running {
		return
	}
	p.running = false
	if err := p.script("stop-nacos.sh"); err != nil {
		p.t.Error(err)
	}
}

// loseNamingState deletes what the stopped server keeps of its naming data
// (the raft groups under data/protocol, which hold persistent instances and
// the metadata overrides such as an admin API disable, and data/naming),
// and keeps its users (data/derby-data): the next start is a server whose
// naming state lived on a volume that was lost, with its accounts in a
// database that was not.
func (p *privateNacos) loseNamingState() {
	p.t.Helper()
	if p.running {
		p.t.Fatal("privateNacos: loseNamingState needs a stopped server; call stop first")
	}
	for _, d := range []string{"protocol", "naming"} {
		if err := os.RemoveAll(filepath.Join(p.runDir, "nacos", "data", d)); err != nil {
			p.t.Fatalf("privateNacos: loseNamingState: %v", err)
		}
	}
}

// nacosPorts finds a main port whose derived ports (gRPC +1000 and +1001,
// raft -1000) are free too.
func nacosPorts(t *testing.T) int {
	t.Helper()
	return freePortSet(t, 0, 1000, 1001, -1000)
}

// A Nacos that stops mid-test yields a clear error, naming it, within the
// caller's deadline.
func TestNacosStoppedServerErrorsWithinDeadline(t *testing.T) {
	needNacos(t)
	p := startPrivateNacos(t)
	addr, stop := p.addr(), p.stop
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

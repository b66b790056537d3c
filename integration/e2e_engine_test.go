package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// Issue 12's promises, end to end with the built binaries: every way in
// drains through one engine under one budget.

// TestOfflineDeadRegistryBudget: `offline --budget 5s` against a registry
// nothing listens on is registry-unreachable, exit 3, and over by its
// budget, whether the instance is named by --addr or by --id (whose lookup
// is part of the budget).
func TestOfflineDeadRegistryBudget(t *testing.T) {
	t.Parallel()
	bins := e2eBuild(t, "lameduck")
	dead := "consul://" + e2eEndpoint(freePort(t))
	const budget = 5 * time.Second
	for _, name := range []string{"--addr", "--id"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			value := "127.0.0.1:8080"
			if name == "--id" {
				value = "web-1"
			}
			off := e2eStart(t, "offline", bins["lameduck"], "offline", "--registry", dead, "--service", "web",
				name, value, "--budget", budget.String(), "--output", "json")
			if !off.wait(budget + 10*time.Second) {
				t.Fatalf("offline: still running %v after its budget", 10*time.Second)
			}
			var res struct {
				Outcome    string `json:"outcome"`
				ExitCode   int    `json:"exit_code"`
				DurationMS int64  `json:"duration_ms"`
				Error      string `json:"error"`
			}
			if err := json.Unmarshal([]byte(off.stdout.String()), &res); err != nil {
				t.Fatalf("offline --output json: %v\n%s", err, off.output())
			}
			t.Logf("offline %s: %+v", name, res)
			if off.exitCode() != 3 || res.ExitCode != 3 || res.Outcome != "registry-unreachable" {
				t.Errorf("want exit 3, registry-unreachable, got exit %d, %+v", off.exitCode(), res)
			}
			// The command's own clock, from its start to its report.
			if limit := budget + 100*time.Millisecond; time.Duration(res.DurationMS)*time.Millisecond > limit {
				t.Errorf("want it over within %v, took %d ms", limit, res.DurationMS)
			}
			if !strings.Contains(res.Error, "connection refused") || !strings.Contains(res.Error, strings.TrimPrefix(dead, "consul://")) {
				t.Errorf("want the error to name the registry and the real cause (connection refused), got %q", res.Error)
			}
		})
	}
}

// TestPrestopDeadRegistryStillWatchesConnections: plain prestop whose only
// registry is dead, with an 8 s grace period, still watches the app's
// connections (the drain gets its share) and exits 3.
func TestPrestopDeadRegistryStillWatchesConnections(t *testing.T) {
	needConsul(t)
	t.Parallel()
	bins := e2eBuild(t, "lameduck", "plainapp")
	service := registrytest.UniqueService(t)
	apps := e2eStartPlainApps(t, bins["plainapp"], service, 1, e2ePlainIdle)
	target := apps[0]
	dead := "consul://" + e2eEndpoint(freePort(t))
	pre := e2eStart(t, "prestop", bins["lameduck"], "prestop", "--registry", dead, "--service", service,
		"--addr", target.endpoint(), "--port", strconv.Itoa(target.port), "--grace-period", "8s")
	if !pre.wait(20 * time.Second) {
		t.Fatalf("prestop: still running 20s after its start\n%s", pre.output())
	}
	t.Logf("prestop: %s\n%s", pre.describe(), pre.output())
	if code := pre.exitCode(); code != 3 {
		t.Errorf("want exit 3 (registry unreachable, drained), got %d", code)
	}
	if out := pre.output(); !strings.Contains(out, "waiting for the requests on port "+strconv.Itoa(target.port)) ||
		!strings.Contains(out, "no request on port "+strconv.Itoa(target.port)) {
		t.Errorf("want the progress to show the connections on port %d watched until quiet, got\n%s", target.port, out)
	}
	if strings.Contains(pre.output(), "gave up before the first count") {
		t.Errorf("want the connections counted, got a count cut before it began\n%s", pre.output())
	}
}

// TestLibraryAppHangingStreamBoundedByBudget: examples/app with a gRPC
// health Watch stream that never ends is offline within its budget (its
// gRPC hook stops hard at the deadline), and a second SIGTERM, sent while
// it waits in Stopping, ends it at once with exit 4.
func TestLibraryAppHangingStreamBoundedByBudget(t *testing.T) {
	t.Parallel()
	bins := e2eBuild(t, "app")
	const budget = 6 * time.Second
	for _, second := range []bool{false, true} {
		name := "deadline"
		if second {
			name = "second SIGTERM"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ports := e2ePorts(t, 3)
			app := e2eStart(t, "app", bins["app"], "-registry", "memory://", "-service", "web",
				"-http", e2eEndpoint(ports[0]), "-grpc", e2eEndpoint(ports[1]), "-admin", e2eEndpoint(ports[2]),
				"-budget", budget.String())
			e2eWaitListening(t, app, e2eEndpoint(ports[2]), 30*time.Second)
			conn, err := grpc.NewClient(e2eEndpoint(ports[1]), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			stream, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatalf("health Watch: want a first status, got %v", err)
			}
			start := time.Now()
			if err := app.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if !second {
				if !app.wait(budget + 5*time.Second) {
					t.Fatalf("app: want it offline within its %v budget, still running %v later", budget, time.Since(start))
				}
				took := time.Since(start)
				t.Logf("app exited %s after %v\n%s", app.describe(), took.Round(time.Millisecond), app.output())
				if code := app.exitCode(); code != 4 {
					t.Errorf("want exit 4 (the gRPC hook cut at the deadline), got %d", code)
				}
				if !strings.Contains(app.output(), `hook=grpc`) {
					t.Errorf("want the log to name the gRPC hook cut at the deadline, got\n%s", app.output())
				}
				return
			}
			waitPhase(t, &e2eApp{child: app, admin: ports[2]}, drain.Stopping)
			sent := time.Now()
			if err := app.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// Generous for a loaded machine; the budget still had seconds
			// to run, so a prompt exit is the second signal's doing.
			if !app.wait(2 * time.Second) {
				t.Fatalf("app: want the second SIGTERM to end it at once, still running %v later\n%s", time.Since(sent), app.output())
			}
			t.Logf("app exited %s %v after the second SIGTERM, %v into its %v budget",
				app.describe(), time.Since(sent).Round(time.Millisecond), time.Since(start).Round(time.Millisecond), budget)
			if code := app.exitCode(); code != 4 {
				t.Errorf("want exit 4 (forced), got %d\n%s", code, app.output())
			}
		})
	}
}

// runPhase matches `lameduck run`'s log line for a phase change.
var runPhase = regexp.MustCompile(`phase=(\w+) event=phase elapsed=(\S+)`)

// TestRunDrainingLastsTheConnectionWait: `lameduck run`'s Draining phase
// is its connection wait (it used to run as a stop hook, leaving Draining
// 0 s long): with a request still running, Draining lasts at least
// --conn-wait, the leftover request is reported in it, and Stopping
// (SIGTERM) comes after.
func TestRunDrainingLastsTheConnectionWait(t *testing.T) {
	t.Parallel()
	child := supChild(t)
	bins := e2eBuild(t, "lameduck")
	const connWait = 1500 * time.Millisecond
	port := e2ePorts(t, 1)[0]
	service := registrytest.UniqueService(t)
	ld := e2eStart(t, "lameduck run", bins["lameduck"], "run", "--registry", "memory://", "--service", service,
		"--port", strconv.Itoa(port), "--ready", "http://127.0.0.1:{port}/healthz", "--conn-wait", connWait.String(),
		"--", child, "-addr=127.0.0.1:{port}")
	deadline := time.Now().Add(supWait)
	for !strings.Contains(ld.stderr.String(), "lameduck run: registered") {
		if time.Now().After(deadline) || ld.exited() {
			t.Fatalf("lameduck run: not registered within %v (%s)\n%s", supWait, ld.describe(), ld.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + e2eEndpoint(port) + "/slow?ms=4000")
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	time.Sleep(200 * time.Millisecond) // the request is on its way; the wait below does not depend on it
	if err := ld.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !ld.wait(30 * time.Second) {
		t.Fatalf("lameduck run: still running 30s after SIGTERM\n%s", ld.output())
	}
	if err := <-slow; err != nil {
		t.Errorf("want the slow request answered by the child's own shutdown, got %v", err)
	}
	at := map[string]time.Duration{}
	for _, m := range runPhase.FindAllStringSubmatch(ld.stderr.String(), -1) {
		d, err := time.ParseDuration(m[2])
		if err != nil {
			t.Fatalf("elapsed %q: %v", m[2], err)
		}
		at[m[1]] = d
	}
	draining, okD := at["Draining"]
	stopping, okS := at["Stopping"]
	t.Logf("Draining at %v, Stopping at %v: Draining lasted %v (conn wait %v)", draining, stopping, stopping-draining, connWait)
	if !okD || !okS || stopping-draining < connWait {
		t.Errorf("want Draining to last at least the conn wait %v, got Draining at %v, Stopping at %v\n%s", connWait, draining, stopping, ld.output())
	}
	log := ld.stderr.String()
	busy, term := strings.Index(log, "conns-busy"), strings.Index(log, "signal=terminated")
	if busy < 0 || term < 0 || busy > term {
		t.Errorf("want the running request reported (conns-busy) before SIGTERM\n%s", ld.output())
	}
}

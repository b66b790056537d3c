package integration

import (
	"context"
	"encoding/json"
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

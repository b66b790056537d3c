package integration

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/pkg/conncount"
	"github.com/lameduck/lameduck/registry/registrytest"
)

// e2eResult is the JSON object `lameduck offline --output json` prints, as
// a script reading it sees it.
type e2eResult struct {
	Outcome  string `json:"outcome"`
	ExitCode int    `json:"exit_code"`
	Instance struct {
		ID      string `json:"id"`
		Address string `json:"address"`
		Port    int    `json:"port"`
	} `json:"instance"`
	DurationMS int64 `json:"duration_ms"`
	Registries []struct {
		Name             string `json:"name"`
		State            string `json:"state"`
		ConfirmLatencyMS int64  `json:"confirm_latency_ms"`
		Error            string `json:"error"`
	} `json:"registries"`
	AdminPhase   string `json:"admin_phase"`
	LateRequests int64  `json:"late_requests"`
	Error        string `json:"error"`
}

func e2eParseResult(t *testing.T, c *child) e2eResult {
	t.Helper()
	var res e2eResult
	if err := json.Unmarshal([]byte(c.stdout.String()), &res); err != nil {
		t.Fatalf("%s: want one JSON object on stdout, got %v\n%s", c.name, err, c.output())
	}
	return res
}

// An operator takes one instance of a lameduck app offline from outside,
// under load: `lameduck offline --admin` deregisters it, waits for Consul's
// confirmation, asks the app to go offline and follows its drain. The app
// then exits 0 by itself, and no request fails.
func TestOfflineWaitCommand(t *testing.T) {
	needConsul(t)
	t.Parallel()
	bins := e2eBuild(t, "lameduck", "app")
	service := registrytest.UniqueService(t)
	apps := e2eStartLibraryApps(t, bins["app"], service, 2)
	load := e2eStartLoad(t, service, 8, len(apps), apps[0].endpoint(), apps[1].endpoint())

	target := apps[0]
	start := time.Now()
	off := e2eStart(t, "offline", bins["lameduck"], "offline",
		"--registry", "consul://"+consulAddr(), "--service", service, "--id", target.id,
		"--admin", "http://"+e2eEndpoint(target.admin), "--output", "json")
	if !off.wait(60 * time.Second) {
		t.Fatalf("offline: want it done within 60s (its budget is 30s), still running\n%s", off.output())
	}
	took := time.Since(start)
	if !target.wait(30 * time.Second) {
		t.Fatalf("%s: want it to exit by itself once offline, still running 30s after the command ended", target.name)
	}
	load.keepGoing(t, time.Second)
	t.Logf("offline took %v (%s); stdout:\n%s", took.Round(time.Millisecond), off.describe(), off.stdout)

	if code := off.exitCode(); code != 0 {
		t.Errorf("offline: want exit code 0, got %s\n%s", off.describe(), off.output())
	}
	res := e2eParseResult(t, off)
	if res.Outcome != "drained" || res.ExitCode != 0 || res.Error != "" {
		t.Errorf("offline JSON: want outcome drained, exit_code 0, no error; got %q, %d, %q", res.Outcome, res.ExitCode, res.Error)
	}
	if res.Instance.ID != target.id || res.Instance.Port != target.port {
		t.Errorf("offline JSON: want instance %s on port %d, got %+v", target.id, target.port, res.Instance)
	}
	if len(res.Registries) != 1 || res.Registries[0].State != "confirmed" || !strings.Contains(res.Registries[0].Name, consulAddr()) {
		t.Errorf("offline JSON: want one registry, consul://%s, confirmed; got %+v", consulAddr(), res.Registries)
	}
	if res.AdminPhase != "Offline" {
		t.Errorf("offline JSON: want admin_phase Offline, got %q", res.AdminPhase)
	}
	if code := target.exitCode(); code != 0 {
		t.Errorf("%s: want exit code 0, got %s\n%s", target.name, target.describe(), target.output())
	}
	if e2eConsulHas(t, consulConsumer(t), service, target.endpoint()) {
		t.Errorf("want %s gone from Consul's passing list, still there", target.endpoint())
	}
	e2eCheckLoad(t, load, apps)
}

// A second registry that cannot be reached must not stop the drain: the
// command names it (with its address), exits 3 within its budget, and the
// instance is still out of the real Consul and drained.
func TestUnreachableRegistryStillDrains(t *testing.T) {
	needConsul(t)
	t.Parallel()
	const budget = 5 * time.Second
	const margin = 3 * time.Second // process start, a loaded machine
	dead := "consul://" + e2eEndpoint(freePort(t))

	t.Run("prestop-plain", func(t *testing.T) {
		t.Parallel()
		bins := e2eBuild(t, "lameduck", "plainapp")
		service := registrytest.UniqueService(t)
		apps := e2eStartPlainApps(t, bins["plainapp"], service, 2, e2ePlainIdle)
		load := e2eStartLoad(t, service, 8, len(apps), apps[0].endpoint(), apps[1].endpoint())
		target := apps[0]

		start := time.Now()
		pre := e2eStart(t, "prestop", bins["lameduck"], "prestop",
			"--registry", "consul://"+consulAddr(), "--registry", dead, "--service", service,
			"--addr", target.endpoint(), "--port", strconv.Itoa(target.port),
			"--grace-period", e2eGrace.String(), "--budget", budget.String(), "--quiet", "300ms")
		if !pre.wait(budget + margin) {
			t.Fatalf("prestop: want it done within its budget %v + %v, still running\n%s", budget, margin, pre.output())
		}
		took := time.Since(start)
		counter, err := conncount.New(target.port)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conns, err := counter.Activity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("prestop took %v (%s); connections left: %+v; output:\n%s", took.Round(time.Millisecond), pre.describe(), conns, pre.output())

		e2eCheckUnreachable(t, pre, dead, took, budget+margin)
		if conns.Busy != 0 {
			t.Errorf("want no connection to %s carrying a request once prestop is done, got %+v", target.endpoint(), conns)
		}
		if e2eConsulHas(t, consulConsumer(t), service, target.endpoint()) {
			t.Errorf("want %s gone from the real Consul's passing list, still there", target.endpoint())
		}
		if err := target.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM to %s: %v", target.name, err)
		}
		if !target.wait(e2eGrace) {
			t.Fatalf("%s: want it stopped within %v of SIGTERM", target.name, e2eGrace)
		}
		load.keepGoing(t, time.Second)
		e2eCheckLoad(t, load, apps)
	})

	t.Run("offline-admin", func(t *testing.T) {
		t.Parallel()
		bins := e2eBuild(t, "lameduck", "app")
		service := registrytest.UniqueService(t)
		apps := e2eStartLibraryApps(t, bins["app"], service, 2)
		load := e2eStartLoad(t, service, 8, len(apps), apps[0].endpoint(), apps[1].endpoint())
		target := apps[0]

		start := time.Now()
		off := e2eStart(t, "offline", bins["lameduck"], "offline",
			"--registry", "consul://"+consulAddr(), "--registry", dead, "--service", service, "--id", target.id,
			"--admin", "http://"+e2eEndpoint(target.admin), "--budget", budget.String())
		if !off.wait(budget + margin) {
			t.Fatalf("offline: want it done within its budget %v + %v, still running\n%s", budget, margin, off.output())
		}
		took := time.Since(start)
		t.Logf("offline took %v (%s); output:\n%s", took.Round(time.Millisecond), off.describe(), off.output())
		e2eCheckUnreachable(t, off, dead, took, budget+margin)
		if !target.wait(15 * time.Second) {
			t.Fatalf("%s: want it to exit by itself once offline (its own drain takes under a second), still running 15s after the command ended", target.name)
		}
		if code := target.exitCode(); code != 0 {
			t.Errorf("%s: want exit code 0, got %s\n%s", target.name, target.describe(), target.output())
		}
		if e2eConsulHas(t, consulConsumer(t), service, target.endpoint()) {
			t.Errorf("want %s gone from the real Consul's passing list, still there", target.endpoint())
		}
		load.keepGoing(t, time.Second)
		e2eCheckLoad(t, load, apps)
	})
}

// e2eCheckUnreachable checks what a command says when one registry is
// unreachable: exit code 3, within limit, naming the registry's address.
func e2eCheckUnreachable(t *testing.T, c *child, dead string, took, limit time.Duration) {
	t.Helper()
	if code := c.exitCode(); code != 3 {
		t.Errorf("%s: want exit code 3 (registry unreachable), got %s\n%s", c.name, c.describe(), c.output())
	}
	if took > limit {
		t.Errorf("%s: want it done within %v, took %v", c.name, limit, took)
	}
	if addr := strings.TrimPrefix(dead, "consul://"); !strings.Contains(c.output(), addr) {
		t.Errorf("%s: want the unreachable registry's address %s in its output, got\n%s", c.name, addr, c.output())
	}
}

// The same operator's offline on Nacos: the app's ephemeral instance
// belongs to its own connection, so the command takes it out by disabling
// it, confirms through its own subscription, then follows the app's drain.
func TestOfflineWaitCommandNacos(t *testing.T) {
	needNacos(t)
	// The children read the Nacos credentials from the environment.
	t.Setenv("NACOS_USERNAME", nacosUser())
	t.Setenv("NACOS_PASSWORD", nacosPass())
	bins := e2eBuild(t, "lameduck", "app")
	service := registrytest.UniqueService(t)
	regURL := "nacos://" + nacosAddr()
	apps := e2eStartLibraryAppsOn(t, bins["app"], regURL, service, 2)
	load := e2eStartLoadOn(t, newNacos(t), service, 8, len(apps), apps[0].endpoint(), apps[1].endpoint())

	target := apps[0]
	off := e2eStart(t, "offline", bins["lameduck"], "offline",
		"--registry", regURL, "--service", service, "--addr", target.endpoint(),
		"--admin", "http://"+e2eEndpoint(target.admin), "--output", "json")
	if !off.wait(60 * time.Second) {
		t.Fatalf("offline: want it done within 60s (its budget is 30s), still running\n%s", off.output())
	}
	if !target.wait(30 * time.Second) {
		t.Fatalf("%s: want it to exit by itself once offline, still running 30s after the command ended", target.name)
	}
	load.keepGoing(t, time.Second)
	t.Logf("stdout:\n%s", off.stdout)
	if code := off.exitCode(); code != 0 {
		t.Fatalf("offline: want exit code 0, got %s\n%s", off.describe(), off.output())
	}
	res := e2eParseResult(t, off)
	if res.Outcome != "drained" || len(res.Registries) != 1 || res.Registries[0].State != "confirmed" || res.AdminPhase != "Offline" {
		t.Errorf("offline JSON: want drained, nacos confirmed, admin phase Offline; got %+v", res)
	}
	if code := target.exitCode(); code != 0 {
		t.Errorf("%s: want exit code 0, got %s\n%s", target.name, target.describe(), target.output())
	}
	e2eCheckLoad(t, load, apps)
}

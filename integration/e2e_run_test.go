//go:build linux

// Linux only: the supervisor (`lameduck run`) is.

package integration

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry/registrytest"
)

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

package integration

import (
	"strconv"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry/registrytest"
)

// The kubelet's grace period (terminationGracePeriodSeconds) in these tests.
const e2eGrace = 20 * time.Second

// The kubelet stops a pod running an app that links lameduck: the preStop
// hook `lameduck prestop --admin` asks the app to go offline and follows it
// to Offline, then SIGTERM, then SIGKILL at the end of the grace period. Not
// one request of a steady load may fail.
func TestKubeletSequenceLibraryApp(t *testing.T) {
	needConsul(t)
	t.Parallel()
	bins := e2eBuild(t, "lameduck", "app")
	service := registrytest.UniqueService(t)
	apps := e2eStartLibraryApps(t, bins["app"], service, 3)
	eps := make([]string, len(apps))
	for k, a := range apps {
		eps[k] = a.endpoint()
	}
	load := e2eStartLoad(t, service, 8, len(apps), eps...)

	target := apps[0]
	var hook *child
	k := e2eKubeletStop(t, target.child, e2eGrace, func() *child {
		hook = e2eStart(t, "prestop", bins["lameduck"], "prestop",
			"--admin", "http://"+e2eEndpoint(target.admin), "--grace-period", e2eGrace.String())
		return hook
	})
	load.keepGoing(t, time.Second)
	t.Logf("prestop took %v (%s); app gone before SIGTERM: %v; SIGKILL needed: %v; prestop said: %q",
		k.prestopTook.Round(time.Millisecond), hook.describe(), k.goneBeforeTERM, k.killed, hook.stdout.String())

	if !k.prestopDone || hook.exitCode() != 0 {
		t.Errorf("prestop: want exit code 0 within the grace period, got %s after %v\n%s", hook.describe(), k.prestopTook, hook.output())
	}
	if k.killed {
		t.Errorf("%s: want it gone before the grace period ended, had to SIGKILL it", target.name)
	} else if code := target.exitCode(); code != 0 {
		t.Errorf("%s: want exit code 0, got %s\n%s", target.name, target.describe(), target.output())
	}
	if e2eConsulHas(t, consulConsumer(t), service, target.endpoint()) {
		t.Errorf("want %s gone from Consul's passing list, still there", target.endpoint())
	}
	e2eCheckLoad(t, load, apps)
}

// The same for an app that does not link lameduck: the preStop hook
// deregisters it itself, waits for Consul's confirmation, and watches the
// app's connections until none carries a request and none has arrived for
// the quiet window; SIGTERM then makes the app shut down.
//
// The load keeps idle keep-alive connections to the app (its transport's
// IdleConnTimeout is 30s), and the plain app has no keep-alive idle timeout
// (net/http's default): the kernel's per-connection times tell those
// connections from busy ones, so they do not hold prestop up, and the app's
// Shutdown closes them after SIGTERM.
func TestKubeletSequencePlainApp(t *testing.T) {
	needConsul(t)
	t.Parallel()
	bins := e2eBuild(t, "lameduck", "plainapp")
	service := registrytest.UniqueService(t)
	apps := e2eStartPlainApps(t, bins["plainapp"], service, 3, e2ePlainIdle)
	eps := make([]string, len(apps))
	for k, a := range apps {
		eps[k] = a.endpoint()
	}
	load := e2eStartLoad(t, service, 8, len(apps), eps...)

	target := apps[0]
	var hook *child
	k := e2eKubeletStop(t, target.child, e2eGrace, func() *child {
		hook = e2eStart(t, "prestop", bins["lameduck"], "prestop",
			"--registry", "consul://"+consulAddr(), "--service", service,
			"--addr", target.endpoint(), "--port", strconv.Itoa(target.port),
			"--grace-period", e2eGrace.String(), "--quiet", "300ms")
		return hook
	})
	load.keepGoing(t, time.Second)
	t.Logf("prestop took %v (%s); app gone before SIGTERM: %v; SIGKILL needed: %v; prestop said:\n%s",
		k.prestopTook.Round(time.Millisecond), hook.describe(), k.goneBeforeTERM, k.killed, hook.stdout.String())

	if !k.prestopDone || hook.exitCode() != 0 {
		t.Errorf("prestop: want exit code 0 within the grace period, got %s after %v\n%s", hook.describe(), k.prestopTook, hook.output())
	}
	if k.goneBeforeTERM {
		t.Errorf("%s: want it running until SIGTERM, it exited before: %s\n%s", target.name, target.describe(), target.output())
	}
	if k.killed {
		t.Errorf("%s: want it gone before the grace period ended, had to SIGKILL it", target.name)
	} else if code := target.exitCode(); code != 0 {
		t.Errorf("%s: want exit code 0, got %s\n%s", target.name, target.describe(), target.output())
	}
	if e2eConsulHas(t, consulConsumer(t), service, target.endpoint()) {
		t.Errorf("want %s gone from Consul's passing list, still there", target.endpoint())
	}
	e2eCheckLoad(t, load, apps)
}

// e2ePlainIdle is the plain app's keep-alive idle timeout: none, as in
// net/http's default; see TestKubeletSequencePlainApp.
var e2ePlainIdle time.Duration

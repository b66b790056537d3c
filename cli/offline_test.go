package cli

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
)

func TestOfflineBadInput(t *testing.T) {
	t.Parallel()
	// Larger than any pid_max Linux allows (2^22), so no such process.
	const noSuchPID = "4194305"
	mem := []string{"--registry", "memory://"}
	cases := []badInputCase{
		{"unknown scheme", []string{"--registry", "zookeeper://127.0.0.1:2181", "--service", "web", "--id", "web-1"}, `unknown registry scheme "zookeeper"`},
		{"malformed URL", []string{"--registry", "consul://[::1", "--service", "web", "--id", "web-1"}, "does not parse"},
		{"credentials in registry URL", []string{"--registry", "consul://admin:" + secret + "@127.0.0.1:8500", "--service", "web", "--id", "web-1"}, "carries credentials"},
		{"no registry", []string{"--service", "web", "--id", "web-1"}, "--registry"},
		{"missing service", append(mem, "--id", "web-1"), "missing --service"},
		{"neither id nor addr", append(mem, "--service", "web"), "give --id or --addr"},
		{"addr without port", append(mem, "--service", "web", "--addr", "10.0.0.5"), "want host:port"},
		{"addr port 0", append(mem, "--service", "web", "--addr", "10.0.0.5:0"), "between 1 and 65535"},
		{"addr port 70000", append(mem, "--service", "web", "--addr", "10.0.0.5:70000"), "between 1 and 65535"},
		{"addr without host", append(mem, "--service", "web", "--addr", ":8080"), "want host:port"},
		{"output yaml", append(mem, "--service", "web", "--id", "web-1", "--output", "yaml"), `--output "yaml": want text or json`},
		{"budget 0", append(mem, "--service", "web", "--id", "web-1", "--budget", "0"), "--budget 0s: want a positive duration"},
		{"budget negative", append(mem, "--service", "web", "--id", "web-1", "--budget", "-5s"), "--budget -5s: want a positive duration"},
		{"budget not a duration", append(mem, "--service", "web", "--id", "web-1", "--budget", "soon"), "budget"},
		{"stop without admin or pid", append(mem, "--service", "web", "--id", "web-1", "--stop"), "--stop needs --admin"},
		{"pid that does not exist", append(mem, "--service", "web", "--id", "web-1", "--stop", "--pid", noSuchPID), "--pid " + noSuchPID + " is not a process"},
		{"negative pid", append(mem, "--service", "web", "--id", "web-1", "--stop", "--pid", "-1"), "--pid -1 is not a process"},
		{"admin URL scheme", append(mem, "--service", "web", "--id", "web-1", "--admin", "ftp://127.0.0.1:9901"), `scheme "ftp"`},
		{"credentials in admin URL", append(mem, "--service", "web", "--id", "web-1", "--admin", "http://admin:"+secret+"@127.0.0.1:9901"), "carries credentials"},
		{"stray argument", append(mem, "--service", "web", "--id", "web-1", "now"), `unexpected argument "now"`},
		{"unknown flag", append(mem, "--service", "web", "--id", "web-1", "--budegt", "5s"), "budegt"},
	}
	runBadInput(t, "offline", cases)
}

// A token with a newline (a Secret mounted with a trailing newline) is
// refused before anything is deregistered, without echoing it.
func TestOfflineAdminTokenWithNewlineRefusedUpFront(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "offline", "--registry", "memory://", "--service", "web", "--addr", "127.0.0.1:8080",
		"--admin", "http://127.0.0.1:9901", "--admin-token", secret+"\n")
	if code != ExitBadInput {
		t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitBadInput, code, stdout, stderr)
	}
	checkOneLine(t, stdout, stderr, "control character")
}

// The memory registry lives in one process: a fresh lameduck process sees
// it empty. An ID alone then names nothing, which is bad input with a hint.
func TestOfflineMemoryRegistryIDNotListed(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "offline", "--registry", "memory://", "--service", "web", "--id", "web-1", "--budget", "5s")
	if code != ExitBadInput {
		t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitBadInput, code, stdout, stderr)
	}
	checkOneLine(t, stdout, stderr, `no instance with ID "web-1" in "web"`)
}

// With --output json the same refusal is one JSON object on stdout and
// nothing on stderr.
func TestOfflineMemoryRegistryIDNotListedJSON(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "offline", "--registry", "memory://", "--service", "web", "--id", "web-1", "--budget", "5s", "--output", "json")
	if code != ExitBadInput {
		t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitBadInput, code, stdout, stderr)
	}
	if stderr != "" {
		t.Fatalf("want nothing on stderr with --output json, got %q", stderr)
	}
	var res Result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("want one JSON object on stdout, got %v:\n%s", err, stdout)
	}
	if res.Outcome != "bad-input" || res.ExitCode != ExitBadInput || !strings.Contains(res.Error, "no instance with ID") {
		t.Fatalf("want outcome bad-input, exit_code %d and the error, got %+v", ExitBadInput, res)
	}
}

// An address names the instance even when no registry lists it: offline
// makes sure it is out (idempotent, so a retried offline succeeds).
func TestOfflineMemoryRegistryAddrIsIdempotent(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "offline", "--registry", "memory://", "--service", "web", "--addr", "127.0.0.1:8080", "--budget", "5s")
	if code != ExitOK {
		t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitOK, code, stdout, stderr)
	}
	if stderr != "" {
		t.Fatalf("want nothing on stderr, got %q", stderr)
	}
	// Without --admin nothing followed the instance's requests, and the
	// summary must not claim a drain.
	if !strings.Contains(stdout, "web: 127.0.0.1:8080 is out of every registry, confirmed, in ") || strings.Contains(stdout, "drained") {
		t.Fatalf("want the summary \"web: 127.0.0.1:8080 is out of every registry, confirmed, in ...\" and no claim of a drain, got:\n%s", stdout)
	}
}

// --pid alone would send a signal the user did not ask for.
func TestOfflinePidNeedsStop(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "offline", "--registry", "consul://127.0.0.1:1", "--service", "web", "--addr", "127.0.0.1:8080",
		"--pid", strconv.Itoa(os.Getpid()))
	if code != ExitBadInput {
		t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitBadInput, code, stdout, stderr)
	}
	checkOneLine(t, stdout, stderr, "only used with --stop")
}

func TestStillCallingLine(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	lc := &drain.LateConsumers{
		Top: []drain.ConsumerStat{
			{ID: "10.0.0.7", Last: ago(120 * time.Millisecond)},
			{ID: "10.0.0.9", Last: ago(2100 * time.Millisecond)},
			{ID: "10.0.0.5", Last: ago(9 * time.Second)}, // stopped
		},
	}
	if got, want := stillCallingLine(lc, now), "2 consumers still calling: 10.0.0.7 (last 120ms ago), 10.0.0.9 (last 2.1s ago)"; got != want {
		t.Errorf("line:\n got %q\nwant %q", got, want)
	}
	lc.Top = append(lc.Top, drain.ConsumerStat{ID: "a", Last: now}, drain.ConsumerStat{ID: "b", Last: now})
	lc.Others = &drain.ConsumerStat{IDs: 40, Last: now}
	if got, want := stillCallingLine(lc, now), "5 consumers still calling: 10.0.0.7 (last 120ms ago), 10.0.0.9 (last 2.1s ago), a (last 0s ago), and 2 more"; got != want {
		t.Errorf("line:\n got %q\nwant %q", got, want)
	}
	if got := stillCallingLine(nil, now); got != "" {
		t.Errorf("no consumers: want an empty line, got %q", got)
	}
}

package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

func TestPrestopBadInput(t *testing.T) {
	t.Parallel()
	// Plain mode checks that something listens on --port before it reads
	// the other flags; this port has a listener until the test ends.
	port := listeningPort(t)
	addr := "127.0.0.1:" + port
	plain := []string{"--registry", "memory://", "--service", "web", "--port", port}
	silent := strconv.Itoa(freePort(t))
	admin := []string{"--admin", "http://127.0.0.1:" + strconv.Itoa(freePort(t))}
	cases := []badInputCase{
		// Plain mode: the flags offline takes.
		{"unknown scheme", []string{"--registry", "zookeeper://127.0.0.1:2181", "--service", "web", "--port", port, "--addr", addr}, `unknown registry scheme "zookeeper"`},
		{"malformed URL", []string{"--registry", "consul://[::1", "--service", "web", "--port", port, "--addr", addr}, "does not parse"},
		{"missing service", []string{"--registry", "memory://", "--port", port, "--addr", addr}, "missing --service"},
		{"addr without port", append(plain, "--addr", "10.0.0.5"), "want host:port"},
		{"addr port 0", append(plain, "--addr", "10.0.0.5:0"), "between 1 and 65535"},
		{"addr port 70000", append(plain, "--addr", "10.0.0.5:70000"), "between 1 and 65535"},
		{"output yaml", append(plain, "--addr", addr, "--output", "yaml"), `--output "yaml": want text or json`},
		{"budget 0", append(plain, "--addr", addr, "--budget", "0"), "--budget 0s: want a positive duration"},
		{"budget negative", append(plain, "--addr", addr, "--budget", "-5s"), "--budget -5s: want a positive duration"},
		{"stray argument", append(plain, "--addr", addr, "now"), `unexpected argument "now"`},

		// Plain mode: its own flags.
		{"no addr and no POD_IP", plain, "set --addr host:port or " + EnvPodIP},
		{"nothing listens on port", []string{"--registry", "memory://", "--service", "web", "--port", silent, "--addr", "127.0.0.1:" + silent}, "nothing listens on port " + silent},
		{"no port", []string{"--registry", "memory://", "--service", "web", "--addr", addr}, "--port 0"},
		{"port 70000", []string{"--registry", "memory://", "--service", "web", "--port", "70000", "--addr", addr}, "--port 70000"},
		{"budget beyond grace period minus margin", append(plain, "--addr", addr, "--grace-period", "10s", "--margin", "2s", "--budget", "9s"), "--budget 9s is larger than the grace period 10s minus the margin 2s"},
		{"margin equal to grace period", append(plain, "--addr", addr, "--grace-period", "2s", "--margin", "2s"), "--margin 2s"},
		{"margin beyond grace period", append(plain, "--addr", addr, "--grace-period", "2s", "--margin", "5s"), "--margin 5s"},
		{"negative margin", append(plain, "--addr", addr, "--margin", "-1s"), "--margin -1s"},
		{"grace period 0", append(plain, "--addr", addr, "--grace-period", "0"), "--grace-period 0s"},
		{"negative conn-wait", append(plain, "--addr", addr, "--conn-wait", "-1s"), "--conn-wait -1s: want a duration of 0 or more, such as 250ms"},
		{"negative conn-wait with =", append(plain, "--addr", addr, "--conn-wait=-250ms"), "--conn-wait -250ms: want a duration of 0 or more"},
		{"conn-wait not a duration", append(plain, "--addr", addr, "--conn-wait", "soon"), "conn-wait"},
		{"negative quiet", append(plain, "--addr", addr, "--quiet", "-1s"), "--quiet -1s: want a duration of 0 or more"},

		// Admin mode.
		{"admin output yaml", append(admin, "--output", "yaml"), `--output "yaml": want text or json`},
		{"admin budget 0", append(admin, "--budget", "0"), "--budget 0s: want a positive duration"},
		{"admin budget negative", append(admin, "--budget", "-5s"), "--budget -5s: want a positive duration"},
		{"admin budget beyond grace period minus margin", append(admin, "--grace-period", "10s", "--budget", "9s"), "--budget 9s is larger"},
		{"admin margin equal to grace period", append(admin, "--grace-period", "5s", "--margin", "5s"), "--margin 5s"},
		{"admin URL scheme", []string{"--admin", "ftp://127.0.0.1:9901"}, `scheme "ftp"`},
		{"credentials in admin URL", []string{"--admin", "http://admin:" + secret + "@127.0.0.1:9901"}, "carries credentials"},
		{"admin stray argument", append(admin, "now"), `unexpected argument "now"`},
		{"admin conn-wait", append(admin, "--conn-wait", "250ms"), "--conn-wait is for plain mode (--port)"},
		{"admin negative conn-wait", append(admin, "--conn-wait", "-1s"), "--conn-wait -1s: want a duration of 0 or more"},
	}
	runBadInput(t, "prestop", cases)
}

// An admin endpoint that answers 200 with something else than lameduck's
// JSON: one line naming the URL and saying so, and the token it was sent
// (which this server echoes) kept out.
func TestPrestopAdminAnswersGarbage(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.Header.Get("Authorization"))
	}))
	t.Cleanup(srv.Close)
	code, stdout, stderr := run(t, "prestop", "--admin", srv.URL, "--admin-token", secret, "--grace-period", "10s")
	if code == ExitOK {
		t.Fatalf("want a non-zero exit code, got 0\nstdout: %q\nstderr: %q", stdout, stderr)
	}
	checkOneLine(t, stdout, stderr, srv.URL)
	if !strings.Contains(stderr, "not lameduck's") || !strings.Contains(stderr, "JSON") {
		t.Fatalf("want the line to say the answer is not lameduck's JSON, got %q", stderr)
	}
}

func TestPrestopAdminNothingAnswers(t *testing.T) {
	t.Parallel()
	url := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	code, stdout, stderr := run(t, "prestop", "--admin", url, "--admin-token", secret, "--grace-period", "10s")
	if code == ExitOK {
		t.Fatalf("want a non-zero exit code, got 0\nstdout: %q\nstderr: %q", stdout, stderr)
	}
	checkOneLine(t, stdout, stderr, "nothing answers at "+url)
}

// fakeAdmin is an admin endpoint that accepts the offline and reports
// Draining, but whose /wait never reaches Offline: an app stuck draining.
func fakeAdmin(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			<-r.Context().Done()
			return
		}
		fmt.Fprint(w, `{"phase":"Draining","in_flight":1}`)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// At the deadline prestop exits 4, as documented, not 1.
func TestPrestopAdminDeadlineIsForced(t *testing.T) {
	t.Parallel()
	srv := fakeAdmin(t)
	code, stdout, stderr := run(t, "prestop", "--admin", srv.URL, "--grace-period", "2s", "--margin", "1500ms")
	if code != ExitForced {
		t.Fatalf("want exit code %d at the deadline, got %d\nstdout: %q\nstderr: %q", ExitForced, code, stdout, stderr)
	}
	if !strings.HasPrefix(stderr, "lameduck: ") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("want one line on stderr, got %q", stderr)
	}
}

// --output json in admin mode prints one Result object and nothing else.
func TestPrestopAdminJSON(t *testing.T) {
	t.Parallel()
	srv := fakeAdmin(t)
	code, stdout, stderr := run(t, "prestop", "--admin", srv.URL, "--grace-period", "2s", "--margin", "1500ms", "--output", "json")
	if code != ExitForced {
		t.Fatalf("want exit code %d at the deadline, got %d\nstdout: %q\nstderr: %q", ExitForced, code, stdout, stderr)
	}
	if stderr != "" {
		t.Fatalf("want nothing on stderr with --output json, got %q", stderr)
	}
	var res Result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("want one JSON object on stdout, got %v:\n%s", err, stdout)
	}
	if res.Outcome != "forced" || res.ExitCode != ExitForced || res.AdminPhase != "Draining" || res.Error == "" {
		t.Fatalf("want outcome forced, exit_code %d, admin_phase Draining and the error, got %+v", ExitForced, res)
	}
}

// --admin selects the admin mode even when the pod's environment names a
// registry, as a shared ConfigMap might.
func TestPrestopAdminWinsOverRegistryEnv(t *testing.T) {
	// Sets an environment variable: not parallel.
	t.Setenv(EnvRegistry, "consul://127.0.0.1:8500")
	code, stdout, stderr := run(t, "prestop", "--admin", "http://127.0.0.1:1", "--grace-period", "3s", "--margin", "1s")
	if code == ExitOK || code == ExitBadInput {
		t.Fatalf("want the admin mode's runtime failure (nothing answers), got exit %d\nstdout: %q\nstderr: %q", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "nothing answers at http://127.0.0.1:1") {
		t.Fatalf("want the admin endpoint named, got %q", stderr)
	}
}

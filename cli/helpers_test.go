package cli

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestMain clears the environment variables the commands read, so that a
// developer's shell (LAMEDUCK_REGISTRY, POD_IP, CONSUL_HTTP_TOKEN...) cannot
// change what a test means, and so that the tests that rely on a variable
// being unset can still run in parallel. Child processes inherit the
// cleared environment.
func TestMain(m *testing.M) {
	for _, name := range append(secretEnv(), EnvRegistry, EnvPodIP) {
		os.Unsetenv(name)
	}
	os.Exit(m.Run())
}

// build compiles pkg (relative to this directory) into dir and returns the
// binary's path.
func build(t *testing.T, dir, name, pkg string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// secret is passed as every credential in the bad-input tables; it must never
// appear in anything the commands print.
const secret = "s3cret-XYZ"

// secretFlags gives every credential flag the secret value. The flags go
// right after the command's name, before the case's own arguments, since
// parsing stops at the first argument that is not a flag.
var secretFlags = []string{"--consul-token", secret, "--nacos-password", secret, "--admin-token", secret}

// badInputCase is one row of a command's bad-input table.
type badInputCase struct {
	name string
	args []string // after the command's name and secretFlags
	want string   // in the error line
}

// runBadInput runs the command with each case's arguments and checks the
// bad-input contract: exit code 2, nothing on stdout, exactly one stderr
// line "lameduck: ..." holding want, no stack trace, no secret.
func runBadInput(t *testing.T, command string, cases []badInputCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			args := append(append([]string{command}, secretFlags...), c.args...)
			code, stdout, stderr := run(t, args...)
			if code != ExitBadInput {
				t.Fatalf("lameduck %s: want exit code %d, got %d\nstdout: %q\nstderr: %q", strings.Join(args, " "), ExitBadInput, code, stdout, stderr)
			}
			checkOneLine(t, stdout, stderr, c.want)
		})
	}
}

// checkOneLine checks that stderr is exactly one line starting "lameduck: "
// and holding want, that there is no stack trace, and that the secret is in
// neither stream. Bad input and early failures print nothing on stdout.
func checkOneLine(t *testing.T, stdout, stderr, want string) {
	t.Helper()
	for name, s := range map[string]string{"stdout": stdout, "stderr": stderr} {
		if strings.Contains(s, secret) {
			t.Errorf("want the secret kept out of %s, got %q", name, s)
		}
		if strings.Contains(s, "goroutine ") || strings.Contains(s, "panic") || strings.Contains(s, ".go:") {
			t.Errorf("want no stack trace in %s, got %q", name, s)
		}
	}
	if stdout != "" {
		t.Errorf("want nothing on stdout, got %q", stdout)
	}
	if !strings.HasSuffix(stderr, "\n") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("want exactly one line on stderr, got %q", stderr)
	}
	if !strings.HasPrefix(stderr, "lameduck: ") || !strings.Contains(stderr, want) {
		t.Fatalf("want a line starting with \"lameduck: \" containing %q, got %q", want, stderr)
	}
}

// freePort returns a TCP port on 127.0.0.1 that nothing listened on a
// moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	return port
}

// listeningPort returns the port of a listener on 127.0.0.1 that stays open
// until the test ends, for prestop's plain mode, which checks that something
// listens on --port before it looks at the other flags.
func listeningPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

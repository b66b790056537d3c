package cli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRunBadInput(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"--registry", "memory://", "--service", "web", "--port", "8080"}, "no command to run"},
		{"no service", []string{"--registry", "memory://", "--port", "8080", "--", "true"}, "missing --service"},
		{"no port", []string{"--registry", "memory://", "--service", "web", "--", "true"}, "--port 0"},
		{"port 70000", []string{"--registry", "memory://", "--service", "web", "--port", "70000", "--", "true"}, "--port 70000"},
		{"no registry", []string{"--service", "web", "--port", "8080", "--", "true"}, "no registry given"},
		{"bad budget", []string{"--registry", "memory://", "--service", "web", "--port", "8080", "--budget", "0s", "--", "true"}, "--budget"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := run(t, append([]string{"run"}, c.args...)...)
			if code != ExitBadInput {
				t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitBadInput, code, stdout, stderr)
			}
			checkOneLine(t, stdout, stderr, c.want)
		})
	}
}

// lameduck run, built and run as a user would: the child is registered,
// and SIGTERM to the supervisor takes it offline and ends it; exit 0, and
// no process of the child's group is left.
func TestRunBinarySupervisesAndStops(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	t.Parallel()
	dir := t.TempDir()
	for _, b := range [][2]string{{"lameduck", "./lameduck"}, {"child", "../pkg/supervisor/testdata/child"}} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b[0]), b[1]).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "lameduck"), "run", "--registry", "memory://", "--service", "web",
		"--port", strconv.Itoa(port), "--budget", "10s", "--", filepath.Join(dir, "child"), "-addr", "127.0.0.1:"+strconv.Itoa(port))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait (bounded) until the child serves: a child process has nothing
	// to wait on but its port.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child never served on port %d:\n%s", port, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("want exit 0 after SIGTERM, got %v:\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "[child] got SIGTERM") {
		t.Fatalf("want the child to get SIGTERM from the supervisor, got:\n%s", out.String())
	}
	if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
		conn.Close()
		t.Fatalf("want nothing serving on port %d after the supervisor exited, the child still answers", port)
	}
}

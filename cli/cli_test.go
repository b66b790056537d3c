package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code = Main(ctx, append([]string{"lameduck"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadInputIsOneLineAndExit2(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		want string // in the error line
	}{
		{"unknown scheme", []string{"demo", "--registry", "zookeeper://127.0.0.1:2181"}, `unknown registry scheme "zookeeper"`},
		{"malformed URL", []string{"demo", "--registry", "consul://[::1"}, "does not parse"},
		{"no scheme", []string{"demo", "--registry", "127.0.0.1:8500"}, "scheme"},
		{"unknown parameter", []string{"demo", "--registry", "memory://?push-dely=1s"}, `unknown memory URL parameter "push-dely"`},
		{"bad duration", []string{"demo", "--registry", "memory://?push-delay=soon"}, "push-delay"},
		{"bad consul port", []string{"demo", "--registry", "consul://127.0.0.1:99999"}, "port"},
		{"credentials in URL", []string{"demo", "--registry", "consul://admin:hunter2@127.0.0.1:8500"}, "carries credentials"},
		{"unknown flag", []string{"demo", "--wrokers", "3"}, "wrokers"},
		{"workers out of range", []string{"demo", "--workers", "0"}, "--workers 0"},
		{"stray argument", []string{"demo", "now"}, "no arguments"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, _, stderr := run(t, c.args...)
			if code != ExitBadInput {
				t.Fatalf("want exit code %d, got %d (stderr %q)", ExitBadInput, code, stderr)
			}
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "lameduck: ") || !strings.Contains(last, c.want) {
				t.Fatalf("want a last line starting with \"lameduck: \" containing %q, got %q", c.want, last)
			}
			if strings.Contains(stderr, "hunter2") {
				t.Fatalf("want the password kept out of errors, got %q", stderr)
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
				t.Fatalf("want no stack trace, got %q", stderr)
			}
		})
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	code, _, stderr := run(t, "ofline")
	if code == ExitOK {
		t.Fatalf("want a non-zero exit code for an unknown command, got 0 (stderr %q)", stderr)
	}
	if !strings.Contains(stderr, `unknown command "ofline"`) {
		t.Fatalf("want the unknown command named, got %q", stderr)
	}
}

// The binary, built and run as a user would, shows the naive way losing
// requests and lameduck losing none.
func TestDemoBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the demo (about 10s)")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "lameduck")
	build := exec.Command("go", "build", "-o", bin, "./lameduck")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--quiet-log")
	for _, kv := range os.Environ() { // the default registry, whatever the caller's shell says
		if !strings.HasPrefix(kv, EnvRegistry+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && (f[0] == "naive" || f[0] == "lameduck") {
			rows[f[0]] = f
		}
	}
	if len(rows) != 2 {
		t.Fatalf("want a naive and a lameduck row, got:\n%s", out.String())
	}
	if got := rows["lameduck"][3]; got != "0" {
		t.Fatalf("want 0 failed for lameduck, got %s:\n%s", got, out.String())
	}
	if got := rows["naive"][3]; got == "0" {
		t.Fatalf("want the naive way to lose requests (the demo must be able to show a loss), got 0:\n%s", out.String())
	}
}

package cli

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A Nacos that is down for the whole of `lameduck offline` costs the
// terminal a handful of lines: each of the SDK's distinct errors once, then
// one count of its repeats, and no stack trace. (Before issue 13 the SDK's
// errors, each with its Go stack, came to hundreds of lines.)
func TestOfflineNacosOutageIsQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs lameduck")
	}
	t.Parallel()
	bin := build(t, t.TempDir(), "lameduck", "./lameduck")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Nothing listens on port 1 or on 1001, its gRPC port: both refuse.
	args := []string{"offline", "--registry", "nacos://127.0.0.1:1", "--service", "svc", "--addr", "127.0.0.1:9", "--budget", "4s"}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitRegistry {
		t.Fatalf("lameduck %s: want exit code %d (registry unreachable), got %v\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), ExitRegistry, err, stdout.String(), stderr.String())
	}
	show := "\nstdout:\n" + stdout.String() + "\nstderr:\n" + stderr.String()

	errLines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
	if len(errLines) > 6 {
		t.Errorf("want at most 6 lines on stderr, got %d%s", len(errLines), show)
	}
	for _, l := range append(errLines, strings.Split(stdout.String(), "\n")...) {
		if strings.Contains(l, "goroutine") || strings.Contains(l, ".go:") {
			t.Errorf("want no stack trace, got the line %q%s", l, show)
		}
	}
	// The SDK's error for each failed subscribe: once as it came, once
	// as the count of its repeats when the registry closed.
	var first, counts int
	for _, l := range errLines {
		if strings.Contains(l, "Send request fail") && strings.Contains(l, "component=nacos-sdk") {
			if strings.Contains(l, " repeated=") {
				counts++
			} else {
				first++
			}
		}
	}
	if first != 1 || counts != 1 {
		t.Errorf("want the SDK's \"Send request fail\" once and its count once, got %d and %d%s", first, counts, show)
	}
}

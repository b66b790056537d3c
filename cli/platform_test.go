package cli

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

// Each Linux-only command or mode passes on Linux and elsewhere says, in
// one bad-input line, that it is not supported there and what to do.
func TestLinuxOnly(t *testing.T) {
	t.Parallel()
	features := map[string]linuxOnly{"run": linuxOnlyRun, "plain prestop": linuxOnlyPlainPrestop}
	for name, f := range features {
		for _, goos := range []string{"linux", "darwin", "windows"} {
			t.Run(name+"/"+goos, func(t *testing.T) {
				t.Parallel()
				err := f.check(goos)
				if goos == "linux" {
					if err != nil {
						t.Fatalf("check(linux): want nil, got %v", err)
					}
					return
				}
				want := f.feature + " is not supported on " + goos + "; "
				switch {
				case err == nil || !strings.HasPrefix(err.Error(), want):
					t.Fatalf("check(%s): want an error starting %q, got %v", goos, want, err)
				case strings.Contains(err.Error(), "\n"):
					t.Errorf("check(%s): want one line, got %q", goos, err)
				case !errors.Is(err, errors.ErrUnsupported):
					t.Errorf("check(%s): want errors.Is(err, errors.ErrUnsupported), got false for %v", goos, err)
				case ExitCode(err) != ExitBadInput:
					t.Errorf("check(%s): want exit code %d, got %d", goos, ExitBadInput, ExitCode(err))
				}
			})
		}
	}
}

// `lameduck run` answers on this OS: on Linux it goes on to its own flag
// checks; elsewhere it refuses before looking at them.
func TestRunOnThisOS(t *testing.T) {
	t.Parallel()
	want := "no command to run"
	if runtime.GOOS != "linux" {
		want = "lameduck run is not supported on " + runtime.GOOS + "; "
	}
	code, stdout, stderr := run(t, "run", "--service", "web", "--port", "8080")
	if code != ExitBadInput {
		t.Fatalf("lameduck run: want exit code %d, got %d; stderr: %q", ExitBadInput, code, stderr)
	}
	checkOneLine(t, stdout, stderr, want)
}

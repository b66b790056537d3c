package supervisor

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

func TestCheckOS(t *testing.T) {
	t.Parallel()
	for _, goos := range []string{"linux", "darwin", "windows"} {
		t.Run(goos, func(t *testing.T) {
			t.Parallel()
			err := checkOS(goos)
			if goos == "linux" {
				if err != nil {
					t.Fatalf("checkOS(linux): want nil, got %v", err)
				}
				return
			}
			want := "supervisor: the supervisor is not supported on " + goos + "; "
			if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("checkOS(%s): want an error wrapping errors.ErrUnsupported that starts %q, got %v", goos, want, err)
			}
		})
	}
}

// New refuses off Linux before it looks at anything else, and on Linux goes
// on to check the spec.
func TestNewOnThisOS(t *testing.T) {
	t.Parallel()
	_, err := New(Spec{}) // no Path: refused on Linux for that
	if runtime.GOOS == "linux" {
		if err == nil || errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "Spec.Path is empty") {
			t.Fatalf("New(Spec{}) on linux: want the empty Path refused, got %v", err)
		}
		return
	}
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("New(Spec{}) on %s: want an error wrapping errors.ErrUnsupported, got %v", runtime.GOOS, err)
	}
}

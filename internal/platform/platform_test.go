package platform

import (
	"errors"
	"testing"
)

func TestLinuxOnly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		goos string
		want string // "" for nil
	}{
		{"linux", ""},
		{"darwin", "lameduck run is not supported on darwin; run it on Linux"},
		{"windows", "lameduck run is not supported on windows; run it on Linux"},
	}
	for _, tt := range tests {
		t.Run(tt.goos, func(t *testing.T) {
			t.Parallel()
			err := LinuxOnly(tt.goos, "lameduck run", "run it on Linux")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("LinuxOnly(%q): want nil, got %v", tt.goos, err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("LinuxOnly(%q): want %q, got %v", tt.goos, tt.want, err)
			}
			if !errors.Is(err, errors.ErrUnsupported) {
				t.Errorf("LinuxOnly(%q): want errors.Is(err, errors.ErrUnsupported), got false for %v", tt.goos, err)
			}
			var ue *UnsupportedError
			if !errors.As(err, &ue) || ue.GOOS != tt.goos {
				t.Errorf("LinuxOnly(%q): want an *UnsupportedError naming %s, got %#v", tt.goos, tt.goos, err)
			}
		})
	}
}

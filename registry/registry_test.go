package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/lameduck/lameduck/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080}
	tests := []struct {
		name    string
		edit    func(*registry.Instance)
		wantErr string // a word the message must hold; "" for valid
	}{
		{"valid", func(*registry.Instance) {}, ""},
		{"port 1", func(i *registry.Instance) { i.Port = 1 }, ""},
		{"port 65535", func(i *registry.Instance) { i.Port = 65535 }, ""},
		{"zero weight is the backend default", func(i *registry.Instance) { i.Weight = 0 }, ""},
		{"positive weight", func(i *registry.Instance) { i.Weight = 2.5 }, ""},
		{"hostname address", func(i *registry.Instance) { i.Address = "api.internal" }, ""},
		{"empty service", func(i *registry.Instance) { i.Service = "" }, "service"},
		{"empty address", func(i *registry.Instance) { i.Address = "" }, "address"},
		{"port 0", func(i *registry.Instance) { i.Port = 0 }, "port 0"},
		{"port -1", func(i *registry.Instance) { i.Port = -1 }, "port -1"},
		{"port 65536", func(i *registry.Instance) { i.Port = 65536 }, "port 65536"},
		{"port 70000", func(i *registry.Instance) { i.Port = 70000 }, "port 70000"},
		{"negative weight", func(i *registry.Instance) { i.Weight = -1 }, "weight"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			i := ok
			tc.edit(&i)
			err := i.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate(%+v): want nil, got %v", i, err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("Validate(%+v): want an error about %s, got nil", i, tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("Validate(%+v): want an error naming %q, got %q", i, tc.wantErr, err)
			case err != nil && !strings.HasPrefix(err.Error(), "registry: "):
				t.Errorf("Validate error: want the prefix %q, got %q", "registry: ", err)
			}
		})
	}
}

func TestEndpointAndKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in                    registry.Instance
		wantEndpoint, wantKey string
	}{
		{registry.Instance{Address: "10.0.0.1", Port: 80}, "10.0.0.1:80", "10.0.0.1:80"},
		{registry.Instance{Address: "::1", Port: 80}, "[::1]:80", "[::1]:80"},
		{registry.Instance{Address: "api.internal", Port: 443, ID: "api-1"}, "api.internal:443", "api-1"},
	}
	for _, tc := range tests {
		if got := tc.in.Endpoint(); got != tc.wantEndpoint {
			t.Errorf("Endpoint() of %+v: want %q, got %q", tc.in, tc.wantEndpoint, got)
		}
		if got := tc.in.Key(); got != tc.wantKey {
			t.Errorf("Key() of %+v: want %q, got %q", tc.in, tc.wantKey, got)
		}
	}
}

func TestSame(t *testing.T) {
	t.Parallel()
	base := registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 80}
	with := func(f func(*registry.Instance)) registry.Instance { i := base; f(&i); return i }
	tests := []struct {
		name string
		a, b registry.Instance
		want bool
	}{
		{"same endpoint, no IDs", base, base, true},
		{"other service", base, with(func(i *registry.Instance) { i.Service = "other" }), false},
		{"other port", base, with(func(i *registry.Instance) { i.Port = 81 }), false},
		{"other address", base, with(func(i *registry.Instance) { i.Address = "10.0.0.2" }), false},
		{"same ID, other endpoint",
			with(func(i *registry.Instance) { i.ID = "x" }),
			with(func(i *registry.Instance) { i.ID = "x"; i.Port = 9 }), true},
		{"other ID, same endpoint",
			with(func(i *registry.Instance) { i.ID = "x" }),
			with(func(i *registry.Instance) { i.ID = "y" }), false},
		{"one ID empty: by endpoint", with(func(i *registry.Instance) { i.ID = "x" }), base, true},
		{"one ID empty, other endpoint",
			with(func(i *registry.Instance) { i.ID = "x" }),
			with(func(i *registry.Instance) { i.Port = 81 }), false},
		{"tags and metadata do not matter",
			base, with(func(i *registry.Instance) { i.Tags = []string{"a"}; i.Metadata = map[string]string{"k": "v"} }), true},
	}
	for _, tc := range tests {
		if got := tc.a.Same(tc.b); got != tc.want {
			t.Errorf("%s: %+v.Same(%+v): want %v, got %v", tc.name, tc.a, tc.b, tc.want, got)
		}
		if got := tc.b.Same(tc.a); got != tc.want {
			t.Errorf("%s: Same is not symmetric: %+v.Same(%+v): want %v, got %v", tc.name, tc.b, tc.a, tc.want, got)
		}
	}
}

func TestContains(t *testing.T) {
	t.Parallel()
	a := registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 80}
	b := registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 81}
	if registry.Contains(nil, a) {
		t.Errorf("Contains(nil, a): want false, got true")
	}
	if !registry.Contains([]registry.Instance{b, a}, a) {
		t.Errorf("Contains([b a], a): want true, got false")
	}
	if registry.Contains([]registry.Instance{b}, a) {
		t.Errorf("Contains([b], a): want false, got true")
	}
}

func TestHealthString(t *testing.T) {
	t.Parallel()
	for h, want := range map[registry.Health]string{
		registry.HealthPassing:  "passing",
		registry.HealthWarning:  "warning",
		registry.HealthCritical: "critical",
		registry.Health(7):      "Health(7)",
	} {
		if got := h.String(); got != want {
			t.Errorf("Health(%d).String(): want %q, got %q", int(h), want, got)
		}
	}
}

func TestError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	var err error = &registry.Error{Registry: "consul://127.0.0.1:8500", Op: "deregister", Err: boom}
	if want := "registry: deregister on consul://127.0.0.1:8500: boom"; err.Error() != want {
		t.Errorf("Error(): want %q, got %q", want, err.Error())
	}
	joined := fmt.Errorf("offline: %w", errors.Join(errors.New("other"), err))
	if !errors.Is(joined, boom) {
		t.Errorf("errors.Is(joined, boom): want true through Unwrap, got false")
	}
	var re *registry.Error
	if !errors.As(joined, &re) || re.Registry != "consul://127.0.0.1:8500" {
		t.Errorf("errors.As(joined, *Error): want the consul error, got %v", re)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(err, context.Canceled): want false, got true")
	}
}

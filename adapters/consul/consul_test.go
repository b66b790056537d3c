package consul

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/lameduck/lameduck/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func inst() registry.Instance {
	return registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080}
}

func TestNew(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		opts    []Option
		wantErr string // "" means New succeeds
	}{
		{name: "defaults"},
		{name: "ttl and resync", opts: []Option{WithCheck(Check{TTL: 3 * time.Second}), WithResync(time.Second)}},
		{name: "http check", opts: []Option{WithCheck(Check{HTTP: "http://10.0.0.1:8080/health"})}},
		{name: "ttl and http", opts: []Option{WithCheck(Check{TTL: time.Second, HTTP: "http://x/h"})}, wantErr: "more than one of TTL, HTTP and TCP"},
		{name: "http and tcp", opts: []Option{WithCheck(Check{HTTP: "http://x/h", TCP: "x:1"})}, wantErr: "more than one of TTL, HTTP and TCP"},
		{name: "resync equal to ttl", opts: []Option{WithCheck(Check{TTL: time.Second}), WithResync(time.Second)}, wantErr: "must be shorter than the TTL"},
		{name: "resync above ttl", opts: []Option{WithCheck(Check{TTL: time.Second}), WithResync(2 * time.Second)}, wantErr: "must be shorter than the TTL"},
		{name: "resync above default ttl", opts: []Option{WithResync(20 * time.Second)}, wantErr: "must be shorter than the TTL 15s"},
		{name: "resync with http check", opts: []Option{WithCheck(Check{HTTP: "http://x/h"}), WithResync(time.Minute)}},
		{name: "negative ttl", opts: []Option{WithCheck(Check{TTL: -time.Second})}, wantErr: "must not be negative"},
		{name: "negative resync", opts: []Option{WithResync(-time.Second)}, wantErr: "must not be negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, err := New(append([]Option{withClient(newFake())}, tc.opts...)...)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("New: want a registry, got error %v", err)
				}
				_ = r.Close()
				return
			}
			if err == nil {
				_ = r.Close()
				t.Fatalf("New: want an error containing %q, got a registry", tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "consul: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New: want an error %q with prefix \"consul: \", got %q", tc.wantErr, err)
			}
		})
	}
}

// TestNewRealClient builds the SDK client, which must not contact the agent.
func TestNewRealClient(t *testing.T) {
	t.Parallel()
	const token = "tok-3f1d9a"
	r, err := New(WithAddress("127.0.0.1:1"), WithDatacenter("dc9"), WithToken(token), WithTLS(TLS{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	defer func() { _ = r.Close() }()
	if want := "consul://127.0.0.1:1?dc=dc9"; r.String() != want {
		t.Errorf("String(): want %q, got %q", want, r.String())
	}
	if strings.Contains(r.String(), token) {
		t.Errorf("String(): want no token, got %q", r.String())
	}
}

// TLS files the SDK would read whole are refused unless they are regular
// files of at most maxTLSFile bytes: /dev/zero once took all memory.
func TestNewTLSFilesBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, make([]byte, maxTLSFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(dir, "cas")
	if err := os.Mkdir(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caDir, "bundle.pem"), make([]byte, maxTLSFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tls  TLS
		want string
	}{
		{"large CA file", TLS{CAFile: big}, "TLS CA file: " + big + " is 1.0 MiB (1048577 bytes), more than the limit of 1 MiB"},
		{"large key file", TLS{KeyFile: big}, "TLS key file: " + big + " is 1.0 MiB"},
		{"directory as CA file", TLS{CAFile: caDir}, "TLS CA file: " + caDir + " is a directory, not a regular file"},
	}
	if runtime.GOOS != "windows" {
		cases = append(cases, struct {
			name string
			tls  TLS
			want string
		}{"device as certificate", TLS{CertFile: "/dev/zero"}, "TLS certificate file: /dev/zero is a device, not a regular file"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, err := New(WithAddress("127.0.0.1:1"), WithTLS(tc.tls))
			if err == nil {
				_ = r.Close()
				t.Fatalf("New(WithTLS(%+v)): want an error containing %q, got a registry", tc.tls, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "consul: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New(WithTLS(%+v)): want an error %q with prefix \"consul: \", got %q", tc.tls, tc.want, err)
			}
		})
	}
	// A CA directory is walked: a large file in it is refused.
	if err := checkTLSFiles(api.TLSConfig{CAPath: caDir}); err == nil || !strings.Contains(err.Error(), "TLS CA directory: "+filepath.Join(caDir, "bundle.pem")+" is 1.0 MiB") {
		t.Errorf("checkTLSFiles(CAPath %s): want the large file named, got %v", caDir, err)
	}
}

func TestServiceID(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   registry.Instance
		want string
	}{
		{name: "derived", in: inst(), want: "svc-10.0.0.1-8080"},
		{name: "explicit", in: registry.Instance{Service: "svc", ID: "svc-a", Address: "10.0.0.1", Port: 8080}, want: "svc-a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ServiceID(tc.in); got != tc.want {
				t.Errorf("ServiceID(%+v): want %q, got %q", tc.in, tc.want, got)
			}
		})
	}
}

func TestRegisterBuildsRegistration(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		opts  []Option
		in    registry.Instance
		check func(t *testing.T, reg *api.AgentServiceRegistration)
	}{
		{
			name: "default ttl check starts passing",
			in:   inst(),
			check: func(t *testing.T, reg *api.AgentServiceRegistration) {
				want := &api.AgentServiceCheck{
					CheckID: "service:svc-10.0.0.1-8080", Name: "lameduck", TTL: "15s", Status: api.HealthPassing,
					DeregisterCriticalServiceAfter: "1m0s",
				}
				if !reflect.DeepEqual(reg.Check, want) {
					t.Errorf("Check: want %+v, got %+v", want, reg.Check)
				}
				if reg.ID != "svc-10.0.0.1-8080" || reg.Name != "svc" || reg.Address != "10.0.0.1" || reg.Port != 8080 {
					t.Errorf("registration: want ID svc-10.0.0.1-8080, Name svc, 10.0.0.1:8080, got ID %s, Name %s, %s:%d",
						reg.ID, reg.Name, reg.Address, reg.Port)
				}
				if reg.Weights != nil {
					t.Errorf("Weights: want nil (agent default) for weight 0, got %+v", reg.Weights)
				}
			},
		},
		{
			name: "id tags metadata weight",
			in: registry.Instance{
				Service: "svc", ID: "svc-a", Address: "10.0.0.2", Port: 9090, Weight: 3,
				Tags: []string{"v1", "blue"}, Metadata: map[string]string{"zone": "a"},
			},
			check: func(t *testing.T, reg *api.AgentServiceRegistration) {
				if reg.ID != "svc-a" || reg.Check.CheckID != "service:svc-a" {
					t.Errorf("IDs: want svc-a and service:svc-a, got %s and %s", reg.ID, reg.Check.CheckID)
				}
				if want := (&api.AgentWeights{Passing: 3, Warning: 1}); !reflect.DeepEqual(reg.Weights, want) {
					t.Errorf("Weights: want %+v, got %+v", want, reg.Weights)
				}
				if !reflect.DeepEqual(reg.Tags, []string{"v1", "blue"}) || reg.Meta["zone"] != "a" {
					t.Errorf("Tags and Meta: want [v1 blue] and zone=a, got %v and %v", reg.Tags, reg.Meta)
				}
			},
		},
		{
			name: "fractional weight rounds up to 1",
			in:   registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080, Weight: 0.5},
			check: func(t *testing.T, reg *api.AgentServiceRegistration) {
				if reg.Weights == nil || reg.Weights.Passing != 1 {
					t.Errorf("Weights.Passing: want 1, got %+v", reg.Weights)
				}
			},
		},
		{
			name: "custom ttl and deregister-after",
			opts: []Option{WithCheck(Check{TTL: 30 * time.Second, DeregisterCriticalAfter: 90 * time.Second})},
			in:   inst(),
			check: func(t *testing.T, reg *api.AgentServiceRegistration) {
				if reg.Check.TTL != "30s" || reg.Check.DeregisterCriticalServiceAfter != "1m30s" {
					t.Errorf("Check: want TTL 30s and deregister after 1m30s, got %q and %q", reg.Check.TTL, reg.Check.DeregisterCriticalServiceAfter)
				}
			},
		},
		{
			name: "http check",
			opts: []Option{WithCheck(Check{HTTP: "http://10.0.0.1:8080/health", Interval: time.Second})},
			in:   inst(),
			check: func(t *testing.T, reg *api.AgentServiceRegistration) {
				c := reg.Check
				if c.HTTP != "http://10.0.0.1:8080/health" || c.Interval != "1s" || c.Timeout != "2s" || c.TTL != "" || c.Status != "" {
					t.Errorf("Check: want HTTP with interval 1s, timeout 2s and no TTL or status, got %+v", c)
				}
			},
		},
		{
			name: "tcp check",
			opts: []Option{WithCheck(Check{TCP: "10.0.0.1:8080"})},
			in:   inst(),
			check: func(t *testing.T, reg *api.AgentServiceRegistration) {
				c := reg.Check
				if c.TCP != "10.0.0.1:8080" || c.Interval != "5s" || c.Timeout != "2s" || c.TTL != "" {
					t.Errorf("Check: want TCP with interval 5s, timeout 2s and no TTL, got %+v", c)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r := newTest(t, f, tc.opts...)
			if err := r.Register(t.Context(), tc.in); err != nil {
				t.Fatalf("Register: want nil, got %v", err)
			}
			f.mu.Lock()
			regs, opts := f.regs, f.regOpts
			f.mu.Unlock()
			if len(regs) != 1 {
				t.Fatalf("ServiceRegisterOpts calls: want 1, got %d", len(regs))
			}
			if !opts[0].ReplaceExistingChecks {
				t.Errorf("ReplaceExistingChecks: want true, got false")
			}
			tc.check(t, regs[0])
		})
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("agent unreachable")
	cases := []struct {
		name      string
		in        registry.Instance
		regErr    error
		wantCalls int
		wantWrap  bool
	}{
		{name: "invalid instance", in: registry.Instance{Service: "svc", Port: 80}, wantCalls: 0},
		{name: "agent error", in: inst(), regErr: boom, wantCalls: 1, wantWrap: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.register = tc.regErr
			r := newTest(t, f)
			err := r.Register(t.Context(), tc.in)
			if err == nil {
				t.Fatalf("Register(%+v): want an error, got nil", tc.in)
			}
			if got := f.count("register"); got != tc.wantCalls {
				t.Errorf("ServiceRegisterOpts calls: want %d, got %d", tc.wantCalls, got)
			}
			var re *registry.Error
			if tc.wantWrap && (!errors.As(err, &re) || re.Op != "register" || !errors.Is(err, tc.regErr)) {
				t.Errorf("Register: want *registry.Error op register wrapping %v, got %#v", tc.regErr, err)
			}
			r.mu.Lock()
			n := len(r.keepers)
			r.mu.Unlock()
			if n != 0 {
				t.Errorf("keepers after a failed Register: want 0, got %d", n)
			}
		})
	}
}

func TestDeregister(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection refused")
	cases := []struct {
		name    string
		err     error
		wantErr error // nil means success
	}{
		{name: "ok", err: nil},
		{name: "not found is success", err: api.StatusError{Code: http.StatusNotFound, Body: "Unknown service ID"}},
		{name: "wrapped not found is success", err: errors.Join(errors.New("ctx"), errNotFound)},
		{name: "server error", err: api.StatusError{Code: http.StatusInternalServerError, Body: "oops"}, wantErr: api.StatusError{Code: http.StatusInternalServerError, Body: "oops"}},
		{name: "transport error", err: boom, wantErr: boom},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.dereg = tc.err
			r := newTest(t, f)
			err := r.Deregister(t.Context(), inst())
			if f.count("deregister svc-10.0.0.1-8080") != 1 {
				t.Errorf("ServiceDeregisterOpts(svc-10.0.0.1-8080) calls: want 1, got %q", f.calls())
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Errorf("Deregister: want nil, got %v", err)
				}
				return
			}
			var re *registry.Error
			if !errors.As(err, &re) {
				t.Fatalf("Deregister: want *registry.Error, got %#v", err)
			}
			if re.Registry != "consul://127.0.0.1:8500" || re.Op != "deregister" || !errors.Is(err, tc.wantErr) {
				t.Errorf("Deregister: want registry consul://127.0.0.1:8500, op deregister, wrapping %v; got %q, %q, %v", tc.wantErr, re.Registry, re.Op, re.Err)
			}
		})
	}
}

func TestDeregisterStopsKeeper(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f, WithResync(time.Millisecond))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	f.waitLog(t, "a TTL renewal", func(log []string) bool { return countLocked(log, "ttl ") >= 1 })
	if err := r.Deregister(t.Context(), inst()); err != nil {
		t.Fatalf("Deregister: want nil, got %v", err)
	}
	r.mu.Lock()
	n := len(r.keepers)
	r.mu.Unlock()
	if n != 0 {
		t.Errorf("keepers after Deregister: want 0, got %d", n)
	}
	// Deregister waited for the keeper, so no renewal may follow it.
	log := f.calls()
	if last := log[len(log)-1]; !strings.HasPrefix(last, "deregister") {
		t.Errorf("last call: want the deregistration, got %q in %v", last, log)
	}
}

func TestDisableEnableSetHealth(t *testing.T) {
	t.Parallel()
	boom := errors.New("agent down")
	cases := []struct {
		name     string
		opts     []Option
		maintErr error
		call     func(r *Registry) error
		wantLog  string
		wantOp   string
		wantErr  error
	}{
		{name: "disable", call: func(r *Registry) error { return r.Disable(t.Context(), inst()) }, wantLog: "maintenance on svc-10.0.0.1-8080"},
		{name: "enable", call: func(r *Registry) error { return r.Enable(t.Context(), inst()) }, wantLog: "maintenance off svc-10.0.0.1-8080"},
		{name: "disable fails", maintErr: boom, call: func(r *Registry) error { return r.Disable(t.Context(), inst()) }, wantLog: "maintenance on", wantOp: "disable", wantErr: boom},
		{
			name: "set health", call: func(r *Registry) error {
				return r.SetHealth(t.Context(), inst(), registry.HealthWarning, "slow")
			},
			wantLog: `ttl service:svc-10.0.0.1-8080 warning "slow"`,
		},
		{
			name: "set health without ttl", opts: []Option{WithCheck(Check{TCP: "10.0.0.1:8080"})},
			call:   func(r *Registry) error { return r.SetHealth(t.Context(), inst(), registry.HealthCritical, "") },
			wantOp: "set health", wantErr: registry.ErrNotSupported,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.maint = tc.maintErr
			r := newTest(t, f, tc.opts...)
			err := tc.call(r)
			if tc.wantLog != "" && f.count(tc.wantLog) != 1 {
				t.Errorf("calls: want one %q, got %q", tc.wantLog, f.calls())
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Errorf("want nil error, got %v", err)
				}
				return
			}
			var re *registry.Error
			if !errors.As(err, &re) || re.Op != tc.wantOp || !errors.Is(err, tc.wantErr) {
				t.Errorf("want *registry.Error op %q wrapping %v, got %#v", tc.wantOp, tc.wantErr, err)
			}
		})
	}
}

func TestKeeperRenewsTTL(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f, WithResync(time.Millisecond))
	i := inst()
	i.ID = "svc-a"
	if err := r.Register(t.Context(), i); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	f.waitLog(t, "three TTL renewals", func(log []string) bool {
		return countLocked(log, `ttl service:svc-a passing ""`) >= 3
	})
	if n := f.count("register"); n != 1 {
		t.Errorf("registrations while the agent keeps the service: want 1, got %d", n)
	}
}

func TestKeeperChecksServiceWithoutTTL(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f, WithCheck(Check{HTTP: "http://10.0.0.1:8080/h"}), WithResync(time.Millisecond))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	f.waitLog(t, "a service check", func(log []string) bool { return countLocked(log, "health-id svc-10.0.0.1-8080") >= 1 })
	f.set(func(f *fakeConsul) { f.lose = true })
	f.waitLog(t, "a re-registration", func(log []string) bool { return countLocked(log, "register ") >= 2 })
	if n := f.count("ttl "); n != 0 {
		t.Errorf("TTL updates with an HTTP check: want 0, got %d", n)
	}
}

// TestKeeperRestores drives the keeper through a lost registration: the
// agent answers 404 to a renewal, and the keeper registers again with the
// state the instance had.
func TestKeeperRestores(t *testing.T) {
	t.Parallel()
	const id = "svc-10.0.0.1-8080"
	cases := []struct {
		name  string
		setup func(t *testing.T, r *Registry)
		want  []string // calls after the 404, in order
	}{
		{
			name: "enabled",
			want: []string{"register " + id},
		},
		{
			name: "disabled",
			setup: func(t *testing.T, r *Registry) {
				if err := r.Disable(t.Context(), inst()); err != nil {
					t.Fatalf("Disable: want nil, got %v", err)
				}
			},
			want: []string{"register " + id, "maintenance on " + id},
		},
		{
			name: "warning",
			setup: func(t *testing.T, r *Registry) {
				if err := r.SetHealth(t.Context(), inst(), registry.HealthWarning, "busy"); err != nil {
					t.Fatalf("SetHealth: want nil, got %v", err)
				}
			},
			want: []string{"register " + id, `ttl service:` + id + ` warning "busy"`},
		},
		{
			name: "disabled then enabled",
			setup: func(t *testing.T, r *Registry) {
				if err := r.Disable(t.Context(), inst()); err != nil {
					t.Fatalf("Disable: want nil, got %v", err)
				}
				if err := r.Enable(t.Context(), inst()); err != nil {
					t.Fatalf("Enable: want nil, got %v", err)
				}
			},
			want: []string{"register " + id},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r := newTest(t, f, WithResync(time.Millisecond))
			if err := r.Register(t.Context(), inst()); err != nil {
				t.Fatalf("Register: want nil, got %v", err)
			}
			if tc.setup != nil {
				tc.setup(t, r)
			}
			// Let the agent forget the service; mark where that happens.
			f.mu.Lock()
			f.lose = true
			mark := len(f.log)
			f.mu.Unlock()
			log := f.waitLog(t, "the keeper to re-register", func(log []string) bool {
				return countLocked(log[mark:], "register ") >= 1 && len(log) > mark+len(tc.want)+1
			})
			// After the mark: the renewal that got 404, then the restoration.
			// The keeper's looks between renewals change nothing; skip them.
			var after []string
			lost := false
			for _, l := range log[mark:] {
				if isLook(l) {
					continue
				}
				if !lost {
					lost = strings.HasPrefix(l, "ttl ")
					continue
				}
				after = append(after, l)
			}
			if len(after) < len(tc.want) || !reflect.DeepEqual(after[:len(tc.want)], tc.want) {
				t.Fatalf("calls after the 404: want %q first, got %q", tc.want, after)
			}
			// Nothing else restores state: the next call is a plain renewal.
			if len(after) > len(tc.want) && !strings.HasPrefix(after[len(tc.want)], "ttl ") {
				t.Errorf("call after the restoration: want a TTL renewal, got %q", after[len(tc.want)])
			}
		})
	}
}

// isLook reports whether a fake's log line is one of the keeper's reads
// between renewals.
func isLook(line string) bool {
	return strings.HasPrefix(line, "service ") || strings.HasPrefix(line, "watch ") || strings.HasPrefix(line, "health-id ")
}

func TestKeeperRetriesErrors(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.ttlErr = api.StatusError{Code: http.StatusInternalServerError, Body: "raft"}
	r := newTest(t, f, WithResync(time.Hour-time.Second), WithCheck(Check{TTL: time.Hour}))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	// With a resync of nearly an hour, only the backoff brings a second try.
	f.waitLog(t, "retries after failed renewals", func(log []string) bool { return countLocked(log, "ttl ") >= 3 })
	if n := f.count("register"); n != 1 {
		t.Errorf("registrations after a 500: want 1 (only a 404 means lost), got %d", n)
	}
}

// TestCloseStopsKeepers is not parallel: goleak must see only this test's
// goroutines.
func TestCloseStopsKeepers(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFake()
	r, err := New(withClient(f), WithResync(time.Millisecond))
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	for k, port := range []int{8080, 8081, 8082} {
		i := inst()
		i.Port = port
		if err := r.Register(t.Context(), i); err != nil {
			t.Fatalf("Register %d: want nil, got %v", k, err)
		}
	}
	f.waitLog(t, "every keeper to renew", func(log []string) bool {
		return countLocked(log, "ttl service:svc-10.0.0.1-8080") > 0 &&
			countLocked(log, "ttl service:svc-10.0.0.1-8081") > 0 &&
			countLocked(log, "ttl service:svc-10.0.0.1-8082") > 0
	})
	if err := within(t, "Close", r.Close); err != nil {
		t.Errorf("Close: want nil, got %v", err)
	}
	if err := r.Register(t.Context(), inst()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Register after Close: want a \"backend is closed\" error, got %v", err)
	}
	// Closing twice is harmless.
	if err := within(t, "second Close", r.Close); err != nil {
		t.Errorf("second Close: want nil, got %v", err)
	}
}

// TestCloseEndsBlockedKeeper: a renewal stuck on a slow agent does not hold
// Close up, because Close cancels the keeper's context.
func TestCloseEndsBlockedKeeper(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := newFake()
	f.blockTTL = true
	// The renewal's own timeout (the resync) is longer than wait.
	r, err := New(withClient(f), WithResync(10*time.Second))
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	f.waitLog(t, "a renewal to start", func(log []string) bool { return countLocked(log, "ttl ") > 0 })
	if err := within(t, "Close", r.Close); err != nil {
		t.Errorf("Close: want nil, got %v", err)
	}
}

// TestRegisterTwiceKeepsOneKeeper: registering an instance again updates
// the registration and the keeper's copy, without a second keeper.
func TestRegisterTwiceKeepsOneKeeper(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f)
	i := inst()
	for k, tags := range [][]string{{"v1"}, {"v2"}} {
		i.Tags = tags
		if err := r.Register(t.Context(), i); err != nil {
			t.Fatalf("Register %d: want nil, got %v", k, err)
		}
	}
	r.mu.Lock()
	n := len(r.keepers)
	k := r.keepers[ServiceID(i)]
	r.mu.Unlock()
	if n != 1 || k == nil {
		t.Fatalf("keepers: want 1 for %s, got %d", ServiceID(i), n)
	}
	k.mu.Lock()
	tags := k.inst.Tags
	k.mu.Unlock()
	if !reflect.DeepEqual(tags, []string{"v2"}) {
		t.Errorf("keeper's instance tags: want [v2], got %v", tags)
	}
	if got := f.count("register "); got != 2 {
		t.Errorf("ServiceRegisterOpts calls: want 2, got %d", got)
	}
}

// TestKeeperLearnsOutsideDisable: an operator (or `lameduck offline
// --disable` in another process) puts the service in maintenance mode, and
// the keeper learns it at once; when the agent later loses its state, the keeper restores the service
// hidden (critical, then maintenance mode), not passing.
func TestKeeperLearnsOutsideDisable(t *testing.T) {
	t.Parallel()
	f := newFake()
	// Half an hour between renewals: only the blocking query can tell the
	// keeper in time.
	r := newTest(t, f, WithResync(30*time.Minute), WithCheck(Check{TTL: time.Hour}))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	id := ServiceID(inst())
	f.waitLog(t, "the blocking query", func(log []string) bool { return countLocked(log, "watch ") >= 2 })
	f.mu.Lock()
	f.setMaintLocked(id, true) // someone else's maintenance mode
	mark := len(f.log)
	f.mu.Unlock()
	f.waitLog(t, "a look after the outside disable", func(log []string) bool { return countLocked(log[mark:], "health-id ") >= 1 })
	f.mu.Lock()
	f.lose, f.maintOn = true, nil // the agent restarts and forgets everything
	mark = len(f.log)
	f.mu.Unlock()
	log := f.waitLog(t, "the restore", func(log []string) bool { return countLocked(log[mark:], "maintenance on ") >= 1 })
	var restore []string
	for _, l := range log[mark:] {
		if !isLook(l) && !strings.HasPrefix(l, "ttl ") {
			restore = append(restore, l)
		}
	}
	if want := []string{"register " + id, "maintenance on " + id}; !reflect.DeepEqual(restore[:2], want) {
		t.Errorf("restore after the outside disable: want %q, got %q", want, restore)
	}
	f.mu.Lock()
	reg := f.regs[len(f.regs)-1]
	f.mu.Unlock()
	if reg.Check.Status != api.HealthCritical {
		t.Errorf("restored check status of a disabled instance: want critical until maintenance is on, got %q", reg.Check.Status)
	}
}

// TestKeeperStopsAtOnceOnOutsideDeregister: the blocking query between
// renewals sees a deregistration by someone else at once (the resync here
// is half an hour), and the keeper stops; a later agent restart then finds
// nothing to restore.
func TestKeeperStopsAtOnceOnOutsideDeregister(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.sameNode = true
	r := newTest(t, f, WithResync(30*time.Minute), WithCheck(Check{TTL: time.Hour}))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	id := ServiceID(inst())
	// The second query is the one that blocks: the first has answered.
	f.waitLog(t, "the blocking query", func(log []string) bool { return countLocked(log, "watch ") >= 2 })
	f.set(func(f *fakeConsul) { f.gone = true })
	r.mu.Lock()
	k := r.keepers[id]
	r.mu.Unlock()
	within(t, "the keeper to stop", func() struct{} { <-k.done; return struct{}{} })
	f.set(func(f *fakeConsul) { f.sameNode = false })
	if n := f.count("register "); n != 1 {
		t.Errorf("registrations: want 1 (no restore after an outside deregister), got %d", n)
	}
}

// TestKeeperRetriesMaintenanceOfRestore: when the restore of a disabled
// instance registered it but maintenance mode failed, the next tick puts
// it in maintenance mode before anything else, and the renewal that
// follows does not mistake the instance for enabled.
func TestKeeperRetriesMaintenanceOfRestore(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f, WithResync(time.Millisecond))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.Disable(t.Context(), inst()); err != nil {
		t.Fatalf("Disable: want nil, got %v", err)
	}
	id := ServiceID(inst())
	f.mu.Lock()
	f.lose, f.maintOn, f.maint = true, nil, errors.New("agent busy")
	mark := len(f.log)
	f.mu.Unlock()
	f.waitLog(t, "a failed maintenance call", func(log []string) bool { return countLocked(log[mark:], "maintenance on ") >= 1 })
	f.set(func(f *fakeConsul) { f.maint = nil })
	f.waitLog(t, "maintenance mode back on", func(log []string) bool { return countLocked(log[mark:], "maintenance on ") >= 2 })
	f.mu.Lock()
	mark = len(f.log)
	f.mu.Unlock()
	f.waitLog(t, "two more looks", func(log []string) bool { return countLocked(log[mark:], "health-id ") >= 2 })
	f.mu.Lock()
	on := f.maintOn[id]
	f.mu.Unlock()
	r.mu.Lock()
	k := r.keepers[id]
	r.mu.Unlock()
	k.mu.Lock()
	disabled := k.disabled
	k.mu.Unlock()
	if !on || !disabled {
		t.Errorf("after the retried restore: want maintenance on and the keeper's intent disabled, got maintenance %v, disabled %v", on, disabled)
	}
}

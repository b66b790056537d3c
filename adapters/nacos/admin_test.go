package nacos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/registry"
	"github.com/nacos-group/nacos-sdk-go/v2/model"
)

const (
	testUser     = "ops"
	testPassword = "pa55-w0rd-secret"
	testToken    = "tok-3f9a-secret"
)

// adminRequest is one request the fake admin API received.
type adminRequest struct {
	method, path string
	token        string     // the accessToken header
	params       url.Values // query for GET, form for the rest
	rawQuery     string
}

// fakeAdmin is the server's HTTP login and v3 instance admin API. It holds
// one instance, answers with the status a test sets per path, and records
// every request.
type fakeAdmin struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	reqs     []adminRequest
	enabled  bool
	weight   float64
	status   map[string]int    // path -> HTTP status to answer instead
	body     map[string]string // path -> body to answer with that status
	hold     chan struct{}     // when set, requests wait for it to close
	instance url.Values        // the params that name the held instance
}

func newFakeAdmin(t *testing.T) *fakeAdmin {
	t.Helper()
	f := &fakeAdmin{t: t, enabled: true, weight: 2.5, status: map[string]int{}, body: map[string]string{}}
	f.instance = url.Values{
		"groupName": {"DEFAULT_GROUP"}, "serviceName": {"svc"}, "clusterName": {"DEFAULT"},
		"ip": {"10.0.0.1"}, "port": {"8080"},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAdmin) addr() string { return f.srv.Listener.Addr().String() }

func (f *fakeAdmin) set(change func(f *fakeAdmin)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

func (f *fakeAdmin) requests() []adminRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]adminRequest(nil), f.reqs...)
}

func (f *fakeAdmin) serve(w http.ResponseWriter, req *http.Request) {
	if err := req.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	params := req.PostForm
	if req.Method == http.MethodGet {
		params = req.URL.Query()
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, adminRequest{method: req.Method, path: req.URL.Path, token: req.Header.Get("accessToken"), params: params, rawQuery: req.URL.RawQuery})
	hold, code, body := f.hold, f.status[req.URL.Path], f.body[req.URL.Path]
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-req.Context().Done():
			return
		}
	}
	if code != 0 {
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
		return
	}
	switch {
	case req.Method == http.MethodPost && req.URL.Path == loginPath:
		if params.Get("username") != testUser || params.Get("password") != testPassword {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte("unknown user!"))
			return
		}
		_, _ = w.Write([]byte(`{"accessToken":"` + testToken + `","tokenTtl":18000,"globalAdmin":false,"username":"ops"}`))
	case req.Header.Get("accessToken") != testToken:
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"status":403,"error":"Forbidden","path":"` + req.URL.Path + `"}`))
	case !f.names(params):
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"code":20004,"message":"resource not found","data":"no matched ip found"}`))
	case req.Method == http.MethodGet && req.URL.Path == adminInstancePath:
		f.mu.Lock()
		data, _ := json.Marshal(map[string]any{"ip": "10.0.0.1", "port": 8080, "weight": f.weight, "enabled": f.enabled, "healthy": true, "ephemeral": true})
		f.mu.Unlock()
		_, _ = w.Write([]byte(`{"code":0,"message":"success","data":` + string(data) + `}`))
	case req.Method == http.MethodPut && req.URL.Path == adminPatchPath:
		f.mu.Lock()
		f.enabled = params.Get("enabled") == "true"
		f.mu.Unlock()
		_, _ = w.Write([]byte(`{"code":0,"message":"success","data":"ok"}`))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"status":404,"error":"Not Found"}`))
	}
}

// names reports whether params name the fake's instance.
func (f *fakeAdmin) names(params url.Values) bool {
	for k, v := range f.instance {
		if params.Get(k) != v[0] {
			return false
		}
	}
	return true
}

// newAdminTest returns a Registry whose SDK is a fake with nothing
// published and whose admin API is a.
func newAdminTest(t *testing.T, a *fakeAdmin, opts ...Option) (*Registry, *fakeNacos) {
	t.Helper()
	f := newFake()
	// Unlike the other unit tests, these have an admin API behind them, so
	// Register's look for a stale disable stays on.
	withAdminAPI := Option(func(o *options) { o.noAdminAPI = false })
	base := []Option{WithAddress(a.addr()), WithCredentials(testUser, testPassword), withAdminAPI}
	return newTest(t, f, append(base, opts...)...), f
}

func TestRemoteEnabled(t *testing.T) {
	t.Parallel()
	id := func(extra ...string) url.Values {
		v := url.Values{
			"groupName": {"DEFAULT_GROUP"}, "serviceName": {"svc"}, "clusterName": {"DEFAULT"},
			"ip": {"10.0.0.1"}, "port": {"8080"},
		}
		for k := 0; k < len(extra); k += 2 {
			v.Set(extra[k], extra[k+1])
		}
		return v
	}
	login := adminRequest{method: http.MethodPost, path: loginPath, params: url.Values{"username": {testUser}, "password": {testPassword}}}
	cases := []struct {
		name     string
		opts     []Option
		setup    func(a *fakeAdmin)
		in       registry.Instance
		op       string
		want     []adminRequest
		wantOn   bool // the fake's enabled afterwards
		wantNoTk bool // requests carry no accessToken
	}{
		{
			name: "disable sends enabled false and keeps the weight",
			in:   inst(), op: "disable",
			want: []adminRequest{
				login,
				{method: http.MethodGet, path: adminInstancePath, token: testToken, params: id()},
				{method: http.MethodPut, path: adminPatchPath, token: testToken, params: id("enabled", "false", "weight", "2.5")},
			},
		},
		{
			name:  "enable a disabled instance",
			setup: func(a *fakeAdmin) { a.enabled = false },
			in:    inst(), op: "enable",
			want: []adminRequest{
				login,
				{method: http.MethodGet, path: adminInstancePath, token: testToken, params: id()},
				{method: http.MethodPut, path: adminPatchPath, token: testToken, params: id("enabled", "true", "weight", "2.5")},
			},
			wantOn: true,
		},
		{
			name:  "disable an already disabled instance writes nothing",
			setup: func(a *fakeAdmin) { a.enabled = false },
			in:    inst(), op: "disable",
			want: []adminRequest{
				login,
				{method: http.MethodGet, path: adminInstancePath, token: testToken, params: id()},
			},
		},
		{
			name: "namespace, group and cluster name the instance",
			opts: []Option{WithNamespace("dev"), WithGroup("G"), WithCluster("C")},
			setup: func(a *fakeAdmin) {
				a.instance = id("namespaceId", "dev", "groupName", "IG", "clusterName", "C")
			},
			in: registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080, Group: "IG", Namespace: "dev"}, op: "disable",
			want: []adminRequest{
				login,
				{method: http.MethodGet, path: adminInstancePath, token: testToken, params: id("namespaceId", "dev", "groupName", "IG", "clusterName", "C")},
				{method: http.MethodPut, path: adminPatchPath, token: testToken, params: id("namespaceId", "dev", "groupName", "IG", "clusterName", "C", "enabled", "false", "weight", "2.5")},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newFakeAdmin(t)
			if tc.setup != nil {
				a.set(tc.setup)
			}
			r, f := newAdminTest(t, a, tc.opts...)
			var err error
			if tc.op == "disable" {
				err = r.Disable(t.Context(), tc.in)
			} else {
				err = r.Enable(t.Context(), tc.in)
			}
			if err != nil {
				t.Fatalf("%s %s: want nil, got %v", tc.op, tc.in.Endpoint(), err)
			}
			got := a.requests()
			for k := range got {
				if strings.Contains(got[k].rawQuery, testToken) || strings.Contains(got[k].rawQuery, testPassword) {
					t.Errorf("request %d: want no credentials in the URL, got query %q", k, got[k].rawQuery)
				}
				got[k].rawQuery = ""
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("admin requests:\nwant %+v\ngot  %+v", tc.want, got)
			}
			a.mu.Lock()
			on := a.enabled
			a.mu.Unlock()
			if on != tc.wantOn {
				t.Errorf("enabled on the server after %s: want %v, got %v", tc.op, tc.wantOn, on)
			}
			if len(f.batches) != 0 || len(f.deregisters) != 0 {
				t.Errorf("SDK writes: want none for an instance another client registered, got %d batches, %d deregistrations", len(f.batches), len(f.deregisters))
			}
		})
	}
}

func TestRemoteEnabledErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		opts    []Option
		setup   func(a *fakeAdmin)
		in      registry.Instance
		wantIs  error    // nil: must match neither sentinel
		status  int      // the *StatusError's Code, 0: none expected
		want    []string // in the message
		wantNot []string // not in the message
	}{
		{
			name:   "login refused",
			opts:   []Option{WithCredentials(testUser, "wrong-"+testPassword)},
			in:     inst(),
			wantIs: ErrAccessDenied, status: http.StatusForbidden,
			want: []string{`login as "ops" refused`, "HTTP 403"},
		},
		{
			name: "write forbidden",
			setup: func(a *fakeAdmin) {
				a.status[adminPatchPath] = http.StatusForbidden
				a.body[adminPatchPath] = `{"code":403,"message":"authorization failed! token ` + testToken + `","data":null}`
			},
			in:     inst(),
			wantIs: ErrAccessDenied, status: http.StatusForbidden,
			want: []string{`user "ops" may not change instance 10.0.0.1:8080 of "svc"`, "authorization failed", "REDACTED"},
		},
		{
			name: "unauthorized",
			setup: func(a *fakeAdmin) {
				a.status[adminInstancePath] = http.StatusUnauthorized
			},
			in:     inst(),
			wantIs: ErrAccessDenied, status: http.StatusUnauthorized,
			want: []string{`user "ops" may not change`},
		},
		{
			name:   "no credentials on a server with auth",
			opts:   []Option{WithCredentials("", "")},
			in:     inst(),
			wantIs: ErrAccessDenied, status: http.StatusForbidden,
			want: []string{"the server wants credentials", "NACOS_USERNAME"},
		},
		{
			name:   "instance not found",
			in:     registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 9999},
			wantIs: ErrInstanceNotFound, status: http.StatusNotFound,
			want: []string{`instance 10.0.0.1:9999 of service "svc"`, "not found", `namespace "public"`, "no matched ip found"},
		},
		{
			name: "server without the v3 admin API",
			setup: func(a *fakeAdmin) {
				a.status[adminInstancePath] = http.StatusNotFound
				a.body[adminInstancePath] = `{"timestamp":"2026-01-01T00:00:00.000+00:00","status":404,"error":"Not Found","path":"/nacos/v3/admin/ns/instance"}`
			},
			in:     inst(),
			status: http.StatusNotFound,
			want:   []string{"no admin API", "Nacos 3.0 or later"},
		},
		{
			name: "server error",
			setup: func(a *fakeAdmin) {
				a.status[adminPatchPath] = http.StatusInternalServerError
				a.body[adminPatchPath] = `{"code":30000,"message":"server error","data":"raft is down"}`
			},
			in:     inst(),
			status: http.StatusInternalServerError,
			want:   []string{"HTTP 500, code 30000: server error: raft is down"},
		},
		{
			name: "answer past the limit",
			setup: func(a *fakeAdmin) {
				a.status[adminInstancePath] = http.StatusOK
				a.body[adminInstancePath] = `{"code":0,"message":"success","data":"` + strings.Repeat("x", maxAnswer) + `"}`
			},
			in:   inst(),
			want: []string{"GET /nacos/v3/admin/ns/instance: read the answer: the answer is more than the limit of 1 MiB"},
		},
		{
			name:   "other namespace",
			in:     registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080, Namespace: "prod"},
			want:   []string{`namespace "prod"`},
			status: 0,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newFakeAdmin(t)
			if tc.setup != nil {
				a.set(tc.setup)
			}
			r, _ := newAdminTest(t, a, tc.opts...)
			err := r.Disable(t.Context(), tc.in)
			var re *registry.Error
			if !errors.As(err, &re) || re.Op != "disable" {
				t.Fatalf("Disable: want *registry.Error with op disable, got %#v", err)
			}
			for _, s := range []error{ErrAccessDenied, ErrInstanceNotFound} {
				if got, want := errors.Is(err, s), s == tc.wantIs; got != want {
					t.Errorf("errors.Is(err, %v): want %v, got %v (err %v)", s, want, got, err)
				}
			}
			var se *StatusError
			if got := errors.As(err, &se); got != (tc.status != 0) || (got && se.Code != tc.status) {
				t.Errorf("errors.As *StatusError: want code %d, got %#v (err %v)", tc.status, se, err)
			}
			msg := err.Error()
			for _, s := range tc.want {
				if !strings.Contains(msg, s) {
					t.Errorf("Disable: want an error containing %q, got %q", s, msg)
				}
			}
			for _, s := range append(tc.wantNot, testToken, testPassword) {
				if strings.Contains(msg, s) {
					t.Errorf("Disable: want an error without %q, got %q", s, msg)
				}
			}
		})
	}
}

// TestRemoteEnabledBounded: the admin exchange ends with the caller's ctx
// and with the backend's timeout, whichever is first, and Close waits for it.
func TestRemoteEnabledBounded(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		opts []Option
		ctx  func(parent context.Context) (context.Context, context.CancelFunc)
	}{
		{
			name: "caller's deadline",
			ctx: func(p context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(p, 50*time.Millisecond)
			},
		},
		{
			name: "backend timeout",
			opts: []Option{WithTimeout(50 * time.Millisecond)},
			ctx:  context.WithCancel,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newFakeAdmin(t)
			hold := make(chan struct{})
			defer close(hold)
			a.set(func(a *fakeAdmin) { a.hold = hold })
			r, _ := newAdminTest(t, a, tc.opts...)
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			err := within(t, "Disable", func() error { return r.Disable(ctx, inst()) })
			var re *registry.Error
			if !errors.As(err, &re) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Disable: want *registry.Error wrapping context.DeadlineExceeded, got %v", err)
			}
			if err := within(t, "Close", r.Close); err != nil {
				t.Errorf("Close: want nil, got %v", err)
			}
		})
	}
}

func TestRemoteEnabledAfterClose(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, _ := newAdminTest(t, a)
	if err := r.Close(); err != nil {
		t.Fatalf("Close: want nil, got %v", err)
	}
	err := r.Disable(t.Context(), inst())
	if err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Disable after Close: want an error saying closed, got %v", err)
	}
	if got := a.requests(); len(got) != 0 {
		t.Errorf("admin requests after Close: want none, got %+v", got)
	}
}

// TestOwnInstanceSkipsAdmin: an instance this backend registered is
// re-published; the admin API is called only by Register, to look for a
// stale disable (login and one GET, no write when it is enabled).
func TestOwnInstanceSkipsAdmin(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, f := newAdminTest(t, a)
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.awaitClear(t.Context(), "test", inst()); err != nil { // Register's look runs in the background
		t.Fatal(err)
	}
	if got := a.requests(); len(got) != 2 || got[0].method != "POST" || got[1].method != "GET" {
		t.Fatalf("admin requests by Register: want a login and one GET, got %+v", got)
	}
	a.set(func(f *fakeAdmin) { f.reqs = nil })
	if err := r.Disable(t.Context(), inst()); err != nil {
		t.Fatalf("Disable: want nil, got %v", err)
	}
	if err := r.Enable(t.Context(), inst()); err != nil {
		t.Fatalf("Enable: want nil, got %v", err)
	}
	if got := a.requests(); len(got) != 0 {
		t.Errorf("admin requests: want none for an own instance, got %+v", got)
	}
	if len(f.batches) != 3 || f.batches[1].Instances[0].Enable || !f.batches[2].Instances[0].Enable {
		t.Errorf("batches: want register, enabled false, enabled true; got %+v", f.batches)
	}
}

// TestForeignDeregisterIsNoop: Deregister of an instance another client
// registered succeeds without touching the server.
// Deregister of an instance another client registered disables it (it
// cannot be removed), and one that is not registered at all is success.
func TestForeignDeregisterDisables(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, f := newAdminTest(t, a)
	if err := r.Deregister(t.Context(), inst()); err != nil {
		t.Fatalf("Deregister: want nil, got %v", err)
	}
	got := a.requests()
	if len(got) != 3 || got[2].method != http.MethodPut || got[2].params.Get("enabled") != "false" || len(f.log) != 0 {
		t.Fatalf("calls: want login, GET, PUT enabled=false and no SDK call, got admin %+v, SDK %q", got, f.log)
	}
	unknown := inst()
	unknown.Port = 9999
	if err := r.Deregister(t.Context(), unknown); err != nil {
		t.Fatalf("Deregister of an instance that is not registered: want nil, got %v", err)
	}
}

// A Register finds its endpoint still disabled by an earlier Disable from
// another client, and enables it, since Nacos keeps that override after
// the instance is gone.
func TestRegisterClearsStaleDisable(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	a.set(func(f *fakeAdmin) { f.enabled = false })
	r, _ := newAdminTest(t, a)
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.awaitClear(t.Context(), "test", inst()); err != nil { // Register's look runs in the background
		t.Fatal(err)
	}
	got := a.requests()
	if len(got) != 3 || got[2].method != http.MethodPut || got[2].params.Get("enabled") != "true" {
		t.Fatalf("admin requests: want login, GET and a PUT enabled=true, got %+v", got)
	}
}

// Register's look for a stale disable runs in the background; a Disable
// right after it waits for it, so the look's enable can never undo the
// Disable.
func TestDisableWaitsForRegistersLook(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	a.set(func(f *fakeAdmin) { f.enabled = false })
	r, f := newAdminTest(t, a)
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.Disable(t.Context(), inst()); err != nil {
		t.Fatalf("Disable: want nil, got %v", err)
	}
	got := a.requests()
	if len(got) != 3 || got[2].method != http.MethodPut || got[2].params.Get("enabled") != "true" {
		t.Fatalf("admin requests by the time Disable returned: want Register's login, GET and PUT enabled=true, got %+v", got)
	}
	if last := f.batches[len(f.batches)-1]; last.Instances[0].Enable {
		t.Fatalf("want the last publish to disable the instance, got %+v", last)
	}
}

// TestStatusErrorRejected checks which refusals lameduck's retry loop gives
// up on at once: bad credentials or rights and malformed requests, not a
// missing instance or a busy server.
func TestStatusErrorRejected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code int
		want bool
	}{
		{http.StatusBadRequest, true},
		{http.StatusUnauthorized, true},
		{http.StatusForbidden, true},
		{http.StatusNotFound, false},
		{http.StatusTooManyRequests, false},
		{http.StatusInternalServerError, false},
	} {
		err := error(&StatusError{Code: tc.code})
		wrapped := fmt.Errorf("disable: %w", err)
		if got := errors.Is(wrapped, registry.ErrRejected); got != tc.want {
			t.Errorf("HTTP %d: errors.Is(ErrRejected) = %v, want %v", tc.code, got, tc.want)
		}
		if got := backoff.IsPermanent(wrapped); got != tc.want {
			t.Errorf("HTTP %d: backoff.IsPermanent = %v, want %v", tc.code, got, tc.want)
		}
	}
}

// withKeeper makes the keeper look every millisecond and trust a publish
// after settle.
func withKeeper(settle time.Duration) Option {
	return func(o *options) { o.resync, o.settle = time.Millisecond, settle }
}

// TestKeeperAdoptsOutsideDisable: someone else disables the instance
// through the admin API (a server-side override, which a restarted server
// no longer has); the keeper adopts it into what it publishes, so the
// SDK's redo re-registers it disabled. An enable by someone else is
// adopted the same way.
func TestKeeperAdoptsOutsideDisable(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, f := newAdminTest(t, a, withKeeper(time.Millisecond))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.awaitClear(t.Context(), "test", inst()); err != nil { // it would undo the disable below
		t.Fatal(err)
	}
	lastEnable := func(f *fakeNacos) (bool, int) {
		b := f.batches[len(f.batches)-1]
		return b.Instances[0].Enable, len(f.batches)
	}
	a.set(func(a *fakeAdmin) { a.enabled = false })
	f.waitFor(t, "a publish with enabled=false", func(f *fakeNacos) bool { on, _ := lastEnable(f); return !on })
	a.set(func(a *fakeAdmin) { a.enabled = true })
	f.waitFor(t, "a publish with enabled=true", func(f *fakeNacos) bool { on, _ := lastEnable(f); return on })
	f.mu.Lock()
	_, n := lastEnable(f)
	f.mu.Unlock()
	if n != 3 {
		t.Errorf("publishes: want 3 (register, adopt the disable, adopt the enable), got %d", n)
	}
}

// TestKeeperTrustsOwnRecentPublish: right after the backend's own publish,
// a server that still shows the old state (a cluster node a second
// behind) is not taken for someone else's change.
func TestKeeperTrustsOwnRecentPublish(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, f := newAdminTest(t, a, withKeeper(time.Hour))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.awaitClear(t.Context(), "test", inst()); err != nil {
		t.Fatal(err)
	}
	a.set(func(a *fakeAdmin) { a.enabled = false })
	time.Sleep(50 * time.Millisecond) // fifty rounds of the keeper
	f.mu.Lock()
	n := len(f.batches)
	f.mu.Unlock()
	if n != 1 {
		t.Errorf("publishes while the own publish is not settled: want 1 (the register), got %d", n)
	}
	if got := len(a.requests()); got != 2 {
		t.Errorf("admin requests: want Register's login and GET only, got %d", got)
	}
}

// TestKeeperLooksAtEveryPush: with a resync of an hour, a push for the
// service (consumers' view changed) is what makes the keeper look, and it
// adopts the disable made elsewhere at once.
func TestKeeperLooksAtEveryPush(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, f := newAdminTest(t, a, func(o *options) { o.resync, o.settle = time.Hour, time.Millisecond })
	// Consumers see the instance until the push says otherwise.
	f.set(func(f *fakeNacos) {
		f.hosts = []model.Instance{{Ip: "10.0.0.1", Port: 8080, Enable: true, Healthy: true, Weight: 1, ClusterName: "DEFAULT"}}
	})
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.awaitClear(t.Context(), "test", inst()); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "the keeper's subscription", func(f *fakeNacos) bool { return len(f.subscribed) > 0 })
	a.set(func(a *fakeAdmin) { a.enabled = false })
	f.push(t, nil, nil) // the disabled instance leaves consumers' view
	f.waitFor(t, "a publish with enabled=false", func(f *fakeNacos) bool {
		return len(f.batches) > 1 && !f.batches[len(f.batches)-1].Instances[0].Enable
	})
}

// TestKeeperRelistsLostInstance: a published instance the server does not
// hold at two looks in a row (the SDK's one re-registration after a
// reconnect failed) is published again; one look alone is not enough.
func TestKeeperRelistsLostInstance(t *testing.T) {
	t.Parallel()
	a := newFakeAdmin(t)
	r, f := newAdminTest(t, a, withKeeper(time.Millisecond))
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	if err := r.awaitClear(t.Context(), "test", inst()); err != nil {
		t.Fatal(err)
	}
	a.set(func(a *fakeAdmin) {
		a.status[adminInstancePath] = http.StatusNotFound
		a.body[adminInstancePath] = `{"code":20004,"message":"resource not found","data":"no matched ip found"}`
	})
	f.waitFor(t, "the instance published again", func(f *fakeNacos) bool { return len(f.batches) >= 2 })
	f.mu.Lock()
	first, again := f.batches[0], f.batches[1]
	f.mu.Unlock()
	if !reflect.DeepEqual(first, again) {
		t.Errorf("republished set: want the same as registered\n%+v\ngot\n%+v", first, again)
	}
}

// TestRelistNeedsTwoLooks: one look that misses the instance publishes
// nothing; the second in a row, with nothing published between, does;
// a publish between them starts the count again.
func TestRelistNeedsTwoLooks(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f)
	if err := r.Register(t.Context(), inst()); err != nil {
		t.Fatalf("Register: want nil, got %v", err)
	}
	batches := func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.batches) }
	key := r.serviceKey(inst()) + "/" + r.instanceKey(inst())
	gen := func() uint64 { r.pubMu.Lock(); defer r.pubMu.Unlock(); return r.pubGen }
	r.relist(t.Context(), inst(), key, gen())
	if n := batches(); n != 1 {
		t.Fatalf("after one look: want only the register's publish, got %d", n)
	}
	if err := r.Register(t.Context(), inst()); err != nil { // a publish between two looks
		t.Fatal(err)
	}
	r.relist(t.Context(), inst(), key, gen())
	if n := batches(); n != 2 {
		t.Fatalf("after a look that follows a publish: want no publish but the second register's, got %d", n)
	}
	r.relist(t.Context(), inst(), key, gen())
	if n := batches(); n != 3 {
		t.Fatalf("after two looks in a row: want the set published again, got %d publishes", n)
	}
}

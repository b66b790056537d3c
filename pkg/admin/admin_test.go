package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lameduck/lameduck/drain"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait in these tests.
const wait = 5 * time.Second

const token = "tok-9c2e7b41"

// newCoordinator returns a real coordinator with no registries whose
// protocol finishes in a few milliseconds once started, and counts the
// protocol runs it makes.
func newCoordinator(t *testing.T) (*drain.Coordinator, *atomic.Int32) {
	t.Helper()
	var runs atomic.Int32
	c, err := drain.New(&drain.Tracker{},
		drain.WithBudget(10*time.Second),
		drain.WithQuietWindow(time.Millisecond),
		drain.WithEventHook(func(e drain.Event) {
			if e.Kind == drain.EventPhase && e.Phase == drain.Deregistering {
				runs.Add(1)
			}
		}),
	)
	if err != nil {
		t.Fatalf("drain.New: want a coordinator, got error %v", err)
	}
	t.Cleanup(func() {
		// Leave no protocol goroutine behind for goleak.
		c.Force()
		select {
		case <-c.Done():
		case <-time.After(wait):
			t.Errorf("coordinator: want it offline within %v of Force, got phase %v", wait, c.Phase())
		}
	})
	return c, &runs
}

func newHandler(t *testing.T, c Controller, opts ...Option) http.Handler {
	t.Helper()
	h, err := NewHandler(c, opts...)
	if err != nil {
		t.Fatalf("NewHandler: want a handler, got error %v", err)
	}
	return h
}

// do serves one request and fails the test unless the handler answers
// within wait.
func do(t *testing.T, h http.Handler, method, target string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), method, target, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { defer close(done); h.ServeHTTP(rec, req) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("%s %s: want an answer within %v, got none", method, target, wait)
	}
	return rec
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: want application/json, got %q", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("body: want JSON, got %q (%v)", rec.Body.String(), err)
	}
	return v
}

func waitOffline(t *testing.T, c *drain.Coordinator) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(wait):
		t.Fatalf("coordinator: want Offline within %v, got %v", wait, c.Phase())
	}
}

func TestNewHandlerNil(t *testing.T) {
	t.Parallel()
	if h, err := NewHandler(nil); err == nil || h != nil {
		t.Errorf("NewHandler(nil): want an error and no handler, got %v, %v", h, err)
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	c, _ := newCoordinator(t)
	h := newHandler(t, c)
	rec := do(t, h, http.MethodGet, "/status", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /status: want 200, got %d %q", rec.Code, rec.Body.String())
	}
	body := decode[map[string]any](t, rec)
	if body["phase"] != "Serving" {
		t.Errorf("phase: want \"Serving\", got %v", body["phase"])
	}
	if v, ok := body["in_flight"]; !ok || v != float64(0) {
		t.Errorf("in_flight: want 0, got %v (present %v)", v, ok)
	}
	if _, ok := body["registries"]; !ok {
		t.Errorf("registries: want the key, got body %v", body)
	}
}

func TestStatusCountsInFlight(t *testing.T) {
	t.Parallel()
	c, _ := newCoordinator(t)
	req := c.Tracker().Begin()
	defer func() { _ = req.End() }()
	rec := do(t, newHandler(t, c), http.MethodGet, "/status", nil)
	if got := decode[drain.Status](t, rec).InFlight; got != 1 {
		t.Errorf("in_flight: want 1, got %d", got)
	}
}

func TestReadyAndOffline(t *testing.T) {
	t.Parallel()
	c, runs := newCoordinator(t)
	h := newHandler(t, c)
	if rec := do(t, h, http.MethodGet, "/ready", nil); rec.Code != http.StatusOK {
		t.Fatalf("GET /ready while serving: want 200, got %d %q", rec.Code, rec.Body.String())
	}
	for k := range 2 {
		rec := do(t, h, http.MethodPost, "/offline", nil)
		if rec.Code != http.StatusAccepted {
			t.Fatalf("POST /offline %d: want 202, got %d %q", k, rec.Code, rec.Body.String())
		}
		decode[drain.Status](t, rec)
		// Ready must fail as soon as the offline request is accepted, not
		// when the protocol's goroutine gets round to its first phase.
		if rec := do(t, h, http.MethodGet, "/ready", nil); rec.Code != http.StatusServiceUnavailable {
			t.Errorf("GET /ready after POST /offline %d: want 503, got %d %q", k, rec.Code, rec.Body.String())
		}
	}
	waitOffline(t, c)
	if n := runs.Load(); n != 1 {
		t.Errorf("protocol runs after two POST /offline: want 1, got %d", n)
	}
	rec := do(t, h, http.MethodGet, "/ready", nil)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "Offline") {
		t.Errorf("GET /ready when offline: want 503 naming Offline, got %d %q", rec.Code, rec.Body.String())
	}
}

func TestMethods(t *testing.T) {
	t.Parallel()
	c, runs := newCoordinator(t)
	h := newHandler(t, c)
	cases := []struct {
		method, target string
		want           int
	}{
		{http.MethodGet, "/offline", http.StatusMethodNotAllowed},
		{http.MethodPut, "/offline", http.StatusMethodNotAllowed},
		{http.MethodPost, "/status", http.StatusMethodNotAllowed},
		{http.MethodPost, "/ready", http.StatusMethodNotAllowed},
		{http.MethodGet, "/nope", http.StatusNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.method+tc.target, func(t *testing.T) {
			rec := do(t, h, tc.method, tc.target, nil)
			if rec.Code != tc.want {
				t.Errorf("%s %s: want %d, got %d", tc.method, tc.target, tc.want, rec.Code)
			}
		})
	}
	if p, n := c.Phase(), runs.Load(); p != drain.Serving || n != 0 {
		t.Errorf("after refused requests: want Serving and no protocol run, got %v and %d runs", p, n)
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		offline  bool // POST /offline first
		target   string
		opts     []Option
		want     int
		reached  bool
		wantBody string // for errors
	}{
		{name: "offline reached", offline: true, target: "/wait?phase=Offline&timeout=5s", want: 200, reached: true},
		{name: "default phase is offline", offline: true, target: "/wait?timeout=5s", want: 200, reached: true},
		{name: "phase is case-insensitive", offline: true, target: "/wait?phase=draining", want: 200, reached: true},
		{name: "current phase", target: "/wait?phase=Serving", want: 200, reached: true},
		{name: "timeout honoured", target: "/wait?phase=Offline&timeout=20ms", want: 200, reached: false},
		{name: "max wait caps timeout", target: "/wait?phase=Offline&timeout=1h", opts: []Option{WithMaxWait(20 * time.Millisecond)}, want: 200, reached: false},
		{name: "bad phase", target: "/wait?phase=Gone", want: 400, wantBody: `"Gone"`},
		{name: "bad timeout", target: "/wait?timeout=soon", want: 400, wantBody: `"soon"`},
		{name: "zero timeout", target: "/wait?timeout=0s", want: 400, wantBody: `"0s"`},
		{name: "negative timeout", target: "/wait?timeout=-1s", want: 400, wantBody: `"-1s"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := newCoordinator(t)
			h := newHandler(t, c, tc.opts...)
			if tc.offline {
				if rec := do(t, h, http.MethodPost, "/offline", nil); rec.Code != http.StatusAccepted {
					t.Fatalf("POST /offline: want 202, got %d", rec.Code)
				}
			}
			rec := do(t, h, http.MethodGet, tc.target, nil)
			if rec.Code != tc.want {
				t.Fatalf("GET %s: want %d, got %d %q", tc.target, tc.want, rec.Code, rec.Body.String())
			}
			if tc.want != http.StatusOK {
				if !strings.Contains(rec.Body.String(), tc.wantBody) {
					t.Errorf("GET %s: want a body naming %s, got %q", tc.target, tc.wantBody, rec.Body.String())
				}
				return
			}
			res := decode[WaitResult](t, rec)
			if res.Reached != tc.reached {
				t.Errorf("GET %s: want reached=%v, got %v (phase %v)", tc.target, tc.reached, res.Reached, res.Status.Phase)
			}
			if tc.reached && tc.offline && strings.Contains(tc.target, "Offline") && res.Status.Phase != drain.Offline {
				t.Errorf("GET %s: want status phase Offline, got %v", tc.target, res.Status.Phase)
			}
		})
	}
}

// TestWaitEndsWithRequest: a long-poll ends when the client goes away.
func TestWaitEndsWithRequest(t *testing.T) {
	t.Parallel()
	c, _ := newCoordinator(t)
	h := newHandler(t, c)
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/wait?timeout=1h", nil)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { defer close(done); h.ServeHTTP(rec, req) }()
	cancel()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("GET /wait: want it to end within %v of the request's ctx, got no answer", wait)
	}
	if res := decode[WaitResult](t, rec); res.Reached {
		t.Errorf("GET /wait after the client left: want reached=false, got true")
	}
}

func TestToken(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		header http.Header
		want   int
	}{
		{name: "no header", want: http.StatusUnauthorized},
		{name: "wrong token", header: bearer("nope"), want: http.StatusUnauthorized},
		{name: "token prefix", header: bearer(token[:4]), want: http.StatusUnauthorized},
		{name: "token with extra", header: bearer(token + "x"), want: http.StatusUnauthorized},
		{name: "basic scheme", header: http.Header{"Authorization": {"Basic " + token}}, want: http.StatusUnauthorized},
		{name: "bare token", header: http.Header{"Authorization": {token}}, want: http.StatusUnauthorized},
		{name: "right token", header: bearer(token), want: http.StatusAccepted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, runs := newCoordinator(t)
			h := newHandler(t, c, WithToken(token))
			rec := do(t, h, http.MethodPost, "/offline", tc.header)
			if rec.Code != tc.want {
				t.Fatalf("POST /offline: want %d, got %d %q", tc.want, rec.Code, rec.Body.String())
			}
			for k, v := range rec.Header() {
				if strings.Contains(strings.Join(v, " "), token) {
					t.Errorf("header %s: want no token, got %q", k, v)
				}
			}
			if strings.Contains(rec.Body.String(), token) {
				t.Errorf("body: want no token, got %q", rec.Body.String())
			}
			if tc.want == http.StatusAccepted {
				waitOffline(t, c)
				return
			}
			if got := rec.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("WWW-Authenticate: want a Bearer challenge, got %q", got)
			}
			if p, n := c.Phase(), runs.Load(); p != drain.Serving || n != 0 {
				t.Errorf("after a refused POST: want Serving and no protocol run, got %v and %d runs", p, n)
			}
		})
	}
}

// RequireToken guards what it wraps as the endpoint guards its state
// changes.
func TestRequireToken(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("metrics")) })
	h := RequireToken("s3cret", ok)
	cases := []struct {
		name   string
		header http.Header
		want   int
	}{
		{"no token", nil, http.StatusUnauthorized},
		{"wrong token", bearer("nope"), http.StatusUnauthorized},
		{"not bearer", http.Header{"Authorization": {"Basic s3cret"}}, http.StatusUnauthorized},
		{"right token", bearer("s3cret"), http.StatusOK},
	}
	for _, c := range cases {
		rec := do(t, h, http.MethodGet, "/metrics", c.header)
		if rec.Code != c.want {
			t.Errorf("%s: want %d, got %d", c.name, c.want, rec.Code)
		}
		if strings.Contains(rec.Body.String(), "s3cret") {
			t.Errorf("%s: want the token never echoed, got %q", c.name, rec.Body.String())
		}
	}
	if rec := do(t, RequireToken("", ok), http.MethodGet, "/metrics", nil); rec.Code != http.StatusOK {
		t.Errorf("empty token: want every request through, got %d", rec.Code)
	}
}

// TestTokenOnReads: with a token set, the reads need it too, all but GET
// /ready, the readiness probe; without a token everything is open.
func TestTokenOnReads(t *testing.T) {
	t.Parallel()
	cases := []struct {
		target   string
		open     bool // answered without the token when one is set
		withAuth int  // the answer with the token
	}{
		{target: "/status", withAuth: http.StatusOK},
		{target: "/wait?phase=Serving", withAuth: http.StatusOK},
		{target: "/metrics", withAuth: http.StatusOK},
		{target: "/ready", open: true, withAuth: http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.target, func(t *testing.T) {
			t.Parallel()
			c, _ := newCoordinator(t)
			m, err := NewMetrics(c)
			if err != nil {
				t.Fatalf("NewMetrics: %v", err)
			}
			guarded := newHandler(t, c, WithToken(token), WithMetrics(m))
			rec := do(t, guarded, http.MethodGet, tc.target, nil)
			switch {
			case tc.open && rec.Code != http.StatusOK:
				t.Errorf("GET %s without the token: want 200 (it stays open), got %d %q", tc.target, rec.Code, rec.Body.String())
			case !tc.open && rec.Code != http.StatusUnauthorized:
				t.Errorf("GET %s without the token: want 401, got %d %q", tc.target, rec.Code, rec.Body.String())
			case !tc.open && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer"):
				t.Errorf("GET %s without the token: want a Bearer challenge, got %q", tc.target, rec.Header().Get("WWW-Authenticate"))
			}
			if rec := do(t, guarded, http.MethodGet, tc.target, bearer("nope")); !tc.open && rec.Code != http.StatusUnauthorized {
				t.Errorf("GET %s with a wrong token: want 401, got %d", tc.target, rec.Code)
			}
			if rec := do(t, guarded, http.MethodGet, tc.target, bearer(token)); rec.Code != tc.withAuth {
				t.Errorf("GET %s with the token: want %d, got %d %q", tc.target, tc.withAuth, rec.Code, rec.Body.String())
			}
			open := newHandler(t, c, WithMetrics(m))
			if rec := do(t, open, http.MethodGet, tc.target, nil); rec.Code != http.StatusOK {
				t.Errorf("GET %s with no token set: want 200, got %d", tc.target, rec.Code)
			}
		})
	}
}

// heldPolls is a Controller whose WaitPhase holds each long-poll until the
// request ends, and says on entered when one starts.
func heldPolls() (*fakeController, chan struct{}) {
	entered := make(chan struct{}, 16)
	f := &fakeController{status: drain.Status{Phase: drain.Draining}}
	f.waitPhase = func(ctx context.Context, p drain.Phase) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	return f, entered
}

// TestWaitLongPollCap: beyond WithMaxLongPolls, /wait answers 429 with
// Retry-After, a one-line JSON error and Connection: close; a slot frees
// when a long-poll ends, and a phase already reached is answered even
// when every slot is taken.
func TestWaitLongPollCap(t *testing.T) {
	t.Parallel()
	const limit = 2
	f, entered := heldPolls()
	h := newHandler(t, f, WithMaxLongPolls(limit))
	cancels := make([]context.CancelFunc, limit)
	done := make(chan struct{}, limit)
	for k := range limit {
		ctx, cancel := context.WithCancel(t.Context())
		cancels[k] = cancel
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/wait?phase=Offline&timeout=1h", nil)
		go func() { h.ServeHTTP(httptest.NewRecorder(), req); done <- struct{}{} }()
		select {
		case <-entered:
		case <-time.After(wait):
			t.Fatalf("long-poll %d: want it held within %v, got nothing", k, wait)
		}
	}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
		for range limit - 1 { // one was ended below
			<-done
		}
	}()

	rec := do(t, h, http.MethodGet, "/wait?phase=Offline&timeout=1h", nil)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("GET /wait beyond the cap of %d: want 429, got %d %q", limit, rec.Code, rec.Body.String())
	}
	if got := rec.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After: want \"1\", got %q", got)
	}
	if got := rec.Header().Get("Connection"); got != "close" {
		t.Errorf("Connection: want close, so the refused client gives its connection back, got %q", got)
	}
	body := rec.Body.String()
	if strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") {
		t.Errorf("body: want one line of JSON, got %q", body)
	}
	if e := decode[errorJSON](t, rec); !strings.HasPrefix(e.Error, "admin: ") || !strings.Contains(e.Error, "slot (2)") {
		t.Errorf("error: want an admin: message naming the cap of 2, got %q", e.Error)
	}

	// A phase already reached needs no slot.
	if rec := do(t, h, http.MethodGet, "/wait?phase=Draining", nil); rec.Code != http.StatusOK || !decode[WaitResult](t, rec).Reached {
		t.Errorf("GET /wait?phase=Draining while Draining, every slot taken: want 200 reached, got %d %q", rec.Code, rec.Body.String())
	}

	// Ending a long-poll frees its slot for the next.
	cancels[0]()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("long-poll 0: want it ended within %v of its request, got nothing", wait)
	}
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/wait?phase=Offline&timeout=1h", nil)
	rec = httptest.NewRecorder()
	next := make(chan struct{})
	go func() { h.ServeHTTP(rec, req); close(next) }()
	select {
	case <-entered:
	case <-next:
		t.Fatalf("GET /wait after a slot freed: want it held, got %d %q", rec.Code, rec.Body.String())
	case <-time.After(wait):
		t.Fatalf("GET /wait after a slot freed: want it held within %v, got nothing", wait)
	}
	cancel()
	<-next
	if rec.Code != http.StatusOK {
		t.Errorf("GET /wait after a slot freed: want 200 once its request ended, got %d", rec.Code)
	}
}

func TestCheckAddr(t *testing.T) {
	t.Parallel()
	cases := []struct {
		addr     string
		hasToken bool
		wantErr  string // "" means allowed
	}{
		{addr: "127.0.0.1:9901"},
		{addr: "127.1.2.3:9901"},
		{addr: "[::1]:9901"},
		{addr: "localhost:9901"},
		{addr: DefaultAddr},
		{addr: "0.0.0.0:9901", wantErr: "not loopback"},
		{addr: "0.0.0.0:9901", hasToken: true},
		{addr: ":9901", wantErr: "not loopback"},
		{addr: "[::]:9901", wantErr: "not loopback"},
		{addr: "10.0.0.5:9901", wantErr: "not loopback"},
		{addr: "example.com:9901", wantErr: "not loopback"},
		{addr: "10.0.0.5:9901", hasToken: true},
		{addr: "127.0.0.1", wantErr: "not host:port"},
		{addr: "", wantErr: "not host:port"},
		{addr: "[::1:9901", wantErr: "not host:port"},
	}
	for _, tc := range cases {
		t.Run(tc.addr, func(t *testing.T) {
			t.Parallel()
			err := CheckAddr(tc.addr, tc.hasToken)
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("CheckAddr(%q, %v): want nil, got %v", tc.addr, tc.hasToken, err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), "admin: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CheckAddr(%q, %v): want an error containing %q, got %v", tc.addr, tc.hasToken, tc.wantErr, err)
			}
		})
	}
}

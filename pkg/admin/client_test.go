package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

func newClient(t *testing.T, base string, opts ...ClientOption) *Client {
	t.Helper()
	cl, err := NewClient(base, opts...)
	if err != nil {
		t.Fatalf("NewClient(%q): want a client, got error %v", base, err)
	}
	return cl
}

// bounded returns a context that ends after wait, so that no client call
// in a test can hang.
func bounded(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	t.Cleanup(cancel)
	return ctx
}

// oneLine fails unless err is a one-line admin error free of the token.
func oneLine(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error, got nil")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "admin: ") {
		t.Errorf("error: want the admin: prefix, got %q", msg)
	}
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("error: want one line, got %q", msg)
	}
	if strings.Contains(msg, token) {
		t.Errorf("error: want no token, got %q", msg)
	}
}

func TestNewClient(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in, want string // want is the base the client uses
		wantErr  string
	}{
		{in: "http://127.0.0.1:9901", want: "http://127.0.0.1:9901"},
		{in: "127.0.0.1:9901", want: "http://127.0.0.1:9901"},
		{in: "localhost:9901", want: "http://localhost:9901"},
		{in: "[::1]:9901", want: "http://[::1]:9901"},
		{in: " http://127.0.0.1:9901/ ", want: "http://127.0.0.1:9901"},
		{in: "https://app.internal/lameduck/", want: "https://app.internal/lameduck"},
		{in: "", wantErr: "empty"},
		{in: "ftp://127.0.0.1:9901", wantErr: `scheme "ftp"`},
		{in: "http://", wantErr: "no host"},
		{in: "http://:9901", wantErr: "no host"},
		{in: "http:///status", wantErr: "no host"},
		{in: "http://127.0.0.1:99x", wantErr: "not a URL"},
		{in: "http://127.0.0.1:9901/?token=x", wantErr: "query"},
		{in: "http://127.0.0.1:9901/#x", wantErr: "fragment"},
		{in: "http://user:hunter2@127.0.0.1:9901", wantErr: "credentials"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			cl, err := NewClient(tc.in)
			if tc.wantErr != "" {
				if err == nil || cl != nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewClient(%q): want an error containing %q, got %v, %v", tc.in, tc.wantErr, cl, err)
				}
				oneLine(t, err)
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("NewClient(%q): want the password left out, got %q", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewClient(%q): want a client, got %v", tc.in, err)
			}
			if cl.base != tc.want {
				t.Errorf("NewClient(%q): want base %q, got %q", tc.in, tc.want, cl.base)
			}
		})
	}
}

func TestNewClientBadToken(t *testing.T) {
	t.Parallel()
	_, err := NewClient("127.0.0.1:9901", WithClientToken(token+"\n"))
	oneLine(t, err)
}

// TestStatusJSONRoundTrip: everything a drain.Status says survives the
// trip through the endpoint's JSON, phase by name and durations in ns.
func TestStatusJSONRoundTrip(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	want := drain.Status{
		Phase: drain.Draining,
		Instance: &registry.Instance{
			Service: "orders", ID: "orders-1", Address: "10.0.0.5", Port: 8080,
			Tags: []string{"v2"}, Metadata: map[string]string{"zone": "a"}, Namespace: "ns", Weight: 1.5,
		},
		Stats: drain.Stats{
			InFlight: 3, LongLived: 1, Draining: true, Started: 42, Late: 2, Misuse: 1,
			LastRequest: at.Add(time.Second), DrainedAt: at.Add(2 * time.Second),
		},
		Registries: []drain.RegistryStatus{
			{Name: "consul", State: "confirmed", Attempts: 2, ConfirmLatency: 1234567 * time.Nanosecond},
			{Name: "nacos", State: "failed", Attempts: 5, Error: "registry: nacos: down"},
		},
		Started:  at,
		Deadline: at.Add(30 * time.Second),
	}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if !strings.Contains(string(b), `"phase":"Draining"`) || !strings.Contains(string(b), `"confirm_latency_ns":1234567`) {
		t.Errorf("JSON: want the phase by name and latency in ns, got %s", b)
	}
	got, ok := decodeStatus(b)
	if !ok {
		t.Fatalf("decodeStatus: want a status from %s, got none", b)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\nwant %+v\ngot  %+v", want, got)
	}
	var plain drain.Status
	if err := json.Unmarshal(b, &plain); err != nil || !reflect.DeepEqual(plain, want) {
		t.Errorf("json.Unmarshal into drain.Status: want %+v, got %+v (%v)", want, plain, err)
	}
}

// TestClient drives a real coordinator through the client.
func TestClient(t *testing.T) {
	t.Parallel()
	c, runs := newCoordinator(t)
	srv := serve(t, c, WithToken(token))
	cl := newClient(t, srv.URL, WithClientToken(token))
	ctx := bounded(t)

	req := c.Tracker().Begin()
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Phase != drain.Serving || st.InFlight != 1 || !st.Started.IsZero() {
		t.Errorf("Status: want Serving, 1 in flight, not started, got %v, %d, %v", st.Phase, st.InFlight, st.Started)
	}
	if err := req.End(); err != nil {
		t.Fatalf("End: %v", err)
	}

	st, err = cl.Offline(ctx)
	if err != nil {
		t.Fatalf("Offline: %v", err)
	}
	if st.Started.IsZero() {
		t.Errorf("Offline: want a status with Started set, got %+v", st)
	}
	res, err := cl.Wait(ctx, drain.Offline, wait)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if !res.Reached || res.Status.Phase != drain.Offline {
		t.Errorf("Wait: want Offline reached, got reached=%v phase %v", res.Reached, res.Status.Phase)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("protocol runs: want 1, got %d", n)
	}
}

// TestClientErrors: each way an answer can go wrong gives one line naming
// the URL and what to do, of a type callers can test, without the token.
func TestClientErrors(t *testing.T) {
	t.Parallel()
	// A port nothing listens on: bound, then released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	reply := func(code int, contentType, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", contentType)
			w.WriteHeader(code)
			_, _ = w.Write([]byte(body))
		}
	}
	// echo answers with whatever credentials it was sent.
	echo := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			_, _ = w.Write([]byte("you sent " + r.Header.Get("Authorization") + "\nsecond line " + token))
		}
	}
	realAdmin := func(t *testing.T) http.Handler {
		c, _ := newCoordinator(t)
		return newHandler(t, c, WithToken(token))
	}

	cases := []struct {
		name     string
		server   func(t *testing.T) http.Handler // nil: nothing listens
		token    string
		call     string // "status", "offline" or "wait"
		wantMsg  string // exact message; {URL} is the server's URL
		wantIs   []error
		wantCode int // for a *StatusError
	}{
		{
			name:    "refused",
			call:    "status",
			wantMsg: "admin: nothing answers at {URL} (is the app running with lameduck's admin endpoint?)",
			wantIs:  []error{ErrNoAnswer, syscall.ECONNREFUSED},
		},
		{
			name:    "refused while waiting",
			call:    "wait",
			token:   token,
			wantMsg: "admin: nothing answers at {URL} (is the app running with lameduck's admin endpoint?)",
			wantIs:  []error{ErrNoAnswer},
		},
		{
			name:     "wrong token",
			server:   realAdmin,
			token:    token + "-wrong",
			call:     "offline",
			wantMsg:  "admin: {URL}/offline refused the token; set --admin-token",
			wantCode: http.StatusUnauthorized,
		},
		{
			name:     "no token",
			server:   realAdmin,
			call:     "offline",
			wantMsg:  "admin: {URL}/offline needs a token; set --admin-token",
			wantCode: http.StatusUnauthorized,
		},
		{
			name:     "401 echoing the token",
			server:   func(*testing.T) http.Handler { return echo(http.StatusUnauthorized) },
			token:    token,
			call:     "offline",
			wantMsg:  "admin: {URL}/offline refused the token; set --admin-token",
			wantCode: http.StatusUnauthorized,
		},
		{
			name:     "500 echoing the token",
			server:   func(*testing.T) http.Handler { return echo(http.StatusInternalServerError) },
			token:    token,
			call:     "status",
			wantMsg:  "admin: GET {URL}/status answered 500 Internal Server Error: you sent Bearer [token]",
			wantCode: http.StatusInternalServerError,
		},
		{
			name: "answer past the limit",
			server: func(*testing.T) http.Handler {
				return reply(http.StatusOK, "application/json", `{"phase":"Offline","pad":"`+strings.Repeat("x", maxBody)+`"}`)
			},
			call:    "status",
			wantMsg: "admin: GET {URL}/status answered more than 1 MiB, which is not lameduck's JSON (a few kilobytes); is something else listening there?",
			wantIs:  []error{ErrNotLameduck},
		},
		{
			name: "500 past the limit",
			server: func(*testing.T) http.Handler {
				return reply(http.StatusInternalServerError, "text/plain", "out of memory\n"+strings.Repeat("x", 2*maxBody))
			},
			call:     "status",
			wantMsg:  "admin: GET {URL}/status answered 500 Internal Server Error: out of memory",
			wantCode: http.StatusInternalServerError,
		},
		{
			name:     "not found",
			server:   func(*testing.T) http.Handler { return http.NotFoundHandler() },
			call:     "wait",
			wantMsg:  "admin: GET {URL}/wait?phase=Offline&timeout=5s answered 404 Not Found: 404 page not found",
			wantCode: http.StatusNotFound,
		},
		{
			name:     "empty 503",
			server:   func(*testing.T) http.Handler { return reply(http.StatusServiceUnavailable, "text/plain", "") },
			call:     "offline",
			wantMsg:  "admin: POST {URL}/offline answered 503 Service Unavailable",
			wantCode: http.StatusServiceUnavailable,
		},
		{
			name: "garbage",
			server: func(*testing.T) http.Handler {
				return reply(http.StatusOK, "application/octet-stream", "\x00\x01\xff\xfeSSH-2.0-OpenSSH_9.6\r\n"+strings.Repeat("z", 100))
			},
			call:    "status",
			wantMsg: `admin: {URL}/status answered something that is not lameduck's status JSON: "SSH-2.0-OpenSSH_9.6  zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"`,
			wantIs:  []error{ErrNotLameduck},
		},
		{
			name:    "garbage echoing the token",
			server:  func(*testing.T) http.Handler { return echo(http.StatusOK) },
			token:   token,
			call:    "offline",
			wantMsg: `admin: {URL}/offline answered something that is not lameduck's status JSON: "you sent Bearer [token] second line [token]"`,
			wantIs:  []error{ErrNotLameduck},
		},
		{
			name: "html page",
			server: func(*testing.T) http.Handler {
				return reply(http.StatusOK, "text/html", "<!doctype html><title>Grafana</title>")
			},
			call:    "status",
			wantMsg: `admin: {URL}/status answered something that is not lameduck's status JSON: "<!doctype html><title>Grafana</title>"`,
			wantIs:  []error{ErrNotLameduck},
		},
		{
			name:    "other JSON",
			server:  func(*testing.T) http.Handler { return reply(http.StatusOK, "application/json", `{"status":"UP"}`) },
			call:    "status",
			wantMsg: `admin: {URL}/status answered something that is not lameduck's status JSON: "{\"status\":\"UP\"}"`,
			wantIs:  []error{ErrNotLameduck},
		},
		{
			name: "unknown phase",
			server: func(*testing.T) http.Handler {
				return reply(http.StatusOK, "application/json", `{"phase":"Hibernating"}`)
			},
			call:    "status",
			wantMsg: `admin: {URL}/status answered something that is not lameduck's status JSON: "{\"phase\":\"Hibernating\"}"`,
			wantIs:  []error{ErrNotLameduck},
		},
		{
			name:    "status JSON from /wait",
			server:  func(*testing.T) http.Handler { return reply(http.StatusOK, "application/json", `{"phase":"Offline"}`) },
			call:    "wait",
			wantMsg: `admin: {URL}/wait?phase=Offline&timeout=5s answered something that is not lameduck's wait JSON: "{\"phase\":\"Offline\"}"`,
			wantIs:  []error{ErrNotLameduck},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := refused
			if tc.server != nil {
				srv := httptest.NewServer(tc.server(t))
				t.Cleanup(srv.Close)
				base = srv.URL
			}
			var opts []ClientOption
			if tc.token != "" {
				opts = append(opts, WithClientToken(tc.token))
			}
			cl := newClient(t, base, opts...)
			ctx := bounded(t)
			var err error
			switch tc.call {
			case "status":
				_, err = cl.Status(ctx)
			case "offline":
				_, err = cl.Offline(ctx)
			case "wait":
				// A whole-second timeout, so that the first poll's URL is
				// predictable: "5s" less the little time already gone,
				// which the test rounds back below.
				_, err = cl.Wait(ctx, drain.Offline, wait)
			}
			oneLine(t, err)
			msg := err.Error()
			if tc.call == "wait" {
				msg = roundTimeout(msg)
			}
			if want := strings.ReplaceAll(tc.wantMsg, "{URL}", base); msg != want {
				t.Errorf("error:\nwant %s\ngot  %s", want, msg)
			}
			for _, target := range tc.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(%v): want true, got false for %q", target, msg)
				}
			}
			var se *StatusError
			if got := errors.As(err, &se); got != (tc.wantCode != 0) || (got && se.Code != tc.wantCode) {
				t.Errorf("errors.As *StatusError: want code %d, got %v (%+v)", tc.wantCode, got, se)
			}
		})
	}
}

// roundTimeout rewrites the timeout query parameter of a /wait URL in msg,
// which is the little less than 5s Wait had left, to "5s".
func roundTimeout(msg string) string {
	const key = "timeout="
	i := strings.Index(msg, key)
	if i < 0 {
		return msg
	}
	j := i + len(key)
	end := strings.IndexAny(msg[j:], " &")
	if end < 0 {
		end = len(msg) - j
	}
	d, err := time.ParseDuration(msg[j : j+end])
	if err != nil || d <= 0 || d > wait {
		return msg
	}
	return msg[:j] + "5s" + msg[j+end:]
}

// TestClientWaitPolls: Wait keeps long-polling past the server's cap until
// the phase is reached.
func TestClientWaitPolls(t *testing.T) {
	t.Parallel()
	const reachOn = 4
	var polls atomic.Int32
	f := &fakeController{status: drain.Status{Phase: drain.Draining}}
	f.waitPhase = func(ctx context.Context, p drain.Phase) error {
		if polls.Add(1) < reachOn {
			<-ctx.Done() // the server's cap
			return ctx.Err()
		}
		f.set(func(s *drain.Status) { s.Phase = drain.Offline })
		return nil
	}
	srv := serve(t, f, WithMaxWait(5*time.Millisecond))
	res, err := newClient(t, srv.URL).Wait(bounded(t), drain.Offline, wait)
	if err != nil {
		t.Fatalf("Wait: want Offline reached, got error %v", err)
	}
	if !res.Reached || res.Status.Phase != drain.Offline {
		t.Errorf("Wait: want reached=true phase Offline, got reached=%v phase %v", res.Reached, res.Status.Phase)
	}
	if n := polls.Load(); n != reachOn {
		t.Errorf("long-polls: want %d, got %d", reachOn, n)
	}
}

// TestClientWaitTimeout: when Wait's own timeout passes it answers with the
// latest status, not an error.
func TestClientWaitTimeout(t *testing.T) {
	t.Parallel()
	var polls atomic.Int32
	f := &fakeController{status: drain.Status{Phase: drain.Draining}}
	f.waitPhase = func(ctx context.Context, p drain.Phase) error {
		polls.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}
	srv := serve(t, f, WithMaxWait(5*time.Millisecond))
	res, err := newClient(t, srv.URL).Wait(bounded(t), drain.Offline, 30*time.Millisecond)
	if err != nil {
		t.Fatalf("Wait: want no error when its timeout passes, got %v", err)
	}
	if res.Reached || res.Status.Phase != drain.Draining {
		t.Errorf("Wait: want reached=false with phase Draining, got reached=%v phase %v", res.Reached, res.Status.Phase)
	}
	if polls.Load() < 1 {
		t.Errorf("long-polls: want at least 1, got 0")
	}
}

// TestClientWaitCtx: Wait returns as soon as ctx ends, with ctx's error.
func TestClientWaitCtx(t *testing.T) {
	t.Parallel()
	polling := make(chan struct{}, 1)
	f := &fakeController{}
	f.waitPhase = func(ctx context.Context, p drain.Phase) error {
		select {
		case polling <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}
	srv := serve(t, f)
	cl := newClient(t, srv.URL)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		res WaitResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := cl.Wait(ctx, drain.Offline, 0)
		done <- result{res, err}
	}()
	select {
	case <-polling:
	case <-time.After(wait):
		t.Fatalf("Wait: want a long-poll on the server within %v, got none", wait)
	}
	cancel()
	select {
	case r := <-done:
		oneLine(t, r.err)
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("Wait after cancel: want an error wrapping context.Canceled, got %v", r.err)
		}
	case <-time.After(wait):
		t.Fatalf("Wait: want it to return within %v of cancel, got nothing", wait)
	}
}

func TestClientWaitBadPhase(t *testing.T) {
	t.Parallel()
	_, err := newClient(t, "127.0.0.1:1").Wait(bounded(t), drain.Phase(9), time.Second)
	oneLine(t, err)
	if !strings.Contains(err.Error(), "Phase(9)") {
		t.Errorf("Wait(Phase(9)): want an error naming it, got %v", err)
	}
}

// TestClientPathPrefix: a base URL with a path reaches an endpoint mounted
// under it, as behind a proxy.
func TestClientPathPrefix(t *testing.T) {
	t.Parallel()
	c, _ := newCoordinator(t)
	mux := http.NewServeMux()
	mux.Handle("/lameduck/", http.StripPrefix("/lameduck", newHandler(t, c)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	st, err := newClient(t, srv.URL+"/lameduck/").Status(bounded(t))
	if err != nil || st.Phase != drain.Serving {
		t.Errorf("Status under /lameduck: want Serving, got %v (%v)", st.Phase, err)
	}
}

// TestClientHTTPClient: WithHTTPClient's client carries the requests.
func TestClientHTTPClient(t *testing.T) {
	t.Parallel()
	c, _ := newCoordinator(t)
	srv := serve(t, c)
	var used atomic.Int32
	hc := &http.Client{Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
		used.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	if _, err := newClient(t, srv.URL, WithHTTPClient(hc)).Status(bounded(t)); err != nil {
		t.Fatalf("Status: %v", err)
	}
	if n := used.Load(); n != 1 {
		t.Errorf("requests through the given http.Client: want 1, got %d", n)
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// busyFirst answers the first n requests as the endpoint does beyond its
// long-poll cap (429), and the rest through next.
func busyFirst(n int32, next http.Handler) (http.Handler, *atomic.Int32) {
	var requests atomic.Int32
	refuse := &handler{polls: make(chan struct{}, DefaultMaxLongPolls)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) <= n {
			refuse.busy(w)
			return
		}
		next.ServeHTTP(w, r)
	}), &requests
}

// pending waits until f has exactly one timer armed: the client is waiting
// out a 429.
func pending(t *testing.T, f *clock.Fake) {
	t.Helper()
	deadline := time.After(wait)
	for {
		added := f.TimerAdded()
		if f.Timers() == 1 {
			return
		}
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("want the client waiting on a timer within %v, got %d timers", wait, f.Timers())
		}
	}
}

// TestClientRetriesBusy: each method waits out a 429, backing off from
// the endpoint's Retry-After, and asks again.
func TestClientRetriesBusy(t *testing.T) {
	t.Parallel()
	for _, call := range []string{"status", "offline", "wait"} {
		t.Run(call, func(t *testing.T) {
			t.Parallel()
			c, _ := newCoordinator(t)
			const refusals = 2
			h, requests := busyFirst(refusals, newHandler(t, c))
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			cl := newClient(t, srv.URL)
			fake := clock.NewFake(time.Unix(0, 0))
			cl.clk = fake
			done := make(chan error, 1)
			go func() {
				var err error
				switch call {
				case "status":
					_, err = cl.Status(bounded(t))
				case "offline":
					_, err = cl.Offline(bounded(t))
				case "wait":
					_, err = cl.Wait(bounded(t), drain.Serving, wait)
				}
				done <- err
			}()
			for k := range refusals {
				pending(t, fake)
				next, _ := fake.Next()
				delay := next.Sub(fake.Now())
				// busyPolicy: 1s, then 2s, each ±20%.
				lo, hi := time.Duration(float64(retryAfter<<k)*0.8), time.Duration(float64(retryAfter<<k)*1.2)
				if delay < lo || delay > hi {
					t.Errorf("delay after 429 number %d: want within [%v, %v], got %v", k+1, lo, hi, delay)
				}
				fake.Advance(delay)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s after %d refusals: want success, got %v", call, refusals, err)
				}
			case <-time.After(wait):
				t.Fatalf("%s: want an answer within %v of the last retry, got nothing", call, wait)
			}
			if n := requests.Load(); n != refusals+1 {
				t.Errorf("requests: want %d (%d refused, then one answered), got %d", refusals+1, refusals, n)
			}
		})
	}
}

// TestClientBusyUntilCtx: an endpoint that stays busy gives, once ctx
// ends, one line naming the refusal, with ctx's error and the 429.
func TestClientBusyUntilCtx(t *testing.T) {
	t.Parallel()
	h, requests := busyFirst(1<<30, http.NotFoundHandler())
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	cl := newClient(t, srv.URL)
	fake := clock.NewFake(time.Unix(0, 0))
	cl.clk = fake
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := cl.Wait(ctx, drain.Offline, 0)
		done <- err
	}()
	pending(t, fake)
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(wait):
		t.Fatalf("Wait: want it to return within %v of cancel, got nothing", wait)
	}
	oneLine(t, err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Wait busy until cancel: want an error wrapping context.Canceled, got %v", err)
	}
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTooManyRequests {
		t.Errorf("Wait busy until cancel: want a *StatusError 429 inside, got %v", err)
	}
	// The endpoint's JSON refusal is quoted by its message, not as JSON.
	if msg := err.Error(); !strings.Contains(msg, "answered 429 Too Many Requests: admin: every long-poll slot (32) is taken; retry after 1s") || strings.Contains(msg, "{") {
		t.Errorf("error: want the refusal's message, got %q", msg)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("requests: want 1 before cancel, got %d", n)
	}
}

// TestClientWaitBusyTimeout: when the endpoint refuses every poll until
// Wait's timeout passes, Wait answers as its timeout says, with the
// status, not an error.
func TestClientWaitBusyTimeout(t *testing.T) {
	t.Parallel()
	f, entered := heldPolls()
	h := newHandler(t, f, WithMaxLongPolls(1))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	// Another follower holds the only slot.
	other := newClient(t, srv.URL)
	ctx, cancel := context.WithCancel(t.Context())
	held := make(chan struct{})
	go func() {
		defer close(held)
		_, _ = other.Wait(ctx, drain.Offline, 0)
	}()
	t.Cleanup(func() { cancel(); <-held })
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatalf("the other follower's long-poll: want it held within %v, got nothing", wait)
	}
	res, err := newClient(t, srv.URL).Wait(bounded(t), drain.Offline, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("Wait refused until its timeout: want no error, got %v", err)
	}
	if res.Reached || res.Status.Phase != drain.Draining {
		t.Errorf("Wait refused until its timeout: want reached=false with phase Draining, got reached=%v phase %v", res.Reached, res.Status.Phase)
	}
}

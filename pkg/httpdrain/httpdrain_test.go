package httpdrain_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/httpdrain"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

func mustMiddleware(t *testing.T, tr *drain.Tracker, opts ...httpdrain.Option) func(http.Handler) http.Handler {
	t.Helper()
	mw, err := httpdrain.Middleware(tr, opts...)
	if err != nil {
		t.Fatalf("Middleware: want no error, got %v", err)
	}
	return mw
}

func request(method string, header map[string]string) *http.Request {
	r := httptest.NewRequest(method, "/", nil)
	for k, v := range header {
		r.Header.Set(k, v)
	}
	return r
}

func TestMiddlewareBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		tracker *drain.Tracker
		opts    []httpdrain.Option
		want    error
	}{
		{"nil tracker", nil, nil, httpdrain.ErrNilTracker},
		{"negative retry-after", new(drain.Tracker), []httpdrain.Option{httpdrain.WithReject(-time.Second)}, httpdrain.ErrInvalidOption},
		{"valid", new(drain.Tracker), []httpdrain.Option{httpdrain.WithReject(0), httpdrain.WithLongLived(nil)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mw, err := httpdrain.Middleware(tc.tracker, tc.opts...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want error %v, got %v", tc.want, err)
			}
			if (mw == nil) != (tc.want != nil) {
				t.Fatalf("want middleware only without error, got middleware %v with error %v", mw != nil, err)
			}
		})
	}
}

// TestServingCounts checks that a request counts while its handler runs, in
// the right counter, and stops counting when the handler returns.
func TestServingCounts(t *testing.T) {
	t.Parallel()
	sse := func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/events") }
	tests := []struct {
		name          string
		method, path  string
		header        map[string]string
		opts          []httpdrain.Option
		wantInFlight  int64
		wantLongLived int64
	}{
		{"plain GET", "GET", "/", map[string]string{"Accept": "application/json"}, nil, 1, 0},
		{"websocket", "GET", "/", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, nil, 0, 1},
		{"websocket, firefox connection list", "GET", "/", map[string]string{"Connection": "keep-alive, Upgrade", "Upgrade": "websocket"}, nil, 0, 1},
		{"upgrade header without connection token", "GET", "/", map[string]string{"Upgrade": "websocket"}, nil, 1, 0},
		{"server-sent events", "GET", "/", map[string]string{"Accept": "text/event-stream"}, nil, 0, 1},
		{"connect tunnel", "CONNECT", "example.com:443", nil, nil, 0, 1},
		{"custom classifier, long", "GET", "/events/1", nil, []httpdrain.Option{httpdrain.WithLongLived(sse)}, 0, 1},
		{"custom classifier overrides default", "GET", "/", map[string]string{"Accept": "text/event-stream"}, []httpdrain.Option{httpdrain.WithLongLived(sse)}, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			entered, release := make(chan struct{}), make(chan struct{})
			h := mustMiddleware(t, &tr, tc.opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				<-release
			}))
			r := httptest.NewRequest(tc.method, "http://example.com"+tc.path, nil)
			if tc.method == "CONNECT" {
				r = httptest.NewRequest("CONNECT", tc.path, nil)
			}
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			done := make(chan struct{})
			go func() {
				defer close(done)
				h.ServeHTTP(w, r)
			}()
			select {
			case <-entered:
			case <-time.After(wait):
				t.Fatalf("handler not called within %v", wait)
			}
			if got := tr.InFlight(); got != tc.wantInFlight {
				t.Errorf("in flight while handler runs: want %d, got %d", tc.wantInFlight, got)
			}
			if got := tr.LongLived(); got != tc.wantLongLived {
				t.Errorf("long-lived while handler runs: want %d, got %d", tc.wantLongLived, got)
			}
			close(release)
			select {
			case <-done:
			case <-time.After(wait):
				t.Fatalf("ServeHTTP did not return within %v of the handler's release", wait)
			}
			if s := tr.Stats(); s.InFlight != 0 || s.LongLived != 0 || s.Misuse != 0 {
				t.Errorf("after the handler returned: want in flight 0, long-lived 0, misuse 0, got %d, %d, %d", s.InFlight, s.LongLived, s.Misuse)
			}
			if got := w.Header().Get("Connection"); got != "" {
				t.Errorf("Connection header while serving: want none, got %q", got)
			}
		})
	}
}

// TestDraining checks how requests begun after the flag was set are answered.
func TestDraining(t *testing.T) {
	t.Parallel()
	ws := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}
	tests := []struct {
		name           string
		header         map[string]string
		opts           []httpdrain.Option
		wantCalled     bool
		wantStatus     int
		wantConnection string
		wantRetryAfter string
	}{
		{"serve", nil, nil, true, http.StatusOK, "close", ""},
		{"serve upgrade leaves Connection to the handshake", ws, nil, true, http.StatusOK, "", ""},
		{"reject, zero rounds to 1s", nil, []httpdrain.Option{httpdrain.WithReject(0)}, false, http.StatusServiceUnavailable, "close", "1"},
		{"reject, sub-second rounds up", nil, []httpdrain.Option{httpdrain.WithReject(1500 * time.Millisecond)}, false, http.StatusServiceUnavailable, "close", "2"},
		{"reject, whole seconds", nil, []httpdrain.Option{httpdrain.WithReject(3 * time.Second)}, false, http.StatusServiceUnavailable, "close", "3"},
		{"reject upgrade", ws, []httpdrain.Option{httpdrain.WithReject(time.Second)}, false, http.StatusServiceUnavailable, "close", "1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			tr.SetDraining()
			called := false
			h := mustMiddleware(t, &tr, tc.opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				called = true
				w.WriteHeader(http.StatusOK)
			}))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, request("GET", tc.header))
			if called != tc.wantCalled {
				t.Errorf("handler called: want %v, got %v", tc.wantCalled, called)
			}
			if w.Code != tc.wantStatus {
				t.Errorf("status: want %d, got %d", tc.wantStatus, w.Code)
			}
			if got := w.Header().Get("Connection"); got != tc.wantConnection {
				t.Errorf("Connection header: want %q, got %q", tc.wantConnection, got)
			}
			if got := w.Header().Get("Retry-After"); got != tc.wantRetryAfter {
				t.Errorf("Retry-After header: want %q, got %q", tc.wantRetryAfter, got)
			}
			if s := tr.Stats(); s.InFlight != 0 || s.LongLived != 0 || s.Late != 1 {
				t.Errorf("after the request: want in flight 0, long-lived 0, late 1, got %d, %d, %d", s.InFlight, s.LongLived, s.Late)
			}
		})
	}
}

// TestPanicEnds checks that a panicking handler's request stops counting and
// that the panic reaches the caller unchanged.
func TestPanicEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		header map[string]string
	}{
		{"ordinary", nil},
		{"long-lived", map[string]string{"Accept": "text/event-stream"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			boom := errors.New("boom")
			h := mustMiddleware(t, &tr)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				panic(boom)
			}))
			got := func() (v any) {
				defer func() { v = recover() }()
				h.ServeHTTP(httptest.NewRecorder(), request("GET", tc.header))
				return nil
			}()
			if got != boom {
				t.Errorf("recovered value: want %v, got %v", boom, got)
			}
			if s := tr.Stats(); s.InFlight != 0 || s.LongLived != 0 || s.Started != 1 {
				t.Errorf("after the panic: want in flight 0, long-lived 0, started 1, got %d, %d, %d", s.InFlight, s.LongLived, s.Started)
			}
		})
	}
}

// TestConcurrentWithFlag runs many requests while the flag is set and checks
// that every one is counted and ended.
func TestConcurrentWithFlag(t *testing.T) {
	t.Parallel()
	const workers, perWorker = 8, 200
	var tr drain.Tracker
	h := mustMiddleware(t, &tr)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				h.ServeHTTP(httptest.NewRecorder(), request("GET", nil))
			}
		})
	}
	wg.Go(func() { tr.SetDraining() })
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("requests did not finish within %v", wait)
	}
	if s := tr.Stats(); s.InFlight != 0 || s.Started != workers*perWorker || !s.Draining {
		t.Errorf("want in flight 0, started %d, draining, got %d, %d, %v", workers*perWorker, s.InFlight, s.Started, s.Draining)
	}
}

// TestServerClosesConnection checks, against net/http's real servers, that a
// request served while draining makes the server close its connection: after
// the response on HTTP/1.1, by a graceful GOAWAY on HTTP/2.
func TestServerClosesConnection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		http2     bool
		wantProto string
	}{
		{"HTTP/1.1", false, "HTTP/1.1"},
		{"HTTP/2", true, "HTTP/2.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			tr.SetDraining()
			h := mustMiddleware(t, &tr)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("ok"))
			}))
			srv := httptest.NewUnstartedServer(h)
			closed := make(chan struct{})
			var once sync.Once
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateClosed {
					once.Do(func() { close(closed) })
				}
			}
			srv.EnableHTTP2 = tc.http2
			srv.StartTLS()
			defer srv.Close()

			resp, err := srv.Client().Get(srv.URL)
			if err != nil {
				t.Fatalf("GET: want no error, got %v", err)
			}
			// Read the body to the end: a body closed early makes the
			// HTTP/1 client drop the connection itself.
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Fatalf("reading the body: want no error, got %v", err)
			}
			_ = resp.Body.Close()
			if resp.Proto != tc.wantProto {
				t.Fatalf("protocol: want %s, got %s", tc.wantProto, resp.Proto)
			}
			if tc.http2 && resp.Header.Get("Connection") != "" {
				t.Errorf("HTTP/2 Connection header: want none, got %q", resp.Header.Get("Connection"))
			}
			select {
			case <-closed:
			case <-time.After(wait):
				t.Fatalf("connection still open %v after a draining response", wait)
			}
		})
	}
}

// TestAttribution: once the tracker attributes requests, each is named by
// its consumer header or, without one, its remote IP; before, nothing is
// recorded.
func TestAttribution(t *testing.T) {
	t.Parallel()
	var tr drain.Tracker
	mw, err := httpdrain.Middleware(&tr, httpdrain.WithConsumerHeader("x-client"))
	if err != nil {
		t.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	send := func(remote, client string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		if client != "" {
			r.Header.Set("X-Client", client)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	send("10.0.0.1:1", "") // before attribution starts
	tr.Consumers().Start(time.Now())
	tr.Consumers().Confirmed(time.Now())
	send("10.0.0.7:1", "")
	send("10.0.0.7:2", "")
	send("10.0.0.8:1", "billing")
	late := tr.Consumers().Late(10)
	got := map[string]int64{}
	for _, c := range late.Top {
		got[c.ID] = c.After
	}
	if len(got) != 2 || got["10.0.0.7"] != 2 || got["billing"] != 1 {
		t.Errorf("late consumers: want 10.0.0.7 twice and billing once, got %v", got)
	}
}

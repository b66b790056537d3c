// Package admin serves an instance's offline controls over HTTP, for the
// prestop hook, `lameduck offline` and people with curl:
//
//	GET  /status              JSON status: phase, in-flight, long-lived, last request, registries
//	GET  /ready               200 while Serving, 503 once going offline (a readiness probe)
//	POST /offline             start going offline; idempotent; 202 with the status
//	GET  /wait?phase=P&timeout=D
//	                          long-poll until the phase is reached (default Offline)
//	GET  /metrics             Prometheus metrics, when the handler has WithMetrics
//
// # Token
//
// Without a token (WithToken) every request is served; CheckAddr allows
// that on loopback only. With one, every request but GET /ready must
// carry "Authorization: Bearer TOKEN" and is answered 401 otherwise: the
// state change, and the reads too, since the status names the instance,
// its registries and its traffic, and a long-poll holds a connection. The
// token is compared in constant time and never logged or echoed.
//
// GET /ready stays open: it is the readiness probe. The kubelet probes
// from outside the pod, so a probed endpoint is off loopback and has a
// token, which a probe could carry only written in plain text in the pod
// spec. It tells only whether the instance takes traffic (and, once not,
// its phase), which its registries tell anyone who can discover it.
//
// # Limits
//
// The endpoint must not hurt the app it controls. The handler holds at
// most WithMaxLongPolls /wait long-polls at once (DefaultMaxLongPolls);
// beyond that /wait answers 429 Too Many Requests with Retry-After and a
// one-line JSON error, and closes the connection. A /wait whose phase is
// already reached is answered at once, never refused. Serve adds the
// server's limits: a cap on open connections (DefaultMaxConns) so that
// the endpoint never takes the file descriptors the app's own listener
// needs, and timeouts on headers and idle connections. Serve the handler
// with Serve, not a bare http.Server.
//
// Metrics (NewMetrics) exposes the protocol to Prometheus on a registry of
// its own; Client is the other end of the endpoint, for other processes,
// and waits and retries when the endpoint answers 429.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/lameduck/lameduck/drain"
)

// DefaultAddr is where the admin endpoint listens unless told otherwise:
// loopback only.
const DefaultAddr = "127.0.0.1:9901"

// Controller is what the handler drives; *drain.Coordinator implements it.
type Controller interface {
	StatusSource
	Start()
	WaitPhase(ctx context.Context, p drain.Phase) error
}

var _ Controller = (*drain.Coordinator)(nil)

// Option configures the handler.
type Option func(*options)

type options struct {
	token     string
	maxWait   time.Duration
	longPolls int
	metrics   *Metrics
}

func (o *options) setDefaults() {
	if o.maxWait <= 0 {
		o.maxWait = 5 * time.Minute
	}
	if o.longPolls <= 0 {
		o.longPolls = DefaultMaxLongPolls
	}
}

// DefaultMaxLongPolls is how many /wait long-polls the handler holds at
// once unless WithMaxLongPolls says otherwise. An instance has a few
// followers (a prestop hook, `lameduck offline`, a person); 32 leaves
// room for retries and scripts while keeping half of Serve's
// DefaultMaxConns connections free for everything else.
const DefaultMaxLongPolls = 32

// retryAfter is what a refused long-poll is told to wait, in the
// Retry-After header; Client's busyPolicy starts from it.
const retryAfter = time.Second

// WithToken requires "Authorization: Bearer token" on every request but
// GET /ready (see the package doc). An empty token requires nothing.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithMaxLongPolls caps the /wait long-polls held at once; n <= 0 means
// DefaultMaxLongPolls. Beyond the cap /wait answers 429 with Retry-After.
// Keep it below Serve's connection cap (WithMaxConns).
func WithMaxLongPolls(n int) Option { return func(o *options) { o.longPolls = n } }

// WithMaxWait caps the timeout a /wait long-poll may ask for; default 5m.
func WithMaxWait(d time.Duration) Option { return func(o *options) { o.maxWait = d } }

// WithMetrics serves m at GET /metrics, in Prometheus' exposition formats.
// Like the other reads it needs the token when one is set. WithMetrics(nil)
// serves nothing.
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

// NewHandler returns the admin handler for c. It is safe for concurrent use.
func NewHandler(c Controller, opts ...Option) (http.Handler, error) {
	if c == nil {
		return nil, errors.New("admin: NewHandler needs a Controller such as a *drain.Coordinator")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	h := &handler{c: c, o: o, polls: make(chan struct{}, o.longPolls)}
	mux := http.NewServeMux()
	mux.Handle("GET /status", h.guard(http.HandlerFunc(h.status)))
	mux.HandleFunc("GET /ready", h.ready) // open: see the package doc
	mux.Handle("POST /offline", h.guard(http.HandlerFunc(h.offline)))
	mux.Handle("GET /wait", h.guard(http.HandlerFunc(h.wait)))
	if o.metrics != nil {
		mux.Handle("GET /metrics", h.guard(o.metrics.handler))
	}
	return mux, nil
}

// CheckAddr refuses an address that is not loopback unless a token
// protects the endpoint, so that nobody off the host can take the instance
// offline or read its status.
func CheckAddr(addr string, hasToken bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin: address %q is not host:port: %v", addr, err)
	}
	if hasToken || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("admin: address %q is not loopback; bind 127.0.0.1 or set a token", addr)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

type handler struct {
	c     Controller
	o     options
	polls chan struct{} // a slot per /wait long-poll held; capacity o.longPolls
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.c.Status())
}

func (h *handler) ready(w http.ResponseWriter, r *http.Request) {
	// Start sets Started before the protocol's goroutine enters its first
	// phase, so once POST /offline is answered the probe fails too.
	if s := h.c.Status(); s.Phase != drain.Serving || !s.Started.IsZero() {
		http.Error(w, "not ready: going offline, phase "+s.Phase.String(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (h *handler) offline(w http.ResponseWriter, r *http.Request) {
	h.c.Start()
	writeJSON(w, http.StatusAccepted, h.c.Status())
}

// WaitResult is the body /wait answers with.
type WaitResult struct {
	Reached bool         `json:"reached"`
	Status  drain.Status `json:"status"`
}

func (h *handler) wait(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	phase := drain.Offline
	if s := q.Get("phase"); s != "" {
		p, err := drain.ParsePhase(s)
		if err != nil {
			http.Error(w, "admin: "+err.Error(), http.StatusBadRequest)
			return
		}
		phase = p
	}
	timeout := 30 * time.Second
	if s := q.Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			http.Error(w, fmt.Sprintf("admin: timeout %q is not a positive duration such as 30s", s), http.StatusBadRequest)
			return
		}
		timeout = d
	}
	timeout = min(timeout, h.o.maxWait)
	if st := h.c.Status(); st.Phase >= phase {
		// Nothing to wait for, so no slot to take.
		writeJSON(w, http.StatusOK, WaitResult{Reached: true, Status: st})
		return
	}
	select {
	case h.polls <- struct{}{}:
		defer func() { <-h.polls }()
	default:
		h.busy(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	err := h.c.WaitPhase(ctx, phase)
	writeJSON(w, http.StatusOK, WaitResult{Reached: err == nil, Status: h.c.Status()})
}

// busy refuses a long-poll beyond the cap: 429 with Retry-After (RFC 6585
// section 4, RFC 9110 section 10.2.3) and a one-line JSON error. The
// connection is closed after the answer, giving its slot under Serve's
// connection cap back at once.
func (h *handler) busy(w http.ResponseWriter) {
	w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusTooManyRequests)
	msg := fmt.Sprintf("admin: every long-poll slot (%d) is taken; retry after %v", cap(h.polls), retryAfter)
	_ = json.NewEncoder(w).Encode(errorJSON{Error: msg})
}

// errorJSON is the body of a refusal in JSON.
type errorJSON struct {
	Error string `json:"error"`
}

// guard answers 401 to a request without the token, when one is set.
func (h *handler) guard(next http.Handler) http.Handler {
	if h.o.token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lameduck"`)
			http.Error(w, "admin: missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (h *handler) authorized(r *http.Request) bool {
	if h.o.token == "" {
		return true
	}
	const prefix = "Bearer "
	got := r.Header.Get("Authorization")
	if len(got) < len(prefix) || got[:len(prefix)] != prefix {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got[len(prefix):]), []byte(h.o.token)) == 1
}

// RequireToken wraps h so that every request must carry
// "Authorization: Bearer token", compared in constant time as the admin
// endpoint's are; others get 401. The token is never logged or echoed. An
// empty token lets every request through. Use it to serve metrics off
// loopback (CheckAddr's rule).
func RequireToken(token string, h http.Handler) http.Handler {
	return (&handler{o: options{token: token}}).guard(h)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

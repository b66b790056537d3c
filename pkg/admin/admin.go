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
// State changes are POST only. When a token is set, POST requests must carry
// "Authorization: Bearer TOKEN"; the token is compared in constant time and
// never logged or echoed.
//
// Metrics (NewMetrics) exposes the protocol to Prometheus on a registry of
// its own; Client is the other end of the endpoint, for other processes.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
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
	token   string
	maxWait time.Duration
	metrics *Metrics
}

func (o *options) setDefaults() {
	if o.maxWait <= 0 {
		o.maxWait = 5 * time.Minute
	}
}

// WithToken requires "Authorization: Bearer token" on state changes.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithMaxWait caps the timeout a /wait long-poll may ask for; default 5m.
func WithMaxWait(d time.Duration) Option { return func(o *options) { o.maxWait = d } }

// WithMetrics serves m at GET /metrics, in Prometheus' exposition formats.
// Like the other reads it needs no token. WithMetrics(nil) serves nothing.
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
	h := &handler{c: c, o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", h.status)
	mux.HandleFunc("GET /ready", h.ready)
	mux.HandleFunc("POST /offline", h.offline)
	mux.HandleFunc("GET /wait", h.wait)
	if o.metrics != nil {
		mux.Handle("GET /metrics", o.metrics.handler)
	}
	return mux, nil
}

// CheckAddr refuses an address that is not loopback unless a token
// protects the endpoint, so that nobody off the host can take the instance
// offline.
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
	c Controller
	o options
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
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="lameduck"`)
		http.Error(w, "admin: missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
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
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	err := h.c.WaitPhase(ctx, phase)
	writeJSON(w, http.StatusOK, WaitResult{Reached: err == nil, Status: h.c.Status()})
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
// endpoint's state changes are; others get 401. The token is never logged
// or echoed. An empty token lets every request through. Use it to serve
// metrics off loopback (CheckAddr's rule).
func RequireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	auth := &handler{o: options{token: token}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !auth.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lameduck"`)
			http.Error(w, "admin: missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

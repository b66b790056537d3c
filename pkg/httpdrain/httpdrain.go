// Package httpdrain counts a net/http server's requests in a drain.Tracker,
// so that lameduck can wait for them before the server stops.
//
// Middleware wraps a handler. A request counts from the moment the wrapper
// is called until the handler returns or panics; a handler that hijacks the
// connection and returns at once stops counting when it returns. Before the
// tracker's flag is set the wrapper does the tracker's Begin and End, one
// branch and the long-lived check, and allocates nothing. After the flag is
// set, requests that still arrive come from consumers with a stale view of
// the registry: by default they are served with "Connection: close", so the
// client opens its next connection elsewhere. The HTTP/1 server closes the
// connection after the response; the HTTP/2 server drops the header and
// sends a graceful GOAWAY, letting open streams finish. WithReject answers
// them 503 with Retry-After instead.
//
// Nothing in this package blocks. The middleware and the handlers it builds
// are safe for concurrent use.
package httpdrain

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/consumerid"
)

var (
	// ErrNilTracker is returned by Middleware when the tracker is nil.
	ErrNilTracker = errors.New("httpdrain: nil tracker; pass the *drain.Tracker the coordinator waits on")
	// ErrInvalidOption is wrapped by the error Middleware returns for an
	// option with a value it cannot use.
	ErrInvalidOption = errors.New("httpdrain: invalid option")
)

// Middleware returns a wrapper that counts each request in t. Requests that
// classify as long-lived (see WithLongLived) are counted with
// t.BeginLongLived, the others with t.Begin.
//
// It returns ErrNilTracker when t is nil and an error wrapping
// ErrInvalidOption when an option's value is unusable; it never panics.
func Middleware(t *drain.Tracker, opts ...Option) (func(http.Handler) http.Handler, error) {
	if t == nil {
		return nil, ErrNilTracker
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	return func(next http.Handler) http.Handler {
		return &handler{t: t, next: next, o: o}
	}, nil
}

type handler struct {
	t    *drain.Tracker
	next http.Handler
	o    options
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req drain.Request
	if h.o.longLived(r) {
		req = h.t.BeginLongLived()
	} else {
		req = h.t.Begin()
	}
	// The deferred End also runs when next panics, and the panic then goes
	// on unchanged, with its stack trace intact; no recover is needed. End
	// fails only on a double or unbegun End, which this code cannot make.
	defer req.End()
	if h.t.Consumers().Active() {
		h.t.Saw(h.o.ids.ID(r.RemoteAddr, func(name string) []string { return r.Header[name] }))
	}
	if req.Draining() && h.straggler(w, r) {
		return
	}
	h.next.ServeHTTP(w, r)
}

// straggler prepares the answer to a request begun after the flag was set.
// It reports whether it answered the request itself.
//
// "Connection: close" makes the HTTP/1 server close the connection after
// the response. The HTTP/2 server removes the header (RFC 9113 forbids it)
// and, when its value is exactly "close", starts a graceful shutdown of the
// connection: GOAWAY with NO_ERROR, open streams finish, and the connection
// closes once idle (net/http h2_bundle.go, writeChunk). Requests that carry
// an Upgrade header are left alone when served, as their handshake owns the
// Connection header.
func (h *handler) straggler(w http.ResponseWriter, r *http.Request) (answered bool) {
	if !h.o.reject {
		if len(r.Header["Upgrade"]) == 0 {
			w.Header().Set("Connection", "close")
		}
		return false
	}
	hdr := w.Header()
	hdr.Set("Connection", "close")
	hdr.Set("Retry-After", h.o.retryAfterHeader)
	http.Error(w, "httpdrain: this instance is going offline; retry on another", http.StatusServiceUnavailable)
	return true
}

// IsLongLived is the default long-lived classifier. It reports true for a
// WebSocket or other protocol upgrade ("Connection: upgrade" and an Upgrade
// header), for CONNECT (tunnels, and WebSockets over HTTP/2 per RFC 8441),
// and for Server-Sent Events ("Accept: text/event-stream"). Upgrades and
// event streams are GET requests, so other methods cost no header lookup.
// It expects the canonical header keys that net/http's server produces.
func IsLongLived(r *http.Request) bool {
	switch r.Method {
	case http.MethodConnect:
		return true
	case http.MethodGet:
	default:
		return false
	}
	if len(r.Header["Upgrade"]) > 0 && hasToken(r.Header["Connection"], "upgrade") {
		return true
	}
	for _, v := range r.Header["Accept"] {
		if strings.Contains(v, "text/event-stream") {
			return true
		}
	}
	return false
}

// hasToken reports whether the comma-separated header values hold token,
// ignoring case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Option configures Middleware.
type Option func(*options)

type options struct {
	longLived        func(*http.Request) bool
	reject           bool
	retryAfter       time.Duration
	retryAfterHeader string
	ids              consumerid.Resolver
}

// setDefaults fills in what the options left unset and checks the rest.
func (o *options) setDefaults() error {
	if o.longLived == nil {
		o.longLived = IsLongLived
	}
	if o.retryAfter < 0 {
		return fmt.Errorf("%w: WithReject: retry-after %v is negative", ErrInvalidOption, o.retryAfter)
	}
	secs := int64(o.retryAfter / time.Second)
	if o.retryAfter%time.Second != 0 || secs == 0 {
		secs++
	}
	o.retryAfterHeader = strconv.FormatInt(secs, 10)
	return nil
}

// WithLongLived replaces the long-lived classifier (IsLongLived by default).
// f is called once per request, concurrently, so it must be quick and safe
// for concurrent use. A nil f restores the default.
func WithLongLived(f func(*http.Request) bool) Option {
	return func(o *options) { o.longLived = f }
}

// WithConsumerHeader names a request's consumer, in the late traffic
// attribution (drain.Consumers), by the value of header name (a consumer
// identity header) when the request carries it, instead of by its remote
// IP. Values are cut to 64 printable bytes.
func WithConsumerHeader(name string) Option {
	return func(o *options) { o.ids.Header = http.CanonicalHeaderKey(name) }
}

// WithTrustedProxies believes X-Forwarded-For from remote addresses in
// these prefixes: their requests are attributed to the rightmost forwarded
// address that is not itself a trusted proxy.
func WithTrustedProxies(prefixes ...netip.Prefix) Option {
	return func(o *options) { o.ids.Trusted = prefixes }
}

// WithReject answers requests begun after the flag was set with 503 Service
// Unavailable, "Retry-After" and "Connection: close", without calling the
// handler. retryAfter is rounded up to whole seconds, at least 1; a negative
// value makes Middleware fail. Without WithReject such requests are served.
func WithReject(retryAfter time.Duration) Option {
	return func(o *options) { o.reject, o.retryAfter = true, retryAfter }
}

package admin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// DefaultMaxConns is how many connections Serve holds open at once unless
// WithMaxConns says otherwise: twice DefaultMaxLongPolls, so that with
// every long-poll slot taken half the connections are left for POST
// /offline, /status and scrapes. 64 descriptors are a small share of even
// a tight limit (`ulimit -n 512`) and more than the few clients an
// instance has (a prestop hook, `lameduck offline`, a scraper, a person).
const DefaultMaxConns = 64

// The limits Serve sets on every connection. No ReadTimeout or
// WriteTimeout: net/http would end a /wait long-poll when either passes
// (a read deadline cancels the request's context), and the requests have
// no body to read slowly, and the answers a few kilobytes that fit the
// socket's buffer.
const (
	// readHeaderTimeout closes a connection that has not sent its
	// request's headers in time, so a silent or slow client cannot hold a
	// connection slot.
	readHeaderTimeout = 5 * time.Second
	// idleTimeout closes a keep-alive connection with no request, so idle
	// clients give their slots back.
	idleTimeout = 30 * time.Second
	// maxHeaderBytes bounds a request's headers: the endpoint's requests
	// carry a bearer token at most; net/http allows 4 KiB more.
	maxHeaderBytes = 16 << 10
	// shutdownGrace is how long Serve, once its context ends, lets open
	// requests finish (a long-poll answered because the instance is now
	// Offline) before it closes every connection.
	shutdownGrace = 2 * time.Second
)

// ServerOption configures Serve.
type ServerOption func(*serverOptions)

type serverOptions struct {
	maxConns          int
	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	grace             time.Duration
}

func (o *serverOptions) setDefaults() {
	if o.maxConns <= 0 {
		o.maxConns = DefaultMaxConns
	}
	if o.readHeaderTimeout <= 0 {
		o.readHeaderTimeout = readHeaderTimeout
	}
	if o.idleTimeout <= 0 {
		o.idleTimeout = idleTimeout
	}
	if o.grace <= 0 {
		o.grace = shutdownGrace
	}
}

// WithMaxConns caps the connections Serve holds open at once; n <= 0
// means DefaultMaxConns. Keep it above the handler's long-poll cap
// (WithMaxLongPolls), so that a connection is left for POST /offline when
// every long-poll slot is taken.
func WithMaxConns(n int) ServerOption { return func(o *serverOptions) { o.maxConns = n } }

// Serve serves h on ln until ctx ends, with limits that keep the endpoint
// from taking what the app next to it needs. h is the admin handler
// (NewHandler), or anything else served beside an app, such as metrics.
//
//   - At most WithMaxConns connections are open at once (DefaultMaxConns).
//     Serve does not accept the next one until one closes: it waits in the
//     kernel's accept queue (the listen backlog), where it takes none of
//     the process's file descriptors, and is served when a slot frees, so
//     a prestop hook that arrives in a burst is late, not refused. Closing
//     the extra connections instead would need accepting them first,
//     taking the very descriptor the limit protects.
//   - A request's headers must arrive within 5 s and fit in 16 KiB; a
//     keep-alive connection idle for 30 s is closed.
//
// The cap on concurrent long-polls is the handler's (WithMaxLongPolls);
// beyond it /wait answers 429 and closes its connection, giving the slot
// back at once.
//
// Serve blocks. When ctx ends it stops accepting, lets open requests
// finish for 2 s (a /wait answered because the instance has just gone
// Offline), closes every connection, and returns nil. If serving fails
// first, it returns why. Either way ln is closed.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, opts ...ServerOption) error {
	var o serverOptions
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.readHeaderTimeout,
		IdleTimeout:       o.idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(netutil.LimitListener(ln, o.maxConns)) }()
	select {
	case err := <-served:
		return fmt.Errorf("admin: serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.grace)
	defer cancel()
	if srv.Shutdown(sctx) != nil {
		_ = srv.Close()
	}
	<-served
	return nil
}

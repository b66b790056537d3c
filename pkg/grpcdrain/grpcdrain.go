// Package grpcdrain counts a gRPC server's calls in a drain.Tracker, so that
// lameduck can wait for them before the server stops, and tells
// health-checking clients when the instance starts going offline.
//
// UnaryServerInterceptor counts each unary call as an ordinary request;
// StreamServerInterceptor counts each stream as long-lived unless
// WithOrdinaryStreams says otherwise. A call counts until its handler
// returns or panics. Before the tracker's flag is set, an interceptor does
// the tracker's Begin and End and one branch, and allocates nothing. After
// it, calls are served by default; WithReject answers them
// codes.Unavailable without calling the handler. An interceptor cannot send
// GOAWAY on its connection: that comes from grpc.Server.GracefulStop in the
// Stopping phase, and NotServingOnDrain tells health-checking clients
// earlier. This package's GracefulStop wraps that call for a stop hook and
// stops the server hard when the hook's context ends, which
// grpc.Server.GracefulStop alone never does while a stream stays open.
//
// Only GracefulStop blocks. The interceptors are safe for concurrent use.
package grpcdrain

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/consumerid"
)

var (
	// ErrNilTracker is returned when the tracker is nil.
	ErrNilTracker = errors.New("grpcdrain: nil tracker; pass the *drain.Tracker the coordinator waits on")
	// ErrNilHealthServer is returned by NotServingOnDrain when the health
	// server is nil.
	ErrNilHealthServer = errors.New("grpcdrain: nil health server")
	// ErrNilServer is returned by GracefulStop when the server is nil.
	ErrNilServer = errors.New("grpcdrain: nil server; make the *grpc.Server before the stop hooks can run")
)

// rejectMessage is the status message of calls rejected while draining.
const rejectMessage = "grpcdrain: this instance is going offline; retry on another"

// UnaryServerInterceptor returns an interceptor that counts each unary call
// in t with t.Begin. It returns ErrNilTracker when t is nil; it never panics.
func UnaryServerInterceptor(t *drain.Tracker, opts ...Option) (grpc.UnaryServerInterceptor, error) {
	if t == nil {
		return nil, ErrNilTracker
	}
	o := newOptions(opts)
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		r := t.Begin()
		// The deferred End also runs when the handler panics, and the panic
		// goes on unchanged. End fails only on a double or unbegun End,
		// which this code cannot make.
		defer r.End()
		if t.Consumers().Active() {
			o.attribute(ctx, t)
		}
		if r.Draining() && o.reject {
			return nil, status.Error(codes.Unavailable, rejectMessage)
		}
		return handler(ctx, req)
	}, nil
}

// StreamServerInterceptor returns an interceptor that counts each stream in
// t: with t.BeginLongLived, or with t.Begin when WithOrdinaryStreams reports
// true for its full method name. It returns ErrNilTracker when t is nil; it
// never panics.
func StreamServerInterceptor(t *drain.Tracker, opts ...Option) (grpc.StreamServerInterceptor, error) {
	if t == nil {
		return nil, ErrNilTracker
	}
	o := newOptions(opts)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		var r drain.Request
		if o.ordinaryStream(info.FullMethod) {
			r = t.Begin()
		} else {
			r = t.BeginLongLived()
		}
		defer r.End()
		if t.Consumers().Active() {
			o.attribute(ss.Context(), t)
		}
		if r.Draining() && o.reject {
			return status.Error(codes.Unavailable, rejectMessage)
		}
		return handler(srv, ss)
	}, nil
}

// NotServingOnDrain arranges for hs.Shutdown to run when t's flag is set (at
// once if it already is): every service hs knows turns NOT_SERVING, and
// later SetServingStatus calls are ignored until hs.Resume. Clients that
// watch the standard health service then stop sending new calls. stop
// cancels the arrangement and reports whether it did so before Shutdown ran.
// It returns ErrNilTracker or ErrNilHealthServer for nil arguments; it never
// panics and does not block.
func NotServingOnDrain(t *drain.Tracker, hs *health.Server) (stop func() bool, err error) {
	switch {
	case t == nil:
		return nil, ErrNilTracker
	case hs == nil:
		return nil, ErrNilHealthServer
	}
	return t.AfterDraining(hs.Shutdown), nil
}

// GracefulStop stops srv gracefully, as srv.GracefulStop does, until ctx
// ends, and then hard, as srv.Stop does. It is the gRPC server's stop hook:
//
//	lameduck.WithStopHook("grpc", func(ctx context.Context) error { return grpcdrain.GracefulStop(ctx, grpcSrv) })
//
// srv.GracefulStop closes the listeners, sends GOAWAY and waits for every
// call to end, and so never returns while a stream that only its client
// ends stays open, such as a health Watch. GracefulStop blocks until the
// calls have ended, and then returns nil, or until ctx ends: then it calls
// srv.Stop, which closes every connection and so cancels every call's
// context, and returns an error that wraps ctx.Err() once Stop has
// returned. It does not wait for handlers that ignore their context, unless
// srv was made with grpc.WaitForHandlers(true), whose Stop does. With ctx
// already ended (a forced stop) it calls Stop at once. A nil srv gives
// ErrNilServer. Like srv's own methods, it is safe to call concurrently with
// them.
func GracefulStop(ctx context.Context, srv *grpc.Server) error {
	if srv == nil {
		return ErrNilServer
	}
	if ctx.Err() == nil {
		done := make(chan struct{})
		go func() {
			srv.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
		}
	}
	srv.Stop()
	return fmt.Errorf("grpcdrain: graceful stop cut short, calls still open were closed: %w", ctx.Err())
}

// Option configures the interceptors.
type Option func(*options)

type options struct {
	ordinaryStream func(fullMethod string) bool
	reject         bool
	ids            consumerid.Resolver
}

// attribute names the call's consumer to t, which callers check
// attributes requests (from the deregistration on; before, the check is
// one atomic load): the peer's IP, or what WithConsumerMetadata and
// WithTrustedProxies say.
func (o *options) attribute(ctx context.Context, t *drain.Tracker) {
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	t.Saw(o.ids.ID(addr, func(name string) []string { return md.Get(name) }))
}

func newOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	return o
}

func (o *options) setDefaults() {
	if o.ordinaryStream == nil {
		o.ordinaryStream = func(string) bool { return false }
	}
}

// WithOrdinaryStreams counts the streams for which f reports true as
// ordinary requests instead of long-lived ones: short streams that should
// hold the drain back like unary calls do. f gets the full method name
// ("/package.Service/Method"); it is called once per stream, concurrently,
// so it must be quick and safe for concurrent use. A nil f restores the
// default, which counts every stream as long-lived. Unary calls are always
// ordinary.
func WithOrdinaryStreams(f func(fullMethod string) bool) Option {
	return func(o *options) { o.ordinaryStream = f }
}

// WithConsumerMetadata names a call's consumer, in the late traffic
// attribution (drain.Consumers), by the value of the metadata key name
// when the call carries it, instead of by the peer's IP.
func WithConsumerMetadata(name string) Option {
	return func(o *options) { o.ids.Header = name }
}

// WithTrustedProxies believes "x-forwarded-for" metadata from peers in
// these prefixes: their calls are attributed to the rightmost forwarded
// address that is not itself a trusted proxy.
func WithTrustedProxies(prefixes ...netip.Prefix) Option {
	return func(o *options) { o.ids.Trusted = prefixes }
}

// WithReject answers calls begun after the flag was set with
// codes.Unavailable, without calling the handler. Without it they are
// served.
func WithReject() Option {
	return func(o *options) { o.reject = true }
}

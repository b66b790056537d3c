package grpcdrain_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/grpcdrain"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

// serve starts a gRPC server on an in-memory listener with both interceptors
// and the health service hs, and returns a client for it. Everything stops
// at the end of the test.
func serve(t *testing.T, tr *drain.Tracker, hs healthpb.HealthServer, opts ...grpcdrain.Option) healthpb.HealthClient {
	t.Helper()
	unary, err := grpcdrain.UnaryServerInterceptor(tr, opts...)
	if err != nil {
		t.Fatalf("UnaryServerInterceptor: want no error, got %v", err)
	}
	stream, err := grpcdrain.StreamServerInterceptor(tr, opts...)
	if err != nil {
		t.Fatalf("StreamServerInterceptor: want no error, got %v", err)
	}
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer(grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream))
	healthpb.RegisterHealthServer(srv, hs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: want nil after Stop, got %v", err)
			}
		case <-time.After(wait):
			t.Errorf("Serve did not return within %v of Stop", wait)
		}
	})
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("NewClient: want no error, got %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// blockingHealth is a health service whose Check and Watch block until
// release is closed, so a test can look at the counts mid-call.
type blockingHealth struct {
	healthpb.UnimplementedHealthServer
	entered chan struct{} // one send per handler call
	release chan struct{}
}

func newBlockingHealth() *blockingHealth {
	return &blockingHealth{entered: make(chan struct{}, 1), release: make(chan struct{})}
}

var serving = &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}

func (b *blockingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return serving, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *blockingHealth) Watch(_ *healthpb.HealthCheckRequest, ss healthpb.Health_WatchServer) error {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return ss.Send(serving)
	case <-ss.Context().Done():
		return ss.Context().Err()
	}
}

// call makes a unary Check or reads a Watch stream to its end, and returns
// the call's status code.
func call(ctx context.Context, c healthpb.HealthClient, stream bool) codes.Code {
	if !stream {
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		return status.Code(err)
	}
	w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return status.Code(err)
	}
	for {
		// Reading to io.EOF means the server has sent its trailer, which
		// it does only after the handler and interceptor have returned.
		if _, err := w.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return codes.OK
			}
			return status.Code(err)
		}
	}
}

const watchMethod = "/grpc.health.v1.Health/Watch"

func TestInterceptors(t *testing.T) {
	t.Parallel()
	ordinaryWatch := grpcdrain.WithOrdinaryStreams(func(m string) bool { return m == watchMethod })
	otherOrdinary := grpcdrain.WithOrdinaryStreams(func(m string) bool { return m == "/some.Other/Method" })
	tests := []struct {
		name          string
		stream        bool
		opts          []grpcdrain.Option
		draining      bool
		wantHandler   bool
		wantInFlight  int64 // while the handler runs
		wantLongLived int64 // while the handler runs
		wantCode      codes.Code
	}{
		{"unary serving", false, nil, false, true, 1, 0, codes.OK},
		{"unary draining, served", false, nil, true, true, 1, 0, codes.OK},
		{"unary draining, rejected", false, []grpcdrain.Option{grpcdrain.WithReject()}, true, false, 0, 0, codes.Unavailable},
		{"unary serving with reject option", false, []grpcdrain.Option{grpcdrain.WithReject()}, false, true, 1, 0, codes.OK},
		{"stream serving, long-lived", true, nil, false, true, 0, 1, codes.OK},
		{"stream classified ordinary", true, []grpcdrain.Option{ordinaryWatch}, false, true, 1, 0, codes.OK},
		{"stream, other method ordinary", true, []grpcdrain.Option{otherOrdinary}, false, true, 0, 1, codes.OK},
		{"stream draining, served", true, nil, true, true, 0, 1, codes.OK},
		{"stream draining, rejected", true, []grpcdrain.Option{grpcdrain.WithReject()}, true, false, 0, 0, codes.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			if tc.draining {
				tr.SetDraining()
			}
			hs := newBlockingHealth()
			c := serve(t, &tr, hs, tc.opts...)
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			result := make(chan codes.Code, 1)
			go func() { result <- call(ctx, c, tc.stream) }()

			if tc.wantHandler {
				select {
				case <-hs.entered:
				case <-time.After(wait):
					t.Fatalf("handler not called within %v", wait)
				}
				if got := tr.InFlight(); got != tc.wantInFlight {
					t.Errorf("in flight while the handler runs: want %d, got %d", tc.wantInFlight, got)
				}
				if got := tr.LongLived(); got != tc.wantLongLived {
					t.Errorf("long-lived while the handler runs: want %d, got %d", tc.wantLongLived, got)
				}
			}
			close(hs.release)
			select {
			case got := <-result:
				if got != tc.wantCode {
					t.Errorf("status code: want %v, got %v", tc.wantCode, got)
				}
			case <-time.After(wait):
				t.Fatalf("call did not return within %v", wait)
			}
			if !tc.wantHandler {
				select {
				case <-hs.entered:
					t.Errorf("handler called: want not called while rejecting, got called")
				default:
				}
			}
			wantLate := int64(0)
			if tc.draining {
				wantLate = 1
			}
			if s := tr.Stats(); s.InFlight != 0 || s.LongLived != 0 || s.Started != 1 || s.Late != wantLate {
				t.Errorf("after the call: want in flight 0, long-lived 0, started 1, late %d, got %d, %d, %d, %d",
					wantLate, s.InFlight, s.LongLived, s.Started, s.Late)
			}
		})
	}
}

// TestPanicEnds calls the interceptors directly, as a gRPC server does not
// recover handler panics, and checks that the call stops counting and the
// panic reaches the caller unchanged.
func TestPanicEnds(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		name   string
		invoke func(tr *drain.Tracker) error
	}{
		{"unary", func(tr *drain.Tracker) error {
			unary, err := grpcdrain.UnaryServerInterceptor(tr)
			if err != nil {
				return err
			}
			_, err = unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/a.B/C"},
				func(context.Context, any) (any, error) { panic(boom) })
			return err
		}},
		{"stream", func(tr *drain.Tracker) error {
			stream, err := grpcdrain.StreamServerInterceptor(tr)
			if err != nil {
				return err
			}
			return stream(nil, nil, &grpc.StreamServerInfo{FullMethod: "/a.B/C", IsServerStream: true},
				func(any, grpc.ServerStream) error { panic(boom) })
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			var err error
			got := func() (v any) {
				defer func() { v = recover() }()
				err = tc.invoke(&tr)
				return nil
			}()
			if got != boom {
				t.Fatalf("recovered value: want %v, got %v (error %v)", boom, got, err)
			}
			if s := tr.Stats(); s.InFlight != 0 || s.LongLived != 0 || s.Started != 1 {
				t.Errorf("after the panic: want in flight 0, long-lived 0, started 1, got %d, %d, %d", s.InFlight, s.LongLived, s.Started)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		call func() (ok bool, err error)
		want error
	}{
		{"unary nil tracker", func() (bool, error) {
			f, err := grpcdrain.UnaryServerInterceptor(nil)
			return f != nil, err
		}, grpcdrain.ErrNilTracker},
		{"stream nil tracker", func() (bool, error) {
			f, err := grpcdrain.StreamServerInterceptor(nil)
			return f != nil, err
		}, grpcdrain.ErrNilTracker},
		{"health nil tracker", func() (bool, error) {
			f, err := grpcdrain.NotServingOnDrain(nil, health.NewServer())
			return f != nil, err
		}, grpcdrain.ErrNilTracker},
		{"health nil server", func() (bool, error) {
			f, err := grpcdrain.NotServingOnDrain(new(drain.Tracker), nil)
			return f != nil, err
		}, grpcdrain.ErrNilHealthServer},
		{"nil classifier restores default", func() (bool, error) {
			f, err := grpcdrain.StreamServerInterceptor(new(drain.Tracker), grpcdrain.WithOrdinaryStreams(nil))
			return f != nil, err
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ok, err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Fatalf("want error %v, got %v", tc.want, err)
			}
			if ok != (tc.want == nil) {
				t.Fatalf("want a result only without error, got result %v with error %v", ok, err)
			}
		})
	}
}

// TestNotServingOnDrain watches the real health service over gRPC and checks
// that it turns NOT_SERVING when the flag is set.
func TestNotServingOnDrain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		drainBefore bool // set the flag before arranging the hook
	}{
		{"flag set later", false},
		{"flag already set", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tr drain.Tracker
			hs := health.NewServer()
			hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
			c := serve(t, &tr, hs)
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
			if err != nil {
				t.Fatalf("Watch: want no error, got %v", err)
			}
			if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("first status: want SERVING, got %v (error %v)", r.GetStatus(), err)
			}
			if tc.drainBefore {
				tr.SetDraining()
			}
			stop, err := grpcdrain.NotServingOnDrain(&tr, hs)
			if err != nil {
				t.Fatalf("NotServingOnDrain: want no error, got %v", err)
			}
			if !tc.drainBefore {
				tr.SetDraining()
			}
			// Recv ends with an error when ctx's deadline passes first.
			r, err := w.Recv()
			if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("status after the flag: want NOT_SERVING, got %v (error %v)", r.GetStatus(), err)
			}
			if stop() {
				t.Errorf("stop after the hook ran: want false, got true")
			}
		})
	}
}

func TestNotServingOnDrainStop(t *testing.T) {
	t.Parallel()
	var tr drain.Tracker
	hs := health.NewServer()
	stop, err := grpcdrain.NotServingOnDrain(&tr, hs)
	if err != nil {
		t.Fatalf("NotServingOnDrain: want no error, got %v", err)
	}
	if !stop() {
		t.Fatalf("first stop before the flag: want true, got false")
	}
	if stop() {
		t.Errorf("second stop: want false, got true")
	}
	tr.SetDraining()
	// A stopped hook is removed under the tracker's lock before SetDraining
	// collects the hooks, so Shutdown cannot run.
	r, err := hs.Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("status after a stopped hook and the flag: want SERVING, got %v (error %v)", r.GetStatus(), err)
	}
}

// closeListener tells when it is closed: grpc.Server.GracefulStop closes its
// listeners before it waits for the calls.
type closeListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *closeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func TestGracefulStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		watch bool // a health Watch stream, which only the client ends, is open
		ended bool // ctx has ended before the call, as in a forced stop
	}{
		{name: "no call open: graceful, nil"},
		{name: "watch open: cut when ctx ends", watch: true},
		{name: "ctx already ended: stopped at once", watch: true, ended: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			lis := &closeListener{Listener: l, closed: make(chan struct{})}
			srv := grpc.NewServer()
			healthpb.RegisterHealthServer(srv, health.NewServer())
			served := make(chan error, 1)
			go func() { served <- srv.Serve(lis) }()
			t.Cleanup(srv.Stop)

			conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatalf("NewClient: want no error, got %v", err)
			}
			t.Cleanup(func() { _ = conn.Close() })
			hc := healthpb.NewHealthClient(conn)
			callCtx, cancelCalls := context.WithTimeout(t.Context(), wait)
			t.Cleanup(cancelCalls)
			// An answer says Serve is serving: a stop before it would make
			// Serve fail with ErrServerStopped.
			if _, err := hc.Check(callCtx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatalf("Check: want an answer, got %v", err)
			}
			var stream healthpb.Health_WatchClient
			if tt.watch {
				stream, err = hc.Watch(callCtx, &healthpb.HealthCheckRequest{})
				if err != nil {
					t.Fatalf("Watch: want a stream, got %v", err)
				}
				// The first answer says the stream is open on the server.
				if resp, err := stream.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Fatalf("Watch: want SERVING first, got %v, %v", resp, err)
				}
			}

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.ended {
				cancel()
			}
			stopped := make(chan error, 1)
			go func() { stopped <- grpcdrain.GracefulStop(ctx, srv) }()

			if tt.watch && !tt.ended {
				select {
				case <-lis.closed:
				case <-time.After(wait):
					t.Fatalf("want the listener closed by the graceful stop within %v, got nothing", wait)
				}
				select {
				case err := <-stopped:
					t.Fatalf("want GracefulStop to wait for the open Watch until ctx ends, got %v before", err)
				default:
				}
				cancel()
			}

			var got error
			select {
			case got = <-stopped:
			case <-time.After(wait):
				t.Fatalf("want GracefulStop to return within %v, got nothing", wait)
			}
			if !tt.watch {
				if got != nil {
					t.Fatalf("want nil with no call open, got %v", got)
				}
			} else if !errors.Is(got, context.Canceled) {
				t.Fatalf("want an error wrapping context.Canceled once ctx ends, got %v", got)
			}
			select {
			case err := <-served:
				if err != nil {
					t.Fatalf("Serve: want nil after the stop, got %v", err)
				}
			case <-time.After(wait):
				t.Fatalf("want Serve to return within %v of the stop, got nothing", wait)
			}
			if tt.watch {
				// Bounded by callCtx, whose end would give DeadlineExceeded.
				if resp, err := stream.Recv(); status.Code(err) != codes.Unavailable {
					t.Fatalf("want the Watch cut with Unavailable, got %v, %v", resp, err)
				}
			}
		})
	}
}

func TestGracefulStopNilServer(t *testing.T) {
	t.Parallel()
	if err := grpcdrain.GracefulStop(t.Context(), nil); !errors.Is(err, grpcdrain.ErrNilServer) {
		t.Fatalf("want ErrNilServer, got %v", err)
	}
}

// TestAttribution: calls are named by the consumer metadata key when set,
// else by the peer's IP, once the tracker attributes requests.
func TestAttribution(t *testing.T) {
	t.Parallel()
	var tr drain.Tracker
	icpt, err := grpcdrain.UnaryServerInterceptor(&tr, grpcdrain.WithConsumerMetadata("x-client"))
	if err != nil {
		t.Fatal(err)
	}
	call := func(addr string, md metadata.MD) {
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(addr), Port: 5}})
		if md != nil {
			ctx = metadata.NewIncomingContext(ctx, md)
		}
		_, _ = icpt(ctx, nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) { return nil, nil })
	}
	call("10.0.0.1", nil) // before attribution starts
	tr.Consumers().Start(time.Now())
	tr.Consumers().Confirmed(time.Now())
	call("10.0.0.7", nil)
	call("10.0.0.8", metadata.Pairs("x-client", "billing"))
	late := tr.Consumers().Late(10)
	got := map[string]int64{}
	for _, c := range late.Top {
		got[c.ID] = c.After
	}
	if len(got) != 2 || got["10.0.0.7"] != 1 || got["billing"] != 1 {
		t.Errorf("late consumers: want 10.0.0.7 and billing once each, got %v", got)
	}
}

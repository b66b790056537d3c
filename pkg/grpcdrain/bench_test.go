package grpcdrain_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/grpcdrain"
)

// BenchmarkUnaryInterceptor compares a unary call's serving path through the
// interceptor with the bare handler call, serially and from parallel
// goroutines sharing one tracker, as one server's calls do.
func BenchmarkUnaryInterceptor(b *testing.B) {
	var tr drain.Tracker
	unary, err := grpcdrain.UnaryServerInterceptor(&tr)
	if err != nil {
		b.Fatalf("UnaryServerInterceptor: want no error, got %v", err)
	}
	handler := func(_ context.Context, req any) (any, error) { return req, nil }
	info := &grpc.UnaryServerInfo{FullMethod: "/bench.Service/Method"}
	ctx := context.Background()
	var req any = info // any non-nil value that does not allocate when boxed

	calls := []struct {
		name string
		call func() (any, error)
	}{
		{"bare", func() (any, error) { return handler(ctx, req) }},
		{"grpcdrain", func() (any, error) { return unary(ctx, req, info, handler) }},
	}
	for _, c := range calls {
		b.Run("serial/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.call(); err != nil {
					b.Fatalf("call: want no error, got %v", err)
				}
			}
		})
	}
	for _, c := range calls {
		b.Run("parallel/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.call(); err != nil {
						b.Errorf("call: want no error, got %v", err)
						return
					}
				}
			})
		})
	}
	if got := tr.InFlight(); got != 0 {
		b.Fatalf("in flight after the benchmark: want 0, got %d", got)
	}
}

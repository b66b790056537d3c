package httpdrain_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/pkg/httpdrain"
)

// nopWriter is a ResponseWriter that allocates nothing per request, so the
// benchmark measures the middleware rather than a recorder.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

// BenchmarkMiddleware compares the serving path through the middleware with
// the bare handler, serially and from parallel goroutines sharing one
// tracker, as the goroutines of one server do.
func BenchmarkMiddleware(b *testing.B) {
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	var tr drain.Tracker
	mw, err := httpdrain.Middleware(&tr)
	if err != nil {
		b.Fatalf("Middleware: want no error, got %v", err)
	}
	// httpdrain-noclassify skips the long-lived check, to show what the
	// default classifier's header lookups cost on their own.
	noClassify, err := httpdrain.Middleware(&tr, httpdrain.WithLongLived(func(*http.Request) bool { return false }))
	if err != nil {
		b.Fatalf("Middleware: want no error, got %v", err)
	}
	handlers := []struct {
		name string
		h    http.Handler
	}{
		{"bare", bare},
		{"httpdrain", mw(bare)},
		{"httpdrain-noclassify", noClassify(bare)},
	}
	r := httptest.NewRequest("GET", "/api/items/42", nil)
	r.Header.Set("Accept", "application/json")
	r.Header.Set("User-Agent", "bench/1.0")

	for _, hc := range handlers {
		b.Run("serial/"+hc.name, func(b *testing.B) {
			b.ReportAllocs()
			w := &nopWriter{h: make(http.Header)}
			for b.Loop() {
				hc.h.ServeHTTP(w, r)
			}
		})
	}
	for _, hc := range handlers {
		b.Run("parallel/"+hc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				w := &nopWriter{h: make(http.Header)}
				for pb.Next() {
					hc.h.ServeHTTP(w, r)
				}
			})
		})
	}
	if got := tr.InFlight(); got != 0 {
		b.Fatalf("in flight after the benchmark: want 0, got %d", got)
	}
}

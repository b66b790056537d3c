package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

// server answers /ok with 200 and /down with 503. closed receives when
// one of its connections closes.
func server(t *testing.T) (port int, closed <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{}, 16)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/down" {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			select {
			case ch <- struct{}{}:
			default: // nobody counts this server's closes
			}
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port, ch
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	port, _ := server(t)
	p := strconv.Itoa(port)
	tests := []struct {
		name    string
		url     string
		port    int
		wantErr string // "" for a pass
	}{
		{"2xx passes", "http://127.0.0.1:" + p + "/ok", 0, ""},
		{"the copy's port replaces {port}", "http://127.0.0.1:{port}/ok", port, ""},
		{"a URL without {port} ignores the port", "http://127.0.0.1:" + p + "/ok", 1, ""},
		{"non-2xx fails with the status", "http://127.0.0.1:{port}/down", port, "status 503"},
		{"port 0 leaves {port} in place", "http://127.0.0.1:{port}/ok", 0, "probe: check"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			err := HTTP(tt.url)(ctx, tt.port)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("HTTP(%q)(port %d): want a pass, got %v", tt.url, tt.port, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("HTTP(%q)(port %d): want an error containing %q, got %v", tt.url, tt.port, tt.wantErr, err)
			}
		})
	}
}

// A check leaves no idle keep-alive connection behind: one would count as
// in flight on the copy's port.
func TestHTTPClosesItsConnection(t *testing.T) {
	t.Parallel()
	port, closed := server(t)
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := HTTP("http://127.0.0.1:{port}/ok").At(port)(ctx); err != nil {
		t.Fatalf("check: want a pass, got %v", err)
	}
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatalf("check's connection: want it closed once the check returned, still open after %v", wait)
	}
}

// A check ends when its ctx does.
func TestHTTPHonoursContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := HTTP("http://127.0.0.1:1/ok")(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("check with an ended ctx: want an error wrapping context.Canceled, got %v", err)
	}
}

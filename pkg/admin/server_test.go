package admin

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// withTimeouts shortens Serve's header and idle timeouts and its shutdown
// grace, so that tests see them act.
func withTimeouts(readHeader, idle, grace time.Duration) ServerOption {
	return func(o *serverOptions) { o.readHeaderTimeout, o.idleTimeout, o.grace = readHeader, idle, grace }
}

// startServe runs Serve on a loopback listener until the test ends and
// returns the address; Serve must return nil within wait of the end.
func startServe(t *testing.T, h http.Handler, opts ...ServerOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, h, opts...) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve after its ctx ended: want nil, got %v", err)
			}
		case <-time.After(wait):
			t.Errorf("Serve: want it to return within %v of its ctx ending, got nothing", wait)
		}
	})
	return ln.Addr().String()
}

// dial opens a raw connection to addr, closed when the test ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// get writes a GET for path on conn.
func get(t *testing.T, conn net.Conn, path string) {
	t.Helper()
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
		t.Fatalf("write GET %s: %v", path, err)
	}
}

// readResponse reads one answer from conn within d.
func readResponse(conn net.Conn, r *bufio.Reader, d time.Duration) (*http.Response, error) {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(r, nil)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// answer says what readResponse got, for failure messages.
func answer(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// TestServeConnCap: Serve holds at most WithMaxConns connections; the next
// waits, unanswered, until one closes, then is served.
func TestServeConnCap(t *testing.T) {
	t.Parallel()
	const limit = 2
	entered := make(chan string, 4)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- r.URL.Path
		if r.URL.Path == "/hold" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	addr := startServe(t, h, WithMaxConns(limit))
	defer close(release)

	held := make([]net.Conn, limit)
	for k := range held {
		held[k] = dial(t, addr)
		get(t, held[k], "/hold")
		select {
		case <-entered:
		case <-time.After(wait):
			t.Fatalf("connection %d: want its request served within %v, got nothing", k, wait)
		}
	}
	extra := dial(t, addr) // the kernel completes the handshake: it waits in the backlog
	get(t, extra, "/extra")
	r := bufio.NewReader(extra)
	// A negative check: the extra connection must not be served while the
	// cap is full. 200 ms is plenty for an uncapped server on loopback.
	if resp, err := readResponse(extra, r, 200*time.Millisecond); err == nil {
		t.Fatalf("connection %d with %d held: want no answer while the cap is full, got %s", limit+1, limit, resp.Status)
	}
	select {
	case p := <-entered:
		t.Fatalf("connection %d with %d held: want its request not read while the cap is full, got %s served", limit+1, limit, p)
	default:
	}

	held[0].Close() // its slot frees once the server sees the close
	select {
	case p := <-entered:
		if p != "/extra" {
			t.Fatalf("after a held connection closed: want /extra served, got %s", p)
		}
	case <-time.After(wait):
		t.Fatalf("after a held connection closed: want the waiting connection served within %v, got nothing", wait)
	}
	if resp, err := readResponse(extra, r, wait); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("waiting connection: want 200 once a slot freed, got %s", answer(resp, err))
	}
}

// TestServeTimeouts: a connection that does not finish its headers, or
// stays idle after a request, is closed; oversized headers are refused.
func TestServeTimeouts(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	addr := startServe(t, ok, withTimeouts(50*time.Millisecond, 50*time.Millisecond, time.Second))

	t.Run("slow headers", func(t *testing.T) {
		t.Parallel()
		conn := dial(t, addr)
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: admin\r\n"); err != nil { // no blank line: headers unfinished
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		b, err := io.ReadAll(conn)
		if err != nil || strings.Contains(string(b), "200 OK") {
			t.Errorf("unfinished headers: want the connection closed unserved within %v, got %q %v", wait, b, err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		conn := dial(t, addr)
		get(t, conn, "/")
		r := bufio.NewReader(conn)
		if resp, err := readResponse(conn, r, wait); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /: want 200, got %s", answer(resp, err))
		}
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("idle keep-alive connection: want it closed (EOF) within %v, got %v", wait, err)
		}
	})
	t.Run("header size", func(t *testing.T) {
		t.Parallel()
		conn := dial(t, addr)
		big := strings.Repeat("x", 2*maxHeaderBytes)
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: admin\r\nX-Big: "+big+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := readResponse(conn, bufio.NewReader(conn), wait)
		if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("headers of %d bytes: want 431, got %s", len(big), answer(resp, err))
		}
	})
}

// TestServeShutdown: when ctx ends, Serve closes the listener, gives open
// requests the grace period, cuts what is left and returns nil.
func TestServeShutdown(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done() // a long-poll that never ends by itself
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, h, withTimeouts(0, 0, 50*time.Millisecond)) }()
	conn := dial(t, addr)
	get(t, conn, "/wait")
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatalf("long-poll: want it served within %v, got nothing", wait)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after ctx ended: want nil, got %v", err)
		}
	case <-time.After(wait):
		t.Fatalf("Serve with a request that never ends: want it to return within %v of ctx (grace 50ms), got nothing", wait)
	}
	if c, err := net.DialTimeout("tcp", addr, wait); err == nil {
		c.Close()
		t.Errorf("dial %s after Serve returned: want refused (listener closed), got a connection", addr)
	}
}

// TestServeListenerFails: Serve returns why it could not serve.
func TestServeListenerFails(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = Serve(t.Context(), ln, http.NotFoundHandler())
	if err == nil || !strings.HasPrefix(err.Error(), "admin: serving on ") || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve on a closed listener: want an admin: error wrapping net.ErrClosed, got %v", err)
	}
}

//go:build linux

package conncount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// These tests count real sockets in the test's own network namespace. They
// rely on the kernel updating its table before the syscall returns: a
// connection is ESTABLISHED by the time Accept returns it, and leaves that
// state inside close(2) (server closes first) or before Read sees the
// client's FIN (client closes first). So no count is retried.

func TestCountRealSockets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		network, addr string // to listen on, at a port listen picks
		dial          string // host to dial
		conns         int
		opts          []Option
		want          int // count while the connections are open
		wantListening bool
		clientCloses  bool // client closes first, leaving the server side in CLOSE_WAIT
	}{
		{name: "v4 none", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 0, want: 0, wantListening: true},
		{name: "v4 one", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 1, want: 1, wantListening: true},
		{name: "v4 many", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 20, want: 20, wantListening: true},
		{name: "v4 client closes", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 3, want: 3, wantListening: true, clientCloses: true},
		{name: "v6", network: "tcp6", addr: "::1", dial: "::1", conns: 5, want: 5, wantListening: true},
		{name: "v4-mapped on dual stack", network: "tcp", addr: "::", dial: "127.0.0.1", conns: 5, want: 5, wantListening: true},
		{
			name: "addr matches", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 4, want: 4, wantListening: true,
			opts: []Option{WithAddrs(netip.MustParseAddr("127.0.0.1"))},
		},
		{
			name: "addr differs", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 4, want: 0, wantListening: false,
			opts: []Option{WithAddrs(netip.MustParseAddr("127.0.0.2"))},
		},
		{
			name: "wildcard listener", network: "tcp4", addr: "0.0.0.0", dial: "127.0.0.1", conns: 4, want: 4, wantListening: true,
			opts: []Option{WithAddrs(netip.MustParseAddr("192.0.2.1"))},
		},
		{
			name: "own pid", network: "tcp4", addr: "127.0.0.1", dial: "127.0.0.1", conns: 2, want: 2, wantListening: true,
			opts: []Option{WithPID(os.Getpid())},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := listen(t, tt.network, tt.addr)
			port := ln.Addr().(*net.TCPAddr).Port
			c, err := New(port, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			clients, servers := connect(t, ln, tt.dial, tt.conns)

			if got, err := c.Count(t.Context()); err != nil || got != tt.want {
				logPort(t, port)
				t.Fatalf("with %d connections open to %s: want Count %d, got %d, %v", tt.conns, ln.Addr(), tt.want, got, err)
			}
			if got, err := c.Listening(t.Context()); err != nil || got != tt.wantListening {
				t.Fatalf("want Listening %v on %s, got %v, %v", tt.wantListening, ln.Addr(), got, err)
			}

			first, second := servers, clients
			if tt.clientCloses {
				first, second = clients, servers
			}
			for _, conn := range first {
				if err := conn.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if tt.clientCloses {
				// The server side leaves ESTABLISHED when the FIN arrives,
				// before Read can report it.
				for _, s := range servers {
					awaitEOF(t, s)
				}
			}
			if got, err := c.Count(t.Context()); err != nil || got != 0 {
				t.Fatalf("after closing %d connections: want Count 0, got %d, %v", tt.conns, got, err)
			}
			for _, conn := range second {
				conn.Close()
			}
		})
	}
}

func TestListeningRealSockets(t *testing.T) {
	t.Parallel()
	// A socket that is bound but not listening holds the port at 127.0.0.1,
	// so nothing else can listen there or on a wildcard during the test, and
	// WithAddrs ignores listeners at other addresses.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	var port int
	for range 100 {
		port = freePortCandidate(t)
		if err = syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		t.Fatalf("bind 127.0.0.1:%d: %v", port, err)
	}
	c, err := New(port, WithAddrs(netip.MustParseAddr("127.0.0.1")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Listening(t.Context()); err != nil || got {
		t.Fatalf("bound, not listening on 127.0.0.1:%d: want Listening false, got %v, %v", port, got, err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Listening(t.Context()); err != nil || !got {
		t.Fatalf("listening on 127.0.0.1:%d: want Listening true, got %v, %v", port, got, err)
	}
}

// jiffy is more than the kernel's tick (1 to 10 ms), in which it keeps a
// connection's last send and receive times: waiting it makes the next
// event's time differ from the last one's.
const jiffy = 25 * time.Millisecond

// TestActivityRealSockets follows one connection through a request and its
// answer, as sock_diag reports it.
func TestActivityRealSockets(t *testing.T) {
	t.Parallel()
	requireDiag(t)
	ln := listen(t, "tcp4", "127.0.0.1")
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := New(port)
	if err != nil {
		t.Fatal(err)
	}
	clients, servers := connect(t, ln, "127.0.0.1", 1)
	client, server := clients[0], servers[0]
	check := func(step string, established, busy int) {
		t.Helper()
		a, err := c.Activity(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		want := Activity{Established: established, Busy: busy, Timed: true}
		if a != want {
			logPort(t, port)
			t.Fatalf("%s: want %+v, got %+v", step, want, a)
		}
	}
	buf := make([]byte, 16)
	check("connected, nothing sent", 1, 0)
	time.Sleep(jiffy)
	write(t, client, "GET")
	check("request unread", 1, 1)
	if _, err := server.Read(buf); err != nil {
		t.Fatal(err)
	}
	check("request read, not answered", 1, 1)
	time.Sleep(jiffy)
	write(t, server, "ok")
	check("answered: an idle keep-alive connection", 1, 0)
	time.Sleep(jiffy)
	write(t, server, "tick")
	check("the app writes on (a stream)", 1, 0)
	time.Sleep(jiffy)
	write(t, client, "GET")
	check("the next request", 1, 1)
	if _, err := server.Read(buf); err != nil {
		t.Fatal(err)
	}
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	awaitEOF(t, server)
	check("client closed its side: CLOSE_WAIT carries no request", 0, 0)

	// A new connection's first request, sent at once (most likely in the
	// handshake's tick), is busy too.
	clients, servers = connect(t, ln, "127.0.0.1", 1)
	write(t, clients[0], "GET")
	if _, err := servers[0].Read(buf); err != nil {
		t.Fatal(err)
	}
	check("a new connection's first request, read", 1, 1)
}

// TestWaitIdleRealSockets runs WaitIdle against real connections: it must
// not return while one carries a request, and must return once each is
// answered, with the connections still open.
func TestWaitIdleRealSockets(t *testing.T) {
	t.Parallel()
	requireDiag(t)
	ln := listen(t, "tcp4", "127.0.0.1")
	port := ln.Addr().(*net.TCPAddr).Port
	clients, servers := connect(t, ln, "127.0.0.1", 3)
	time.Sleep(jiffy)
	for _, cl := range clients {
		write(t, cl, "GET")
	}

	// On a fake clock: the first poll sees 3 busy and arms a timer;
	// cancelling then must report the 3.
	f := clock.NewFake(t0)
	fc, err := New(port, withClock(f))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	added := f.TimerAdded()
	busy := make(chan error, 1)
	go func() { busy <- fc.WaitIdle(ctx, 0, time.Second) }()
	select {
	case <-added:
	case err := <-busy:
		t.Fatalf("with 3 requests unanswered: want WaitIdle to keep polling, got %v", err)
	case <-time.After(waitLong):
		t.Fatalf("want WaitIdle's first poll within %v, got none", waitLong)
	}
	cancel()
	var ni *NotIdleError
	if err := recv(t, busy, "WaitIdle to return after cancel"); !errors.As(err, &ni) || ni.Conns != 3 || !errors.Is(err, context.Canceled) {
		t.Fatalf("with 3 requests unanswered: want *NotIdleError{Conns: 3} wrapping context.Canceled, got %v", err)
	}

	// On the wall clock: answering the requests while WaitIdle polls ends
	// it, though the connections stay open (keep-alive).
	c, err := New(port)
	if err != nil {
		t.Fatal(err)
	}
	idle := make(chan error, 1)
	go func() { idle <- c.WaitIdle(t.Context(), 5*time.Millisecond, time.Millisecond) }()
	time.Sleep(jiffy)
	buf := make([]byte, 16)
	for _, sv := range servers {
		if _, err := sv.Read(buf); err != nil {
			t.Fatal(err)
		}
		write(t, sv, "ok")
	}
	if err := recv(t, idle, "WaitIdle to return after the answers"); err != nil {
		t.Fatalf("after answering every request: want nil, got %v", err)
	}
	if n, err := c.Count(t.Context()); n != 3 || err != nil {
		t.Fatalf("want the 3 keep-alive connections still established, got %d, %v", n, err)
	}
}

// TestWaitIdleUntimed is WaitIdle without the kernel's times (the tables
// of /proc, as with WithPID): every established connection is busy, so it
// returns only once they are closed.
func TestWaitIdleUntimed(t *testing.T) {
	t.Parallel()
	ln := listen(t, "tcp4", "127.0.0.1")
	port := ln.Addr().(*net.TCPAddr).Port
	clients, servers := connect(t, ln, "127.0.0.1", 2)
	defer closeAll(clients)
	c, err := New(port, WithPID(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if a, err := c.Activity(t.Context()); err != nil || a != (Activity{Established: 2, Busy: 2}) {
		t.Fatalf("2 connections, untimed: want {Established:2 Busy:2 Timed:false}, got %+v, %v", a, err)
	}
	idle := make(chan error, 1)
	go func() { idle <- c.WaitIdle(t.Context(), 5*time.Millisecond, time.Millisecond) }()
	closeAll(servers)
	if err := recv(t, idle, "WaitIdle to return after the connections closed"); err != nil {
		t.Fatalf("after closing every connection: want nil, got %v", err)
	}
}

// TestDiagFilterRealSockets checks the kernel's port filter on real
// sockets, with connections open to two ports. A read through portFilter
// gets exactly the port's sockets as the kernel sent them: its listener and
// the app's ends of its connections, whose local port it is, and neither
// the clients' ends, whose remote port it is, nor the other port's. An
// unfiltered read, and one through bytecode the kernel refuses, keep the
// same rows here, and so does each read both as one request for both
// families (the compat request) and as one request per family.
func TestDiagFilterRealSockets(t *testing.T) {
	t.Parallel()
	requireDiag(t)
	// Dual stack: its connections, from 127.0.0.1 and ::1, are all in the
	// AF_INET6 dump. The other port's are in the AF_INET one.
	lnDual := listen(t, "tcp", "::")
	ln4 := listen(t, "tcp4", "127.0.0.1")
	want := map[int][]string{}
	for _, c := range []struct {
		ln    net.Listener
		hosts []string
	}{
		{lnDual, []string{"127.0.0.1", "::1"}},
		{ln4, []string{"127.0.0.1", "127.0.0.1"}},
	} {
		local := c.ln.Addr().(*net.TCPAddr).AddrPort()
		port := int(local.Port())
		none := netip.IPv6Unspecified()
		if local.Addr().Is4() {
			none = netip.IPv4Unspecified()
		}
		want[port] = append(want[port], diagKey(row{
			local:  local,
			remote: netip.AddrPortFrom(none, 0),
			state:  stateListen,
		}))
		for _, host := range c.hosts {
			_, servers := connect(t, c.ln, host, 2)
			for _, s := range servers {
				want[port] = append(want[port], diagKey(row{
					local:  s.LocalAddr().(*net.TCPAddr).AddrPort(),
					remote: s.RemoteAddr().(*net.TCPAddr).AddrPort(),
					state:  stateEstablished,
				}))
			}
		}
	}
	portDual, port4 := lnDual.Addr().(*net.TCPAddr).Port, ln4.Addr().(*net.TCPAddr).Port
	refused := appendBCOp(nil, 0xff, bcOpLen, bcOpLen) // no such op: EINVAL
	tests := []struct {
		name         string
		port         int
		filter       []byte
		wantFiltered bool
	}{
		{name: "kernel filter, dual-stack port", port: portDual, filter: portFilter(uint16(portDual)), wantFiltered: true},
		{name: "kernel filter, IPv4 port", port: port4, filter: portFilter(uint16(port4)), wantFiltered: true},
		{name: "unfiltered, dual-stack port", port: portDual},
		{name: "unfiltered, IPv4 port", port: port4},
		{name: "refused filter falls back", port: port4, filter: refused},
	}
	for _, tt := range tests {
		for _, compat := range []bool{true, false} {
			name := tt.name + ", per family"
			if compat {
				name = tt.name + ", both families at once"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				seen := map[string]bool{} // a dump can send a socket twice
				filtered, err := readDiagVia(t.Context(), uint16(tt.port), tt.filter, compat, func(r row) {
					seen[diagKey(r)] = true
				})
				got := slices.Sorted(maps.Keys(seen))
				wantRows := slices.Sorted(slices.Values(want[tt.port]))
				if err != nil || filtered != tt.wantFiltered || !slices.Equal(got, wantRows) {
					logPort(t, tt.port)
					t.Fatalf("port %d: want filtered %v, rows\n\t%s\ngot filtered %v, %v, rows\n\t%s",
						tt.port, tt.wantFiltered, strings.Join(wantRows, "\n\t"), filtered, err, strings.Join(got, "\n\t"))
				}
				if compat && noCompatDump.Load() {
					t.Skip("this kernel refuses the compat request (TCPDIAG_GETSOCK): the rows above came per family")
				}
			})
		}
	}
}

// diagKey is how TestDiagFilterRealSockets compares rows: state and
// addresses, v4-mapped ones unmapped as net.Conn gives them.
func diagKey(r row) string {
	unmap := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }
	return fmt.Sprintf("%02X %v->%v", r.state, unmap(r.local), unmap(r.remote))
}

// TestCounterFilterRefused checks that a Counter whose bytecode the kernel
// refuses still counts, and stops sending it.
func TestCounterFilterRefused(t *testing.T) {
	t.Parallel()
	requireDiag(t)
	tests := []struct {
		name         string
		filter       []byte // nil: the Counter's own
		wantNoFilter bool
	}{
		{name: "accepted filter"},
		{name: "refused filter", filter: appendBCOp(nil, 0xff, bcOpLen, bcOpLen), wantNoFilter: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := listen(t, "tcp4", "127.0.0.1")
			port := ln.Addr().(*net.TCPAddr).Port
			connect(t, ln, "127.0.0.1", 2)
			c, err := New(port)
			if err != nil {
				t.Fatal(err)
			}
			if tt.filter != nil {
				c.filter = tt.filter
			}
			for _, read := range []string{"first", "second"} {
				a, err := c.Activity(t.Context())
				if err != nil || a.Established != 2 || !a.Timed || c.noFilter.Load() != tt.wantNoFilter {
					logPort(t, port)
					t.Fatalf("%s read of 2 connections: want 2 established, timed, noFilter %v, got %+v, %v, noFilter %v",
						read, tt.wantNoFilter, a, err, c.noFilter.Load())
				}
			}
		})
	}
}

// requireDiag skips the test where sock_diag cannot be used (a sandbox
// that forbids netlink sockets); any other error fails it.
func requireDiag(t *testing.T) {
	t.Helper()
	_, err := readDiag(t.Context(), 1, nil, func(row) {})
	if errors.Is(err, errNoDiag) {
		t.Skipf("sock_diag is not usable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, conn net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(conn, s); err != nil {
		t.Fatal(err)
	}
}

// listen listens on host at a port below the ephemeral range. The kernel
// may give a port in that range to an outbound connection from another
// address or family while a listener holds it, and such a connection would
// count as inbound (see the package doc); service ports sit below the range
// for the same reason.
func listen(t *testing.T, network, host string) net.Listener {
	t.Helper()
	var err error
	for range 100 {
		var ln net.Listener
		ln, err = net.Listen(network, net.JoinHostPort(host, strconv.Itoa(freePortCandidate(t))))
		if err == nil {
			t.Cleanup(func() { ln.Close() })
			return ln
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	t.Fatalf("listen %s on %s below the ephemeral range: %v", network, host, err)
	return nil
}

// freePortCandidate returns a random port from 1024 up to the start of the
// ephemeral range.
func freePortCandidate(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo <= 2048 {
		t.Fatalf("want ip_local_port_range starting above 2048, got %q (%v)", b, err)
	}
	return 1024 + rand.N(lo-1024)
}

// connect dials n connections to ln's port on host and accepts them all.
func connect(t *testing.T, ln net.Listener, host string, n int) (clients, servers []net.Conn) {
	t.Helper()
	target := net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	t.Cleanup(func() { closeAll(clients); closeAll(servers) })
	d := net.Dialer{Timeout: waitLong}
	for range n {
		conn, err := d.DialContext(t.Context(), "tcp", target)
		if err != nil {
			t.Fatalf("dial %s: %v", target, err)
		}
		clients = append(clients, conn)
	}
	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(waitLong)); err != nil {
		t.Fatal(err)
	}
	for range n {
		conn, err := ln.Accept()
		if err != nil {
			t.Fatalf("accept on %s: %v", ln.Addr(), err)
		}
		servers = append(servers, conn)
	}
	return clients, servers
}

// awaitEOF waits, bounded, for conn to read the peer's FIN.
func awaitEOF(t *testing.T, conn net.Conn) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(waitLong)); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("want io.EOF after the client closed, got %d bytes, %v", n, err)
	}
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// logPort logs every row of the test's own tables that has port at either
// end, to explain a wrong count.
func logPort(t *testing.T, port int) {
	t.Helper()
	for _, tb := range []table{{"/proc/net/tcp", 8}, {"/proc/net/tcp6", 32}} {
		b, err := os.ReadFile(tb.path)
		if err != nil {
			t.Logf("%s: %v", tb.path, err)
			continue
		}
		err = parseTable(t.Context(), bytes.NewReader(b), tb.path, tb.addrLen, func(r row) {
			if int(r.local.Port()) == port || int(r.remote.Port()) == port {
				t.Logf("%s: %v", tb.path, r)
			}
		})
		if err != nil {
			t.Logf("%v", err)
		}
	}
}

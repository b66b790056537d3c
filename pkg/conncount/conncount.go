// Package conncount counts an application's in-flight inbound TCP
// connections from outside the application, by reading the kernel's socket
// tables (/proc/net/tcp and /proc/net/tcp6). It is the in-flight signal for
// apps that do not link lameduck's drain library: the `lameduck prestop`
// hook, which runs in the app's pod and so shares its network namespace,
// and the supervisor. Across processes there is no event to wait on, so
// WaitIdle polls.
//
// # What counts as in flight
//
// A connection is in flight when its local port is the app's port and it is
// ESTABLISHED. A connection in any other state cannot carry a request: in
// FIN_WAIT1/2, CLOSING, LAST_ACK and TIME_WAIT the app has closed it and
// can send nothing more on it; in CLOSE_WAIT the client has closed it, so no
// request can arrive and the client will not read a response; SYN_RECV is a
// handshake not yet finished, which shows up as ESTABLISHED on the next
// read if it completes. ESTABLISHED connections still in the listener's
// accept queue count: the app will serve them.
//
// The kernel cannot tell a connection that carries a request from an idle
// keep-alive connection, so idle keep-alive connections count as in flight.
// An app that is draining must close its idle keep-alive connections, or the
// count never reaches 0: Go's http.Server.Shutdown does (it closes idle
// connections at once and the others as their requests finish), and
// grpc.Server.GracefulStop sends GOAWAY and closes each connection when its
// last stream ends. The count is of connections, not requests: one HTTP/2
// connection carries many.
//
// # Limits
//
// The kernel does not produce the tables atomically: while connections come
// and go, a read can miss a connection. (It can also print one twice; Count
// drops such duplicates.) A connection that opens and closes between two
// polls is not seen at all. WaitIdle therefore asks for the count to stay at
// 0 for a quiet window, not for a single 0.
//
// The tables do not say which side opened a connection. An outbound
// connection whose local port happens to equal the app's port counts as
// inbound. The kernel picks such local ports from the ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), and it does pick
// one a listener holds when the addresses do not overlap (a connection from
// 127.0.0.1 while the app listens on [::1], say). A port below the range
// cannot be mistaken this way; with a port in it, WithAddrs narrows the
// count to the listener's addresses.
package conncount

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// DefaultProcRoot is where procfs is mounted unless WithProcRoot says
// otherwise.
const DefaultProcRoot = "/proc"

// Option configures a Counter.
type Option func(*options)

type options struct {
	procRoot string
	pid      int
	pidSet   bool
	addrs    []netip.Addr
	clock    clock.Clock
}

func (o *options) setDefaults() {
	if o.procRoot == "" {
		o.procRoot = DefaultProcRoot
	}
	o.clock = clock.OrReal(o.clock)
}

// WithProcRoot reads the tables under dir instead of /proc: a sidecar that
// mounts the host's procfs at /host/proc, or a test's fixture directory
// holding net/tcp and net/tcp6.
func WithProcRoot(dir string) Option {
	return func(o *options) { o.procRoot = dir }
}

// WithPID reads the tables of pid's network namespace
// (<proc root>/<pid>/net/tcp) instead of the caller's own (<proc
// root>/net/tcp), for a caller outside the app's network namespace that can
// see its process: the supervisor, or a node agent with the host's PID
// namespace. Once the process has exited, reads fail with fs.ErrNotExist.
func WithPID(pid int) Option {
	return func(o *options) { o.pid, o.pidSet = pid, true }
}

// WithAddrs restricts the count (and Listening) to sockets whose local
// address is one of addrs, for a network namespace where other processes
// use the same port at other addresses. A wildcard covers more: 0.0.0.0
// covers every IPv4 address, IPv4-mapped IPv6 included, and :: covers every
// address, as a dual-stack listener does. A wildcard LISTEN socket on the
// port counts as if it were among addrs, since the kernel gives that
// listener every connection it covers. Without WithAddrs every socket on
// the port counts. Repeated calls add to the list.
func WithAddrs(addrs ...netip.Addr) Option {
	return func(o *options) { o.addrs = append(o.addrs, addrs...) }
}

func withClock(c clock.Clock) Option {
	return func(o *options) { o.clock = c }
}

// Counter counts the ESTABLISHED inbound TCP connections on one local port.
// It holds no open files; each call reads the tables afresh. It is safe for
// concurrent use. The zero value is not usable; use New.
type Counter struct {
	port   uint16
	tables [2]table
	addrs  []netip.Addr // unmapped, without zones
	clock  clock.Clock
}

// table is one of the kernel's TCP tables.
type table struct {
	path    string
	addrLen int // hex digits of address: 8 for tcp, 32 for tcp6
}

// New returns a Counter for connections to the local TCP port, which must be
// in 1..65535. It does not read the tables yet.
func New(port int, opts ...Option) (*Counter, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("conncount: port %d out of range 1..65535", port)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	dir := filepath.Join(o.procRoot, "net")
	if o.pidSet {
		if o.pid < 1 {
			return nil, fmt.Errorf("conncount: pid %d is not a process id", o.pid)
		}
		dir = filepath.Join(o.procRoot, strconv.Itoa(o.pid), "net")
	}
	c := &Counter{
		port: uint16(port),
		tables: [2]table{
			{path: filepath.Join(dir, "tcp"), addrLen: 8},
			{path: filepath.Join(dir, "tcp6"), addrLen: 32},
		},
		clock: o.clock,
	}
	for _, a := range o.addrs {
		if !a.IsValid() {
			return nil, errors.New("conncount: invalid address in WithAddrs")
		}
		c.addrs = append(c.addrs, a.Unmap().WithZone(""))
	}
	return c, nil
}

// Port returns the port c counts connections on.
func (c *Counter) Port() int { return int(c.port) }

// Count returns how many ESTABLISHED connections have the port as their
// local port (and, with WithAddrs, a matching local address). It reads both
// tables once; a table that does not exist (tcp6 on a kernel without IPv6)
// is taken as empty, but both missing is an error that wraps
// fs.ErrNotExist. Malformed tables give a *ParseError. When ctx ends Count
// stops reading and returns an error wrapping ctx.Err().
func (c *Counter) Count(ctx context.Context) (int, error) {
	s, err := c.read(ctx)
	if err != nil {
		return 0, err
	}
	if len(c.addrs) == 0 {
		return len(s.established), nil
	}
	n := 0
	for _, a := range s.established {
		if c.covered(a, s.listeners) {
			n++
		}
	}
	return n, nil
}

// Listening reports whether a socket LISTENs on the port (with WithAddrs, on
// one of the addresses or on a wildcard). Errors are as for Count.
func (c *Counter) Listening(ctx context.Context) (bool, error) {
	s, err := c.read(ctx)
	if err != nil {
		return false, err
	}
	for _, l := range s.listeners {
		if len(c.addrs) == 0 || l.IsUnspecified() || c.covered(l, nil) {
			return true, nil
		}
	}
	return false, nil
}

// NotIdleError is WaitIdle's error when ctx ends before the port has been
// idle for the quiet window. It wraps ctx.Err().
type NotIdleError struct {
	Port  int
	Conns int // the count at the last poll; -1 if no poll finished
	Err   error
}

func (e *NotIdleError) Error() string {
	if e.Conns < 0 {
		return fmt.Sprintf("conncount: port %d: gave up before the first count: %v", e.Port, e.Err)
	}
	return fmt.Sprintf("conncount: %d connections still established on port %d: %v", e.Conns, e.Port, e.Err)
}

func (e *NotIdleError) Unwrap() error { return e.Err }

// WaitIdle blocks until Count has been 0 for quiet, polling it every every.
// Polls happen at once and then every interval, or sooner when the quiet
// window ends before the next one; a poll that finds any connection starts
// the window again, so with quiet 0 the first 0 returns. Activity between
// polls is not seen. When ctx ends first WaitIdle returns a *NotIdleError
// that wraps ctx.Err(); a failed read is returned as Count returns it. It is
// safe to call concurrently.
func (c *Counter) WaitIdle(ctx context.Context, quiet, every time.Duration) error {
	if every <= 0 {
		return fmt.Errorf("conncount: poll interval %v is not positive", every)
	}
	if quiet < 0 {
		return fmt.Errorf("conncount: quiet window %v is negative", quiet)
	}
	last := -1
	var idleSince time.Time
	idle := false
	for {
		n, err := c.Count(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return &NotIdleError{Port: int(c.port), Conns: last, Err: ctx.Err()}
			}
			return err
		}
		last = n
		now := c.clock.Now()
		wait := every
		if n > 0 {
			idle = false
		} else {
			if !idle {
				idle, idleSince = true, now
			}
			left := quiet - now.Sub(idleSince)
			if left <= 0 {
				return nil
			}
			wait = min(wait, left)
		}
		t := c.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return &NotIdleError{Port: int(c.port), Conns: last, Err: ctx.Err()}
		case <-t.C():
		}
	}
}

// readSize is the size of each read(2) of a table, about 400 rows.
const readSize = 64 << 10

// snapshot is what one read of the tables found on the port: the local
// addresses of ESTABLISHED and LISTEN sockets, unmapped.
type snapshot struct {
	established []netip.Addr
	listeners   []netip.Addr
}

func (c *Counter) read(ctx context.Context) (snapshot, error) {
	var s snapshot
	// The kernel writes a table in chunks, one per read(2), and resumes each
	// chunk by position in a hash bucket: a socket added to that bucket in
	// between makes a row appear twice. A connection is unique by its
	// address pair, so the duplicates are dropped here, and reading in big
	// chunks leaves fewer places to resume at.
	seen := make(map[[2]netip.AddrPort]struct{})
	collect := func(r row) {
		if r.local.Port() != c.port {
			return
		}
		switch r.state {
		case stateEstablished:
			key := [2]netip.AddrPort{r.local, r.remote}
			if _, dup := seen[key]; dup {
				return
			}
			seen[key] = struct{}{}
			s.established = append(s.established, r.local.Addr().Unmap())
		case stateListen:
			s.listeners = append(s.listeners, r.local.Addr().Unmap())
		}
	}
	missing := 0
	for _, t := range c.tables {
		if err := ctx.Err(); err != nil {
			return snapshot{}, fmt.Errorf("conncount: %w", err)
		}
		f, err := os.Open(t.path)
		if errors.Is(err, fs.ErrNotExist) {
			missing++
			continue
		}
		if err != nil {
			return snapshot{}, fmt.Errorf("conncount: %w", err)
		}
		err = parseTable(ctx, bufio.NewReaderSize(f, readSize), t.path, t.addrLen, collect)
		f.Close() // read-only: a close error loses nothing
		if err != nil {
			var pe *ParseError
			if errors.As(err, &pe) {
				return snapshot{}, err
			}
			return snapshot{}, fmt.Errorf("conncount: %s: %w", t.path, err)
		}
	}
	if missing == len(c.tables) {
		return snapshot{}, fmt.Errorf("conncount: neither %s nor %s exists: %w",
			c.tables[0].path, c.tables[1].path, fs.ErrNotExist)
	}
	return s, nil
}

// covered reports whether local address a belongs to the app: it is one of
// c.addrs, or a wildcard among c.addrs or listeners covers it.
func (c *Counter) covered(a netip.Addr, listeners []netip.Addr) bool {
	for _, w := range c.addrs {
		if covers(w, a) {
			return true
		}
	}
	for _, l := range listeners {
		if l.IsUnspecified() && covers(l, a) {
			return true
		}
	}
	return false
}

// covers reports whether a socket bound to w receives connections to a.
// Both are unmapped.
func covers(w, a netip.Addr) bool {
	if w.IsUnspecified() {
		return w.Is6() || a.Is4()
	}
	return w == a
}

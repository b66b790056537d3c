// Package conncount watches an application's inbound TCP connections from
// outside the application, through the kernel: the in-flight signal for
// apps that do not link lameduck's drain library. The `lameduck prestop`
// hook, which runs in the app's pod and so shares its network namespace,
// and the supervisor use it. Across processes there is no event to wait on,
// so WaitIdle polls.
//
// # What counts
//
// A connection is the app's when its local port is the app's port and it
// is ESTABLISHED. A connection in any other state cannot carry a request:
// in FIN_WAIT1/2, CLOSING, LAST_ACK and TIME_WAIT the app has closed it and
// can send nothing more on it; in CLOSE_WAIT the client has closed it, so no
// request can arrive and the client will not read a response; SYN_RECV is a
// handshake not yet finished, which shows up as ESTABLISHED on the next
// read if it completes. ESTABLISHED connections still in the listener's
// accept queue count: the app will serve them.
//
// A connection is busy when it carries a request. On Linux the kernel's
// sock_diag interface (what `ss -ti` reads) gives each connection's
// tcp_info, which says how long ago data last arrived on it and how long
// ago the app last sent some: a connection is busy when data arrived after
// the app's last send (a request not yet answered) or sits unread in its
// receive queue. An idle keep-alive connection (the app answered last) is
// not busy, and neither is a stream the app keeps writing to (a
// Server-Sent Events or gRPC server stream): only the app can end those,
// which is what its own graceful shutdown after SIGTERM is for. The times
// also show requests that came and went between two polls, on connections
// that stayed open. The count is of connections, not requests: one HTTP/2
// connection carries many.
//
// Where sock_diag cannot be used (WithProcRoot, WithPID, a kernel or
// sandbox without it), conncount reads /proc/net/tcp and /proc/net/tcp6,
// which do not say which connections are busy, so every established
// connection counts as busy. An app that is draining must then close its
// idle keep-alive connections, or the count never reaches 0: Go's
// http.Server.Shutdown does, and grpc.Server.GracefulStop sends GOAWAY and
// closes each connection when its last stream ends.
//
// # Limits
//
// Busy is a reading of timestamps, not of the application protocol. The
// kernel keeps them in jiffies (1 to 10 ms): on a keep-alive connection, a
// request that arrives in the same jiffy as the answer to the one before it
// looks answered. (A new connection's first request does not: the kernel
// also counts the data segments each way, and data in with none out is a
// request.) The app's graceful shutdown still waits for such a request;
// only the shutdown's own pace then decides when the app exits. A request
// whose answer the app starts to send before it is done (the headers
// first, say) looks answered from then on, for the same reason.
//
// The kernel does not produce the tables atomically: while connections come
// and go, a read can miss a connection. (It can also print one twice; reads
// drop such duplicates.) A connection that opens and closes between two
// polls is not seen at all. WaitIdle therefore asks for a quiet window with
// no request, not for a single idle poll.
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
	"sync/atomic"
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
// holding net/tcp and net/tcp6. As with WithPID, every established
// connection then counts as busy.
func WithProcRoot(dir string) Option {
	return func(o *options) { o.procRoot = dir }
}

// WithPID reads the tables of pid's network namespace
// (<proc root>/<pid>/net/tcp) instead of the caller's own (<proc
// root>/net/tcp), for a caller outside the app's network namespace that can
// see its process: the supervisor, or a node agent with the host's PID
// namespace. Once the process has exited, reads fail with fs.ErrNotExist.
// The tables give no per-connection times (sock_diag answers only for the
// caller's own namespace), so every established connection counts as busy.
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

// Counter watches the ESTABLISHED inbound TCP connections on one local
// port. It holds no open files; each call reads the kernel's tables afresh.
// It is safe for concurrent use. The zero value is not usable; use New.
type Counter struct {
	port   uint16
	tables [2]table
	addrs  []netip.Addr // unmapped, without zones
	clock  clock.Clock
	// diag: sock_diag may be tried (the caller's own namespace, no fixture).
	// noDiag: it was tried and cannot be used here, so the tables are read.
	diag   bool
	noDiag atomic.Bool
	// filter is the sock_diag bytecode that has the kernel send only the
	// port's sockets (portFilter), rather than every socket in the
	// namespace for conncount to sift. noFilter: the kernel refused it, so
	// dumps are whole and the port's rows are kept here, as before the
	// filter.
	filter   []byte
	noFilter atomic.Bool
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
		clock:  o.clock,
		diag:   o.procRoot == DefaultProcRoot && !o.pidSet,
		filter: portFilter(uint16(port)),
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
	return len(c.mine(s)), nil
}

// Activity is one look at a port's connections.
type Activity struct {
	Established int // ESTABLISHED connections on the port
	Busy        int // those of them that carry a request (see the package doc)
	// Timed says whether the kernel gave each connection's send and receive
	// times (sock_diag). Without them every established connection counts
	// as busy.
	Timed bool
}

// Activity reads the port's connections once and says how many are
// established and how many of those are busy. Errors are as for Count.
func (c *Counter) Activity(ctx context.Context) (Activity, error) {
	s, err := c.read(ctx)
	if err != nil {
		return Activity{}, err
	}
	a := Activity{Timed: s.timed}
	for _, r := range c.mine(s) {
		a.Established++
		if r.busy() {
			a.Busy++
		}
	}
	return a, nil
}

// mine returns the established connections of s that are the app's: all of
// them, or with WithAddrs those whose local address is covered.
func (c *Counter) mine(s snapshot) []row {
	if len(c.addrs) == 0 {
		return s.established
	}
	var out []row
	for _, r := range s.established {
		if c.covered(r.local.Addr().Unmap(), s.listeners) {
			out = append(out, r)
		}
	}
	return out
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

// NotIdleError is WaitIdle's error when ctx ends before the port has
// drained. It wraps ctx.Err().
type NotIdleError struct {
	Port  int
	Conns int // busy connections at the last poll; -1 if no poll finished
	Err   error
}

func (e *NotIdleError) Error() string {
	if e.Conns < 0 {
		return fmt.Sprintf("conncount: port %d: gave up before the first count: %v", e.Port, e.Err)
	}
	return fmt.Sprintf("conncount: %d connections on port %d still busy: %v", e.Conns, e.Port, e.Err)
}

func (e *NotIdleError) Unwrap() error { return e.Err }

// WaitIdle blocks until the port has drained: no connection is busy, and no
// request has arrived for the quiet window. Like the drain library's, the
// window counts from the call, or from the last request that arrived after
// it (from its end while it is seen busy, from its arrival once it is seen
// answered); requests already in flight at the call only have to end.
// Without the kernel's times (Activity.Timed false) every established
// connection is busy and may be a new request, so the count must stay 0 for
// quiet. WaitIdle polls at once and then every interval, or sooner when the
// quiet window ends before the next one; with quiet 0 the first idle poll
// returns. When ctx ends first WaitIdle returns a *NotIdleError that wraps
// ctx.Err(); a failed read is returned as Count returns it. It is safe to
// call concurrently.
func (c *Counter) WaitIdle(ctx context.Context, quiet, every time.Duration) error {
	return c.waitIdle(ctx, quiet, every, watchHooks{})
}

// watchHooks tell a Drainer what waitIdle sees; nil ones are skipped.
type watchHooks struct {
	// saw is told of each request seen arriving after the call, by
	// remote address and arrival time.
	saw func(remote netip.Addr, at time.Time)
	// polled is told how many connections are busy at each poll.
	polled func(busy int)
}

// waitIdle is WaitIdle, telling h what it sees.
func (c *Counter) waitIdle(ctx context.Context, quiet, every time.Duration, h watchHooks) error {
	if every <= 0 {
		return fmt.Errorf("conncount: poll interval %v is not positive", every)
	}
	if quiet < 0 {
		return fmt.Errorf("conncount: quiet window %v is negative", quiet)
	}
	busy := -1
	w := newDrainWatch(c.clock.Now())
	w.saw = h.saw
	for {
		s, err := c.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return &NotIdleError{Port: int(c.port), Conns: busy, Err: ctx.Err()}
			}
			return err
		}
		now := c.clock.Now()
		busy = w.observe(now, c.mine(s))
		if h.polled != nil {
			h.polled(busy)
		}
		wait := every
		if busy == 0 {
			left := w.last.Add(quiet).Sub(now)
			if left <= 0 {
				return nil
			}
			wait = min(wait, left)
		}
		t := c.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return &NotIdleError{Port: int(c.port), Conns: busy, Err: ctx.Err()}
		case <-t.C():
		}
	}
}

// drainWatch is WaitIdle's memory between polls.
type drainWatch struct {
	start time.Time // the call
	last  time.Time // the quiet window counts from here
	// Connections that carried a request begun after the call at the last
	// poll: one gone by the next ended between the two polls.
	lateBusy map[[2]netip.AddrPort]bool
	// saw, if not nil, is told of each request seen arriving after the
	// call: at most one per connection and poll, when the connection's
	// last arrival moved on by more than arrivalSlack.
	saw     func(remote netip.Addr, at time.Time)
	arrived map[[2]netip.AddrPort]time.Time
}

// arrivalSlack absorbs the kernel's rounding of a connection's last
// arrival (milliseconds, in jiffies), so one request seen over several
// polls is told once.
const arrivalSlack = 5 * time.Millisecond

func newDrainWatch(start time.Time) *drainWatch {
	return &drainWatch{start: start, last: start}
}

// observe takes one poll's connections, read at now, moves w.last past the
// requests that arrived after the call, and returns how many are busy.
func (w *drainWatch) observe(now time.Time, conns []row) (busy int) {
	stillBusy := map[[2]netip.AddrPort]bool{}
	for _, r := range conns {
		key := [2]netip.AddrPort{r.local, r.remote}
		late := !r.activity || !now.Add(-r.lastRecv).Before(w.start)
		if late && r.activity && w.saw != nil {
			w.tell(key, now.Add(-r.lastRecv))
		}
		switch {
		case r.busy():
			busy++
			if late {
				w.last = now
				stillBusy[key] = true
			}
		case late:
			// A request arrived after the call and is answered. The window
			// counts from its arrival: the last send may be a stream's,
			// long after the answer.
			if at := now.Add(-r.lastRecv); at.After(w.last) {
				w.last = at
			}
		}
		delete(w.lateBusy, key)
	}
	if len(w.lateBusy) > 0 {
		// Closed since the last poll, at a moment the kernel no longer
		// tells: count the window from now.
		w.last = now
	}
	w.lateBusy = stillBusy
	return busy
}

// tell reports a request on the connection key that arrived at, unless it
// is the one already told.
func (w *drainWatch) tell(key [2]netip.AddrPort, at time.Time) {
	if prev, ok := w.arrived[key]; ok && at.Sub(prev) <= arrivalSlack {
		return
	}
	if w.arrived == nil {
		w.arrived = map[[2]netip.AddrPort]time.Time{}
	}
	w.arrived[key] = at
	w.saw(key[1].Addr(), at)
}

// readSize is the size of each read(2) of a table, about 400 rows.
const readSize = 64 << 10

// errNoDiag means the kernel's sock_diag cannot be used here (another OS, a
// kernel without it, a sandbox that forbids netlink sockets).
var errNoDiag = errors.New("sock_diag unavailable")

// snapshot is what one read of the kernel's tables found on the port: the
// ESTABLISHED sockets, and the local addresses of LISTEN ones (unmapped).
type snapshot struct {
	established []row
	listeners   []netip.Addr
	timed       bool // read through sock_diag: the rows have their activity
}

func (c *Counter) read(ctx context.Context) (snapshot, error) {
	var s snapshot
	// A table is written in chunks (one per read(2) of /proc, one per
	// netlink message batch of sock_diag), and each chunk resumes by
	// position in a hash bucket: a socket added to that bucket in between
	// makes a row appear twice. A connection is unique by its address pair,
	// so the duplicates are dropped here, and reading in big chunks leaves
	// fewer places to resume at.
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
			s.established = append(s.established, r)
		case stateListen:
			s.listeners = append(s.listeners, r.local.Addr().Unmap())
		}
	}
	if c.diag && !c.noDiag.Load() {
		filter := c.filter
		if c.noFilter.Load() {
			filter = nil
		}
		filtered, err := readDiag(ctx, c.port, filter, collect)
		switch {
		case err == nil:
			if filter != nil && !filtered {
				// The kernel refused the bytecode (EINVAL: one, or a
				// sandbox's emulation of sock_diag, without port
				// comparisons), and readDiag dumped every socket
				// instead. So does every read from now on: the kernel
				// will not learn it, and each refusal costs a round
				// trip per family.
				c.noFilter.Store(true)
			}
			s.timed = true
			return s, nil
		case ctx.Err() != nil:
			return snapshot{}, fmt.Errorf("conncount: %w", ctx.Err())
		case errors.Is(err, errNoDiag):
			c.noDiag.Store(true) // for good: read the tables from now on
		}
		// This read falls back to the tables, whose connections all count
		// as busy: a failed dump (a timeout, say) costs time, never a
		// request.
		s = snapshot{}
		clear(seen)
	}
	if err := c.readTables(ctx, collect); err != nil {
		return snapshot{}, err
	}
	return s, nil
}

// readTables reads /proc/net/tcp and tcp6 (or their WithProcRoot and
// WithPID counterparts) and calls f with each of their rows. Errors are as
// for Count.
func (c *Counter) readTables(ctx context.Context, f func(row)) error {
	missing := 0
	for _, t := range c.tables {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("conncount: %w", err)
		}
		file, err := os.Open(t.path)
		if errors.Is(err, fs.ErrNotExist) {
			missing++
			continue
		}
		if err != nil {
			return fmt.Errorf("conncount: %w", err)
		}
		err = parseTable(ctx, bufio.NewReaderSize(file, readSize), t.path, t.addrLen, f)
		file.Close() // read-only: a close error loses nothing
		if err != nil {
			var pe *ParseError
			if errors.As(err, &pe) {
				return err
			}
			return fmt.Errorf("conncount: %s: %w", t.path, err)
		}
	}
	if missing == len(c.tables) {
		return fmt.Errorf("conncount: neither %s nor %s exists: %w",
			c.tables[0].path, c.tables[1].path, fs.ErrNotExist)
	}
	return nil
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

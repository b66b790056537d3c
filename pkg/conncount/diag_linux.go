//go:build linux

package conncount

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// noCompatDump records that this kernel refused the compat request
// (TCPDIAG_GETSOCK), so dumps go per family from then on.
var noCompatDump atomic.Bool

// The kernel's sock_diag interface (linux/inet_diag.h, linux/sock_diag.h):
// the same socket table as /proc/net/tcp, with each socket's tcp_info, which
// says when data last arrived on a connection and when the app last sent
// some. `ss -ti` reads it the same way.
const (
	sockDiagByFamily = 20      // SOCK_DIAG_BY_FAMILY
	tcpDiagGetSock   = 18      // TCPDIAG_GETSOCK: the compat request, both families in one walk
	diagReqV1Len     = 60      // sizeof(struct inet_diag_req), the compat request's body
	inetDiagInfo     = 2       // INET_DIAG_INFO: the attribute carrying tcp_info
	diagReqLen       = 56      // sizeof(struct inet_diag_req_v2)
	diagMsgLen       = 72      // sizeof(struct inet_diag_msg)
	diagRecvBuf      = 1 << 16 // bytes per recvfrom, more than the kernel puts in one (32 KiB)
	diagStates       = 1<<stateEstablished | 1<<stateListen

	// The request's bytecode filter (linux/inet_diag.h): an attribute of
	// type INET_DIAG_REQ_BYTECODE holding struct inet_diag_bc_op {code,
	// yes uint8; no uint16} ops. A port comparison takes two ops, the
	// second's no holding the port.
	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE
	bcSGE               = 2 // INET_DIAG_BC_S_GE: local port >= the port
	bcSLE               = 3 // INET_DIAG_BC_S_LE: local port <= the port
	bcOpLen             = 4 // sizeof(struct inet_diag_bc_op)

	// Offsets in struct tcp_info (linux/tcp.h) of the fields read here:
	// the last-data times since Linux 2.6, the data segment counts since
	// 4.6 (read when the kernel's struct is long enough).
	tcpiLastDataSent = 44
	tcpiLastDataRecv = 52
	tcpiMinLen       = tcpiLastDataRecv + 4
	tcpiDataSegsIn   = 152
	tcpiDataSegsOut  = 156
	tcpiSegsLen      = tcpiDataSegsOut + 4
)

// readDiag reads the caller's network namespace's TCP sockets on port
// through sock_diag and calls f for each ESTABLISHED or LISTEN one, with
// its activity. Port 0 reads every port's.
//
// With a filter (portFilter(port)), the kernel runs that bytecode on each
// socket and sends only those it accepts, and f sees each of them: the
// caller must keep checking the port. Without one, the kernel sends every
// socket in the namespace (tens of thousands on a busy host, each with its
// tcp_info) and readDiag keeps the port's. filtered reports whether the
// kernel ran the filter: a kernel that refuses it (EINVAL) gets the same
// requests without, and the read still succeeds.
//
// Each call opens its own netlink socket, so that a Counter holds no file
// between polls.
func readDiag(ctx context.Context, port uint16, filter []byte, f func(row)) (filtered bool, err error) {
	return readDiagVia(ctx, port, filter, !noCompatDump.Load(), f)
}

// readDiagVia is readDiag, trying the compat request first if compat.
func readDiagVia(ctx context.Context, port uint16, filter []byte, compat bool, f func(row)) (filtered bool, err error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		if unsupported(err) {
			return false, fmt.Errorf("%w: %v", errNoDiag, os.NewSyscallError("socket", err))
		}
		return false, os.NewSyscallError("socket", err) // EMFILE, say: worth another try
	}
	defer syscall.Close(fd)
	// A dump that stalls (it should not) must not outlive the caller's
	// deadline by much.
	tv := syscall.NsecToTimeval(int64(time.Second))
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d < time.Second {
			tv = syscall.NsecToTimeval(max(int64(d), int64(time.Millisecond)))
		}
	}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return false, os.NewSyscallError("setsockopt", err)
	}
	buf := make([]byte, diagRecvBuf)
	if compat {
		// One walk of the kernel's socket hash for both families.
		err := dumpFamily(fd, buf, syscall.AF_UNSPEC, port, filter, f)
		if filter != nil && errors.Is(err, syscall.EINVAL) {
			// The bytecode refused, or the compat request: the request
			// without the filter tells which, as below.
			if err = dumpFamily(fd, buf, syscall.AF_UNSPEC, port, nil, f); err == nil {
				return false, nil
			}
		}
		switch {
		case err == nil:
			return filter != nil, nil
		case !noFamily(err):
			return false, err
		}
		// Refused before any socket was sent (the kernel checks a request
		// before it answers): a kernel or sandbox without the compat
		// request. The requests per family go from now on.
		noCompatDump.Store(true)
	}
	for _, family := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		err := dumpFamily(fd, buf, family, port, filter, f)
		if filter != nil && errors.Is(err, syscall.EINVAL) {
			// EINVAL answers both bytecode the kernel does not know and,
			// on some kernels, a family it does not serve: the request
			// without the filter tells which. The kernel checks the
			// bytecode before it sends any socket, so f has seen none of
			// this family yet.
			err = dumpFamily(fd, buf, family, port, nil, f)
			if err == nil {
				filter = nil // refused: the next family goes unfiltered too
			}
		}
		if noFamily(err) {
			continue // no module for this family (IPv6 off): nothing to count
		}
		if err != nil {
			return false, err
		}
	}
	return filter != nil, nil
}

// noFamily reports whether err is the kernel's answer to a dump of an
// address family it does not serve.
func noFamily(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EINVAL)
}

// portFilter returns the bytecode that keeps the sockets whose local port
// is port: local port >= port, then local port <= port, a failed
// comparison jumping past the end, which rejects the socket. It is what
// `ss 'sport = :port'` sends on iproute2 before INET_DIAG_BC_S_EQ (Linux
// 4.16); S_GE and S_LE are as old as the bytecode itself, so every kernel
// with sock_diag takes them. The local port is the app's side of an
// inbound connection; the client's side of a loopback one has it as its
// remote port, and is left out.
func portFilter(port uint16) []byte {
	bc := make([]byte, 0, 4*bcOpLen)
	// yes: on to the next comparison; no: one op past the end.
	bc = appendBCOp(bc, bcSGE, 2*bcOpLen, 5*bcOpLen)
	bc = appendBCOp(bc, 0, 0, port)
	// yes: onto the end, accepting; no: one op past it.
	bc = appendBCOp(bc, bcSLE, 2*bcOpLen, 3*bcOpLen)
	return appendBCOp(bc, 0, 0, port)
}

// appendBCOp appends one struct inet_diag_bc_op: on yes the kernel moves
// yes bytes on, on no it moves no bytes on, and it accepts the socket when
// it lands exactly on the end.
func appendBCOp(b []byte, code, yes uint8, no uint16) []byte {
	b = append(b, code, yes)
	return binary.NativeEndian.AppendUint16(b, no)
}

// unsupported reports whether err means sock_diag cannot work here at all.
func unsupported(err error) bool {
	for _, e := range []syscall.Errno{syscall.EAFNOSUPPORT, syscall.EPROTONOSUPPORT, syscall.EPERM, syscall.EACCES, syscall.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dumpFamily asks for one address family's sockets (AF_UNSPEC: both, in
// one request), through filter if not nil, and reads the answer to its end
// into buf. An error from the kernel wraps its errno.
func dumpFamily(fd int, buf []byte, family uint8, port uint16, filter []byte, f func(row)) error {
	req, typ := diagRequest(family, filter)
	want := port
	if filter != nil {
		want = 0 // the kernel kept the port's; pass on what it sent
	}
	sa := &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}
	if err := syscall.Sendto(fd, req, 0, sa); err != nil {
		if unsupported(err) {
			return fmt.Errorf("%w: %v", errNoDiag, os.NewSyscallError("sendto", err))
		}
		return os.NewSyscallError("sendto", err)
	}
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return os.NewSyscallError("recvfrom", err)
		}
		if done, err := diagAnswer(buf[:n], typ, want, f); done || err != nil {
			return err
		}
	}
}

// diagRequest returns the netlink request for one address family's sockets
// (AF_UNSPEC: both), through filter if not nil, and the type of the
// messages that answer it.
func diagRequest(family uint8, filter []byte) (req []byte, typ uint16) {
	// struct inet_diag_req_v2 {family, protocol, ext, pad uint8; states
	// uint32; id}, or for AF_UNSPEC the compat struct inet_diag_req
	// {family, src_len, dst_len, ext uint8; id; states, dbug uint32},
	// whose answer walks the kernel's socket hash once for both families
	// rather than once per family: the walk, not the sockets sent, is
	// what a poll on a busy host costs (BENCHMARKS.md).
	typ, bodyLen, extAt, statesAt := uint16(sockDiagByFamily), diagReqLen, 2, 4
	if family == syscall.AF_UNSPEC {
		typ, bodyLen, extAt, statesAt = tcpDiagGetSock, diagReqV1Len, 3, 52
	}
	n := syscall.NLMSG_HDRLEN + bodyLen
	if filter != nil {
		n += syscall.SizeofRtAttr + len(filter)
	}
	req = make([]byte, n)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], typ)
	ne.PutUint16(req[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence number
	r := req[syscall.NLMSG_HDRLEN:]
	if family != syscall.AF_UNSPEC {
		r[0] = family
		r[1] = syscall.IPPROTO_TCP
	}
	r[extAt] = 1 << (inetDiagInfo - 1) // idiag_ext: ask for tcp_info
	ne.PutUint32(r[statesAt:], diagStates)
	if filter != nil {
		// struct nlattr, then the bytecode (whole ops: no padding).
		a := r[bodyLen:]
		ne.PutUint16(a[0:], uint16(syscall.SizeofRtAttr+len(filter)))
		ne.PutUint16(a[2:], inetDiagReqBytecode)
		copy(a[syscall.SizeofRtAttr:], filter)
	}
	return req, typ
}

// diagAnswer reads one datagram of the kernel's answer: it calls f for
// each socket on port want (any for 0) in the messages of type typ, and
// reports whether the answer is over (NLMSG_DONE, or NLMSG_ERROR, whose
// errno it returns wrapped). It reads nothing past b.
func diagAnswer(b []byte, typ, want uint16, f func(row)) (done bool, err error) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return true, fmt.Errorf("sock_diag: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case syscall.NLMSG_DONE:
			return true, nil
		case syscall.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if errno := syscall.Errno(-int32(binary.NativeEndian.Uint32(m.Data))); errno != 0 {
					return true, fmt.Errorf("sock_diag: %w", errno)
				}
			}
			return true, nil
		case typ:
			if rw, ok := parseDiagMsg(m.Data, want); ok {
				f(rw)
			}
		}
	}
	return false, nil
}

// parseDiagMsg decodes one struct inet_diag_msg and its attributes into a
// row, if the socket is on port (any port for 0).
func parseDiagMsg(b []byte, port uint16) (row, bool) {
	if len(b) < diagMsgLen {
		return row{}, false
	}
	family, state := b[0], b[1]
	id := b[4:52] // struct inet_diag_sockid
	sport := binary.BigEndian.Uint16(id[0:])
	if port != 0 && sport != port {
		return row{}, false
	}
	dport := binary.BigEndian.Uint16(id[2:])
	var local, remote netip.Addr
	if family == syscall.AF_INET {
		local = netip.AddrFrom4([4]byte(id[4:8]))
		remote = netip.AddrFrom4([4]byte(id[20:24]))
	} else {
		local = netip.AddrFrom16([16]byte(id[4:20]))
		remote = netip.AddrFrom16([16]byte(id[20:36]))
	}
	ne := binary.NativeEndian
	rw := row{
		local:  netip.AddrPortFrom(local, sport),
		remote: netip.AddrPortFrom(remote, dport),
		state:  state,
		rqueue: ne.Uint32(b[56:]),
	}
	// Attributes: struct rtattr {len, type uint16} then the payload,
	// each padded to 4 bytes.
	for a := b[diagMsgLen:]; len(a) >= 4; {
		alen, atype := int(ne.Uint16(a[0:])), ne.Uint16(a[2:])
		if alen < 4 || alen > len(a) {
			break
		}
		if atype == inetDiagInfo && alen-4 >= tcpiMinLen {
			info := a[4:alen]
			rw.activity = true
			rw.lastSent = time.Duration(ne.Uint32(info[tcpiLastDataSent:])) * time.Millisecond
			rw.lastRecv = time.Duration(ne.Uint32(info[tcpiLastDataRecv:])) * time.Millisecond
			if len(info) >= tcpiSegsLen {
				rw.segs = true
				rw.segsIn = ne.Uint32(info[tcpiDataSegsIn:])
				rw.segsOut = ne.Uint32(info[tcpiDataSegsOut:])
			}
		}
		a = a[min((alen+3)&^3, len(a)):]
	}
	return rw, true
}

//go:build linux

package conncount

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// The kernel's sock_diag interface (linux/inet_diag.h, linux/sock_diag.h):
// the same socket table as /proc/net/tcp, with each socket's tcp_info, which
// says when data last arrived on a connection and when the app last sent
// some. `ss -ti` reads it the same way.
const (
	sockDiagByFamily = 20      // SOCK_DIAG_BY_FAMILY
	inetDiagInfo     = 2       // INET_DIAG_INFO: the attribute carrying tcp_info
	diagReqLen       = 56      // sizeof(struct inet_diag_req_v2)
	diagMsgLen       = 72      // sizeof(struct inet_diag_msg)
	diagRecvBuf      = 1 << 16 // bytes per recvfrom, more than the kernel puts in one (32 KiB)
	diagStates       = 1<<stateEstablished | 1<<stateListen

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
// its activity.
func readDiag(ctx context.Context, port uint16, f func(row)) error {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		if unsupported(err) {
			return fmt.Errorf("%w: %v", errNoDiag, os.NewSyscallError("socket", err))
		}
		return os.NewSyscallError("socket", err) // EMFILE, say: worth another try
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
		return os.NewSyscallError("setsockopt", err)
	}
	for _, family := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := dumpFamily(fd, family, port, f); err != nil {
			return err
		}
	}
	return nil
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

// dumpFamily asks for one address family's sockets and reads the answer to
// its end.
func dumpFamily(fd int, family uint8, port uint16, f func(row)) error {
	req := make([]byte, syscall.NLMSG_HDRLEN+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence number
	r := req[syscall.NLMSG_HDRLEN:]
	r[0] = family
	r[1] = syscall.IPPROTO_TCP
	r[2] = 1 << (inetDiagInfo - 1) // idiag_ext: ask for tcp_info
	ne.PutUint32(r[4:], diagStates)
	// The dump ignores the socket id's ports; filtering by port is done
	// here, as for /proc/net/tcp.
	sa := &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}
	if err := syscall.Sendto(fd, req, 0, sa); err != nil {
		if unsupported(err) {
			return fmt.Errorf("%w: %v", errNoDiag, os.NewSyscallError("sendto", err))
		}
		return os.NewSyscallError("sendto", err)
	}
	buf := make([]byte, diagRecvBuf)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return os.NewSyscallError("recvfrom", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case syscall.NLMSG_DONE:
				return nil
			case syscall.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := syscall.Errno(-int32(ne.Uint32(m.Data))); errno != 0 {
						if errors.Is(errno, syscall.ENOENT) || errors.Is(errno, syscall.EOPNOTSUPP) || errors.Is(errno, syscall.EINVAL) {
							// No module for this family (IPv6 off): nothing to count.
							return nil
						}
						return fmt.Errorf("sock_diag: %w", errno)
					}
				}
				return nil
			case sockDiagByFamily:
				if rw, ok := parseDiagMsg(m.Data, port); ok {
					f(rw)
				}
			}
		}
	}
}

// parseDiagMsg decodes one struct inet_diag_msg and its attributes into a
// row, if the socket is on port.
func parseDiagMsg(b []byte, port uint16) (row, bool) {
	if len(b) < diagMsgLen {
		return row{}, false
	}
	family, state := b[0], b[1]
	id := b[4:52] // struct inet_diag_sockid
	sport := binary.BigEndian.Uint16(id[0:])
	if sport != port {
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

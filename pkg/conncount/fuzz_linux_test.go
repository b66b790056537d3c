//go:build linux

package conncount

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FuzzDiagAnswer feeds datagrams of a sock_diag answer to its reader: no
// input panics; an error is one line; each row it passes on is on the port
// asked for, of the message's address family, with tcp_info's times whole
// milliseconds and segment counts only with activity; and the rows,
// written back as inet_diag_msg messages, read back the same. The seeds
// are the kernel's own answers about a loopback connection, when this
// host's sock_diag is usable, and hand-made edge cases.
func FuzzDiagAnswer(f *testing.F) {
	for _, b := range realDiagAnswers(f) {
		f.Add(b, uint16(0), false)
	}
	v4 := row{local: netip.MustParseAddrPort("127.0.0.1:8080"), remote: netip.MustParseAddrPort("127.0.0.1:40000"), state: stateEstablished,
		activity: true, rqueue: 3, lastSent: 5 * time.Millisecond, lastRecv: 2 * time.Millisecond, segs: true, segsIn: 7, segsOut: 6}
	v6 := row{local: netip.MustParseAddrPort("[::1]:8080"), remote: netip.MustParseAddrPort("[::]:0"), state: stateListen}
	msgs := append(diagMsg(sockDiagByFamily, v4), diagMsg(sockDiagByFamily, v6)...)
	f.Add(msgs, uint16(8080), false)
	f.Add(append(msgs, nlMsg(syscall.NLMSG_DONE, make([]byte, 4))...), uint16(0), false)
	einval := -int32(syscall.EINVAL)
	f.Add(nlMsg(syscall.NLMSG_ERROR, binary.NativeEndian.AppendUint32(nil, uint32(einval))), uint16(0), true)
	f.Add(msgs[:len(msgs)-9], uint16(0), false) // cut inside an attribute
	f.Fuzz(func(t *testing.T, b []byte, want uint16, compat bool) {
		typ := uint16(sockDiagByFamily)
		if compat {
			typ = tcpDiagGetSock
		}
		var rows []row
		_, err := diagAnswer(b, typ, want, func(r row) { rows = append(rows, r) })
		if err != nil && (!strings.HasPrefix(err.Error(), "sock_diag: ") || strings.ContainsAny(err.Error(), "\r\n")) {
			t.Fatalf("diagAnswer(%x): want one line starting \"sock_diag: \", got %q", b, err)
		}
		var again []byte
		for _, r := range rows {
			switch {
			case want != 0 && r.local.Port() != want:
				t.Fatalf("diagAnswer(%x, port %d): passed on a row on port %d", b, want, r.local.Port())
			case !r.local.IsValid() || !r.remote.IsValid() || r.local.Addr().Is4() != r.remote.Addr().Is4():
				t.Fatalf("diagAnswer(%x): passed on addresses of two families: %v", b, r)
			case r.lastSent%time.Millisecond != 0 || r.lastRecv%time.Millisecond != 0 || r.lastSent < 0 || r.lastRecv < 0:
				t.Fatalf("diagAnswer(%x): times not in whole milliseconds: %+v", b, r)
			case !r.activity && (r.segs || r.lastSent != 0 || r.lastRecv != 0), !r.segs && (r.segsIn != 0 || r.segsOut != 0):
				t.Fatalf("diagAnswer(%x): activity fields without tcp_info: %+v", b, r)
			}
			again = append(again, diagMsg(typ, r)...)
		}
		again = append(again, nlMsg(syscall.NLMSG_DONE, make([]byte, 4))...)
		var rows2 []row
		done, err := diagAnswer(again, typ, want, func(r row) { rows2 = append(rows2, r) })
		if err != nil || !done || !slices.Equal(rows, rows2) {
			t.Fatalf("diagAnswer(%x): the rows written back read as %v (done %v, %v); want %v", b, rows2, done, err, rows)
		}
	})
}

// nlMsg is one netlink message: struct nlmsghdr and data, padded to 4 bytes.
func nlMsg(typ uint16, data []byte) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint32(nil, uint32(syscall.NLMSG_HDRLEN+len(data)))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, syscall.NLM_F_MULTI)
	b = ne.AppendUint32(b, 1) // sequence number
	b = ne.AppendUint32(b, 0) // port id
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// diagMsg is r as the kernel sends it: struct inet_diag_msg, and tcp_info
// in an INET_DIAG_INFO attribute when r has activity.
func diagMsg(typ uint16, r row) []byte {
	m := make([]byte, diagMsgLen)
	m[0], m[1] = syscall.AF_INET6, r.state
	if r.local.Addr().Is4() {
		m[0] = syscall.AF_INET
	}
	id := m[4:52]
	binary.BigEndian.PutUint16(id[0:], r.local.Port())
	binary.BigEndian.PutUint16(id[2:], r.remote.Port())
	copy(id[4:20], r.local.Addr().AsSlice())
	copy(id[20:36], r.remote.Addr().AsSlice())
	ne := binary.NativeEndian
	ne.PutUint32(m[56:], r.rqueue)
	if r.activity {
		info := make([]byte, tcpiMinLen)
		if r.segs {
			info = make([]byte, tcpiSegsLen)
			ne.PutUint32(info[tcpiDataSegsIn:], r.segsIn)
			ne.PutUint32(info[tcpiDataSegsOut:], r.segsOut)
		}
		ne.PutUint32(info[tcpiLastDataSent:], uint32(r.lastSent/time.Millisecond))
		ne.PutUint32(info[tcpiLastDataRecv:], uint32(r.lastRecv/time.Millisecond))
		m = ne.AppendUint16(m, uint16(4+len(info)))
		m = ne.AppendUint16(m, inetDiagInfo)
		m = append(m, info...)
	}
	return nlMsg(typ, m)
}

// realDiagAnswers asks the kernel about a loopback connection that has
// carried a request, through the port filter, in both request forms, and
// returns the datagrams of its answers; none where sock_diag is not usable.
func realDiagAnswers(f *testing.F) [][]byte {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		f.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		f.Fatal(err)
	}
	defer server.Close()
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		f.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		return nil
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval(int64(time.Second))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return nil
	}
	var out [][]byte
	for _, family := range []uint8{syscall.AF_UNSPEC, syscall.AF_INET} {
		req, typ := diagRequest(family, portFilter(port))
		if syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}) != nil {
			continue
		}
		buf := make([]byte, diagRecvBuf)
		for range 100 {
			n, _, err := syscall.Recvfrom(fd, buf, 0)
			if err != nil {
				break
			}
			out = append(out, slices.Clone(buf[:n]))
			if done, _ := diagAnswer(buf[:n], typ, 0, func(row) {}); done {
				break
			}
		}
	}
	return out
}

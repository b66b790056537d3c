package conncount

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitLong bounds every wait for something that must happen.
const waitLong = 5 * time.Second

// t0 is where every fake clock starts.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	header4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
	header6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
)

// sock is one socket for a fixture table.
type sock struct {
	local, remote string // "ip:port"; IPv6 (including v4-mapped) goes to tcp6
	state         uint8
}

// tables renders socks as the kernel would print net/tcp and net/tcp6.
func tables(t testing.TB, socks ...sock) (tcp, tcp6 string) {
	t.Helper()
	v4 := []string{header4}
	v6 := []string{header6}
	for _, s := range socks {
		l, r := netip.MustParseAddrPort(s.local), netip.MustParseAddrPort(s.remote)
		is6 := l.Addr().Is6()
		if r.Addr().Is6() != is6 {
			t.Fatalf("fixture %v: local and remote in different families", s)
		}
		tail := " 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0"
		if is6 {
			v6 = append(v6, fmt.Sprintf("%4d: %s %s %02X%s", len(v6)-1, hexAddrPort(l), hexAddrPort(r), s.state, tail))
		} else {
			v4 = append(v4, fmt.Sprintf("%4d: %s %s %02X%s", len(v4)-1, hexAddrPort(l), hexAddrPort(r), s.state, tail))
		}
	}
	return strings.Join(v4, "\n") + "\n", strings.Join(v6, "\n") + "\n"
}

// hexAddrPort is the inverse of parseAddrPort.
func hexAddrPort(ap netip.AddrPort) string {
	var b strings.Builder
	raw := ap.Addr().AsSlice()
	for i := 0; i < len(raw); i += 4 {
		fmt.Fprintf(&b, "%08X", hostOrder.Uint32(raw[i:]))
	}
	fmt.Fprintf(&b, ":%04X", ap.Port())
	return b.String()
}

// writeTables writes net/tcp and net/tcp6 under dir (made if need be).
func writeTables(t testing.TB, dir, tcp, tcp6 string) {
	t.Helper()
	net := filepath.Join(dir, "net")
	if err := os.MkdirAll(net, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"tcp": tcp, "tcp6": tcp6} {
		if err := os.WriteFile(filepath.Join(net, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fixtureDir writes socks as a proc root and returns it.
func fixtureDir(t testing.TB, socks ...sock) string {
	t.Helper()
	dir := t.TempDir()
	tcp, tcp6 := tables(t, socks...)
	writeTables(t, dir, tcp, tcp6)
	return dir
}

// skipUnlessLittleEndian skips tests whose literal tables were captured on
// a little-endian machine.
func skipUnlessLittleEndian(t *testing.T) {
	if hostOrder.Uint16([]byte{1, 0}) != 1 {
		t.Skip("literal fixtures are in little-endian host order")
	}
}

// recv waits, bounded, for ch to deliver and returns the value.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLong):
		t.Fatalf("want %s within %v, got nothing", what, waitLong)
		panic("unreachable")
	}
}

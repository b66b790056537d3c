package conncount

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

// Tables in the kernel's exact layout, trailing spaces included: the first
// two rows of each were copied from a Linux host, the rest were added by hand
// for ESTABLISHED, native IPv6 and wildcard-listener cases.
const (
	realTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1526 1 00000000ac571e91 100 0 0 10 0                      
   1: 0100007F:BF1A 0100007F:2134 06 00000000:00000000 03:000002FB 00000000     0        0 0 3 0000000006e58d19                                      
   2: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 02:000A7D8B 00000000  1000        0 98765 2 00000000deadbeef 20 4 30 10 -1                    
`
	realTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:DD16 0000000000000000FFFF00000100007F:4E20 06 00000000:00000000 03:00000800 00000000     0        0 0 3 00000000e3b42a66
   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1
   2: 000080FE00000000FF00FC00010000FE:0050 0000000000000000FFFF00000100000A:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 20 4 30 10 -1
   3: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0000000000000000 100 0 0 10 0
`
)

func TestParseTable(t *testing.T) {
	t.Parallel()
	skipUnlessLittleEndian(t)
	tests := []struct {
		name    string
		content string
		addrLen int
		want    []row
	}{
		{
			name:    "tcp",
			content: realTCP,
			addrLen: 8,
			want: []row{
				r("0.0.0.0:2024", "0.0.0.0:0", stateListen),
				r("127.0.0.1:48922", "127.0.0.1:8500", 0x06),
				r("127.0.0.1:8080", "127.0.0.1:53924", stateEstablished),
			},
		},
		{
			name:    "tcp6 with v4-mapped",
			content: realTCP6,
			addrLen: 32,
			want: []row{
				r("[::ffff:127.0.0.1]:56598", "[::ffff:127.0.0.1]:20000", 0x06),
				r("[::1]:8080", "[::1]:50000", stateEstablished),
				r("[fe80::fc:ff:fe00:1]:80", "[::ffff:10.0.0.1]:54321", stateEstablished),
				r("[::]:8080", "[::]:0", stateListen),
			},
		},
		{name: "header only", content: header4 + "\n", addrLen: 8},
		{name: "no final newline", content: header4 + "\n   0: 0100007F:0050 0100007F:9C40 01", addrLen: 8,
			want: []row{r("127.0.0.1:80", "127.0.0.1:40000", stateEstablished)}},
		{name: "lower-case hex, tabs", content: "sl\n0:\t0100007f:01bb\t0100007f:9c40\t0a\n", addrLen: 8,
			want: []row{r("127.0.0.1:443", "127.0.0.1:40000", stateListen)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []row
			err := parseTable(t.Context(), strings.NewReader(tt.content), "tcp", tt.addrLen, func(r row) { got = append(got, r) })
			if err != nil {
				t.Fatalf("want no error, got %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("want rows %v, got %v", tt.want, got)
			}
		})
	}
}

func r(local, remote string, state uint8) row {
	return row{local: netip.MustParseAddrPort(local), remote: netip.MustParseAddrPort(remote), state: state}
}

func TestParseTableErrors(t *testing.T) {
	t.Parallel()
	const ok4 = "   0: 0100007F:0050 0100007F:9C40 01 00000000:00000000\n"
	tests := []struct {
		name     string
		content  string
		addrLen  int
		wantLine int
		wantMsg  string
	}{
		{name: "empty", content: "", addrLen: 8, wantLine: 0, wantMsg: "empty table"},
		{name: "no header", content: ok4, addrLen: 8, wantLine: 1, wantMsg: "header"},
		{name: "too few fields", content: header4 + "\n" + ok4 + "   1: 0100007F:0050 0100007F:9C40\n", addrLen: 8, wantLine: 3, wantMsg: "at least 4 fields"},
		{name: "slot without colon", content: header4 + "\n0 0100007F:0050 0100007F:9C40 01\n", addrLen: 8, wantLine: 2, wantMsg: "slot number"},
		{name: "v6 address in tcp", content: realTCP6, addrLen: 8, wantLine: 2, wantMsg: "want 8 hex digits of address"},
		{name: "v4 address in tcp6", content: realTCP, addrLen: 32, wantLine: 2, wantMsg: "want 32 hex digits of address"},
		{name: "bad hex in address", content: header4 + "\n   0: 0100007G:0050 0100007F:9C40 01\n", addrLen: 8, wantLine: 2, wantMsg: "not a hex digit"},
		{name: "short port", content: header4 + "\n   0: 0100007F:50 0100007F:9C40 01\n", addrLen: 8, wantLine: 2, wantMsg: "port"},
		{name: "missing port", content: header4 + "\n   0: 0100007F 0100007F:9C40 01\n", addrLen: 8, wantLine: 2, wantMsg: "ADDR:PORT"},
		{name: "bad remote", content: header4 + "\n   0: 0100007F:0050 zz:9C40 01\n", addrLen: 8, wantLine: 2, wantMsg: "remote address"},
		{name: "bad state", content: header4 + "\n   0: 0100007F:0050 0100007F:9C40 1\n", addrLen: 8, wantLine: 2, wantMsg: "state"},
		{name: "line too long", content: header4 + "\n" + strings.Repeat("x", 70000) + "\n", addrLen: 8, wantLine: 2, wantMsg: "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := parseTable(t.Context(), strings.NewReader(tt.content), "/proc/net/tcpX", tt.addrLen, func(row) {})
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("want *ParseError, got %T %v", err, err)
			}
			if pe.File != "/proc/net/tcpX" || pe.Line != tt.wantLine {
				t.Fatalf("want error at /proc/net/tcpX:%d, got %s:%d (%v)", tt.wantLine, pe.File, pe.Line, err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "conncount: /proc/net/tcpX") || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("want message with prefix %q containing %q, got %q", "conncount: /proc/net/tcpX", tt.wantMsg, msg)
			}
		})
	}
}

func TestParseTableHonoursContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	content := header4 + "\n" + strings.Repeat("   0: 0100007F:0050 0100007F:9C40 01\n", 2*linesPerCtxCheck)
	rows := 0
	err := parseTable(ctx, strings.NewReader(content), "tcp", 8, func(row) { rows++ })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	if rows >= linesPerCtxCheck {
		t.Fatalf("want parsing to stop within %d lines of a cancelled ctx, got %d rows", linesPerCtxCheck, rows)
	}
}

// FuzzParseTable feeds TCP tables to the parser: no input panics; an error
// is a one-line *ParseError naming the file and a line of it; an accepted
// table gives one row per line after the header, of the table's address
// family, and its rows, written back in the kernel's layout, parse to the
// same rows. The seeds include this host's own tables when it has them.
func FuzzParseTable(f *testing.F) {
	f.Add([]byte(realTCP), false)
	f.Add([]byte(realTCP6), true)
	f.Add([]byte(header4+"\n   0: 0100007F:0050 0100007F:9C40 01\n"), false)
	f.Add([]byte("sl\n0: :: 01"), true)
	f.Add([]byte(""), false)
	f.Add([]byte(header4+"\r\n   0: 0100007F:0050 0100007F:9C40 01\r\n"), false)
	for _, name := range []string{"tcp", "tcp6"} {
		if b, err := os.ReadFile("/proc/self/net/" + name); err == nil {
			// The header and a few rows: a large seed slows every mutation.
			lines := strings.SplitAfterN(string(b), "\n", 17)
			f.Add([]byte(strings.Join(lines[:min(len(lines), 16)], "")), name == "tcp6")
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, v6 bool) {
		addrLen := 8
		if v6 {
			addrLen = 32
		}
		var rows []row
		err := parseTable(context.Background(), bytes.NewReader(data), "/proc/net/fuzz", addrLen, func(r row) { rows = append(rows, r) })
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.File != "/proc/net/fuzz" || pe.Line < 0 {
				t.Fatalf("parseTable(%q): want a *ParseError naming the file, got %T %v", data, err, err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "conncount: /proc/net/fuzz") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("parseTable(%q): want one line naming the file, got %q", data, msg)
			}
			return
		}
		lines := 0
		for sc := bufio.NewScanner(bytes.NewReader(data)); sc.Scan(); {
			lines++
		}
		if len(rows) != lines-1 {
			t.Fatalf("parseTable(%q): want a row for each of the %d lines after the header, got %d", data, lines-1, len(rows))
		}
		var socks []sock
		for _, r := range rows {
			if !r.local.IsValid() || !r.remote.IsValid() || r.local.Addr().Is6() != v6 || r.remote.Addr().Is6() != v6 {
				t.Fatalf("parseTable(%q): want valid addresses with Is6 %v, got %v", data, v6, r)
			}
			socks = append(socks, sock{local: r.local.String(), remote: r.remote.String(), state: r.state})
		}
		tcp, tcp6 := tables(t, socks...)
		again := tcp
		if v6 {
			again = tcp6
		}
		var rows2 []row
		if err := parseTable(context.Background(), strings.NewReader(again), "again", addrLen, func(r row) { rows2 = append(rows2, r) }); err != nil || !slices.Equal(rows, rows2) {
			t.Fatalf("parseTable(%q): the rows written back out as\n%s\nparse to %v, %v; want %v", data, again, rows2, err, rows)
		}
	})
}

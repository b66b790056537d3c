package conncount

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		port    int
		opts    []Option
		wantErr string // "" for success
	}{
		{name: "lowest port", port: 1},
		{name: "highest port", port: 65535},
		{name: "port 0", port: 0, wantErr: "conncount: port 0 out of range 1..65535"},
		{name: "negative port", port: -80, wantErr: "conncount: port -80 out of range 1..65535"},
		{name: "port too big", port: 65536, wantErr: "conncount: port 65536 out of range 1..65535"},
		{name: "pid 0", port: 80, opts: []Option{WithPID(0)}, wantErr: "conncount: pid 0 is not a process id"},
		{name: "invalid addr", port: 80, opts: []Option{WithAddrs(netip.Addr{})}, wantErr: "conncount: invalid address in WithAddrs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.port, tt.opts...)
			if tt.wantErr == "" {
				if err != nil || c.Port() != tt.port {
					t.Fatalf("want a Counter for port %d, got %v, %v", tt.port, c, err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("want error %q, got %v", tt.wantErr, err)
			}
		})
	}
}

func TestCountFixtures(t *testing.T) {
	t.Parallel()
	// Port 8080 in many states and families, plus noise on other ports.
	noise := []sock{
		{"10.0.0.5:41000", "10.0.0.9:8080", stateEstablished}, // outbound to 8080: remote port, not local
		{"10.0.0.5:9090", "10.0.0.9:50000", stateEstablished}, // another port
		{"10.0.0.5:8080", "10.0.0.9:50001", 0x06},             // TIME_WAIT
		{"10.0.0.5:8080", "10.0.0.9:50002", 0x08},             // CLOSE_WAIT
		{"10.0.0.5:8080", "10.0.0.9:50003", 0x04},             // FIN_WAIT1
		{"10.0.0.5:8080", "10.0.0.9:50004", 0x03},             // SYN_RECV
	}
	conns := []sock{
		{"10.0.0.5:8080", "10.0.0.9:40000", stateEstablished},
		{"127.0.0.1:8080", "127.0.0.1:40001", stateEstablished},
		{"[::ffff:10.0.0.5]:8080", "[::ffff:10.0.0.7]:40002", stateEstablished},
		{"[fd00::2]:8080", "[fd00::9]:40003", stateEstablished},
	}
	tests := []struct {
		name          string
		socks         []sock
		opts          []Option
		want          int
		wantListening bool
	}{
		{name: "empty", want: 0},
		{name: "only noise", socks: noise, want: 0},
		{
			name:  "every family, no addrs",
			socks: concat(noise, conns, []sock{{"10.0.0.5:8080", "0.0.0.0:0", stateListen}}),
			want:  4, wantListening: true,
		},
		{
			name:  "addrs pick v4 and its v4-mapped form",
			socks: concat(noise, conns, []sock{{"10.0.0.5:8080", "0.0.0.0:0", stateListen}}),
			opts:  []Option{WithAddrs(netip.MustParseAddr("10.0.0.5"))},
			want:  2, wantListening: true,
		},
		{
			name:  "addrs given as v4-mapped",
			socks: concat(noise, conns),
			opts:  []Option{WithAddrs(netip.MustParseAddr("::ffff:10.0.0.5"), netip.MustParseAddr("fd00::2"))},
			want:  3,
		},
		{
			name:  "addr matching no listener",
			socks: concat(conns, []sock{{"10.0.0.5:8080", "0.0.0.0:0", stateListen}}),
			opts:  []Option{WithAddrs(netip.MustParseAddr("192.0.2.1"))},
			want:  0, wantListening: false,
		},
		{
			name:  "v4 wildcard listener covers v4 and v4-mapped",
			socks: concat(conns, []sock{{"0.0.0.0:8080", "0.0.0.0:0", stateListen}}),
			opts:  []Option{WithAddrs(netip.MustParseAddr("192.0.2.1"))},
			want:  3, wantListening: true,
		},
		{
			name:  "v6 wildcard listener covers all",
			socks: concat(conns, []sock{{"[::]:8080", "[::]:0", stateListen}}),
			opts:  []Option{WithAddrs(netip.MustParseAddr("192.0.2.1"))},
			want:  4, wantListening: true,
		},
		{
			name:  "wildcard addr given",
			socks: concat(conns, []sock{{"127.0.0.1:8080", "0.0.0.0:0", stateListen}}),
			opts:  []Option{WithAddrs(netip.MustParseAddr("0.0.0.0"))},
			want:  3, wantListening: true,
		},
		{
			// The kernel can print a row twice when the table changes
			// between two read(2)s.
			name:  "duplicate row counted once",
			socks: concat(conns[:1], conns[:1], conns[3:], conns[3:]),
			want:  2,
		},
		{
			name:  "listener on another port",
			socks: []sock{{"0.0.0.0:8081", "0.0.0.0:0", stateListen}},
			want:  0, wantListening: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(8080, append(tt.opts, WithProcRoot(fixtureDir(t, tt.socks...)))...)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := c.Count(t.Context()); err != nil || got != tt.want {
				t.Fatalf("want Count %d, got %d, %v", tt.want, got, err)
			}
			if got, err := c.Listening(t.Context()); err != nil || got != tt.wantListening {
				t.Fatalf("want Listening %v, got %v, %v", tt.wantListening, got, err)
			}
		})
	}
}

func concat(ss ...[]sock) []sock {
	var out []sock
	for _, s := range ss {
		out = append(out, s...)
	}
	return out
}

func TestCountTables(t *testing.T) {
	t.Parallel()
	est := sock{"127.0.0.1:8080", "127.0.0.1:40000", stateEstablished}
	est6 := sock{"[::1]:8080", "[::1]:40000", stateEstablished}
	tcp, tcp6 := tables(t, est, est6)
	tests := []struct {
		name    string
		files   map[string]string // path under the proc root -> content
		opts    []Option
		want    int
		wantErr func(error) bool
	}{
		{name: "both", files: map[string]string{"net/tcp": tcp, "net/tcp6": tcp6}, want: 2},
		{name: "no tcp6 (IPv6 disabled)", files: map[string]string{"net/tcp": tcp}, want: 1},
		{name: "only tcp6", files: map[string]string{"net/tcp6": tcp6}, want: 1},
		{
			name:  "pid's namespace",
			files: map[string]string{"net/tcp": "garbage", "4242/net/tcp": tcp, "4242/net/tcp6": tcp6},
			opts:  []Option{WithPID(4242)},
			want:  2,
		},
		{
			name:  "neither",
			files: map[string]string{},
			wantErr: func(err error) bool {
				return errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(err.Error(), "conncount: neither")
			},
		},
		{
			name:  "pid gone",
			files: map[string]string{"net/tcp": tcp},
			opts:  []Option{WithPID(99)},
			wantErr: func(err error) bool {
				return errors.Is(err, fs.ErrNotExist) && strings.Contains(err.Error(), "/99/net/tcp")
			},
		},
		{
			name:  "malformed tcp6",
			files: map[string]string{"net/tcp": tcp, "net/tcp6": tcp6 + "   9: nonsense\n"},
			wantErr: func(err error) bool {
				var pe *ParseError
				return errors.As(err, &pe) && strings.HasSuffix(pe.File, "net/tcp6") && pe.Line == 3
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			for name, content := range tt.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			c, err := New(8080, append(tt.opts, WithProcRoot(root))...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Count(t.Context())
			if tt.wantErr != nil {
				if err == nil || !tt.wantErr(err) {
					t.Fatalf("want a matching error, got %d, %v", got, err)
				}
				if _, lerr := c.Listening(t.Context()); lerr == nil || lerr.Error() != err.Error() {
					t.Fatalf("want Listening to fail as Count did (%v), got %v", err, lerr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("want Count %d, got %d, %v", tt.want, got, err)
			}
		})
	}
}

func TestCountCancelled(t *testing.T) {
	t.Parallel()
	c, err := New(8080, WithProcRoot(fixtureDir(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if n, err := c.Count(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %d, %v", n, err)
	}
	if ok, err := c.Listening(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v, %v", ok, err)
	}
}

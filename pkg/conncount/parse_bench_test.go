package conncount

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/prometheus/procfs"
)

// The tables BenchmarkReadTables20kRows reads: a busy host's, 10,000 rows in
// each of tcp and tcp6, of which the app's port holds a listener and 10
// connections per table.
const (
	tablePort  = 8080
	tableRows  = 10_000 // per table
	tableConns = 10     // per table
)

// BenchmarkReadTables20kRows reads the same tcp and tcp6 tables (20,000
// rows in all) through conncount's parser (Counter.readTables, the path of
// WithProcRoot and WithPID) and through github.com/prometheus/procfs
// (FS.NetTCP and NetTCP6), handing every row to the same function, which
// keeps the port's established connections. It is the measurement behind
// the choice of parser; parseTable's doc gives the numbers.
func BenchmarkReadTables20kRows(b *testing.B) {
	dir := b.TempDir()
	tcp, _ := tables(b, benchTableSocks(false)...)
	_, tcp6 := tables(b, benchTableSocks(true)...)
	writeTables(b, dir, tcp, tcp6)
	c, err := New(tablePort, WithProcRoot(dir))
	if err != nil {
		b.Fatal(err)
	}
	pfs, err := procfs.NewFS(dir)
	if err != nil {
		b.Fatal(err)
	}
	readers := []struct {
		name string
		read func(context.Context, func(row)) error
	}{
		{"conncount", c.readTables},
		{"procfs", func(ctx context.Context, f func(row)) error { return readTablesProcfs(ctx, pfs, f) }},
	}

	// Both must see the same connections, or the race means nothing.
	var want []row
	for i, rd := range readers {
		var got []row
		if err := rd.read(b.Context(), func(r row) {
			if r.local.Port() == tablePort && r.state == stateEstablished {
				got = append(got, r)
			}
		}); err != nil {
			b.Fatalf("%s: want no error, got %v", rd.name, err)
		}
		if i == 0 {
			want = got
			if len(want) != 2*tableConns {
				b.Fatalf("%s: want %d connections on port %d, got %d", rd.name, 2*tableConns, tablePort, len(want))
			}
		} else if !slices.Equal(got, want) {
			b.Fatalf("%s: want the rows %s read, %v, got %v", rd.name, readers[0].name, want, got)
		}
	}

	for _, rd := range readers {
		b.Run(rd.name, func(b *testing.B) {
			b.ReportAllocs()
			n := 0
			keep := func(r row) {
				if r.local.Port() == tablePort && r.state == stateEstablished {
					n++
				}
			}
			for b.Loop() {
				n = 0
				if err := rd.read(b.Context(), keep); err != nil {
					b.Fatal(err)
				}
			}
			if n != 2*tableConns {
				b.Fatalf("want %d connections, got %d", 2*tableConns, n)
			}
		})
	}
}

// benchTableSocks returns one table's rows: the port's listener and
// connections among connections to and from 20 other ports, one in ten of
// them in TIME_WAIT. The tcp6 rows are v4-mapped and native by halves, as a
// Go dual-stack listener's are.
func benchTableSocks(v6 bool) []sock {
	addr := func(i int) string {
		switch {
		case !v6:
			return fmt.Sprintf("10.0.%d.%d", i>>8&0xff, i&0xff)
		case i%2 == 0:
			return fmt.Sprintf("[::ffff:10.0.%d.%d]", i>>8&0xff, i&0xff)
		}
		return fmt.Sprintf("[fd00::%x]", i&0xffff)
	}
	wildcard := "0.0.0.0"
	if v6 {
		wildcard = "[::]"
	}
	socks := []sock{{fmt.Sprintf("%s:%d", wildcard, tablePort), wildcard + ":0", stateListen}}
	for i := range tableConns {
		socks = append(socks, sock{fmt.Sprintf("%s:%d", addr(1), tablePort), fmt.Sprintf("%s:%d", addr(i+2), 40000+i), stateEstablished})
	}
	for i := len(socks); i < tableRows; i++ {
		var st uint8 = stateEstablished
		if i%10 == 0 {
			st = 0x06 // TIME_WAIT
		}
		// Two ends of one loopback-like connection: the server's side on
		// 9000-9019, the client's on an ephemeral port.
		server, client := fmt.Sprintf("%s:%d", addr(1), 9000+i%20), fmt.Sprintf("%s:%d", addr(i), 32768+i)
		if i%2 == 0 {
			socks = append(socks, sock{server, client, st})
		} else {
			socks = append(socks, sock{client, server, st})
		}
	}
	return socks
}

// readTablesProcfs does what Counter.readTables does, through procfs. procfs
// reads a whole table before it returns a row, so ctx is looked at between
// tables only.
func readTablesProcfs(ctx context.Context, pfs procfs.FS, f func(row)) error {
	//lint:ignore SA1019 procfs deprecates its tables for netlink, which conncount already uses where it can; this is the comparison.
	for _, read := range []func() (procfs.NetTCP, error){pfs.NetTCP, pfs.NetTCP6} {
		if err := ctx.Err(); err != nil {
			return err
		}
		lines, err := read()
		if err != nil {
			return err
		}
		for _, l := range lines {
			local, ok := netip.AddrFromSlice(l.LocalAddr)
			remote, ok2 := netip.AddrFromSlice(l.RemAddr)
			if !ok || !ok2 {
				return fmt.Errorf("procfs gave addresses %v and %v", l.LocalAddr, l.RemAddr)
			}
			f(row{
				local:  netip.AddrPortFrom(local, uint16(l.LocalPort)),
				remote: netip.AddrPortFrom(remote, uint16(l.RemPort)),
				state:  uint8(l.St),
			})
		}
	}
	return nil
}

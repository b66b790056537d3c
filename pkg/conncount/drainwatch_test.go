package conncount

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestDrainWatch feeds WaitIdle's per-poll logic synthetic connections, as
// sock_diag (timed) and /proc (untimed) report them, and checks the busy
// count and where the quiet window counts from.
func TestDrainWatch(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	// conn is connection n as seen at a poll: received recv ago, sent sent
	// ago, rq bytes unread.
	conn := func(n int, recv, sent time.Duration, rq uint32) row {
		return row{
			local: netip.MustParseAddrPort("127.0.0.1:8080"), remote: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(40000+n)),
			state: stateEstablished, activity: true, lastRecv: recv, lastSent: sent, rqueue: rq,
		}
	}
	untimed := func(n int) row {
		r := conn(n, 0, 0, 0)
		r.activity = false
		return r
	}
	segs := func(r row, in, out uint32) row {
		r.segs, r.segsIn, r.segsOut = true, in, out
		return r
	}
	type poll struct {
		at       time.Duration // after the call
		conns    []row
		wantBusy int
		wantLast time.Duration // after the call
	}
	tests := []struct {
		name  string
		polls []poll
	}{
		{name: "nothing open", polls: []poll{{at: 0, wantLast: 0}}},
		{name: "idle keep-alive, answered before the call", polls: []poll{
			{at: 0, conns: []row{conn(1, 900*ms, 800*ms, 0)}, wantBusy: 0, wantLast: 0},
		}},
		{name: "a stream the app writes to", polls: []poll{
			{at: 0, conns: []row{conn(1, 5000*ms, 20*ms, 0)}, wantBusy: 0},
			{at: 200 * ms, conns: []row{conn(1, 5200*ms, 1*ms, 0)}, wantBusy: 0, wantLast: 0},
		}},
		{name: "in flight at the call: busy, but the window does not move", polls: []poll{
			{at: 0, conns: []row{conn(1, 300*ms, 900*ms, 0)}, wantBusy: 1, wantLast: 0},
			{at: 400 * ms, conns: []row{conn(1, 700*ms, 1300*ms, 0)}, wantBusy: 1, wantLast: 0},
			{at: 800 * ms, conns: []row{conn(1, 1100*ms, 50*ms, 0)}, wantBusy: 0, wantLast: 0},
		}},
		{name: "unread bytes are busy even when the app sent last", polls: []poll{
			{at: 0, conns: []row{conn(1, 8*ms, 4*ms, 120)}, wantBusy: 1, wantLast: 0},
		}},
		{name: "same jiffy reads as answered", polls: []poll{
			{at: 0, conns: []row{conn(1, 4*ms, 4*ms, 0)}, wantBusy: 0, wantLast: 0},
		}},
		{name: "same jiffy, but the app never sent: a first request", polls: []poll{
			{at: 0, conns: []row{segs(conn(1, 4*ms, 4*ms, 0), 1, 0)}, wantBusy: 1, wantLast: 0},
			{at: 100 * ms, conns: []row{segs(conn(1, 104*ms, 2*ms, 0), 1, 1)}, wantBusy: 0, wantLast: 0},
		}},
		{name: "no data either way is idle", polls: []poll{
			{at: 0, conns: []row{segs(conn(1, 30*ms, 30*ms, 0), 0, 0)}, wantBusy: 0, wantLast: 0},
		}},
		{name: "a late request moves the window while it runs", polls: []poll{
			{at: 0, conns: []row{conn(1, 500*ms, 400*ms, 0)}, wantBusy: 0, wantLast: 0},
			{at: 100 * ms, conns: []row{conn(1, 30*ms, 500*ms, 0)}, wantBusy: 1, wantLast: 100 * ms},
			{at: 200 * ms, conns: []row{conn(1, 130*ms, 600*ms, 0)}, wantBusy: 1, wantLast: 200 * ms},
			// answered: the window counts from its arrival, which is
			// earlier than the last poll that saw it busy
			{at: 300 * ms, conns: []row{conn(1, 230*ms, 10*ms, 0)}, wantBusy: 0, wantLast: 200 * ms},
		}},
		{name: "a late request that came and went between polls", polls: []poll{
			{at: 0, conns: []row{conn(1, 500*ms, 400*ms, 0)}, wantBusy: 0, wantLast: 0},
			{at: 100 * ms, conns: []row{conn(1, 40*ms, 35*ms, 0)}, wantBusy: 0, wantLast: 60 * ms},
		}},
		{name: "a late busy connection that closed between polls", polls: []poll{
			{at: 100 * ms, conns: []row{conn(1, 20*ms, 500*ms, 0), conn(2, 900*ms, 800*ms, 0)}, wantBusy: 1, wantLast: 100 * ms},
			{at: 200 * ms, conns: []row{conn(2, 1000*ms, 900*ms, 0)}, wantBusy: 0, wantLast: 200 * ms},
			{at: 300 * ms, conns: []row{conn(2, 1100*ms, 1000*ms, 0)}, wantBusy: 0, wantLast: 200 * ms},
		}},
		{name: "untimed: every connection is busy and late", polls: []poll{
			{at: 0, conns: []row{untimed(1), untimed(2)}, wantBusy: 2, wantLast: 0},
			{at: 100 * ms, conns: []row{untimed(2)}, wantBusy: 1, wantLast: 100 * ms},
			{at: 200 * ms, wantBusy: 0, wantLast: 200 * ms},
			{at: 300 * ms, wantBusy: 0, wantLast: 200 * ms},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newDrainWatch(t0)
			for i, p := range tt.polls {
				busy := w.observe(t0.Add(p.at), p.conns)
				if busy != p.wantBusy || !w.last.Equal(t0.Add(p.wantLast)) {
					t.Fatalf("poll %d at %v (%s): want busy %d, window from %v; got busy %d, window from %v",
						i, p.at, describe(p.conns), p.wantBusy, p.wantLast, busy, w.last.Sub(t0))
				}
			}
		})
	}
}

func describe(conns []row) string {
	s := ""
	for _, r := range conns {
		s += fmt.Sprintf("[%v recv %v ago, sent %v ago, rq %d, timed %v] ", r.remote, r.lastRecv, r.lastSent, r.rqueue, r.activity)
	}
	return s
}

// TestDrainWatchTellsArrivals: a request that arrives after the call is
// told once, by its remote IP and arrival time, however many polls see it;
// the next request on the same connection is told again; requests from
// before the call are not told.
func TestDrainWatchTellsArrivals(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	start := time.Unix(1000, 0)
	conn := func(remote string, recv, sent time.Duration) row {
		return row{
			local: netip.MustParseAddrPort("127.0.0.1:8080"), remote: netip.MustParseAddrPort(remote),
			state: stateEstablished, activity: true, lastRecv: recv, lastSent: sent,
		}
	}
	type told struct {
		ip string
		at time.Duration
	}
	var got []told
	w := newDrainWatch(start)
	w.saw = func(ip netip.Addr, at time.Time) { got = append(got, told{ip.String(), at.Sub(start)}) }
	polls := []struct {
		at    time.Duration
		conns []row
	}{
		{0, []row{conn("10.0.0.7:4000", 500*ms, 400*ms)}},                                              // from before the call
		{100 * ms, []row{conn("10.0.0.7:4000", 30*ms, 500*ms), conn("10.0.0.9:5000", 10*ms, 5*ms)}},    // two arrive
		{200 * ms, []row{conn("10.0.0.7:4000", 132*ms, 20*ms), conn("10.0.0.9:5000", 110*ms, 105*ms)}}, // same two, rounded
		{300 * ms, []row{conn("10.0.0.7:4000", 20*ms, 120*ms)}},                                        // a second one on 10.0.0.7
	}
	for _, p := range polls {
		w.observe(start.Add(p.at), p.conns)
	}
	want := []told{{"10.0.0.7", 70 * ms}, {"10.0.0.9", 90 * ms}, {"10.0.0.7", 280 * ms}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("arrivals told: want %v, got %v", want, got)
	}
}

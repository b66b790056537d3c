package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A consumer is one client of the service: it keeps the list of instances
// its registry watch shows (a watch feeds it through update), balances
// requests round-robin over that list, retries nothing, and holds one
// long-lived stream, which it reopens on another instance when the
// instance says goodbye. Like a balancer that drains removed hosts, it
// closes its connections to an instance once the instance has left its list
// and its last request there has ended; with follow, it also moves its
// stream off such an instance at once.
type consumer struct {
	idx    int
	book   *book
	follow bool

	mu      sync.Mutex
	list    []*endpoint // what the watch shows now, sorted by address
	conns   map[*endpoint]*http.Transport
	next    uint64
	changed chan struct{} // capacity 1: the list changed
	stream  *endpoint     // where the stream is open, if it is
	move    context.CancelCauseFunc
}

var errMoved = errors.New("the instance left the consumer's list")

func newConsumer(idx int, b *book, follow bool) *consumer {
	return &consumer{idx: idx, book: b, follow: follow, conns: map[*endpoint]*http.Transport{}, changed: make(chan struct{}, 1)}
}

// update takes the watch's whole list of endpoints ("host:port").
func (c *consumer) update(addrs []string) {
	now := mono()
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make([]*endpoint, 0, len(addrs))
	for _, a := range addrs {
		next = append(next, c.book.endpoint(a))
	}
	slices.SortFunc(next, func(a, b *endpoint) int { return strings.Compare(a.addr, b.addr) })
	next = slices.Compact(next)
	for _, ep := range c.list {
		if !slices.Contains(next, ep) {
			ep.seenGone(c.idx, now)
			if tr := c.conns[ep]; tr != nil {
				tr.CloseIdleConnections()
			}
			if c.follow && c.stream == ep && c.move != nil {
				c.move(errMoved)
			}
		}
	}
	for _, ep := range next {
		if !slices.Contains(c.list, ep) {
			ep.seenListed(c.idx, now)
			if c.conns[ep] == nil {
				c.conns[ep] = newTransport()
			}
		}
	}
	c.list = next
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

func newTransport() *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		// Shorter than the service's idle timeout (5s), so the client, not
		// the server, closes an idle connection: a request can never be
		// sent on a connection the server is closing.
		IdleConnTimeout:    4 * time.Second,
		DisableCompression: true,
	}
}

// pick returns the next endpoint round-robin, skipping avoid.
func (c *consumer) pick(avoid *endpoint) (*endpoint, *http.Transport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for range c.list {
		ep := c.list[c.next%uint64(len(c.list))]
		c.next++
		if ep != avoid {
			return ep, c.conns[ep]
		}
	}
	return nil, nil
}

// listed reports whether the consumer's list holds ep.
func (c *consumer) listed(ep *endpoint) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.list, ep)
}

func (c *consumer) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.list)
}

// closeIfGone closes the idle connections to ep if it has left the list.
func (c *consumer) closeIfGone(ep *endpoint, tr *http.Transport) {
	if !c.listed(ep) {
		tr.CloseIdleConnections()
	}
}

// closeAll drops every connection the consumer keeps.
func (c *consumer) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, tr := range c.conns {
		tr.CloseIdleConnections()
	}
}

// work draws a request's service time: mostly a few milliseconds, some tens,
// and 2% between 100ms and 2s.
func work(r *rand.Rand) time.Duration {
	switch p := r.Float64(); {
	case p < 0.90:
		return time.Duration(1+r.IntN(10)) * time.Millisecond
	case p < 0.98:
		return time.Duration(10+r.IntN(90)) * time.Millisecond
	default:
		return time.Duration(100+r.IntN(1901)) * time.Millisecond
	}
}

// oneByte is a request body that cannot be rewound, so that net/http never
// replays the request on a fresh connection: the consumer retries nothing.
type oneByte struct{ done bool }

func (b *oneByte) Read(p []byte) (int, error) {
	if b.done || len(p) == 0 {
		return 0, io.EOF
	}
	p[0], b.done = 'x', true
	return 1, io.EOF
}

// send makes one request to the next instance and records what happened.
func (c *consumer) send(d time.Duration) {
	ep, tr := c.pick(nil)
	if ep == nil {
		c.book.noInstance.Add(1)
		return
	}
	ep.sent.Add(1)
	ep.inFlight.Add(1)
	start := mono()
	failure := do(tr, ep.addr, d)
	end := mono()
	ep.inFlight.Add(-1)
	if failure != "" {
		ep.fail(failure)
	} else {
		ep.ok(start, end)
	}
	c.closeIfGone(ep, tr)
}

func do(tr *http.Transport, addr string, d time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		fmt.Sprintf("http://%s/work?ms=%d", addr, d.Milliseconds()), io.NopCloser(&oneByte{}))
	if err != nil {
		return "request: " + err.Error()
	}
	req.ContentLength = 1
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return classify(err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return classify(err)
	case resp.StatusCode/100 != 2:
		return "HTTP " + resp.Status
	}
	return ""
}

// classify names a transport failure by its cause.
func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, net.ErrClosed):
		return "connection closed while writing"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed mid-request"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other: " + err.Error()
}

// streamOutcome says how one stream ended.
type streamOutcome int

const (
	streamGoodbye   streamOutcome = iota // the instance said goodbye: served
	streamMoved                          // the consumer moved it off a removed instance: served
	streamClosed                         // the run ended: served
	streamCut                            // ended without a goodbye: failed
	streamNotOpened                      // the open failed: failed
	streamSkipped                        // not opened: the instance left the list meanwhile; not counted
)

// streams keeps one stream open until ctx ends, reopening it on another
// instance whenever it ends.
func (c *consumer) streams(ctx context.Context) {
	var last *endpoint
	for ctx.Err() == nil {
		ep, tr := c.pick(last)
		if ep == nil {
			select {
			case <-ctx.Done():
				return
			case <-c.changed:
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		last = ep
		out, why := c.stream1(ctx, ep, tr)
		if out == streamSkipped {
			continue
		}
		ep.streamEnded(out, why)
		c.book.streamEnded(out)
		if out == streamCut || out == streamNotOpened {
			// Not a retry of the failed request, which stays failed: the
			// consumer wants a stream, so it opens a new one elsewhere.
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// stream1 opens one stream on ep and reads it until it ends.
func (c *consumer) stream1(ctx context.Context, ep *endpoint, tr *http.Transport) (streamOutcome, string) {
	sctx, move := context.WithCancelCause(ctx)
	defer move(nil)
	c.mu.Lock()
	if !slices.Contains(c.list, ep) {
		c.mu.Unlock()
		return streamSkipped, ""
	}
	c.stream, c.move = ep, move
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.stream, c.move = nil, nil
		c.mu.Unlock()
		c.closeIfGone(ep, tr)
	}()
	ended := func(err error) (streamOutcome, string) {
		switch {
		case errors.Is(context.Cause(sctx), errMoved):
			return streamMoved, ""
		case ctx.Err() != nil:
			return streamClosed, ""
		}
		return streamCut, classify(err)
	}
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, "http://"+ep.addr+"/stream", nil)
	if err != nil {
		return streamNotOpened, err.Error()
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		if out, why := ended(err); out != streamCut {
			return out, why
		}
		return streamNotOpened, classify(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return streamNotOpened, "HTTP " + resp.Status
	}
	ep.streamsOpened.Add(1)
	c.book.streamsOpened.Add(1)
	sc := bufio.NewScanner(resp.Body)
	goodbye := false
	for sc.Scan() {
		if sc.Text() == "event: goodbye" {
			goodbye = true
		}
	}
	err = sc.Err()
	if goodbye && err == nil {
		return streamGoodbye, ""
	}
	if err == nil {
		err = io.ErrUnexpectedEOF // the response ended without a goodbye
	}
	return ended(err)
}

// load is an open-loop schedule of requests: each consumer sends at
// rate/consumers per second on a fixed clock, whatever the answers, so a
// stall shows as a pile of outstanding requests instead of a lower rate.
type load struct {
	cancel  context.CancelFunc
	sending sync.WaitGroup // the scheduler and every request
	streams sync.WaitGroup
	sent    atomic.Int64
	started time.Time
}

func startLoad(cs []*consumer, rate float64) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, started: time.Now()}
	period := time.Duration(float64(time.Second) * float64(len(cs)) / rate)
	for k, c := range cs {
		l.sending.Add(1)
		go func() {
			defer l.sending.Done()
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(k)))
			// Consumers start a fraction of a period apart, so their
			// schedules interleave.
			next := time.Now().Add(period * time.Duration(k) / time.Duration(len(cs)))
			t := time.NewTimer(time.Until(next))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				for now := time.Now(); !next.After(now); next = next.Add(period) {
					d := work(rng)
					l.sending.Add(1)
					l.sent.Add(1)
					go func() { defer l.sending.Done(); c.send(d) }()
				}
				t.Reset(time.Until(next))
			}
		}()
		l.streams.Add(1)
		go func() { defer l.streams.Done(); c.streams(ctx) }()
	}
	return l
}

// stop ends the schedule, waits for every request to end, then closes the
// streams.
func (l *load) stop() time.Duration {
	took := time.Since(l.started)
	l.cancel()
	l.sending.Wait()
	l.streams.Wait()
	return took
}

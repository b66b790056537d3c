package main

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// base is the harness's time origin; mono is the time since then, on the
// monotonic clock, in nanoseconds. Every harness timestamp is a mono value.
var base = time.Now()

func mono() int64 { return int64(time.Since(base)) }

// fromWall converts a wall-clock time from another process on this machine
// to the harness's mono scale.
func fromWall(unixNano int64) int64 { return unixNano - base.UnixNano() }

// book is what the consumers of one strategy run saw, by endpoint. It is
// safe for concurrent use.
type book struct {
	consumers int

	mu        sync.Mutex
	endpoints map[string]*endpoint

	noInstance    atomic.Int64 // requests with no instance to send to (failed)
	streamsOpened atomic.Int64
	streamEnds    [streamNotOpened + 1]atomic.Int64
}

func newBook(consumers int) *book {
	return &book{consumers: consumers, endpoints: map[string]*endpoint{}}
}

// endpoint returns the record for addr, creating it.
func (b *book) endpoint(addr string) *endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := b.endpoints[addr]
	if ep == nil {
		ep = &endpoint{addr: addr, listedAt: make([]int64, b.consumers), goneAt: make([]int64, b.consumers), errs: map[string]int64{}}
		b.endpoints[addr] = ep
	}
	return ep
}

func (b *book) all() []*endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*endpoint, 0, len(b.endpoints))
	for _, ep := range b.endpoints {
		out = append(out, ep)
	}
	return out
}

func (b *book) streamEnded(o streamOutcome) { b.streamEnds[o].Add(1) }

// totals sums what the consumers saw over every endpoint.
type totals struct {
	Requests      int64            `json:"requests"`
	Failed        int64            `json:"failed"`
	Errors        map[string]int64 `json:"errors,omitempty"`
	Streams       int64            `json:"streams_opened"`
	StreamGoodbye int64            `json:"streams_ended_by_goodbye"`
	StreamMoved   int64            `json:"streams_moved_by_consumer"`
	StreamCut     int64            `json:"streams_cut"`
	StreamNoOpen  int64            `json:"stream_opens_failed"`
	StreamErrors  map[string]int64 `json:"stream_errors,omitempty"`
}

// lost is every failure the users of the service would see.
func (t totals) lost() int64 { return t.Failed + t.StreamCut + t.StreamNoOpen }

func (b *book) totals() totals {
	t := totals{Errors: map[string]int64{}, StreamErrors: map[string]int64{}}
	for _, ep := range b.all() {
		t.Requests += ep.sent.Load()
		ep.mu.Lock()
		for k, v := range ep.errs {
			t.Failed += v
			t.Errors[k] += v
		}
		for k, v := range ep.streamErrs {
			t.StreamErrors[k] += v
		}
		ep.mu.Unlock()
	}
	if n := b.noInstance.Load(); n > 0 {
		t.Requests += n
		t.Failed += n
		t.Errors["no instance listed"] += n
	}
	t.Streams = b.streamsOpened.Load()
	t.StreamGoodbye = b.streamEnds[streamGoodbye].Load()
	t.StreamMoved = b.streamEnds[streamMoved].Load()
	t.StreamCut = b.streamEnds[streamCut].Load()
	t.StreamNoOpen = b.streamEnds[streamNotOpened].Load()
	return t
}

// endpoint is what the consumers saw of one instance.
type endpoint struct {
	addr string

	sent          atomic.Int64
	inFlight      atomic.Int64
	lastOK        atomic.Int64 // mono time the last successful request ended
	offlineAt     atomic.Int64 // mono time the offline began; 0 before
	longestAtOff  atomic.Int64 // longest successful request in flight when the offline began, ns
	streamsOpened atomic.Int64

	mu         sync.Mutex
	errs       map[string]int64
	streamErrs map[string]int64
	streamCut  int64
	listedAt   []int64 // by consumer: mono time it (last) appeared in the list
	goneAt     []int64 // by consumer: mono time it (last) left the list; 0 while listed
}

func (ep *endpoint) ok(start, end int64) {
	for {
		old := ep.lastOK.Load()
		if end <= old || ep.lastOK.CompareAndSwap(old, end) {
			break
		}
	}
	if off := ep.offlineAt.Load(); off != 0 && start < off && end > off {
		d := end - start
		for {
			old := ep.longestAtOff.Load()
			if d <= old || ep.longestAtOff.CompareAndSwap(old, d) {
				break
			}
		}
	}
}

func (ep *endpoint) fail(why string) {
	ep.mu.Lock()
	ep.errs[why]++
	ep.mu.Unlock()
}

func (ep *endpoint) failed() int64 {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	var n int64
	for _, v := range ep.errs {
		n += v
	}
	return n
}

func (ep *endpoint) errors() map[string]int64 {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return maps.Clone(ep.errs)
}

func (ep *endpoint) streamEnded(o streamOutcome, why string) {
	if o != streamCut && o != streamNotOpened {
		return
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.streamErrs == nil {
		ep.streamErrs = map[string]int64{}
	}
	ep.streamErrs[why]++
	ep.streamCut++
}

func (ep *endpoint) streamsLost() int64 {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.streamCut
}

func (ep *endpoint) seenListed(consumer int, at int64) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.listedAt[consumer], ep.goneAt[consumer] = at, 0
}

func (ep *endpoint) seenGone(consumer int, at int64) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.goneAt[consumer] = at
}

// listedByAll reports whether every consumer lists the endpoint.
func (ep *endpoint) listedByAll() bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for k := range ep.listedAt {
		if ep.listedAt[k] == 0 || ep.goneAt[k] != 0 {
			return false
		}
	}
	return true
}

// goneFromAll returns the mono time the last consumer dropped the
// endpoint, and whether all have.
func (ep *endpoint) goneFromAll() (int64, bool) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	var last int64
	for _, g := range ep.goneAt {
		if g == 0 {
			return 0, false
		}
		last = max(last, g)
	}
	return last, true
}

// gone returns each consumer's removal time (0: still listed).
func (ep *endpoint) gone() []int64 {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return append([]int64(nil), ep.goneAt...)
}

package integration

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// faultLoad is a steady, open-loop load: rate requests a second, sent on a
// clock whatever the answers, round-robin over the instances a registry
// watch shows, as a consumer elsewhere would see them. Each is a POST, which
// net/http never retries, so every failure shows. Unlike demo.Load (as many
// requests as its workers can send), it is paced, so that a dozen cases can
// run at once on 2 cores, and it keeps when each failed request was sent,
// so that a request lost while the app could still serve it is told from
// one sent after the app had exited.
type faultLoad struct {
	cancel context.CancelFunc
	done   chan struct{}
	client *http.Client

	mu   sync.Mutex
	live []string // endpoints, as the watch last showed them
	next int
	per  map[string]*faultCounts
	once sync.Once
}

// faultCounts is what the load saw of one endpoint.
type faultCounts struct {
	Sent, Failed int
	Failures     []faultFailure // the first 20
}

type faultFailure struct {
	At  time.Time // when the request was sent
	Why string
}

// startFaultLoad starts the load on service, discovered through watch
// (a registry client of its own, not the app's), and stops it when the
// test ends.
func startFaultLoad(t *testing.T, watch registry.Registry, service string, rate int) *faultLoad {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &faultLoad{
		cancel: cancel,
		done:   make(chan struct{}),
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 4 * time.Second}},
		per:    map[string]*faultCounts{},
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.follow(ctx, watch, service) }()
	go func() { defer wg.Done(); l.send(ctx, rate) }()
	go func() { wg.Wait(); close(l.done) }()
	t.Cleanup(l.stop)
	return l
}

// follow keeps l.live up to date with the watch, opening it again after an
// error, as a consumer's client library would.
func (l *faultLoad) follow(ctx context.Context, reg registry.Registry, service string) {
	for ctx.Err() == nil {
		w, err := reg.Watch(ctx, service)
		for err == nil {
			var list []registry.Instance
			if list, err = w.Next(ctx); err == nil {
				eps := make([]string, 0, len(list))
				for _, in := range list {
					eps = append(eps, in.Endpoint())
				}
				l.mu.Lock()
				l.live = eps
				l.mu.Unlock()
			}
		}
		if w != nil {
			w.Stop()
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond): // a watch that failed is opened again after a pause
		}
	}
}

// send starts one request every 1/rate s on the next endpoint; requests in
// flight are waited for before it returns.
func (l *faultLoad) send(ctx context.Context, rate int) {
	var inFlight sync.WaitGroup
	defer inFlight.Wait()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		if len(l.live) == 0 {
			l.mu.Unlock()
			continue
		}
		ep := l.live[l.next%len(l.live)]
		l.next++
		l.mu.Unlock()
		inFlight.Add(1)
		go func() { defer inFlight.Done(); l.one(ctx, ep) }()
	}
}

func (l *faultLoad) one(ctx context.Context, ep string) {
	at := time.Now()
	req, _ := http.NewRequest(http.MethodPost, "http://"+ep+"/work", strings.NewReader("x"))
	resp, err := l.client.Do(req)
	why := ""
	switch {
	case err != nil && ctx.Err() != nil:
		return // cut short by the end of the load, not lost
	case err != nil:
		why = err.Error()
	default:
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			why = resp.Status
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.per[ep]
	if c == nil {
		c = &faultCounts{}
		l.per[ep] = c
	}
	c.Sent++
	if why != "" {
		c.Failed++
		if len(c.Failures) < 20 {
			c.Failures = append(c.Failures, faultFailure{At: at, Why: why})
		}
	}
}

// counts returns what the load saw of endpoint so far.
func (l *faultLoad) counts(endpoint string) faultCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.per[endpoint]; c != nil {
		out := *c
		out.Failures = append([]faultFailure(nil), c.Failures...)
		return out
	}
	return faultCounts{}
}

// waitServed waits until endpoint has served n requests, or fails the test
// after d.
func (l *faultLoad) waitServed(t *testing.T, endpoint string, n int, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for c := l.counts(endpoint); c.Sent-c.Failed < n; c = l.counts(endpoint) {
		select {
		case <-deadline.C:
			t.Fatalf("load: want %d requests served by %s within %v, got %d of %d (failures %v)", n, endpoint, d, c.Sent-c.Failed, c.Sent, c.Failures)
		case <-tick.C:
		}
	}
}

// stop ends the load and waits for its requests; it may be called again.
func (l *faultLoad) stop() {
	l.cancel()
	<-l.done
	l.once.Do(l.client.CloseIdleConnections)
}

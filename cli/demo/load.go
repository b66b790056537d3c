package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// Counts is what the load generator saw for one instance.
type Counts struct {
	Sent    int64
	Failed  int64
	Longest time.Duration
	Errors  map[string]int64 // failure reasons, by kind
}

// Load sends a steady stream of requests to the live instances of a service,
// discovered through the registry's watch and balanced round-robin. Like a
// plain consumer it retries nothing, so every lost request shows.
type Load struct {
	reg     registry.Registry
	service string
	workers int
	client  *http.Client

	mu    sync.Mutex
	live  []registry.Instance
	stats map[string]*Counts
	next  atomic.Uint64
	ready chan struct{}
	once  sync.Once
	want  int
}

// NewLoad prepares a load of the given number of concurrent workers. It
// starts when Run is called. Ready is closed once the watch shows want
// instances.
func NewLoad(reg registry.Registry, service string, workers, want int) *Load {
	tr := &http.Transport{MaxIdleConnsPerHost: workers, IdleConnTimeout: 30 * time.Second}
	return &Load{
		reg: reg, service: service, workers: workers, want: want,
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		stats:  map[string]*Counts{},
		ready:  make(chan struct{}),
	}
}

// Ready is closed once the watch has shown the wanted number of instances.
func (l *Load) Ready() <-chan struct{} { return l.ready }

// Run watches and sends until ctx ends. It returns the watch's error, if
// the watch fails; nil when ctx ends.
func (l *Load) Run(ctx context.Context) error {
	w, err := l.reg.Watch(ctx, l.service)
	if err != nil {
		return err
	}
	defer w.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for k := 0; k < l.workers; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.work(ctx)
		}()
	}
	for {
		list, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("demo: load generator's watch: %w", err)
		}
		l.mu.Lock()
		l.live = list
		l.mu.Unlock()
		if len(list) >= l.want {
			l.once.Do(func() { close(l.ready) })
		}
	}
}

func (l *Load) pick() (registry.Instance, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.live) == 0 {
		return registry.Instance{}, false
	}
	return l.live[l.next.Add(1)%uint64(len(l.live))], true
}

func (l *Load) work(ctx context.Context) {
	idle := time.NewTicker(5 * time.Millisecond)
	defer idle.Stop()
	for ctx.Err() == nil {
		in, ok := l.pick()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-idle.C:
			}
			continue
		}
		l.send(ctx, in)
	}
}

// send makes one POST (which net/http never retries on its own) and records
// the outcome. A request cut short by the end of the run is not counted.
func (l *Load) send(ctx context.Context, in registry.Instance) {
	start := time.Now()
	req, err := http.NewRequest(http.MethodPost, "http://"+in.Endpoint()+"/work", strings.NewReader("x"))
	if err != nil {
		l.record(in, 0, err.Error())
		return
	}
	resp, err := l.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		l.record(in, 0, classify(err))
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		l.record(in, 0, resp.Status)
		return
	}
	l.record(in, time.Since(start), "")
}

func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed mid-request"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other: " + err.Error()
}

func (l *Load) record(in registry.Instance, d time.Duration, failure string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.stats[in.Endpoint()]
	if c == nil {
		c = &Counts{Errors: map[string]int64{}}
		l.stats[in.Endpoint()] = c
	}
	c.Sent++
	if failure != "" {
		c.Failed++
		c.Errors[failure]++
		return
	}
	c.Longest = max(c.Longest, d)
}

// Counts returns a copy of what was seen for the instance at endpoint.
func (l *Load) Counts(endpoint string) Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.stats[endpoint]
	if c == nil {
		return Counts{}
	}
	out := *c
	out.Errors = map[string]int64{}
	for k, v := range c.Errors {
		out.Errors[k] = v
	}
	return out
}

// Close releases idle connections.
func (l *Load) Close() { l.client.CloseIdleConnections() }

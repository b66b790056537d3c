package consul

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/registry"
)

// entry is a passing health entry for service svc.
func entry(id, addr string, port, weight int) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Address: "192.168.0.1"},
		Service: &api.AgentService{ID: id, Service: "svc", Address: addr, Port: port, Weights: api.AgentWeights{Passing: weight, Warning: 1}},
	}
}

func ids(list []registry.Instance) []string {
	out := []string{}
	for _, i := range list {
		out = append(out, i.ID)
	}
	return out
}

type nextResult struct {
	list []registry.Instance
	err  error
}

// next calls w.Next(ctx) and fails the test unless it returns within wait.
func next(t *testing.T, ctx context.Context, w registry.Watcher) ([]registry.Instance, error) {
	t.Helper()
	r := within(t, "Next", func() nextResult {
		l, err := w.Next(ctx)
		return nextResult{l, err}
	})
	return r.list, r.err
}

func watch(t *testing.T, r *Registry) registry.Watcher {
	t.Helper()
	w, err := r.Watch(t.Context(), "svc")
	if err != nil {
		t.Fatalf("Watch: want a watcher, got %v", err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return w
}

func TestWatchFirstNextReturnsCurrentList(t *testing.T) {
	t.Parallel()
	f := newFake()
	noAddr := entry("svc-c", "", 8082, 0)
	f.replies = []healthReply{{index: 5, entries: []*api.ServiceEntry{
		entry("svc-b", "10.0.0.2", 8081, 2), entry("svc-a", "10.0.0.1", 8080, 1), noAddr, {Node: &api.Node{}},
	}}}
	r := newTest(t, f)
	w := watch(t, r)
	list, err := next(t, t.Context(), w)
	if err != nil {
		t.Fatalf("Next: want the current list, got %v", err)
	}
	want := []registry.Instance{
		{Service: "svc", ID: "svc-a", Address: "10.0.0.1", Port: 8080, Weight: 1},
		{Service: "svc", ID: "svc-b", Address: "10.0.0.2", Port: 8081, Weight: 2},
		{Service: "svc", ID: "svc-c", Address: "192.168.0.1", Port: 8082},
	}
	if !reflect.DeepEqual(list, want) {
		t.Errorf("Next: want %+v, got %+v", want, list)
	}
	if got := f.calls(); len(got) != 1 || got[0] != "health svc passing=true index=0" {
		t.Errorf("queries: want one passing-only query at index 0, got %q", got)
	}
}

func TestWatchIndexes(t *testing.T) {
	t.Parallel()
	a := []*api.ServiceEntry{entry("svc-a", "10.0.0.1", 8080, 1)}
	ab := []*api.ServiceEntry{entry("svc-a", "10.0.0.1", 8080, 1), entry("svc-b", "10.0.0.2", 8080, 1)}
	b := []*api.ServiceEntry{entry("svc-b", "10.0.0.2", 8080, 1)}
	cases := []struct {
		name      string
		replies   []healthReply
		wantLists [][]string
		wantIdx   []uint64 // WaitIndex of each query
	}{
		{
			name:      "index advances",
			replies:   []healthReply{{index: 5, entries: a}, {index: 9, entries: ab}},
			wantLists: [][]string{{"svc-a"}, {"svc-a", "svc-b"}},
			wantIdx:   []uint64{0, 5},
		},
		{
			name:      "index going backwards resets to 0",
			replies:   []healthReply{{index: 10, entries: a}, {index: 3, entries: ab}, {index: 4, entries: b}},
			wantLists: [][]string{{"svc-a"}, {"svc-a", "svc-b"}, {"svc-b"}},
			wantIdx:   []uint64{0, 10, 0},
		},
		{
			name:      "index 0 is clamped to 1",
			replies:   []healthReply{{index: 0, entries: a}, {index: 7, entries: ab}},
			wantLists: [][]string{{"svc-a"}, {"svc-a", "svc-b"}},
			wantIdx:   []uint64{0, 1},
		},
		{
			name:      "unchanged list is not returned again",
			replies:   []healthReply{{index: 5, entries: a}, {index: 6, entries: a}, {index: 7, entries: a}, {index: 8, entries: b}},
			wantLists: [][]string{{"svc-a"}, {"svc-b"}},
			wantIdx:   []uint64{0, 5, 6, 7},
		},
		{
			name:      "empty list is returned",
			replies:   []healthReply{{index: 5, entries: a}, {index: 6, entries: nil}},
			wantLists: [][]string{{"svc-a"}, {}},
			wantIdx:   []uint64{0, 5},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.replies = tc.replies
			w := watch(t, newTest(t, f))
			for k, want := range tc.wantLists {
				list, err := next(t, t.Context(), w)
				if err != nil {
					t.Fatalf("Next %d: want %v, got error %v", k, want, err)
				}
				if got := ids(list); !reflect.DeepEqual(got, want) {
					t.Fatalf("Next %d: want %v, got %v", k, want, got)
				}
			}
			f.mu.Lock()
			got := append([]uint64(nil), f.waitIdx...)
			f.mu.Unlock()
			if !reflect.DeepEqual(got, tc.wantIdx) {
				t.Errorf("WaitIndex of each query: want %v, got %v", tc.wantIdx, got)
			}
		})
	}
}

// TestWatchRetriesErrors checks that a watch that has delivered its first
// list rides out failed queries, while its first read fails fast with the
// agent's error, for the caller to retry on its own terms.
func TestWatchRetriesErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection refused")
	t.Run("after the first list", func(t *testing.T) {
		t.Parallel()
		f := newFake()
		f.replies = []healthReply{
			{index: 4, entries: []*api.ServiceEntry{entry("svc-a", "10.0.0.1", 8080, 1)}},
			{err: boom},
			{err: api.StatusError{Code: http.StatusInternalServerError}},
			{err: boom},
			{index: 5, entries: []*api.ServiceEntry{entry("svc-b", "10.0.0.2", 8080, 1)}},
		}
		w := watch(t, newTest(t, f))
		if _, err := next(t, t.Context(), w); err != nil {
			t.Fatalf("first Next: want the list, got %v", err)
		}
		list, err := next(t, t.Context(), w)
		if err != nil {
			t.Fatalf("Next: want the list after the errors, got %v", err)
		}
		if got := ids(list); !reflect.DeepEqual(got, []string{"svc-b"}) {
			t.Errorf("Next: want [svc-b], got %v", got)
		}
		if n := f.count("health "); n != 5 {
			t.Errorf("queries: want 5 (1 list, 3 failures, 1 list), got %d", n)
		}
	})
	t.Run("first read", func(t *testing.T) {
		t.Parallel()
		f := newFake()
		f.replies = []healthReply{{err: boom}}
		w := watch(t, newTest(t, f))
		if _, err := next(t, t.Context(), w); !errors.Is(err, boom) {
			t.Fatalf("first Next: want the agent's error %v at once, got %v", boom, err)
		}
		if n := f.count("health "); n != 1 {
			t.Errorf("queries: want 1, got %d", n)
		}
	})
}

func TestWatchEnds(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		replies []healthReply // before the query that blocks or keeps failing
		failing bool          // every query fails instead of blocking
		end     func(cancel context.CancelFunc, w registry.Watcher)
		timeout time.Duration // for Next's ctx; 0 means none
		want    error
	}{
		{name: "ctx cancelled", end: func(cancel context.CancelFunc, _ registry.Watcher) { cancel() }, want: context.Canceled},
		{name: "ctx deadline", timeout: 20 * time.Millisecond, want: context.DeadlineExceeded},
		{name: "stop", end: func(_ context.CancelFunc, w registry.Watcher) { _ = w.Stop() }, want: context.Canceled},
		{name: "ctx cancelled while retrying", failing: true, end: func(cancel context.CancelFunc, _ registry.Watcher) { cancel() }, want: context.Canceled},
		{name: "stop while retrying", failing: true, end: func(_ context.CancelFunc, w registry.Watcher) { _ = w.Stop() }, want: context.Canceled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.replies = []healthReply{{index: 5, entries: []*api.ServiceEntry{entry("svc-a", "10.0.0.1", 8080, 1)}}}
			if tc.failing {
				for range 1000 {
					f.replies = append(f.replies, healthReply{err: errors.New("agent down")})
				}
			}
			w := watch(t, newTest(t, f))
			if _, err := next(t, t.Context(), w); err != nil {
				t.Fatalf("first Next: want the list, got %v", err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.timeout > 0 {
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			done := make(chan error, 1)
			go func() { _, err := w.Next(ctx); done <- err }()
			if tc.end != nil {
				// End it only once the second query is under way.
				f.waitLog(t, "a second query", func(log []string) bool { return countLocked(log, "health ") >= 2 })
				tc.end(cancel, w)
			}
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Errorf("Next: want %v, got %v", tc.want, err)
				}
			case <-time.After(wait):
				t.Fatalf("Next: want it to end with %v within %v, got no return", tc.want, wait)
			}
		})
	}
}

func TestWatchAfterStop(t *testing.T) {
	t.Parallel()
	f := newFake()
	w := watch(t, newTest(t, f))
	if err := w.Stop(); err != nil {
		t.Fatalf("Stop: want nil, got %v", err)
	}
	if err := w.Stop(); err != nil {
		t.Errorf("second Stop: want nil, got %v", err)
	}
	if _, err := next(t, t.Context(), w); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after Stop: want context.Canceled, got %v", err)
	}
	if n := f.count("health "); n != 0 {
		t.Errorf("queries after Stop: want 0, got %d", n)
	}
}

func TestWatchCtxEndsWatch(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := newTest(t, f)
	ctx, cancel := context.WithCancel(t.Context())
	w, err := r.Watch(ctx, "svc")
	if err != nil {
		t.Fatalf("Watch: want a watcher, got %v", err)
	}
	defer func() { _ = w.Stop() }()
	cancel()
	if _, err := next(t, t.Context(), w); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after the Watch ctx ended: want context.Canceled, got %v", err)
	}
}

func TestWatchEmptyService(t *testing.T) {
	t.Parallel()
	r := newTest(t, newFake())
	w, err := r.Watch(t.Context(), "")
	var re *registry.Error
	if !errors.As(err, &re) || re.Op != "watch" {
		if w != nil {
			_ = w.Stop()
		}
		t.Errorf("Watch(\"\"): want *registry.Error op watch, got %v", err)
	}
}

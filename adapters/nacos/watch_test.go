package nacos

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nacos-group/nacos-sdk-go/v2/model"

	"github.com/lameduck/lameduck/registry"
)

// host is a routable Nacos instance of svc carrying lameduck's ID.
func host(id, ip string, port uint64) model.Instance {
	return model.Instance{
		Ip: ip, Port: port, Weight: 1, Enable: true, Healthy: true, ClusterName: "DEFAULT",
		Metadata: map[string]string{MetaID: id},
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

func wantNext(t *testing.T, w registry.Watcher, want []string) {
	t.Helper()
	list, err := next(t, t.Context(), w)
	if err != nil {
		t.Fatalf("Next: want %v, got error %v", want, err)
	}
	if got := ids(list); !reflect.DeepEqual(got, want) {
		t.Fatalf("Next: want %v, got %v", want, got)
	}
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

func TestWatchInitialListFiltered(t *testing.T) {
	t.Parallel()
	disabled, unhealthy, zero := host("off", "10.0.0.3", 80), host("sick", "10.0.0.4", 80), host("zero", "10.0.0.5", 80)
	disabled.Enable, unhealthy.Healthy, zero.Weight = false, false, 0
	b := host("svc-b", "10.0.0.2", 80)
	b.Metadata["zone"] = "b"
	b.Weight = 2
	f := newFake()
	f.hosts = []model.Instance{b, disabled, host("svc-a", "10.0.0.1", 80), unhealthy, zero}
	w := watch(t, newTest(t, f, WithGroup("G")))
	list, err := next(t, t.Context(), w)
	if err != nil {
		t.Fatalf("Next: want the initial list, got %v", err)
	}
	want := []registry.Instance{
		{Service: "svc", ID: "svc-a", Address: "10.0.0.1", Port: 80, Cluster: "DEFAULT", Weight: 1, Metadata: map[string]string{}},
		{Service: "svc", ID: "svc-b", Address: "10.0.0.2", Port: 80, Cluster: "DEFAULT", Weight: 2, Metadata: map[string]string{"zone": "b"}},
	}
	if !reflect.DeepEqual(list, want) {
		t.Errorf("Next: want %+v, got %+v", want, list)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.subscribed) != 1 || f.subscribed[0].ServiceName != "svc" || f.subscribed[0].GroupName != "G" || f.subscribed[0].SubscribeCallback == nil {
		t.Errorf("Subscribe: want one for svc in group G with a callback, got %+v", f.subscribed)
	}
	if len(f.selects) != 1 || f.selects[0].ServiceName != "svc" || f.selects[0].GroupName != "G" {
		t.Errorf("SelectAllInstances: want one for svc in group G, got %+v", f.selects)
	}
}

func TestWatchPushes(t *testing.T) {
	t.Parallel()
	a, b := host("svc-a", "10.0.0.1", 80), host("svc-b", "10.0.0.2", 80)
	bOff := b
	bOff.Enable = false
	type step struct {
		hosts []model.Instance
		err   error
	}
	cases := []struct {
		name  string
		steps []step   // pushed, in order, before the second Next
		want  []string // what the second Next returns
	}{
		{name: "new instance", steps: []step{{hosts: []model.Instance{a, b}}}, want: []string{"svc-a", "svc-b"}},
		{name: "last instance gone", steps: []step{{hosts: nil}}, want: []string{}},
		{name: "disabled instance dropped", steps: []step{{hosts: []model.Instance{a, bOff}}, {hosts: []model.Instance{bOff}}}, want: []string{}},
		{name: "push errors are ignored", steps: []step{{err: errors.New("server gone")}, {hosts: []model.Instance{b}}}, want: []string{"svc-b"}},
		{name: "same set is not returned again", steps: []step{{hosts: []model.Instance{a}}, {hosts: []model.Instance{a, b}}}, want: []string{"svc-a", "svc-b"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.hosts = []model.Instance{a}
			w := watch(t, newTest(t, f))
			wantNext(t, w, []string{"svc-a"})
			// Pushes collapse: the watcher returns only the newest list, and
			// only when it differs from the last one returned.
			for _, s := range tc.steps {
				f.push(t, s.hosts, s.err)
			}
			wantNext(t, w, tc.want)
		})
	}
}

// TestWatchPushNotReturnedTwice: an unchanged push does not wake Next with
// the same list; Next returns only when the set changes.
func TestWatchPushNotReturnedTwice(t *testing.T) {
	t.Parallel()
	a, b := host("svc-a", "10.0.0.1", 80), host("svc-b", "10.0.0.2", 80)
	f := newFake()
	f.hosts = []model.Instance{a}
	w := watch(t, newTest(t, f))
	wantNext(t, w, []string{"svc-a"})
	done := make(chan nextResult, 1)
	go func() {
		l, err := w.Next(t.Context())
		done <- nextResult{l, err}
	}()
	f.push(t, []model.Instance{a}, nil)
	f.push(t, []model.Instance{a, b}, nil)
	select {
	case r := <-done:
		if r.err != nil || !reflect.DeepEqual(ids(r.list), []string{"svc-a", "svc-b"}) {
			t.Errorf("Next: want [svc-a svc-b], got %v, %v", ids(r.list), r.err)
		}
	case <-time.After(wait):
		t.Fatalf("Next: want the changed list within %v, got no return", wait)
	}
}

// TestWatchPushDuringInitialFetch: a push that lands while the initial
// SelectAllInstances is under way is newer, and the fetch must not
// overwrite it.
func TestWatchPushDuringInitialFetch(t *testing.T) {
	t.Parallel()
	a, b := host("svc-a", "10.0.0.1", 80), host("svc-b", "10.0.0.2", 80)
	f := newFake()
	f.hosts = []model.Instance{a}
	f.beforeReply = func() { f.push(t, []model.Instance{b}, nil) }
	w := watch(t, newTest(t, f))
	wantNext(t, w, []string{"svc-b"})
}

func TestWatchStop(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.hosts = []model.Instance{host("svc-a", "10.0.0.1", 80)}
	r := newTest(t, f)
	w, err := r.Watch(t.Context(), "svc")
	if err != nil {
		t.Fatalf("Watch: want a watcher, got %v", err)
	}
	wantNext(t, w, []string{"svc-a"})
	done := make(chan error, 1)
	go func() { _, err := w.Next(t.Context()); done <- err }()
	for k := range 2 {
		if err := within(t, "Stop", w.Stop); err != nil {
			t.Errorf("Stop %d: want nil, got %v", k, err)
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("blocked Next after Stop: want context.Canceled, got %v", err)
		}
	case <-time.After(wait):
		t.Fatalf("blocked Next: want it to end within %v of Stop, got no return", wait)
	}
	if _, err := next(t, t.Context(), w); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after Stop: want context.Canceled, got %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.unsubscribed) != 1 || len(f.subscribed) != 1 || f.unsubscribed[0] != f.subscribed[0] {
		t.Errorf("Unsubscribe: want one call with the subscribed *vo.SubscribeParam %p, got %v", f.subscribed, f.unsubscribed)
	}
}

func TestWatchNextCtx(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		ctx  func(parent context.Context) (context.Context, context.CancelFunc)
		end  bool
		want error
	}{
		{name: "cancelled", ctx: context.WithCancel, end: true, want: context.Canceled},
		{name: "deadline", ctx: func(p context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(p, 20*time.Millisecond)
		}, want: context.DeadlineExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.hosts = []model.Instance{host("svc-a", "10.0.0.1", 80)}
			w := watch(t, newTest(t, f))
			wantNext(t, w, []string{"svc-a"})
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			if tc.end {
				cancel()
			}
			if _, err := next(t, ctx, w); !errors.Is(err, tc.want) {
				t.Errorf("Next: want %v, got %v", tc.want, err)
			}
		})
	}
}

// TestWatchCtxStops: the ctx given to Watch bounds the whole watch.
func TestWatchCtxStops(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.hosts = []model.Instance{host("svc-a", "10.0.0.1", 80)}
	r := newTest(t, f)
	ctx, cancel := context.WithCancel(t.Context())
	w, err := r.Watch(ctx, "svc")
	if err != nil {
		t.Fatalf("Watch: want a watcher, got %v", err)
	}
	defer func() { _ = w.Stop() }()
	cancel()
	f.waitFor(t, "Unsubscribe after the Watch ctx ended", func(f *fakeNacos) bool { return len(f.unsubscribed) == 1 })
	if _, err := next(t, t.Context(), w); !errors.Is(err, context.Canceled) {
		t.Errorf("Next: want context.Canceled, got %v", err)
	}
}

// TestWatchCtxEndsDuringSetup ends the Watch ctx just as the initial fetch
// answers, so the watch may be stopped while Watch is still returning.
func TestWatchCtxEndsDuringSetup(t *testing.T) {
	t.Parallel()
	for range 20 {
		f := newFake()
		f.hosts = []model.Instance{host("svc-a", "10.0.0.1", 80)}
		r := newTest(t, f)
		ctx, cancel := context.WithCancel(t.Context())
		f.beforeReply = cancel
		w, err := r.Watch(ctx, "svc")
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Watch: want a watcher or context.Canceled, got %v", err)
			}
		} else {
			f.waitFor(t, "Unsubscribe after the Watch ctx ended", func(f *fakeNacos) bool { return len(f.unsubscribed) == 1 })
			_ = w.Stop()
		}
		f.mu.Lock()
		n := len(f.unsubscribed)
		f.mu.Unlock()
		if n != 1 {
			t.Fatalf("Unsubscribe calls: want 1, got %d", n)
		}
	}
}

func TestWatchSetupErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("no route")
	cases := []struct {
		name      string
		service   string
		subErr    error
		selectErr error
		wantUnsub int
	}{
		{name: "empty service", service: ""},
		{name: "subscribe fails", service: "svc", subErr: boom},
		{name: "initial fetch fails", service: "svc", selectErr: boom, wantUnsub: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.subErr, f.selectErr = tc.subErr, tc.selectErr
			r := newTest(t, f)
			w, err := r.Watch(t.Context(), tc.service)
			var re *registry.Error
			if !errors.As(err, &re) || re.Op != "watch" {
				if w != nil {
					_ = w.Stop()
				}
				t.Fatalf("Watch: want *registry.Error op watch, got %v", err)
			}
			for _, want := range []error{tc.subErr, tc.selectErr} {
				if want != nil && !errors.Is(err, want) {
					t.Errorf("Watch: want an error wrapping %v, got %v", want, err)
				}
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.unsubscribed) != tc.wantUnsub {
				t.Errorf("Unsubscribe calls: want %d, got %d", tc.wantUnsub, len(f.unsubscribed))
			}
		})
	}
}

package nacos

import (
	"cmp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nacos-group/nacos-sdk-go/v2/model"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

// fakeNacos is a naming client that records every call and answers from
// the fields the test sets. Every call wakes waiters on signal.
type fakeNacos struct {
	signal chan struct{} // capacity 1; written after every recorded call

	// block, when set, holds every call except CloseClient until it is
	// closed, like an SDK call stuck on a dead server.
	block chan struct{}

	mu           sync.Mutex
	log          []string // "batch" or "deregister", in call order
	batches      []vo.BatchRegisterInstanceParam
	deregisters  []vo.DeregisterInstanceParam
	selects      []vo.SelectAllInstancesParam
	subscribed   []*vo.SubscribeParam
	unsubscribed []*vo.SubscribeParam
	closes       int
	started      int // calls that have begun (including blocked ones)

	ok          bool // what the write calls answer; newFake sets true
	err         error
	subErr      error
	hosts       []model.Instance
	selectErr   error
	beforeReply func() // run by SelectAllInstances before it answers
}

func newFake() *fakeNacos { return &fakeNacos{signal: make(chan struct{}, 1), ok: true} }

var _ client = (*fakeNacos)(nil)

func (f *fakeNacos) wake() {
	select {
	case f.signal <- struct{}{}:
	default:
	}
}

// begin counts a call, wakes waiters and blocks if the test asked for it.
func (f *fakeNacos) begin() {
	f.mu.Lock()
	f.started++
	block := f.block
	f.mu.Unlock()
	f.wake()
	if block != nil {
		<-block
	}
}

func (f *fakeNacos) BatchRegisterInstance(p vo.BatchRegisterInstanceParam) (bool, error) {
	f.begin()
	f.mu.Lock()
	defer f.mu.Unlock()
	// The backend builds the batch from a map; sort it so tests can compare.
	p.Instances = slices.Clone(p.Instances)
	slices.SortFunc(p.Instances, func(a, b vo.RegisterInstanceParam) int { return cmp.Compare(a.Port, b.Port) })
	f.batches = append(f.batches, p)
	f.log = append(f.log, "batch")
	return f.ok, f.err
}

func (f *fakeNacos) DeregisterInstance(p vo.DeregisterInstanceParam) (bool, error) {
	f.begin()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deregisters = append(f.deregisters, p)
	f.log = append(f.log, "deregister")
	return f.ok, f.err
}

func (f *fakeNacos) SelectAllInstances(p vo.SelectAllInstancesParam) ([]model.Instance, error) {
	f.begin()
	f.mu.Lock()
	f.selects = append(f.selects, p)
	hosts, err, hook := f.hosts, f.selectErr, f.beforeReply
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return hosts, err
}

func (f *fakeNacos) Subscribe(p *vo.SubscribeParam) error {
	f.begin()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subscribed = append(f.subscribed, p)
	return f.subErr
}

func (f *fakeNacos) Unsubscribe(p *vo.SubscribeParam) error {
	f.begin()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unsubscribed = append(f.unsubscribed, p)
	return nil
}

func (f *fakeNacos) CloseClient() {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
}

// set changes the fake's behaviour under its lock.
func (f *fakeNacos) set(change func(f *fakeNacos)) {
	f.mu.Lock()
	change(f)
	f.mu.Unlock()
}

// push delivers hosts through the callback the watcher subscribed with, as
// the SDK does on a server push.
func (f *fakeNacos) push(t *testing.T, hosts []model.Instance, err error) {
	t.Helper()
	f.mu.Lock()
	if len(f.subscribed) == 0 {
		f.mu.Unlock()
		t.Fatalf("push: want a subscription, got none")
	}
	cb := f.subscribed[len(f.subscribed)-1].SubscribeCallback
	f.mu.Unlock()
	cb(hosts, err)
}

// waitFor blocks until cond (run under the fake's lock) holds, failing the
// test after wait. It wakes on every call, so it never polls on a timer.
func (f *fakeNacos) waitFor(t *testing.T, what string, cond func(f *fakeNacos) bool) {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		ok := cond(f)
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-f.signal:
		case <-timer.C:
			t.Fatalf("want %s within %v, got none", what, wait)
		}
	}
}

// newTest returns a Registry on f, closed when the test ends.
func newTest(t *testing.T, f *fakeNacos, opts ...Option) *Registry {
	t.Helper()
	r, err := New(append([]Option{WithAddress("127.0.0.1:8848"), withClient(f), withoutAdminAPI()}, opts...)...)
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// within runs f and fails the test unless it returns within wait.
func within[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(wait):
		t.Fatalf("want %s to return within %v, got no return", what, wait)
		panic("unreachable")
	}
}

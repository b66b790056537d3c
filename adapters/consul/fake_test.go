package consul

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/internal/backoff"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

// fastBackoff keeps retry tests quick; the policy's shape is backoff's own
// business.
var fastBackoff = backoff.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}

func withBackoff(p backoff.Policy) Option { return func(o *options) { o.backoff = p } }

var errNotFound = api.StatusError{Code: http.StatusNotFound, Body: "unknown service"}

// healthReply is one scripted answer to a blocking query.
type healthReply struct {
	entries []*api.ServiceEntry
	index   uint64
	err     error
}

// fakeConsul is a client that records every call as a line in log and
// answers from the fields the test sets. Every call wakes waitLog.
type fakeConsul struct {
	nodeGen  int           // AgentNodeID's answers
	sameNode bool          // AgentNodeID always answers the same: the agent never restarts
	signal   chan struct{} // capacity 1; written after every recorded call

	mu       sync.Mutex
	log      []string
	regs     []*api.AgentServiceRegistration
	regOpts  []api.ServiceRegisterOpts
	waitIdx  []uint64          // WaitIndex of each health query
	stale    []bool            // AllowStale of each health query
	register error             // returned by ServiceRegisterOpts
	dereg    error             // returned by ServiceDeregisterOpts
	maint    error             // returned by the maintenance calls
	lose     bool              // the next UpdateTTL, AgentService or health look answers 404 (the agent forgot)
	gone     bool              // every look answers 404 until a register (someone deregistered)
	maintOn  map[string]bool   // services in maintenance mode
	lastKey  map[string]string // HealthChecks' last answer per service ID; see answered
	ttlErr   error             // returned by UpdateTTL when lose is false
	blockTTL bool              // UpdateTTL blocks until its ctx ends
	replies  []healthReply
	peers    []string           // StatusPeers' answer
	peersErr error              // returned by StatusPeers and LANMembers
	members  []*api.AgentMember // LANMembers' answer
}

func newFake() *fakeConsul { return &fakeConsul{signal: make(chan struct{}, 1)} }

// record appends a line to the log; the caller holds f.mu.
func (f *fakeConsul) record(format string, args ...any) {
	f.log = append(f.log, fmt.Sprintf(format, args...))
}

func (f *fakeConsul) wake() {
	select {
	case f.signal <- struct{}{}:
	default:
	}
}

func (f *fakeConsul) ServiceRegisterOpts(s *api.AgentServiceRegistration, o api.ServiceRegisterOpts) error {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("register %s", s.ID)
	f.gone = false
	f.regs = append(f.regs, s)
	f.regOpts = append(f.regOpts, o)
	return f.register
}

func (f *fakeConsul) ServiceDeregisterOpts(id string, _ *api.QueryOptions) error {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("deregister %s", id)
	return f.dereg
}

func (f *fakeConsul) EnableServiceMaintenanceOpts(id, _ string, _ *api.QueryOptions) error {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("maintenance on %s", id)
	if f.maint == nil {
		f.setMaintLocked(id, true)
	}
	return f.maint
}

func (f *fakeConsul) DisableServiceMaintenanceOpts(id string, _ *api.QueryOptions) error {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("maintenance off %s", id)
	if f.maint == nil {
		f.setMaintLocked(id, false)
	}
	return f.maint
}

func (f *fakeConsul) UpdateTTLOpts(checkID, note, status string, q *api.QueryOptions) error {
	f.mu.Lock()
	f.record("ttl %s %s %q", checkID, status, note)
	lose, block, err := f.lose || f.gone, f.blockTTL, f.ttlErr
	f.lose = false
	f.mu.Unlock()
	f.wake()
	if block {
		<-q.Context().Done()
		return q.Context().Err()
	}
	if lose {
		return errNotFound
	}
	return err
}

// HealthChecks answers a blocking query like the catalog: the service's
// checks (its own and, in maintenance mode, the maintenance check) at
// index 1 when WaitIndex differs, and otherwise blocks until they change
// (index 2 onwards) or ctx ends.
func (f *fakeConsul) HealthChecks(service string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	f.mu.Lock()
	f.record("watch %s", service)
	f.mu.Unlock()
	f.wake()
	id := strings.TrimSuffix(strings.TrimPrefix(q.Filter, `ServiceID == "`), `"`)
	state := func() (api.HealthChecks, string) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.lose || f.gone {
			return nil, "gone"
		}
		checks := api.HealthChecks{{CheckID: checkID(id), ServiceID: id}}
		if f.maintOn[id] {
			checks = append(checks, &api.HealthCheck{CheckID: maintCheckPrefix + id, ServiceID: id})
			return checks, "maint"
		}
		return checks, "listed"
	}
	checks, key := state()
	for q.WaitIndex != 0 && key == f.answered(id, "") {
		select {
		case <-q.Context().Done():
			return nil, nil, q.Context().Err()
		case <-time.After(time.Millisecond):
		}
		checks, key = state()
	}
	f.answered(id, key)
	return checks, &api.QueryMeta{LastIndex: q.WaitIndex + 1}, nil
}

// answered returns the state HealthChecks last answered for id, and
// records key as the new one unless key is empty.
func (f *fakeConsul) answered(id, key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lastKey == nil {
		f.lastKey = map[string]string{}
	}
	last := f.lastKey[id]
	if key != "" {
		f.lastKey[id] = key
	}
	return last
}

// AgentHealthServiceByIDOpts answers like the SDK: (critical, nil, nil) for
// an unknown service, and the aggregated status with maintenance mode.
func (f *fakeConsul) AgentHealthServiceByIDOpts(id string, _ *api.QueryOptions) (string, *api.AgentServiceChecksInfo, error) {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("health-id %s", id)
	if f.lose || f.gone {
		f.lose = false
		return api.HealthCritical, nil, nil
	}
	status := api.HealthPassing
	if f.maintOn[id] {
		status = api.HealthMaint
	}
	return status, &api.AgentServiceChecksInfo{AggregatedStatus: status}, nil
}

func (f *fakeConsul) setMaintLocked(id string, on bool) {
	if f.maintOn == nil {
		f.maintOn = map[string]bool{}
	}
	f.maintOn[id] = on
}

// HealthService answers from replies in order; once they run out it blocks
// like a blocking query with nothing new, until its ctx ends.
func (f *fakeConsul) HealthService(service, _ string, passing bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	f.mu.Lock()
	f.record("health %s passing=%v index=%d", service, passing, q.WaitIndex)
	f.waitIdx = append(f.waitIdx, q.WaitIndex)
	f.stale = append(f.stale, q.AllowStale)
	var r *healthReply
	if len(f.replies) > 0 {
		r = &f.replies[0]
		f.replies = f.replies[1:]
	}
	f.mu.Unlock()
	f.wake()
	if r == nil {
		<-q.Context().Done()
		return nil, nil, q.Context().Err()
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	return r.entries, &api.QueryMeta{LastIndex: r.index}, nil
}

func (f *fakeConsul) CatalogDeregister(d *api.CatalogDeregistration, _ *api.WriteOptions) error {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("catalog-deregister %s %s", d.Node, d.ServiceID)
	return f.dereg
}

func (f *fakeConsul) StatusPeers(_ *api.QueryOptions) ([]string, error) {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("peers")
	return f.peers, f.peersErr
}

func (f *fakeConsul) LANMembers(_ *api.QueryOptions) ([]*api.AgentMember, error) {
	defer f.wake()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("members")
	return f.members, f.peersErr
}

func (f *fakeConsul) AgentNodeID(_ *api.QueryOptions) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sameNode {
		return "node-0", nil
	}
	f.nodeGen++ // a fake agent that restarts at every look: it always lost its state
	return fmt.Sprintf("node-%d", f.nodeGen), nil
}

// set changes the fake's behaviour under its lock.
func (f *fakeConsul) set(change func(f *fakeConsul)) {
	f.mu.Lock()
	change(f)
	f.mu.Unlock()
}

// calls returns a copy of the log.
func (f *fakeConsul) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// count returns how many log lines start with prefix.
func (f *fakeConsul) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return countLocked(f.log, prefix)
}

func countLocked(log []string, prefix string) int {
	n := 0
	for _, l := range log {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// waitLog blocks until cond holds for the log, failing the test after wait.
// It wakes on every call the fake records, so it never polls on a timer.
func (f *fakeConsul) waitLog(t *testing.T, what string, cond func(log []string) bool) []string {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		log := f.calls()
		if cond(log) {
			return log
		}
		select {
		case <-f.signal:
		case <-timer.C:
			t.Fatalf("want %s within %v, got calls:\n%s", what, wait, strings.Join(log, "\n"))
		}
	}
}

// newTest returns a Registry on a fake client, closed when the test ends.
func newTest(t *testing.T, f *fakeConsul, opts ...Option) *Registry {
	t.Helper()
	opts = append([]Option{WithAddress("127.0.0.1:8500"), withClient(f), withBackoff(fastBackoff)}, opts...)
	r, err := New(opts...)
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// within runs f and fails the test if it does not return within wait.
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

// ensure the fake satisfies the interface the backend needs.
var _ client = (*fakeConsul)(nil)

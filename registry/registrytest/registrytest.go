// Package registrytest is the contract every registry.Registry backend must
// meet, written once and run against each: the memory registry in unit tests,
// real Consul and Nacos servers in integration tests.
//
// A backend's test file describes the backend with a Harness and calls Run:
//
//	func TestContract(t *testing.T) {
//		registrytest.Run(t, registrytest.Harness{
//			New: func(t *testing.T) registry.Registry { return newClient(t) },
//		})
//	}
//
// Every wait in the suite is event-driven (a Watcher's Next) or, for a
// Harness.Consumer, bounded polling; each is limited by Harness.Timeout and
// none sleeps to synchronise.
package registrytest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/registry"
)

// DefaultTimeout bounds each wait for propagation when Harness.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// DefaultPollInterval is how often Harness.Consumer is polled when
// Harness.PollInterval is 0.
const DefaultPollInterval = 100 * time.Millisecond

// Harness describes a backend to Run. Only New is required; the zero value of
// every other field selects the default documented on it.
type Harness struct {
	// New returns a client of the backend under test, ready to use, and
	// registers its own cleanup with t.Cleanup. Every registry New returns
	// within one Run must reach the same backend state: the suite calls New
	// again for the independent consumer (see Consumer), and a second client
	// must see what the first registered. Tests are isolated from each other
	// by service name, not by backend.
	New func(t *testing.T) registry.Registry

	// Service returns the service name for the running test. It must differ
	// between tests and between runs that share a server. The default is
	// UniqueService.
	Service func(t *testing.T) string

	// Instance returns the n-th test instance (n = 0, 1, 2, ...) of
	// service. Instances with different n must differ in Key. Override it
	// when the backend needs particular fields (a reachable IP, a Nacos
	// group or cluster). The default is DefaultInstance.
	Instance func(service string, n int) registry.Instance

	// Timeout bounds every wait for a change to propagate. The default is
	// DefaultTimeout.
	Timeout time.Duration

	// Consumer, when set, reports what a client independent of the
	// registry under test sees of service now (for Consul, a health query
	// through another agent; for Nacos, a separate naming client). The
	// suite polls it every PollInterval until the state it expects, or
	// Timeout. When nil, the suite watches service through a second
	// registry from New and waits on its snapshots.
	Consumer func(ctx context.Context, service string) ([]registry.Instance, error)

	// PollInterval is how often Consumer is polled. The default is
	// DefaultPollInterval. Unused when Consumer is nil.
	PollInterval time.Duration

	// IgnoreTags and IgnoreMetadata skip the check that tags and metadata
	// survive the round trip, for backends that drop them. When checked,
	// extra tags and metadata keys that the backend adds are tolerated;
	// missing or changed ones are not.
	IgnoreTags     bool
	IgnoreMetadata bool

	// Serial runs the cases one after another. By default they run in
	// parallel (t.Parallel), which the unique service names make safe.
	Serial bool
}

func (h *Harness) configureDefaults() {
	if h.Service == nil {
		h.Service = UniqueService
	}
	if h.Instance == nil {
		h.Instance = DefaultInstance
	}
	if h.Timeout <= 0 {
		h.Timeout = DefaultTimeout
	}
	if h.PollInterval <= 0 {
		h.PollInterval = DefaultPollInterval
	}
}

// UniqueService returns a service name made of the test's name and a random
// suffix, using only letters, digits and '-', which every backend accepts.
func UniqueService(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, t.Name())
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return "ldt-" + strings.Trim(name, "-") + "-" + hex.EncodeToString(b[:])
}

// DefaultInstance returns an instance of service on 127.0.0.1, port
// 20000+n, with one tag and one metadata pair that name n. It leaves ID
// empty so that matching is by endpoint, which every backend supports.
func DefaultInstance(service string, n int) registry.Instance {
	return registry.Instance{
		Service:  service,
		Address:  "127.0.0.1",
		Port:     20000 + n,
		Tags:     []string{"lameduck-test", fmt.Sprintf("n%d", n)},
		Metadata: map[string]string{"lameduck-test": fmt.Sprint(n)},
	}
}

// Run runs the contract suite against the backend h describes, one t.Run per
// case. A case that needs an optional capability (registry.Disabler,
// registry.HealthSetter) the backend lacks is skipped; nothing else skips.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("registrytest: Harness.New is nil; want a constructor for the registry under test")
	}
	h.configureDefaults()
	cases := []struct {
		name string
		f    func(*testing.T, *env)
	}{
		{"RegisterThenWatch", testRegisterThenWatch},
		{"DeregisterConfirmed", testDeregisterConfirmed},
		{"DeregisterUnknownAndTwice", testDeregisterUnknownAndTwice},
		{"RegisterIdempotent", testRegisterIdempotent},
		{"RemoveOneOfTwo", testRemoveOneOfTwo},
		{"DisableEnable", testDisableEnable},
		{"HealthHidesAndRestores", testHealth},
		{"WatchWholeSnapshots", testWatchWholeSnapshots},
		{"WatcherCancelAndStop", testWatcherCancelAndStop},
		{"RegisterRejectsInvalid", testRegisterRejectsInvalid},
		{"HonoursCanceledContext", testCanceledContext},
		{"GoneWatchDeadline", testGoneWatchDeadline},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !h.Serial {
				t.Parallel()
			}
			c.f(t, newEnv(t, &h))
		})
	}
}

// env is one case's world: the registry under test, its service, and the
// consumer's view of it.
type env struct {
	h        *Harness
	reg      registry.Registry
	service  string
	consumer view
}

func newEnv(t *testing.T, h *Harness) *env {
	t.Helper()
	e := &env{h: h, reg: h.New(t), service: h.Service(t)}
	if e.reg == nil {
		t.Fatal("registrytest: Harness.New returned nil; want a registry")
	}
	if h.Consumer != nil {
		e.consumer = &pollView{f: h.Consumer, service: e.service, every: h.PollInterval, timeout: h.Timeout}
		return e
	}
	peer := h.New(t)
	if peer == nil {
		t.Fatal("registrytest: Harness.New returned nil; want a registry")
	}
	e.consumer = &watchView{reg: peer, service: e.service, timeout: h.Timeout}
	return e
}

func (e *env) inst(n int) registry.Instance { return e.h.Instance(e.service, n) }

// ctx returns a context that ends after one Timeout and with the test.
func (e *env) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), e.h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) register(t *testing.T, in ...registry.Instance) {
	t.Helper()
	for _, i := range in {
		if err := e.reg.Register(e.ctx(t), i); err != nil {
			t.Fatalf("Register(%s) on %s: want nil error, got %v", show(i), e.reg, err)
		}
	}
	// Best effort: leave nothing behind on a shared server.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), e.h.Timeout)
		defer cancel()
		for _, i := range in {
			_ = e.reg.Deregister(ctx, i)
		}
	})
}

func (e *env) deregister(t *testing.T, i registry.Instance) {
	t.Helper()
	if err := e.reg.Deregister(e.ctx(t), i); err != nil {
		t.Fatalf("Deregister(%s) on %s: want nil error, got %v", show(i), e.reg, err)
	}
}

// confirmGone opens a registry.GoneWatch on i in the registry under test,
// makes change, and fails the test unless the watch confirms i gone within
// Timeout. The watch is opened first because one opened after the change
// reads the registry's current state, which proves nothing.
func (e *env) confirmGone(t *testing.T, i registry.Instance, change func()) {
	t.Helper()
	ctx := e.ctx(t)
	g, err := registry.WatchGone(ctx, e.reg, i, registry.GoneOptions{})
	if err != nil {
		t.Fatalf("WatchGone(%s) on %s: want a watch, got %v", show(i), e.reg, err)
	}
	defer g.Stop()
	change()
	if err := bounded(t, e.h.Timeout+5*time.Second, func() error { return g.Wait(ctx) }); err != nil {
		t.Fatalf("GoneWatch.Wait(%s) on %s: want nil error within %v, got %v", show(i), e.reg, e.h.Timeout, err)
	}
}

// freshList returns the first list of a new watch on the registry under test.
func (e *env) freshList(t *testing.T) []registry.Instance {
	t.Helper()
	ctx := e.ctx(t)
	w, err := e.reg.Watch(ctx, e.service)
	if err != nil {
		t.Fatalf("Watch(%q) on %s: want nil error, got %v", e.service, e.reg, err)
	}
	defer w.Stop()
	list, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("first Next of a watch on %s: want the current list, got error %v", e.reg, err)
	}
	return list
}

// bounded runs f in its own goroutine and returns its error, failing the
// test if f has not returned within d: a hung backend call must not hang the
// whole test binary until go test's own timeout.
func bounded(t *testing.T, d time.Duration, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		t.Fatalf("call did not return within %v; want it to honour its context", d)
		return nil
	}
}

// view is what a consumer independent of the registry under test sees.
type view interface {
	// await returns the first list that ok accepts, failing t with want in
	// the message if none comes within the timeout.
	await(t *testing.T, want string, ok func([]registry.Instance) bool) []registry.Instance
}

// watchView waits on a watch through a second registry.
type watchView struct {
	reg     registry.Registry
	service string
	timeout time.Duration
	w       registry.Watcher
	last    []registry.Instance
	any     bool
}

func (v *watchView) await(t *testing.T, want string, ok func([]registry.Instance) bool) []registry.Instance {
	t.Helper()
	if v.w == nil {
		w, err := v.reg.Watch(t.Context(), v.service)
		if err != nil {
			t.Fatalf("consumer Watch(%q) on %s: want nil error, got %v", v.service, v.reg, err)
		}
		t.Cleanup(func() { _ = w.Stop() })
		v.w = w
	}
	if v.any && ok(v.last) {
		return v.last
	}
	ctx, cancel := context.WithTimeout(t.Context(), v.timeout)
	defer cancel()
	for {
		list, err := v.w.Next(ctx)
		if err != nil {
			t.Fatalf("consumer watch on %s: want %s within %v, got error %v (last list %s)", v.reg, want, v.timeout, err, showList(v.last))
		}
		v.last, v.any = list, true
		if ok(list) {
			return list
		}
	}
}

// pollView polls Harness.Consumer.
type pollView struct {
	f       func(context.Context, string) ([]registry.Instance, error)
	service string
	every   time.Duration
	timeout time.Duration
}

func (v *pollView) await(t *testing.T, want string, ok func([]registry.Instance) bool) []registry.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), v.timeout)
	defer cancel()
	tick := time.NewTicker(v.every)
	defer tick.Stop()
	var last []registry.Instance
	var lastErr error
	for {
		list, err := v.f(ctx, v.service)
		if err == nil && ok(list) {
			return list
		}
		if err == nil {
			last = list
		}
		lastErr = err
		select {
		case <-ctx.Done():
			t.Fatalf("consumer of %q: want %s within %v, got %s (last error %v)", v.service, want, v.timeout, showList(last), lastErr)
			return nil
		case <-tick.C:
		}
	}
}

func has(i registry.Instance) func([]registry.Instance) bool {
	return func(l []registry.Instance) bool { return registry.Contains(l, i) }
}

func lacks(i registry.Instance) func([]registry.Instance) bool {
	return func(l []registry.Instance) bool { return !registry.Contains(l, i) }
}

func all(fs ...func([]registry.Instance) bool) func([]registry.Instance) bool {
	return func(l []registry.Instance) bool {
		for _, f := range fs {
			if !f(l) {
				return false
			}
		}
		return true
	}
}

// count returns how many entries of list are i.
func count(list []registry.Instance, i registry.Instance) int {
	n := 0
	for _, o := range list {
		if o.Same(i) {
			n++
		}
	}
	return n
}

func find(list []registry.Instance, i registry.Instance) (registry.Instance, bool) {
	for _, o := range list {
		if o.Same(i) {
			return o, true
		}
	}
	return registry.Instance{}, false
}

func show(i registry.Instance) string {
	s := i.Service + "/" + i.Endpoint()
	if i.ID != "" {
		s += "#" + i.ID
	}
	return s
}

func showList(l []registry.Instance) string {
	parts := make([]string, len(l))
	for k, i := range l {
		parts[k] = show(i)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// sameList reports whether a and b hold the same instances with the same
// fields, in any order: the test of "the list differs" that Watcher.Next
// promises.
func sameList(a, b []registry.Instance) bool {
	if len(a) != len(b) {
		return false
	}
	used := make([]bool, len(b))
outer:
	for _, x := range a {
		for k, y := range b {
			if !used[k] && instanceEqual(x, y) {
				used[k] = true
				continue outer
			}
		}
		return false
	}
	return true
}

func instanceEqual(x, y registry.Instance) bool {
	return x.Service == y.Service && x.ID == y.ID && x.Address == y.Address && x.Port == y.Port &&
		slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Metadata, y.Metadata) &&
		x.Namespace == y.Namespace && x.Group == y.Group && x.Cluster == y.Cluster && x.Weight == y.Weight
}

// checkFields reports how got, as a consumer saw it, lost what want set.
func (e *env) checkFields(t *testing.T, want, got registry.Instance) {
	t.Helper()
	if got.Address != want.Address || got.Port != want.Port {
		t.Errorf("consumer sees endpoint: want %s, got %s", want.Endpoint(), got.Endpoint())
	}
	if got.Service != want.Service {
		t.Errorf("consumer sees service: want %q, got %q", want.Service, got.Service)
	}
	if !e.h.IgnoreTags {
		for _, tag := range want.Tags {
			if !slices.Contains(got.Tags, tag) {
				t.Errorf("consumer sees tags: want %q among them, got %q", tag, got.Tags)
			}
		}
	}
	if !e.h.IgnoreMetadata {
		for k, v := range want.Metadata {
			if gv, ok := got.Metadata[k]; !ok || gv != v {
				t.Errorf("consumer sees metadata[%q]: want %q, got %q (present %v)", k, v, gv, ok)
			}
		}
	}
}

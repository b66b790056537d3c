package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/registry"
)

// cluster is a Viewer made of memory registries: the embedded one is where
// the instance is registered, and each node is a server's own copy, which
// the test changes by hand to play a lagging or dead server.
type cluster struct {
	*memory.Registry
	nodes []*node
}

func (c *cluster) Views(context.Context) ([]registry.View, error) {
	out := make([]registry.View, len(c.nodes))
	for k, n := range c.nodes {
		out[k] = n
	}
	return out, nil
}

// node is one server of a cluster. RemoveAgain removes the instance from
// every live node, as a commit through a live server would.
type node struct {
	reg *memory.Registry
	c   *cluster

	mu      sync.Mutex
	dead    chan struct{} // closed when the node goes down
	removes int
}

var errNodeDown = errors.New("node down")

func (n *node) String() string { return n.reg.String() }

func (n *node) isDown() bool {
	select {
	case <-n.dead:
		return true
	default:
		return false
	}
}

func (n *node) kill() { close(n.dead) }

func (n *node) Watch(ctx context.Context, service string) (registry.Watcher, error) {
	w, err := n.reg.Watch(ctx, service)
	if err != nil {
		return nil, err
	}
	return &nodeWatcher{n: n, w: w}, nil
}

func (n *node) RemoveAgain(ctx context.Context, i registry.Instance, _ bool) error {
	if n.isDown() {
		return errNodeDown
	}
	n.mu.Lock()
	n.removes++
	n.mu.Unlock()
	for _, o := range n.c.nodes {
		if !o.isDown() {
			if err := o.reg.Deregister(ctx, i); err != nil {
				return err
			}
		}
	}
	return nil
}

func (n *node) removeCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.removes
}

type nodeWatcher struct {
	n *node
	w registry.Watcher
}

// Next fails while the node is down, and when it goes down mid-wait.
func (w *nodeWatcher) Next(ctx context.Context) ([]registry.Instance, error) {
	if w.n.isDown() {
		return nil, errNodeDown
	}
	nctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-w.n.dead:
			cancel()
		case <-nctx.Done():
		}
	}()
	list, err := w.w.Next(nctx)
	if err != nil && ctx.Err() == nil && w.n.isDown() {
		return nil, errNodeDown
	}
	return list, err
}

func (w *nodeWatcher) Stop() error { return w.w.Stop() }

func newCluster(t *testing.T, nodes int, i registry.Instance) *cluster {
	t.Helper()
	c := &cluster{Registry: newMem(t, "memory://own")}
	for k := range nodes {
		n := &node{reg: newMem(t, fmt.Sprintf("memory://node%d", k+1)), c: c, dead: make(chan struct{})}
		c.nodes = append(c.nodes, n)
		mustRegister(t, n.reg, i)
	}
	mustRegister(t, c.Registry, i)
	return c
}

// viewLog collects ViewEvents.
type viewLog struct {
	mu     sync.Mutex
	events []registry.ViewEvent
}

func (l *viewLog) add(e registry.ViewEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *viewLog) has(kind registry.ViewEventKind, view string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.events, func(e registry.ViewEvent) bool { return e.Kind == kind && e.View == view })
}

func (l *viewLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := ""
	for _, e := range l.events {
		s += fmt.Sprintf("\n  %s %s %v", e.Kind, e.View, e.Err)
	}
	return s
}

func openGone(t *testing.T, c *cluster, i registry.Instance, o registry.GoneOptions) *registry.GoneWatch {
	t.Helper()
	g, err := registry.WatchGone(t.Context(), c, i, o)
	if err != nil {
		t.Fatalf("WatchGone on a cluster: want a watch, got %v", err)
	}
	t.Cleanup(g.Stop)
	if !g.Listed() {
		t.Fatalf("WatchGone: want the first lists to hold %s", i.Key())
	}
	return g
}

func waitAsync(ctx context.Context, g *registry.GoneWatch) <-chan error {
	done := make(chan error, 1)
	go func() { done <- g.Wait(ctx) }()
	return done
}

// TestGoneWatchWaitsForEveryView: the registry's own watch dropping the
// instance is not enough while one server still lists it.
func TestGoneWatchWaitsForEveryView(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := newCluster(t, 2, i)
	var log viewLog
	g := openGone(t, c, i, registry.GoneOptions{OnView: log.add, RemoveAgainAfter: time.Hour})
	done := waitAsync(t.Context(), g)

	mustDeregister(t, c.Registry, i)
	mustDeregister(t, c.nodes[0].reg, i)
	select {
	case err := <-done:
		t.Fatalf("Wait returned (%v) while %s still lists %s; want it to wait", err, c.nodes[1], i.Key())
	case <-time.After(100 * time.Millisecond):
	}
	if got := g.Pending(); !slices.Equal(got, []string{"memory://node2"}) {
		t.Errorf("Pending: want [memory://node2], got %v", got)
	}
	mustDeregister(t, c.nodes[1].reg, i)
	if err := result(t, done, "Wait"); err != nil {
		t.Fatalf("Wait once every view dropped the instance: want nil, got %v", err)
	}
	for _, n := range c.nodes {
		if !log.has(registry.ViewGone, n.String()) {
			t.Errorf("want a %s event for %s, got:%s", registry.ViewGone, n, &log)
		}
	}
}

// TestGoneWatchSkipsDownView: a server that does not answer holds nothing
// up, and is reported.
func TestGoneWatchSkipsDownView(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := newCluster(t, 2, i)
	c.nodes[1].kill()
	var log viewLog
	g := openGone(t, c, i, registry.GoneOptions{OnView: log.add, RemoveAgainAfter: time.Hour})
	done := waitAsync(t.Context(), g)
	mustDeregister(t, c.Registry, i)
	mustDeregister(t, c.nodes[0].reg, i)
	if err := result(t, done, "Wait"); err != nil {
		t.Fatalf("Wait with one view down: want nil once the live ones dropped the instance, got %v", err)
	}
	if !log.has(registry.ViewDown, "memory://node2") {
		t.Errorf("want a %s event for memory://node2, got:%s", registry.ViewDown, &log)
	}
}

// TestGoneWatchRemovesAgainWhenLate: a server still listing the instance
// RemoveAgainAfter into the wait gets the removal again through a live one.
func TestGoneWatchRemovesAgainWhenLate(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := newCluster(t, 2, i)
	var log viewLog
	g := openGone(t, c, i, registry.GoneOptions{OnView: log.add, RemoveAgainAfter: 20 * time.Millisecond})
	done := waitAsync(t.Context(), g)
	mustDeregister(t, c.Registry, i)
	mustDeregister(t, c.nodes[0].reg, i)
	if err := result(t, done, "Wait"); err != nil {
		t.Fatalf("Wait with a lagging view: want nil once the removal was made again, got %v", err)
	}
	// The view still listing the instance is tried first.
	if got := c.nodes[1].removeCount(); got < 1 {
		t.Errorf("RemoveAgain on memory://node2: want at least 1 call, got %d; events:%s", got, &log)
	}
	if !log.has(registry.ViewRemovedAgain, "memory://node2") {
		t.Errorf("want a %s event for memory://node2, got:%s", registry.ViewRemovedAgain, &log)
	}
}

// TestGoneWatchRemovesAgainWhenViewDies: a server dying while another still
// lists the instance sends the removal again at once, without waiting for
// RemoveAgainAfter, through a live server.
func TestGoneWatchRemovesAgainWhenViewDies(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := newCluster(t, 2, i)
	var log viewLog
	g := openGone(t, c, i, registry.GoneOptions{OnView: log.add, RemoveAgainAfter: time.Hour})
	done := waitAsync(t.Context(), g)
	mustDeregister(t, c.Registry, i)
	c.nodes[0].kill()
	if err := result(t, done, "Wait"); err != nil {
		t.Fatalf("Wait after a server died: want nil once the removal was made again, got %v", err)
	}
	if got := c.nodes[0].removeCount(); got != 0 {
		t.Errorf("RemoveAgain on the dead memory://node1: want 0 calls, got %d", got)
	}
	if got := c.nodes[1].removeCount(); got != 1 {
		t.Errorf("RemoveAgain on memory://node2: want 1 call, got %d; events:%s", got, &log)
	}
}

// TestGoneWatchDeadlineNamesPending: when ctx ends first, Wait returns its
// error and Pending names the server still listing the instance.
func TestGoneWatchDeadlineNamesPending(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := newCluster(t, 1, i)
	g := openGone(t, c, i, registry.GoneOptions{RemoveAgainAfter: time.Hour})
	mustDeregister(t, c.Registry, i)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := g.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait while a view lists the instance, ctx ending: want DeadlineExceeded, got %v", err)
	}
	if got := g.Pending(); !slices.Equal(got, []string{"memory://node1"}) {
		t.Errorf("Pending: want [memory://node1], got %v", got)
	}
}

// silentView never answers, like a server that accepts and then hangs.
type silentView struct{ name string }

func (v silentView) String() string { return v.name }
func (v silentView) Watch(context.Context, string) (registry.Watcher, error) {
	return silentWatcher{}, nil
}

type silentWatcher struct{}

func (silentWatcher) Next(ctx context.Context) ([]registry.Instance, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (silentWatcher) Stop() error { return nil }

type hangingCluster struct {
	*memory.Registry
}

func (c hangingCluster) Views(context.Context) ([]registry.View, error) {
	return []registry.View{silentView{"memory://hang1"}, silentView{"memory://hang2"}}, nil
}

// Views that never answer are counted as down after the first-read bound,
// all of them at once, and hold nothing up.
func TestWatchGoneSilentViews(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := hangingCluster{newMem(t, "memory://own")}
	mustRegister(t, c.Registry, i)
	var log viewLog
	g, err := registry.WatchGone(t.Context(), c, i, registry.GoneOptions{OnView: log.add, RemoveAgainAfter: time.Hour})
	if err != nil {
		t.Fatalf("WatchGone with two silent views: want a watch after the first-read bound, got %v", err)
	}
	defer g.Stop()
	for _, n := range []string{"memory://hang1", "memory://hang2"} {
		if !log.has(registry.ViewDown, n) {
			t.Errorf("want %s reported down, got:%s", n, &log)
		}
	}
	done := waitAsync(t.Context(), g)
	mustDeregister(t, c.Registry, i)
	if err := result(t, done, "Wait"); err != nil {
		t.Fatalf("Wait with silent views: want nil once the registry's own watch dropped the instance, got %v", err)
	}
}

// coveredCluster is a cluster whose views include its own watch's server.
type coveredCluster struct{ *cluster }

func (c coveredCluster) ViewsIncludeOwn([]registry.View) bool { return true }

// When the views cover the own watch's server, an own watch that never
// hears of the change (its server died) holds nothing up while a view
// answers; with every view down it is waited for again.
func TestGoneWatchCoveredOwnWatch(t *testing.T) {
	t.Parallel()
	i := inst(0)
	c := coveredCluster{newCluster(t, 2, i)}
	g, err := registry.WatchGone(t.Context(), c, i, registry.GoneOptions{RemoveAgainAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	done := waitAsync(t.Context(), g)
	// The own registry keeps listing the instance, as a client cut off from
	// its dead node does; every live node drops it.
	mustDeregister(t, c.nodes[0].reg, i)
	mustDeregister(t, c.nodes[1].reg, i)
	if err := result(t, done, "Wait"); err != nil {
		t.Fatalf("Wait with the own watch covered and every view clear: want nil, got %v", err)
	}

	j := inst(1)
	d := coveredCluster{newCluster(t, 1, j)}
	d.nodes[0].kill()
	g2, err := registry.WatchGone(t.Context(), d, j, registry.GoneOptions{RemoveAgainAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := g2.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with every view down and the own watch still listing: want it to wait for the own watch, got %v", err)
	}
	mustDeregister(t, d.Registry, j)
	if err := result(t, waitAsync(t.Context(), g2), "Wait"); err != nil {
		t.Fatalf("Wait once the own watch dropped it: want nil, got %v", err)
	}
}

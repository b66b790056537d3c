package nacos

import (
	"slices"
	"sync"
	"testing"

	"github.com/nacos-group/nacos-sdk-go/v2/model"

	"github.com/lameduck/lameduck/registry"
)

// newClusterTest returns a Registry on the nodes, whose own client is f and
// whose views each get a fake of their own, kept by address.
// Each view's fake starts with the hosts in start, by address.
func newClusterTest(t *testing.T, f *fakeNacos, start map[string][]model.Instance, nodes ...string) (*Registry, func(addr string) *fakeNacos) {
	t.Helper()
	var mu sync.Mutex
	views := map[string]*fakeNacos{}
	mk := func(o *options) {
		o.viewClient = func(addr string) client {
			mu.Lock()
			defer mu.Unlock()
			v := newFake()
			v.hosts = start[addr]
			views[addr] = v
			return v
		}
	}
	r := newTest(t, f, WithAddresses(nodes...), mk)
	return r, func(addr string) *fakeNacos {
		mu.Lock()
		defer mu.Unlock()
		return views[addr]
	}
}

func TestViewsOnePerNode(t *testing.T) {
	t.Parallel()
	single := newTest(t, newFake())
	if vs, err := single.Views(t.Context()); err != nil || len(vs) != 0 {
		t.Errorf("Views of a single node: want none, got %v, %v", vs, err)
	}
	r, _ := newClusterTest(t, newFake(), nil, "127.0.0.1:8858", "127.0.0.1:8868", "127.0.0.1:8878")
	if got := r.String(); got != "nacos://127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878" {
		t.Errorf("String: want every node named, got %q", got)
	}
	vs, err := r.Views(t.Context())
	if err != nil {
		t.Fatalf("Views: %v", err)
	}
	var names []string
	for _, v := range vs {
		names = append(names, v.String())
	}
	want := []string{"nacos://127.0.0.1:8858", "nacos://127.0.0.1:8868", "nacos://127.0.0.1:8878"}
	if !slices.Equal(names, want) {
		t.Errorf("Views: want %v, got %v", want, names)
	}
	again, _ := r.Views(t.Context())
	if again[1] != vs[1] {
		t.Errorf("Views called twice: want the same views (connected once), got new ones")
	}
}

// A view follows its own node's pushes, through a client of its own made
// by its first Next.
func TestViewFollowsItsNode(t *testing.T) {
	t.Parallel()
	host := model.Instance{Ip: "10.0.0.1", Port: 80, Enable: true, Healthy: true, Weight: 1, ServiceName: "DEFAULT_GROUP@@svc"}
	r, viewFake := newClusterTest(t, newFake(), map[string][]model.Instance{"127.0.0.1:8868": {host}}, "127.0.0.1:8858", "127.0.0.1:8868")
	vs, err := r.Views(t.Context())
	if err != nil {
		t.Fatalf("Views: %v", err)
	}
	w, err := vs[1].Watch(t.Context(), "svc")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer w.Stop()
	l := within(t, "the view's first list", func() []registry.Instance { l, _ := w.Next(t.Context()); return l })
	if len(l) != 1 || l[0].Endpoint() != "10.0.0.1:80" {
		t.Fatalf("view's first list: want [10.0.0.1:80] (its own node's), got %v", l)
	}
	viewFake("127.0.0.1:8868").push(t, nil, nil)
	l = within(t, "the view's next list", func() []registry.Instance { l, _ := w.Next(t.Context()); return l })
	if len(l) != 0 {
		t.Errorf("view's list after its node pushed an empty one: want [], got %v", l)
	}
	if viewFake("127.0.0.1:8858") != nil {
		t.Errorf("watching one view connected another node's view too")
	}
}

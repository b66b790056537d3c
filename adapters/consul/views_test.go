package consul

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/registry"
)

// newViewTest returns a Registry whose views are fakes of their own, kept
// in the returned map by address.
func newViewTest(t *testing.T, f *fakeConsul, opts ...Option) (*Registry, map[string]*fakeConsul) {
	t.Helper()
	views := map[string]*fakeConsul{}
	mk := func(o *options) {
		o.viewClient = func(addr string) client {
			v := newFake()
			views[addr] = v
			return v
		}
	}
	return newTest(t, f, append(opts, mk)...), views
}

func viewNames(vs []registry.View) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.String())
	}
	return out
}

func TestViews(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    []Option
		peers   []string
		members []*api.AgentMember
		peerErr error
		want    []string
		wantErr []string
	}{
		{name: "none", want: nil},
		{name: "listed", opts: []Option{WithConfirmThrough("127.0.0.11:8500", "127.0.0.12:8500")},
			want: []string{"consul://127.0.0.11:8500", "consul://127.0.0.12:8500"}},
		{name: "servers at the agent's port", opts: []Option{WithConfirmThroughServers()},
			peers: []string{"127.0.0.11:8300", "127.0.0.12:8300", "127.0.0.13:8300"},
			want:  []string{"consul://127.0.0.11:8500", "consul://127.0.0.12:8500", "consul://127.0.0.13:8500"}},
		{name: "listed and servers, each once", opts: []Option{WithConfirmThrough("127.0.0.11:8500"), WithConfirmThroughServers()},
			peers: []string{"127.0.0.11:8300", "127.0.0.12:8300"},
			want:  []string{"consul://127.0.0.11:8500", "consul://127.0.0.12:8500"}},
		{name: "live agents", opts: []Option{WithConfirmThroughAgents()},
			members: []*api.AgentMember{
				{Name: "s1", Addr: "127.0.0.11", Status: memberAlive},
				{Name: "c1", Addr: "127.0.0.21", Status: memberAlive},
				{Name: "c2", Addr: "127.0.0.22", Status: 4},
			},
			want: []string{"consul://127.0.0.11:8500", "consul://127.0.0.21:8500"}},
		{name: "members unreachable", opts: []Option{WithConfirmThroughAgents()}, peerErr: errors.New("connection refused"),
			wantErr: []string{"agents to confirm through", "connection refused"}},
		{name: "peers unreachable", opts: []Option{WithConfirmThroughServers()}, peerErr: errors.New("connection refused"),
			wantErr: []string{"connection refused", "?confirm=host:port"}},
		{name: "peer without port", opts: []Option{WithConfirmThroughServers()}, peers: []string{"127.0.0.11"},
			wantErr: []string{`"127.0.0.11"`, "not host:port"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.peers, f.peersErr, f.members = tc.peers, tc.peerErr, tc.members
			r, _ := newViewTest(t, f, tc.opts...)
			vs, err := r.Views(t.Context())
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Views: want an error, got views %v", viewNames(vs))
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Views error: want it to contain %q, got %q", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Views: want no error, got %v", err)
			}
			if got := viewNames(vs); !slices.Equal(got, tc.want) {
				t.Errorf("Views: want %v, got %v", tc.want, got)
			}
		})
	}
}

// A view reads its server's own copy (?stale) and returns a failed query
// instead of retrying it, so the confirmation can tell a dead server.
func TestViewWatchStaleAndFailFast(t *testing.T) {
	t.Parallel()
	r, views := newViewTest(t, newFake(), WithConfirmThrough("127.0.0.11:8500"))
	vs, err := r.Views(t.Context())
	if err != nil || len(vs) != 1 {
		t.Fatalf("Views: want one view, got %v, %v", vs, err)
	}
	v := views["127.0.0.11:8500"]
	down := errors.New("connection refused")
	v.replies = []healthReply{{index: 5, entries: []*api.ServiceEntry{entry("svc-a", "10.0.0.1", 80, 1)}}, {err: down}}
	w, err := vs[0].Watch(t.Context(), "svc")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer w.Stop()
	if l, err := next(t, t.Context(), w); err != nil || !slices.Equal(ids(l), []string{"svc-a"}) {
		t.Fatalf("first Next: want [svc-a], got %v, %v", ids(l), err)
	}
	if _, err := next(t, t.Context(), w); !errors.Is(err, down) {
		t.Fatalf("Next on a server that fails: want its error at once, got %v", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if !slices.Equal(v.stale, []bool{true, true}) {
		t.Errorf("AllowStale of the view's queries: want [true true], got %v", v.stale)
	}
}

func TestViewRemoveAgain(t *testing.T) {
	t.Parallel()
	r, views := newViewTest(t, newFake(), WithConfirmThrough("127.0.0.12:8500"))
	vs, _ := r.Views(t.Context())
	v := views["127.0.0.12:8500"]
	gone := entry("svc-a", "10.0.0.1", 80, 1)
	gone.Node.Node = "consul-c1"
	v.replies = []healthReply{{index: 3, entries: []*api.ServiceEntry{gone, entry("svc-b", "10.0.0.2", 80, 1)}}}
	rm := vs[0].(registry.ViewRemover)
	i := registry.Instance{Service: "svc", ID: "svc-a", Address: "10.0.0.1", Port: 80}
	if err := rm.RemoveAgain(t.Context(), i, false); err != nil {
		t.Fatalf("RemoveAgain: want nil, got %v", err)
	}
	if got := v.calls(); !slices.Contains(got, "catalog-deregister consul-c1 svc-a") || slices.ContainsFunc(got, func(l string) bool { return strings.Contains(l, "svc-b") }) {
		t.Errorf("RemoveAgain: want the catalog deregistration of svc-a on consul-c1 alone, got calls %v", got)
	}
	if err := rm.RemoveAgain(t.Context(), i, true); !errors.Is(err, registry.ErrNotSupported) {
		t.Errorf("RemoveAgain of a disable: want ErrNotSupported (maintenance lives in the agent), got %v", err)
	}
}

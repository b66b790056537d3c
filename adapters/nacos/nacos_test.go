package nacos

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nacos-group/nacos-sdk-go/v2/vo"

	"github.com/lameduck/lameduck/registry"
)

func inst() registry.Instance {
	return registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080}
}

func TestNew(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		opts     []Option
		wantName string // "" means New fails
	}{
		{name: "default address", wantName: "nacos://127.0.0.1:8848"},
		{name: "namespace", opts: []Option{WithAddress("10.0.0.9:8848"), WithNamespace("dev")}, wantName: "nacos://10.0.0.9:8848?namespace=dev"},
		{name: "highest port", opts: []Option{WithAddress("h:64535")}, wantName: "nacos://h:64535"},
		{name: "credentials stay out of the name", opts: []Option{WithCredentials("nacos", "pa55")}, wantName: "nacos://127.0.0.1:8848"},
		{name: "no port", opts: []Option{WithAddress("h")}},
		{name: "no host", opts: []Option{WithAddress(":8848")}},
		{name: "port 0", opts: []Option{WithAddress("h:0")}},
		{name: "port leaves no room for gRPC", opts: []Option{WithAddress("h:64536")}},
		{name: "port not a number", opts: []Option{WithAddress("h:http")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r, err := New(append([]Option{withClient(f), withoutAdminAPI()}, tc.opts...)...)
			if tc.wantName == "" {
				if err == nil {
					t.Fatalf("New: want an address error, got registry %s", r)
				}
				if !strings.HasPrefix(err.Error(), "nacos: address ") {
					t.Errorf("New: want an error starting \"nacos: address \", got %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: want a registry, got error %v", err)
			}
			defer func() { _ = r.Close() }()
			if r.String() != tc.wantName {
				t.Errorf("String(): want %q, got %q", tc.wantName, r.String())
			}
		})
	}
}

// param is what the backend sends for an instance of svc with default
// group and cluster.
func param(ip string, port uint64, enabled bool, meta map[string]string) vo.RegisterInstanceParam {
	if meta == nil {
		meta = map[string]string{}
	}
	return vo.RegisterInstanceParam{
		Ip: ip, Port: port, Weight: 1, Enable: enabled, Healthy: true, Metadata: meta,
		ClusterName: "DEFAULT", ServiceName: "svc", GroupName: "DEFAULT_GROUP", Ephemeral: true,
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		opts []Option
		in   registry.Instance
		want vo.BatchRegisterInstanceParam
	}{
		{
			name: "defaults",
			in:   inst(),
			want: vo.BatchRegisterInstanceParam{ServiceName: "svc", GroupName: "DEFAULT_GROUP", Instances: []vo.RegisterInstanceParam{
				param("10.0.0.1", 8080, true, nil),
			}},
		},
		{
			name: "id weight metadata",
			in: registry.Instance{
				Service: "svc", ID: "svc-a", Address: "10.0.0.2", Port: 9090, Weight: 2.5,
				Metadata: map[string]string{"zone": "a"},
			},
			want: vo.BatchRegisterInstanceParam{ServiceName: "svc", GroupName: "DEFAULT_GROUP", Instances: []vo.RegisterInstanceParam{{
				Ip: "10.0.0.2", Port: 9090, Weight: 2.5, Enable: true, Healthy: true,
				Metadata:    map[string]string{"zone": "a", MetaID: "svc-a"},
				ClusterName: "DEFAULT", ServiceName: "svc", GroupName: "DEFAULT_GROUP", Ephemeral: true,
			}}},
		},
		{
			name: "backend group and cluster",
			opts: []Option{WithGroup("G"), WithCluster("C")},
			in:   inst(),
			want: vo.BatchRegisterInstanceParam{ServiceName: "svc", GroupName: "G", Instances: []vo.RegisterInstanceParam{{
				Ip: "10.0.0.1", Port: 8080, Weight: 1, Enable: true, Healthy: true, Metadata: map[string]string{},
				ClusterName: "C", ServiceName: "svc", GroupName: "G", Ephemeral: true,
			}}},
		},
		{
			name: "instance group and cluster win, same namespace accepted",
			opts: []Option{WithGroup("G"), WithCluster("C"), WithNamespace("dev")},
			in:   registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 8080, Group: "IG", Cluster: "IC", Namespace: "dev"},
			want: vo.BatchRegisterInstanceParam{ServiceName: "svc", GroupName: "IG", Instances: []vo.RegisterInstanceParam{{
				Ip: "10.0.0.1", Port: 8080, Weight: 1, Enable: true, Healthy: true, Metadata: map[string]string{},
				ClusterName: "IC", ServiceName: "svc", GroupName: "IG", Ephemeral: true,
			}}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r := newTest(t, f, tc.opts...)
			before := len(tc.in.Metadata)
			if err := r.Register(t.Context(), tc.in); err != nil {
				t.Fatalf("Register: want nil, got %v", err)
			}
			if len(f.batches) != 1 {
				t.Fatalf("BatchRegisterInstance calls: want 1, got %d", len(f.batches))
			}
			if got := f.batches[0]; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("BatchRegisterInstance:\nwant %+v\ngot  %+v", tc.want, got)
			}
			if len(tc.in.Metadata) != before {
				t.Errorf("instance metadata: want it untouched (%d keys), got %v", before, tc.in.Metadata)
			}
		})
	}
}

func TestRegisterRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		opts    []Option
		in      registry.Instance
		wantErr string
	}{
		{name: "other namespace", opts: []Option{WithNamespace("dev")}, in: registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 80, Namespace: "prod"}, wantErr: `namespace "prod"`},
		{name: "named namespace on the default backend", in: registry.Instance{Service: "svc", Address: "10.0.0.1", Port: 80, Namespace: "prod"}, wantErr: `namespace "prod"`},
		{name: "invalid instance", in: registry.Instance{Service: "svc", Port: 80}, wantErr: "empty address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r := newTest(t, f, tc.opts...)
			err := r.Register(t.Context(), tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Register(%+v): want an error containing %q, got %v", tc.in, tc.wantErr, err)
			}
			if len(f.batches) != 0 {
				t.Errorf("BatchRegisterInstance calls: want 0, got %d", len(f.batches))
			}
		})
	}
}

// TestPublishedSet walks the backend through sequences of calls. Nacos 2
// keeps one set of ephemeral instances per connection and service, so
// every change must send the whole set that remains.
func TestPublishedSet(t *testing.T) {
	t.Parallel()
	a := registry.Instance{Service: "svc", ID: "svc-a", Address: "10.0.0.1", Port: 8080}
	b := registry.Instance{Service: "svc", ID: "svc-b", Address: "10.0.0.1", Port: 8081}
	other := registry.Instance{Service: "other", Address: "10.0.0.1", Port: 9000}
	metaA, metaB := map[string]string{MetaID: "svc-a"}, map[string]string{MetaID: "svc-b"}
	type op struct {
		name string
		in   registry.Instance
	}
	cases := []struct {
		name     string
		ops      []op
		wantLog  []string                         // calls made by the last op
		wantLast []vo.RegisterInstanceParam       // the last batch, if wantLog ends with one
		wantDer  *vo.DeregisterInstanceParam      // the last deregistration, if any
		wantErr  string                           // from the last op
		check    func(t *testing.T, f *fakeNacos) // extra checks
	}{
		{
			name:     "second instance joins the set",
			ops:      []op{{"register", a}, {"register", b}},
			wantLog:  []string{"batch"},
			wantLast: []vo.RegisterInstanceParam{param("10.0.0.1", 8080, true, metaA), param("10.0.0.1", 8081, true, metaB)},
		},
		{
			name:     "register again replaces, not duplicates",
			ops:      []op{{"register", a}, {"register", a}},
			wantLog:  []string{"batch"},
			wantLast: []vo.RegisterInstanceParam{param("10.0.0.1", 8080, true, metaA)},
		},
		{
			name:     "disable sends enabled false",
			ops:      []op{{"register", a}, {"register", b}, {"disable", a}},
			wantLog:  []string{"batch"},
			wantLast: []vo.RegisterInstanceParam{param("10.0.0.1", 8080, false, metaA), param("10.0.0.1", 8081, true, metaB)},
		},
		{
			name:     "enable after disable",
			ops:      []op{{"register", a}, {"disable", a}, {"enable", a}},
			wantLog:  []string{"batch"},
			wantLast: []vo.RegisterInstanceParam{param("10.0.0.1", 8080, true, metaA)},
		},
		{
			name:     "deregister one of two republishes the other",
			ops:      []op{{"register", a}, {"register", b}, {"deregister", a}},
			wantLog:  []string{"batch"},
			wantLast: []vo.RegisterInstanceParam{param("10.0.0.1", 8081, true, metaB)},
		},
		{
			name:    "deregister the last one",
			ops:     []op{{"register", a}, {"deregister", a}},
			wantLog: []string{"deregister"},
			wantDer: &vo.DeregisterInstanceParam{Ip: "10.0.0.1", Port: 8080, Cluster: "DEFAULT", ServiceName: "svc", GroupName: "DEFAULT_GROUP", Ephemeral: true},
		},
		{
			name:    "deregister unknown is success without a call",
			ops:     []op{{"deregister", a}},
			wantLog: nil,
		},
		{
			name:    "services are kept apart",
			ops:     []op{{"register", a}, {"register", other}, {"deregister", other}},
			wantLog: []string{"deregister"},
			wantDer: &vo.DeregisterInstanceParam{Ip: "10.0.0.1", Port: 9000, Cluster: "DEFAULT", ServiceName: "other", GroupName: "DEFAULT_GROUP", Ephemeral: true},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r := newTest(t, f)
			var err error
			var mark int
			for k, o := range tc.ops {
				mark = len(f.log)
				switch o.name {
				case "register":
					err = r.Register(t.Context(), o.in)
				case "deregister":
					err = r.Deregister(t.Context(), o.in)
				case "disable":
					err = r.Disable(t.Context(), o.in)
				case "enable":
					err = r.Enable(t.Context(), o.in)
				}
				if k < len(tc.ops)-1 && err != nil {
					t.Fatalf("%s %s: want nil, got %v", o.name, o.in.Key(), err)
				}
			}
			if tc.wantErr != "" {
				var re *registry.Error
				if !errors.As(err, &re) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("last op: want *registry.Error containing %q, got %v", tc.wantErr, err)
				}
			} else if err != nil {
				t.Errorf("last op: want nil, got %v", err)
			}
			if got := f.log[mark:]; !reflect.DeepEqual(got, tc.wantLog) && (len(got) != 0 || len(tc.wantLog) != 0) {
				t.Fatalf("calls of the last op: want %q, got %q", tc.wantLog, got)
			}
			if tc.wantLast != nil {
				last := f.batches[len(f.batches)-1]
				if !reflect.DeepEqual(last.Instances, tc.wantLast) {
					t.Errorf("last batch:\nwant %+v\ngot  %+v", tc.wantLast, last.Instances)
				}
			}
			if tc.wantDer != nil {
				last := f.deregisters[len(f.deregisters)-1]
				if !reflect.DeepEqual(last, *tc.wantDer) {
					t.Errorf("last deregistration: want %+v, got %+v", *tc.wantDer, last)
				}
			}
		})
	}
}

// TestFailedPublishKeepsOldSet: a change the server refused is not kept,
// so the next change publishes from the last set the server took.
func TestFailedPublishKeepsOldSet(t *testing.T) {
	t.Parallel()
	a := registry.Instance{Service: "svc", ID: "svc-a", Address: "10.0.0.1", Port: 8080}
	b := registry.Instance{Service: "svc", ID: "svc-b", Address: "10.0.0.1", Port: 8081}
	f := newFake()
	r := newTest(t, f)
	if err := r.Register(t.Context(), a); err != nil {
		t.Fatalf("Register a: want nil, got %v", err)
	}
	f.set(func(f *fakeNacos) { f.ok = false })
	if err := r.Disable(t.Context(), a); err == nil {
		t.Fatalf("Disable a: want the server's refusal, got nil")
	}
	f.set(func(f *fakeNacos) { f.ok = true })
	if err := r.Register(t.Context(), b); err != nil {
		t.Fatalf("Register b: want nil, got %v", err)
	}
	want := []vo.RegisterInstanceParam{param("10.0.0.1", 8080, true, map[string]string{MetaID: "svc-a"}), param("10.0.0.1", 8081, true, map[string]string{MetaID: "svc-b"})}
	if got := f.batches[len(f.batches)-1].Instances; !reflect.DeepEqual(got, want) {
		t.Errorf("batch after a refused disable: want a still enabled\nwant %+v\ngot  %+v", want, got)
	}
}

func TestCallErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("server busy")
	cases := []struct {
		name   string
		ok     bool
		err    error
		wantIs error  // nil: only the message is checked
		want   string // in the message
	}{
		{name: "sdk error", ok: false, err: boom, wantIs: boom, want: "server busy"},
		{name: "server answered false", ok: false, want: "the server refused it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.ok, f.err = tc.ok, tc.err
			r := newTest(t, f)
			err := r.Register(t.Context(), inst())
			var re *registry.Error
			if !errors.As(err, &re) || re.Op != "register" || re.Registry != "nacos://127.0.0.1:8848" {
				t.Fatalf("Register: want *registry.Error op register on nacos://127.0.0.1:8848, got %#v", err)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Register: want an error wrapping %v, got %v", tc.wantIs, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Register: want an error containing %q, got %q", tc.want, err)
			}
		})
	}
}

// TestCallHonoursCtx: the SDK takes no context, so a call stuck in the SDK
// must still return when the caller's ctx ends; Close then waits for the
// stuck call before closing the client.
func TestCallHonoursCtx(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		call func(ctx context.Context, r *Registry) error
		end  func(cancel context.CancelFunc)
		ctx  func(parent context.Context) (context.Context, context.CancelFunc)
		want error
	}{
		{
			name: "register cancelled",
			call: func(ctx context.Context, r *Registry) error { return r.Register(ctx, inst()) },
			ctx:  context.WithCancel,
			end:  func(cancel context.CancelFunc) { cancel() },
			want: context.Canceled,
		},
		{
			name: "disable past deadline",
			call: func(ctx context.Context, r *Registry) error { return r.Disable(ctx, inst()) },
			ctx: func(p context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(p, 20*time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			r, err := New(withClient(f), withoutAdminAPI())
			if err != nil {
				t.Fatalf("New: want a registry, got error %v", err)
			}
			if err := r.Register(t.Context(), inst()); err != nil {
				t.Fatalf("Register: want nil, got %v", err)
			}
			release := make(chan struct{})
			f.set(func(f *fakeNacos) { f.block = release })
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- tc.call(ctx, r) }()
			f.waitFor(t, "the SDK call to start", func(f *fakeNacos) bool { return f.started == 2 })
			if tc.end != nil {
				tc.end(cancel)
			}
			select {
			case err := <-done:
				var re *registry.Error
				if !errors.Is(err, tc.want) || !errors.As(err, &re) {
					t.Errorf("call: want *registry.Error wrapping %v, got %v", tc.want, err)
				}
			case <-time.After(wait):
				t.Fatalf("call: want it to return within %v after its ctx ended, got no return", wait)
			}
			closed := make(chan error, 1)
			go func() { closed <- r.Close() }()
			close(release)
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close: want nil, got %v", err)
				}
			case <-time.After(wait):
				t.Fatalf("Close: want it to return within %v once the SDK call ended, got no return", wait)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.closes != 1 {
				t.Errorf("CloseClient calls: want 1, got %d", f.closes)
			}
		})
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	f := newFake()
	r, err := New(withClient(f), withoutAdminAPI())
	if err != nil {
		t.Fatalf("New: want a registry, got error %v", err)
	}
	for k := range 2 {
		if err := within(t, "Close", r.Close); err != nil {
			t.Errorf("Close %d: want nil, got %v", k, err)
		}
	}
	if f.closes != 1 {
		t.Errorf("CloseClient calls after two Close: want 1, got %d", f.closes)
	}
	err = r.Register(t.Context(), inst())
	var re *registry.Error
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Register after Close: want *registry.Error saying closed, got %v", err)
	}
	if len(f.batches) != 0 {
		t.Errorf("BatchRegisterInstance calls after Close: want 0, got %d", len(f.batches))
	}
}

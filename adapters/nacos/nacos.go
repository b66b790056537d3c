// Package nacos is lameduck's Nacos backend, on nacos-sdk-go/v2.
//
// Instances are registered as ephemeral (kept alive by the SDK's gRPC
// connection, dropped when the process dies). Watches use the SDK's
// Subscribe push with UpdateCacheWhenEmpty on, so the removal of the last
// instance is seen, and report what consumers route to: enabled, healthy
// instances with a weight above zero. Disable sets enabled=false: on an
// instance this backend registered by re-publishing it, on any other through
// the server's HTTP admin API (Nacos 3.0 or later), see Registry.Disable.
//
// The SDK writes a cache; it goes to the directory given with WithDataDir,
// or to a private temporary directory removed by Close, never under $HOME.
// The SDK's warnings and errors go to log/slog's default logger, one line per
// distinct message and then one count of its repeats per 10s, without stack
// traces, with the password redacted. The SDK's logger is process-wide: New
// installs lameduck's in its place (see sdk.go), so an application that uses
// nacos-sdk-go itself and sets its own logger must set it after New.
package nacos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nacos-group/nacos-sdk-go/v2/common/constant"
	"github.com/nacos-group/nacos-sdk-go/v2/model"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"

	"github.com/lameduck/lameduck/registry"
)

// MetaID is the metadata key that carries lameduck's instance ID, since
// Nacos makes up its own ("ip#port#cluster#group@@service").
const MetaID = "lameduck.id"

// client is the part of the SDK the backend uses, so unit tests can use a
// fake.
type client interface {
	BatchRegisterInstance(p vo.BatchRegisterInstanceParam) (bool, error)
	DeregisterInstance(p vo.DeregisterInstanceParam) (bool, error)
	SelectAllInstances(p vo.SelectAllInstancesParam) ([]model.Instance, error)
	Subscribe(p *vo.SubscribeParam) error
	Unsubscribe(p *vo.SubscribeParam) error
	CloseClient()
}

// Option configures a Registry.
type Option func(*options)

type options struct {
	addr      string   // the first node: logins and the admin API
	nodes     []string // every node given, addr first; see WithAddresses
	namespace string
	group     string
	cluster   string
	username  string
	password  string
	dataDir   string
	timeout   time.Duration
	resync    time.Duration
	settle    time.Duration // see settleAfter
	client    client

	noAdminAPI bool
	viewClient func(addr string) client // unit tests: each view's fake SDK
}

func (o *options) setDefaults() {
	if o.addr == "" {
		o.addr = "127.0.0.1:8848"
	}
	if o.group == "" {
		o.group = constant.DEFAULT_GROUP
	}
	if o.cluster == "" {
		o.cluster = "DEFAULT"
	}
	if o.timeout <= 0 {
		o.timeout = 5 * time.Second
	}
	if o.resync == 0 {
		o.resync = 5 * time.Second
	}
	if o.settle <= 0 {
		o.settle = settleAfter
	}
}

// WithAddress sets the server's host:port (its HTTP port; the SDK uses the
// gRPC port 1000 above it). The default is 127.0.0.1:8848.
func WithAddress(addr string) Option { return func(o *options) { o.addr, o.nodes = addr, nil } }

// WithAddresses names the nodes of a Nacos cluster (host:port each, HTTP
// ports). The SDK connects to one of them and fails over to another; the
// confirmation waits for every node's own push (see views.go). The first
// node serves logins and the admin API.
func WithAddresses(addrs ...string) Option {
	return func(o *options) {
		o.nodes = append([]string(nil), addrs...)
		o.addr = ""
		if len(addrs) > 0 {
			o.addr = addrs[0]
		}
	}
}

// WithNamespace sets the namespace ID; the default is the public one.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithGroup sets the default group; DEFAULT_GROUP unless set. An Instance's
// own Group wins.
func WithGroup(g string) Option { return func(o *options) { o.group = g } }

// WithCluster sets the default cluster; DEFAULT unless set. An Instance's
// own Cluster wins.
func WithCluster(c string) Option { return func(o *options) { o.cluster = c } }

// WithCredentials sets the user name and password for a server with auth.
func WithCredentials(user, password string) Option {
	return func(o *options) { o.username, o.password = user, password }
}

// WithDataDir puts the SDK's cache and logs under dir.
func WithDataDir(dir string) Option { return func(o *options) { o.dataDir = dir } }

// WithTimeout bounds each SDK call; default 5s.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithResync sets how often the backend compares what it publishes with
// what the server shows, to learn of a disable or enable by someone else
// (see keeper.go); default 5s. A negative interval turns that off.
func WithResync(d time.Duration) Option { return func(o *options) { o.resync = d } }

func withClient(c client) Option { return func(o *options) { o.client = c } }

// withoutAdminAPI keeps the backend off the HTTP admin API (the stale
// disable check, foreign deregistration), for unit tests whose fake SDK has
// no server behind it.
func withoutAdminAPI() Option { return func(o *options) { o.noAdminAPI = true } }

// Registry is the Nacos backend. It is safe for concurrent use. Close it to
// stop the SDK's goroutines.
type Registry struct {
	o        options
	name     string
	c        client
	tempDir  string       // removed by Close
	udpPorts []int        // the SDK's push receiver, see sdk.go
	hc       *http.Client // the admin API, see admin.go; its own transport

	mu     sync.Mutex
	calls  sync.WaitGroup // SDK calls that may outlive their ctx
	closed bool

	// Nacos 2.x keeps one set of ephemeral instances per client connection
	// and service: each register replaces the set, and a deregister drops
	// all of it. So the backend keeps the set it publishes and sends it
	// whole on every change. pubMu serialises the publishes.
	pubMu   sync.Mutex
	pubs    map[string]map[string]*published // service key -> instance key -> instance
	pubDone chan struct{}                    // closed when the last publish's SDK call returned
	pubGen  uint64                           // counts publishes the server took; see keeper.go
	pubAt   time.Time                        // when the last publish was taken

	keepOnce sync.Once          // starts the keeper after the first Register
	keepStop context.CancelFunc // ends it; guarded by mu
	missing  map[string]uint64  // the keeper's: instances the server did not hold at its last look, with pubGen then

	// Register looks for a stale disable in the background (see
	// clearStaleDisable); later calls about the same instance wait for it.
	clearMu sync.Mutex
	clears  map[string]chan struct{} // instance key -> closed when its look is done

	views map[string]*view // by node address, guarded by mu; see views.go
	warm  sync.Once        // connects the views after the first Register
}

type published struct {
	inst    registry.Instance
	enabled bool
}

var (
	_ registry.Registry = (*Registry)(nil)
	_ registry.Disabler = (*Registry)(nil)
)

// New connects to the server (the SDK starts its gRPC connection at once).
func New(opts ...Option) (*Registry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return newFrom(o)
}

func newFrom(o options) (*Registry, error) {
	var err error
	o.setDefaults()
	if len(o.nodes) == 0 {
		o.nodes = []string{o.addr}
	}
	var servers []constant.ServerConfig
	for _, a := range o.nodes {
		host, portStr, err := net.SplitHostPort(a)
		port, perr := strconv.ParseUint(portStr, 10, 16)
		if err != nil || host == "" || perr != nil || port == 0 || port > 64535 {
			return nil, fmt.Errorf("nacos: address %q is not host:port with a port below 64536 (the gRPC port is 1000 above it)", a)
		}
		servers = append(servers, *constant.NewServerConfig(host, port))
	}
	name := "nacos://" + strings.Join(o.nodes, ",")
	if o.namespace != "" {
		name += "?namespace=" + o.namespace
	}
	r := &Registry{
		o: o, name: name, c: o.client, pubs: map[string]map[string]*published{}, views: map[string]*view{},
		hc: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
	}
	if r.c != nil {
		return r, nil
	}
	if o.username != "" {
		if err := checkLogin(o); err != nil {
			return nil, err
		}
	}
	dir := o.dataDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "lameduck-nacos-")
		if err != nil {
			return nil, fmt.Errorf("nacos: make a data directory for the SDK: %w", err)
		}
		r.tempDir = dir
	}
	cc := constant.NewClientConfig(
		constant.WithNamespaceId(o.namespace),
		constant.WithTimeoutMs(uint64(o.timeout/time.Millisecond)),
		constant.WithNotLoadCacheAtStart(true),
		constant.WithUpdateCacheWhenEmpty(true),
		constant.WithCacheDir(filepath.Join(dir, "cache")),
		constant.WithLogDir(filepath.Join(dir, "log")),
		constant.WithLogLevel("error"), // the SDK's own file logger, replaced at once; see sdk.go
		constant.WithUsername(o.username),
		constant.WithPassword(o.password),
	)
	c, ports, err := newSDKClient(vo.NacosClientParam{
		ClientConfig:  cc,
		ServerConfigs: servers,
	}, o.password)
	if err != nil {
		r.removeTemp()
		return nil, fmt.Errorf("nacos: connect to %s: %w", name, err)
	}
	r.c, r.udpPorts = c, ports
	return r, nil
}

func (r *Registry) String() string { return r.name }

func (r *Registry) removeTemp() {
	if r.tempDir != "" {
		_ = os.RemoveAll(r.tempDir)
	}
}

// Close closes the SDK client, waits for calls still under way, and removes
// the private data directory.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	if r.keepStop != nil {
		r.keepStop()
	}
	views := r.views
	r.views = map[string]*view{}
	r.mu.Unlock()
	for _, v := range views {
		v.close()
	}
	r.calls.Wait()
	r.c.CloseClient()
	r.hc.CloseIdleConnections()
	wakePushReceivers(r.udpPorts)
	if t, ok := http.DefaultTransport.(*http.Transport); ok && r.udpPorts != nil {
		t.CloseIdleConnections() // the SDK's login connections
	}
	r.removeTemp()
	sdkLog.flush()
	return nil
}

func (r *Registry) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

func (r *Registry) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if re := (*registry.Error)(nil); errors.As(err, &re) && re.Registry == r.name {
		return err // named already, by an inner call
	}
	return &registry.Error{Registry: r.name, Op: op, Err: err}
}

// call runs an SDK call, which takes no context, so that the caller's ctx
// still bounds the wait; the call itself ends within the SDK timeout.
//
// f always runs (unless the backend is closed), even when ctx has already
// ended; callers that must not act on an ended ctx check it first.
func (r *Registry) call(ctx context.Context, op string, f func() (bool, error)) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return r.wrap(op, errors.New("backend is closed; open a new one"))
	}
	r.calls.Add(1)
	r.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer r.calls.Done()
		ok, err := f()
		if err == nil && !ok {
			err = errors.New("the server refused it; check that the user may write to this namespace and group")
		}
		done <- err
	}()
	select {
	case err := <-done:
		return r.wrap(op, err)
	case <-ctx.Done():
		return r.wrap(op, ctx.Err())
	}
}

func (r *Registry) group(i registry.Instance) string {
	if i.Group != "" {
		return i.Group
	}
	return r.o.group
}

func (r *Registry) cluster(i registry.Instance) string {
	if i.Cluster != "" {
		return i.Cluster
	}
	return r.o.cluster
}

func weight(i registry.Instance) float64 {
	if i.Weight > 0 {
		return i.Weight
	}
	return 1
}

func metadata(i registry.Instance) map[string]string {
	m := make(map[string]string, len(i.Metadata)+1)
	for k, v := range i.Metadata {
		m[k] = v
	}
	if i.ID != "" {
		m[MetaID] = i.ID
	}
	return m
}

func (r *Registry) checkNamespace(i registry.Instance) error {
	if i.Namespace != "" && i.Namespace != r.o.namespace {
		return fmt.Errorf("nacos: instance is in namespace %q but this backend serves %q; open one per namespace", i.Namespace, r.o.namespace)
	}
	return nil
}

func (r *Registry) serviceKey(i registry.Instance) string { return r.group(i) + "@@" + i.Service }

func (r *Registry) instanceKey(i registry.Instance) string { return r.cluster(i) + "/" + i.Endpoint() }

// Register registers i as an ephemeral instance, alongside the other
// instances of its service that this backend registered.
func (r *Registry) Register(ctx context.Context, i registry.Instance) error {
	if err := i.Validate(); err != nil {
		return err
	}
	if err := r.checkNamespace(i); err != nil {
		return err
	}
	err := r.change(ctx, "register", i, func(set map[string]*published) error {
		set[r.instanceKey(i)] = &published{inst: i, enabled: true}
		return nil
	})
	if err == nil && !r.o.noAdminAPI {
		r.clearInBackground(ctx, i)
	}
	if err == nil {
		r.warmViews()
		r.startKeeper()
	}
	return err
}

// clearInBackground runs clearStaleDisable without holding Register up:
// on a fresh endpoint the admin API takes 0.1-0.7 s to show the instance,
// which a standby's promotion should not wait for. Deregister, Disable and
// Enable of the same instance wait for it first, so it can never undo
// them; Close waits for it too.
func (r *Registry) clearInBackground(ctx context.Context, i registry.Instance) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.calls.Add(1)
	r.mu.Unlock()
	key := r.serviceKey(i) + "/" + r.instanceKey(i)
	done := make(chan struct{})
	r.clearMu.Lock()
	if r.clears == nil {
		r.clears = map[string]chan struct{}{}
	}
	prev := r.clears[key]
	r.clears[key] = done
	r.clearMu.Unlock()
	go func() {
		defer r.calls.Done()
		if prev != nil {
			<-prev
		}
		r.clearStaleDisable(context.WithoutCancel(ctx), i)
		r.clearMu.Lock()
		if r.clears[key] == done {
			delete(r.clears, key)
		}
		r.clearMu.Unlock()
		close(done)
	}()
}

// awaitClear waits for Register's look for a stale disable of i, if one is
// still running.
func (r *Registry) awaitClear(ctx context.Context, op string, i registry.Instance) error {
	r.clearMu.Lock()
	ch := r.clears[r.serviceKey(i)+"/"+r.instanceKey(i)]
	r.clearMu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return r.wrap(op, ctx.Err())
	}
}

// clearStaleDisable re-enables i if an earlier Disable from another client
// (`lameduck offline --disable`, prestop) still hides it: Nacos keeps that
// override for the endpoint after the instance is gone, so a restarted
// instance would otherwise come back invisible. An instance that registers
// is meant to be seen. Best effort: a failure is logged, not returned, since
// the registration itself succeeded.
func (r *Registry) clearStaleDisable(ctx context.Context, i registry.Instance) {
	err := r.call(ctx, "register", func() (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, r.o.timeout)
		defer cancel()
		for attempt := 0; ; attempt++ {
			err := r.patchEnabled(ctx, i, true)
			// The new instance may not be readable yet; give it a moment.
			// In a cluster the admin API's node learns of it only when
			// Distro has copied it from the node the client is connected
			// to (1-2 s), so there the look goes on until the timeout.
			if !errors.Is(err, ErrInstanceNotFound) || (len(r.o.nodes) < 2 && attempt == 4) {
				return true, err
			}
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return true, ctx.Err()
			case <-t.C:
			}
		}
	})
	if err != nil && !r.isClosed() {
		slog.Warn("nacos: could not check for a stale disable of a new registration; if consumers do not see it, enable it",
			"registry", r.name, "instance", i.Endpoint(), "err", err)
	}
}

// Deregister removes i if this backend registered it.
//
// An instance registered by another client (another process, such as the
// app that `lameduck offline` or prestop acts on) cannot be removed: Nacos
// ties an ephemeral instance to the gRPC connection that registered it. So
// Deregister disables it instead, which takes it out of consumers' view just
// the same; it goes away for good with its owner's connection, and a later
// Register of the endpoint clears the disable. An instance that is not
// registered at all is success.
func (r *Registry) Deregister(ctx context.Context, i registry.Instance) error {
	if err := r.awaitClear(ctx, "deregister", i); err != nil {
		return err
	}
	err := r.change(ctx, "deregister", i, func(set map[string]*published) error {
		if set[r.instanceKey(i)] == nil {
			return errNotOurs
		}
		delete(set, r.instanceKey(i))
		return nil
	})
	if !errors.Is(err, errNotOurs) {
		return err
	}
	if r.o.noAdminAPI {
		return nil
	}
	if err := r.setEnabledRemote(ctx, "deregister", i, false); err != nil && !errors.Is(err, ErrInstanceNotFound) {
		return err
	}
	return nil
}

// Disable sets enabled=false: still registered, no longer routed to. It
// blocks until the server took the change (consumers see it with the next
// push, usually within a second), and returns ctx.Err(), wrapped, if ctx ends
// first.
//
// An instance this backend registered is re-published with enabled=false.
// Any other instance, found by service, group, cluster and ip:port, is
// changed through the server's HTTP admin API (Nacos 3.0 or later), logged in
// with the backend's credentials; the user needs write permission on the
// namespace. The server keeps that change as an override of ip:port in the
// service and cluster that beats whatever any client publishes for it,
// including the owner's own enable, and that outlives the instance: Nacos
// documents a minute (nacos.naming.clean.expired-metadata.expired-time), but
// 3.1.0 still applied it 150s after the instance deregistered. The same
// endpoint registered again meanwhile starts disabled, and stays so until
// a backend that did not register it calls Enable while it is registered
// (the owner's Enable only re-publishes). Errors match
// ErrAccessDenied when the server refused the credentials, and
// ErrInstanceNotFound when it holds no such instance.
func (r *Registry) Disable(ctx context.Context, i registry.Instance) error {
	return r.setEnabled(ctx, "disable", i, false)
}

// Enable sets enabled=true; it is Disable's inverse, with the same contract.
func (r *Registry) Enable(ctx context.Context, i registry.Instance) error {
	return r.setEnabled(ctx, "enable", i, true)
}

// errNotOurs is the edit's answer for an instance this backend did not
// register, sending setEnabled to the admin API.
var errNotOurs = errors.New("not registered through this backend")

func (r *Registry) setEnabled(ctx context.Context, op string, i registry.Instance, on bool) error {
	if err := r.awaitClear(ctx, op, i); err != nil {
		return err
	}
	err := r.change(ctx, op, i, func(set map[string]*published) error {
		p := set[r.instanceKey(i)]
		if p == nil {
			return errNotOurs
		}
		p.enabled = on
		return nil
	})
	if errors.Is(err, errNotOurs) {
		return r.setEnabledRemote(ctx, op, i, on)
	}
	return err
}

// change edits a copy of the service's published set with edit, publishes
// the result, and keeps it only if the server took it.
func (r *Registry) change(ctx context.Context, op string, i registry.Instance, edit func(map[string]*published) error) error {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	if err := ctx.Err(); err != nil {
		return r.wrap(op, err)
	}
	// A publish whose caller gave up may still be in the SDK; wait for it
	// so the server sees publishes in order.
	if r.pubDone != nil {
		select {
		case <-r.pubDone:
		case <-ctx.Done():
			return r.wrap(op, ctx.Err())
		}
	}
	key := r.serviceKey(i)
	old := r.pubs[key]
	next := make(map[string]*published, len(old)+1)
	for k, p := range old {
		cp := *p
		next[k] = &cp
	}
	if err := edit(next); err != nil {
		return r.wrap(op, err)
	}
	if len(old) == 0 && len(next) == 0 {
		return nil // nothing of ours to remove
	}
	if err := r.publish(ctx, op, i, next); err != nil {
		return err
	}
	if len(next) == 0 {
		delete(r.pubs, key)
	} else {
		r.pubs[key] = next
	}
	r.pubGen++
	r.pubAt = time.Now()
	return nil
}

func (r *Registry) publish(ctx context.Context, op string, i registry.Instance, set map[string]*published) error {
	done := make(chan struct{})
	r.pubDone = done
	if len(set) == 0 {
		p := vo.DeregisterInstanceParam{
			Ip: i.Address, Port: uint64(i.Port), Cluster: r.cluster(i), ServiceName: i.Service, GroupName: r.group(i), Ephemeral: true,
		}
		return r.call(ctx, op, func() (bool, error) { defer close(done); return r.c.DeregisterInstance(p) })
	}
	batch := vo.BatchRegisterInstanceParam{ServiceName: i.Service, GroupName: r.group(i)}
	for _, p := range set {
		in := p.inst
		batch.Instances = append(batch.Instances, vo.RegisterInstanceParam{
			Ip: in.Address, Port: uint64(in.Port), Weight: weight(in), Enable: p.enabled, Healthy: true,
			Metadata: metadata(in), ClusterName: r.cluster(in), ServiceName: in.Service, GroupName: r.group(in), Ephemeral: true,
		})
	}
	return r.call(ctx, op, func() (bool, error) { defer close(done); return r.c.BatchRegisterInstance(batch) })
}

// checkLogin logs in once over HTTP so that wrong credentials fail New with
// a clear error: the SDK only logs a failed login, and then every call
// answers false. A server that cannot be reached is not an error here; the
// SDK keeps trying, and calls fail within their own deadlines.
func checkLogin(o options) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	form := url.Values{"username": {o.username}, "password": {o.password}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+o.addr+"/nacos/v1/auth/login", strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("nacos: login request for %s: %w", o.addr, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("nacos: login to %s as %q refused (HTTP %d); check NACOS_USERNAME and NACOS_PASSWORD", o.addr, o.username, resp.StatusCode)
	}
	return nil
}

// Package consul is lameduck's Consul backend, on hashicorp/consul/api.
//
// Registrations go to the local agent with a health check (TTL by default,
// with a heartbeat loop; or HTTP or TCP) and DeregisterCriticalServiceAfter,
// so a process that dies without a word is dropped anyway. A keeper goroutine
// per registration restores it after the agent loses its state (a restarted
// dev agent), as the owner and any operator left it: a deregistered service
// stays out and a disabled one comes back in maintenance mode. Watches are blocking queries on the passing health list: what
// consumers that use Consul's health API see.
package consul

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/internal/backoff"
	"github.com/lameduck/lameduck/internal/readcap"
	"github.com/lameduck/lameduck/registry"
)

// Environment variables Consul's own tools read; lameduck honours them as
// defaults.
const (
	EnvHTTPAddr  = api.HTTPAddrEnvName  // CONSUL_HTTP_ADDR
	EnvHTTPToken = api.HTTPTokenEnvName // CONSUL_HTTP_TOKEN
	EnvHTTPAuth  = api.HTTPAuthEnvName  // CONSUL_HTTP_AUTH: user:password for HTTP basic auth, read by the SDK itself
)

// client is the part of the Consul SDK the backend uses, so unit tests can
// use a fake.
type client interface {
	ServiceRegisterOpts(s *api.AgentServiceRegistration, o api.ServiceRegisterOpts) error
	ServiceDeregisterOpts(id string, q *api.QueryOptions) error
	EnableServiceMaintenanceOpts(id, reason string, q *api.QueryOptions) error
	DisableServiceMaintenanceOpts(id string, q *api.QueryOptions) error
	UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error
	// HealthChecks is the keeper's blocking query between renewals;
	// AgentHealthServiceByIDOpts tells it whether the agent has the
	// service and whether it is in maintenance mode.
	HealthChecks(service string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error)
	AgentHealthServiceByIDOpts(id string, q *api.QueryOptions) (string, *api.AgentServiceChecksInfo, error)
	HealthService(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
	// AgentNodeID is the agent's node ID, which a dev agent draws anew at
	// every start: the keeper tells an agent that lost its state from a
	// service that someone deregistered.
	AgentNodeID(q *api.QueryOptions) (string, error)
	// CatalogDeregister and StatusPeers serve the views (see views.go).
	CatalogDeregister(d *api.CatalogDeregistration, q *api.WriteOptions) error
	StatusPeers(q *api.QueryOptions) ([]string, error)
	LANMembers(q *api.QueryOptions) ([]*api.AgentMember, error)
}

type sdk struct {
	*api.Agent
	health  *api.Health
	catalog *api.Catalog
	status  *api.Status
	raw     *api.Raw
}

func (s sdk) CatalogDeregister(d *api.CatalogDeregistration, q *api.WriteOptions) error {
	_, err := s.catalog.Deregister(d, q)
	return err
}

func (s sdk) StatusPeers(q *api.QueryOptions) ([]string, error) {
	return s.status.PeersWithQueryOptions(q)
}

// LANMembers is the agent's view of the LAN gossip pool (Agent.Members,
// which takes no context).
func (s sdk) LANMembers(q *api.QueryOptions) ([]*api.AgentMember, error) {
	var out []*api.AgentMember
	_, err := s.raw.Query("/v1/agent/members", &out, q)
	return out, err
}

func (s sdk) AgentNodeID(q *api.QueryOptions) (string, error) {
	var self struct{ Config struct{ NodeID string } }
	if _, err := s.raw.Query("/v1/agent/self", &self, q); err != nil {
		return "", err
	}
	return self.Config.NodeID, nil
}

func (s sdk) HealthChecks(service string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	return s.health.Checks(service, q)
}

func (s sdk) HealthService(service, tag string, passing bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return s.health.Service(service, tag, passing, q)
}

// Check is the health check registered with each instance. Set exactly one
// of TTL, HTTP or TCP.
type Check struct {
	TTL  time.Duration // the registry marks the instance critical unless renewed within TTL; the backend renews it
	HTTP string        // URL the agent GETs
	TCP  string        // host:port the agent dials
	// Interval and Timeout apply to HTTP and TCP checks; defaults 5s and 2s.
	Interval, Timeout time.Duration
	// DeregisterCriticalAfter drops an instance that stays critical this
	// long; default 1m.
	DeregisterCriticalAfter time.Duration
}

// TLS configures HTTPS to the agent.
type TLS struct {
	CAFile, CertFile, KeyFile string
	InsecureSkipVerify        bool
}

// Option configures a Registry.
type Option func(*options)

type options struct {
	address    string
	token      string
	datacenter string
	tls        *TLS
	check      Check
	resync     time.Duration
	backoff    backoff.Policy
	client     client

	confirm        []string                 // servers to confirm through, host:port
	confirmServers bool                     // and every server in the raft peer set
	confirmAgents  bool                     // and every live agent of the LAN pool
	viewClient     func(addr string) client // for unit tests; nil: the SDK
}

func (o *options) setDefaults() {
	if o.check.TTL == 0 && o.check.HTTP == "" && o.check.TCP == "" {
		o.check.TTL = 15 * time.Second
	}
	if o.check.Interval <= 0 {
		o.check.Interval = 5 * time.Second
	}
	if o.check.Timeout <= 0 {
		o.check.Timeout = 2 * time.Second
	}
	if o.check.DeregisterCriticalAfter <= 0 {
		o.check.DeregisterCriticalAfter = time.Minute
	}
	if o.resync <= 0 {
		o.resync = 5 * time.Second
		if o.check.TTL > 0 {
			o.resync = min(o.resync, o.check.TTL/3)
		}
	}
}

// WithAddress sets the agent's address (host:port); the default is
// $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
func WithAddress(addr string) Option { return func(o *options) { o.address = addr } }

// WithToken sets the ACL token; the default is $CONSUL_HTTP_TOKEN.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithDatacenter sets the datacenter; the default is the agent's.
func WithDatacenter(dc string) Option { return func(o *options) { o.datacenter = dc } }

// WithTLS talks HTTPS to the agent.
func WithTLS(t TLS) Option { return func(o *options) { o.tls = &t } }

// WithCheck sets the health check registered with instances; the default
// is a 15s TTL check renewed every 5s.
func WithCheck(c Check) Option { return func(o *options) { o.check = c } }

// WithResync sets how often a registration is renewed (TTL) or checked for
// loss and restored; the default is 5s, or TTL/3 if shorter.
func WithResync(d time.Duration) Option { return func(o *options) { o.resync = d } }

func withClient(c client) Option { return func(o *options) { o.client = c } }

// Registry is the Consul backend. It is safe for concurrent use.
type Registry struct {
	o    options
	name string
	c    client

	closeIdle func() // drops the transport's idle connections

	mu      sync.Mutex
	keepers map[string]*keeper
	views   map[string]*view // by address; see views.go
	closed  bool
	wg      sync.WaitGroup
}

var (
	_ registry.Registry     = (*Registry)(nil)
	_ registry.Disabler     = (*Registry)(nil)
	_ registry.HealthSetter = (*Registry)(nil)
)

// New returns a Consul backend. It does not contact the agent.
func New(opts ...Option) (*Registry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	n := 0
	for _, set := range []bool{o.check.TTL != 0, o.check.HTTP != "", o.check.TCP != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("consul: a check sets more than one of TTL, HTTP and TCP; set exactly one")
	}
	if o.check.TTL < 0 || o.resync < 0 {
		return nil, errors.New("consul: TTL and resync interval must not be negative")
	}
	o.setDefaults()
	// After the defaults, so that a resync is also checked against the
	// default TTL.
	if o.check.TTL > 0 && o.resync >= o.check.TTL {
		return nil, fmt.Errorf("consul: resync interval %v must be shorter than the TTL %v, or the check expires between renewals", o.resync, o.check.TTL)
	}

	cfg := o.apiConfig(o.address)
	name := "consul://" + cfg.Address
	if cfg.Datacenter != "" {
		name += "?dc=" + cfg.Datacenter
	}
	c := o.client
	closeIdle := func() {}
	if c == nil {
		var err error
		if c, closeIdle, err = newSDK(cfg); err != nil {
			return nil, fmt.Errorf("consul: configure client for %s: %w", name, err)
		}
	}
	return &Registry{o: o, name: name, c: c, keepers: map[string]*keeper{}, closeIdle: closeIdle, views: map[string]*view{}}, nil
}

// apiConfig is the SDK's configuration for the agent or server at address
// (empty: $CONSUL_HTTP_ADDR, else 127.0.0.1:8500), with o's token, TLS and
// datacenter.
func (o *options) apiConfig(address string) *api.Config {
	cfg := api.DefaultConfig() // reads CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT...
	if address != "" {
		cfg.Address = address
	}
	if o.token != "" {
		cfg.Token = o.token
	}
	if o.datacenter != "" {
		cfg.Datacenter = o.datacenter
	}
	if o.tls != nil {
		cfg.Scheme = "https"
		cfg.TLSConfig.CAFile = o.tls.CAFile
		cfg.TLSConfig.CertFile = o.tls.CertFile
		cfg.TLSConfig.KeyFile = o.tls.KeyFile
		cfg.TLSConfig.InsecureSkipVerify = o.tls.InsecureSkipVerify
	}
	return cfg
}

// newSDK makes a client with a transport of its own, so that Close can drop
// its idle connections. Every call carries a ctx, which bounds blocking
// queries.
func newSDK(cfg *api.Config) (client, func(), error) {
	if err := checkTLSFiles(cfg.TLSConfig); err != nil {
		return nil, nil, err
	}
	tr := api.DefaultConfig().Transport
	cfg.Transport = tr
	ac, err := api.NewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	return sdk{Agent: ac.Agent(), health: ac.Health(), catalog: ac.Catalog(), status: ac.Status(), raw: ac.Raw()}, tr.CloseIdleConnections, nil
}

// maxTLSFile bounds the CA, certificate and key files: the SDK reads each
// whole, so /dev/zero or a wrong, huge file would take all memory. A
// system's whole CA bundle is about 200 KiB.
const maxTLSFile = 1 << 20

// checkTLSFiles refuses TLS files, from WithTLS or from the SDK's
// environment (CONSUL_CACERT, CONSUL_CAPATH...), that are not regular files
// of at most maxTLSFile bytes, before the SDK reads them.
func checkTLSFiles(t api.TLSConfig) error {
	for _, f := range []struct{ what, path string }{{"CA file", t.CAFile}, {"certificate file", t.CertFile}, {"key file", t.KeyFile}} {
		if f.path == "" {
			continue
		}
		if err := readcap.CheckFile(f.path, maxTLSFile); err != nil {
			return fmt.Errorf("TLS %s: %w", f.what, err)
		}
	}
	if t.CAPath == "" {
		return nil
	}
	// The SDK reads every file under the CA directory.
	return filepath.WalkDir(t.CAPath, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if err := readcap.CheckFile(path, maxTLSFile); err != nil {
			return fmt.Errorf("TLS CA directory: %w", err)
		}
		return nil
	})
}

func (r *Registry) String() string { return r.name }

// ServiceID is the Consul service ID lameduck uses for i: i.ID, or
// "service-address-port".
func ServiceID(i registry.Instance) string {
	if i.ID != "" {
		return i.ID
	}
	return i.Service + "-" + i.Address + "-" + strconv.Itoa(i.Port)
}

func checkID(serviceID string) string { return "service:" + serviceID }

// maintReason is the reason lameduck gives Consul for maintenance mode.
const maintReason = "lameduck: going offline"

// registration is the agent registration of i. Its check starts passing,
// or critical when hidden: a restore of a disabled instance must not show
// it to consumers before maintenance mode is on again.
func (r *Registry) registration(i registry.Instance, hidden bool) *api.AgentServiceRegistration {
	id := ServiceID(i)
	chk := &api.AgentServiceCheck{
		CheckID:                        checkID(id),
		Name:                           "lameduck",
		DeregisterCriticalServiceAfter: r.o.check.DeregisterCriticalAfter.String(),
	}
	switch c := r.o.check; {
	case c.TTL > 0:
		chk.TTL = c.TTL.String()
		chk.Status = api.HealthPassing // TTL checks start critical otherwise
		if hidden {
			chk.Status = api.HealthCritical
		}
	case c.HTTP != "":
		chk.HTTP, chk.Interval, chk.Timeout = c.HTTP, c.Interval.String(), c.Timeout.String()
	default:
		chk.TCP, chk.Interval, chk.Timeout = c.TCP, c.Interval.String(), c.Timeout.String()
	}
	reg := &api.AgentServiceRegistration{
		ID:      id,
		Name:    i.Service,
		Tags:    i.Tags,
		Port:    i.Port,
		Address: i.Address,
		Meta:    i.Metadata,
		Check:   chk,
	}
	if i.Weight > 0 {
		reg.Weights = &api.AgentWeights{Passing: max(1, int(i.Weight)), Warning: 1}
	}
	return reg
}

func (r *Registry) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var se api.StatusError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != http.StatusNotFound && se.Code != http.StatusTooManyRequests {
		err = fmt.Errorf("%w: %w", registry.ErrRejected, err)
	}
	return &registry.Error{Registry: r.name, Op: op, Err: err}
}

func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Register registers i with its health check, then keeps the registration
// alive (TTL renewals) and restores it if the agent loses it, until
// Deregister or Close.
func (r *Registry) Register(ctx context.Context, i registry.Instance) error {
	if err := i.Validate(); err != nil {
		return err
	}
	if err := r.register(ctx, i, false); err != nil {
		return r.wrap("register", err)
	}
	id := ServiceID(i)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.wrap("register", errors.New("backend is closed"))
	}
	if k := r.keepers[id]; k != nil && !k.ended() {
		k.setInstance(i)
		return nil
	}
	k := newKeeper(r, i)
	// Best effort: without it, the keeper restores a lost registration
	// whatever the cause.
	k.nodeID, _ = r.c.AgentNodeID((&api.QueryOptions{}).WithContext(ctx))
	r.keepers[id] = k
	r.wg.Add(1)
	go func() { defer r.wg.Done(); k.run() }()
	return nil
}

func (r *Registry) register(ctx context.Context, i registry.Instance, hidden bool) error {
	return r.c.ServiceRegisterOpts(r.registration(i, hidden), api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
}

func (r *Registry) stopKeeper(id string) {
	r.mu.Lock()
	k := r.keepers[id]
	delete(r.keepers, id)
	r.mu.Unlock()
	if k != nil {
		k.stop()
	}
}

// Deregister removes i from the agent. An unknown instance is success.
func (r *Registry) Deregister(ctx context.Context, i registry.Instance) error {
	id := ServiceID(i)
	r.stopKeeper(id)
	err := r.c.ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil && !isNotFound(err) {
		return r.wrap("deregister", err)
	}
	return nil
}

// Disable puts i in service maintenance mode, which consumers of the
// passing health list no longer see.
func (r *Registry) Disable(ctx context.Context, i registry.Instance) error {
	id := ServiceID(i)
	r.withKeeper(id, func(k *keeper) { k.setDisabled(true) })
	err := r.c.EnableServiceMaintenanceOpts(id, maintReason, (&api.QueryOptions{}).WithContext(ctx))
	return r.wrap("disable", err)
}

// Enable takes i out of maintenance mode.
func (r *Registry) Enable(ctx context.Context, i registry.Instance) error {
	id := ServiceID(i)
	r.withKeeper(id, func(k *keeper) { k.setDisabled(false) })
	err := r.c.DisableServiceMaintenanceOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	return r.wrap("enable", err)
}

// SetHealth sets the TTL check's status; the keeper keeps renewing with
// that status. It needs the default TTL check.
func (r *Registry) SetHealth(ctx context.Context, i registry.Instance, h registry.Health, note string) error {
	if r.o.check.TTL <= 0 {
		return r.wrap("set health", fmt.Errorf("%w: health can be set only with a TTL check", registry.ErrNotSupported))
	}
	id := ServiceID(i)
	r.withKeeper(id, func(k *keeper) { k.setHealth(h, note) })
	err := r.c.UpdateTTLOpts(checkID(id), note, consulHealth(h), (&api.QueryOptions{}).WithContext(ctx))
	return r.wrap("set health", err)
}

func consulHealth(h registry.Health) string {
	switch h {
	case registry.HealthPassing:
		return api.HealthPassing
	case registry.HealthWarning:
		return api.HealthWarning
	}
	return api.HealthCritical
}

func (r *Registry) withKeeper(id string, f func(*keeper)) {
	r.mu.Lock()
	k := r.keepers[id]
	r.mu.Unlock()
	if k != nil {
		f(k)
	}
}

// Close stops renewing registrations (it does not deregister them: with a
// TTL check they expire, which is what a crash should look like) and waits
// for the backend's goroutines to end.
func (r *Registry) Close() error {
	r.mu.Lock()
	r.closed = true
	ks := r.keepers
	r.keepers = map[string]*keeper{}
	r.mu.Unlock()
	for _, k := range ks {
		k.stop()
	}
	r.wg.Wait()
	r.closeIdle()
	r.mu.Lock()
	for _, v := range r.views {
		v.closeIdle()
	}
	r.mu.Unlock()
	return nil
}

// Package registry defines what lameduck needs from a service registry: an
// Instance value, the Registry interface with optional capabilities, a
// fan-out over several registries, and WatchGone, the registry's confirmation
// that consumers no longer see an instance.
//
// Backends live beside this package (adapters/memory, adapters/consul,
// adapters/nacos). This package imports the standard library only.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
)

// Instance is one registered endpoint of a service.
//
// Service, Address and Port are required. ID identifies the instance inside
// its service; when empty, backends derive one from Address and Port, and
// matching falls back to Address:Port. Namespace, Group, Cluster and Weight are
// honoured by backends that have the notion (Nacos) and ignored by others.
type Instance struct {
	Service  string            `json:"service"`
	ID       string            `json:"id,omitempty"`
	Address  string            `json:"address"`
	Port     int               `json:"port"`
	Tags     []string          `json:"tags,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`

	Namespace string  `json:"namespace,omitempty"`
	Group     string  `json:"group,omitempty"`
	Cluster   string  `json:"cluster,omitempty"`
	Weight    float64 `json:"weight,omitempty"`
}

// Validate reports the first problem that makes i unusable, as an error that
// says what to change.
func (i Instance) Validate() error {
	switch {
	case i.Service == "":
		return errors.New("registry: instance has an empty service name; set Instance.Service")
	case i.Address == "":
		return fmt.Errorf("registry: instance of %q has an empty address; set Instance.Address to a host or IP", i.Service)
	case i.Port < 1 || i.Port > 65535:
		return fmt.Errorf("registry: instance of %q has port %d; want a port between 1 and 65535", i.Service, i.Port)
	case i.Weight < 0:
		return fmt.Errorf("registry: instance of %q has negative weight %g; want 0 (backend default) or more", i.Service, i.Weight)
	}
	return nil
}

// Endpoint returns "address:port".
func (i Instance) Endpoint() string {
	return net.JoinHostPort(i.Address, strconv.Itoa(i.Port))
}

// Key returns the ID when set, otherwise the endpoint. Two instances of the
// same service with the same key are the same instance.
func (i Instance) Key() string {
	if i.ID != "" {
		return i.ID
	}
	return i.Endpoint()
}

// Same reports whether o is the same instance as i: same service and either
// the same ID or, when either ID is empty, the same endpoint.
func (i Instance) Same(o Instance) bool {
	if i.Service != o.Service {
		return false
	}
	if i.ID != "" && o.ID != "" {
		return i.ID == o.ID
	}
	return i.Port == o.Port && i.Address == o.Address
}

// Registry is a service registry that lameduck can take an instance out of.
// Implementations are safe for concurrent use and honour ctx on every call.
type Registry interface {
	// Register adds i, or updates it if already present.
	Register(ctx context.Context, i Instance) error
	// Deregister removes i. Removing an instance that is not registered
	// succeeds: the goal state is already reached.
	Deregister(ctx context.Context, i Instance) error
	// Watch starts watching the instances that consumers of service see.
	// The first Next returns the current list.
	Watch(ctx context.Context, service string) (Watcher, error)
	// String names the registry for logs and errors, e.g.
	// "consul://127.0.0.1:8500". It never includes credentials.
	String() string
}

// Watcher streams the consumer-visible instance list of one service.
type Watcher interface {
	// Next blocks until the list differs from the last one returned (the
	// first call returns at once with the current list), then returns the
	// whole list. It returns ctx.Err() when ctx ends, and
	// context.Canceled after Stop. Not safe for concurrent calls.
	Next(ctx context.Context) ([]Instance, error)
	// Stop ends the watch and releases its resources. It is safe to call
	// more than once and from any goroutine.
	Stop() error
}

// Disabler is a Registry that can hide an instance from consumers without
// removing its registration (Nacos enabled=false, Consul maintenance mode).
type Disabler interface {
	Disable(ctx context.Context, i Instance) error
	Enable(ctx context.Context, i Instance) error
}

// Health is an instance's health as a registry reports it to consumers.
type Health int

const (
	HealthPassing Health = iota
	HealthWarning
	HealthCritical
)

func (h Health) String() string {
	switch h {
	case HealthPassing:
		return "passing"
	case HealthWarning:
		return "warning"
	case HealthCritical:
		return "critical"
	}
	return "Health(" + strconv.Itoa(int(h)) + ")"
}

// HealthSetter is a Registry whose instances carry a health status that the
// owner sets (Consul TTL checks, the memory registry). Consumers see only
// passing instances.
type HealthSetter interface {
	SetHealth(ctx context.Context, i Instance, h Health, note string) error
}

// ErrNotSupported is returned, wrapped, when a registry lacks an optional
// capability that the caller asked for.
var ErrNotSupported = errors.New("registry: not supported by this backend")

// ErrRejected is wrapped by errors a registry answered with a refusal that
// retrying will not change (a malformed request, a permission denied), as
// opposed to an outage. Callers that retry stop on it: it reports itself
// Permanent, which is what lameduck's one retry loop looks for.
var ErrRejected error = rejected{}

type rejected struct{}

func (rejected) Error() string { return "registry: request rejected" }

// Permanent reports that retrying cannot change a refusal.
func (rejected) Permanent() bool { return true }

// Error is an error from one named registry, so a caller acting on several
// can tell which failed.
type Error struct {
	Registry string // Registry.String()
	Op       string // "register", "deregister", "watch", ...
	Err      error
}

func (e *Error) Error() string {
	return "registry: " + e.Op + " on " + e.Registry + ": " + e.Err.Error()
}
func (e *Error) Unwrap() error { return e.Err }

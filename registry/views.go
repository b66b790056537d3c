package registry

import (
	"context"
	"time"
)

// Viewer is a Registry whose consumers read it through several servers of
// one cluster: the servers of a Consul datacenter, the nodes of a Nacos
// cluster. Each server holds its own copy of the instance lists and can lag
// the one that took a change, by milliseconds while the cluster is healthy
// and by minutes when that server dies before the others learn of the
// change. WatchGone on a Viewer confirms a change only once every view that
// answers shows it.
type Viewer interface {
	// Views returns the servers to confirm through, each once. It may ask
	// the cluster for its members. An empty list means the registry's own
	// watch is the only view.
	Views(ctx context.Context) ([]View, error)
}

// OwnViewer is a Viewer that tells whether its views include the server its
// own watch reads from: every node of a Nacos cluster, one of which the
// client is connected to; the app's own agent among a Consul datacenter's
// agents. WatchGone then confirms on the views alone while any of them
// answers, since the own watch adds nothing and its server may be the one
// that died: a Nacos client whose node was killed hears nothing until it has
// failed over and subscribed again, which a cluster without a raft leader
// refuses for seconds.
type OwnViewer interface {
	Viewer
	ViewsIncludeOwn(views []View) bool
}

// View is one server's own copy of the consumer-visible list, the one that
// the consumers attached to that server are fed from.
type View interface {
	// Watch is as Registry.Watch, except that the watcher's Next returns an
	// error, instead of retrying, when the server does not answer, so the
	// caller can tell a server that is down from one that lags. Next may be
	// called again after such an error; it then asks the server again.
	Watch(ctx context.Context, service string) (Watcher, error)
	// String names the server, as in "consul://127.0.0.12:8500".
	String() string
}

// ViewRemover is a View that can take an instance out again through its
// own server. WatchGone uses it when the change it waits for has not reached
// every view long after it was made: the server that took the removal may
// have died before the others learned of it.
type ViewRemover interface {
	// RemoveAgain removes i through this server, or hides it from consumers
	// when disable is true. Removing what is already gone succeeds. It
	// returns an error wrapping ErrNotSupported when the server cannot do
	// it (Consul's maintenance mode lives in the agent alone).
	RemoveAgain(ctx context.Context, i Instance, disable bool) error
}

// ViewEventKind says what a ViewEvent reports.
type ViewEventKind int

const (
	ViewGone         ViewEventKind = iota // the view no longer lists the instance
	ViewDown                              // the view did not answer (Err); it holds nothing up while down
	ViewUp                                // a view that was down answers again
	ViewRemovedAgain                      // the instance was removed again through the view (Err nil) or that failed (Err)
)

var viewEventNames = [...]string{"gone", "down", "up", "removed-again"}

func (k ViewEventKind) String() string {
	if k >= 0 && int(k) < len(viewEventNames) {
		return viewEventNames[k]
	}
	return "ViewEventKind(?)"
}

// ViewEvent reports what one view of a GoneWatch did.
type ViewEvent struct {
	Kind ViewEventKind
	View string        // View.String()
	At   time.Duration // since the GoneWatch was opened
	Err  error
}

// GoneOptions tunes a GoneWatch. The zero value suits a deregistration.
type GoneOptions struct {
	// Disable says the instance was disabled, not deregistered, so that a
	// removal made again through a view disables it too.
	Disable bool
	// OnView, when not nil, receives every ViewEvent, from the watch's own
	// goroutines, one at a time.
	OnView func(ViewEvent)
	// RetryDelay gives the wait before asking a view that did not answer
	// again; attempt counts from 0. The default waits 250ms every time.
	RetryDelay func(attempt int) time.Duration
	// RemoveAgainAfter is how long after the watch was opened a view may
	// still list the instance before the removal is made again through a
	// live view (and again at that interval until every view has dropped
	// it). It is also done at once when a view goes down while others still
	// list the instance. Default 3s: well past the lag of a healthy cluster
	// (Consul: about 100ms; Nacos: about 1.2s).
	RemoveAgainAfter time.Duration
	// Settle is how long every view must stay clear before the watch
	// confirms. A server answers its watchers one after another, so the
	// view and a consumer on the same server learn of a change in either
	// order: 3.4 ms apart at most on an idle machine, 25.2 ms under a load
	// average of 12 on 2 cores (BENCHMARKS.md, Consul and Nacos clusters on
	// loopback). Default 50ms; it applies only when there are views.
	Settle time.Duration
}

func (o *GoneOptions) setDefaults() {
	if o.RetryDelay == nil {
		o.RetryDelay = func(int) time.Duration { return 250 * time.Millisecond }
	}
	if o.RemoveAgainAfter <= 0 {
		o.RemoveAgainAfter = 3 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 50 * time.Millisecond
	}
}

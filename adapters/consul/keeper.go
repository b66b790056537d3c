package consul

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/registry"
)

// keeper holds one registration in place: it renews the TTL check and, when
// the agent no longer knows the service because the agent lost its state (a
// restarted dev agent, seen as a new node ID), registers it again with the
// health and maintenance state it had. When the agent is the same one, the
// service was deregistered on purpose (`lameduck offline` from another
// process, an operator), and the keeper stops instead of fighting it.
type keeper struct {
	r      *Registry
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	nodeID string // the agent's node ID when registered; only the keeper's goroutine changes it after

	mu       sync.Mutex
	inst     registry.Instance
	health   registry.Health
	note     string
	disabled bool
}

func newKeeper(r *Registry, i registry.Instance) *keeper {
	ctx, cancel := context.WithCancel(context.Background())
	return &keeper{r: r, ctx: ctx, cancel: cancel, done: make(chan struct{}), inst: i}
}

func (k *keeper) setInstance(i registry.Instance) { k.mu.Lock(); k.inst = i; k.mu.Unlock() }
func (k *keeper) setDisabled(d bool)              { k.mu.Lock(); k.disabled = d; k.mu.Unlock() }
func (k *keeper) setHealth(h registry.Health, note string) {
	k.mu.Lock()
	k.health, k.note = h, note
	k.mu.Unlock()
}

// ended reports whether the keeper has stopped keeping.
func (k *keeper) ended() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// errRemovedElsewhere ends the keeper: the same agent dropped the service.
var errRemovedElsewhere = errors.New("consul: the service was deregistered by someone else; no longer keeping it")

// stop ends the keeper and waits for it.
func (k *keeper) stop() {
	k.cancel()
	<-k.done
}

func (k *keeper) run() {
	defer close(k.done)
	failures := 0
	for {
		wait := k.r.o.resync
		err := k.tick()
		if errors.Is(err, errRemovedElsewhere) {
			return
		}
		if err != nil && k.ctx.Err() == nil {
			wait = min(wait, k.r.o.backoff.Delay(failures))
			failures++
		} else {
			failures = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-k.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// tick renews or checks the registration once, restoring it if lost.
func (k *keeper) tick() error {
	ctx, cancel := context.WithTimeout(k.ctx, max(k.r.o.resync, time.Second))
	defer cancel()
	k.mu.Lock()
	inst, health, note, disabled := k.inst, k.health, k.note, k.disabled
	k.mu.Unlock()
	id := ServiceID(inst)
	q := (&api.QueryOptions{}).WithContext(ctx)

	var err error
	if k.r.o.check.TTL > 0 {
		err = k.r.c.UpdateTTLOpts(checkID(id), note, consulHealth(health), q)
	} else {
		_, _, err = k.r.c.AgentService(id, q)
	}
	if err == nil || !isNotFound(err) {
		return err
	}
	node, err := k.r.c.AgentNodeID(q)
	if err != nil {
		return err
	}
	if k.nodeID != "" && node == k.nodeID {
		return errRemovedElsewhere
	}
	k.nodeID = node
	// The agent forgot us: register again, with the state we had.
	if err := k.r.register(ctx, inst); err != nil {
		return err
	}
	if k.r.o.check.TTL > 0 && health != registry.HealthPassing {
		if err := k.r.c.UpdateTTLOpts(checkID(id), note, consulHealth(health), q); err != nil {
			return err
		}
	}
	if disabled {
		return k.r.c.EnableServiceMaintenanceOpts(id, "lameduck: going offline", q)
	}
	return nil
}

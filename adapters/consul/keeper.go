package consul

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lameduck/lameduck/registry"
)

// keeper holds one registration in place: it renews the TTL check and, when
// the agent no longer knows the service because the agent lost its state (a
// restarted dev agent, seen as a new node ID), registers it again with the
// health and maintenance state it had.
//
// The keeper restores the owner's intent, never more. While the agent is
// the same one, what the agent shows is the intent: a service that is gone
// was deregistered on purpose (`lameduck offline` from another process, an
// operator), and the keeper stops instead of fighting it; a service in
// maintenance mode was disabled, and is restored in maintenance mode. The
// keeper learns of either at once, through a blocking query on the
// service's checks between renewals, and at the latest at the next
// renewal (one resync interval) if that query fails. Deregister (going offline)
// stops the keeper before it removes the service, and Disable records the
// intent before it calls the agent, so neither can be undone by a restore.
type keeper struct {
	r      *Registry
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// Only the keeper's goroutine uses these after it starts.
	nodeID string       // the agent's node ID when registered
	index  uint64       // the blocking query's index; 0 starts afresh
	expect catalogState // what the last tick found; await ends when the catalog shows otherwise
	// maintPending: a restore registered a disabled instance, but putting
	// it in maintenance mode failed; the next tick does that first.
	maintPending bool

	mu       sync.Mutex
	inst     registry.Instance
	health   registry.Health
	note     string
	disabled bool
	// intent counts the owner's Disable and Enable calls: an observation
	// of the agent taken before one of them must not overwrite it.
	intent uint64
}

func newKeeper(r *Registry, i registry.Instance) *keeper {
	ctx, cancel := context.WithCancel(context.Background())
	return &keeper{r: r, ctx: ctx, cancel: cancel, done: make(chan struct{}), inst: i}
}

func (k *keeper) setInstance(i registry.Instance) { k.mu.Lock(); k.inst = i; k.mu.Unlock() }
func (k *keeper) setDisabled(d bool) {
	k.mu.Lock()
	k.disabled = d
	k.intent++
	k.mu.Unlock()
}
func (k *keeper) setHealth(h registry.Health, note string) {
	k.mu.Lock()
	k.health, k.note = h, note
	k.mu.Unlock()
}

// observe records the maintenance state the agent showed, unless the
// owner changed it since the observation began (intent moved on).
func (k *keeper) observe(intent uint64, maint bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.intent != intent || k.disabled == maint {
		return
	}
	k.disabled = maint
	what := "enabled (maintenance mode off)"
	if maint {
		what = "disabled (maintenance mode on)"
	}
	slog.Info("consul: the instance was "+what+" by someone else; an agent restart restores it so",
		"registry", k.r.name, "service_id", ServiceID(k.inst))
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
	// A look that differs from the tick's ends await early and ticks at
	// once; when the next look differs again (a catalog a moment behind
	// the agent, or one the agent cannot write to), ticks are at least
	// gap apart.
	gap := min(k.r.o.resync, time.Second)
	early := false
	for {
		began := time.Now()
		err := k.tick()
		if errors.Is(err, errRemovedElsewhere) {
			k.mu.Lock()
			id := ServiceID(k.inst)
			k.mu.Unlock()
			slog.Info(err.Error(), "registry", k.r.name, "service_id", id)
			return
		}
		if err != nil && k.ctx.Err() == nil {
			k.sleep(min(k.r.o.resync, k.r.o.backoff.Delay(failures)))
			failures++
			early = false
		} else {
			failures = 0
			again := k.await(k.r.o.resync)
			if again && early {
				k.sleep(time.Until(began.Add(gap)))
			}
			early = again
		}
		if k.ctx.Err() != nil {
			return
		}
	}
}

func (k *keeper) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-k.ctx.Done():
	case <-t.C:
	}
}

// await waits d for the next renewal, returning early when what
// consumers see of the service differs from what the last tick found: its
// checks vanish (deregistered) or a maintenance check appears or goes. It
// is a blocking query on the service's checks in the catalog, which the
// agent copies its own changes to at once; the tick that follows asks the
// agent itself. It reports whether it returned early.
func (k *keeper) await(d time.Duration) bool {
	k.mu.Lock()
	inst := k.inst
	k.mu.Unlock()
	id := ServiceID(inst)
	filter := "ServiceID == " + strconv.Quote(id)
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 || k.ctx.Err() != nil {
			return false
		}
		// The agent may hold the query a little past WaitTime (jitter).
		ctx, cancel := context.WithTimeout(k.ctx, left+left/8+100*time.Millisecond)
		checks, meta, err := k.r.c.HealthChecks(inst.Service, (&api.QueryOptions{WaitIndex: k.index, WaitTime: left, Filter: filter}).WithContext(ctx))
		cancel()
		if err != nil {
			k.index = 0
			k.sleep(time.Until(deadline))
			return false
		}
		if catalogStateOf(checks, id) != k.expect {
			k.index = 0
			return true // renew and look now
		}
		if meta.LastIndex < k.index {
			k.index = 0 // the index went backwards: start over, as Consul advises
		} else {
			k.index = meta.LastIndex
		}
	}
}

// maintCheckPrefix starts the ID of the check Consul adds to a service in
// maintenance mode.
const maintCheckPrefix = "_service_maintenance:"

// catalogState is what the keeper follows of a service in the catalog:
// whether it is listed, and whether it is in maintenance mode.
type catalogState struct{ listed, maint bool }

func catalogStateOf(checks api.HealthChecks, id string) catalogState {
	var s catalogState
	for _, c := range checks {
		if c.ServiceID != id {
			continue
		}
		s.listed = true
		if c.CheckID == maintCheckPrefix+id {
			s.maint = true
		}
	}
	return s
}

// tick renews or checks the registration once, learns the maintenance
// state, and restores the registration if the agent lost it.
func (k *keeper) tick() error {
	ctx, cancel := context.WithTimeout(k.ctx, max(k.r.o.resync, time.Second))
	defer cancel()
	k.mu.Lock()
	inst, health, note, disabled, intent := k.inst, k.health, k.note, k.disabled, k.intent
	k.mu.Unlock()
	id := ServiceID(inst)
	q := (&api.QueryOptions{}).WithContext(ctx)

	if k.maintPending && disabled {
		if err := k.r.c.EnableServiceMaintenanceOpts(id, maintReason, q); err != nil && !isNotFound(err) {
			return err
		}
	}
	k.maintPending = false
	lost := false
	if k.r.o.check.TTL > 0 {
		err := k.r.c.UpdateTTLOpts(checkID(id), note, consulHealth(health), q)
		if err != nil && !isNotFound(err) {
			return err
		}
		lost = err != nil
	}
	if !lost {
		_, info, err := k.r.c.AgentHealthServiceByIDOpts(id, q)
		if err != nil {
			return err
		}
		if info != nil {
			maint := info.AggregatedStatus == api.HealthMaint
			k.expect = catalogState{listed: true, maint: maint}
			k.observe(intent, maint)
			return nil
		}
	}
	node, err := k.r.c.AgentNodeID(q)
	if err != nil {
		return err
	}
	if k.nodeID != "" && node == k.nodeID {
		return errRemovedElsewhere
	}
	k.nodeID = node
	k.index = 0
	// The agent forgot us: register again, with the state we had. A
	// disabled instance starts critical, so consumers never see it
	// passing before maintenance mode is back on.
	if err := k.r.register(ctx, inst, disabled); err != nil {
		return err
	}
	if disabled {
		k.maintPending = true
		if err := k.r.c.EnableServiceMaintenanceOpts(id, maintReason, q); err != nil {
			return err
		}
		k.maintPending = false
	}
	if k.r.o.check.TTL > 0 && (disabled || health != registry.HealthPassing) {
		return k.r.c.UpdateTTLOpts(checkID(id), note, consulHealth(health), q)
	}
	return nil
}

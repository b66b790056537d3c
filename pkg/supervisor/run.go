package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

// The limits a recycled copy passed, wrapped by EventRecycling's Err.
var (
	ErrRecycleAge = errors.New("supervisor: recycle: age limit")
	ErrRecycleRSS = errors.New("supervisor: recycle: memory limit")
)

// role is what a running copy is for.
type role int

const (
	roleActive   role = iota // registered, or to be registered once ready
	roleStandby              // warm, never registered while standby
	roleRetiring             // being replaced; taken offline once its replacement is registered
)

// proc is one started copy of the child. Only the run loop reads and writes
// its mutable fields; the goroutines it starts get what they need as
// arguments and report back with a msg.
type proc struct {
	slot   int // 0: Spec.Instance.Port; 1: Spec.StandbyPort
	port   int
	inst   registry.Instance
	c      *child
	born   time.Time
	ctx    context.Context // ends when the copy exits or is taken offline
	cancel context.CancelFunc

	role         role
	ready        bool
	registering  bool  // a Register call was made: the instance may be in the registries
	registered   bool  // it is
	deregistered bool  // taken out after its death was noticed
	offlining    bool  // an offline goroutine owns the copy from now on
	recycle      bool  // taken offline by a recycle, not by the end of Run
	overLimit    bool  // EventRecycling was sent for it
	reason       error // the liveness failure it was killed for
	exitSeen     bool
	deregPending bool  // its deregistration after death is in flight
	wasActive    bool  // it was the active copy when it died
	exitErr      error // why its death counts as a failure (nil: exit 0)
	offlined     bool
	offlineErr   error

	retires  *proc         // the copy this one replaces once it is registered
	promoted bool          // it was a standby; announce EventPromoted when registered
	regDone  chan struct{} // closed when its Register call has returned (if registering)
}

// quiesce stops the copy's checks and its registration attempts, and waits
// until no Register call of it is in flight, so that nothing registers it
// again after it is taken out.
func (p *proc) quiesce(registering bool) {
	p.cancel()
	if registering {
		<-p.regDone
	}
}

type msgKind int

const (
	msgReady        msgKind = iota // the copy passed its readiness check
	msgUnhealthy                   // the copy failed its liveness check (err)
	msgExited                      // the copy's process was reaped
	msgRegistered                  // the copy's Register call returned (err)
	msgOfflined                    // the copy's offline ended (err)
	msgDeregistered                // the dead copy's deregistration returned
)

type msg struct {
	kind msgKind
	p    *proc
	err  error
}

// runLoop is the state of one Run. Its methods run on Run's goroutine.
type runLoop struct {
	s    *Supervisor
	msgs chan msg
	wg   sync.WaitGroup // every goroutine that may send on msgs

	active, standby *proc
	live            map[*proc]bool
	restart         [2]clock.Timer   // a pending start per slot, after a backoff
	slotDereg       [2]chan struct{} // closed when the slot's last deregistration returned
	recycleTimer    clock.Timer

	stopping bool
	result   error   // Run's error, besides the offlines'
	errs     []error // from offlines at the end
}

// Run supervises the child until it is done (a copy exited 0 on its own:
// nil), the restart intensity is exceeded (a *GaveUpError), or ctx ends:
// then it takes the child offline within the budget and returns nil, or
// the drain protocol's error (errors.As a *drain.PhaseError names the phase
// that ran out) joined with an *ExitError if the child ended badly. When
// Run returns, every copy has been reaped and its process group has been
// sent SIGKILL, and its cgroup (if any) emptied and removed. Run may be
// called once.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("supervisor: Run called twice; make a new Supervisor")
	}
	if ctx.Err() != nil {
		return nil // nothing runs and nothing is registered
	}
	if s.o.subreaper {
		if err := enterSubreaper(); err != nil {
			return err
		}
		defer leaveSubreaper() // last: once the guard is reaped too
	}
	// When r.run returns every child is reaped: the guard holds no group.
	s.guard = startGuard()
	defer s.guard.close()
	s.tree = newTree(s.o.cgroupParent, !s.o.cgroupSet)
	dir, err := s.tree.cgroup()
	s.emit(Event{Kind: EventCgroup, Cgroup: dir, Err: err})
	if dir != "" {
		s.guard.cgroup(dir, true)
		defer func() {
			if err := s.tree.release(dir); err != nil {
				s.emit(Event{Kind: EventCgroup, Cgroup: dir, Err: err})
				return // the guard kills what is left at end of file
			}
			s.guard.cgroup(dir, false)
		}()
	}
	r := &runLoop{s: s, msgs: make(chan msg, 16), live: map[*proc]bool{}}
	return r.run(ctx)
}

func (r *runLoop) run(ctx context.Context) error {
	s := r.s
	r.startCopy(0, roleActive)
	if s.o.standby {
		r.startCopy(1, roleStandby)
	}
	if s.o.recycleAfter > 0 || s.o.recycleRSS > 0 {
		r.recycleTimer = s.o.clock.NewTimer(s.o.recycleEvery)
	}
	done := ctx.Done()
	forced := s.forced
	for !r.stopping || len(r.live) > 0 {
		select {
		case <-done:
			done = nil
			r.finish(nil)
		case <-forced:
			forced = nil
			r.finish(nil) // the offlines see Force themselves
		case m := <-r.msgs:
			r.handle(m)
		case <-timerC(r.restart[0]):
			r.restart[0] = nil
			r.restartCopy(0)
		case <-timerC(r.restart[1]):
			r.restart[1] = nil
			r.restartCopy(1)
		case <-timerC(r.recycleTimer):
			r.checkLimits()
			r.recycleTimer = s.o.clock.NewTimer(s.o.recycleEvery)
		}
		if r.stopping && len(r.live) == 0 {
			break
		}
	}
	// Every copy is reaped; the goroutines left can only be ending.
	go func() {
		for range r.msgs {
		}
	}()
	r.wg.Wait()
	close(r.msgs)
	return errors.Join(append([]error{r.result}, r.errs...)...)
}

func timerC(t clock.Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C()
}

// goReport runs f in a goroutine that may report to the loop.
func (r *runLoop) goReport(f func(report func(msg))) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f(func(m msg) { r.msgs <- m })
	}()
}

// startCopy starts a copy in slot with role. A start that fails counts as a
// failure of that slot, and startCopy returns nil.
func (r *runLoop) startCopy(slot int, ro role) *proc {
	s := r.s
	port := s.instance(slot).Port
	c, err := s.start(port)
	if err != nil {
		r.failed(nil, slot, err)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{slot: slot, port: port, inst: s.instance(slot), c: c, born: s.o.clock.Now(), ctx: ctx, cancel: cancel, role: ro, regDone: make(chan struct{})}
	r.live[p] = true
	switch ro {
	case roleActive:
		r.active = p
	case roleStandby:
		r.standby = p
	}
	s.emit(Event{Kind: EventStarted, PID: c.pid, Port: port})
	r.goReport(func(report func(msg)) {
		<-c.done
		report(msg{kind: msgExited, p: p})
	})
	r.goReport(func(report func(msg)) {
		s.lifecycle(ctx, p, func(m msg) {
			select {
			case r.msgs <- m:
			case <-ctx.Done():
			}
		})
	})
	return p
}

// restartCopy starts a slot again after its backoff: as the active copy if
// there is none, as the standby otherwise.
func (r *runLoop) restartCopy(slot int) {
	if r.stopping {
		return
	}
	r.s.restarts.Add(1)
	ro := roleStandby
	if r.active == nil {
		ro = roleActive
	}
	if p := r.startCopy(slot, ro); p != nil {
		r.s.emit(Event{Kind: EventRestarted, PID: p.c.pid, Port: p.port})
	}
}

func (r *runLoop) handle(m msg) {
	s, p := r.s, m.p
	switch m.kind {
	case msgReady:
		if p.exitSeen || p.offlining {
			return
		}
		p.ready = true
		switch {
		case p.role == roleActive:
			r.register(p)
		case p.role == roleStandby && p.retires != nil:
			r.promote(p) // a recycle's replacement, started for this
		}

	case msgRegistered:
		if m.err != nil || p.exitSeen || p.offlining {
			return // the copy ended while registering; its end is handled there
		}
		p.registered = true
		s.emit(Event{Kind: EventRegistered, PID: p.c.pid, Port: p.port})
		if p.promoted {
			s.emit(Event{Kind: EventPromoted, PID: p.c.pid, Port: p.port})
		}
		if old := p.retires; old != nil {
			p.retires = nil
			if r.live[old] && !old.exitSeen && !old.offlining {
				old.recycle = true
				r.takeOffline(old)
			}
		}

	case msgUnhealthy:
		if p.exitSeen || p.offlining {
			return
		}
		// Deemed dead: unroutable first, then killed (once the
		// deregistration has returned, if there is one).
		p.reason = m.err
		r.lost(p)
		if !p.deregPending {
			s.emit(Event{Kind: EventSignaled, PID: p.c.pid, Port: p.port, Signal: syscall.SIGKILL})
			_ = p.c.signal(syscall.SIGKILL)
		}

	case msgExited:
		p.exitSeen = true
		p.cancel()
		if p.offlining {
			r.forget(p)
			return // its offline reports
		}
		r.died(p)

	case msgOfflined:
		p.offlined, p.offlineErr = true, m.err
		r.forget(p)

	case msgDeregistered:
		p.deregPending = false
		switch {
		case p.exitSeen && !p.offlining:
			r.settle(p)
		case p.reason != nil && !p.exitSeen && !p.offlining:
			// Out of the registries: now kill the copy that failed liveness.
			r.s.emit(Event{Kind: EventSignaled, PID: p.c.pid, Port: p.port, Signal: syscall.SIGKILL})
			_ = p.c.signal(syscall.SIGKILL)
		default:
			r.forget(p)
		}
	}
}

// forget drops a copy that is done with: reaped, and its offline (if any)
// over. Those two reports come in either order.
func (r *runLoop) forget(p *proc) {
	if !p.exitSeen || (p.offlining && !p.offlined) || p.deregPending || !r.live[p] {
		return
	}
	delete(r.live, p)
	if r.active == p {
		r.active = nil
	}
	if r.standby == p {
		r.standby = nil
	}
	if !p.offlining {
		return
	}
	s := r.s
	if !p.recycle || r.stopping {
		if p.offlineErr != nil {
			r.errs = append(r.errs, p.offlineErr)
		}
		return
	}
	s.emit(Event{Kind: EventRecycled, PID: p.c.pid, Port: p.port, Err: p.offlineErr})
	if s.o.standby && r.restart[p.slot] == nil && r.occupant(p.slot) == nil {
		r.startCopy(p.slot, roleStandby) // a fresh standby, no backoff: nothing failed
	}
}

// occupant returns the live copy in slot, if any.
func (r *runLoop) occupant(slot int) *proc {
	for p := range r.live {
		if p.slot == slot {
			return p
		}
	}
	return nil
}

// register registers the copy in the background.
func (r *runLoop) register(p *proc) {
	if p.registering || len(r.s.multi) == 0 {
		if len(r.s.multi) == 0 && p.promoted {
			r.s.emit(Event{Kind: EventPromoted, PID: p.c.pid, Port: p.port})
		}
		return
	}
	p.registering = true
	s, ctx, inst, prev := r.s, p.ctx, p.inst, r.slotDereg[p.slot]
	r.goReport(func(report func(msg)) {
		if prev != nil { // the same endpoint's deregistration must land first
			select {
			case <-prev:
			case <-ctx.Done():
			}
		}
		err := s.retry(ctx, p.port, func(ctx context.Context) error { return s.multi.Register(ctx, inst) })
		close(p.regDone) // before reporting: quiesce may wait for it on the loop's goroutine
		report(msg{kind: msgRegistered, p: p, err: err})
	})
}

// promote makes the standby sb the active copy and registers it. If sb
// replaces a live active copy (a recycle), that copy retires: it keeps
// serving until sb is registered, then it is taken offline.
func (r *runLoop) promote(sb *proc) {
	if r.standby == sb {
		r.standby = nil
	}
	if old := r.active; old != nil && old != sb {
		old.role = roleRetiring
		sb.retires = old
	}
	sb.role, sb.promoted = roleActive, true
	r.active = sb
	r.register(sb)
}

// lost handles the moment a copy is known dead or dying on its own: if it
// was the active copy, the standby takes over (or a retiring copy goes
// back to work); then it leaves the registries.
func (r *runLoop) lost(p *proc) {
	if r.active == p {
		r.active = nil
		switch old := p.retires; {
		case old != nil && r.live[old] && !old.exitSeen && !old.offlining:
			// A recycle's replacement died before taking over: the old copy,
			// still registered, stays.
			old.role = roleActive
			r.active = old
		case r.standby != nil && !r.standby.offlining:
			sb := r.standby
			if sb.ready {
				r.promote(sb)
			} else {
				sb.role, sb.promoted = roleActive, true
				r.active, r.standby = sb, nil // registered once ready
			}
		}
		p.retires = nil
	}
	if r.standby == p {
		r.standby = nil
	}
	if p.registering && !p.deregistered {
		p.deregistered, p.deregPending = true, true
		done := make(chan struct{})
		r.slotDereg[p.slot] = done // a successor on this slot registers after it
		s := r.s
		r.goReport(func(report func(msg)) {
			p.quiesce(true)
			s.deregister(p)
			close(done)
			report(msg{kind: msgDeregistered, p: p})
		})
	}
}

// died handles a copy that exited without being asked to.
func (r *runLoop) died(p *proc) {
	p.wasActive = p.role == roleActive
	p.exitErr = r.s.exited(p, p.reason)
	r.lost(p)
	if !p.deregPending {
		r.settle(p)
	}
}

// settle decides what a dead copy's end means, once it is out of the
// registries: done, a restart after backoff, or giving up.
func (r *runLoop) settle(p *proc) {
	r.forget(p)
	if r.stopping {
		return
	}
	exitErr := p.exitErr
	if exitErr == nil {
		if p.wasActive {
			r.finish(nil) // it exited 0 on its own: done
			return
		}
		exitErr = &ExitError{PID: p.c.pid, Reason: "exited on its own while not serving (a standby or a replaced copy must keep running)"}
	}
	r.failed(p, p.slot, exitErr)
}

// failed counts a failure in slot and schedules its restart, or gives up.
func (r *runLoop) failed(p *proc, slot int, fail error) {
	s := r.s
	good := s.o.clock.Now()
	if p != nil && !p.ready {
		good = p.born // a failed start: its starting time was not good time
	}
	if gave := s.countFailure(fail, good); gave != nil {
		r.finish(gave)
		return
	}
	if p != nil && p.role == roleRetiring && !s.o.standby {
		return // its replacement serves; nothing to restart
	}
	d := s.o.restart.Delay(max(int(s.failures)-1, 0))
	r.restart[slot] = s.o.clock.NewTimer(d)
	port := s.instance(slot).Port
	s.emit(Event{Kind: EventBackoff, Port: port, Delay: d, Failures: s.failures, Err: fail})
}

// takeOffline starts a copy's lossless offline in the background.
func (r *runLoop) takeOffline(p *proc) {
	p.offlining = true
	registering := p.registering
	registered := registering && !p.deregistered
	s := r.s
	r.goReport(func(report func(msg)) {
		p.quiesce(registering)
		err := s.offline(p, registered)
		report(msg{kind: msgOfflined, p: p, err: err})
	})
}

// finish ends the supervision: every copy is taken offline (the standby
// has no registration to remove, so it is just stopped). result, if not
// nil, is Run's error.
func (r *runLoop) finish(result error) {
	if r.stopping {
		return
	}
	r.stopping, r.result = true, result
	for k, t := range r.restart {
		if t != nil {
			t.Stop()
			r.restart[k] = nil
		}
	}
	if r.recycleTimer != nil {
		r.recycleTimer.Stop()
		r.recycleTimer = nil
	}
	for p := range r.live {
		if !p.offlining && !p.exitSeen {
			r.takeOffline(p)
		}
	}
}

// checkLimits recycles copies past their age or memory limit. A standby is
// simply restarted; the active copy is replaced by a standby under the
// limits (started for the purpose when there is no standby) and retires
// once its replacement is registered.
func (r *runLoop) checkLimits() {
	if r.stopping {
		return
	}
	if sb := r.standby; sb != nil && !sb.offlining && !sb.exitSeen && sb.retires == nil {
		if why := r.overLimit(sb); why != nil {
			r.s.emit(Event{Kind: EventRecycling, PID: sb.c.pid, Port: sb.port, Err: why})
			sb.recycle = true
			r.standby = nil
			r.takeOffline(sb)
		}
	}
	a := r.active
	if a == nil || !a.registered || a.offlining || a.exitSeen {
		return
	}
	why := r.overLimit(a)
	if why == nil {
		return
	}
	if !a.overLimit {
		a.overLimit = true
		r.s.emit(Event{Kind: EventRecycling, PID: a.c.pid, Port: a.port, Err: why})
	}
	switch sb := r.standby; {
	case sb != nil && sb.ready && !sb.offlining:
		r.promote(sb)
	case sb == nil && r.occupant(1-a.slot) == nil && r.restart[1-a.slot] == nil:
		r.startCopy(1-a.slot, roleStandby)
		if n := r.standby; n != nil && n.slot != a.slot {
			n.retires = a // promoted once ready
		}
	}
}

// overLimit says why p is past a recycle limit, or nil.
func (r *runLoop) overLimit(p *proc) error {
	o := r.s.o
	if age := r.s.o.clock.Now().Sub(p.born); o.recycleAfter > 0 && age >= o.recycleAfter {
		return fmt.Errorf("%w: age %v passed %v", ErrRecycleAge, age.Round(time.Millisecond), o.recycleAfter)
	}
	if o.recycleRSS > 0 {
		if n, err := rss(p.c.pid); err == nil && n > o.recycleRSS {
			return fmt.Errorf("%w: resident memory %d MiB passed %d MiB", ErrRecycleRSS, n>>20, o.recycleRSS>>20)
		}
	}
	return nil
}

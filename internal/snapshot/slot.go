// Package snapshot holds the newest instance list for one watcher, the
// piece every push-based registry.Watcher needs: writers put whole lists,
// the reader's Next waits for a list that differs from the one it last got,
// and a burst of puts collapses into the newest.
package snapshot

import (
	"context"
	"sync"

	"github.com/lameduck/lameduck/registry"
)

// Slot is safe for concurrent Put and Stop; Next is for one reader.
type Slot struct {
	equal   func(a, b []registry.Instance) bool
	changed chan struct{} // capacity 1: puts collapse into one wake-up
	stopped chan struct{}
	once    sync.Once

	mu     sync.Mutex
	latest []registry.Instance
	fresh  bool // latest not yet looked at by Next
	last   []registry.Instance
	sent   bool // Next has returned a list
}

// New returns an empty slot; equal decides whether two lists are the same
// to a consumer, so that Next never returns the same list twice in a row.
func New(equal func(a, b []registry.Instance) bool) *Slot {
	return &Slot{equal: equal, changed: make(chan struct{}, 1), stopped: make(chan struct{})}
}

// Put makes list the newest.
func (s *Slot) Put(list []registry.Instance) {
	s.mu.Lock()
	s.latest, s.fresh = list, true
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Next blocks until the newest list differs from the last one it returned
// (the first list is returned as soon as there is one). It returns
// ctx.Err() when ctx ends and context.Canceled once the slot is stopped.
func (s *Slot) Next(ctx context.Context) ([]registry.Instance, error) {
	for {
		select {
		case <-s.stopped:
			return nil, context.Canceled
		default:
		}
		s.mu.Lock()
		if s.fresh {
			s.fresh = false
			if !s.sent || !s.equal(s.latest, s.last) {
				s.sent, s.last = true, s.latest
				out := s.latest
				s.mu.Unlock()
				return out, nil
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.stopped:
			return nil, context.Canceled
		case <-s.changed:
		}
	}
}

// Stop makes Next return context.Canceled from now on. It reports whether
// this call stopped the slot.
func (s *Slot) Stop() bool {
	first := false
	s.once.Do(func() { first = true; close(s.stopped) })
	return first
}

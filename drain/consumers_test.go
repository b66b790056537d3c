package drain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/internal/clock"
)

func TestConsumersAttribution(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	var c Consumers
	c.Saw("10.0.0.1", at(0)) // before Start: not recorded
	if c.Active() {
		t.Fatal("Active before Start: want false")
	}
	c.Start(at(10))
	c.Saw("10.0.0.1", at(20)) // before the confirmation
	c.Saw("10.0.0.2", at(30)) // before only: not late
	c.Confirmed(at(100))
	c.Saw("10.0.0.1", at(150))
	c.Saw("10.0.0.1", at(400))
	c.Saw("10.0.0.3", at(120))
	late := c.Late(10)
	want := []ConsumerStat{
		{ID: "10.0.0.1", First: at(20), Last: at(400), Before: 1, After: 2, Lag: 300 * time.Millisecond, IDs: 1},
		{ID: "10.0.0.3", First: at(120), Last: at(120), Before: 0, After: 1, Lag: 20 * time.Millisecond, IDs: 1},
	}
	if fmt.Sprint(late.Top) != fmt.Sprint(want) {
		t.Errorf("late consumers:\n got %+v\nwant %+v", late.Top, want)
	}
	if late.Others != nil || late.MaxLag != 300*time.Millisecond || !late.Confirmed.Equal(at(100)) {
		t.Errorf("others %+v, max lag %v, confirmed %v: want none, 300ms, %v", late.Others, late.MaxLag, late.Confirmed, at(100))
	}
	// The top one by one, the rest aggregated.
	late = c.Late(1)
	if len(late.Top) != 1 || late.Top[0].ID != "10.0.0.1" || late.Others == nil ||
		late.Others.After != 1 || late.Others.IDs != 1 || late.Others.Lag != 20*time.Millisecond {
		t.Errorf("Late(1): want 10.0.0.1 on top and 10.0.0.3 aggregated, got %+v others %+v", late.Top, late.Others)
	}
}

func TestConsumersNobodyLateWithoutConfirmation(t *testing.T) {
	t.Parallel()
	var c Consumers
	c.Start(time.Unix(1, 0))
	c.Saw("a", time.Unix(2, 0))
	if late := c.Late(5); len(late.Top) != 0 || late.Others != nil {
		t.Errorf("without a confirmation: want nobody late, got %+v", late)
	}
}

// TestConsumersBounded: 10,000 distinct consumers keep MaxTracked one by
// one, and the rest in one aggregate whose distinct count is bounded too.
func TestConsumersBounded(t *testing.T) {
	t.Parallel()
	var c Consumers
	t0 := time.Unix(1000, 0)
	c.Start(t0)
	c.Confirmed(t0)
	for i := range 10000 {
		id := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		c.Saw(id, t0.Add(time.Duration(i)*time.Microsecond))
	}
	c.mu.Lock()
	tracked, restIDs := len(c.byID), len(c.restIDs)
	c.mu.Unlock()
	if tracked != MaxTracked || restIDs != MaxTracked {
		t.Errorf("kept: want %d tracked and %d distinct in the aggregate, got %d and %d", MaxTracked, MaxTracked, tracked, restIDs)
	}
	late := c.Late(10)
	if len(late.Top) != 10 || late.Others == nil {
		t.Fatalf("Late(10): want 10 on top and an aggregate, got %d and %v", len(late.Top), late.Others)
	}
	total := late.Others.After
	for _, s := range late.Top {
		total += s.After
	}
	if total != 10000 {
		t.Errorf("requests after the confirmation, summed: want 10000, got %d", total)
	}
	if want := 9999 * time.Microsecond; late.MaxLag != want {
		t.Errorf("max lag: want %v (the last request), got %v", want, late.MaxLag)
	}
}

// lateSource is the tracker with one late request from "10.0.0.9" as the
// drain begins.
type lateSource struct{ *Tracker }

func (s lateSource) Drain(ctx context.Context, c Condition) error {
	s.Saw("10.0.0.9")
	return s.Tracker.Drain(ctx, c)
}

// TestCoordinatorNamesLateConsumers: the coordinator starts attribution
// with the deregistration and marks the flag, so the report and the status
// name who called after it, and not who called only before.
func TestCoordinatorNamesLateConsumers(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	tr := &Tracker{clock: f}
	reg, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(t.Context(), testInstance); err != nil {
		t.Fatal(err)
	}
	hook := WithEventHook(func(e Event) {
		if e.Kind == EventDeregistered {
			tr.Saw("10.0.0.8") // between the removal and the confirmation
		}
	})
	c, err := New(tr, withClock(f), WithRegistries(reg), WithInstance(testInstance), WithQuietWindow(0),
		WithSource(lateSource{tr}), hook)
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	rep, err := c.Wait(t.Context())
	if err != nil {
		t.Fatalf("offline: want nil, got %v", err)
	}
	if rep.Consumers == nil || len(rep.Consumers.Top) != 1 || rep.Consumers.Top[0].ID != "10.0.0.9" || rep.Consumers.Top[0].After != 1 {
		t.Fatalf("report's late consumers: want only 10.0.0.9, once, got %+v", rep.Consumers)
	}
	if st := c.Status(); st.Consumers == nil || len(st.Consumers.Top) != 1 {
		t.Errorf("status's late consumers: want 10.0.0.9, got %+v", st.Consumers)
	}
}

// TestConsumerLagHoldsTheDrain: with a consumer lag, a quiet instance is
// not drained until the lag has passed since the flag; then at once.
func TestConsumerLagHoldsTheDrain(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	const lag = 10 * time.Second
	h := newHarness(t, f, WithBudget(30*time.Second), WithConsumerLag(lag), WithQuietWindow(250*time.Millisecond))
	h.c.Start()
	h.until(t, "phase Draining", isPhase(Draining))
	waitPending(t, f, 3) // the registries' deadline, the drain's, and the lag's
	f.Advance(lag - time.Nanosecond)
	notYet(t, h.c.Done(), "Offline before the consumer lag has passed")
	f.Advance(time.Nanosecond)
	rep, err := h.wait(t)
	if err != nil {
		t.Fatalf("offline: want nil, got %v", err)
	}
	if rep.Duration != lag {
		t.Errorf("offline took %v: want the consumer lag, %v, and not a moment more", rep.Duration, lag)
	}
}

func TestNewRefusesBudgetBelowConsumerLag(t *testing.T) {
	t.Parallel()
	reg, err := memory.New()
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(&Tracker{}, WithBudget(25*time.Second), WithConsumerLag(35*time.Second), WithRegistries(reg), WithInstance(testInstance))
	var le *LagError
	if !errors.As(err, &le) {
		t.Fatalf("want a *LagError, got %v", err)
	}
	// 1s confirmation + 35s + 250ms quiet + 5s stop reserve.
	if le.Need != 41250*time.Millisecond || !strings.Contains(err.Error(), "raise the budget to at least 42s") {
		t.Errorf("want the need of 41.25s and a budget of at least 42s named, got %v", err)
	}
}

// callingSource keeps a consumer calling until the drain is cut: its last
// request arrives as the drain's deadline passes.
type callingSource struct{ *Tracker }

func (s callingSource) Drain(ctx context.Context, _ Condition) error {
	s.Saw("10.0.0.7")
	<-ctx.Done()
	s.Saw("10.0.0.7")
	return ctx.Err()
}

// TestForcedNamesConsumersStillCalling: a drain cut by the budget while a
// consumer still calls says who, and the budget its lag needed.
func TestForcedNamesConsumersStillCalling(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(t0)
	tr := &Tracker{clock: f}
	c, err := New(tr, withClock(f), WithBudget(10*time.Second), WithStopReserve(2*time.Second), WithSource(callingSource{tr}))
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	waitPending(t, f, 2)
	f.Advance(8 * time.Second)
	_, err = c.Wait(t.Context())
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Phase != Draining || len(pe.Calling) != 1 || pe.Calling[0].ID != "10.0.0.7" {
		t.Fatalf("want the drain cut with 10.0.0.7 still calling, got %v", err)
	}
	// The flag at 0s, a lag of 8s, the quiet window and the stop reserve.
	if want := 8*time.Second + DefaultQuietWindow + 2*time.Second; pe.NeedBudget != want {
		t.Errorf("needed budget: want %v, got %v", want, pe.NeedBudget)
	}
	if msg := err.Error(); !strings.Contains(msg, "10.0.0.7 (lag 8s, 2 late requests)") || !strings.Contains(msg, "needed a budget above 10.3s") {
		t.Errorf("error: want the consumer, its lag and the budget named, got %q", msg)
	}
}

package report

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lameduck/lameduck/adapters/memory"
	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry"
)

// A real offline on the real clock: the in-memory registry confirms after
// its push delay, a late consumer calls three times, three requests held
// from before the offline end after it, and a stop hook runs. The report
// is under 100 KB, its SVG renders, and its causes add up to the total.
func TestRealOffline(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	const pushDelay = 30 * time.Millisecond
	mem, err := memory.New(memory.WithPushDelay(pushDelay))
	if err != nil {
		t.Fatal(err)
	}
	inst := registry.Instance{Service: "web", ID: "web-1", Address: "127.0.0.1", Port: 8080}
	if err := mem.Register(ctx, inst); err != nil {
		t.Fatal(err)
	}
	var tr drain.Tracker
	rec := NewRecorder(func() (int64, int64) { return tr.InFlight(), tr.LongLived() })
	coord, err := drain.New(&tr, drain.WithRegistries(mem), drain.WithInstance(inst),
		drain.WithEventHook(rec.Observe), drain.WithBudget(10*time.Second), drain.WithQuietWindow(50*time.Millisecond),
		drain.WithStopHook("server", func(context.Context) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	var held []drain.Request
	for range 3 {
		held = append(held, tr.Begin())
	}
	coord.Start()
	// Late means after the confirmation, which the coordinator records
	// just after it enters Draining.
	for {
		if lc := coord.Status().Consumers; lc != nil && !lc.Confirmed.IsZero() {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("want the confirmation recorded, still not at %v", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	// Pace the scenario: the consumer's calls, then the held requests'
	// tail, take time on purpose.
	for range 3 {
		tr.Saw("10.0.0.7")
		r := tr.Begin()
		<-time.After(10 * time.Millisecond)
		if err := r.End(); err != nil {
			t.Fatal(err)
		}
	}
	const tail = 50 * time.Millisecond
	<-time.After(tail)
	for i := range held {
		if err := held[i].End(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := coord.Wait(ctx)
	if err != nil {
		t.Fatalf("want a clean offline, got %v", err)
	}
	off := rec.Report(rep)
	c := off.Causes
	t.Logf("%s", off.String())

	if got := c.Sum(); got != off.Duration {
		t.Fatalf("want the causes to add up to the duration %v, got %v (%+v)", off.Duration, got, c)
	}
	at := map[drain.Phase]time.Duration{}
	for _, p := range off.Phases {
		at[p.Phase] = p.At
	}
	// Offline begins just after the duration is measured: the phases and
	// the total agree within 5ms.
	if d := at[drain.Offline] - off.Duration; d < 0 || d > 5*time.Millisecond {
		t.Fatalf("want Offline within 5ms after the duration %v, got it at %v", off.Duration, at[drain.Offline])
	}
	if c.Confirmation != at[drain.Draining] || c.Confirmation < pushDelay {
		t.Fatalf("want the confirmation to last until Draining (%v), at least the push delay %v; got %v", at[drain.Draining], pushDelay, c.Confirmation)
	}
	if c.Hooks != off.Duration-at[drain.Stopping] {
		t.Fatalf("want the hooks from Stopping (%v) to the end (%v), got %v", at[drain.Stopping], off.Duration, c.Hooks)
	}
	if len(off.Consumers) != 1 || off.Consumers[0].ID != "10.0.0.7" || off.Consumers[0].After != 3 {
		t.Fatalf("want 10.0.0.7 late with 3 requests, got %+v", off.Consumers)
	}
	if want := off.Consumers[0].Last - c.Confirmation; c.ConsumerLag != want || want <= 0 {
		t.Fatalf("want the consumer lag to run to the last late request (%v), got %v", want, c.ConsumerLag)
	}
	if c.LongestRequest < tail {
		t.Fatalf("want the longest request's tail at least the %v the held requests outlived the late calls, got %v", tail, c.LongestRequest)
	}
	if off.InFlight.Peak < 3 || len(off.Registries) != 1 || off.Registries[0].ConfirmedAt == nil {
		t.Fatalf("want a peak of at least 3 and memory:// confirmed, got peak %d, registries %+v", off.InFlight.Peak, off.Registries)
	}

	path := filepath.Join(t.TempDir(), "offline.json")
	if err := off.WriteFiles(path); err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(SVGPath(path))
	if err != nil {
		t.Fatal(err)
	}
	if size := len(js) + len(svg); size >= 100_000 {
		t.Fatalf("want the report under 100 KB, got JSON %d + SVG %d bytes", len(js), len(svg))
	}
	var back Offline
	if err := json.Unmarshal(js, &back); err != nil || back.Causes != c {
		t.Fatalf("want the JSON to read back with the same causes, got %+v (%v)", back.Causes, err)
	}
	checkXML(t, svg)
	renders(t, svg)
}

package cli

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/pkg/supervisor"
)

// A check that keeps failing logs one line per repeat window, with the
// count of the lines held back; a new error is logged at once; the copy's
// next other event first logs what was held back. Every event is counted
// once.
func TestEventLogRepeats(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	l := newEventLog(log, clk)
	refused, unavailable := errors.New("refused"), errors.New("503")
	notReady := func(port int, err error) {
		l.event(supervisor.Event{Kind: supervisor.EventNotReady, Time: clk.Now(), Name: "web", Port: port, Delay: time.Second, Err: err})
	}
	notReady(8080, refused) // logged
	for range 20 {          // held back
		clk.Advance(100 * time.Millisecond)
		notReady(8080, refused)
	}
	clk.Advance(3 * time.Second) // 5s after the first line
	notReady(8080, refused)      // logged, for 20 repeats
	clk.Advance(100 * time.Millisecond)
	notReady(8080, unavailable) // a new error: logged at once
	for range 2 {               // held back
		clk.Advance(100 * time.Millisecond)
		notReady(8080, unavailable)
	}
	notReady(8081, refused) // another copy: logged
	clk.Advance(time.Second)
	l.event(supervisor.Event{Kind: supervisor.EventReady, Time: clk.Now(), Name: "web", Port: 8080}) // the last 503 first
	notReady(8080, unavailable)                                                                      // a new run of repeats: logged
	want := []string{
		`level=INFO msg="lameduck run: not-ready" child=web port=8080 delay=1s err=refused`,
		`level=INFO msg="lameduck run: not-ready" child=web port=8080 delay=1s err=refused repeats=20`,
		`level=INFO msg="lameduck run: not-ready" child=web port=8080 delay=1s err=503`,
		`level=INFO msg="lameduck run: not-ready" child=web port=8081 delay=1s err=refused`,
		`level=INFO msg="lameduck run: not-ready" child=web port=8080 delay=1s err=503 repeats=1`,
		`level=INFO msg="lameduck run: ready" child=web port=8080`,
		`level=INFO msg="lameduck run: not-ready" child=web port=8080 delay=1s err=503`,
	}
	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("want log lines\n%s\ngot\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}

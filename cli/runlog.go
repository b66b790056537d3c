package cli

import (
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/pkg/supervisor"
)

// repeatWindow is how often a line that repeats is logged at most.
const repeatWindow = 5 * time.Second

// eventLog writes the supervisor's events with logEvent, and keeps the
// events that repeat on a timer (EventNotReady, EventRegistryRetry) from
// flooding the log. Of those, for each program, port and kind, a line is
// logged when its error text differs from the last one's, or when
// repeatWindow has passed since the last line logged; the others are
// counted, and the next line logged carries the count in "repeats". When
// the copy's next event of another kind comes (ready, exited), or the
// error changes, the last event held back is logged first with the rest of
// the count, so every repeat is accounted for. Its methods are safe for
// concurrent use.
type eventLog struct {
	log   *slog.Logger
	clock clock.Clock

	mu   sync.Mutex
	held map[repeatKey]*repeat
}

type repeatKey struct {
	name string
	port int
	kind supervisor.EventKind
}

// repeat is the state of one repeating line.
type repeat struct {
	err    string    // the error text of the last line logged
	logged time.Time // when it was logged
	count  int       // events held back since
	last   supervisor.Event
}

func newEventLog(log *slog.Logger, clk clock.Clock) *eventLog {
	return &eventLog{log: log, clock: clock.OrReal(clk), held: map[repeatKey]*repeat{}}
}

// pending is a line to log and the repeats it stands for.
type pending struct {
	e       supervisor.Event
	repeats int
}

// event logs e, or counts it as a repeat.
func (l *eventLog) event(e supervisor.Event) {
	l.mu.Lock()
	var out []pending
	if e.Kind == supervisor.EventNotReady || e.Kind == supervisor.EventRegistryRetry {
		k := repeatKey{e.Name, e.Port, e.Kind}
		now, text := l.clock.Now(), errText(e.Err)
		r := l.held[k]
		switch {
		case r != nil && r.err == text && now.Sub(r.logged) < repeatWindow:
			r.count++
			r.last = e
			l.mu.Unlock()
			return
		case r != nil && r.err == text:
			out = append(out, pending{e, r.count})
		default:
			if r != nil && r.count > 0 {
				out = append(out, pending{r.last, r.count - 1})
			}
			out = append(out, pending{e, 0})
		}
		l.held[k] = &repeat{err: text, logged: now}
	} else {
		var flushed []*repeat
		for k, r := range l.held {
			if k.name == e.Name && k.port == e.Port {
				if r.count > 0 {
					flushed = append(flushed, r)
				}
				delete(l.held, k)
			}
		}
		slices.SortFunc(flushed, func(a, b *repeat) int { return a.last.Time.Compare(b.last.Time) })
		for _, r := range flushed {
			out = append(out, pending{r.last, r.count - 1})
		}
		out = append(out, pending{e, 0})
	}
	l.mu.Unlock()
	for _, p := range out {
		logEventRepeats(l.log, p.e, p.repeats)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

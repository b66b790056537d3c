// Package logthrottle keeps a chatty third-party logger from flooding ours:
// of a run of similar messages it passes on the first at once and, once per
// interval while the run lasts, one line with the count of those it held
// back. Messages lose their Go stack traces and are cut to one line of at
// most MaxLen bytes on the way.
//
// Two messages are similar when they have the same level and the same text
// once every run of digits is read as one placeholder: a retry counter, a
// request id or a port then does not make a new message. The line passed on
// is the first message's own text.
package logthrottle

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// MaxLen is the longest message passed on, in bytes; longer ones are cut and
// end in "...".
const MaxLen = 1024

// maxKeys bounds the similar-message runs tracked at once. A message beyond
// it is counted under overflowMsg, so the memory stays bounded whatever the
// third party logs.
const maxKeys = 256

const overflowMsg = "more distinct messages than the log throttle tracks; dropped"

// Line is what a Throttle passes on: a message, or the count of messages
// like it that were held back.
type Line struct {
	Level slog.Level
	Msg   string
	// Repeated is 0 for a message passed on as it came, and otherwise the
	// number of similar messages held back in the last Within.
	Repeated int
	Within   time.Duration
}

// Option configures a Throttle.
type Option func(*options)

type options struct {
	interval time.Duration
	clock    clock.Clock
	ticked   func() // tests: called after each interval's end is handled
}

func (o *options) setDefaults() {
	if o.interval <= 0 {
		o.interval = 10 * time.Second
	}
	o.clock = clock.OrReal(o.clock)
}

// WithInterval sets how long a run of similar messages is held back before
// its count is passed on; default 10s.
func WithInterval(d time.Duration) Option { return func(o *options) { o.interval = d } }

// WithClock sets the clock for the intervals; tests pass a clock.Fake.
func WithClock(c clock.Clock) Option { return func(o *options) { o.clock = c } }

// Throttle is safe for concurrent use. out is called with the Throttle's
// lock held, so lines reach it in order and one at a time; out must not call
// back into the Throttle. Counts are passed on from a timer goroutine.
type Throttle struct {
	o   options
	out func(Line)

	mu   sync.Mutex
	runs map[string]*run // by key, see key
}

type run struct {
	level slog.Level
	msg   string
	held  int       // similar messages held back in this interval
	start time.Time // of this interval
	timer clock.Timer
}

// New returns a Throttle that passes lines to out.
func New(out func(Line), opts ...Option) *Throttle {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.setDefaults()
	return &Throttle{o: o, out: out, runs: map[string]*run{}}
}

// Log passes msg on, cleaned to one line, unless a similar message was passed
// on or counted within the interval; then it only counts it. It does not
// block beyond out.
func (t *Throttle) Log(level slog.Level, msg string) {
	msg = Clean(msg)
	k := key(level, msg)
	t.mu.Lock()
	defer t.mu.Unlock()
	if r, ok := t.runs[k]; ok {
		r.held++
		return
	}
	if len(t.runs) >= maxKeys {
		k, msg, level = key(slog.LevelWarn, overflowMsg), overflowMsg, slog.LevelWarn
		if r, ok := t.runs[k]; ok {
			r.held++
			return
		}
	}
	r := &run{level: level, msg: msg, start: t.o.clock.Now()}
	t.runs[k] = r
	r.timer = t.o.clock.AfterFunc(t.o.interval, func() { t.tick(k, r) })
	t.out(Line{Level: level, Msg: msg})
}

// tick ends an interval of r: it passes on the count held back, if any, and
// starts the next interval; a run with nothing held back ends.
func (t *Throttle) tick(k string, r *run) {
	if t.o.ticked != nil {
		defer t.o.ticked()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.runs[k] != r {
		return // flushed meanwhile
	}
	if r.held == 0 {
		delete(t.runs, k)
		return
	}
	t.out(Line{Level: r.level, Msg: r.msg, Repeated: r.held, Within: t.o.interval})
	r.held, r.start = 0, t.o.clock.Now()
	r.timer = t.o.clock.AfterFunc(t.o.interval, func() { t.tick(k, r) })
}

// Flush passes on every count held back, now, and forgets every run, so the
// next message of each is passed on again; no timer is left pending. The
// Within of a flushed count is the part of the interval that had passed.
func (t *Throttle) Flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, r := range t.runs {
		r.timer.Stop()
		delete(t.runs, k)
		if r.held > 0 {
			t.out(Line{Level: r.level, Msg: r.msg, Repeated: r.held, Within: t.o.clock.Now().Sub(r.start)})
		}
	}
}

// Clean returns msg without Go stack traces (the "function\n\tfile.go:line"
// pairs that errors printed with %+v carry), its remaining lines joined with
// "; ", cut to MaxLen bytes.
func Clean(msg string) string {
	if !strings.ContainsAny(msg, "\r\n") && len(msg) <= MaxLen {
		return msg
	}
	lines := strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' })
	keep := make([]bool, len(lines))
	for i, l := range lines {
		t := strings.TrimSpace(l)
		keep[i] = t != "" && !(strings.HasPrefix(t, "goroutine ") && strings.HasSuffix(t, "]:"))
		if isFrameFile(l) {
			keep[i] = false
			// The line before names the function, one word, or says which
			// goroutine made this one: drop it too.
			if i > 0 {
				p := strings.TrimSpace(lines[i-1])
				if !strings.ContainsAny(p, " \t") || strings.HasPrefix(p, "created by ") {
					keep[i-1] = false
				}
			}
		}
	}
	var b strings.Builder
	for i, l := range lines {
		if keep[i] {
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(strings.TrimSpace(l))
		}
	}
	s := b.String()
	if len(s) > MaxLen {
		cut := MaxLen - len("...")
		for cut > 0 && !startsRune(s[cut]) {
			cut-- // do not split a UTF-8 sequence
		}
		s = s[:cut] + "..."
	}
	return s
}

// isFrameFile reports whether l is the file line of a stack frame:
// "\t/path/file.go:123" (or an assembly file, for runtime.goexit), possibly
// followed by " +0x1f" as in a goroutine dump.
func isFrameFile(l string) bool {
	if !strings.HasPrefix(l, "\t") {
		return false
	}
	f := strings.Fields(l)
	if len(f) == 0 {
		return false
	}
	i := strings.LastIndexByte(f[0], ':')
	if i < 0 || i == len(f[0])-1 {
		return false
	}
	file, line := f[0][:i], f[0][i+1:]
	if !strings.HasSuffix(file, ".go") && !strings.HasSuffix(file, ".s") {
		return false
	}
	for _, c := range line {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func startsRune(b byte) bool { return b&0xC0 != 0x80 }

// key is the level and msg with every run of digits made one '#'.
func key(level slog.Level, msg string) string {
	var b strings.Builder
	b.Grow(len(msg) + 8)
	b.WriteString(level.String())
	b.WriteByte(' ')
	digits := false
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= '0' && c <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteByte(c)
	}
	return b.String()
}

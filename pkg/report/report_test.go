package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/registry"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const waitLimit = 5 * time.Second

// counts is what the sample function reads, set by the test.
type counts struct{ in, ll atomic.Int64 }

func (c *counts) sample() (int64, int64) { return c.in.Load(), c.ll.Load() }

// sampled waits until the sampler waits on its timer again: it has taken
// the sample the last Advance asked for.
func sampled(t *testing.T, fc *clock.Fake) {
	t.Helper()
	added := fc.TimerAdded()
	if fc.Timers() > 0 {
		return
	}
	select {
	case <-added:
	case <-time.After(waitLimit):
		t.Fatalf("want the sampler waiting on a timer, none after %v", waitLimit)
	}
}

// script is an offline played on a fake clock, times from its start.
type script struct {
	drainAt, stopAt, endAt time.Duration // 0: the phase never came (endAt is required)
	confirmAt              time.Duration
	busy                   func(at time.Duration) (inFlight, longLived int64)
	late                   map[string][]time.Duration // late requests by consumer
	consumers              int                        // further late consumers, one request each at drainAt
	noSample               bool
}

// play runs s through a Recorder on a fake clock, as the coordinator
// would, and returns the report.
func play(t *testing.T, s script) Offline {
	t.Helper()
	fc := clock.NewFake(t0)
	var c counts
	set := func(at time.Duration) {
		if s.busy != nil {
			in, ll := s.busy(at)
			c.in.Store(in)
			c.ll.Store(ll)
		}
	}
	sample := c.sample
	if s.noSample {
		sample = nil
	}
	rec := NewRecorder(sample, withClock(fc))
	phase := func(p drain.Phase) {
		rec.Observe(drain.Event{Kind: drain.EventPhase, Phase: p, Time: fc.Now()})
	}
	set(0)
	phase(drain.Deregistering)
	rec.Observe(drain.Event{Kind: drain.EventDeregistered, Registry: "memory://", Time: fc.Now()})
	phases := []drain.PhaseSpan{{Phase: drain.Deregistering, Start: t0}}
	enter := func(p drain.Phase, at time.Duration) {
		last := &phases[len(phases)-1]
		last.Duration = at - last.Start.Sub(t0)
		phases = append(phases, drain.PhaseSpan{Phase: p, Start: t0.Add(at)})
		phase(p)
	}
	for at := DefaultInterval; at <= s.endAt; at += DefaultInterval {
		set(at)
		fc.Advance(DefaultInterval)
		if !s.noSample {
			sampled(t, fc)
		}
		switch at {
		case s.confirmAt:
			rec.Observe(drain.Event{Kind: drain.EventConfirmed, Registry: "memory://", Time: fc.Now(), Latency: at})
		}
		switch {
		case at == s.drainAt:
			enter(drain.Draining, at)
		case at == s.stopAt:
			enter(drain.Stopping, at)
			rec.Observe(drain.Event{Kind: drain.EventStopHook, Hook: "http <server>", Time: fc.Now()})
		case at == s.endAt:
			enter(drain.Offline, at)
		}
	}
	var cs drain.Consumers
	cs.Start(t0)
	if s.drainAt > 0 {
		cs.Confirmed(t0.Add(s.drainAt))
	}
	for id, ats := range s.late {
		for _, at := range ats {
			cs.Saw(id, t0.Add(at))
		}
	}
	for i := range s.consumers {
		cs.Saw(fmt.Sprintf("consumer-%05d-%s", i, strings.Repeat("x", 50)), t0.Add(s.drainAt))
	}
	late := cs.Late(drain.TopConsumers)
	dr := drain.Report{
		Outcome:  drain.OutcomeDrained,
		Instance: registry.Instance{Service: "web", ID: "web-1", Address: "10.0.0.1", Port: 8080, Metadata: map[string]string{"big": strings.Repeat("m", 4096)}},
		Source:   "in-process requests",
		Started:  t0,
		Duration: s.endAt,
		Phases:   phases,
		Registries: []drain.RegistryStatus{{Name: "memory://", State: "confirmed", Attempts: 1, ConfirmLatency: s.confirmAt},
			{Name: "consul://127.0.0.1:1", State: "failed", Error: strings.Repeat("connection refused; ", 100)}},
		Consumers: &late,
	}
	return rec.Report(dr)
}

func msec(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// The causes split the total at the boundaries Causes documents, and add
// up to it exactly.
func TestCausesAddUp(t *testing.T) {
	t.Parallel()
	busyUntil := func(end time.Duration) func(time.Duration) (int64, int64) {
		return func(at time.Duration) (int64, int64) {
			if at < end {
				return 3, 0
			}
			return 0, 0
		}
	}
	cases := []struct {
		name string
		s    script
		want Causes
	}{
		{
			name: "late consumer, then the longest request, then quiet",
			s: script{confirmAt: msec(600), drainAt: msec(600), stopAt: msec(2100), endAt: msec(2300),
				busy: busyUntil(msec(1700)), late: map[string][]time.Duration{"10.0.0.7": {msec(900), msec(1400)}}},
			want: Causes{Confirmation: msec(600), ConsumerLag: msec(800), LongestRequest: msec(300), Quiet: msec(400), Hooks: msec(200)},
		},
		{
			name: "requests done before the consumer's last call",
			s: script{confirmAt: msec(100), drainAt: msec(100), stopAt: msec(1000), endAt: msec(1010),
				busy: busyUntil(msec(300)), late: map[string][]time.Duration{"a": {msec(500)}}},
			want: Causes{Confirmation: msec(100), ConsumerLag: msec(400), Quiet: msec(500), Hooks: msec(10)},
		},
		{
			name: "still busy as the drain was cut",
			s: script{confirmAt: msec(50), drainAt: msec(50), stopAt: msec(500), endAt: msec(700),
				busy: busyUntil(msec(10_000))},
			want: Causes{Confirmation: msec(50), LongestRequest: msec(450), Hooks: msec(200)},
		},
		{
			name: "late request during the hooks counts as hooks",
			s: script{confirmAt: msec(50), drainAt: msec(50), stopAt: msec(300), endAt: msec(400),
				late: map[string][]time.Duration{"b": {msec(350)}}},
			want: Causes{Confirmation: msec(50), ConsumerLag: msec(250), Hooks: msec(100)},
		},
		{
			name: "no samples: the requests are quiet",
			s: script{confirmAt: msec(200), drainAt: msec(200), stopAt: msec(900), endAt: msec(950),
				busy: busyUntil(msec(700)), noSample: true},
			want: Causes{Confirmation: msec(200), Quiet: msec(700), Hooks: msec(50)},
		},
		{
			name: "no instance found: never drained",
			s:    script{endAt: msec(120)},
			want: Causes{Confirmation: msec(120)},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			off := play(t, c.s)
			if off.Causes != c.want {
				t.Fatalf("want causes %+v, got %+v", c.want, off.Causes)
			}
			if got := off.Causes.Sum(); got != off.Duration {
				t.Fatalf("want the causes to add up to the duration %v, got %v (%+v)", off.Duration, got, off.Causes)
			}
		})
	}
}

// The report names each registry's confirmation and the late consumers'
// last requests, as offsets from the start.
func TestReportContents(t *testing.T) {
	t.Parallel()
	off := play(t, script{confirmAt: msec(600), drainAt: msec(600), stopAt: msec(2100), endAt: msec(2300),
		busy: func(at time.Duration) (int64, int64) { return int64(at/msec(100)) % 4, 1 },
		late: map[string][]time.Duration{"10.0.0.7": {msec(900), msec(1400)}, "10.0.0.8": {msec(1000)}}})
	if len(off.Registries) != 2 {
		t.Fatalf("want 2 registries, got %+v", off.Registries)
	}
	mem := off.Registries[0]
	if mem.DeregisteredAt == nil || *mem.DeregisteredAt != 0 || mem.ConfirmedAt == nil || *mem.ConfirmedAt != msec(600) {
		t.Fatalf("want memory:// removed at 0 and confirmed at 600ms, got %+v", mem)
	}
	if failed := off.Registries[1]; failed.ConfirmedAt != nil || len(failed.Error) > maxText {
		t.Fatalf("want the failed registry unconfirmed, its error clipped to %d bytes; got %+v", maxText, failed)
	}
	if len(off.Consumers) != 2 || off.Consumers[0].ID != "10.0.0.7" || off.Consumers[0].Last != msec(1400) || off.Consumers[0].After != 2 {
		t.Fatalf("want 10.0.0.7 first with 2 late requests, the last at 1.4s; got %+v", off.Consumers)
	}
	if len(off.Hooks) != 1 || off.Hooks[0].At != msec(2100) {
		t.Fatalf("want the hook's end at 2.1s, got %+v", off.Hooks)
	}
	wantPhases := []drain.Phase{drain.Deregistering, drain.Draining, drain.Stopping, drain.Offline}
	if len(off.Phases) != len(wantPhases) {
		t.Fatalf("want phases %v, got %+v", wantPhases, off.Phases)
	}
	for i, p := range off.Phases {
		if p.Phase != wantPhases[i] {
			t.Fatalf("want phases %v, got %+v", wantPhases, off.Phases)
		}
	}
	if off.InFlight.Peak != 3 || off.InFlight.Merged {
		t.Fatalf("want an exact curve peaking at 3, got peak %d merged %v", off.InFlight.Peak, off.InFlight.Merged)
	}
	// Every 100ms the count changes: the change points, not every sample.
	if n := len(off.InFlight.Points); n != 24 {
		t.Fatalf("want 24 change points (one per 100ms over 2.3s, and the start), got %d: %+v", n, off.InFlight.Points)
	}
}

// A five-minute offline with a count that changes at every sample keeps
// at most MaxPoints points, none of them below what was in flight, and,
// with 10,000 late consumers and long errors, stays under 100 KB as JSON
// and SVG together.
func TestLongOfflineStaysSmall(t *testing.T) {
	t.Parallel()
	wave := func(at time.Duration) int64 { return 1000 + int64(at/DefaultInterval)%997 }
	off := play(t, script{confirmAt: msec(800), drainAt: msec(800), stopAt: 5 * time.Minute, endAt: 5*time.Minute + msec(200),
		busy:      func(at time.Duration) (int64, int64) { return wave(at), wave(at) / 10 },
		late:      map[string][]time.Duration{"10.0.0.7": {msec(900), 4 * time.Minute}},
		consumers: 10_000})
	c := off.InFlight
	if len(c.Points) > MaxPoints || !c.Merged {
		t.Fatalf("want at most %d points, merged; got %d (merged %v)", MaxPoints, len(c.Points), c.Merged)
	}
	if c.Peak != 1996 {
		t.Fatalf("want the exact peak 1996, got %d", c.Peak)
	}
	for at := DefaultInterval; at <= off.Duration; at += DefaultInterval * 7 {
		k := 0
		for k+1 < len(c.Points) && c.Points[k+1].At <= at {
			k++
		}
		if got := c.Points[k].InFlight; got < wave(at) {
			t.Fatalf("want the curve at %v no lower than the %d in flight then, got %d", at, wave(at), got)
		}
	}
	last := off.Consumers[len(off.Consumers)-1]
	if !last.Others || last.IDs < drain.MaxTracked {
		t.Fatalf("want the late consumers beyond the top aggregated, got last row %+v", last)
	}
	var js, svg bytes.Buffer
	if err := off.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := off.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	if size := js.Len() + svg.Len(); size >= 100_000 {
		t.Fatalf("want JSON and SVG under 100 KB together, got %d + %d bytes", js.Len(), svg.Len())
	}
	t.Logf("five-minute offline: JSON %d bytes, SVG %d bytes, %d curve points", js.Len(), svg.Len(), len(c.Points))
	checkXML(t, svg.Bytes())
	renders(t, svg.Bytes())
}

// Consumer IDs come from clients: the SVG escapes them, and stays well
// formed with characters XML cannot hold.
func TestSVGEscapesConsumerIDs(t *testing.T) {
	t.Parallel()
	evil := `</text><script>alert("x")</script>&amp;` + "\x00\x1b\ufffe"
	off := play(t, script{confirmAt: msec(100), drainAt: msec(100), stopAt: msec(400), endAt: msec(450),
		late: map[string][]time.Duration{evil: {msec(200)}}})
	var svg bytes.Buffer
	if err := off.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(svg.Bytes(), []byte("<script")) {
		t.Fatalf("want the consumer ID escaped, found <script in the SVG:\n%s", svg.String())
	}
	texts := checkXML(t, svg.Bytes())
	if !strings.Contains(texts, `</text><script>alert("x")</script>&amp;`) {
		t.Fatalf("want the consumer ID as text in the SVG, got texts:\n%s", texts)
	}
	renders(t, svg.Bytes())
}

// checkXML parses b as a whole XML document with an svg root, and returns
// its text.
func checkXML(t *testing.T, b []byte) string {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var text strings.Builder
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("want well-formed XML, got %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Space + " " + tok.Name.Local
			}
		case xml.CharData:
			text.Write(tok)
			text.WriteByte('\n')
		}
	}
	if root != "http://www.w3.org/2000/svg svg" {
		t.Fatalf("want an svg root in the SVG namespace, got %q", root)
	}
	return text.String()
}

// renders converts svg to PNG with rsvg-convert (librsvg, from Debian's
// librsvg2-bin). Without it the check is skipped, unless
// LAMEDUCK_INTEGRATION=1 (CI, where integration/scripts/test.sh installs
// it): then it fails.
func renders(t *testing.T, svg []byte) {
	t.Helper()
	bin, err := exec.LookPath("rsvg-convert")
	if err != nil {
		if os.Getenv("LAMEDUCK_INTEGRATION") == "1" {
			t.Fatalf("want rsvg-convert to check the SVG renders (apt-get install librsvg2-bin): %v", err)
		}
		t.Skip("rsvg-convert not found; install librsvg2-bin to check the SVG renders")
	}
	cmd := exec.Command(bin, "--format", "png")
	cmd.Stdin = bytes.NewReader(svg)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("want rsvg-convert to render the SVG, got %v: %s", err, stderr.String())
	}
	if !bytes.HasPrefix(out.Bytes(), []byte("\x89PNG\r\n\x1a\n")) || out.Len() < 1000 {
		t.Fatalf("want a PNG from rsvg-convert, got %d bytes starting %q", out.Len(), out.Bytes()[:min(out.Len(), 8)])
	}
}

// Observe and Report need nothing before: a recorder whose protocol never
// started reports the empty offline, and Stop is safe at any time.
func TestRecorderZeroOffline(t *testing.T) {
	t.Parallel()
	rec := NewRecorder(nil)
	rec.Stop()
	off := rec.Report(drain.Report{})
	if off.Duration != 0 || off.Causes.Sum() != 0 || len(off.InFlight.Points) != 0 {
		t.Fatalf("want an empty report, got %+v", off)
	}
	var b bytes.Buffer
	if err := off.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	checkXML(t, b.Bytes())
}

func TestSVGPath(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"offline.json":          "offline.svg",
		"/var/log/off.report":   "/var/log/off.svg",
		"offline":               "offline.svg",
		"dir.v2/offline":        "dir.v2/offline.svg",
		"reports/web-1.2.json":  "reports/web-1.2.svg",
		filepath.Join("a", "b"): filepath.Join("a", "b.svg"),
	} {
		if got := SVGPath(in); got != want {
			t.Errorf("SVGPath(%q): want %q, got %q", in, want, got)
		}
	}
}

func TestCheckPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path    string
		wantErr string
	}{
		{filepath.Join(dir, "offline.json"), ""},
		{filepath.Join(dir, "offline.SVG"), "ends in .svg"},
		{"", "empty"},
		{filepath.Join(dir, "missing", "offline.json"), "create it"},
		{filepath.Join(file, "offline.json"), "not a directory"},
	}
	for _, c := range cases {
		err := CheckPath(c.path)
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("CheckPath(%q): want nil, got %v", c.path, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("CheckPath(%q): want an error saying %q, got %v", c.path, c.wantErr, err)
		}
	}
}

// WriteFiles writes the JSON and the SVG beside it, and the JSON reads
// back as the report.
func TestWriteFiles(t *testing.T) {
	t.Parallel()
	off := play(t, script{confirmAt: msec(100), drainAt: msec(100), stopAt: msec(400), endAt: msec(450),
		busy: func(at time.Duration) (int64, int64) { return int64(at / msec(50)), 0 }})
	path := filepath.Join(t.TempDir(), "offline.json")
	if err := off.WriteFiles(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Offline
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("want the JSON to read back, got %v", err)
	}
	if back.Causes != off.Causes || back.Duration != off.Duration || len(back.InFlight.Points) != len(off.InFlight.Points) {
		t.Fatalf("want the report read back as written, got %+v, wrote %+v", back, off)
	}
	svg, err := os.ReadFile(SVGPath(path))
	if err != nil {
		t.Fatalf("want the SVG beside the JSON: %v", err)
	}
	checkXML(t, svg)
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("want only offline.json and offline.svg, got %v", entries)
	}
}

package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// timeline is one instance's offline, for the picture: the library app's
// protocol events, the consumers' removals, and the consumers' in-flight
// requests to it. Times are milliseconds from the start of the offline
// (SIGTERM).
type timeline struct {
	Registry   string          `json:"registry"`
	Topology   string          `json:"topology"`
	Strategy   string          `json:"strategy"`
	Endpoint   string          `json:"endpoint"`
	File       string          `json:"svg"`
	OfflineMS  float64         `json:"offline_ms"`
	PMS        float64         `json:"p_ms"`
	LMS        float64         `json:"l_ms"`
	OverheadMS float64         `json:"overhead_ms"`
	Consumers  []float64       `json:"consumer_removals_ms"`
	Events     []timelineEvent `json:"events"`
	Samples    []sample        `json:"in_flight"`
}

type timelineEvent struct {
	AtMS     float64 `json:"t_ms"`
	Kind     string  `json:"kind"`
	Phase    string  `json:"phase"`
	Registry string  `json:"registry,omitempty"`
}

// span is one coloured band of the phase row.
type span struct {
	from, to float64
	label    string
	color    string
}

// phases turns the protocol events into bands: deregistering (SIGTERM to
// the registry's answer), confirming (to the watch's confirmation),
// draining, stopping (the stop hooks), and exit (Offline to the process's
// exit).
func (t *timeline) phases() []span {
	at := map[string]float64{}
	first := func(k string, v float64) {
		if _, ok := at[k]; !ok {
			at[k] = v
		}
	}
	for _, e := range t.Events {
		switch e.Kind {
		case "phase":
			first(e.Phase, e.AtMS)
		case "deregistered", "confirmed":
			at[e.Kind] = max(at[e.Kind], e.AtMS) // the last registry's
		}
	}
	var out []span
	add := func(fromKey, toKey, label, color string) {
		from, ok1 := at[fromKey]
		to, ok2 := at[toKey]
		if ok1 && ok2 && to >= from {
			out = append(out, span{from, to, label, color})
		}
	}
	at["sigterm"] = 0
	at["exit"] = t.OfflineMS
	add("sigterm", "Deregistering", "signal", "#bbbbbb")
	add("Deregistering", "deregistered", "deregistering", "#f4a261")
	add("deregistered", "confirmed", "confirming", "#e9c46a")
	add("Draining", "Stopping", "draining", "#2a9d8f")
	add("Stopping", "Offline", "stopping", "#264653")
	add("Offline", "exit", "exit", "#888888")
	return out
}

// svg draws the timeline: a row of phases above the in-flight curve, with
// the consumers' removals, P, L and the exit marked.
func (t *timeline) svg() string {
	const (
		w, h                 = 980.0, 420.0
		left, right, top, bt = 90.0, 30.0, 110.0, 60.0
		rowH                 = 26.0
	)
	x0, x1 := -float64(sampleMargin.Milliseconds()), t.OfflineMS+float64(sampleMargin.Milliseconds())
	for _, s := range t.Samples {
		x0, x1 = min(x0, s.AtMS), max(x1, s.AtMS)
	}
	var ymax int64 = 1
	for _, s := range t.Samples {
		ymax = max(ymax, s.InFlight)
	}
	ytop := float64(niceCeil(ymax))
	plotTop, plotBottom := top+rowH+24, h-bt
	px := func(v float64) float64 { return left + (v-x0)/(x1-x0)*(w-left-right) }
	py := func(v float64) float64 { return plotBottom - v/ytop*(plotBottom-plotTop) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%.0f" height="%.0f" fill="white"/>`+"\n", w, h)
	on := registryTitle(t.Registry)
	if t.Topology == topoCluster {
		on += " (cluster)"
	}
	title := fmt.Sprintf("lameduck (%s) on %s: one instance's offline under load (%s)", t.Strategy, on, t.Endpoint)
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", left, esc(title))
	sub := fmt.Sprintf("offline %s, P %s (last consumer drops it), L %s (last reply), overhead %s = offline - max(P, L)",
		fmtMS(t.OfflineMS), fmtMS(t.PMS), fmtMS(t.LMS), fmtMS(t.OverheadMS))
	fmt.Fprintf(&b, `<text x="%.0f" y="42">%s</text>`+"\n", left, esc(sub))
	fmt.Fprintf(&b, `<text x="%.0f" y="62" fill="#444444">%s</text>`+"\n", left, esc(t.milestones()))

	// The phase row.
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">phase</text>`+"\n", left-8, top+rowH/2+4)
	for _, s := range t.phases() {
		x, wd := px(s.from), max(px(s.to)-px(s.from), 1)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s"><title>%s: %s to %s</title></rect>`+"\n",
			x, top, wd, rowH, s.color, esc(s.label), fmtMS(s.from), fmtMS(s.to))
		if s.label != "" && wd > 7*float64(len(s.label)) {
			fg := "black"
			if s.color == "#264653" || s.color == "#2a9d8f" {
				fg = "white"
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="%s">%s</text>`+"\n", x+wd/2, top+rowH/2+4, fg, esc(s.label))
		}
	}
	// Consumers' removals, above the phase row.
	for _, c := range t.Consumers {
		x := px(c)
		fmt.Fprintf(&b, `<path d="M%.1f %.0f l-4 -8 h8 z" fill="#6a4c93"><title>a consumer drops it at %s</title></path>`+"\n", x, top-2, fmtMS(c))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" fill="#6a4c93">consumers</text>`+"\n", left-8, top-4)

	// Axes and grid.
	for k := 0; k <= 4; k++ {
		v := ytop * float64(k) / 4
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left, w-right, y, y)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%g</text>`+"\n", left-8, y+4, v)
	}
	step := niceStep((x1 - x0) / 8)
	for v := math.Ceil(x0/step) * step; v <= x1; v += step {
		x := px(v)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#e5e5e5"/>`+"\n", x, x, plotTop, plotBottom)
		if math.Abs(v) < step/1000 {
			v = 0
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x, plotBottom+16, esc(fmtMS(v)))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">time since SIGTERM</text>`+"\n", (left+w-right)/2, h-18)
	fmt.Fprintf(&b, `<text transform="translate(18 %.0f) rotate(-90)" text-anchor="middle">requests in flight (consumer side)</text>`+"\n", (plotTop+plotBottom)/2)
	fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="black"/>`+"\n", left, w-right, plotBottom, plotBottom)

	// Markers: SIGTERM, P, L, exit; the overhead between max(P, L) and exit.
	marker := func(v float64, color, dash, label string, row int) {
		x := px(v)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="%s" stroke-width="1.5" stroke-dasharray="%s"/>`+"\n", x, x, top+rowH, plotBottom, color, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" fill="%s">%s</text>`+"\n", x+3, plotTop-6+float64(row)*14, color, esc(label))
	}
	need := max(t.PMS, t.LMS)
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#e63946" fill-opacity="0.08"/>`+"\n",
		px(need), plotTop, max(px(t.OfflineMS)-px(need), 0), plotBottom-plotTop)
	marker(0, "black", "none", "SIGTERM", 0)
	marker(t.PMS, "#6a4c93", "6 3", "P", 1)
	marker(t.LMS, "#1d3557", "2 3", "L", 2)
	marker(t.OfflineMS, "#e63946", "none", "exit", 0)

	// The in-flight curve, as steps.
	if len(t.Samples) > 0 {
		var d strings.Builder
		fmt.Fprintf(&d, "M%.1f %.1f", px(t.Samples[0].AtMS), py(float64(t.Samples[0].InFlight)))
		for k := 1; k < len(t.Samples); k++ {
			s := t.Samples[k]
			fmt.Fprintf(&d, " H%.1f V%.1f", px(s.AtMS), py(float64(s.InFlight)))
		}
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#1d3557" stroke-width="1.5"/>`+"\n", d.String())
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// milestones lists the protocol's events in order, for the caption.
func (t *timeline) milestones() string {
	parts := []string{"SIGTERM 0"}
	for _, e := range t.Events {
		name := e.Kind
		if e.Kind == "phase" {
			name = strings.ToLower(e.Phase)
		}
		if e.Kind == "stop-hook" || e.Phase == "Deregistering" && e.Kind == "phase" || e.Phase == "Confirming" && e.Kind == "phase" {
			continue // the registry events say more
		}
		parts = append(parts, fmt.Sprintf("%s %s", name, fmtMS(e.AtMS)))
	}
	parts = append(parts, "exit "+fmtMS(t.OfflineMS))
	return strings.Join(parts, ", ")
}

func registryTitle(r string) string {
	switch r {
	case "consul":
		return "Consul"
	case "nacos":
		return "Nacos"
	}
	return r
}

func esc(s string) string { return html.EscapeString(s) }

// niceCeil rounds n up to 4 times 1, 2 or 5 times a power of ten, so
// that the four grid steps are whole numbers.
func niceCeil(n int64) int64 {
	for p := int64(1); ; p *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if 4*m*p >= n {
				return 4 * m * p
			}
		}
	}
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

package report

import (
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/lameduck/lameduck/drain"
)

// The timeline's layout, in SVG user units (pixels).
const (
	svgWidth    = 960
	marginLeft  = 70
	marginRight = 30
	plotWidth   = svgWidth - marginLeft - marginRight
	bandTop     = 48  // phase bands start here
	curveTop    = 70  // the in-flight curve's highest point
	curveBottom = 220 // and zero
	causesTop   = 226 // the causes bar
	causesH     = 14
	axisY       = 248
	laneH       = 18
)

var phaseColour = map[drain.Phase]string{
	drain.Deregistering: "#f6d5d5",
	drain.Confirming:    "#f9e7c4",
	drain.Draining:      "#d6e9f8",
	drain.Stopping:      "#e4dcf3",
}

// cause is one part of Causes, for drawing.
type cause struct {
	name, colour string
	d            time.Duration
}

func (c Causes) parts() []cause {
	return []cause{
		{"confirmation", "#d9534f", c.Confirmation},
		{"consumer lag", "#f0ad4e", c.ConsumerLag},
		{"longest request", "#337ab7", c.LongestRequest},
		{"quiet", "#5bc0de", c.Quiet},
		{"hooks", "#8e6cc0", c.Hooks},
	}
}

// WriteSVG writes the timeline: the phases as bands, the in-flight curve
// (long-lived requests dashed), the causes as a bar of consecutive spans
// over the time axis, a lane per registry from its removal to its
// confirmation, a lane per late consumer from its first to its last
// request, and a legend of the causes. Every text from elsewhere (consumer
// IDs come from clients) is escaped by encoding/xml.
func (o *Offline) WriteSVG(w io.Writer) error {
	total := max(o.Duration, time.Millisecond)
	x := func(d time.Duration) float64 {
		return marginLeft + float64(min(max(d, 0), total))/float64(total)*plotWidth
	}
	yMax := max(o.InFlight.Peak, 1)
	for _, p := range o.InFlight.Points {
		yMax = max(yMax, p.InFlight, p.LongLived)
	}
	y := func(v int64) float64 {
		return curveBottom - float64(v)/float64(yMax)*(curveBottom-curveTop)
	}

	regTop := axisY + 40
	conTop := regTop + laneH*(len(o.Registries)+1) + 10
	legendTop := conTop + laneH*(len(o.Consumers)+1) + 10
	height := legendTop + 16*6 + 10

	s := &svgWriter{enc: xml.NewEncoder(w)}
	s.start("svg", "xmlns", "http://www.w3.org/2000/svg", "width", itoa(svgWidth), "height", itoa(height),
		"viewBox", fmt.Sprintf("0 0 %d %d", svgWidth, height), "font-family", "sans-serif", "font-size", "11")
	title := fmt.Sprintf("Offline of %s %s", o.Instance.Service, o.Instance.ID)
	s.elem("title", title)
	s.elem("rect", "", "width", "100%", "height", "100%", "fill", "white")
	s.elem("text", title, "x", itoa(marginLeft), "y", "20", "font-size", "14", "font-weight", "bold")
	s.elem("text", fmt.Sprintf("%s in %s, from %s; drained %s", o.Outcome, ms(o.Duration),
		o.Start.UTC().Format("2006-01-02 15:04:05.000 UTC"), o.Source), "x", itoa(marginLeft), "y", "38")

	// Phase bands, named at their top.
	for _, p := range o.Phases {
		colour, ok := phaseColour[p.Phase]
		if !ok {
			continue
		}
		x0, x1 := x(p.At), x(p.At+p.Duration)
		s.elem("rect", "", "x", ftoa(x0), "y", itoa(bandTop), "width", ftoa(max(x1-x0, 0.5)),
			"height", itoa(curveBottom-bandTop), "fill", colour)
		if x1-x0 >= 40 {
			s.elem("text", p.Phase.String(), "x", ftoa(x0+3), "y", itoa(bandTop+12), "fill", "#555")
		}
	}

	// The in-flight curve, a step function to the end.
	s.elem("text", "in flight", "x", itoa(marginLeft-6), "y", itoa(curveTop-8), "text-anchor", "end", "fill", "#222")
	s.elem("text", strconv.FormatInt(yMax, 10), "x", itoa(marginLeft-6), "y", ftoa(y(yMax)+4), "text-anchor", "end")
	s.elem("text", "0", "x", itoa(marginLeft-6), "y", ftoa(y(0)+4), "text-anchor", "end")
	s.elem("line", "", "x1", itoa(marginLeft), "y1", ftoa(y(yMax)), "x2", itoa(marginLeft), "y2", itoa(curveBottom), "stroke", "#888")
	if len(o.InFlight.Points) > 0 {
		s.elem("polyline", "", "points", steps(o.InFlight.Points, x, y, total, func(p Point) int64 { return p.InFlight }),
			"fill", "none", "stroke", "#222", "stroke-width", "1.5")
		for _, p := range o.InFlight.Points {
			if p.LongLived > 0 {
				s.elem("polyline", "", "points", steps(o.InFlight.Points, x, y, total, func(p Point) int64 { return p.LongLived }),
					"fill", "none", "stroke", "#222", "stroke-dasharray", "4 3")
				break
			}
		}
	} else {
		s.elem("text", "no in-flight counts sampled", "x", ftoa(marginLeft+8), "y", itoa(curveBottom-6), "fill", "#777")
	}

	// Each registry's confirmation across the plot.
	for _, r := range o.Registries {
		if r.ConfirmedAt != nil {
			s.elem("line", "", "x1", ftoa(x(*r.ConfirmedAt)), "y1", itoa(bandTop), "x2", ftoa(x(*r.ConfirmedAt)), "y2", itoa(curveBottom),
				"stroke", "#2a7d2a", "stroke-dasharray", "2 2")
		}
	}

	// The causes as consecutive spans, then the time axis.
	s.elem("text", "causes", "x", itoa(marginLeft-6), "y", itoa(causesTop+causesH-3), "text-anchor", "end")
	at := time.Duration(0)
	for _, c := range o.Causes.parts() {
		if c.d > 0 {
			s.elem("rect", "", "x", ftoa(x(at)), "y", itoa(causesTop), "width", ftoa(max(x(at+c.d)-x(at), 0.5)),
				"height", itoa(causesH), "fill", c.colour)
		}
		at += c.d
	}
	s.elem("line", "", "x1", itoa(marginLeft), "y1", itoa(axisY), "x2", itoa(marginLeft+plotWidth), "y2", itoa(axisY), "stroke", "#444")
	step := tickStep(total)
	for t := time.Duration(0); t <= total; t += step {
		s.elem("line", "", "x1", ftoa(x(t)), "y1", itoa(axisY), "x2", ftoa(x(t)), "y2", itoa(axisY+4), "stroke", "#444")
		s.elem("text", t.String(), "x", ftoa(x(t)), "y", itoa(axisY+16), "text-anchor", "middle")
	}

	// A lane per registry: removal to confirmation.
	s.elem("text", "Registries: removed ◆, confirmed ●", "x", itoa(marginLeft), "y", itoa(regTop), "font-weight", "bold")
	for i, r := range o.Registries {
		ly := regTop + laneH*(i+1)
		label := r.Name + ": " + r.State
		x0 := float64(marginLeft)
		if r.DeregisteredAt != nil {
			x0 = x(*r.DeregisteredAt)
			s.elem("path", "", "d", fmt.Sprintf("M%s %dl4 -4l4 4l-4 4z", ftoa(x0-4), ly-4), "fill", "#555")
		}
		x1 := x0
		if r.ConfirmedAt != nil {
			x1 = x(*r.ConfirmedAt)
			s.elem("line", "", "x1", ftoa(x0), "y1", itoa(ly-4), "x2", ftoa(x1), "y2", itoa(ly-4), "stroke", "#2a7d2a")
			s.elem("circle", "", "cx", ftoa(x1), "cy", itoa(ly-4), "r", "4", "fill", "#2a7d2a")
			label += fmt.Sprintf(" at %s, %s after removal", ms(*r.ConfirmedAt), ms(r.Latency))
		} else if r.Error != "" {
			label += ": " + r.Error
		}
		s.laneText(label, x0, x1, ly)
	}

	// A lane per late consumer: first to last request.
	s.elem("text", "Late consumers: last request ●", "x", itoa(marginLeft), "y", itoa(conTop), "font-weight", "bold")
	if len(o.Consumers) == 0 {
		s.elem("text", "none", "x", itoa(marginLeft+200), "y", itoa(conTop), "fill", "#777")
	}
	for i, c := range o.Consumers {
		ly := conTop + laneH*(i+1)
		x0, x1 := x(c.First), x(c.Last)
		s.elem("line", "", "x1", ftoa(x0), "y1", itoa(ly-4), "x2", ftoa(x1), "y2", itoa(ly-4), "stroke", "#f0ad4e")
		s.elem("circle", "", "cx", ftoa(x1), "cy", itoa(ly-4), "r", "4", "fill", "#d9822b")
		name := c.ID
		if c.Others {
			name = fmt.Sprintf("%d others", c.IDs)
		}
		s.laneText(fmt.Sprintf("%s: last request at %s, %d late, lag %s", name, ms(c.Last), c.After, ms(c.Lag)), x0, x1, ly)
	}

	// The legend: the causes, which add up to the total.
	s.elem("text", fmt.Sprintf("Causes, adding up to %s:", ms(o.Duration)), "x", itoa(marginLeft), "y", itoa(legendTop), "font-weight", "bold")
	for i, c := range o.Causes.parts() {
		ly := legendTop + 16*(i+1)
		s.elem("rect", "", "x", itoa(marginLeft), "y", itoa(ly-9), "width", "10", "height", "10", "fill", c.colour)
		pct := 0.0
		if o.Duration > 0 {
			pct = 100 * float64(c.d) / float64(o.Duration)
		}
		s.elem("text", fmt.Sprintf("%s %s (%.0f%%)", c.name, ms(c.d), pct), "x", itoa(marginLeft+16), "y", itoa(ly))
	}
	// And what the lines of the plot are.
	lx := marginLeft + plotWidth/2
	s.elem("line", "", "x1", itoa(lx), "y1", itoa(legendTop+12), "x2", itoa(lx+20), "y2", itoa(legendTop+12), "stroke", "#222", "stroke-width", "1.5")
	s.elem("text", fmt.Sprintf("requests in flight (peak %d)", o.InFlight.Peak), "x", itoa(lx+26), "y", itoa(legendTop+16))
	s.elem("line", "", "x1", itoa(lx), "y1", itoa(legendTop+28), "x2", itoa(lx+20), "y2", itoa(legendTop+28), "stroke", "#222", "stroke-dasharray", "4 3")
	s.elem("text", "long-lived requests (streams)", "x", itoa(lx+26), "y", itoa(legendTop+32))
	s.elem("line", "", "x1", itoa(lx), "y1", itoa(legendTop+44), "x2", itoa(lx+20), "y2", itoa(legendTop+44), "stroke", "#2a7d2a", "stroke-dasharray", "2 2")
	s.elem("text", "a registry confirmed the removal", "x", itoa(lx+26), "y", itoa(legendTop+48))
	if o.InFlight.Merged {
		s.elem("text", fmt.Sprintf("the curve shows each span's peak (more than %d changes)", MaxPoints), "x", itoa(lx), "y", itoa(legendTop+64), "fill", "#777")
	}
	s.end("svg")
	if s.err != nil {
		return fmt.Errorf("report: writing the SVG: %w", s.err)
	}
	if err := s.enc.Close(); err != nil {
		return fmt.Errorf("report: writing the SVG: %w", err)
	}
	return nil
}

// steps draws v over the points as a step function held to the end.
func steps(ps []Point, x func(time.Duration) float64, y func(int64) float64, end time.Duration, v func(Point) int64) string {
	b := make([]byte, 0, len(ps)*24)
	pt := func(px, py float64) {
		if len(b) > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendFloat(b, px, 'f', 1, 64)
		b = append(b, ',')
		b = strconv.AppendFloat(b, py, 'f', 1, 64)
	}
	for i, p := range ps {
		if i > 0 {
			pt(x(p.At), y(v(ps[i-1])))
		}
		pt(x(p.At), y(v(p)))
	}
	pt(x(end), y(v(ps[len(ps)-1])))
	return string(b)
}

// tickStep is a round step (1, 2 or 5 times a power of ten) that puts at
// most ten ticks on an axis of length total.
func tickStep(total time.Duration) time.Duration {
	raw := float64(total) / 10
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*pow >= raw {
			return max(time.Duration(m*pow), time.Nanosecond)
		}
	}
	return max(time.Duration(10*pow), time.Nanosecond)
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

func itoa(n int) string { return strconv.Itoa(n) }

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// svgWriter writes elements through encoding/xml, which escapes every
// attribute and text, keeping the first error.
type svgWriter struct {
	enc *xml.Encoder
	err error
}

func (s *svgWriter) token(t xml.Token) {
	if s.err == nil {
		s.err = s.enc.EncodeToken(t)
	}
}

// start opens an element with attributes given as name, value pairs.
func (s *svgWriter) start(name string, attrs ...string) {
	e := xml.StartElement{Name: xml.Name{Local: name}}
	for i := 0; i+1 < len(attrs); i += 2 {
		e.Attr = append(e.Attr, xml.Attr{Name: xml.Name{Local: attrs[i]}, Value: attrs[i+1]})
	}
	s.token(e)
}

func (s *svgWriter) end(name string) { s.token(xml.EndElement{Name: xml.Name{Local: name}}) }

// elem writes a whole element holding text (none if empty).
func (s *svgWriter) elem(name, text string, attrs ...string) {
	s.start(name, attrs...)
	if text != "" {
		s.token(xml.CharData(text))
	}
	s.end(name)
}

// charWidth is about how wide a character of the 11-unit sans-serif font
// is, to keep lane labels inside the picture.
const charWidth = 6.2

// laneText labels a lane whose marks run from x0 to x1: right of x1 when
// it fits, else left of x0 when it fits, else on the roomier side, cut to
// fit.
func (s *svgWriter) laneText(text string, x0, x1 float64, y int) {
	w := float64(utf8.RuneCountInString(text)) * charWidth
	right, left := svgWidth-x1-8, x0-8
	switch {
	case w <= right:
	case w <= left || left > right:
		s.elem("text", clipRunes(text, int(left/charWidth)), "x", ftoa(x0-8), "y", itoa(y), "text-anchor", "end")
		return
	default:
		text = clipRunes(text, int(right/charWidth))
	}
	s.elem("text", text, "x", ftoa(x1+8), "y", itoa(y))
}

// clipRunes cuts s to at most n characters, marking the cut.
func clipRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n < 1 {
		return ""
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

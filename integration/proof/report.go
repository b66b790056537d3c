package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// strategyRun is one strategy's rolling restarts on one registry.
type strategyRun struct {
	Registry      string    `json:"registry"`
	Topology      string    `json:"topology"`
	Strategy      string    `json:"strategy"`
	Title         string    `json:"title"`
	Service       string    `json:"service"`
	Seconds       float64   `json:"seconds"`
	LoadSeconds   float64   `json:"load_seconds"`
	RatePerSecond float64   `json:"rate_per_second"`
	Totals        totals    `json:"totals"`
	Offlines      []offline `json:"offlines"`

	MedianOfflineMS  float64 `json:"median_offline_ms"`
	MedianPMS        float64 `json:"median_p_ms"`
	MedianLMS        float64 `json:"median_l_ms"`
	MedianOverheadMS float64 `json:"median_overhead_ms"`
	MaxOverheadMS    float64 `json:"max_overhead_ms"`
	OfflineErrors    int     `json:"offline_errors"`
}

func (s *strategyRun) summarize() {
	var off, p, l, over []float64
	s.MaxOverheadMS = 0
	for k, o := range s.Offlines {
		off = append(off, o.OfflineMS)
		p = append(p, o.PMS)
		l = append(l, o.LMS)
		over = append(over, o.OverheadMS)
		if k == 0 || o.OverheadMS > s.MaxOverheadMS {
			s.MaxOverheadMS = o.OverheadMS
		}
		if o.Error != "" {
			s.OfflineErrors++
		}
	}
	s.MedianOfflineMS, s.MedianPMS, s.MedianLMS, s.MedianOverheadMS = median(off), median(p), median(l), median(over)
}

// median of xs, the mean of the middle two for an even count; 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// verdict is one claim of the proof and whether this run shows it.
type verdict struct {
	Registry string `json:"registry"`
	Claim    string `json:"claim"`
	Holds    bool   `json:"holds"`
	Detail   string `json:"detail"`
	// Gate says whether a claim that does not hold fails the command: lost
	// requests and a blind harness do; timings, which depend on the
	// machine, are reported only.
	Gate bool `json:"gate"`
}

// maxOverheadMS is the claim on lameduck's median overhead.
const maxOverheadMS = 50

// verdicts checks the claims against the runs.
func verdicts(runs []*strategyRun) []verdict {
	var out []verdict
	byKey := map[string]*strategyRun{}
	var regs []string
	for _, r := range runs {
		byKey[r.Registry+"/"+r.Strategy] = r
		if !slices.Contains(regs, r.Registry) {
			regs = append(regs, r.Registry)
		}
	}
	for _, reg := range regs {
		if r := byKey[reg+"/"+stratNaive]; r != nil {
			lost := r.Totals.lost()
			out = append(out, verdict{Registry: reg, Gate: true, Claim: "naive loses requests (the harness can see a loss)",
				Holds: lost > 0, Detail: fmt.Sprintf("%d lost: %d of %d requests failed, %d streams cut", lost, r.Totals.Failed, r.Totals.Requests, r.Totals.StreamCut+r.Totals.StreamNoOpen)})
		}
		for _, s := range []string{stratLibrary, stratPrestop, stratRun} {
			r := byKey[reg+"/"+s]
			if r == nil {
				continue
			}
			out = append(out, verdict{Registry: reg, Gate: true, Claim: fmt.Sprintf("lameduck %s loses nothing", s),
				Holds:  r.Totals.lost() == 0,
				Detail: fmt.Sprintf("%d of %d requests failed, %d streams cut", r.Totals.Failed, r.Totals.Requests, r.Totals.StreamCut+r.Totals.StreamNoOpen)})
			out = append(out, verdict{Registry: reg, Claim: fmt.Sprintf("lameduck %s: every offline ends cleanly (exit 0, nothing forced)", s),
				Holds: r.OfflineErrors == 0, Detail: fmt.Sprintf("%d of %d offlines with errors", r.OfflineErrors, len(r.Offlines))})
			out = append(out, verdict{Registry: reg, Claim: fmt.Sprintf("lameduck %s: median overhead above max(P, L) <= %d ms", s, maxOverheadMS),
				Holds: r.MedianOverheadMS <= maxOverheadMS, Detail: fmt.Sprintf("median %.1f ms, max %.1f ms", r.MedianOverheadMS, r.MaxOverheadMS)})
		}
		if r := byKey[reg+"/"+stratSleep]; r != nil {
			out = append(out, verdict{Registry: reg, Claim: "fixed sleep loses nothing",
				Holds: r.Totals.lost() == 0, Detail: fmt.Sprintf("%d of %d requests failed, %d streams cut", r.Totals.Failed, r.Totals.Requests, r.Totals.StreamCut+r.Totals.StreamNoOpen)})
			for _, s := range []string{stratLibrary, stratPrestop, stratRun} {
				if l := byKey[reg+"/"+s]; l != nil {
					out = append(out, verdict{Registry: reg, Claim: fmt.Sprintf("fixed sleep's median offline is far longer (3x or more) than lameduck %s's", s),
						Holds:  r.MedianOfflineMS >= 3*l.MedianOfflineMS,
						Detail: fmt.Sprintf("%.0f ms against %.0f ms", r.MedianOfflineMS, l.MedianOfflineMS)})
				}
			}
		}
	}
	return out
}

// printSummary writes the table of medians, one row per registry and
// strategy.
func printSummary(w io.Writer, runs []*strategyRun) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "registry\ttopology\tstrategy\tclean\trequests\tfailed\tstreams\tcut\trate/s\toffline\tP\tL\toverhead\tmax overhead\t")
	for _, r := range runs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Registry, r.Topology, r.Strategy, len(r.Offlines)-r.OfflineErrors, len(r.Offlines), r.Totals.Requests, r.Totals.Failed,
			r.Totals.Streams, r.Totals.StreamCut+r.Totals.StreamNoOpen, r.RatePerSecond,
			fmtMS(r.MedianOfflineMS), fmtMS(r.MedianPMS), fmtMS(r.MedianLMS), fmtMS(r.MedianOverheadMS), fmtMS(r.MaxOverheadMS))
	}
	tw.Flush()
	fmt.Fprintln(w, "clean: offlines that ended with exit 0 and nothing forced. offline, P, L, overhead: medians over the offlines;")
	fmt.Fprintln(w, "P: start to the last consumer dropping the instance; L: start to its last reply; overhead = offline - max(P, L).")
	for _, r := range runs {
		if len(r.Totals.Errors) > 0 || len(r.Totals.StreamErrors) > 0 {
			fmt.Fprintf(w, "%s %s failures: %s\n", r.Registry, r.Strategy, joinCounts(r.Totals.Errors, r.Totals.StreamErrors))
		}
		for _, o := range r.Offlines {
			if o.Error != "" {
				fmt.Fprintf(w, "%s %s round %d slot %d %s: %s\n", r.Registry, r.Strategy, o.Round, o.Slot, o.Endpoint, firstLine(o.Error))
			}
		}
	}
}

func printVerdicts(w io.Writer, vs []verdict) {
	for _, v := range vs {
		mark := "yes"
		if !v.Holds {
			mark = "NO "
			if !v.Gate {
				mark = "no "
			}
		}
		fmt.Fprintf(w, "  [%s] %-6s %s: %s\n", mark, v.Registry, v.Claim, v.Detail)
	}
}

func joinCounts(ms ...map[string]int64) string {
	all := map[string]int64{}
	for _, m := range ms {
		for k, v := range m {
			all[k] += v
		}
	}
	keys := slices.Sorted(maps.Keys(all))
	parts := make([]string, len(keys))
	for k, key := range keys {
		parts[k] = fmt.Sprintf("%d %s", all[key], key)
	}
	return strings.Join(parts, ", ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

func fmtMS(v float64) string {
	switch {
	case v >= 10_000 || v <= -10_000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0fms", v)
	}
	return fmt.Sprintf("%.1fms", v)
}

// result is the machine-readable report, written as proof.json.
type result struct {
	Machine   machine        `json:"machine"`
	Config    configJSON     `json:"config"`
	Started   time.Time      `json:"started"`
	Seconds   float64        `json:"seconds"`
	Runs      []*strategyRun `json:"runs"`
	Verdicts  []verdict      `json:"verdicts"`
	Timelines []*timeline    `json:"timelines"`
	OK        bool           `json:"ok"`
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// pickTimelines chooses, per registry, the library offline whose overhead
// is the median one, as the instance the picture shows.
func pickTimelines(runs []*strategyRun) []*timeline {
	var out []*timeline
	for _, r := range runs {
		if r.Strategy != stratLibrary {
			continue
		}
		var cands []offline
		for _, o := range r.Offlines {
			if o.timeline != nil {
				cands = append(cands, o)
			}
		}
		if len(cands) == 0 {
			continue
		}
		slices.SortStableFunc(cands, func(a, b offline) int {
			switch {
			case a.OverheadMS < b.OverheadMS:
				return -1
			case a.OverheadMS > b.OverheadMS:
				return 1
			}
			return 0
		})
		t := cands[(len(cands)-1)/2].timeline
		t.File = filepath.Base(svgName(t.Registry))
		out = append(out, t)
	}
	return out
}

func svgName(registry string) string { return "timeline-" + registry + ".svg" }

// Package promtest reads a Prometheus text exposition in tests: the one
// scrape and sample lookup that the admin endpoint's and the supervisor's
// metrics tests share.
package promtest

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Scrape GETs base+"/metrics" and returns the text exposition. It fails the
// test unless the answer is a 200 that arrives within timeout; a
// Content-Type other than text/plain is an error, not a stop.
func Scrape(t testing.TB, base string, timeout time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: want an answer within %v, got %v", timeout, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: reading body: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: want 200, got %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics: want a text/plain exposition, got Content-Type %q", ct)
	}
	return string(body)
}

// Sample returns the value of the series written exactly as series (name
// with its labels, as the text exposition prints them) in text. A series
// missing from text stops the test.
func Sample(t testing.TB, text, series string) float64 {
	t.Helper()
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			t.Fatalf("series %s: want a number, got %q", series, rest)
		}
		return v
	}
	t.Fatalf("series %s: want it in the exposition, got none in:\n%s", series, text)
	return 0
}

// WantSamples checks every series in want against one scrape's text; step
// names the moment in the failures.
func WantSamples(t testing.TB, text, step string, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		if got := Sample(t, text, series); got != v {
			t.Errorf("%s: %s: want %v, got %v", step, series, v, got)
		}
	}
}

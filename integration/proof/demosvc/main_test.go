package main

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestWork(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(handler(make(chan struct{})))
	defer srv.Close()
	for _, tc := range []struct {
		method, query string
		want          int
	}{
		{http.MethodPost, "ms=3", http.StatusOK},
		{http.MethodPost, "ms=0", http.StatusOK},
		{http.MethodPost, "ms=-1", http.StatusBadRequest},
		{http.MethodPost, "ms=10001", http.StatusBadRequest},
		{http.MethodPost, "ms=abc", http.StatusBadRequest},
		{http.MethodGet, "ms=3", http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+"/work?"+tc.query, strings.NewReader("x"))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s /work?%s: %v", tc.method, tc.query, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s /work?%s: want status %d, got %d", tc.method, tc.query, tc.want, resp.StatusCode)
		}
	}
}

// A stream ticks until the instance goes offline, then says goodbye and
// ends; a stream opened after that says goodbye at once.
func TestStreamSaysGoodbye(t *testing.T) {
	t.Parallel()
	goodbye := make(chan struct{})
	srv := httptest.NewServer(handler(goodbye))
	defer srv.Close()
	read := func() (ticks int, bye bool) {
		resp, err := srv.Client().Get(srv.URL + "/stream")
		if err != nil {
			t.Fatalf("GET /stream: %v", err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Errorf("want Content-Type text/event-stream, got %q", ct)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.HasPrefix(line, "data: ") && !bye:
				ticks++
				if ticks == 2 {
					close(goodbye)
				}
			case line == "event: goodbye":
				bye = true
			}
		}
		if err := sc.Err(); err != nil {
			t.Errorf("want the stream to end cleanly, got %v", err)
		}
		return ticks, bye
	}
	done := make(chan struct{})
	var ticks int
	var bye bool
	go func() { defer close(done); ticks, bye = read() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end within 10s of the goodbye")
	}
	if !bye || ticks < 2 {
		t.Errorf("want at least 2 ticks then a goodbye, got %d ticks, goodbye %v", ticks, bye)
	}
	resp, err := srv.Client().Get(srv.URL + "/stream")
	if err != nil {
		t.Fatalf("GET /stream after the goodbye: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) == 0 || lines[0] != "event: goodbye" {
		t.Errorf("a stream opened while going offline: want an immediate goodbye, got %q", lines)
	}
}

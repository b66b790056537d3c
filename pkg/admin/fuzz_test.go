package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/registry"
)

// statusSeeds are admin answers as a real coordinator writes them, and
// near misses.
func statusSeeds(t interface{ Fatal(...any) }) [][]byte {
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	s := drain.Status{
		Phase:    drain.Draining,
		Instance: &registry.Instance{Service: "orders", ID: "orders-1", Address: "10.0.0.5", Port: 8080, Tags: []string{"v2"}, Metadata: map[string]string{"zone": "a"}, Weight: 1.5},
		Stats:    drain.Stats{InFlight: 3, LongLived: 1, Draining: true, Started: 42, Late: 2, LastRequest: at},
		Registries: []drain.RegistryStatus{
			{Name: "consul://127.0.0.1:8500", State: "confirmed", Attempts: 2, ConfirmLatency: 1234567},
			{Name: "nacos://127.0.0.1:8848", State: "failed", Error: "registry: nacos: down", Servers: []drain.ServerStatus{{Name: "127.0.0.1:8858", State: "gone"}}},
		},
		Started: at, Deadline: at.Add(30 * time.Second), Outcome: drain.OutcomeDrained,
	}
	var out [][]byte
	for _, v := range []any{s, drain.Status{}, WaitResult{Reached: true, Status: s}, WaitResult{}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	for _, s := range []string{
		`{"phase":"offline"}`, `{"phase":5}`, `{"phase":"Phase(7)"}`, `{"phase":null}`, `{"reached":true,"status":{"phase":"Offline"}}`,
		`{"reached":1,"status":{}}`, `{"phase":"Serving","duration_ns":1e30}`, `null`, `[]`, `<!doctype html>`, "\x00\xff SSH-2.0",
	} {
		out = append(out, []byte(s))
	}
	return out
}

// checkDecoded fails unless a decoded status is in range and survives a
// round trip: encoded and decoded again, it encodes to the same JSON.
func checkDecoded(t *testing.T, in []byte, s drain.Status) {
	t.Helper()
	if s.Phase < drain.Serving || s.Phase > drain.Offline {
		t.Fatalf("decodeStatus(%q): accepted phase %d, not one of the six", in, s.Phase)
	}
	b1, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("decodeStatus(%q) gave a status that does not encode: %v", in, err)
	}
	s2, ok := decodeStatus(b1)
	if !ok {
		t.Fatalf("decodeStatus(%q) accepted it, but not its own encoding %s", in, b1)
	}
	if b2, _ := json.Marshal(s2); !bytes.Equal(b1, b2) {
		t.Fatalf("decodeStatus(%q): the round trip changed\n%s\ninto\n%s", in, b1, b2)
	}
}

// checkRefused fails unless the client's error for body is one line
// wrapping ErrNotLameduck, without the token.
func checkRefused(t *testing.T, body []byte) {
	t.Helper()
	c := &Client{base: "http://127.0.0.1:9901", token: token}
	err := c.notLameduck("http://127.0.0.1:9901/status", "status", body)
	msg := err.Error()
	if !errors.Is(err, ErrNotLameduck) || strings.ContainsAny(msg, "\r\n") || strings.Contains(msg, token) {
		t.Fatalf("notLameduck(%q): want one line wrapping ErrNotLameduck without the token, got %q", body, msg)
	}
}

func FuzzDecodeStatus(f *testing.F) {
	for _, s := range statusSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte("you sent Bearer " + token + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, ok := decodeStatus(b)
		if !ok {
			checkRefused(t, b)
			return
		}
		checkDecoded(t, b, s)
	})
}

func FuzzDecodeWait(f *testing.F) {
	for _, s := range statusSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		w, ok := decodeWait(b)
		if !ok {
			checkRefused(t, b)
			return
		}
		checkDecoded(t, b, w.Status)
		enc, err := json.Marshal(w)
		if err != nil {
			t.Fatalf("decodeWait(%q) gave a result that does not encode: %v", b, err)
		}
		if w2, ok := decodeWait(enc); !ok || w2.Reached != w.Reached {
			t.Fatalf("decodeWait(%q) accepted it, but not its own encoding %s the same way", b, enc)
		}
	})
}

// waitController answers /wait at once, noting what it was asked.
type waitController struct {
	mu       sync.Mutex
	phase    drain.Phase
	deadline time.Time
	asked    bool
}

func (c *waitController) Status() drain.Status { return drain.Status{Phase: drain.Confirming} }
func (c *waitController) Start()               {}
func (c *waitController) WaitPhase(ctx context.Context, p drain.Phase) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.phase, c.asked = p, true
	c.deadline, _ = ctx.Deadline()
	if p <= drain.Confirming {
		return nil
	}
	return context.DeadlineExceeded
}

// FuzzWaitQuery sends /wait queries to the handler: a 400 is one line
// saying what is wrong; a phase already reached is answered at once;
// otherwise the controller is asked for a real phase with a deadline no
// further than the handler's cap, and the answer is a wait result the
// client reads.
func FuzzWaitQuery(f *testing.F) {
	for _, s := range []string{
		"", "phase=Offline&timeout=5s", "phase=draining", "phase=Hibernating", "timeout=0s", "timeout=-1s", "timeout=soon",
		"timeout=9999999h", "phase=Offline&phase=Serving", "phase=%zz", "timeout=1ns", "phase=Phase(3)",
	} {
		f.Add(s)
	}
	const maxWait = time.Minute
	f.Fuzz(func(t *testing.T, query string) {
		c := &waitController{}
		h, err := NewHandler(c, WithMaxWait(maxWait))
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/wait", nil)
		req.URL.RawQuery = query
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		end := time.Now() // after the handler set the deadline
		body := rec.Body.String()
		switch rec.Code {
		case http.StatusBadRequest:
			if !strings.HasPrefix(body, "admin: ") || strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") || c.asked {
				t.Fatalf("GET /wait?%s: want a one-line 400 without asking the controller, got %q (asked %v)", query, body, c.asked)
			}
		case http.StatusOK:
			w, ok := decodeWait(rec.Body.Bytes())
			if !c.asked {
				// A phase already reached (the status says Confirming) is
				// answered at once, without a long-poll.
				if !ok || !w.Reached {
					t.Fatalf("GET /wait?%s: answered without asking the controller, want reached=true, got %q", query, body)
				}
				return
			}
			if c.phase < drain.Serving || c.phase > drain.Offline || c.deadline.IsZero() || c.deadline.Sub(end) > maxWait {
				t.Fatalf("GET /wait?%s: want the controller asked for a phase with a deadline within %v, got phase %d, deadline %v after the answer", query, maxWait, c.phase, c.deadline.Sub(end))
			}
			if !ok || w.Reached != (c.phase <= drain.Confirming) {
				t.Fatalf("GET /wait?%s: want a wait result with reached=%v, got %q", query, c.phase <= drain.Confirming, body)
			}
		default:
			t.Fatalf("GET /wait?%s: want 200 or 400, got %d %q", query, rec.Code, body)
		}
	})
}

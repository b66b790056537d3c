package admin

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/lameduck/lameduck/drain"
	"github.com/lameduck/lameduck/internal/clock"
)

// TestFollowerBusyEndpoint: with every long-poll slot taken, the
// Follower's long-poll is refused (429) and waits to retry; the status poll
// beside it sees Offline and ends Drain with the app's outcome, without
// waiting out the retry, and leaves no long-poll behind.
func TestFollowerBusyEndpoint(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		outcome drain.Outcome
		want    drain.Outcome // "" means Drain returns nil
	}{
		{name: "drained", outcome: drain.OutcomeDrained},
		{name: "forced", outcome: drain.OutcomeForced, want: drain.OutcomeForced},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, entered := heldPolls()
			h := newHandler(t, f, WithMaxLongPolls(1))
			refused := make(chan struct{}, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rec := &codeRecorder{ResponseWriter: w}
				h.ServeHTTP(rec, r)
				if rec.code == http.StatusTooManyRequests {
					select {
					case refused <- struct{}{}:
					default:
					}
				}
			}))
			t.Cleanup(srv.Close)

			// Another follower holds the only slot.
			other := newClient(t, srv.URL)
			ctx, cancel := context.WithCancel(t.Context())
			held := make(chan struct{})
			go func() {
				defer close(held)
				_, _ = other.Wait(ctx, drain.Offline, 0)
			}()
			t.Cleanup(func() { cancel(); <-held })
			select {
			case <-entered:
			case <-time.After(wait):
				t.Fatalf("the other follower's long-poll: want it held within %v, got nothing", wait)
			}

			fo := &Follower{Client: newClient(t, srv.URL)}
			// The retry after the 429 never comes: only the status poll
			// can end Drain.
			fo.Client.clk = clock.NewFake(time.Unix(0, 0))
			done := make(chan error, 1)
			go func() { done <- fo.Drain(bounded(t), drain.Condition{}) }()
			select {
			case <-refused:
			case err := <-done:
				t.Fatalf("Drain: want it following while refused, got it returning %v", err)
			case <-time.After(wait):
				t.Fatalf("Follower's long-poll: want it refused with 429 within %v, got no refusal", wait)
			}
			f.set(func(s *drain.Status) { s.Phase, s.Outcome = drain.Offline, tc.outcome })
			var err error
			select {
			case err = <-done:
			case <-time.After(wait):
				t.Fatalf("Drain: want it to end within %v of the app reaching Offline, got nothing", wait)
			}
			var se *drain.SourceError
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Drain: want nil for an app that drained, got %v", err)
			case tc.want != "" && (!errors.As(err, &se) || se.Outcome != tc.want):
				t.Errorf("Drain: want a *drain.SourceError with outcome %s, got %v", tc.want, err)
			}
			if got := fo.Last().Phase; got != drain.Offline {
				t.Errorf("Last: want Offline, got %v", got)
			}
		})
	}
}

// codeRecorder remembers the status code written through it.
type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// Package backoff is the one retry-delay policy lameduck uses everywhere:
// exponential, jittered and capped.
package backoff

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// Policy computes retry delays. The zero value uses the defaults: 100ms
// initial, doubling, capped at 5s, with ±20% jitter.
type Policy struct {
	Initial time.Duration // first delay; default 100ms
	Max     time.Duration // cap; default 5s
	Factor  float64       // growth per attempt; default 2
	Jitter  float64       // fraction of randomisation, 0..1; default 0.2
}

func (p Policy) withDefaults() Policy {
	if p.Initial <= 0 {
		p.Initial = 100 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	if p.Factor < 1 {
		p.Factor = 2
	}
	if p.Jitter <= 0 || p.Jitter > 1 {
		p.Jitter = 0.2
	}
	return p
}

// Delay returns the delay before retry number attempt (0 for the first retry).
// It is safe for concurrent use.
func (p Policy) Delay(attempt int) time.Duration {
	p = p.withDefaults()
	d := float64(p.Initial)
	for i := 0; i < attempt && d < float64(p.Max); i++ {
		d *= p.Factor
	}
	if d > float64(p.Max) {
		d = float64(p.Max)
	}
	// Spread over [d*(1-j), d*(1+j)], then cap again so Max is a true cap.
	d *= 1 + p.Jitter*(2*rand.Float64()-1)
	if d > float64(p.Max) {
		d = float64(p.Max)
	}
	return time.Duration(d)
}

// Permanent is implemented by errors that retrying cannot change, such as
// registry.ErrRejected (a refusal, not an outage). Retry stops on any error
// whose chain holds one that reports true.
type Permanent interface {
	Permanent() bool
}

// IsPermanent reports whether err's chain holds a Permanent error that
// says so.
func IsPermanent(err error) bool {
	var p Permanent
	return errors.As(err, &p) && p.Permanent()
}

// Retry calls f until it succeeds, returns a permanent error (IsPermanent),
// or ctx ends, waiting p's delay on clk between calls. Before each wait it
// calls onRetry, if not nil, with the failed attempt's error and the delay.
// It is the one retry loop lameduck has.
//
// It returns nil, the permanent error, or, when ctx ended, the last error
// that said why a call failed (a refused connection, a 403), not the
// deadline that cut the call after it, wrapped with the context's cause:
// "dial tcp 127.0.0.1:1: connect: connection refused (gave up: budget ran
// out)". errors.Is matches both.
func Retry(ctx context.Context, clk clock.Clock, p Policy, f func(ctx context.Context) error, onRetry func(err error, delay time.Duration)) error {
	var cause error // the last error that was not the context's own
	for attempt := 0; ; attempt++ {
		err := f(ctx)
		if err == nil || IsPermanent(err) {
			return err
		}
		if ctx.Err() == nil || cause == nil || !errors.Is(err, ctx.Err()) {
			cause = err
		}
		if ctx.Err() != nil {
			return gaveUp(ctx, cause)
		}
		d := p.Delay(attempt)
		if onRetry != nil {
			onRetry(err, d)
		}
		t := clk.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return gaveUp(ctx, cause)
		case <-t.C():
		}
	}
}

// gaveUp wraps err, the last real cause, with why ctx ended.
func gaveUp(ctx context.Context, err error) error {
	cause := context.Cause(ctx)
	if errors.Is(err, cause) {
		return err
	}
	return &GaveUpError{Err: err, Cause: cause}
}

// GaveUpError is Retry's error when its context ended: the last attempt's
// error and why the retrying stopped. It unwraps to the attempt's error;
// errors.Is matches the cause too.
type GaveUpError struct {
	Err   error // the last attempt's real cause
	Cause error // context.Cause of the retry's context
}

func (e *GaveUpError) Error() string { return fmt.Sprintf("%v (gave up: %v)", e.Err, e.Cause) }

func (e *GaveUpError) Unwrap() error { return e.Err }

// Is reports whether target is the cause the retrying stopped for.
func (e *GaveUpError) Is(target error) bool { return errors.Is(e.Cause, target) }

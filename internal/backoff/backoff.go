// Package backoff is the one retry-delay policy lameduck uses everywhere:
// exponential, jittered and capped.
package backoff

import (
	"math/rand/v2"
	"time"
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

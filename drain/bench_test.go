package drain

import (
	"context"
	"math/rand"
	randv2 "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkRequest measures the per-request cost of counting: one Begin and
// one End on a Tracker, against the cheapest ways to count the same thing.
// The baselines run in the same benchmark so that they share the machine's
// state: compare serial/tracker with serial/atomic-pair and
// parallel/tracker with parallel/atomic-pair.
func BenchmarkRequest(b *testing.B) {
	type counter struct {
		name string
		// serial returns the body of one serial iteration.
		serial func() func()
		// parallel returns the shared state's per-goroutine body.
		parallel func() func(*testing.PB)
	}
	counters := []counter{
		{
			name: "atomic-pair",
			serial: func() func() {
				var n atomic.Int64
				return func() { n.Add(1); n.Add(-1) }
			},
			parallel: func() func(*testing.PB) {
				var n atomic.Int64
				return func(pb *testing.PB) {
					for pb.Next() {
						n.Add(1)
						n.Add(-1)
					}
				}
			},
		},
		{
			name: "tracker",
			serial: func() func() {
				t := new(Tracker)
				return func() {
					r := t.Begin()
					if err := r.End(); err != nil {
						panic(err)
					}
				}
			},
			parallel: func() func(*testing.PB) {
				t := new(Tracker)
				return func(pb *testing.PB) {
					for pb.Next() {
						r := t.Begin()
						if err := r.End(); err != nil {
							panic(err)
						}
					}
				}
			},
		},
		{
			name: "mutex-counter",
			serial: func() func() {
				var mu sync.Mutex
				var n int
				return func() {
					mu.Lock()
					n++
					mu.Unlock()
					mu.Lock()
					n--
					mu.Unlock()
				}
			},
			parallel: func() func(*testing.PB) {
				var mu sync.Mutex
				var n int
				return func(pb *testing.PB) {
					for pb.Next() {
						mu.Lock()
						n++
						mu.Unlock()
						mu.Lock()
						n--
						mu.Unlock()
					}
				}
			},
		},
		{
			name: "waitgroup",
			serial: func() func() {
				var wg sync.WaitGroup
				return func() { wg.Add(1); wg.Done() }
			},
			parallel: func() func(*testing.PB) {
				var wg sync.WaitGroup
				return func(pb *testing.PB) {
					for pb.Next() {
						wg.Add(1)
						wg.Done()
					}
				}
			},
		},
	}
	b.Run("serial", func(b *testing.B) {
		for _, c := range counters {
			b.Run(c.name, func(b *testing.B) {
				f := c.serial()
				b.ReportAllocs()
				for b.Loop() {
					f()
				}
			})
		}
	})
	b.Run("parallel", func(b *testing.B) {
		for _, c := range counters {
			b.Run(c.name, func(b *testing.B) {
				f := c.parallel()
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(f)
			})
		}
	})
}

// BenchmarkZeroDetection measures how long it takes, after the last
// in-flight request ends, for the code waiting to shut down to notice. It
// compares the Tracker's event-driven WaitIdle with a poller that mirrors
// net/http.Server.Shutdown (first poll at once, then every 1ms doubling to a
// 500ms cap, plus up to 10% jitter). Each iteration starts the wait, lets the
// one request run for a random 1-20ms (the same sequence for both), ends it
// and records the detection latency; p50-ns and p99-ns are what to compare,
// ns/op is dominated by the simulated request.
func BenchmarkZeroDetection(b *testing.B) {
	b.Run("tracker", func(b *testing.B) {
		benchZeroDetection(b, func() (end func(), wait func()) {
			t := new(Tracker)
			r := t.Begin()
			t.SetDraining()
			end = func() {
				if err := r.End(); err != nil {
					panic(err)
				}
			}
			wait = func() {
				if err := t.WaitIdle(context.Background(), Condition{}); err != nil {
					panic(err)
				}
			}
			return end, wait
		})
	})
	b.Run("poller", func(b *testing.B) {
		benchZeroDetection(b, func() (end func(), wait func()) {
			var n atomic.Int64
			n.Add(1)
			return func() { n.Add(-1) }, func() { pollUntilZero(&n) }
		})
	})
}

// pollUntilZero waits for n to reach zero the way net/http.Server.Shutdown
// waits for its connections to go idle (see pollIntervalBase and
// shutdownPollIntervalMax in net/http/server.go).
func pollUntilZero(n *atomic.Int64) {
	const pollIntervalMax = 500 * time.Millisecond
	pollIntervalBase := time.Millisecond
	nextPollInterval := func() time.Duration {
		// Add 10% jitter.
		interval := pollIntervalBase + time.Duration(rand.Intn(int(pollIntervalBase/10)))
		// Double and clamp for next time.
		pollIntervalBase *= 2
		if pollIntervalBase > pollIntervalMax {
			pollIntervalBase = pollIntervalMax
		}
		return interval
	}
	timer := time.NewTimer(nextPollInterval())
	defer timer.Stop()
	for {
		if n.Load() == 0 {
			return
		}
		<-timer.C
		timer.Reset(nextPollInterval())
	}
}

// benchZeroDetection runs b.N shutdowns. setup returns one request's end and
// the wait for zero; wait runs in its own goroutine from the moment the
// drain starts, as a shutdown would.
func benchZeroDetection(b *testing.B, setup func() (end func(), wait func())) {
	rng := randv2.New(randv2.NewPCG(1, 2)) // the same request lengths for every variant
	lat := make([]time.Duration, 0, b.N)
	for range b.N {
		end, wait := setup()
		noticed := make(chan time.Time, 1)
		go func() {
			wait()
			noticed <- time.Now()
		}()
		time.Sleep(time.Millisecond + time.Duration(rng.Int64N(int64(19*time.Millisecond))))
		ended := time.Now()
		end()
		select {
		case at := <-noticed:
			lat = append(lat, at.Sub(ended))
		case <-time.After(10 * time.Second):
			b.Fatalf("want zero noticed within 10s of the last End, got nothing")
		}
	}
	slices.Sort(lat)
	// Nearest-rank percentiles.
	b.ReportMetric(float64(lat[(len(lat)+1)/2-1]), "p50-ns")
	b.ReportMetric(float64(lat[(len(lat)*99+99)/100-1]), "p99-ns")
}

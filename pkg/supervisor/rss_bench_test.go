package supervisor

import (
	"os"
	"testing"

	"github.com/prometheus/procfs"
)

// BenchmarkRSS reads the benchmark's own resident memory through rss and
// through procfs (Proc.NewStatus), the choice of reader for WithRecycle's
// memory limit.
func BenchmarkRSS(b *testing.B) {
	pid := os.Getpid()
	readers := []struct {
		name string
		read func() (uint64, error)
	}{
		{"hand", func() (uint64, error) { return rss(pid) }},
		{"procfs", func() (uint64, error) {
			p, err := procfs.NewProc(pid)
			if err != nil {
				return 0, err
			}
			s, err := p.NewStatus()
			return s.VmRSS, err
		}},
	}
	for _, rd := range readers {
		b.Run(rd.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if n, err := rd.read(); err != nil || n == 0 {
					b.Fatalf("want a resident size, got %d, %v", n, err)
				}
			}
		})
	}
}

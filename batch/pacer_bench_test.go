package batch

import (
	"context"
	"testing"
)

// BenchmarkPacerWait measures what pacing costs every request at full
// speed: Wait and Succeeded on an unlimited pacer (--rate -1), and on a
// pacer whose rate is far above what the loop reaches, so no token is ever
// waited for. Run in parallel as many workers call them at once.
func BenchmarkPacerWait(b *testing.B) {
	for _, tt := range []struct {
		name      string
		perMinute float64
	}{
		{"unlimited", -1},
		{"limited", 1e12},
	} {
		b.Run(tt.name, func(b *testing.B) {
			p := NewPacer(tt.perMinute)
			ctx := context.Background()
			b.ReportAllocs()
			b.SetParallelism(50) // 50 x GOMAXPROCS workers
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := p.Wait(ctx); err != nil {
						b.Error(err)
						return
					}
					p.Succeeded()
				}
			})
		})
	}
}

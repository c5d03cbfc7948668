package certs

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkGenerateFleet measures a whole fleet run (CAs, device keys and
// certificates, files, manifest) and reports the rate in devices per second.
//
//	go test -run '^$' -bench GenerateFleet -benchtime 1x ./certs
func BenchmarkGenerateFleet(b *testing.B) {
	for _, count := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("devices=%d", count), func(b *testing.B) {
			for b.Loop() {
				dir := b.TempDir()
				if _, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: count}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(count*b.N)/b.Elapsed().Seconds(), "devices/s")
		})
	}
}

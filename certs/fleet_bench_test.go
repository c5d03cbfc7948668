package certs

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkGenerateFleet measures a whole fleet run (CAs, device keys and
// certificates, files, manifest) and reports the rate in devices per second;
// the issue cases add a P-384 operational key per device (FleetOptions.Issue).
//
//	go test -run '^$' -bench GenerateFleet -benchtime 1x ./certs
func BenchmarkGenerateFleet(b *testing.B) {
	for _, tc := range []struct {
		count       int
		attestation string
		issue       bool
	}{
		{1000, AttestationX509, false},
		{10000, AttestationX509, false},
		{1000, AttestationX509, true},
		{1000, AttestationSymmetricGroup, true},
	} {
		name := fmt.Sprintf("devices=%d", tc.count)
		if tc.issue {
			name = fmt.Sprintf("issue/%s/devices=%d", tc.attestation, tc.count)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				dir := b.TempDir()
				opts := FleetOptions{Dir: dir, Count: tc.count, Attestation: tc.attestation, Issue: tc.issue}
				if _, err := GenerateFleet(context.Background(), opts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(tc.count*b.N)/b.Elapsed().Seconds(), "devices/s")
		})
	}
}

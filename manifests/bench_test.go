package manifests

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// BenchmarkValidateSymmetric1M validates a generated manifest of a million
// symmetric-key rows (a quarter of them group devices with a payload). It
// reports time and allocations per row and the process's peak RSS, which
// should stay flat: rows are streamed, only the id hash set grows.
func BenchmarkValidateSymmetric1M(b *testing.B) {
	const rows = 1_000_000
	path := filepath.Join(b.TempDir(), "m.csv")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "registration_id,symmetric_key,payload")
	for i := range rows {
		if i%4 == 3 {
			fmt.Fprintf(w, "sensor-%07d,,\"{\"\"n\"\":%d}\"\n", i, i)
		} else {
			fmt.Fprintf(w, "sensor-%07d,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==,\n", i)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	opts := Options{GroupKey: []byte("0123456789abcdef0123456789abcdef")}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		s, err := Validate(context.Background(), path, opts, 100)
		if err != nil {
			b.Fatal(err)
		}
		if s.Rows != rows || !s.OK() {
			b.Fatalf("Rows = %d, errors %v", s.Rows, s.Errors)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	n := float64(b.N) * rows
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/row")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/row")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "B/row")
	if kb := peakRSSKiB(); kb > 0 {
		b.ReportMetric(float64(kb)/1024, "peak-RSS-MiB")
	}
}

// BenchmarkValidateX509_10k validates 10,000 X.509 rows (ECDSA P-256 leaf
// files plus a shared intermediate in chain_path).
func BenchmarkValidateX509_10k(b *testing.B) {
	const rows = 10_000
	dir := b.TempDir()
	fx := buildFixture(b, dir)
	var lines []string
	lines = append(lines, "registration_id,cert_path,key_path,chain_path")
	for i := range rows {
		id := fmt.Sprintf("line3-%05d", i)
		c, k := issueCert(b, fx.inter, id, false, certOpts{})
		mustWrite(b, dir, "fleet/"+id+".pem", certPEM(c), 0o644)
		mustWrite(b, dir, "fleet/"+id+".key", keyPEM(b, k), 0o600)
		lines = append(lines, fmt.Sprintf("%s,fleet/%s.pem,fleet/%s.key,ca/intermediate.pem", id, id, id))
	}
	path := writeManifest(b, dir, "m.csv", lines...)
	b.ResetTimer()
	for b.Loop() {
		s, err := Validate(context.Background(), path, testOptions(), 100)
		if err != nil {
			b.Fatal(err)
		}
		if s.ByKind[KindX509] != rows {
			b.Fatalf("ByKind = %v, errors %v", s.ByKind, s.Errors)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/rows, "ns/row")
}

// peakRSSKiB returns the process's peak resident set size (Linux), or 0.
func peakRSSKiB() int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb
		}
	}
	return 0
}

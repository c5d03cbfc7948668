package report

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/report/reporttest"
)

// TestHTMLReportMillion writes the HTML report of a 1,000,000-device ledger
// (reporttest.WriteLedger: 1% retried after a 429 and 0.1% failed) and
// checks what it shows. make bench measures the same report, written by
// the dps-batch binary, against its budget (≤ 10 s, ≤ 200 MB peak RSS);
// this test logs its time and peak RSS only. The ledger is built with
// plain SQL inserts, in about 10 s; set DPSBATCH_HTML_MILLION=1 to run it.
func TestHTMLReportMillion(t *testing.T) {
	if os.Getenv("DPSBATCH_HTML_MILLION") == "" {
		t.Skip("set DPSBATCH_HTML_MILLION=1 to write the HTML report of a 1,000,000-device ledger (about 20 s); make bench measures it")
	}
	const n = 1_000_000
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "million.ledger")
	if err := reporttest.WriteLedger(ctx, path, n); err != nil {
		t.Fatal(err)
	}

	if runtime.GOOS == "linux" {
		// Reset the peak RSS, so that VmHWM measures the report alone.
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			t.Logf("cannot reset the peak RSS: %v", err)
		}
	}
	l, err := ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	r, err := BuildHTMLReport(ctx, l, HTMLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.render(io.Discard); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("HTML report of %d devices in %s, peak RSS %d MB", n, took.Round(time.Millisecond), peakRSS()>>20)

	failed, throttled := 0, 0
	for i := 1; i <= n; i++ {
		if reporttest.Failed(i) {
			failed++
		}
		if reporttest.Throttled(i) {
			throttled++
		}
	}
	if r.Total != n || r.Assigned != n-failed || r.Throttled != throttled || r.Retries != throttled || r.Billable != n+throttled {
		t.Errorf("report: %d devices, %d assigned, %d 429s, %d retries, %d billable; want %d, %d, %d, %d, %d",
			r.Total, r.Assigned, r.Throttled, r.Retries, r.Billable, n, n-failed, throttled, throttled, n+throttled)
	}
	if r.Latency.N != n || len(r.Hubs) != 4 || len(r.Failures) != 1 || r.Failures[0].N != failed || r.NAttention != failed || len(r.Attention) != DefaultAttentionLimit {
		t.Errorf("report: %d latencies, %d hubs, failures %+v, %d need attention (%d listed)", r.Latency.N, len(r.Hubs), r.Failures, r.NAttention, len(r.Attention))
	}
}

// peakRSS returns the process's peak resident set size in bytes (VmHWM on
// Linux), else the Go runtime's memory from the system.
func peakRSS() uint64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Sys
}

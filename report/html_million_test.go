package report

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/dps-batch/dps-batch/ledger"
)

// TestHTMLReportMillion writes the HTML report of a 1,000,000-device ledger
// (with 1% retried after a 429 and 0.1% failed) and checks the budget: at
// most 10 s, and at most 200 MB peak RSS while the report is written (on
// Linux, where the peak is reset after the ledger is made). The ledger is
// built with plain SQL inserts, in about 10 s; set DPSBATCH_HTML_MILLION=1
// to run it.
func TestHTMLReportMillion(t *testing.T) {
	if os.Getenv("DPSBATCH_HTML_MILLION") == "" {
		t.Skip("set DPSBATCH_HTML_MILLION=1 to write the HTML report of a 1,000,000-device ledger (about 20 s)")
	}
	const n = 1_000_000
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "million.ledger")
	l, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	run, err := l.StartRun(ctx, "provision", map[string]string{"rate": "6000"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.FinishRun(ctx, run, "completed", map[ledger.State]int{ledger.StateAssigned: n - n/1000, ledger.StateFailed: n / 1000}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fillMillion(t, path, n, run)

	if runtime.GOOS == "linux" {
		// Reset the peak RSS, so that VmHWM measures the report alone.
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			t.Logf("cannot reset the peak RSS: %v", err)
		}
	}
	l, err = ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	got, err := WriteHTML(ctx, l, io.Discard, HTMLOptions{})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Errorf("report of %d devices, want %d", got, n)
	}
	peak := peakRSS()
	t.Logf("HTML report of %d devices in %s, peak RSS %d MB", n, took.Round(time.Millisecond), peak>>20)
	if took > 10*time.Second {
		t.Errorf("took %s, budget 10 s", took)
	}
	if peak > 200<<20 {
		t.Errorf("peak RSS %d MB, budget 200 MB", peak>>20)
	}
}

// fillMillion inserts n devices (and their attempt log) into the ledger at
// path, 100 a second from a fixed start.
func fillMillion(t *testing.T, path string, n int, run int64) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	dev, err := tx.Prepare(`INSERT INTO devices (id, registration_id, state, assigned_hub, device_id, error_code, error_message, hint,
		http_status, attempts, polls, first_attempt_at, finished_at, updated_at, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		t.Fatal(err)
	}
	att, err := tx.Prepare(`INSERT INTO attempts (device, run_id, kind, http_status, error_code, latency_us, at) VALUES (?,?,1,?,?,?,?)`)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC).UnixMilli()
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("device-%07d", i)
		first := t0 + int64(i)*10
		fin := first + 2000 + int64(i%1000)
		state, hub, code, msg, hint, status, attempts := 4, "hub-"+strconv.Itoa(i%4)+".azure-devices.net", 0, "", "", 200, 1
		if i%1000 == 7 {
			state, hub, code, msg, hint, status = 6, "", 401002, "Invalid certificate.", "check the certificate chain", 401
		}
		if i%100 == 0 {
			attempts = 2
			if _, err := att.Exec(i, run, 429, 429001, 1000, first); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := att.Exec(i, run, 202, 0, 40000, first); err != nil {
			t.Fatal(err)
		}
		if _, err := dev.Exec(i, id, state, hub, id, code, msg, hint, status, attempts, 1, first, fin, fin, run); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
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

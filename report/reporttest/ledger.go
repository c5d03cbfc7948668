// Package reporttest makes large synthetic ledgers for the report's tests
// and for make bench (the HTML report of a 1,000,000-device ledger).
package reporttest

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	_ "modernc.org/sqlite" // the driver the ledger uses

	"github.com/dps-batch/dps-batch/ledger"
)

// Start is when the first device of a synthetic ledger made its first
// request; device i (from 1) did so i×10 ms later.
var Start = time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)

// Failed reports whether device i of a synthetic ledger failed (0.1% of
// them: i % 1000 == 7); Throttled whether it was answered 429 once before
// being accepted (1%: i % 100 == 0).
func Failed(i int) bool    { return i%1000 == 7 }
func Throttled(i int) bool { return i%100 == 0 }

// WriteLedger creates a ledger at path holding n devices, device-0000001
// onwards, 100 a second from Start, with the attempt log a run would
// leave: one finished run, every device assigned to one of four hubs
// (hub-0 … hub-3) in about 2 s, but 0.1% failed (401002, with a hint) and
// 1% retried after a 429. The rows are inserted with plain SQL in one
// transaction: about 10 s for 1,000,000 devices, where Put would take
// minutes.
func WriteLedger(ctx context.Context, path string, n int) error {
	l, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		return err
	}
	failed := 0
	for i := 1; i <= n; i++ {
		if Failed(i) {
			failed++
		}
	}
	run, err := l.StartRun(ctx, "provision", map[string]string{"rate": "6000"})
	if err == nil {
		err = l.FinishRun(ctx, run, "completed", map[ledger.State]int{ledger.StateAssigned: n - failed, ledger.StateFailed: failed})
	}
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return fill(ctx, path, n, run)
}

// fill inserts the devices and their attempt log.
func fill(ctx context.Context, path string, n int, run int64) error {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	dev, err := tx.PrepareContext(ctx, `INSERT INTO devices (id, registration_id, state, assigned_hub, device_id, error_code, error_message, hint,
		http_status, attempts, polls, first_attempt_at, finished_at, updated_at, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		return fmt.Errorf("synthetic ledger %s: %w", path, err)
	}
	att, err := tx.PrepareContext(ctx, `INSERT INTO attempts (device, run_id, kind, http_status, error_code, latency_us, at) VALUES (?,?,1,?,?,?,?)`)
	if err != nil {
		return fmt.Errorf("synthetic ledger %s: %w", path, err)
	}
	t0 := Start.UnixMilli()
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("device-%07d", i)
		first := t0 + int64(i)*10
		fin := first + 2000 + int64(i%1000)
		state, hub, code, msg, hint, status, attempts := 4, "hub-"+strconv.Itoa(i%4)+".azure-devices.net", 0, "", "", 200, 1
		if Failed(i) {
			state, hub, code, msg, hint, status = 6, "", 401002, "Invalid certificate.", "check the certificate chain", 401
		}
		if Throttled(i) {
			attempts = 2
			if _, err := att.ExecContext(ctx, i, run, 429, 429001, 1000, first); err != nil {
				return fmt.Errorf("synthetic ledger %s: %w", path, err)
			}
		}
		if _, err := att.ExecContext(ctx, i, run, 202, 0, 40000, first); err != nil {
			return fmt.Errorf("synthetic ledger %s: %w", path, err)
		}
		if _, err := dev.ExecContext(ctx, i, id, state, hub, id, code, msg, hint, status, attempts, 1, first, fin, fin, run); err != nil {
			return fmt.Errorf("synthetic ledger %s: %w", path, err)
		}
	}
	return tx.Commit()
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/report"
)

func runReport(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "report", `Export one row per device from a ledger: registration_id, status, assigned_hub,
device_id, substatus, operation_id, error_code, error_message, hint, attempts,
first_attempt_at, finished_at, request_id. The ledger is only read; a run may be
in progress.`,
		"dps-batch report --ledger devices.ledger --out report.csv",
		"dps-batch report --ledger devices.ledger --state failed,disabled --out failures.csv",
		"dps-batch report --ledger devices.ledger --format jsonl --out - | jq .")
	ledgerPath := fs.String("ledger", "", "ledger `file` to read; required")
	out := fs.String("out", "-", "output `file`; - writes to stdout")
	format := fs.String("format", "csv", "output `format`: csv or jsonl")
	stateList := fs.String("state", "", "only devices in these comma-separated `states` (pending, registering, assigning, assigned, disabled, failed, retryable); empty = all")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "ledger", *ledgerPath, "dps-batch report --ledger devices.ledger --out report.csv"); err != nil {
		return err
	}
	f, err := report.ParseFormat(*format)
	if err != nil {
		return usagef("--format csv", "%v", err)
	}
	states, err := parseStates(*stateList)
	if err != nil {
		return err
	}
	led, err := openForReading(ctx, *ledgerPath, "dps-batch report --ledger devices.ledger --out report.csv")
	if err != nil {
		return err
	}
	defer led.Close()

	if *out == "-" {
		_, err := report.Write(ctx, led, e.stdout, f, states)
		return err
	}
	// Write to a temporary file and rename, so a failed export never leaves
	// a truncated report where a good one was.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".report-*")
	if err != nil {
		return fmt.Errorf("create report %s: %w", *out, err)
	}
	defer os.Remove(tmp.Name())
	n, err := report.Write(ctx, led, tmp, f, states)
	if err == nil {
		err = tmp.Chmod(0o644) // a report is for sharing, unlike CreateTemp's 0600
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write report %s: %w", *out, err)
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		return fmt.Errorf("write report %s: %w", *out, err)
	}
	fmt.Fprintf(e.stderr, "Wrote %d device(s) to %s\n", n, *out)
	return nil
}

// allStates lists the ledger states in lifecycle order.
var allStates = []ledger.State{ledger.StatePending, ledger.StateRegistering, ledger.StateAssigning,
	ledger.StateAssigned, ledger.StateDisabled, ledger.StateFailed, ledger.StateRetryable}

func parseStates(list string) ([]ledger.State, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var out []ledger.State
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		ok := false
		for _, st := range allStates {
			if string(st) == s {
				out = append(out, st)
				ok = true
			}
		}
		if !ok {
			return nil, usagef("--state failed,disabled", "unknown state %q in --state", s)
		}
	}
	return out, nil
}

var _ io.Writer = (*os.File)(nil)

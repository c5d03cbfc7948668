package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/report"
)

const htmlReportExample = "dps-batch report --ledger devices.ledger --format html --out run.html"

// writeHTMLReport is report --format html: the run report of the ledger at
// ledgerPath written to out ("-" = stdout) through a temporary file, so a
// failed report never leaves a truncated one where a good one was.
func writeHTMLReport(ctx context.Context, e *env, set map[string]bool, lf *ledgerFlags, out string) error {
	for _, name := range []string{"state", "per-device", "force", "with-keys", "manifest", "report-columns", "column", "strict", "group-key-file", "group-key-env", "allow-conflicts"} {
		if set[name] {
			return usagef(htmlReportExample, "--%s does not apply to --format html: the HTML report shows the whole ledger", name)
		}
	}
	if lf.merged() {
		// Never a report of the first ledger only, looking like the fleet's.
		return usagef(htmlReportExample+"   # one per ledger",
			"--format html reads one ledger: several --ledger values (or a glob, or --station) are merged into CSV or JSON lines reports only, for now")
	}
	ledgerPath := lf.first
	led, err := openForReading(ctx, ledgerPath, htmlReportExample)
	if err != nil {
		return err
	}
	defer led.Close()
	if out == "-" {
		_, err := report.WriteHTML(ctx, led, e.stdout, report.HTMLOptions{})
		return err
	}
	n, err := writeHTMLFile(ctx, led, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "Wrote the HTML report of %d device(s) to %s\n", n, out)
	return nil
}

// writeHTMLFile writes the HTML report of led to path, atomically.
func writeHTMLFile(ctx context.Context, led *ledger.Ledger, path string) (int, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*.html")
	if err != nil {
		return 0, fmt.Errorf("create report %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	n, err := report.WriteHTML(ctx, led, tmp, report.HTMLOptions{})
	if err == nil {
		err = tmp.Chmod(0o644) // a report is for sharing
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return 0, fmt.Errorf("write report %s: %w", path, err)
	}
	return n, nil
}

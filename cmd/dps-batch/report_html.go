package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/report"
)

const htmlReportExample = "dps-batch report --ledger devices.ledger --format html --out run.html"

const mergedHTMLExample = "dps-batch report --ledger 'line-*.ledger' --format html --out fleet.html"

// writeHTMLReport is report --format html: the run report of the ledger at
// ledgerPath (or of several ledgers merged, one station each) written to
// out ("-" = stdout) through a temporary file, so a failed report never
// leaves a truncated one where a good one was.
func writeHTMLReport(ctx context.Context, e *env, set map[string]bool, lf *ledgerFlags, out string) error {
	for _, name := range []string{"state", "per-device", "force", "with-keys", "manifest", "report-columns", "column", "strict", "group-key-file", "group-key-env"} {
		if set[name] {
			return usagef(htmlReportExample, "--%s does not apply to --format html: the HTML report shows the whole ledger", name)
		}
	}
	if err := lf.check(mergedHTMLExample); err != nil {
		return err
	}
	if lf.merged() {
		return writeMergedHTMLReport(ctx, e, lf, out)
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

// writeMergedHTMLReport is report --format html with several ledgers: one
// page with the totals per station, charts over all stations and a station
// column in the run history and the devices that need attention. As with
// CSV, the totals per station are printed on stderr, and devices two
// ledgers disagree about are all in the page and exit 3 unless
// --allow-conflicts.
func writeMergedHTMLReport(ctx context.Context, e *env, lf *ledgerFlags, out string) error {
	srcs, closeAll, err := openSources(ctx, lf, mergedHTMLExample)
	if err != nil {
		return err
	}
	defer closeAll()
	var res *report.MergeResult
	write := func(w io.Writer) error {
		var werr error
		res, werr = report.WriteMergedHTML(ctx, srcs, w, report.MergedHTMLOptions{AllowConflicts: lf.allowConflicts})
		var ce *report.ConflictError
		if errors.As(werr, &ce) {
			return nil // written in full; the conflicts are reported below
		}
		return werr
	}
	if out == "-" {
		err = write(e.stdout)
	} else {
		err = writeReplacing(out, write)
	}
	if err != nil {
		return err
	}
	if out != "-" {
		fmt.Fprintf(e.stderr, "Wrote the HTML report of %d row(s) of %d device(s) from %d ledger(s) to %s\n", res.Rows, res.Devices, len(srcs), out)
	}
	printStationTotals(e.stderr, res)
	return mergeConflicts(res, lf.allowConflicts)
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

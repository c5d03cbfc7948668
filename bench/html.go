package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/report/reporttest"
)

// benchHTML builds a synthetic ledger of cfg.htmlDevices devices (the one
// the report package's million test reads: reporttest.WriteLedger), then
// times "dps-batch report --format html" on it as a child process, so the
// peak RSS is the report's own (issue 14: ≤ 10 s, ≤ 200 MB for 1,000,000
// devices).
func benchHTML(ctx context.Context, cfg *config, r *recorder) error {
	n := cfg.htmlDevices
	r.begin("html", fmt.Sprintf("7. HTML run report of a %d-device ledger", n))
	dir := filepath.Join(cfg.work, "html")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ledgerPath := filepath.Join(dir, "million.ledger")
	start := time.Now()
	if err := reporttest.WriteLedger(ctx, ledgerPath, n); err != nil {
		return err
	}
	r.logf("ledger of %d devices made in %s (%.0f MB)", n, time.Since(start).Round(time.Millisecond), float64(fileSize(ledgerPath))/1e6)

	out := filepath.Join(dir, "report.html")
	c, err := runChild(ctx, cfg.bin, []string{"report", "--ledger", ledgerPath, "--format", "html", "--out", out}, nil)
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("Wrote the HTML report of %d device(s)", n); c.Exit != 0 || !strings.Contains(c.Stderr, want) {
		return fmt.Errorf("report --format html: exit %d, want %q\nstderr: %s", c.Exit, want, tail(c.Stderr, 2000))
	}
	fi, err := os.Stat(out)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("%d devices, 1%% retried after a 429, 0.1%% failed; whole command", n)
	r.atMost(fmt.Sprintf("HTML report of %s devices: wall time", thousands(n)), c.Wall.Seconds(), "s", 10, what)
	r.atMost(fmt.Sprintf("HTML report of %s devices: peak RSS", thousands(n)), float64(c.MaxRSS)/1e6, "MB", 200,
		"the dps-batch process's VmHWM, sampled every 20 ms")
	r.info("HTML report: CPU (dps-batch process)", c.CPU.Seconds(), "CPU-s", "user + system")
	r.info("HTML report: file size", float64(fi.Size())/1e3, "kB", "self-contained page: 3 inline SVG charts, at most 1,000 attention rows")
	return nil
}

// thousands writes n with thousands separators.
func thousands(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

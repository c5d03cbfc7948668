package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// maxPhase bounds how long the 1M-row run may validate and plan before the
// harness gives up on it, so a regression cannot eat the whole budget.
const maxPhase = 4 * time.Minute

// benchCost measures the peak RSS of dps-batch on a synthetic manifest of
// symmetric-key group devices (no certificates needed). The whole manifest
// is validated and planned (every row recorded in the ledger as pending);
// then a bounded number of devices is provisioned and the run is stopped
// with SIGINT, as a user would, because a full million at loopback speed
// would not fit the time budget.
func benchCost(ctx context.Context, cfg *config, r *recorder) error {
	r.begin("cost", fmt.Sprintf("2. Cost: peak RSS on a %d-row symmetric-key manifest", cfg.manifestRows))
	dir := filepath.Join(cfg.work, "cost")
	t0 := time.Now()
	simCfg, manifest, keyFile, err := groupFleet(dir, "sensor-", cfg.manifestRows)
	if err != nil {
		return err
	}
	r.logf("manifest of %d rows written in %s", cfg.manifestRows, time.Since(t0).Round(time.Millisecond))
	sim, err := startSim(dir, "sim", simCfg)
	if err != nil {
		return err
	}
	defer sim.Close()

	var firstRequest, stopped time.Time
	start := time.Now()
	watch := func(ctx context.Context, p *os.Process) {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			st := sim.Stats()
			if firstRequest.IsZero() && st.Requests > 0 {
				firstRequest = time.Now()
			}
			timedOut := firstRequest.IsZero() && time.Since(start) > maxPhase
			if timedOut || st.Registers >= int64(cfg.rssDispatch) {
				stopped = time.Now()
				_ = p.Signal(syscall.SIGINT) // drain: finish in-flight devices, record them, exit 4
				return
			}
		}
	}
	c, err := runChild(ctx, cfg.bin, provisionArgs(sim, manifest, filepath.Join(dir, "m.ledger"),
		"--group-key-file", keyFile, "--rate", "-1", "--poll-rate", "-1", "--workers", fmt.Sprint(cfg.workers)), watch)
	if err != nil {
		return err
	}
	if firstRequest.IsZero() {
		return fmt.Errorf("no request reached the simulator within %s (exit %d)\nstderr: %s", maxPhase, c.Exit, tail(c.Stderr, 2000))
	}
	sum, err := parseSummary(c)
	if err != nil {
		return err
	}
	done := sum.Outcomes["assigned"]
	r.logf("validated and planned %d rows in %s; provisioned %d devices, then stopped with SIGINT; exit %d after %s",
		cfg.manifestRows, firstRequest.Sub(start).Round(time.Millisecond), done, c.Exit, c.Wall.Round(time.Millisecond))
	rows := grouped(cfg.manifestRows)
	r.atMost("peak RSS, "+rows+"-row manifest", float64(c.MaxRSS)/1e6, "MB", 150,
		fmt.Sprintf("%d rows validated + planned, %d provisioned", cfg.manifestRows, done))
	r.info("validate + plan, "+rows+" rows", firstRequest.Sub(start).Seconds(), "s", "until the first request")
	if sum.PerSecond > 0 {
		full := time.Duration(float64(cfg.manifestRows) / sum.PerSecond * float64(time.Second))
		r.note("Peak RSS run: all %d rows were validated and planned (each recorded as pending in the ledger), then %d devices were provisioned and the run was stopped with SIGINT after %s (exit %d, resumable). Provisioning all of them at the measured %.0f devices/s would take about %s more, so make bench stops early to stay within its 10-minute budget.",
			cfg.manifestRows, done, stopped.Sub(firstRequest).Round(100*time.Millisecond), c.Exit, sum.PerSecond, full.Round(time.Minute))
	}
	return nil
}

// grouped writes n with thousands separators (1000000 -> "1,000,000"), as
// the figures' names have it.
func grouped(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// benchResume provisions a fleet of symmetric-key group devices completely,
// then runs the same command again: everything is assigned, so the re-run
// must finish quickly without a single request to DPS. The first run also
// gives the symmetric-key throughput, CPU and ledger size per device.
func benchResume(ctx context.Context, cfg *config, r *recorder) error {
	n := cfg.resumeDevices
	r.begin("resume", fmt.Sprintf("4. Resume cost: re-running a fully assigned %d-device ledger", n))
	dir := filepath.Join(cfg.work, "resume")
	simCfg, manifest, keyFile, err := groupFleet(dir, "meter-", n)
	if err != nil {
		return err
	}
	sim, err := startSim(dir, "sim", simCfg)
	if err != nil {
		return err
	}
	defer sim.Close()
	ledgerPath := filepath.Join(dir, "r.ledger")
	args := provisionArgs(sim, manifest, ledgerPath, "--group-key-file", keyFile,
		"--rate", "-1", "--poll-rate", "-1", "--workers", fmt.Sprint(cfg.workers))

	first, err := runChild(ctx, cfg.bin, args, nil)
	if err != nil {
		return err
	}
	sum, err := parseSummary(first)
	if err != nil {
		return err
	}
	if got := sum.Outcomes["assigned"]; got != n || first.Exit != 0 {
		return fmt.Errorf("first run: exit %d, %d of %d assigned\nstderr: %s", first.Exit, got, n, tail(first.Stderr, 2000))
	}
	r.logf("first run: %d devices assigned in %s", n, first.Wall.Round(time.Millisecond))
	ledgerBytes := fileSize(ledgerPath)

	before := sim.Stats()
	again, err := runChild(ctx, cfg.bin, args, nil)
	if err != nil {
		return err
	}
	after := sim.Stats()
	sum2, err := parseSummary(again)
	if err != nil {
		return err
	}
	if got := sum2.Outcomes["skipped"]; got != n || again.Exit != 0 {
		return fmt.Errorf("re-run: exit %d, %d of %d skipped\nstderr: %s", again.Exit, got, n, tail(again.Stderr, 2000))
	}
	r.atMost(fmt.Sprintf("resume: re-run of %d assigned devices", n), again.Wall.Seconds(), "s", 5, "whole command")
	r.atMost("resume: network requests of the re-run", float64(after.Requests-before.Requests), "requests", 0, "simulator Stats")

	r.section = "cost"
	r.atMost("ledger per device", float64(ledgerBytes)/float64(n), "bytes", 600,
		fmt.Sprintf("%d assigned symmetric-key devices, register + poll logged", n))
	r.info("CPU per 1,000 symmetric-key devices (dps-batch process)", first.CPU.Seconds()/float64(n)*1000, "CPU-s",
		fmt.Sprintf("user+sys %.1f s for %d devices", first.CPU.Seconds(), n))
	r.info("dps-batch provision, symmetric-key devices", float64(n)/first.Wall.Seconds(), "devices/s",
		fmt.Sprintf("%d devices, keep-alive connections, whole command", n))
	return nil
}

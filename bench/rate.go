package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dpssim"
)

// benchRate is issue 12's acceptance for a raised rate: "--rate 6000 alone,
// 3,000 devices, simulator allowing 6,000/min, Retry-After 0: within 10% of
// 100 devices/s; the dry-run estimate within 10% of the measured time". The
// fleet is made as a user makes it (dps-batch certs fleet --attestation
// symmetric-group), the simulator serves the configuration that command
// wrote with its quota raised to the rate and Retry-After 0, and the two
// commands are the user's: provision --dry-run, then provision with --rate
// and nothing else that changes pacing (--workers and --poll-rate keep
// their defaults; --quiet --json only change what is printed).
func benchRate(ctx context.Context, cfg *config, r *recorder) error {
	n, rate := cfg.rateDevices, cfg.ratePerMin
	want := float64(rate) / 60 // devices/s the rate allows
	r.begin("rate", fmt.Sprintf("6. Raised rate: provision --rate %d alone, %d symmetric-key group devices, simulator quota %d/min, Retry-After 0", rate, n, rate))
	dir := filepath.Join(cfg.work, "rate")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fleetDir := filepath.Join(dir, "fleet")
	const prefix = "rate-"
	c, err := runChild(ctx, cfg.bin, []string{"certs", "fleet", "--attestation", "symmetric-group",
		"--count", fmt.Sprint(n), "--prefix", prefix, "--out", fleetDir, "--id-scope", scope}, nil)
	if err != nil {
		return err
	}
	if c.Exit != 0 {
		return fmt.Errorf("certs fleet: exit %d\nstderr: %s", c.Exit, tail(c.Stderr, 2000))
	}
	manifest, keyFile := filepath.Join(fleetDir, "manifest.csv"), filepath.Join(fleetDir, "group.key")
	simCfg, err := dpssim.LoadConfig(filepath.Join(fleetDir, "sim.json"))
	if err != nil {
		return err
	}
	zero := 0
	simCfg.RetryAfterSeconds = &zero
	simCfg.Quotas.RegistrationsPerMinute = rate
	b64, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	groupKey, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	if err != nil {
		return fmt.Errorf("group key %s: %w", keyFile, err)
	}
	sim, err := startSim(dir, "sim", *simCfg)
	if err != nil {
		return err
	}
	defer sim.Close()

	ledgerPath := filepath.Join(dir, "rate.ledger")
	args := []string{"provision", "--manifest", manifest, "--ledger", ledgerPath, "--id-scope", scope,
		"--endpoint", sim.URL, "--ca-file", sim.CAFile, "--group-key-file", keyFile, "--rate", fmt.Sprint(rate)}
	dry, err := runChild(ctx, cfg.bin, append(args, "--dry-run"), nil)
	if err != nil {
		return err
	}
	est, err := parseEstimate(dry.Stdout)
	if dry.Exit != 0 || err != nil {
		return fmt.Errorf("dry run: exit %d: %v\nstdout: %s\nstderr: %s", dry.Exit, err, tail(dry.Stdout, 2000), tail(dry.Stderr, 2000))
	}
	r.logf("dry run: estimated time %s, limited by %s", est.d, est.limitedBy)
	for _, l := range est.others {
		r.logf("  %s", l)
	}

	// As on a DPS instance already in use, the run meets the steady-state
	// quota, not a bucket that filled up while the simulator was idle.
	if err := drainQuota(sim, groupKey, 3*rate); err != nil {
		return err
	}
	before := sim.Stats()
	run, err := runChild(ctx, cfg.bin, append(args, "--quiet", "--json"), nil)
	if err != nil {
		return err
	}
	after := sim.Stats()
	sum, err := parseSummary(run)
	if err != nil {
		return err
	}
	if got := sum.Outcomes["assigned"]; got != n || run.Exit != 0 {
		return fmt.Errorf("exit %d, %d of %d devices assigned\nstderr: %s", run.Exit, got, n, tail(run.Stderr, 2000))
	}
	bound := sum.BoundBy
	if bound == "" {
		bound = "none named"
	}
	r.logf("run: %d devices assigned in %s (whole command; the summary says %.1f s, %.1f devices/s); limiter named by the summary: %s",
		n, run.Wall.Round(time.Millisecond), sum.ElapsedSec, sum.PerSecond, bound)
	r.logf("simulator: %d register requests, %d polls, %d lookups, %d answered 429",
		after.RegisterRequests-before.RegisterRequests, after.Polls-before.Polls, after.Lookups-before.Lookups, after.Throttled-before.Throttled)

	name := fmt.Sprintf("rate %d/min alone", rate)
	throttled, registers := after.Throttled-before.Throttled, after.RegisterRequests-before.RegisterRequests
	r.within(name+": devices/s", sum.PerSecond, "devices/s", want, 10,
		fmt.Sprintf("%d devices, as provision's summary says; limiter named: %s", n, bound))
	r.info(name+": whole command", run.Wall.Seconds(), "s", fmt.Sprintf("%d devices, %.1f devices/s", n, float64(n)/run.Wall.Seconds()))
	r.info(name+": dry-run estimate", est.d.Seconds(), "s", "limited by "+est.limitedBy)
	r.within(name+": estimate / measured", 100*est.d.Seconds()/run.Wall.Seconds(), "%", 100, 10,
		fmt.Sprintf("%s estimated by the dry run, %s measured (whole command)", est.d, run.Wall.Round(100*time.Millisecond)))
	r.info(name+": 429 answers", float64(throttled), "429s", fmt.Sprintf("of %d register requests", registers))
	r.note("Raised-rate run: the fleet is made by dps-batch certs fleet --attestation symmetric-group; the simulator serves the sim.json it wrote with registrationsPerMinute %d and retryAfterSeconds 0, its registration bucket emptied first as in the quota runs. Both commands give --rate %d and no other pacing flag (--workers and --poll-rate at their defaults). The dry run said: %s, limited by %s%s.",
		rate, rate, est.d, est.limitedBy, othersText(est.others))
	return nil
}

// othersText lists the dry run's other limiters for a note.
func othersText(others []string) string {
	if len(others) == 0 {
		return ""
	}
	return " " + strings.Join(others, " ")
}

// estimate is what a provision dry run said of the run's duration.
type estimate struct {
	d         time.Duration
	limitedBy string
	others    []string // the other limiters, as printed
}

var estimateLine = regexp.MustCompile(`(?m)^\s*estimated time: (\S+), limited by (.+)$`)

// parseEstimate reads the estimate from provision --dry-run's output.
func parseEstimate(out string) (estimate, error) {
	m := estimateLine.FindStringSubmatch(out)
	if m == nil {
		return estimate{}, fmt.Errorf("no \"estimated time\" line in the dry run's output")
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		return estimate{}, fmt.Errorf("estimated time %q: %v", m[1], err)
	}
	e := estimate{d: d, limitedBy: strings.TrimSpace(m[2])}
	for _, line := range strings.Split(out, "\n") {
		if s := strings.TrimSpace(line); strings.HasPrefix(s, "(") && strings.Contains(s, " alone: ") {
			e.others = append(e.others, s)
		}
	}
	return e, nil
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/dps-batch/dps-batch/batch"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/report"
)

const demoPurpose = `Run the whole flow on this machine, with no cloud account: generate a test fleet
(X.509 devices under an intermediate CA plus symmetric-key devices of an enrollment
group), start the DPS simulator on a free loopback port, provision the fleet over
real HTTPS into a SQLite ledger, print the summary and write the CSV report.
Everything is left in --dir for you to look at; run it again with the same --dir
and it resumes (nothing left to do: every device is skipped).`

func runDemo(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "demo", demoPurpose,
		"dps-batch demo",
		"dps-batch demo --count 5000 --workers 400 --rate 30000 --dir /tmp/demo")
	dir := fs.String("dir", "", "working `folder` for the fleet, ledger and report (default: a new temporary folder)")
	count := fs.Int("count", 1000, "number of X.509 devices (`N`)")
	sas := fs.Int("sas", 100, "number of extra symmetric-key group devices (`N`)")
	workers := fs.Int("workers", 200, "devices in flight at once (`N`)")
	rate := fs.Float64("rate", 12000, "register requests per minute (`N/min`); the simulator's quota is set to 1.5x this")
	delay := fs.Duration("assignment-delay", 500*time.Millisecond, "how long the simulator keeps each registration assigning (`duration`)")
	verbose := fs.Bool("v", false, "log every device's steps on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *count < 1 || *sas < 0 || *workers < 1 || *rate <= 0 {
		return usagef("dps-batch demo --count 1000", "--count and --workers must be at least 1, --sas at least 0, --rate positive")
	}
	resumable := *dir != ""
	if *dir == "" {
		d, err := os.MkdirTemp("", "dps-batch-demo-")
		if err != nil {
			return err
		}
		*dir = d
	}
	const scope = dpssim.DefaultIDScope
	manifest := filepath.Join(*dir, "manifest.csv")
	ledgerPath := filepath.Join(*dir, "demo.ledger")
	groupKeyFile := filepath.Join(*dir, "group.key")

	// A second demo in the same folder resumes instead of starting over.
	if _, err := os.Stat(manifest); err != nil {
		fmt.Fprintf(e.stderr, "Generating %d test devices in %s ...\n", *count, *dir)
		fleet, err := certs.GenerateFleet(ctx, certs.FleetOptions{Dir: *dir, Count: *count})
		if err != nil {
			return err
		}
		if err := writeDemoSimConfig(*dir, scope, fleet, *sas, groupKeyFile); err != nil {
			return err
		}
	}
	cfg, err := dpssim.LoadConfig(filepath.Join(*dir, "sim.json"))
	if err != nil {
		return err
	}
	retryAfter := 1
	cfg.RetryAfterSeconds = &retryAfter
	cfg.AssignmentDelay = dpssim.Duration(*delay)
	cfg.Quotas.RegistrationsPerMinute = int(*rate * 1.5)
	cfg.Quotas.PollsPer10sPerDevice = 5
	sim, err := dpssim.New(*cfg)
	if err != nil {
		return err
	}
	// The ledger belongs to one endpoint, so a demo resumed in the same
	// folder listens on the same port as the first one.
	addrFile := filepath.Join(*dir, "sim-listen.txt")
	addr := "127.0.0.1:0"
	if b, err := os.ReadFile(addrFile); err == nil {
		addr = strings.TrimSpace(string(b))
	}
	running, err := dpssim.StartTLS(sim, addr)
	if err != nil {
		return fmt.Errorf("start the simulator on %s (the port this demo folder used before): %w; use a new --dir", addr, err)
	}
	defer running.Close()
	if err := os.WriteFile(addrFile, []byte(running.Addr+"\n"), 0o644); err != nil {
		return err
	}
	caFile := filepath.Join(*dir, "sim-ca.pem")
	if err := os.WriteFile(caFile, running.CAPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "Simulator (ID scope %s) listening on %s\n", scope, running.URL)

	p := &provisionFlags{
		manifest: manifest, ledgerPath: ledgerPath, idScope: scope,
		endpoint: running.URL, caFile: caFile, apiVersion: "2021-10-01",
		groupKeyFile: groupKeyFile,
		workers:      *workers, rate: *rate, pollRate: *rate * 3, maxAttempts: 6,
		deviceTimeout: 2 * time.Minute, requestTimeout: 30 * time.Second, verbose: *verbose,
		settle: batch.DefaultSettle, failFast: batch.DefaultFuseDevices,
		resumeHint: "dps-batch demo --dir " + shellQuote(*dir),
	}
	provErr := provision(ctx, e, p)

	stats := sim.Stats()
	twice := 0
	for _, r := range sim.Registrations() {
		if r.Registers > 1 {
			twice++
		}
	}
	fmt.Fprintf(e.stdout, "Simulator saw %d register PUTs, %d polls, %d lookups, %d throttled; devices registered more than once: %d\n",
		stats.Registers, stats.Polls, stats.Lookups, stats.Throttled, twice)
	if _, err := os.Stat(ledgerPath); err != nil {
		return provErr // validation failed: no ledger, nothing to report
	}
	reportFile := reportPath(ledgerPath)
	if err := writeDemoReport(ctx, ledgerPath, reportFile); err != nil {
		return errors.Join(provErr, err)
	}
	fmt.Fprintf(e.stdout, "CSV report written to %s\nEverything is in %s: manifest.csv, sim.json, sim-ca.pem, demo.ledger, %s\n",
		reportFile, *dir, filepath.Base(reportFile))
	if resumable {
		fmt.Fprintf(e.stdout, "Running the same command again resumes from the ledger.\n")
	} else {
		fmt.Fprintf(e.stdout, "Resume or re-run in this folder with: dps-batch demo --dir %s\n", shellQuote(*dir))
	}
	return provErr
}

// writeDemoSimConfig writes sim.json for the fleet, plus a symmetric-key
// enrollment group with sas devices appended to the manifest (rows with no
// credentials: their keys derive from the group key in groupKeyFile).
func writeDemoSimConfig(dir, scope string, fleet *certs.Fleet, sas int, groupKeyFile string) error {
	cfg := dpssim.FleetConfig(scope, certs.CertPEM(fleet.GroupCA.Cert))
	if sas > 0 {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		b64 := base64.StdEncoding.EncodeToString(key)
		if err := os.WriteFile(groupKeyFile, []byte(b64+"\n"), 0o600); err != nil {
			return err
		}
		cfg.Groups = append(cfg.Groups, dpssim.EnrollmentGroup{
			EnrollmentGroupID: "demo-sensors",
			Attestation:       dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: b64}},
		})
		f, err := os.OpenFile(fleet.ManifestPath, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		for i := 1; i <= sas; i++ {
			fmt.Fprintf(f, "sensor-%05d,,,\n", i)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return dpssim.WriteConfig(filepath.Join(dir, "sim.json"), cfg, true)
}

func writeDemoReport(ctx context.Context, ledgerPath, out string) error {
	led, err := ledger.Open(ctx, ledgerPath, ledger.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer led.Close()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := report.Write(ctx, led, f, report.CSV, nil); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

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
	"github.com/dps-batch/dps-batch/dps"
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
		"dps-batch demo --count 5000 --workers 400 --rate 30000 --dir /tmp/demo",
		"dps-batch demo --individual          # enroll (service API) then provision: the individual-enrollment pipeline",
		"dps-batch demo --issue-certs         # DPS issues each device a certificate at registration (preview)")
	dir := fs.String("dir", "", "working `folder` for the fleet, ledger and report (default: a new temporary folder)")
	count := fs.Int("count", 1000, "number of X.509 devices (`N`)")
	sas := fs.Int("sas", 100, "number of extra symmetric-key group devices (`N`)")
	workers := fs.Int("workers", 200, "devices in flight at once (`N`)")
	rate := fs.Float64("rate", 12000, "register requests per minute (`N/min`); the simulator's quota is set to 1.5x this")
	delay := fs.Duration("assignment-delay", 500*time.Millisecond, "how long the simulator keeps each registration assigning (`duration`)")
	verbose := fs.Bool("v", false, "log every device's steps on stderr")
	individual := fs.Bool("individual", false, "individual enrollments: the simulator starts with none; dps-batch enroll creates one per device through the DPS service API, then provision registers them (X.509 under a root CA plus --sas devices with their own keys)")
	issue := fs.Bool("issue-certs", false, "certificates issued at registration (DPS preview): every device sends a P-384 CSR and gets a certificate from the simulator's credential policy, written to --dir/issued")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *issue && *individual {
		return usagef("dps-batch demo --issue-certs, or dps-batch demo --individual", "--issue-certs and --individual are separate demos")
	}
	if *count < 1 || *sas < 0 || *workers < 1 || *rate <= 0 {
		return usagef("dps-batch demo --count 1000", "--count and --workers must be at least 1, --sas at least 0, --rate positive")
	}
	if *individual {
		return demoIndividual(ctx, e, *dir, *count, *sas, *workers, *rate, *delay, *verbose)
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
		fleet, err := certs.GenerateFleet(ctx, certs.FleetOptions{Dir: *dir, Count: *count, Issue: *issue})
		if err != nil {
			return err
		}
		if err := writeDemoSimConfig(*dir, scope, fleet, *sas, groupKeyFile); err != nil {
			return err
		}
	} else if b, err := os.ReadFile(manifest); err == nil && strings.Contains(strings.SplitN(string(b), "\n", 2)[0], "csr_key_path") {
		*issue = true // the folder holds an --issue-certs demo: resume it as one
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
	if *issue {
		// Rows of the group's sensors have no key column: their keys are
		// made in csr-keys/ like the fleet's.
		p.issueCerts, p.apiVersion, p.csrKeyDir = true, dps.CertificateIssuanceAPIVersion, filepath.Join(*dir, certs.FleetCSRKeyDir)
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
	htmlFile, err := writeDemoHTML(ctx, ledgerPath, reportFile)
	if err != nil {
		return errors.Join(provErr, err)
	}
	fmt.Fprintf(e.stdout, "CSV report written to %s\nEverything is in %s: manifest.csv, sim.json, sim-ca.pem, demo.ledger, %s, %s\n",
		reportFile, *dir, filepath.Base(reportFile), filepath.Base(htmlFile))
	fmt.Fprintf(e.stdout, "HTML run report written to %s\n", htmlFile)
	if issued := filepath.Join(*dir, certs.FleetIssuedDir); *issue {
		example := filepath.Join(issued, "ID.pem")
		if ents, err := os.ReadDir(issued); err == nil && len(ents) > 0 {
			example = filepath.Join(issued, ents[0].Name())
		}
		fmt.Fprintf(e.stdout, "Issued certificates are in %s; check one with:\n  openssl verify -CAfile %s -untrusted %s %s\n",
			issued, filepath.Join(*dir, certs.FleetIssuingDir, "root.pem"), filepath.Join(*dir, certs.FleetIssuingDir, "intermediate.pem"), example)
	}
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
		header, err := os.ReadFile(fleet.ManifestPath)
		if err != nil {
			return err
		}
		// As many empty fields as the header has columns after the id.
		empty := strings.Repeat(",", strings.Count(strings.SplitN(string(header), "\n", 2)[0], ","))
		f, err := os.OpenFile(fleet.ManifestPath, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		for i := 1; i <= sas; i++ {
			fmt.Fprintf(f, "sensor-%05d%s\n", i, empty)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	issuance, err := newFleetIssuance(fleet, defaultFleetCredentialPolicy)
	if err != nil {
		return err
	}
	if issuance != nil {
		cfg = issuance.apply(cfg)
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

// writeDemoHTML writes the HTML run report of the demo's ledger next to
// its CSV report (demo-report.html beside demo-report.csv) and returns its
// path.
func writeDemoHTML(ctx context.Context, ledgerPath, csvReport string) (string, error) {
	out := strings.TrimSuffix(csvReport, filepath.Ext(csvReport)) + ".html"
	led, err := ledger.Open(ctx, ledgerPath, ledger.Options{ReadOnly: true})
	if err != nil {
		return "", err
	}
	defer led.Close()
	if _, err := writeHTMLFile(ctx, led, out); err != nil {
		return "", err
	}
	return out, nil
}

// demoIndividual runs the individual-enrollment pipeline on this machine: a
// fleet of X.509 devices (each enrolled with its own certificate) and
// symmetric-key devices (each with its own key), a simulator that knows none
// of them, dps-batch enroll through the simulator's service API, then
// provision, then the report. The simulator keeps enrollments in memory, so
// this demo always starts in a new folder.
func demoIndividual(ctx context.Context, e *env, dir string, count, sas, workers int, rate float64, delay time.Duration, verbose bool) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "dps-batch-demo-individual-")
		if err != nil {
			return err
		}
		dir = d
	} else if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return usagef("dps-batch demo --individual --dir NEW-FOLDER (or leave out --dir)",
			"demo --individual starts from nothing and %s is not empty: the simulator keeps the enrollments it creates in memory, so a second run cannot resume", dir)
	}
	const scope = dpssim.DefaultIDScope
	manifest := filepath.Join(dir, "manifest.csv")
	ledgerPath := filepath.Join(dir, "demo.ledger")

	fmt.Fprintf(e.stderr, "Generating %d X.509 devices and %d symmetric-key devices, each for an individual enrollment, in %s ...\n", count, sas, dir)
	fleet, err := certs.GenerateFleet(ctx, certs.FleetOptions{Dir: dir, Count: count, Chain: certs.ChainRoot})
	if err != nil {
		return err
	}
	if err := addIndividualKeyRows(fleet.ManifestPath, sas); err != nil {
		return err
	}
	// No enrollments: enroll creates them through the service API.
	retryAfter := 1
	sim, err := dpssim.New(dpssim.Config{
		IDScope:           scope,
		RetryAfterSeconds: &retryAfter,
		AssignmentDelay:   dpssim.Duration(delay),
		Quotas:            dpssim.Quotas{RegistrationsPerMinute: int(rate * 1.5), PollsPer10sPerDevice: 5},
	})
	if err != nil {
		return err
	}
	running, err := dpssim.StartTLS(sim, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer running.Close()
	caFile := filepath.Join(dir, "sim-ca.pem")
	if err := os.WriteFile(caFile, running.CAPEM, 0o644); err != nil {
		return err
	}
	conn, err := sim.ServiceConnectionString(running.Addr, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "Simulator (ID scope %s, device and service API) listening on %s; it knows no enrollment yet\n", scope, running.URL)

	fmt.Fprintf(e.stdout, "\n== 1. dps-batch enroll: one individual enrollment per device, in bulk calls of 10\n")
	if _, err := enrollLocal(ctx, e, manifest, ledgerPath, caFile, conn, -1, "dps-batch demo --individual"); err != nil {
		return err
	}
	created, twice := 0, 0
	for _, en := range sim.Enrollments() {
		created += en.Creates
		if en.Creates > 1 {
			twice++
		}
	}
	fmt.Fprintf(e.stdout, "Simulator: %d enrollments created; created more than once: %d\n", created, twice)

	fmt.Fprintf(e.stdout, "\n== 2. dps-batch provision: every device registers with its new enrollment\n")
	p := &provisionFlags{
		manifest: manifest, ledgerPath: ledgerPath, idScope: scope,
		endpoint: running.URL, caFile: caFile, apiVersion: "2021-10-01",
		workers: workers, rate: rate, pollRate: rate * 3, maxAttempts: 6,
		deviceTimeout: 2 * time.Minute, requestTimeout: 30 * time.Second, verbose: verbose,
		settle: batch.DefaultSettle, failFast: batch.DefaultFuseDevices,
		resumeHint: "dps-batch provision --manifest " + shellQuote(manifest) + " --ledger " + shellQuote(ledgerPath) + " (with the simulator running)",
	}
	provErr := provision(ctx, e, p)
	stats := sim.Stats()
	regTwice := 0
	for _, r := range sim.Registrations() {
		if r.Registers > 1 {
			regTwice++
		}
	}
	fmt.Fprintf(e.stdout, "Simulator saw %d registrations; devices registered more than once: %d\n", stats.Registers, regTwice)
	reportFile := reportPath(ledgerPath)
	if err := writeDemoReport(ctx, ledgerPath, reportFile); err != nil {
		return errors.Join(provErr, err)
	}
	htmlFile, err := writeDemoHTML(ctx, ledgerPath, reportFile)
	if err != nil {
		return errors.Join(provErr, err)
	}
	fmt.Fprintf(e.stdout, "\nCSV report (enrollment and registration side by side) written to %s\nEverything is in %s\n", reportFile, dir)
	fmt.Fprintf(e.stdout, "HTML run report written to %s\n", htmlFile)
	return provErr
}

// addIndividualKeyRows appends n symmetric-key devices, each with its own
// random key, to the fleet's manifest, which then holds keys: mode 0600.
func addIndividualKeyRows(manifest string, n int) error {
	b, err := os.ReadFile(manifest)
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	var out strings.Builder
	out.WriteString(lines[0] + ",symmetric_key\n")
	for _, l := range lines[1:] {
		out.WriteString(l + ",\n")
	}
	key := make([]byte, 32)
	for i := 1; i <= n; i++ {
		_, _ = rand.Read(key)
		fmt.Fprintf(&out, "sensor-%05d,,,,%s\n", i, base64.StdEncoding.EncodeToString(key))
	}
	return certs.WriteSecretFile(manifest, []byte(out.String()), true)
}

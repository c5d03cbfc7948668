package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/term"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/manifests"
)

const deregisterPurpose = `Delete the DPS registration states of a manifest's devices, for re-manufacture
or retirement, and with --enrollments their individual enrollments too. A device
whose registration state is deleted registers as new next time (and its IoT Hub
device identity is not touched: delete it in the hub if the device is retired).

Only the registration ids are read from the manifest: certificates and keys need
not exist any more. Requests are paced like every service request (one DELETE per
registration state, one per enrollment), and each outcome is recorded in the
ledger: the same command after a stop continues, and devices done are skipped.
A registration state or enrollment that does not exist counts as deleted.

This deletes data at DPS: without --yes the command asks for confirmation on the
terminal, and refuses to run without one. --dry-run prints what it would delete.
The policy needs RegistrationStatusWrite (and EnrollmentWrite with
--enrollments); with Entra ID, Device Provisioning Service Data Contributor.
Service credentials as for enroll.`

func runDeregister(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "deregister", deregisterPurpose,
		"dps-batch deregister --manifest retired.csv --dry-run",
		"dps-batch deregister --manifest retired.csv",
		"dps-batch deregister --manifest retired.csv --enrollments --yes",
		"# against a local simulator (dps-batch sim writes its connection string to sim-service.conn):\nDPS_SERVICE_CONNECTION_STRING=\"$(cat sim-service.conn)\" \\\n    dps-batch deregister --manifest fleet/manifest.csv --ca-file sim-ca.pem --yes")
	var (
		svc                    serviceFlags
		manifest, ledgerPath   string
		enrollments, yes       bool
		dryRun, verbose, quiet bool
		jsonOut, retryFailed   bool
		workers, maxAttempts   int
		rate                   float64
		strict                 bool
		columns                manifests.ColumnMap
	)
	fs.StringVar(&manifest, "manifest", "", "manifest CSV `file` naming the devices (registration_id is the only column read); required")
	fs.StringVar(&ledgerPath, "ledger", "", "ledger `file` (default: the manifest path with .ledger instead of .csv)")
	fs.BoolVar(&enrollments, "enrollments", false, "also delete each device's individual enrollment")
	fs.BoolVar(&yes, "yes", false, "do not ask for confirmation (required when there is no terminal)")
	fs.BoolVar(&dryRun, "dry-run", false, "print what would be deleted; send nothing, write nothing")
	fs.BoolVar(&retryFailed, "retry-failed", false, "try again devices whose delete DPS refused in an earlier run")
	fs.IntVar(&workers, "workers", batch.DefaultEnrollWorkers, "groups of 10 devices in flight at once (`N`)")
	fs.Float64Var(&rate, "rate", batch.DefaultServiceRate, "service requests per minute (`N/min`); -1 = unlimited")
	fs.IntVar(&maxAttempts, "max-attempts", batch.DefaultEnrollAttempts, "failed requests per device per run before leaving it for the next run (`N`)")
	fs.BoolVar(&verbose, "v", false, "verbose: log every device's steps on stderr")
	fs.BoolVar(&quiet, "quiet", false, "no progress lines (the summary is still printed)")
	fs.BoolVar(&jsonOut, "json", false, "print the summary as JSON on stdout")
	addManifestFlags(fs, &strict, &columns)
	svc.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	const example = "dps-batch deregister --manifest retired.csv --dry-run"
	if err := requireFlag(fs, "manifest", manifest, example); err != nil {
		return err
	}
	if workers < 1 || maxAttempts < 1 || rate == 0 || rate < -1 {
		return usagef("--workers 8 --max-attempts 6 --rate 900", "--workers and --max-attempts must be at least 1, --rate positive (or -1)")
	}
	if err := svc.check("deregister"); err != nil {
		return err
	}
	if ledgerPath == "" {
		ledgerPath = strings.TrimSuffix(manifest, filepath.Ext(manifest)) + ".ledger"
	}
	client, err := svc.client(e, "deregister")
	if err != nil {
		return err
	}
	defer client.Close()
	r := &batch.EnrollRunner{
		Client: client,
		Logger: newLogger(e.stderr, verbose),
		Stats:  &batch.EnrollStats{},
		Options: batch.EnrollOptions{
			ManifestPath:      manifest,
			Manifest:          manifests.Options{Strict: strict, Columns: columns, IgnoreCSRColumns: true},
			Mode:              batch.EnrollModeDeregister,
			DeleteEnrollments: enrollments,
			RetryFailed:       retryFailed,
			Workers:           workers,
			Rate:              rate,
			MaxAttempts:       maxAttempts,
		},
	}
	if err := validateEnrollManifest(ctx, e, manifest, r, false); err != nil {
		return err
	}
	// The plan, from the ledger as it is, for the dry run and the prompt.
	ro, err := openServiceLedgerReadOnly(ctx, ledgerPath, client.Host())
	if err != nil {
		return err
	}
	r.Ledger = ro
	plan, err := r.Plan(ctx)
	if ro != nil {
		ro.Close()
	}
	r.Ledger = nil
	if err != nil {
		return err
	}
	what := "registration states"
	if enrollments {
		what = "registration states and individual enrollments"
	}
	n := plan.ByAction[batch.EnActDeregister]
	if dryRun {
		fmt.Fprintf(e.stdout, "Dry run: manifest %s is valid (%d devices). Nothing was sent.\n", manifest, plan.Devices)
		fmt.Fprintf(e.stdout, "  would delete the %s of %d device(s) at %s\n", what, n, client.Host())
		printEnrollPlan(e.stdout, plan, r.Options)
		return nil
	}
	if n > 0 && !yes {
		if err := confirm(e, fmt.Sprintf("Delete the %s of %d device(s) at %s? This cannot be undone.", what, n, client.Host()), "deregister"); err != nil {
			return err
		}
	}
	led, err := openServiceLedger(ctx, ledgerPath, client.Host())
	if err != nil {
		return err
	}
	defer led.Close()
	r.Ledger = led
	stopProgress := enrollProgress(e.stderr, quiet, r.Stats, "deregister")
	stopNotice := noticeDrain(e, e.stderr)
	res, err := r.Run(ctx, e.drain)
	stopNotice()
	stopProgress()
	resume := resumeArgs("deregister", args)
	if !yes {
		resume += " --yes"
	}
	return finishEnrollRun(ctx, e, "deregister", manifest, ledgerPath, resume, jsonOut, led, res, err, manifest)
}

// errNotConfirmed means the user did not confirm a destructive command.
var errNotConfirmed = errors.New("not confirmed; nothing was sent")

// confirm asks question on the terminal and wants "yes". Without a terminal
// on stdin it refuses: a script must say --yes.
func confirm(e *env, question, cmd string) error {
	if !stdinIsTerminal(e.stdin) {
		return usagef(fmt.Sprintf("review with: dps-batch %s ... --dry-run, then add --yes", cmd),
			"%s deletes data at DPS and there is no terminal to confirm it on: add --yes", cmd)
	}
	return askYes(e.stdin, e.stderr, question)
}

// askYes prints question and reads one line; only "yes" (or "y") agrees.
func askYes(in io.Reader, out io.Writer, question string) error {
	fmt.Fprintf(out, "%s Type yes to continue: ", question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && line == "" {
		return &exitError{code: exitUsage, err: errNotConfirmed}
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "yes", "y":
		return nil
	}
	return &exitError{code: exitUsage, err: errNotConfirmed}
}

// stdinIsTerminal reports whether r is an interactive terminal.
func stdinIsTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

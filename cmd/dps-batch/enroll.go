package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
	"github.com/dps-batch/dps-batch/metrics"
)

const enrollPurpose = `Create one individual enrollment per manifest row through the DPS service API, so
the devices can then be provisioned: X.509 rows enrol their device certificate
(cert_path), symmetric-key rows their symmetric_key. --generate-keys gives rows
without credentials a random key and writes them, with every other row, to a new
manifest (mode 0600) that provision then reads.

Enrollments are sent in bulk requests of up to 10, paced by one limiter below DPS's
1,000 service operations per minute (a bulk request is one operation), slowed down
on 429, retried with back-off. Each device's enrollment state is kept in the ledger
(the provision ledger by default, so status and reports show both): the same
command after a crash or an interrupt continues, and nothing is created twice (a
create is recorded before it is sent; one whose answer was lost is read back before
anything is sent again).

An enrollment that exists already is compared: with the same attestation it counts
as done ("exists-same"); with another it is a failure ("exists-different"), left as
it is, unless --mode update, which replaces enrollments (an enrollment dps-batch
read is replaced only if unchanged since, by etag). --mode delete deletes them.

Credentials for the service (never on the command line): a shared access policy's
connection string in the environment variable DPS_SERVICE_CONNECTION_STRING (or
--service-connection-string-env / --service-connection-string-file), or --auth
entra --service-host NAME.azure-devices-provisioning.net (az login, managed
identity, service principal). The policy needs EnrollmentRead and EnrollmentWrite;
with Entra ID, the role Device Provisioning Service Data Contributor.

"dps-batch enroll group --help" creates an enrollment group instead.`

// enrollFlags are the flags of enroll; demo fills them in directly.
type enrollFlags struct {
	svc                    serviceFlags
	metrics                metricsFlags // --metrics-listen (enroll only)
	manifest, ledgerPath   string
	mode                   string
	provisioningStatus     string
	iotHubs                listFlag
	allocationPolicy       string
	initialTwinFile        string
	iotEdge                bool
	credentialPolicy       string // --credential-policy
	deviceIDFrom           string
	generateKeys           bool
	outManifest            string
	workers, maxAttempts   int
	batchSize              int
	rate                   float64
	retryFailed            bool
	dryRun, verbose, quiet bool
	jsonOut                bool
	strict                 bool
	columns                manifests.ColumnMap

	args       []string // as given, for the resume hint
	resumeHint string   // replaces it when set (demo)
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func (f *enrollFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.manifest, "manifest", "", "manifest CSV `file` (registration_id, cert_path/key_path or symmetric_key); required")
	fs.StringVar(&f.ledgerPath, "ledger", "", "ledger `file` (SQLite); created if missing (default: the manifest path with .ledger instead of .csv, the ledger provision uses)")
	fs.StringVar(&f.mode, "mode", "create", "`create` (existing enrollments are compared, never changed), update (create or replace) or delete")
	fs.StringVar(&f.provisioningStatus, "provisioning-status", "", "provisioningStatus of every enrollment: `enabled` or disabled (default: DPS's, enabled)")
	fs.Var(&f.iotHubs, "iot-hub", "IoT `hub` host name the devices may be assigned to (a hub linked to the DPS instance); repeat it for more hubs (default: every linked hub)")
	fs.StringVar(&f.allocationPolicy, "allocation-policy", "", "allocationPolicy of every enrollment: `hashed`, geoLatency or static (default: the DPS instance's)")
	fs.StringVar(&f.initialTwinFile, "initial-twin", "", "JSON `file` with the initial device twin of every enrollment: {\"tags\": {...}, \"properties\": {\"desired\": {...}}}")
	fs.BoolVar(&f.iotEdge, "iot-edge", false, "mark every device as an IoT Edge device (capabilities.iotEdge)")
	registerCredentialPolicy(fs, &f.credentialPolicy, "every enrollment")
	fs.StringVar(&f.deviceIDFrom, "device-id-from", "", "manifest `column` holding each device's IoT Hub device id (default: DPS uses the registration id)")
	fs.BoolVar(&f.generateKeys, "generate-keys", false, "give rows without credentials a random 32-byte symmetric key and write the manifest with them to --out-manifest (mode 0600); run again, the same keys are kept")
	fs.StringVar(&f.outManifest, "out-manifest", "", "with --generate-keys: the new manifest `file` (mode 0600); provision reads it")
	fs.IntVar(&f.workers, "workers", batch.DefaultEnrollWorkers, "bulk requests in flight at once (`N`)")
	fs.IntVar(&f.batchSize, "batch", batch.DefaultEnrollBatch, "enrollments per bulk request (`N`, 1 to 10)")
	fs.Float64Var(&f.rate, "rate", batch.DefaultServiceRate, "service requests per minute for the whole run (`N/min`): bulk requests, reads and deletes; DPS allows 1,000 service operations per minute per instance; -1 = unlimited")
	fs.IntVar(&f.maxAttempts, "max-attempts", batch.DefaultEnrollAttempts, "failed requests per enrollment per run before leaving it for the next run (`N`)")
	fs.BoolVar(&f.retryFailed, "retry-failed", false, "send again enrollments that failed in an earlier run, and read again those that existed with another attestation")
	fs.BoolVar(&f.dryRun, "dry-run", false, "validate the manifest and print the plan; send nothing, write nothing")
	fs.BoolVar(&f.verbose, "v", false, "verbose: log every enrollment's steps on stderr")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress lines (the summary is still printed)")
	fs.BoolVar(&f.jsonOut, "json", false, "print the summary as JSON on stdout")
	addManifestFlags(fs, &f.strict, &f.columns)
	f.svc.register(fs)
}

const enrollExample = "dps-batch enroll --manifest devices.csv"

func (f *enrollFlags) check() error {
	if err := requireFlag(nil, "manifest", f.manifest, enrollExample); err != nil {
		return err
	}
	switch f.mode {
	case "create", "update", "delete":
	default:
		return usagef("--mode create, --mode update or --mode delete", "--mode must be create, update or delete, not %q", f.mode)
	}
	switch f.provisioningStatus {
	case "", "enabled", "disabled":
	default:
		return usagef("--provisioning-status enabled", "--provisioning-status must be enabled or disabled, not %q", f.provisioningStatus)
	}
	switch f.allocationPolicy {
	case "", "hashed", "geoLatency", "static":
	case "custom":
		return usagef("--allocation-policy hashed, geoLatency or static",
			"--allocation-policy custom needs a webhook, which dps-batch does not set (its URL usually carries a key); set custom allocation on the enrollment group or in the portal")
	default:
		return usagef("--allocation-policy hashed", "--allocation-policy must be hashed, geoLatency or static, not %q", f.allocationPolicy)
	}
	if err := f.checkCredentialPolicy(); err != nil {
		return err
	}
	if f.generateKeys != (f.outManifest != "") {
		return usagef("dps-batch enroll --manifest devices.csv --generate-keys --out-manifest devices-keys.csv",
			"--generate-keys and --out-manifest go together: the generated keys must be written somewhere before they are enrolled")
	}
	if f.generateKeys && f.mode != "create" && f.mode != "update" {
		return usagef("--mode create --generate-keys --out-manifest FILE", "--generate-keys creates keys for new enrollments; it does not go with --mode %s", f.mode)
	}
	if f.generateKeys && sameFile(f.manifest, f.outManifest) {
		return usagef("--out-manifest devices-keys.csv", "--out-manifest must name another file than --manifest: the input is kept as it is")
	}
	if f.workers < 1 || f.maxAttempts < 1 {
		return usagef("--workers 8 --max-attempts 6", "--workers and --max-attempts must be at least 1")
	}
	if f.batchSize < 1 || f.batchSize > dpsservice.MaxBulkItems {
		return usagef("--batch 10", "--batch must be 1 to %d (DPS's limit per bulk request), got %d", dpsservice.MaxBulkItems, f.batchSize)
	}
	if f.rate == 0 || f.rate < -1 {
		return usagef("--rate 900 (per minute), or --rate -1 for no limit", "--rate must be a positive number of requests per minute, got %v", f.rate)
	}
	if f.deviceIDFrom != "" && f.strict {
		return usagef("drop --strict", "--device-id-from reads a column of the manifest's own, which --strict refuses")
	}
	if f.ledgerPath == "" {
		f.ledgerPath = strings.TrimSuffix(f.manifest, filepath.Ext(f.manifest)) + ".ledger"
	}
	return f.svc.check("enroll")
}

func sameFile(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

// registerCredentialPolicy adds --credential-policy to an enroll command.
func registerCredentialPolicy(fs *flag.FlagSet, p *string, what string) {
	fs.StringVar(p, "credential-policy", "", "credential policy `name` (Azure Device Registry) that issues certificates to "+what+
		"'s devices from the CSR they send at registration (preview; selects service --api-version "+dpsservice.CertificateIssuanceAPIVersion+"); provision them with --issue-certs")
}

// checkCredentialPolicy selects the service api-version that carries
// credentialPolicyName, and refuses another one given explicitly.
func (f *enrollFlags) checkCredentialPolicy() error {
	if f.credentialPolicy == "" {
		return nil
	}
	switch f.svc.apiVersion {
	case dpsservice.DefaultAPIVersion, dpsservice.CertificateIssuanceAPIVersion:
		f.svc.apiVersion = dpsservice.CertificateIssuanceAPIVersion
		return nil
	}
	return usagef("--credential-policy NAME (it selects --api-version "+dpsservice.CertificateIssuanceAPIVersion+")",
		"--credential-policy needs service --api-version %s, the one whose enrollments carry credentialPolicyName; got --api-version %s",
		dpsservice.CertificateIssuanceAPIVersion, f.svc.apiVersion)
}

// template is the enrollment fields the flags set on every enrollment.
func (f *enrollFlags) template() (dpsservice.IndividualEnrollment, error) {
	t := dpsservice.IndividualEnrollment{
		ProvisioningStatus:   dpsservice.ProvisioningStatus(f.provisioningStatus),
		AllocationPolicy:     dpsservice.AllocationPolicy(f.allocationPolicy),
		IoTHubs:              f.iotHubs,
		CredentialPolicyName: f.credentialPolicy,
	}
	if f.iotEdge {
		t.Capabilities = &dpsservice.DeviceCapabilities{IoTEdge: true}
	}
	if f.initialTwinFile != "" {
		tw, err := readInitialTwin(f.initialTwinFile)
		if err != nil {
			return t, err
		}
		t.InitialTwin = tw
	}
	return t, nil
}

// readInitialTwin reads and checks an --initial-twin file.
func readInitialTwin(path string) (*dpsservice.InitialTwin, error) {
	const hint = `the file holds {"tags": {"site": "a"}, "properties": {"desired": {"interval": 30}}}`
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef(hint, "--initial-twin: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var tw dpsservice.InitialTwin
	if err := dec.Decode(&tw); err != nil {
		return nil, usagef(hint, "--initial-twin %s: %v", path, err)
	}
	for name, raw := range map[string]json.RawMessage{"tags": tw.Tags, "properties.desired": desiredOf(&tw)} {
		if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] != '{' {
			return nil, usagef(hint, "--initial-twin %s: %s must be a JSON object", path, name)
		}
	}
	return &tw, nil
}

func desiredOf(tw *dpsservice.InitialTwin) json.RawMessage {
	if tw.Properties == nil {
		return nil
	}
	return tw.Properties.Desired
}

func runEnroll(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && args[0] == "group" {
		return runEnrollGroup(ctx, e, args[1:])
	}
	fs := newFlagSet(e, "enroll", enrollPurpose,
		"export DPS_SERVICE_CONNECTION_STRING='HostName=my-dps.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…'\ndps-batch enroll --manifest devices.csv",
		"dps-batch enroll --manifest devices.csv --dry-run",
		"dps-batch enroll --manifest ids.csv --generate-keys --out-manifest devices-keys.csv --iot-hub line3-hub.azure-devices.net",
		"dps-batch enroll --manifest devices.csv --mode update --provisioning-status disabled",
		"dps-batch enroll --manifest devices.csv --auth entra --service-host my-dps.azure-devices-provisioning.net",
		"# against a local simulator (dps-batch sim writes its connection string to sim-service.conn):\nDPS_SERVICE_CONNECTION_STRING=\"$(cat sim-service.conn)\" \\\n    dps-batch enroll --manifest fleet/manifest.csv --ca-file sim-ca.pem --rate 6000",
		"dps-batch enroll group --help")
	var f enrollFlags
	f.register(fs)
	f.metrics.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	if err := f.metrics.check(); err != nil {
		return err
	}
	f.args = args
	_, err := enroll(ctx, e, &f)
	return err
}

// enroll runs (or dry-runs) one enrollment pass; demo calls it too. It
// returns the run's result when a run happened.
func enroll(ctx context.Context, e *env, f *enrollFlags) (*batch.EnrollResult, error) {
	mode := batch.EnrollMode(f.mode)
	tpl, err := f.template()
	if err != nil {
		return nil, err
	}
	manifest := f.manifest
	if f.generateKeys {
		out := f.outManifest
		if f.dryRun {
			dir, err := os.MkdirTemp("", "dps-batch-enroll-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(dir)
			out = filepath.Join(dir, filepath.Base(f.outManifest))
			if err := copyIfExists(f.outManifest, out); err != nil {
				return nil, err
			}
		}
		gen, err := generateKeys(f.manifest, out, f.columns)
		if err != nil {
			return nil, err
		}
		if f.dryRun {
			fmt.Fprintf(e.stderr, "Dry run: would give %d row(s) a new key and write %d rows to %s (mode 0600)\n", gen.generated, gen.rows, f.outManifest)
		} else {
			fmt.Fprintf(e.stderr, "Keys: %d generated, %d kept from %s; %d rows written to %s (mode 0600: it holds keys)\n",
				gen.generated, gen.kept, f.outManifest, gen.rows, f.outManifest)
		}
		manifest = out
	}
	client, err := f.svc.client(e, "enroll")
	if err != nil {
		return nil, err
	}
	defer client.Close()
	logger := newLogger(e.stderr, f.verbose)
	r := &batch.EnrollRunner{
		Client: client,
		Logger: logger,
		Stats:  &batch.EnrollStats{},
		Options: batch.EnrollOptions{
			ManifestPath: manifest,
			Manifest:     manifests.Options{Strict: f.strict, Columns: f.columns, IgnoreCSRColumns: true},
			Mode:         mode,
			Template:     tpl,
			DeviceIDFrom: f.deviceIDFrom,
			RetryFailed:  f.retryFailed,
			Workers:      f.workers,
			Rate:         f.rate,
			BatchSize:    f.batchSize,
			MaxAttempts:  f.maxAttempts,
		},
	}
	if err := validateEnrollManifest(ctx, e, manifest, r, f.generateKeys); err != nil {
		return nil, err
	}
	if f.dryRun {
		return nil, enrollDryRun(ctx, e, f, r, client.Host())
	}
	exp, stopMetrics, err := f.metrics.serve(ctx, e, func(x *metrics.Exporter) { x.Enroll(r.Stats) })
	if err != nil {
		return nil, err
	}
	defer stopMetrics()
	if exp != nil {
		r.Options.Observer = exp
	}
	led, err := openServiceLedger(ctx, f.ledgerPath, client.Host())
	if err != nil {
		return nil, err
	}
	defer led.Close()
	r.Ledger = led
	stopProgress := enrollProgress(e.stderr, f.quiet, r.Stats, "enroll")
	stopNotice := noticeDrain(e, e.stderr)
	res, err := r.Run(ctx, e.drain)
	stopNotice()
	stopProgress()
	return res, finishEnrollRun(ctx, e, "enroll", f.manifest, f.ledgerPath, resumeEnroll(f), f.jsonOut, led, res, err, manifest)
}

// validateEnrollManifest checks every row before anything is sent or written.
func validateEnrollManifest(ctx context.Context, e *env, manifest string, r *batch.EnrollRunner, generated bool) error {
	fmt.Fprintf(e.stderr, "Validating %s ...\n", manifest)
	sum, err := r.Validate(ctx)
	var (
		ve *batch.ValidationError
		re *batch.RowsError
		he *manifests.HeaderError
	)
	switch {
	case errors.As(err, &ve):
		printProblems(e.stderr, manifest, ve.Summary)
		for _, g := range ve.Summary.ErrorGroups {
			if strings.Contains(g.String(), "row has no credentials") && !generated {
				fmt.Fprintf(e.stderr, "Rows without credentials need a key for an individual enrollment: add --generate-keys --out-manifest FILE (or enrol them as a group: dps-batch enroll group --symmetric)\n")
				break
			}
		}
		return &exitError{code: exitUsage}
	case errors.As(err, &re):
		fmt.Fprintf(e.stderr, "Manifest %s has %d problem(s); nothing was sent:\n", manifest, len(re.Problems)+re.More)
		for _, p := range re.Problems {
			fmt.Fprintf(e.stderr, "  %s\n", p.Error())
		}
		if re.More > 0 {
			fmt.Fprintf(e.stderr, "  ... and %d more\n", re.More)
		}
		return &exitError{code: exitUsage}
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission):
		return usagef("check the --manifest path", "cannot read the manifest: %v", err)
	case errors.As(err, &he):
		return usagef("the header needs registration_id and, for X.509, cert_path and key_path, or symmetric_key (README: Manifest format)", "%v", err)
	case err != nil:
		return err
	}
	if sum != nil {
		printWarnings(e.stderr, sum)
	}
	return nil
}

// openServiceLedger opens (creating) the ledger, takes the run lock and
// checks its enrollments belong to host.
func openServiceLedger(ctx context.Context, path, host string) (*ledger.Ledger, error) {
	led, err := openLocked(ctx, path)
	if err != nil {
		return nil, err
	}
	if err := led.BindService(ctx, host); err != nil {
		led.Close()
		var be *ledger.ServiceBindingError
		if errors.As(err, &be) {
			return nil, &exitError{code: exitUsage, err: err}
		}
		return nil, err
	}
	return led, nil
}

// enrollDryRun prints what a run would do, without writing anything.
func enrollDryRun(ctx context.Context, e *env, f *enrollFlags, r *batch.EnrollRunner, host string) error {
	led, err := openServiceLedgerReadOnly(ctx, f.ledgerPath, host)
	if err != nil {
		return err
	}
	if led != nil {
		defer led.Close()
		r.Ledger = led
	}
	plan, err := r.Plan(ctx)
	if err != nil {
		return err
	}
	w := e.stdout
	fmt.Fprintf(w, "Dry run: manifest %s is valid (%d devices). Nothing was sent.\n", f.manifest, plan.Devices)
	printEnrollPlan(w, plan, r.Options)
	return nil
}

func printEnrollPlan(w io.Writer, plan *batch.EnrollPlan, o batch.EnrollOptions) {
	for _, a := range []struct {
		act  batch.EnrollAction
		what string
	}{
		{batch.EnActCreate, "to create:"},
		{batch.EnActUpdate, "to create or replace:"},
		{batch.EnActCheck, "to read back first:"},
		{batch.EnActDelete, "to delete:"},
		{batch.EnActDeregister, "to deregister:"},
		{batch.EnActChanged, "credentials changed:"},
		{batch.EnActSkip, "to skip:"},
	} {
		n := plan.ByAction[a.act]
		if n == 0 && a.act != batch.EnActSkip {
			continue
		}
		fmt.Fprintf(w, "  %-22s %d", a.what, n)
		switch a.act {
		case batch.EnActCheck:
			fmt.Fprintf(w, "  (a request's answer was lost: read before sending anything again)")
		case batch.EnActChanged:
			fmt.Fprintf(w, "  (enrolled with other credentials than the manifest's: --mode update replaces them)")
		}
		fmt.Fprintln(w)
	}
	req := plan.Requests(o)
	fmt.Fprintf(w, "  service requests:      about %d", req)
	if o.Rate > 0 && req > 0 {
		fmt.Fprintf(w, " (%s at --rate %.0f/min)", time.Duration(float64(req)/o.Rate*float64(time.Minute)).Round(time.Second), o.Rate)
	}
	fmt.Fprintln(w)
}

// openServiceLedgerReadOnly opens an existing ledger for reading; nil if it
// does not exist.
func openServiceLedgerReadOnly(ctx context.Context, path, host string) (*ledger.Ledger, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	led, err := ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	if err := led.BindService(ctx, host); err != nil {
		led.Close()
		return nil, &exitError{code: exitUsage, err: err}
	}
	return led, nil
}

// enrollProgress prints a progress line every 5 s on w until stopped.
func enrollProgress(w io.Writer, quiet bool, st *batch.EnrollStats, what string) (stop func()) {
	if quiet {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s := st.Snapshot()
				fmt.Fprintf(w, "%s: %d/%d done (%s), %d requests, %d throttled\n", what, s.Done(), s.Total, outcomeLine(s, false), s.Requests(), s.Throttled)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// outcomeLine lists the non-zero outcomes, e.g. "created 98, failed 2".
func outcomeLine(s batch.EnrollSnapshot, skipped bool) string {
	var parts []string
	for o, n := range s.Outcomes {
		if n == 0 || batch.EnrollOutcome(o) == batch.EnOutSkipped && !skipped {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d", batch.EnrollOutcome(o), n))
	}
	if len(parts) == 0 {
		return "nothing yet"
	}
	return strings.Join(parts, ", ")
}

// enrollSummaryJSON is the --json summary of enroll and deregister.
type enrollSummaryJSON struct {
	Command      string         `json:"command"`
	Ledger       string         `json:"ledger"`
	Manifest     string         `json:"manifest"`
	Devices      int            `json:"devices"`
	Outcomes     map[string]int `json:"outcomes"`
	Requests     int            `json:"requests"`
	Bulk         int            `json:"bulkRequests"`
	Items        int            `json:"bulkItems"`
	Reads        int            `json:"reads"`
	Deletes      int            `json:"deletes"`
	RegDeleted   int            `json:"registrationsDeleted"`
	RegNone      int            `json:"registrationsAbsent"`
	Throttled    int            `json:"throttled"`
	Retries      int            `json:"retries"`
	Left         int            `json:"left"`
	States       map[string]int `json:"ledgerStates"`
	ElapsedSec   float64        `json:"elapsedSeconds"`
	Resumable    bool           `json:"resumable"`
	ResumeCmd    string         `json:"resumeCommand,omitempty"`
	RunID        int64          `json:"runId"`
	Error        string         `json:"error,omitempty"`
	Hint         string         `json:"hint,omitempty"`
	Failed       []failedJSON   `json:"failed,omitempty"`
	RatePerMin   float64        `json:"ratePerMinute"`
	ManifestUsed string         `json:"manifestUsed,omitempty"`
}

type failedJSON struct {
	RegistrationID string `json:"registrationId"`
	State          string `json:"state"`
	HTTPStatus     int    `json:"httpStatus,omitempty"`
	ErrorCode      int    `json:"errorCode,omitempty"`
	Error          string `json:"error,omitempty"`
	Hint           string `json:"hint,omitempty"`
}

// maxListedFailures is how many failed devices a summary names.
const maxListedFailures = 10

// finishEnrollRun prints the summary of an enroll or deregister run and
// returns the exit error for it.
func finishEnrollRun(ctx context.Context, e *env, cmd, manifest, ledgerPath, resume string, asJSON bool, led *ledger.Ledger, res *batch.EnrollResult, runErr error, manifestUsed string) error {
	var se *batch.EnrollStopError
	stoppedOnService := errors.As(runErr, &se)
	if runErr != nil && !stoppedOnService && res == nil {
		return runErr
	}
	if stoppedOnService && !asJSON {
		_ = serviceStop(e, cmd, se)
	} else if runErr != nil && !stoppedOnService && !asJSON {
		fmt.Fprintf(e.stderr, "dps-batch %s: %v\n", cmd, runErr)
	}
	failed, total := failedOfRun(ctx, led, res.RunID)
	s := res.Snapshot
	if asJSON {
		out := enrollSummaryJSON{Command: cmd, Ledger: ledgerPath, Manifest: manifest, Devices: res.Plan.Devices, Outcomes: map[string]int{},
			Requests: s.Requests(), Bulk: s.Bulk, Items: s.Items, Reads: s.Reads, Deletes: s.Deletes, RegDeleted: s.RegDeleted, RegNone: s.RegNone,
			Throttled: s.Throttled, Retries: s.Retries, Left: res.Left(), States: map[string]int{}, ElapsedSec: s.Elapsed.Seconds(),
			Resumable: res.Resumable(), RunID: res.RunID, Failed: failed, RatePerMin: res.Rate}
		if manifestUsed != manifest {
			out.ManifestUsed = manifestUsed
		}
		for o, n := range s.Outcomes {
			out.Outcomes[batch.EnrollOutcome(o).String()] = n
		}
		for st, n := range res.Counts.ByState {
			out.States[string(st)] = n
		}
		if res.Resumable() {
			out.ResumeCmd = resume
		}
		if runErr != nil {
			out.Error = runErr.Error()
			if stoppedOnService {
				out.Error, out.Hint = se.Err.Error(), se.Hint
			}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	} else {
		w := e.stdout
		fmt.Fprintf(w, "\n%d devices in the manifest; this run worked on %d in %s\n", res.Plan.Devices, s.Done(), s.Elapsed.Round(time.Millisecond))
		fmt.Fprintf(w, "  this run: %s\n", outcomeLine(s, true))
		if cmd == "deregister" {
			fmt.Fprintf(w, "  registration states: %d deleted, %d had none\n", s.RegDeleted, s.RegNone)
		}
		fmt.Fprintf(w, "  requests: %d (%d bulk carrying %d enrollments, %d reads, %d deletes); %d retries; %d throttled (429)",
			s.Requests(), s.Bulk, s.Items, s.Reads, s.Deletes, s.Retries, s.Throttled)
		if s.Throttled > 0 && res.Rate > 0 {
			fmt.Fprintf(w, "; rate now %.0f/min", res.Rate)
		}
		fmt.Fprintln(w)
		if left := res.Left(); left > 0 {
			fmt.Fprintf(w, "  left for the next run: %d\n", left)
		}
		if len(failed) > 0 {
			fmt.Fprintf(w, "  failed (%d", total)
			if total > len(failed) {
				fmt.Fprintf(w, ", first %d", len(failed))
			}
			fmt.Fprintf(w, "):\n")
			for _, f := range failed {
				fmt.Fprintf(w, "    %s: %s: %s", f.RegistrationID, f.State, f.Error)
				if f.Hint != "" {
					fmt.Fprintf(w, " (hint: %s)", f.Hint)
				}
				fmt.Fprintln(w)
			}
		}
		fmt.Fprintf(w, "Ledger: %s\n", ledgerPath)
		if res.Resumable() {
			fmt.Fprintf(w, "Work is left. Resume with the same command:\n  %s\n", resume)
		} else if cmd == "enroll" && runErr == nil && res.Failures() == 0 && s.Outcomes[batch.EnOutDeleted] == 0 {
			fmt.Fprintf(w, "Next: dps-batch provision --manifest %s --ledger %s --id-scope <ID scope>\n", shellQuote(manifestUsed), shellQuote(ledgerPath))
		}
	}
	switch {
	case stoppedOnService:
		return &exitError{code: exitSystemic}
	case runErr != nil:
		return &exitError{code: exitInternal}
	case ctx.Err() != nil:
		return &exitError{code: exitInterrupted, err: errors.New("interrupted; the ledger is consistent: run the same command again to resume")}
	case res.Resumable():
		return &exitError{code: exitResumable}
	case res.Failures() > 0:
		return &exitError{code: exitDeviceFails}
	}
	return nil
}

// failedOfRun lists the first devices the run left failed or
// exists-different, and how many there are.
func failedOfRun(ctx context.Context, led *ledger.Ledger, runID int64) ([]failedJSON, int) {
	var out []failedJSON
	total := 0
	_ = led.EachEnrollment(context.WithoutCancel(ctx), []ledger.EnrollState{ledger.EnrollFailed, ledger.EnrollExistsDifferent}, func(r ledger.Enrollment) error {
		if r.RunID != runID {
			return nil
		}
		total++
		if len(out) < maxListedFailures {
			out = append(out, failedJSON{RegistrationID: r.RegistrationID, State: string(r.State), HTTPStatus: r.HTTPStatus, ErrorCode: r.ErrorCode, Error: r.ErrorMessage, Hint: r.Hint})
		}
		return nil
	})
	return out, total
}

// resumeEnroll is the command that continues this run: the same arguments
// minus --dry-run.
func resumeEnroll(f *enrollFlags) string {
	if f.resumeHint != "" {
		return f.resumeHint
	}
	return resumeArgs("enroll", f.args)
}

func resumeArgs(cmd string, args []string) string {
	parts := []string{"dps-batch", cmd}
	for _, a := range args {
		if strings.TrimLeft(a, "-") == "dry-run" {
			continue
		}
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

// keyGen is what generateKeys did.
type keyGen struct {
	rows, generated, kept int
}

// generateKeys writes out: every row of in, where rows without credentials
// (no cert_path, no symmetric_key) get a symmetric_key: the one out already
// holds for the same registration id (a re-run keeps its keys), else a new
// random 32-byte key. Relative paths are rewritten for out's folder. out is
// written whole, mode 0600.
func generateKeys(in, out string, columns manifests.ColumnMap) (keyGen, error) {
	var g keyGen
	header, records, err := readCSV(in)
	if err != nil {
		return g, usagef("check the --manifest path", "read manifest: %v", err)
	}
	col := func(ours string) int {
		name := ours
		if t, ok := columns[ours]; ok {
			name = t
		}
		for i, h := range header {
			if strings.EqualFold(strings.TrimSpace(strings.TrimPrefix(h, "\uFEFF")), name) {
				return i
			}
		}
		return -1
	}
	idCol, certCol, keyCol := col("registration_id"), col("cert_path"), col("symmetric_key")
	if idCol < 0 {
		return g, usagef("the header needs registration_id (or --column registration_id=YOURS)", "manifest %s has no registration_id column", in)
	}
	if keyCol < 0 {
		header = append(header, "symmetric_key")
		keyCol = len(header) - 1
	}
	existing := map[string]string{}
	if _, err := os.Stat(out); err == nil {
		oh, orecs, err := readCSV(out)
		if err != nil {
			return g, fmt.Errorf("read the existing --out-manifest %s: %w", out, err)
		}
		oid, okey := -1, -1
		for i, h := range oh {
			switch strings.ToLower(strings.TrimSpace(h)) {
			case strings.ToLower(header[idCol]):
				oid = i
			case "symmetric_key":
				okey = i
			}
		}
		if oid >= 0 && okey >= 0 {
			for _, r := range orecs {
				if oid < len(r) && okey < len(r) && r[okey] != "" {
					existing[strings.TrimSpace(r[oid])] = strings.TrimSpace(r[okey])
				}
			}
		}
	}
	inDir, _ := filepath.Abs(filepath.Dir(in))
	outAbs, _ := filepath.Abs(filepath.Dir(out))
	pathCols := []int{certCol, col("key_path"), col("chain_path")}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	if err := w.Write(header); err != nil {
		return g, err
	}
	for _, r := range records {
		for len(r) < len(header) {
			r = append(r, "")
		}
		id := strings.TrimSpace(r[idCol])
		hasCert := certCol >= 0 && strings.TrimSpace(r[certCol]) != ""
		if !hasCert && strings.TrimSpace(r[keyCol]) == "" {
			if k, ok := existing[id]; ok {
				r[keyCol] = k
				g.kept++
			} else {
				key := make([]byte, certs.SymmetricKeySize)
				_, _ = rand.Read(key)
				r[keyCol] = base64.StdEncoding.EncodeToString(key)
				g.generated++
			}
		}
		if inDir != outAbs {
			for _, c := range pathCols {
				if c >= 0 && c < len(r) && r[c] != "" && !filepath.IsAbs(r[c]) {
					if rel, err := filepath.Rel(outAbs, filepath.Join(inDir, filepath.FromSlash(r[c]))); err == nil {
						r[c] = filepath.ToSlash(rel)
					}
				}
			}
		}
		if err := w.Write(r); err != nil {
			return g, err
		}
		g.rows++
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return g, err
	}
	if err := certs.WriteSecretFile(out, buf.Bytes(), true); err != nil {
		return g, fmt.Errorf("write --out-manifest: %w", err)
	}
	return g, nil
}

// readCSV reads a manifest as plain CSV: the header and every record
// (comment lines and blank lines dropped).
func readCSV(path string) ([]string, [][]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	b = bytes.TrimPrefix(b, []byte("\uFEFF"))
	r := csv.NewReader(bytes.NewReader(b))
	r.Comment = '#'
	r.FieldsPerRecord = -1
	all, err := r.ReadAll()
	if err != nil {
		return nil, nil, err
	}
	if len(all) == 0 {
		return nil, nil, errors.New("the manifest is empty")
	}
	var recs [][]string
	for _, rec := range all[1:] {
		blank := true
		for _, f := range rec {
			blank = blank && strings.TrimSpace(f) == ""
		}
		if !blank {
			recs = append(recs, rec)
		}
	}
	return all[0], recs, nil
}

// copyIfExists copies src to dst (mode 0600) when src exists.
func copyIfExists(src, dst string) error {
	b, err := os.ReadFile(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}

// enrollLocal enrols a manifest's devices at a simulator this process runs
// (demo --individual): conn is the simulator's service connection string
// (dpssim.Server.ServiceConnectionString), handed over in memory, never on
// a command line; caFile is its CA. resumeHint replaces the resume command
// of the summary. It prints enroll's summary and returns its exit error
// (nil when every enrollment is done).
func enrollLocal(ctx context.Context, e *env, manifest, ledgerPath, caFile, conn string, rate float64, resumeHint string) (*batch.EnrollResult, error) {
	cs, err := dpsservice.ParseConnectionString(conn)
	if err != nil {
		return nil, err
	}
	f := &enrollFlags{
		manifest: manifest, ledgerPath: ledgerPath, mode: "create",
		workers: batch.DefaultEnrollWorkers, batchSize: batch.DefaultEnrollBatch, maxAttempts: batch.DefaultEnrollAttempts,
		rate: rate, quiet: true, resumeHint: resumeHint,
	}
	f.svc = serviceFlags{auth: authSAS, caFile: caFile, apiVersion: dpsservice.DefaultAPIVersion,
		requestTimeout: 30 * time.Second, credentialForUs: cs.Credential, host: cs.HostName}
	if err := f.check(); err != nil {
		return nil, err
	}
	return enroll(ctx, e, f)
}

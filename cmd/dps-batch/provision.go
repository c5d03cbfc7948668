package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
	"github.com/dps-batch/dps-batch/metrics"
)

const provisionPurpose = `Provision every device of a manifest through DPS, concurrently and within DPS's
quotas, recording each step in a SQLite ledger. Run the same command again after a
crash, an interrupt or failures: finished devices are skipped, devices DPS is
assigning are polled (not registered again), and nothing billable is repeated: a
register request whose answer was lost is followed by a status lookup, and sent
again only when DPS shows nothing and --settle has passed.

--reprovision and --retry-failed run a campaign recorded in the ledger: the same
command continues it after any stop, and registers no device twice within it.

The manifest is validated in full before anything is sent: every problem is listed
with its row number, and the command exits 2 without contacting DPS.

Rate: DPS documents 1,000 registrations per minute per DPS instance (older
instances 200) and 5 polls per 10 s per device. The default --rate of 900/min stays
below that; on a 429 the whole fleet pauses for Retry-After and slows down, then
recovers gradually.

Group symmetric keys are never taken on the command line: use --group-key-file or
the environment variable named by --group-key-env.`

// provisionFlags are the flags shared by provision and demo.
type provisionFlags struct {
	manifest, ledgerPath, idScope, endpoint, caFile, apiVersion string
	x509TLS                                                     string
	groupKeyFile, groupKeyEnv                                   string
	workers, maxAttempts                                        int
	rate, pollRate                                              float64
	deviceTimeout, requestTimeout, settle                       time.Duration
	retryFailed, reprovision, dryRun, verbose, quiet, jsonOut   bool
	newCampaign, rebind                                         bool
	issueCerts, reissue                                         bool   // --issue-certs, --reissue
	apiVersionSet                                               bool   // --api-version was given
	csrKeyDir                                                   string // --generate-csr-keys DIR
	failFast                                                    int
	strict                                                      bool                // --strict: refuse unknown manifest columns
	columns                                                     manifests.ColumnMap // --column OURS=YOURS
	reprovisionBefore                                           string
	reprovisionCutoff                                           time.Time
	shard                                                       batch.Shard  // --shard i/n (provision only)
	metrics                                                     metricsFlags // --metrics-listen (provision only)

	// args are the command-line arguments as given, for the resume hint;
	// resumeHint, when set, replaces that hint (demo).
	args       []string
	resumeHint string
}

func (p *provisionFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.manifest, "manifest", "", "manifest CSV `file` (registration_id,cert_path,key_path[,chain_path,symmetric_key,payload]); required")
	fs.StringVar(&p.ledgerPath, "ledger", "", "ledger `file` (SQLite); created if missing (default: the manifest path with .ledger instead of .csv)")
	fs.StringVar(&p.idScope, "id-scope", "", "DPS ID `scope`, e.g. 0ne00012345 (DPS overview page in the portal); required")
	fs.StringVar(&p.endpoint, "endpoint", dps.DefaultEndpoint, "DPS device endpoint `URL` (https only)")
	fs.StringVar(&p.caFile, "ca-file", "", "extra CA bundle `file` (PEM) trusted for the endpoint besides the system roots, e.g. the simulator's CA")
	fs.StringVar(&p.apiVersion, "api-version", dps.DefaultAPIVersion, "DPS device API `version`")
	fs.StringVar(&p.x509TLS, "x509-tls", "1.2", "highest TLS `version` X.509 devices offer: 1.2 (the only one DPS supports today) or 1.3 (the device certificate travels encrypted, where the server supports 1.3)")
	fs.IntVar(&p.workers, "workers", 0, "devices in flight at once (`N`); default: enough to keep up with --rate when each device takes DPS's usual 3 s, at least 100")
	fs.Float64Var(&p.rate, "rate", batch.DefaultRegisterRate, "register requests per minute for the whole fleet (`N/min`); DPS allows 1,000/min per instance; -1 = unlimited")
	fs.Float64Var(&p.pollRate, "poll-rate", 0, "status polls and lookups per minute for the whole fleet (`N/min`); default: twice --rate, at least 1,800; -1 = unlimited")
	fs.IntVar(&p.maxAttempts, "max-attempts", batch.DefaultMaxAttempts, "failed requests per device per run before leaving it for the next run (`N`)")
	fs.DurationVar(&p.deviceTimeout, "timeout-per-device", batch.DefaultDeviceTimeout, "time one device may take in one run before it is left for the next run (`duration`)")
	fs.DurationVar(&p.requestTimeout, "request-timeout", 30*time.Second, "timeout of one HTTP request (`duration`)")
	fs.StringVar(&p.groupKeyFile, "group-key-file", "", "`file` holding the base64 group enrollment key, for rows with no credentials (device keys are derived from it)")
	fs.StringVar(&p.groupKeyEnv, "group-key-env", "DPS_GROUP_KEY", "environment `variable` holding the base64 group key (used when --group-key-file is not given)")
	fs.BoolVar(&p.retryFailed, "retry-failed", false, "register again devices that failed or were disabled in an earlier run")
	fs.BoolVar(&p.reprovision, "reprovision", false, "register again devices that are already assigned (billable), as a campaign recorded in the ledger: running the same command again continues it, and no device is registered twice by one campaign")
	fs.BoolVar(&p.issueCerts, "issue-certs", false, "have DPS issue each device a certificate (preview, api-version "+dps.CertificateIssuanceAPIVersion+"): send the row's CSR (csr_key_path or csr_path) with its registration and write the issued chain to issued_cert_path before recording it assigned")
	fs.BoolVar(&p.reissue, "reissue", false, "register again (billable) the devices whose issued certificate was lost (state issued-lost), as a campaign like --reprovision; implies --issue-certs")
	fs.StringVar(&p.csrKeyDir, "generate-csr-keys", "", "make a P-384 operational key `DIR`/<registration id>.key (0600) for every row that gives neither csr_key_path nor csr_path; existing key files are kept; implies --issue-certs")
	fs.BoolVar(&p.newCampaign, "new-campaign", false, "with --reprovision or --retry-failed: start a new campaign even though one is unfinished (the unfinished one is abandoned; its devices may be registered again)")
	fs.IntVar(&p.failFast, "fail-fast", batch.DefaultFuseDevices, "stop the run when the first `N` devices all fail the same way (wrong endpoint, ID scope, CA or group key) and none succeeds; 0 = never")
	fs.BoolVar(&p.rebind, "rebind", false, "bind the ledger to this --endpoint and --id-scope although it was made with others; allowed only while DPS has accepted nothing recorded in it")
	fs.DurationVar(&p.settle, "settle", batch.DefaultSettle, "how long a register request that got no usable answer may still take effect at DPS (`duration`): a lookup that finds nothing allows another register request only after it")
	fs.StringVar(&p.reprovisionBefore, "reprovision-before", "", "with --reprovision: only devices assigned before this `time` (RFC 3339, e.g. 2026-11-29T10:00:00Z)")
	fs.BoolVar(&p.dryRun, "dry-run", false, "validate the manifest and print the plan; send nothing, write nothing")
	fs.BoolVar(&p.verbose, "v", false, "verbose: log every device's steps on stderr")
	fs.BoolVar(&p.quiet, "quiet", false, "no progress display (the summary is still printed)")
	fs.BoolVar(&p.jsonOut, "json", false, "print the summary as JSON on stdout")
	addManifestFlags(fs, &p.strict, &p.columns)
}

func (p *provisionFlags) check() error {
	if err := requireFlag(nil, "manifest", p.manifest, "dps-batch provision --manifest devices.csv --id-scope 0ne00012345"); err != nil {
		return err
	}
	if err := requireFlag(nil, "id-scope", p.idScope, "dps-batch provision --manifest "+p.manifest+" --id-scope 0ne00012345 (the ID scope is on the DPS overview page)"); err != nil {
		return err
	}
	if err := dps.ValidateIDScope(p.idScope); err != nil {
		return usagef("the ID scope is on the DPS overview page in the Azure portal, e.g. 0ne00012345", "--id-scope: %v", err)
	}
	if p.workers == 0 {
		p.workers = workersFor(p.rate)
	}
	if p.workers < 1 {
		return usagef("--workers 100", "--workers must be at least 1, got %d", p.workers)
	}
	if p.rate == 0 || p.rate < -1 {
		return usagef("--rate 900 (per minute), or --rate -1 for no limit", "--rate must be a positive number of registrations per minute, got %v", p.rate)
	}
	if p.pollRate < -1 || (p.pollRate < 0 && p.pollRate != -1) {
		return usagef("--poll-rate 1800 (per minute), or --poll-rate -1 for no limit", "--poll-rate must be a positive number of polls per minute, got %v", p.pollRate)
	}
	if p.maxAttempts < 1 {
		return usagef("--max-attempts 6", "--max-attempts must be at least 1, got %d", p.maxAttempts)
	}
	if p.deviceTimeout <= 0 || p.requestTimeout <= 0 {
		return usagef("--timeout-per-device 5m --request-timeout 30s", "timeouts must be positive durations")
	}
	if p.x509TLS != "" && p.x509TLS != "1.2" && p.x509TLS != "1.3" {
		return usagef("--x509-tls 1.2", "--x509-tls must be 1.2 or 1.3, got %q", p.x509TLS)
	}
	if p.ledgerPath == "" {
		p.ledgerPath = strings.TrimSuffix(p.manifest, filepath.Ext(p.manifest)) + shardSuffix(p.shard) + ".ledger"
	}
	if p.reprovisionBefore != "" {
		t, err := time.Parse(time.RFC3339Nano, p.reprovisionBefore)
		if err != nil {
			return usagef("--reprovision --reprovision-before 2026-11-29T10:00:00Z", "--reprovision-before %q is not an RFC 3339 time", p.reprovisionBefore)
		}
		p.reprovision = true
		p.reprovisionCutoff = t
	}
	if p.newCampaign && !p.reprovision && !p.retryFailed && !p.reissue {
		return usagef("--reprovision --new-campaign", "--new-campaign starts a re-registration campaign: give it with --reprovision, --retry-failed or --reissue")
	}
	if p.csrKeyDir != "" || p.reissue {
		p.issueCerts = true
	}
	switch {
	case p.issueCerts && p.apiVersion != dps.CertificateIssuanceAPIVersion && (p.apiVersionSet || p.apiVersion != dps.DefaultAPIVersion):
		return usagef("--issue-certs (it selects --api-version "+dps.CertificateIssuanceAPIVersion+")",
			"--issue-certs needs --api-version %s, the device API that carries a CSR; got --api-version %s", dps.CertificateIssuanceAPIVersion, p.apiVersion)
	case p.issueCerts || p.apiVersion == dps.CertificateIssuanceAPIVersion:
		p.issueCerts = true
		p.apiVersion = dps.CertificateIssuanceAPIVersion
	}

	if p.settle < 0 {
		return usagef("--settle 30s", "--settle must not be negative, got %s", p.settle)
	}
	if p.failFast < 0 {
		return usagef("--fail-fast 10", "--fail-fast must be 0 (never) or a number of devices, got %d", p.failFast)
	}
	if p.pollRate == 0 {
		// Each device needs about one poll per registration: polls must
		// keep up with the registrations --rate allows.
		p.pollRate = batch.DefaultPollRate
		if p.rate < 0 {
			p.pollRate = -1
		} else if 2*p.rate > p.pollRate {
			p.pollRate = 2 * p.rate
		}
	}
	return nil
}

// policy is what the flags ask of devices that already reached a final state.
func (p *provisionFlags) policy() batch.Policy {
	return batch.Policy{RetryFailed: p.retryFailed, Reprovision: p.reprovision, ReprovisionBefore: p.reprovisionCutoff, NewCampaign: p.newCampaign, Reissue: p.reissue}
}

// manifestOptions are the manifest reading options the flags ask for.
func (p *provisionFlags) manifestOptions(groupKey []byte) manifests.Options {
	// A dry run makes no key: the keys --generate-csr-keys would make are
	// planned, not missing.
	return manifests.Options{GroupKey: groupKey, Strict: p.strict, Columns: p.columns, IssueCerts: p.issueCerts, CSRKeyDir: p.csrKeyDir,
		CSRKeysPlanned: p.dryRun && p.csrKeyDir != ""}
}

// fuseOption maps --fail-fast 0 (never) to the runner's "never" value.
func fuseOption(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// settleOption maps --settle 0 (no window) to the runner's "none" value.
func settleOption(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// groupKey reads the group key from the file or environment variable; nil when neither is set.
func (p *provisionFlags) groupKey(e *env) ([]byte, error) {
	var text, from string
	if p.groupKeyFile != "" {
		b, err := os.ReadFile(p.groupKeyFile)
		if err != nil {
			return nil, usagef("--group-key-file FILE with the base64 key on one line", "read group key: %v", err)
		}
		text, from = string(b), "--group-key-file "+p.groupKeyFile
	} else if p.groupKeyEnv != "" {
		text, from = e.getenv(p.groupKeyEnv), "environment variable "+p.groupKeyEnv
	}
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	key, err := manifests.DecodeKey(text)
	if err != nil {
		return nil, usagef("copy the group's primary key from the DPS enrollment group page",
			"the group key in %s: %v", from, err)
	}
	return key, nil
}

func runProvision(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "provision", provisionPurpose,
		"dps-batch provision --manifest devices.csv --id-scope 0ne00012345",
		"dps-batch provision --manifest devices.csv --id-scope 0ne00012345 --dry-run",
		"DPS_GROUP_KEY=$(cat group.key) dps-batch provision --manifest devices.csv --id-scope 0ne00012345 --rate 600",
		"# against a local simulator (see: dps-batch sim --help):\ndps-batch provision --manifest fleet/manifest.csv --ledger fleet/ledger.db --id-scope 0ne00000000 \\\n    --endpoint https://127.0.0.1:8443 --ca-file sim-ca.pem --rate 6000")
	var p provisionFlags
	p.register(fs)
	p.metrics.register(fs)
	shard := fs.String("shard", "", "provision only shard `i/n` of the manifest: the devices whose registration id, in lower case, has an FNV-1a 64-bit hash that is i mod n (i counts from 0); the default ledger is then <manifest>.shard-i-of-n.ledger")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) { p.apiVersionSet = p.apiVersionSet || f.Name == "api-version" })
	if *shard != "" {
		s, err := batch.ParseShard(*shard)
		if err != nil {
			return usagef("--shard 0/3 (shard 0 of 3; e.g. --shard $(JOB_COMPLETION_INDEX)/3 in a Kubernetes Indexed Job)", "--%v", err)
		}
		p.shard = s
	}
	if err := p.check(); err != nil {
		return err
	}
	if err := p.metrics.check(); err != nil {
		return err
	}
	p.args = args
	return provision(ctx, e, &p)
}

// provision runs (or dry-runs) one provisioning pass; demo calls it too.
func provision(ctx context.Context, e *env, p *provisionFlags) error {
	groupKey, err := p.groupKey(e)
	if err != nil {
		return err
	}
	prog := newProgress(e.stderr, p.quiet)
	logger := newLogger(prog, p.verbose)

	if p.dryRun {
		return dryRun(ctx, e, p, groupKey)
	}
	if p.csrKeyDir != "" {
		if err := generateCSRKeys(ctx, e, p); err != nil {
			return err
		}
	}
	client, err := newDPSClient(p)
	if err != nil {
		return err
	}
	defer client.Close()

	r := &batch.Runner{
		Client: client,
		Logger: logger,
		Stats:  &batch.Stats{},
		Options: batch.Options{
			ManifestPath:   p.manifest,
			Manifest:       p.manifestOptions(groupKey),
			Workers:        p.workers,
			RegisterRate:   p.rate,
			PollRate:       p.pollRate,
			MaxAttempts:    p.maxAttempts,
			DeviceTimeout:  p.deviceTimeout,
			RequestTimeout: p.requestTimeout,
			Settle:         settleOption(p.settle),
			Policy:         p.policy(),
			FuseDevices:    fuseOption(p.failFast),
			Shard:          p.shard,
		},
	}
	// Validate before touching the ledger: a bad manifest creates nothing.
	if err := validateManifest(ctx, e, p, r); err != nil {
		return err
	}
	exp, stopMetrics, err := p.metrics.serve(ctx, e, func(x *metrics.Exporter) { x.Provision(r.Stats) })
	if err != nil {
		return err
	}
	defer stopMetrics()
	if exp != nil {
		r.Options.Observer = exp
	}

	led, err := openLedger(ctx, p.ledgerPath, p.idScope, p.endpoint, p.rebind)
	if err != nil {
		return err
	}
	defer led.Close()
	r.Ledger = led
	prog.Start(r.Stats)
	stopNotice := noticeDrain(e, prog)
	res, err := r.Run(ctx, e.drain)
	stopNotice()
	prog.Stop()
	var ce *batch.CampaignError
	if errors.As(err, &ce) {
		return usagef(campaignHint(ce), "%v; nothing was sent", err)
	}
	if err != nil && res != nil {
		// The error comes first; the summary says what was recorded.
		return stoppedOnError(e, p, res, err)
	}
	if res != nil {
		printSummary(e.stdout, p, res, p.jsonOut)
	}
	if err != nil {
		return err
	}
	switch {
	case ctx.Err() != nil:
		return &exitError{code: exitInterrupted, err: errors.New("interrupted; the ledger is consistent: run the same command again to resume")}
	case res.Resumable():
		return &exitError{code: exitResumable}
	case res.Failures() > 0:
		return &exitError{code: exitDeviceFails}
	}
	return nil
}

// validateManifest checks every row before anything is sent or written.
// It prints the problems and returns the exit error; a first Ctrl-C stops it.
func validateManifest(ctx context.Context, e *env, p *provisionFlags, r *batch.Runner) error {
	vctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-e.drain:
			cancel()
		case <-vctx.Done():
		}
	}()
	fmt.Fprintf(e.stderr, "Validating %s ...\n", p.manifest)
	sum, err := r.Validate(vctx)
	var ve *batch.ValidationError
	var he *manifests.HeaderError
	switch {
	case errors.As(err, &ve):
		printProblems(e.stderr, p.manifest, ve.Summary)
		return &exitError{code: exitUsage}
	case err != nil && ctx.Err() == nil && vctx.Err() != nil:
		return &exitError{code: exitResumable, err: errors.New("stopped during validation; nothing was sent")}
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission):
		return usagef("check the --manifest path: dps-batch provision --manifest path/to/devices.csv --id-scope 0ne00012345", "cannot read the manifest: %v", err)
	case errors.As(err, &he):
		hint := "the header needs registration_id and, for X.509, cert_path and key_path (README: Manifest format)"
		if strings.Contains(err.Error(), "csr") || strings.Contains(err.Error(), "issued_cert_path") || strings.Contains(err.Error(), "certificate issuance") {
			hint = "README: Certificates issued by DPS (the columns csr_key_path, csr_path and issued_cert_path, and --issue-certs)"
		}
		return usagef(hint, "%v", err)
	case err != nil:
		return err
	}
	printWarnings(e.stderr, sum)
	return nil
}

// dryRun validates and prints the plan without writing the ledger.
func dryRun(ctx context.Context, e *env, p *provisionFlags, groupKey []byte) error {
	r := &batch.Runner{Options: batch.Options{
		ManifestPath: p.manifest,
		Manifest:     p.manifestOptions(groupKey),
		RegisterRate: p.rate,
		PollRate:     p.pollRate,
		Workers:      p.workers,
		Policy:       p.policy(),
		Shard:        p.shard,
	}}
	if err := validateManifest(ctx, e, p, r); err != nil {
		return err
	}
	led, err := openLedgerReadOnly(ctx, p.ledgerPath, p.idScope, p.endpoint)
	if err != nil {
		return err
	}
	var open *ledger.Campaign
	if led != nil {
		defer led.Close()
		r.Ledger = led
		if open, err = r.PlanCampaign(ctx); err != nil {
			var ce *batch.CampaignError
			if errors.As(err, &ce) {
				return usagef(campaignHint(ce), "%v", err)
			}
			return err
		}
	}
	plan, err := r.Plan(ctx, false)
	if err != nil {
		return err
	}
	w := e.stdout
	if p.shard.Count > 0 {
		fmt.Fprintf(w, "Dry run: manifest %s is valid; shard %s holds %d of its devices (ledger %s). Nothing was sent.\n", p.manifest, p.shard, plan.Devices, p.ledgerPath)
	} else {
		fmt.Fprintf(w, "Dry run: manifest %s is valid (%d devices). Nothing was sent.\n", p.manifest, plan.Devices)
	}
	if kind := p.policy(); kind.Reprovision || kind.RetryFailed || kind.Reissue {
		switch {
		case open != nil && !p.newCampaign && !open.Open():
			fmt.Fprintf(w, "  campaign #%d (%s) was completed on %s: the same command registers nothing again; add --new-campaign to start another (billable)\n",
				open.ID, open.Kind, open.FinishedAt.Local().Format(time.DateTime))
		case open != nil && !p.newCampaign:
			fmt.Fprintf(w, "  continues campaign #%d (%s, started %s): devices it already registered are skipped\n",
				open.ID, open.Kind, open.StartedAt.Local().Format(time.DateTime))
		default:
			fmt.Fprintf(w, "  starts a new re-registration campaign\n")
		}
	} else if open != nil {
		fmt.Fprintf(w, "  note: campaign #%d (%s) is unfinished; run with the same flags to continue it\n", open.ID, open.Kind)
	}
	fmt.Fprintf(w, "  to register:            %d\n", plan.ByAction[batch.ActionRegister])
	fmt.Fprintf(w, "  to poll (in progress):  %d\n", plan.ByAction[batch.ActionPoll])
	fmt.Fprintf(w, "  to check first:         %d  (a request may have been sent before a crash; non-billable lookup)\n", plan.ByAction[batch.ActionLookup])
	fmt.Fprintf(w, "  to skip:                %d\n", plan.ByAction[batch.ActionSkip])
	if n := plan.ByAction[batch.ActionChanged]; n > 0 {
		fmt.Fprintf(w, "  credentials changed:    %d  (assigned; use --reprovision to register them again)\n", n)
	}
	fmt.Fprintf(w, "  billable registrations: %d\n", plan.Billable())
	if p.csrKeyDir != "" {
		fmt.Fprintf(w, "  operational keys: the run makes the missing ones in %s (P-384, 0600) before it registers\n", p.csrKeyDir)
	}
	printEstimate(w, p, plan)
	return nil
}

// workersFor is the default --workers for a --rate: a device holds a
// worker for about assumedPerDevice (DPS's Retry-After before the first
// poll), so keeping up with rate/min needs rate/60 × 3 s workers; 20% more
// absorbs slower answers. Never fewer than batch.DefaultWorkers.
func workersFor(ratePerMinute float64) int {
	if ratePerMinute <= 0 {
		return batch.DefaultWorkers
	}
	n := int(math.Ceil(ratePerMinute / 60 * assumedPerDevice.Seconds() * 1.2))
	return max(n, batch.DefaultWorkers)
}

// assumedPerDevice is how long one device takes from its register request
// to its final answer at DPS: the Retry-After DPS sends (3 s) before the
// first poll, which usually finds the assignment done.
const assumedPerDevice = 3 * time.Second

// printEstimate estimates the run's duration from every limiter: register
// requests at --rate, polls and lookups (about one per device) at
// --poll-rate, and devices in flight at --workers, each taking about
// assumedPerDevice. The slowest one bounds the run.
func printEstimate(w io.Writer, p *provisionFlags, plan *batch.Plan) {
	work := plan.Work()
	if work == 0 {
		return
	}
	perMinute := func(n int, rate float64) time.Duration {
		if rate <= 0 {
			return 0
		}
		return time.Duration(float64(n) / rate * float64(time.Minute))
	}
	workers := p.workers
	if workers <= 0 {
		workers = batch.DefaultWorkers
	}
	limits := []struct {
		name string
		d    time.Duration
	}{
		{fmt.Sprintf("--rate %.0f/min (%d registrations)", p.rate, plan.Billable()), perMinute(plan.Billable(), p.rate)},
		{fmt.Sprintf("--poll-rate %.0f/min (about %d polls and lookups)", p.pollRate, work), perMinute(work, p.pollRate)},
		{fmt.Sprintf("--workers %d (about %s per device at DPS)", workers, assumedPerDevice), time.Duration(float64(work) / float64(workers) * float64(assumedPerDevice))},
	}
	slowest := 0
	for i, l := range limits {
		if l.d > limits[slowest].d {
			slowest = i
		}
	}
	fmt.Fprintf(w, "  estimated time: %s, limited by %s\n", limits[slowest].d.Round(time.Second), limits[slowest].name)
	for i, l := range limits {
		if i != slowest && l.d > 0 {
			fmt.Fprintf(w, "    (%s alone: %s)\n", l.name, l.d.Round(time.Second))
		}
	}
}

// campaignHint says how to continue or replace an unfinished campaign.
func campaignHint(ce *batch.CampaignError) string {
	return fmt.Sprintf("run with the campaign's own flags (%s) to finish it first, or add --new-campaign to abandon it and start the %s campaign (devices it already registered may be registered again)",
		campaignFlags(ce.Open.Kind), ce.Want)
}

// campaignFlags are the provision flags of a campaign kind.
func campaignFlags(kind string) string {
	var flags []string
	for _, k := range strings.Split(kind, "+") {
		flags = append(flags, "--"+k) // campaign kinds are flag names: reprovision, retry-failed, reissue
	}
	return strings.Join(flags, " ")
}

// openLocked opens (creating) the ledger for a writing command, takes its
// run lock and runs the quick integrity check.
func openLocked(ctx context.Context, path string) (*ledger.Ledger, error) {
	led, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		return nil, err
	}
	if err := led.Lock(); err != nil {
		led.Close()
		if errors.Is(err, ledger.ErrLocked) {
			// Its own code: a line controller can wait and try again.
			return nil, &exitError{code: exitBusy, err: err}
		}
		return nil, err
	}
	if err := led.QuickCheck(ctx); err != nil {
		led.Close()
		return nil, err
	}
	return led, nil
}

// openLedger opens (creating) the ledger, takes the run lock and checks the
// ledger belongs to this ID scope and endpoint.
func openLedger(ctx context.Context, path, idScope, endpoint string, rebind bool) (*ledger.Ledger, error) {
	led, err := openLocked(ctx, path)
	if err != nil {
		return nil, err
	}
	if err := led.Bind(ctx, idScope, endpoint); err != nil {
		var be *ledger.BindingError
		if errors.As(err, &be) {
			if rebind {
				err = led.Rebind(ctx, idScope, endpoint)
				if err == nil {
					return led, nil
				}
			} else if n, aerr := led.Accepted(ctx); aerr == nil && n == 0 {
				led.Close()
				return nil, usagef("add --rebind to bind it to this endpoint and ID scope, or name a new --ledger file",
					"%v; DPS never accepted anything recorded in it, so binding it to this DPS instance (or starting a fresh ledger) loses nothing", err)
			}
		}
		led.Close()
		return nil, &exitError{code: exitUsage, err: err}
	}
	return led, nil
}

// openLedgerReadOnly opens an existing ledger for reading; nil if it does not exist.
func openLedgerReadOnly(ctx context.Context, path, idScope, endpoint string) (*ledger.Ledger, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	led, err := ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	if err := led.Bind(ctx, idScope, endpoint); err != nil {
		led.Close()
		return nil, &exitError{code: exitUsage, err: err}
	}
	return led, nil
}

// noticeDrain tells the user, on the first Ctrl-C, what happens now.
func noticeDrain(e *env, out io.Writer) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-e.drain:
			fmt.Fprintf(out, "\nStopping: no new devices; in-flight devices finish and are recorded. Press Ctrl-C again to stop at once (the ledger stays consistent).\n")
		case <-done:
		}
	}()
	return func() { close(done) }
}

func newLogger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// printProblems lists the manifest's errors, each distinct problem once
// with the rows it was found on, then its warnings.
func printProblems(w io.Writer, manifest string, s *manifests.Summary) {
	fmt.Fprintf(w, "Manifest %s has %d problem(s); nothing was sent:\n", manifest, len(s.Errors)+s.TruncatedErrors)
	printGroups(w, "  ", s.ErrorGroups, s.OtherErrors)
	printWarnings(w, s)
	fmt.Fprintf(w, "Fix the rows above and run the same command again.\n")
}

// printWarnings lists the manifest's warnings, each distinct one once.
func printWarnings(w io.Writer, s *manifests.Summary) {
	printGroups(w, "  warning: ", s.WarningGroups, s.OtherWarnings)
}

// printGroups prints one line per distinct problem (rows 2-201 (200 rows):
// ...), then how many problems of further kinds were not listed.
func printGroups(w io.Writer, prefix string, groups []manifests.Group, other int) {
	for _, g := range groups {
		fmt.Fprintf(w, "%s%s\n", prefix, g)
	}
	if other > 0 {
		fmt.Fprintf(w, "%s... and %d more of other kinds, not listed\n", prefix, other)
	}
}

// shardSuffix is what --shard i/n adds to the default ledger name before
// .ledger: ".shard-i-of-n", so that each shard keeps its own ledger.
func shardSuffix(s batch.Shard) string {
	if s.Count == 0 {
		return ""
	}
	return fmt.Sprintf(".shard-%d-of-%d", s.Index, s.Count)
}

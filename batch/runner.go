// Package batch is the provisioning runner: it plans work from a manifest and
// the ledger, drives bounded workers through the DPS client with shared
// pacing, retries what is retryable, records every step in the ledger before
// acting on it, and stops cleanly (drain, then abort).
//
// batch is the only place with retry loops and pacing; the dps client makes
// single transactions and classifies their failures.
package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// Client is what the runner needs of a DPS client; *dps.Client implements it.
// Tests wrap the real client to count calls or inject faults.
type Client interface {
	// RegisterWithCSR is a register PUT; csr (DER PKCS#10) is nil unless
	// the device asks DPS to issue it a certificate.
	RegisterWithCSR(ctx context.Context, d *dps.Device, payload json.RawMessage, csr []byte) (*dps.Response, error)
	OperationStatus(ctx context.Context, d *dps.Device, operationID string) (*dps.Response, error)
	RegistrationStatus(ctx context.Context, d *dps.Device) (*dps.Response, error)
}

var _ Client = (*dps.Client)(nil)

// Defaults for Options fields left zero.
const (
	DefaultWorkers         = 100
	DefaultRegisterRate    = 900 // per minute: below DPS's documented 1,000 registrations/min per instance
	DefaultPollRate        = 1800
	DefaultMaxAttempts     = 6
	DefaultDeviceTimeout   = 5 * time.Minute
	DefaultMinPollInterval = 2 * time.Second // DPS allows 5 polls per 10 s per device
	DefaultMaxRetryAfter   = 5 * time.Minute
	DefaultRequestTimeout  = 30 * time.Second
	// DefaultSettle is how long after a register request ended without an
	// answer it may still take effect at DPS. Only after it does a lookup
	// that finds nothing allow another register request.
	DefaultSettle = 30 * time.Second
)

// Options configure a run. Zero values take the defaults above.
type Options struct {
	ManifestPath string
	Manifest     manifests.Options // group key, clock for certificate validity

	Workers         int           // devices in flight at once
	RegisterRate    float64       // register PUTs per minute for the whole fleet; <0 = unlimited
	PollRate        float64       // polls and lookups per minute for the whole fleet; <0 = unlimited
	MaxAttempts     int           // failed transactions per device per run before giving up for this run
	DeviceTimeout   time.Duration // per device per run, from its first request
	MinPollInterval time.Duration // floor between two polls of one device (after the first)
	MaxRetryAfter   time.Duration // cap on any server Retry-After
	Backoff         Backoff       // retry delays
	// RequestTimeout is the DPS client's timeout of one request: how long
	// a register request written before a crash may have been in flight.
	RequestTimeout time.Duration
	// Settle is how long after a register request ended without a usable
	// answer it may still take effect at DPS (see DefaultSettle).
	Settle time.Duration

	Policy          // --retry-failed, --reprovision
	MaxProblems int // validation problems to collect; 0 = 200
	// FuseDevices is how many devices must fail the same way, with nothing
	// accepted, before the run stops as systemic (SystemicError); 0 means
	// DefaultFuseDevices, negative never stops.
	FuseDevices int
	// Shard limits the run to the manifest's devices in this shard (the
	// zero Shard: all of them). Plan and dispatch read the manifest through
	// readChunk, which applies it.
	Shard Shard
	// Observer, if set, is told of every request and finished device (for
	// metrics); the counters it does not see are in Stats.
	Observer Observer
}

func (o *Options) setDefaults() {
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.RegisterRate == 0 {
		o.RegisterRate = DefaultRegisterRate
	}
	if o.PollRate == 0 {
		o.PollRate = DefaultPollRate
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.DeviceTimeout <= 0 {
		o.DeviceTimeout = DefaultDeviceTimeout
	}
	if o.MinPollInterval == 0 {
		o.MinPollInterval = DefaultMinPollInterval
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Settle == 0 {
		o.Settle = DefaultSettle
	}
	if o.Settle < 0 {
		o.Settle = 0
	}
	if o.Backoff.MaxRetryAfter <= 0 {
		o.Backoff.MaxRetryAfter = o.MaxRetryAfter
	}
	if o.MaxProblems <= 0 {
		o.MaxProblems = 200
	}
}

// Runner provisions the devices of one manifest into one ledger.
type Runner struct {
	Client  Client
	Ledger  *ledger.Ledger
	Options Options
	// Logger receives per-device detail at debug level and warnings; nil discards.
	Logger *slog.Logger
	// Stats are the live counters; Run creates them if nil. Read them for progress.
	Stats *Stats
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	registerPacer *Pacer
	pollPacer     *Pacer
	fuse          *fuse
	campaignDone  bool          // the run's campaign was already completed: nothing is registered again
	slotWait      time.Duration // dispatch waited for a free worker
	runID         int64
	validated     bool // Validate passed; Run need not read every file again

	halts *halter // set by Run; devices halt the run through it

	warns warnLimiter

	loadedMu sync.Mutex
	loaded   map[int]manifests.Kept // X.509 devices Validate loaded, by line; taken by dispatch
}

// keepX509 is how many X.509 devices Validate hands over to dispatch, so
// that a run of up to that many devices reads and parses each certificate
// and key once, not twice (4 KB each with ECDSA P-256 keys, 8 KB with RSA
// 2048: 40 to 80 MB at most, until the run ends). Devices beyond it are
// loaded again when dispatched.
const keepX509 = 10000

// ValidationError means the manifest has problems; nothing was sent.
type ValidationError struct {
	Summary *manifests.Summary
}

func (e *ValidationError) Error() string {
	n := len(e.Summary.Errors) + e.Summary.TruncatedErrors
	return fmt.Sprintf("manifest has %d problem(s); nothing was sent", n)
}

// Result is what a run did.
type Result struct {
	Plan     *Plan
	Snapshot Snapshot
	ByHub    map[string]int
	P50, P95 time.Duration
	// Stopped is true when the run stopped dispatching early (drain or
	// cancellation) and devices were left for a re-run.
	Stopped bool
	RunID   int64
	// Campaign is the re-registration campaign the run worked in, or the
	// one left open by an earlier run when this one asked for none; nil
	// when there is none.
	Campaign *ledger.Campaign
	// CampaignStarted: this run started Campaign. CampaignCompleted: this
	// run finished it (every device of it reached a final state).
	CampaignStarted, CampaignCompleted bool
	// CampaignAlreadyCompleted: the run asked for the campaign Campaign,
	// which an earlier run completed; nothing was registered again (a new
	// campaign needs Policy.NewCampaign).
	CampaignAlreadyCompleted bool
	// ReissueNeedsNewCampaign: a --reissue campaign was completed in this
	// ledger, so --reissue alone registers no issued-lost device again;
	// --reissue --new-campaign does.
	ReissueNeedsNewCampaign bool
	// Bound names what limited the run's speed ("--rate 900/min",
	// "--poll-rate 1800/min", "--workers 100", "DPS throttling (429)")
	// when one was waited on for most of the run; "" otherwise.
	Bound string
	// Counts are the ledger's devices per state when the run ended: what
	// is left for the next run, in the words status and report use.
	Counts map[ledger.State]int
}

// Left is the number of devices the next run has work for.
func (r *Result) Left() int {
	c := r.Counts
	return c[ledger.StatePending] + c[ledger.StateRegistering] + c[ledger.StateAssigning] + c[ledger.StateRetryable]
}

// ReissueNeedsNewCampaign reports whether a --reissue campaign was
// completed in led: then the same --reissue command registers nothing again
// and issued-lost devices need --reissue --new-campaign.
func ReissueNeedsNewCampaign(ctx context.Context, led *ledger.Ledger) bool {
	last, found, err := led.LastCampaignOfKind(ctx, Policy{Reissue: true}.campaignKind())
	return err == nil && found && last.Outcome == ledger.CampaignCompleted
}

// ReissueFlags is the provision flag that registers issued-lost devices
// again, given ReissueNeedsNewCampaign.
func ReissueFlags(needsNew bool) string {
	if needsNew {
		return "--reissue --new-campaign"
	}
	return "--reissue"
}

// CampaignError means the run asked for a campaign while another one, of a
// different kind, is unfinished; nothing was sent.
type CampaignError struct {
	Open ledger.Campaign
	Want string // the kind this run asked for
}

func (e *CampaignError) Error() string {
	return fmt.Sprintf("campaign #%d (%s, started %s) is unfinished; this run asks for a %s campaign",
		e.Open.ID, e.Open.Kind, e.Open.StartedAt.Format(time.RFC3339), e.Want)
}

// campaign finds the open campaign. continuing is true when this run
// continues it (same kind, and no NewCampaign); a run that asks for no
// campaign gets the open one back for display only.
func (r *Runner) campaign(ctx context.Context) (open *ledger.Campaign, continuing bool, err error) {
	r.campaignDone = false
	if r.Ledger == nil {
		return nil, false, nil
	}
	kind := r.Options.Policy.campaignKind()
	c, ok, err := r.Ledger.OpenCampaign(ctx)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		if kind == "" || r.Options.Policy.NewCampaign {
			return nil, false, nil
		}
		// The same command after its campaign completed (perhaps killed
		// right after recording that) does not start another one: that
		// would register every device again. --new-campaign does.
		last, found, err := r.Ledger.LastCampaignOfKind(ctx, kind)
		if err != nil || !found || last.Outcome != ledger.CampaignCompleted {
			return nil, false, err
		}
		r.Options.Policy.Reprovision, r.Options.Policy.RetryFailed, r.Options.Policy.Reissue = false, false, false
		r.campaignDone = true
		return &last, false, nil
	}
	switch {
	case kind == "":
		return &c, false, nil
	case r.Options.Policy.NewCampaign:
		return nil, false, nil
	case c.Kind != kind:
		return nil, false, &CampaignError{Open: c, Want: kind}
	}
	r.Options.Policy.Campaign = c.ID
	return &c, true, nil
}

// PlanCampaign sets the policy's campaign to the open one it would continue,
// for a dry run's plan; it returns that campaign, or nil.
func (r *Runner) PlanCampaign(ctx context.Context) (*ledger.Campaign, error) {
	open, continuing, err := r.campaign(ctx)
	if err != nil || !continuing {
		return open, err
	}
	return open, nil
}

// Resumable reports whether re-running the same command has work to do.
func (r *Result) Resumable() bool {
	return r.Stopped || r.Snapshot.Outcomes[OutcomeUnfinished] > 0
}

// Failures is the number of devices that ended (now or earlier) failed,
// disabled or issued-lost: each needs the operator.
func (r *Result) Failures() int {
	s := r.Snapshot
	return s.Outcomes[OutcomeFailed] + s.Outcomes[OutcomeDisabled] + s.Outcomes[OutcomeIssuedLost] + s.SkippedFailures + s.SkippedIssuedLost
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// halt stops the run as a drain does (no new device, no new register
// request; requests in flight complete and are recorded) and makes Run
// return err, the first one given.
func (r *Runner) halt(err error) { r.halts.halt(err) }

func (r *Runner) haltError() error { return r.halts.Err() }

// warnRepeated logs a warning unless warnsPerKind of the same kind were
// logged already in this run.
func (r *Runner) warnRepeated(kind, msg string, args ...any) {
	r.warns.warn(r.log(), kind, msg, args...)
}

// flushWarnings logs how many warnings were held back, once per kind.
func (r *Runner) flushWarnings() {
	r.warns.flush(r.log(), "more devices failed the same way; the report lists each one")
}

func (r *Runner) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Validate streams the whole manifest and loads every device, so that no
// request is sent while any row is wrong. It returns *ValidationError when
// rows have problems. Run calls it unless it already passed (a caller may
// validate before opening the ledger, so a bad manifest creates nothing).
func (r *Runner) Validate(ctx context.Context) (*manifests.Summary, error) {
	r.Options.setDefaults()
	r.forget()
	opts := r.Options.Manifest
	opts.KeepX509 = keepX509
	sum, err := manifests.Validate(ctx, r.Options.ManifestPath, opts, r.Options.MaxProblems)
	if err != nil {
		return nil, err
	}
	loaded := sum.X509
	sum.X509 = nil // dispatch frees them as it goes; the caller must not hold them
	if len(sum.Errors) > 0 || sum.TruncatedErrors > 0 {
		return sum, &ValidationError{Summary: sum}
	}
	r.validated = true
	r.loadedMu.Lock()
	r.loaded = loaded
	r.loadedMu.Unlock()
	return sum, nil
}

// Plan reads the manifest and the ledger and counts what a run would do.
// With record set, devices new to the ledger are added as pending, so that
// status and reports cover every manifest device from the start. With no
// Ledger (a dry run before the first run), every device is new.
func (r *Runner) Plan(ctx context.Context, record bool) (*Plan, error) {
	r.Options.setDefaults()
	rd, err := manifests.OpenWith(r.Options.ManifestPath, r.Options.Manifest)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	p := &Plan{ByAction: map[Action]int{}}
	var pending []ledger.Device
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		_, err := r.Ledger.AddPending(ctx, pending)
		pending = pending[:0]
		return err
	}
	for {
		rows, readErr := readChunk(rd, r.Options.Shard)
		briefs := map[string]ledger.Brief{}
		if r.Ledger != nil {
			if briefs, err = r.Ledger.Briefs(ctx, rowIDs(rows)); err != nil {
				return nil, err
			}
		}
		for _, row := range rows {
			p.Devices++
			b, found := briefs[row.RegistrationID]
			// The plan compares fingerprints only when the ledger says
			// assigned, so only then are the credentials loaded here.
			fp := ""
			if found && b.State == ledger.StateAssigned && b.Fingerprint != "" && !r.Options.Reprovision {
				if dev, _ := r.load(rd, row, false); dev != nil {
					fp = dev.Fingerprint
				}
			}
			p.ByAction[Decide(briefDevice(row.RegistrationID, b), found, fp, r.Options.Policy)]++
			if !found {
				p.New++
				if record {
					pending = append(pending, ledger.Device{RegistrationID: row.RegistrationID, State: ledger.StatePending})
					if len(pending) >= 5000 {
						if err := flush(); err != nil {
							return nil, err
						}
					}
				}
			}
		}
		if errors.Is(readErr, io.EOF) {
			break
		}
		if readErr != nil {
			return nil, readErr
		}
	}
	if record {
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// readChunk reads up to ledger.LookupChunk rows, so that their ledger rows
// are read with one query (Ledger.Briefs) instead of one per device: most
// of the cost of a re-run with little left to do. The error, io.EOF at the
// end, comes with the rows read before it. Rows of devices outside shard
// are skipped.
func readChunk(rd *manifests.Reader, shard Shard) ([]manifests.Row, error) {
	rows := make([]manifests.Row, 0, ledger.LookupChunk)
	for len(rows) < ledger.LookupChunk {
		row, err := rd.Next()
		if err != nil {
			return rows, err
		}
		if !shard.Has(row.RegistrationID) {
			continue
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func rowIDs(rows []manifests.Row) []string {
	ids := make([]string, len(rows))
	for i, row := range rows {
		ids[i] = row.RegistrationID
	}
	return ids
}

// briefDevice is a ledger row with only what Decide reads.
func briefDevice(id string, b ledger.Brief) ledger.Device {
	return ledger.Device{RegistrationID: id, State: b.State, OperationID: b.OperationID, Fingerprint: b.Fingerprint, FinishedAt: b.FinishedAt, CampaignID: b.CampaignID}
}

// Run provisions every device of the manifest that needs work. Closing drain
// stops dispatching new devices; in-flight devices finish or reach their
// deadline and are recorded. Cancelling ctx stops everything at once; the
// ledger stays consistent either way and a re-run continues.
//
// A device failure is data in the ledger, not an error: Run returns an error
// only for validation problems (*ValidationError) and fatal conditions
// (ledger I/O, a server whose certificate is not trusted, bad configuration).
func (r *Runner) Run(ctx context.Context, drain <-chan struct{}) (*Result, error) {
	r.Options.setDefaults()
	defer r.forget() // a later Run validates again
	if r.Stats == nil {
		r.Stats = &Stats{}
	}
	// A drain during validation or planning (long for big manifests) stops
	// the run before anything is sent.
	pctx, stopPlan := context.WithCancel(ctx)
	defer stopPlan()
	go func() {
		select {
		case <-drain:
			stopPlan()
		case <-pctx.Done():
		}
	}()
	if !r.validated {
		if _, err := r.Validate(pctx); err != nil {
			return r.stoppedEarly(ctx, pctx, err)
		}
	}
	open, continuing, err := r.campaign(pctx)
	if err != nil {
		return r.stoppedEarly(ctx, pctx, err)
	}
	plan, err := r.Plan(pctx, true)
	if err != nil {
		return r.stoppedEarly(ctx, pctx, err)
	}
	stopPlan()
	r.registerPacer = NewPacer(r.Options.RegisterRate)
	r.pollPacer = NewPacer(r.Options.PollRate)
	r.Stats.pacers.Store(&[2]*Pacer{r.registerPacer, r.pollPacer})
	r.Stats.observer = r.Options.Observer
	r.fuse = nil
	if need := r.Options.FuseDevices; need >= 0 {
		if need == 0 {
			need = DefaultFuseDevices
		}
		// A run of a handful of devices ends quickly anyway.
		if need = min(need, plan.Work()); need >= 2 {
			r.fuse = newFuse(need)
		}
	}
	r.Stats.total.Store(int64(plan.Work()))
	r.Stats.started.Store(r.now().UnixNano())

	runID, err := r.Ledger.StartRun(ctx, "provision", r.runOptions())
	if err != nil {
		return nil, err
	}
	r.runID = runID
	res := &Result{Plan: plan, RunID: runID}
	if kind := r.Options.Policy.campaignKind(); kind != "" {
		if !continuing {
			// Recorded before the first device of the campaign is
			// registered: a kill from here on is continued, not restarted.
			c, err := r.Ledger.StartCampaign(ctx, kind, runID, r.runOptions())
			if err != nil {
				return nil, err
			}
			open = &c
			res.CampaignStarted = true
		}
		r.Options.Policy.Campaign = open.ID
	}
	res.Campaign = open
	res.CampaignAlreadyCompleted = r.campaignDone

	// The run stops dispatching when the user asks (drain) or when a device
	// halts it (a systemic or fatal error): either way in-flight requests
	// complete and are recorded, so a stop creates no doubt about what a
	// request did at DPS.
	r.halts = newHalter()
	stop, stopWatch := stopOn(ctx, drain, r.halts, func() { r.Stats.stopping.Store(true) })
	stopped, err := r.dispatch(ctx, stop)
	stopWatch()
	r.flushWarnings()
	if err == nil {
		err = r.haltError()
	}
	var se *SystemicError
	systemic := errors.As(err, &se)
	res.Stopped = stopped || ctx.Err() != nil || systemic
	res.Snapshot = r.Stats.Snapshot()
	res.ByHub = r.Stats.ByHub()
	res.P50, res.P95 = r.Stats.Percentile(0.50), r.Stats.Percentile(0.95)
	res.Bound = r.bound(res.Snapshot.Elapsed)
	if err == nil && r.Options.Policy.Campaign != 0 && !res.Resumable() {
		// Every device of the campaign reached a final state in it.
		if err = r.Ledger.FinishCampaign(context.WithoutCancel(ctx), open.ID, ledger.CampaignCompleted); err == nil {
			res.CampaignCompleted = true
		}
	}

	if se != nil {
		if rerr := r.releaseSystemic(context.WithoutCancel(ctx), se); rerr != nil {
			err = rerr
		}
	}
	counts := map[ledger.State]int{}
	if c, cerr := r.Ledger.Counts(context.WithoutCancel(ctx)); cerr == nil {
		counts = c.ByState
	}
	res.Counts = counts
	if counts[ledger.StateIssuedLost] > 0 {
		res.ReissueNeedsNewCampaign = ReissueNeedsNewCampaign(context.WithoutCancel(ctx), r.Ledger)
	}
	left := counts[ledger.StatePending] + counts[ledger.StateRegistering] + counts[ledger.StateAssigning] + counts[ledger.StateRetryable]
	outcome := "completed"
	switch {
	case se != nil:
		outcome = "stopped early: " + se.Error()
	case err != nil:
		outcome = "error: " + err.Error()
	case ctx.Err() != nil:
		outcome = fmt.Sprintf("interrupted; %d devices left", left)
	case res.Stopped:
		outcome = fmt.Sprintf("stopped; %d devices left", left)
	case res.Resumable():
		outcome = fmt.Sprintf("unfinished; %d devices left", left)
	}
	if ferr := r.Ledger.FinishRun(context.WithoutCancel(ctx), runID, outcome, counts); ferr != nil && err == nil {
		err = ferr
	}
	return res, err
}

// bound names the limiter the run waited on for most of elapsed, if any.
func (r *Runner) bound(elapsed time.Duration) string {
	if elapsed <= 0 {
		return ""
	}
	type limiter struct {
		name string
		busy time.Duration
	}
	regName := fmt.Sprintf("--rate %.0f/min", r.Options.RegisterRate)
	if r.registerPacer.Throttles() > 0 {
		regName = "DPS throttling (429) on registrations"
	}
	pollName := fmt.Sprintf("--poll-rate %.0f/min", r.Options.PollRate)
	if r.pollPacer.Throttles() > 0 {
		pollName = "DPS throttling (429) on polls"
	}
	// In this order: a slow pacer also keeps the workers busy, so the
	// workers limit the run only when neither pacer does.
	for _, l := range []limiter{
		{regName, r.registerPacer.Busy()},
		{pollName, r.pollPacer.Busy()},
		{fmt.Sprintf("--workers %d", r.Options.Workers), r.slotWait},
	} {
		if l.busy >= elapsed/2 {
			return l.name
		}
	}
	return ""
}

// releaseSystemic makes the devices a systemic failure stopped retryable
// again: they failed because of the run's configuration, not their own, so
// the same command retries them once it is fixed.
func (r *Runner) releaseSystemic(ctx context.Context, se *SystemicError) error {
	var release []ledger.Device
	err := r.Ledger.Each(ctx, []ledger.State{ledger.StateFailed}, func(d ledger.Device) error {
		if d.RunID == r.runID && r.fuse.failedWith(d.RegistrationID) {
			release = append(release, d)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range release {
		d.State = ledger.StateRetryable
		d.FinishedAt = time.Time{}
		d.Hint = "not retried: the run stopped because every device failed this way (" + se.Signature + "); fix the cause and run the same command again"
		if err := r.Ledger.Put(ctx, d); err != nil {
			return fmt.Errorf("record device %s in ledger: %w", d.RegistrationID, err)
		}
	}
	return nil
}

// stoppedEarly turns an error from validation or planning into a stopped
// result when it came from a drain, not from the work itself.
func (r *Runner) stoppedEarly(ctx, pctx context.Context, err error) (*Result, error) {
	if ctx.Err() == nil && pctx.Err() != nil && errors.Is(err, context.Canceled) {
		return &Result{Plan: &Plan{ByAction: map[Action]int{}}, Stopped: true}, nil
	}
	return nil, err
}

func (r *Runner) runOptions() map[string]string {
	o := r.Options
	opts := map[string]string{
		"manifest":       o.ManifestPath,
		"workers":        fmt.Sprint(o.Workers),
		"rate":           fmt.Sprint(o.RegisterRate),
		"poll_rate":      fmt.Sprint(o.PollRate),
		"max_attempts":   fmt.Sprint(o.MaxAttempts),
		"device_timeout": o.DeviceTimeout.String(),
		"retry_failed":   fmt.Sprint(o.RetryFailed),
		"reprovision":    fmt.Sprint(o.Reprovision),
		"settle":         o.Settle.String(),
	}
	if o.Reissue {
		opts["reissue"] = "true"
	}
	if o.Manifest.IssueCerts {
		opts["issue_certs"] = "true"
	}
	if o.Shard.Count > 0 {
		opts["shard"] = o.Shard.String()
	}
	return opts
}

// dispatch streams the manifest into a bounded pool of workers. It reports
// whether it stopped early because drain was closed. A worker slot is taken
// before a row is handed out, in a select with drain, so no device starts
// after the user asked to stop.
func (r *Runner) dispatch(ctx context.Context, drain <-chan struct{}) (stopped bool, err error) {
	rd, err := manifests.OpenWith(r.Options.ManifestPath, r.Options.Manifest)
	if err != nil {
		return false, err
	}
	defer rd.Close()
	g, gctx := errgroup.WithContext(ctx)
	slots := make(chan struct{}, r.Options.Workers)
loop:
	for {
		rows, readErr := readChunk(rd, r.Options.Shard)
		briefs, err := r.Ledger.Briefs(gctx, rowIDs(rows))
		if err != nil {
			if gctx.Err() == nil {
				g.Go(func() error { return fmt.Errorf("read ledger: %w", err) })
			}
			break
		}
		for _, row := range rows {
			waitStart := time.Now()
			select {
			case <-drain:
				stopped = true
				break loop
			case <-gctx.Done():
				break loop
			case slots <- struct{}{}:
			}
			r.slotWait += time.Since(waitStart)
			b, found := briefs[row.RegistrationID]
			g.Go(func() error {
				defer func() { <-slots }()
				return r.device(gctx, drain, rd, row, b, found)
			})
		}
		if errors.Is(readErr, io.EOF) {
			break
		}
		if readErr != nil {
			g.Go(func() error { return readErr })
			break
		}
	}
	return stopped, g.Wait()
}

// load returns the device of row: the one Validate loaded from the same
// row, when it kept it, or one loaded now. take removes the kept one, whose
// row is dispatched only once.
func (r *Runner) load(rd *manifests.Reader, row manifests.Row, take bool) (*manifests.Device, []manifests.Problem) {
	r.loadedMu.Lock()
	k, ok := r.loaded[row.Line]
	if ok && take {
		delete(r.loaded, row.Line)
	}
	r.loadedMu.Unlock()
	if ok && k.Row == row {
		return k.Device, nil
	}
	opts := r.Options.Manifest
	opts.SkipSignatureChecks = r.validated // this run's Validate checked them
	return rd.Load(row, opts)
}

// forget drops what a Validate found: the next Run validates again, and no
// private key stays in memory longer than the run that needs it.
func (r *Runner) forget() {
	r.loadedMu.Lock()
	r.loaded = nil
	r.validated = false
	r.loadedMu.Unlock()
}

// device does everything for one manifest row; b is its ledger brief
// (found is false when the ledger does not know it). It returns an error
// only for fatal conditions, which stop the run.
func (r *Runner) device(ctx context.Context, drain <-chan struct{}, rd *manifests.Reader, row manifests.Row, b ledger.Brief, found bool) error {
	dev, problems := r.load(rd, row, true)
	if dev == nil {
		// The files changed since validation: record it, touch nothing at DPS.
		msg := "manifest row no longer loads"
		if len(problems) > 0 {
			msg = problems[0].Error()
		}
		r.log().Warn("device skipped", "device", row.RegistrationID, "error", msg)
		r.Stats.finish(OutcomeUnfinished, 0, "")
		return nil
	}
	rec := ledger.Device{RegistrationID: dev.RegistrationID, State: ledger.StatePending}
	if found {
		rec = briefDevice(dev.RegistrationID, b)
	}
	action := Decide(rec, found, dev.Fingerprint, r.Options.Policy)
	if found && action != ActionSkip {
		// Work to do: every write that follows starts from the whole row.
		full, ok, err := r.Ledger.Device(ctx, dev.RegistrationID)
		if err != nil && ctx.Err() != nil {
			// The run was cancelled before this device started: nothing
			// was sent for it, and its row is as it was.
			r.Stats.finish(OutcomeUnfinished, 0, "")
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ledger for device %s: %w", dev.RegistrationID, err)
		}
		if !ok {
			full = ledger.Device{RegistrationID: dev.RegistrationID, State: ledger.StatePending}
		}
		rec = full
		action = Decide(rec, ok, dev.Fingerprint, r.Options.Policy)
		if rec.CSRSent && dev.CSR == nil && (action == ActionPoll || action == ActionLookup) {
			// Its answer carries a certificate only for a run that asks
			// with the certificate-issuing api-version, and is handed over
			// once: leave the device for such a run rather than spend it.
			r.warnRepeated("csr-in-flight", "device's registration in flight sent a CSR: not followed without --issue-certs; run the same command with --issue-certs",
				"device", dev.RegistrationID)
			r.Stats.finish(OutcomeUnfinished, 0, "")
			return nil
		}
	}
	switch action {
	case ActionSkip:
		if rec.State == ledger.StateFailed || rec.State == ledger.StateDisabled {
			r.Stats.skipFailed.Add(1)
		}
		if rec.State == ledger.StateIssuedLost {
			r.Stats.skipIssuedLost.Add(1)
		}
		if rec.State == ledger.StateAssigned && dev.CSR != nil && found && !b.HasIssued {
			// --issue-certs does not register an assigned device again.
			r.Stats.skipNoCert.Add(1)
		}
		r.Stats.finish(OutcomeSkipped, 0, "")
		return nil
	case ActionChanged:
		// Reported in the ledger (and so in status and reports), not acted on.
		rec.Hint = fmt.Sprintf("credentials changed since this device was assigned (ledger %s, manifest %s): not registered again; use --reprovision to register it with the new credentials",
			rec.Fingerprint, dev.Fingerprint)
		w := &work{r: r, rec: rec}
		if err := w.put(ctx); err != nil {
			return err
		}
		r.log().Warn("credentials changed since the device was assigned; not re-registered (use --reprovision to register again)",
			"device", dev.RegistrationID, "ledger_fingerprint", rec.Fingerprint, "manifest_fingerprint", dev.Fingerprint)
		r.Stats.finish(OutcomeChanged, 0, "")
		return nil
	}

	var d *dps.Device
	if dev.Certificate != nil {
		d = dps.NewX509Device(dev.RegistrationID, *dev.Certificate)
	} else {
		d = dps.NewSymmetricKeyDevice(dev.RegistrationID, dev.SymmetricKey)
	}
	defer d.Close()

	r.Stats.inFlight.Add(1)
	defer r.Stats.inFlight.Add(-1)
	// The device's deadline runs from its first request, not from when it
	// was dispatched: time spent queueing for the pacer is the fleet's.
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fresh, stopFresh := context.WithCancel(dctx)
	defer stopFresh()
	go func() {
		select {
		case <-drain:
			stopFresh()
		case <-fresh.Done():
		}
	}()
	w := &work{r: r, rec: rec, dev: dev, d: d, drain: drain, fresh: fresh, cancel: cancel}
	defer w.stopDeadline()
	// A campaign registers again a device DPS already answered; without the
	// record of that answer, a lookup could not tell it from the new one.
	baseline := action == ActionRegister && rec.State.Final() && rec.Record.IsZero()
	w.rec.Fingerprint = dev.Fingerprint
	return w.run(dctx, ctx, action, baseline)
}

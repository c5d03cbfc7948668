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
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// Client is what the runner needs of a DPS client; *dps.Client implements it.
// Tests wrap the real client to count calls or inject faults.
type Client interface {
	Register(ctx context.Context, d *dps.Device, payload json.RawMessage) (*dps.Response, error)
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

	Policy          // --retry-failed, --reprovision
	MaxProblems int // validation problems to collect; 0 = 200
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
	runID         int64
	validated     bool // Validate passed; Run need not read every file again

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
}

// Resumable reports whether re-running the same command has work to do.
func (r *Result) Resumable() bool {
	return r.Stopped || r.Snapshot.Outcomes[OutcomeUnfinished] > 0
}

// Failures is the number of devices that ended (now or earlier) failed or disabled.
func (r *Result) Failures() int {
	s := r.Snapshot
	return s.Outcomes[OutcomeFailed] + s.Outcomes[OutcomeDisabled] + s.SkippedFailures
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
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
	rd, err := manifests.Open(r.Options.ManifestPath)
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
		rows, readErr := readChunk(rd)
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
// end, comes with the rows read before it.
func readChunk(rd *manifests.Reader) ([]manifests.Row, error) {
	rows := make([]manifests.Row, 0, ledger.LookupChunk)
	for len(rows) < ledger.LookupChunk {
		row, err := rd.Next()
		if err != nil {
			return rows, err
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
	return ledger.Device{RegistrationID: id, State: b.State, OperationID: b.OperationID, Fingerprint: b.Fingerprint, FinishedAt: b.FinishedAt}
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
	plan, err := r.Plan(pctx, true)
	if err != nil {
		return r.stoppedEarly(ctx, pctx, err)
	}
	stopPlan()
	r.registerPacer = NewPacer(r.Options.RegisterRate)
	r.pollPacer = NewPacer(r.Options.PollRate)
	r.Stats.total.Store(int64(plan.Work()))
	r.Stats.started.Store(r.now().UnixNano())

	runID, err := r.Ledger.StartRun(ctx, "provision", r.runOptions())
	if err != nil {
		return nil, err
	}
	r.runID = runID
	res := &Result{Plan: plan, RunID: runID}

	stopped, err := r.dispatch(ctx, drain)
	res.Stopped = stopped || ctx.Err() != nil
	res.Snapshot = r.Stats.Snapshot()
	res.ByHub = r.Stats.ByHub()
	res.P50, res.P95 = r.Stats.Percentile(0.50), r.Stats.Percentile(0.95)

	outcome := "completed"
	switch {
	case err != nil:
		outcome = "error: " + err.Error()
	case ctx.Err() != nil:
		outcome = "interrupted"
	case res.Stopped:
		outcome = "stopped"
	}
	counts := map[ledger.State]int{}
	if c, cerr := r.Ledger.Counts(context.WithoutCancel(ctx)); cerr == nil {
		counts = c.ByState
	}
	if ferr := r.Ledger.FinishRun(context.WithoutCancel(ctx), runID, outcome, counts); ferr != nil && err == nil {
		err = ferr
	}
	return res, err
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
	return map[string]string{
		"manifest":       o.ManifestPath,
		"workers":        fmt.Sprint(o.Workers),
		"rate":           fmt.Sprint(o.RegisterRate),
		"poll_rate":      fmt.Sprint(o.PollRate),
		"max_attempts":   fmt.Sprint(o.MaxAttempts),
		"device_timeout": o.DeviceTimeout.String(),
		"retry_failed":   fmt.Sprint(o.RetryFailed),
		"reprovision":    fmt.Sprint(o.Reprovision),
	}
}

// dispatch streams the manifest into a bounded pool of workers. It reports
// whether it stopped early because drain was closed. A worker slot is taken
// before a row is handed out, in a select with drain, so no device starts
// after the user asked to stop.
func (r *Runner) dispatch(ctx context.Context, drain <-chan struct{}) (stopped bool, err error) {
	rd, err := manifests.Open(r.Options.ManifestPath)
	if err != nil {
		return false, err
	}
	defer rd.Close()
	g, gctx := errgroup.WithContext(ctx)
	slots := make(chan struct{}, r.Options.Workers)
loop:
	for {
		rows, readErr := readChunk(rd)
		briefs, err := r.Ledger.Briefs(gctx, rowIDs(rows))
		if err != nil {
			if gctx.Err() == nil {
				g.Go(func() error { return fmt.Errorf("read ledger: %w", err) })
			}
			break
		}
		for _, row := range rows {
			select {
			case <-drain:
				stopped = true
				break loop
			case <-gctx.Done():
				break loop
			case slots <- struct{}{}:
			}
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
		if err != nil {
			return fmt.Errorf("read ledger for device %s: %w", dev.RegistrationID, err)
		}
		if !ok {
			full = ledger.Device{RegistrationID: dev.RegistrationID, State: ledger.StatePending}
		}
		rec = full
		action = Decide(rec, ok, dev.Fingerprint, r.Options.Policy)
	}
	switch action {
	case ActionSkip:
		if rec.State == ledger.StateFailed || rec.State == ledger.StateDisabled {
			r.Stats.skipFailed.Add(1)
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
	w := &work{r: r, rec: rec, dev: dev, d: d, drain: drain, cancel: cancel}
	defer w.stopDeadline()
	w.rec.Fingerprint = dev.Fingerprint
	return w.run(dctx, ctx, action)
}

type step int

const (
	stepRegister step = iota
	stepPoll
	stepLookup
)

// work is one device's state machine for one run.
type work struct {
	r     *Runner
	rec   ledger.Device
	dev   *manifests.Device
	d     *dps.Device
	drain <-chan struct{}

	started  time.Time          // when the first request was sent (after pacing)
	cancel   context.CancelFunc // ends the device's context
	deadline *time.Timer        // fires cancel DeviceTimeout after started
	timedOut atomic.Bool        // the deadline fired
	stopped  bool               // a request may not be sent: stop now

	failures   int           // failed requests this run (429s excepted)
	puts       int           // register PUTs sent this run
	retryAfter time.Duration // server's wish before the next poll or lookup
	asked      int           // polls+lookups sent for the current operation
	lastErr    error
	lastErrMsg string // the last error's message, kept after later successes
}

// run drives the device to a final state, or until its deadline, the run's
// cancellation, a drain before its first request, or its failure budget.
// runCtx is the run's context, to tell a stop from a device timeout.
func (w *work) run(ctx, runCtx context.Context, action Action) error {
	next := stepRegister
	switch action {
	case ActionPoll:
		next = stepPoll
	case ActionLookup:
		next = stepLookup
	}
	for {
		if ctx.Err() != nil || w.stopped || w.failures >= w.r.Options.MaxAttempts {
			return w.giveUp(ctx, runCtx)
		}
		var err error
		var done bool
		switch next {
		case stepRegister:
			if w.puts >= w.r.Options.MaxAttempts {
				// However the answers went, never more billable PUTs per
				// device per run than --max-attempts.
				return w.giveUp(ctx, runCtx)
			}
			next, done, err = w.register(ctx)
		case stepPoll:
			next, done, err = w.poll(ctx)
		case stepLookup:
			next, done, err = w.lookup(ctx)
		}
		if err != nil || done {
			return err
		}
	}
}

// begin waits for the pacer before a request. It reports false when the
// request must not be sent: the device's context ended, or a drain came
// before the device sent anything in this run (it has not started, so it
// is left for the next run).
func (w *work) begin(ctx context.Context, p *Pacer) bool {
	if err := p.Wait(ctx); err != nil {
		// Cancelled, or no token before the context's deadline: either way
		// this device cannot send now.
		w.stopped = true
		return false
	}
	if w.started.IsZero() {
		select {
		case <-w.drain:
			w.stopped = true
			return false
		default:
		}
		w.started = w.r.now()
		w.deadline = time.AfterFunc(w.r.Options.DeviceTimeout, func() {
			w.timedOut.Store(true)
			w.cancel()
		})
	}
	return true
}

func (w *work) stopDeadline() {
	if w.deadline != nil {
		w.deadline.Stop()
	}
}

// elapsed is the device's time from its first request; 0 if none was sent.
func (w *work) elapsed() time.Duration {
	if w.started.IsZero() {
		return 0
	}
	return w.r.now().Sub(w.started)
}

// backoff waits before a retry after a failed request.
func (w *work) backoff(ctx context.Context) {
	if w.failures == 0 {
		return
	}
	d := w.r.Options.Backoff.Delay(w.failures, w.retryAfterOf(w.lastErr))
	w.r.Stats.retries.Add(1)
	w.r.log().Debug("retrying", "device", w.rec.RegistrationID, "in", d.Round(time.Millisecond).String(),
		"failures", w.failures, "max", w.r.Options.MaxAttempts, "last_error", w.lastErrMsg)
	_ = sleep(ctx, d)
}

// noteError copies what an error says into the device's row and tells the
// pacer about throttling. It reports whether the error was a throttle.
func (w *work) noteError(err error, pacer *Pacer) (throttled bool) {
	w.lastErr = err
	defer func() { w.lastErrMsg = w.rec.ErrorMessage }()
	var de *dps.Error
	if !errors.As(err, &de) {
		w.rec.HTTPStatus, w.rec.ErrorCode, w.rec.ErrorMessage = 0, 0, err.Error()
		w.rec.Hint = dps.Hint(err)
		return false
	}
	w.rec.HTTPStatus, w.rec.ErrorCode, w.rec.ErrorMessage = de.HTTPStatus, de.Code, de.Message
	if de.Message == "" && de.Err != nil {
		w.rec.ErrorMessage = de.Err.Error()
	}
	if de.RequestID != "" {
		w.rec.RequestID = de.RequestID
	} else if de.TrackingID != "" {
		w.rec.RequestID = de.TrackingID
	}
	w.rec.Hint = dps.Hint(err)
	// A 429, or a 503 that says when to come back, means the fleet is too
	// fast: slow everyone down, not just this device.
	if de.HTTPStatus == http.StatusTooManyRequests || (de.HTTPStatus == http.StatusServiceUnavailable && de.RetryAfter > 0) {
		w.r.Stats.throttled.Add(1)
		pacer.Throttled(CapRetryAfter(de.RetryAfter, w.r.Options.MaxRetryAfter))
		return de.HTTPStatus == http.StatusTooManyRequests
	}
	return false
}

// failed handles an error from a request after noteError: it records a
// permanent failure (done), returns a fatal error, or counts a retryable
// failure (a 429 is the fleet's pace, not the device's failure, and is not
// counted: the device deadline bounds it).
func (w *work) failed(ctx context.Context, kind string, err error, throttled bool, att ledger.Attempt) (done bool, fatal error) {
	switch dps.Classify(err) {
	case dps.Permanent:
		w.rec.State = ledger.StateFailed
		w.rec.FinishedAt = w.r.now()
		if err := w.put(ctx, att); err != nil {
			return true, err
		}
		w.r.log().Warn("device failed", "device", w.rec.RegistrationID, "op", kind, "status", w.rec.HTTPStatus,
			"code", w.rec.ErrorCode, "request_id", w.rec.RequestID, "error", w.rec.ErrorMessage, "hint", w.rec.Hint)
		w.r.Stats.finish(OutcomeFailed, w.elapsed(), "")
		return true, nil
	case dps.Fatal:
		_ = w.put(ctx, att)
		if h := dps.Hint(err); h != "" {
			return true, fmt.Errorf("%w\nhint: %s", err, h)
		}
		return true, err
	}
	if !throttled {
		w.failures++
	}
	if err := w.put(ctx, att); err != nil {
		return true, err
	}
	return false, nil
}

// refused reports whether err is DPS (or a gateway) answering a request
// with a 4xx status: then the request did not start an operation.
func refused(err error) bool {
	var de *dps.Error
	return errors.As(err, &de) && de.HTTPStatus >= 400 && de.HTTPStatus < 500
}

func (w *work) register(ctx context.Context) (step, bool, error) {
	w.backoff(ctx)
	if !w.begin(ctx, w.r.registerPacer) {
		return stepRegister, false, nil // the loop sees ctx and gives up
	}
	// Record the intent before sending: if we die after the PUT, the next run
	// sees "registering" and asks DPS before registering again.
	w.rec.State = ledger.StateRegistering
	w.rec.Attempts++
	w.rec.OperationID = ""
	if w.rec.FirstAttemptAt.IsZero() {
		w.rec.FirstAttemptAt = w.r.now()
	}
	if err := w.put(ctx); err != nil {
		return 0, true, err
	}
	w.puts++
	w.r.Stats.registers.Add(1)
	resp, err := w.r.Client.Register(ctx, w.d, w.dev.Payload)
	att := w.attempt("register", resp, err)
	if err != nil {
		throttled := w.noteError(err, w.r.registerPacer)
		if !refused(err) && dps.Classify(err) == dps.Retryable {
			// No usable answer — a transport error, a 5xx, or a 2xx whose
			// body was cut: the PUT may have started an operation. Ask DPS
			// (non-billable) before sending another.
			w.failures++
			if err := w.put(ctx, att); err != nil {
				return 0, true, err
			}
			return stepLookup, false, nil
		}
		// DPS refused the request (no operation was started), or the
		// answer is unusable for good (a permanent protocol error).
		w.rec.State = ledger.StateRetryable
		done, ferr := w.failed(ctx, "register", err, throttled, att)
		if done || ferr != nil {
			return 0, true, ferr
		}
		return stepRegister, false, nil
	}
	w.r.registerPacer.Succeeded()
	w.noteResponse(resp)
	op := resp.Operation
	w.rec.State = ledger.StateAssigning
	w.rec.OperationID = op.OperationID
	w.asked = 0
	w.retryAfter = resp.RetryAfter
	if op.Status.Final() && op.RegistrationState != nil {
		return 0, true, w.final(ctx, op.Status, op.RegistrationState, att)
	}
	// The operation id is durable before we poll it.
	if err := w.put(ctx, att); err != nil {
		return 0, true, err
	}
	return stepPoll, false, nil
}

// pollWait waits before a poll or lookup: the server's Retry-After for the
// first one, and at least MinPollInterval between later ones, so a device
// never exceeds DPS's 5 polls per 10 s. It reports false when the request
// must not be sent (see begin).
func (w *work) pollWait(ctx context.Context) bool {
	w.backoff(ctx)
	d := CapRetryAfter(w.retryAfter, w.r.Options.MaxRetryAfter)
	if w.asked > 0 && d < w.r.Options.MinPollInterval {
		d = w.r.Options.MinPollInterval
	}
	if err := sleep(ctx, d); err != nil {
		return false
	}
	return w.begin(ctx, w.r.pollPacer)
}

func (w *work) poll(ctx context.Context) (step, bool, error) {
	if !w.pollWait(ctx) {
		return stepPoll, false, nil
	}
	w.asked++
	w.rec.Polls++
	w.r.Stats.polls.Add(1)
	resp, err := w.r.Client.OperationStatus(ctx, w.d, w.rec.OperationID)
	att := w.attempt("poll", resp, err)
	if err != nil {
		throttled := w.noteError(err, w.r.pollPacer)
		var de *dps.Error
		if errors.As(err, &de) && de.HTTPStatus == http.StatusNotFound {
			// DPS no longer knows the operation: ask for the registration.
			// It counts as a failure, so a server that 404s every poll
			// cannot drive an endless register-poll loop.
			w.failures++
			w.asked = 0
			if err := w.put(ctx, att); err != nil {
				return 0, true, err
			}
			return stepLookup, false, nil
		}
		done, ferr := w.failed(ctx, "poll", err, throttled, att)
		return stepPoll, done, ferr
	}
	w.r.pollPacer.Succeeded()
	w.noteResponse(resp)
	op := resp.Operation
	w.retryAfter = resp.RetryAfter
	if !known(op.Status) {
		return 0, true, w.unknownStatus(ctx, op.Status, att)
	}
	if op.Status.Final() {
		rs := op.RegistrationState
		if rs == nil {
			rs = &dps.DeviceRegistrationResult{RegistrationID: w.rec.RegistrationID, Status: op.Status}
		}
		return 0, true, w.final(ctx, op.Status, rs, att)
	}
	if err := w.put(ctx, att); err != nil {
		return 0, true, err
	}
	return stepPoll, false, nil
}

func (w *work) lookup(ctx context.Context) (step, bool, error) {
	if !w.pollWait(ctx) {
		return stepLookup, false, nil
	}
	w.asked++
	w.rec.Polls++
	w.r.Stats.lookups.Add(1)
	resp, err := w.r.Client.RegistrationStatus(ctx, w.d)
	att := w.attempt("lookup", resp, err)
	if err != nil {
		throttled := w.noteError(err, w.r.pollPacer)
		var de *dps.Error
		if errors.As(err, &de) && de.HTTPStatus == http.StatusNotFound {
			// DPS has no registration for the device: the lost PUT never
			// arrived. Registering now wastes nothing.
			w.rec.State = ledger.StateRetryable
			w.lastErr = nil
			if err := w.put(ctx, att); err != nil {
				return 0, true, err
			}
			return stepRegister, false, nil
		}
		done, ferr := w.failed(ctx, "lookup", err, throttled, att)
		return stepLookup, done, ferr
	}
	w.r.pollPacer.Succeeded()
	w.noteResponse(resp)
	reg := resp.Registration
	w.retryAfter = resp.RetryAfter
	if !known(reg.Status) {
		return 0, true, w.unknownStatus(ctx, reg.Status, att)
	}
	switch {
	case reg.Status.Final():
		return 0, true, w.final(ctx, reg.Status, reg, att)
	case reg.Status == dps.StatusAssigning:
		// DPS is assigning it (our lost PUT arrived); keep asking, never re-PUT.
		if err := w.put(ctx, att); err != nil {
			return 0, true, err
		}
		return stepLookup, false, nil
	default:
		// unassigned: DPS knows the device but holds no assignment.
		w.rec.State = ledger.StateRetryable
		if err := w.put(ctx, att); err != nil {
			return 0, true, err
		}
		return stepRegister, false, nil
	}
}

// known reports whether s is one of the statuses DPS documents.
func known(s dps.Status) bool {
	switch s {
	case dps.StatusUnassigned, dps.StatusAssigning, dps.StatusAssigned, dps.StatusFailed, dps.StatusDisabled:
		return true
	}
	return false
}

// unknownStatus records a status dps-batch does not know as a permanent
// failure, as the DPS SDKs do, rather than polling it until the deadline.
func (w *work) unknownStatus(ctx context.Context, st dps.Status, att ledger.Attempt) error {
	w.rec.State = ledger.StateFailed
	w.rec.FinishedAt = w.r.now()
	w.rec.ErrorCode = 0
	w.rec.ErrorMessage = fmt.Sprintf("DPS answered with status %q, which is not a documented DPS status", st)
	w.rec.Hint = "check the endpoint is a DPS device endpoint and the --api-version is one it supports"
	if err := w.put(ctx, att); err != nil {
		return err
	}
	w.r.log().Warn("device failed", "device", w.rec.RegistrationID, "error", w.rec.ErrorMessage)
	w.r.Stats.finish(OutcomeFailed, w.elapsed(), "")
	return nil
}

// final records a final answer from DPS.
func (w *work) final(ctx context.Context, st dps.Status, rs *dps.DeviceRegistrationResult, att ledger.Attempt) error {
	w.rec.FinishedAt = w.r.now()
	w.rec.Substatus = rs.Substatus
	w.rec.ErrorCode, w.rec.ErrorMessage, w.rec.Hint = rs.ErrorCode, rs.ErrorMessage, ""
	outcome := OutcomeAssigned
	switch st {
	case dps.StatusAssigned:
		w.rec.State = ledger.StateAssigned
		w.rec.AssignedHub, w.rec.DeviceID = rs.AssignedHub, rs.DeviceID
	case dps.StatusDisabled:
		w.rec.State = ledger.StateDisabled
		w.rec.Hint = dps.HintForStatus(st, rs.ErrorCode)
		outcome = OutcomeDisabled
	default:
		w.rec.State = ledger.StateFailed
		w.rec.Hint = dps.HintForStatus(st, rs.ErrorCode)
		outcome = OutcomeFailed
	}
	if err := w.put(ctx, att); err != nil {
		return err
	}
	w.r.log().Debug("device finished", "device", w.rec.RegistrationID, "status", string(st),
		"hub", w.rec.AssignedHub, "attempt", w.rec.Attempts, "request_id", w.rec.RequestID)
	w.r.Stats.finish(outcome, w.elapsed(), w.rec.AssignedHub)
	return nil
}

// giveUp records a device that did not finish in this run: its state stays
// what DPS last told us (registering and assigning remain so, so a re-run
// asks instead of registering again).
func (w *work) giveUp(ctx, runCtx context.Context) error {
	why := "stopped before its first request"
	switch {
	case runCtx.Err() != nil:
		why = "run interrupted"
	case w.timedOut.Load():
		why = fmt.Sprintf("no final answer within --timeout-per-device %s", w.r.Options.DeviceTimeout)
	case w.failures >= w.r.Options.MaxAttempts:
		why = fmt.Sprintf("gave up after %d failed requests (--max-attempts)", w.failures)
	case w.puts >= w.r.Options.MaxAttempts:
		why = fmt.Sprintf("gave up after %d register requests (--max-attempts)", w.puts)
	}
	if w.lastErrMsg != "" {
		why += "; last error: " + w.lastErrMsg
	}
	if w.started.IsZero() {
		// Nothing was sent in this run: leave the row as it was.
		w.r.Stats.finish(OutcomeUnfinished, 0, "")
		return nil
	}
	if w.rec.State == ledger.StatePending {
		w.rec.State = ledger.StateRetryable
	}
	w.rec.ErrorMessage = why
	if err := w.put(ctx); err != nil {
		return err
	}
	// Debug, not Warn: in an outage this would be one line per device; the
	// summary counts them and status/report show each reason.
	w.r.log().Debug("device unfinished; re-run to continue", "device", w.rec.RegistrationID,
		"state", string(w.rec.State), "reason", why)
	w.r.Stats.finish(OutcomeUnfinished, w.elapsed(), "")
	return nil
}

func (w *work) retryAfterOf(err error) time.Duration {
	if err == nil {
		return 0
	}
	return CapRetryAfter(dps.RetryAfter(err), w.r.Options.MaxRetryAfter)
}

func (w *work) noteResponse(resp *dps.Response) {
	w.rec.HTTPStatus = resp.HTTPStatus
	if resp.RequestID != "" {
		w.rec.RequestID = resp.RequestID
	}
	w.lastErr = nil
}

func (w *work) attempt(kind string, resp *dps.Response, err error) ledger.Attempt {
	a := ledger.Attempt{RegistrationID: w.rec.RegistrationID, RunID: w.r.runID, Kind: kind, At: w.r.now()}
	if resp != nil {
		a.HTTPStatus, a.RequestID, a.Latency = resp.HTTPStatus, resp.RequestID, resp.Latency
	}
	var de *dps.Error
	if errors.As(err, &de) {
		a.HTTPStatus, a.ErrorCode, a.RequestID = de.HTTPStatus, de.Code, de.RequestID
	}
	return a
}

// put writes the device row (and attempt log rows) durably. It ignores the
// device's cancellation: what happened at DPS must be recorded even while
// stopping.
func (w *work) put(ctx context.Context, att ...ledger.Attempt) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	w.rec.RunID = w.r.runID
	if err := w.r.Ledger.Put(wctx, w.rec, att...); err != nil {
		return fmt.Errorf("record device %s in ledger: %w", w.rec.RegistrationID, err)
	}
	return nil
}

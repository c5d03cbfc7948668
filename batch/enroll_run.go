package batch

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// EnrollRunner creates, updates or deletes the individual enrollments of
// one manifest's devices (or deregisters them), recording each step in the
// ledger before acting on it.
type EnrollRunner struct {
	Client  ServiceClient
	Ledger  *ledger.Ledger
	Options EnrollOptions
	// Logger receives per-item detail at debug level and warnings; nil discards.
	Logger *slog.Logger
	// Stats are the live counters; Run creates them if nil.
	Stats *EnrollStats
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	pacer     *Pacer
	runID     int64
	validated bool
	succeeded atomic.Bool  // some request got a 2xx: the host and credentials work
	unreached atomic.Int32 // requests in a row that could not connect, before any success

	halts *halter // set by Run; devices halt the run through it

	warns warnLimiter
}

func (r *EnrollRunner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *EnrollRunner) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (r *EnrollRunner) needsCredentials() bool { return r.Options.Mode != EnrollModeDeregister }

// Validate checks the whole manifest before anything is sent: for create,
// update and delete every row must load (X.509 certificate and key, or a
// symmetric_key); for deregister every row needs a valid registration id.
// Duplicates are refused. Problems come back as *ValidationError, or
// *RowsError (deregister's ids, --device-id-from values).
func (r *EnrollRunner) Validate(ctx context.Context) (*manifests.Summary, error) {
	r.Options.setDefaults()
	r.validated = false
	if r.Options.Manifest.GroupKey != nil {
		return nil, errors.New("enrollment runs take no group key: devices of an enrollment group have no individual enrollment")
	}
	if !r.needsCredentials() {
		// Retiring devices needs their ids only: their certificate and
		// key files may be long gone.
		if err := validateIDs(ctx, r.Options.ManifestPath, r.Options.Manifest, r.Options.MaxProblems); err != nil {
			return nil, err
		}
		r.validated = true
		return &manifests.Summary{}, nil
	}
	sum, err := manifests.Validate(ctx, r.Options.ManifestPath, r.Options.Manifest, r.Options.MaxProblems)
	if err != nil {
		return nil, err
	}
	sum.X509 = nil
	if !sum.OK() {
		return sum, &ValidationError{Summary: sum}
	}
	if r.Options.DeviceIDFrom != "" {
		if err := r.validateDeviceIDs(ctx); err != nil {
			return sum, err
		}
	}
	r.validated = true
	return sum, nil
}

// validateIDs checks the rows of a manifest whose credentials are not
// needed (deregister): well-formed rows, valid registration ids, no id
// twice. Problems come back as *RowsError.
func validateIDs(ctx context.Context, path string, opts manifests.Options, maxProblems int) error {
	rd, err := manifests.OpenWith(path, opts)
	if err != nil {
		return err
	}
	defer rd.Close()
	e := &RowsError{}
	add := func(p manifests.Problem) {
		if len(e.Problems) < maxProblems {
			e.Problems = append(e.Problems, p)
		} else {
			e.More++
		}
	}
	seen := map[string]int{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		row, err := rd.Next()
		var p *manifests.Problem
		switch {
		case errors.Is(err, io.EOF):
			if len(e.Problems) > 0 {
				return e
			}
			return nil
		case errors.As(err, &p):
			add(*p)
			continue
		case err != nil:
			return err
		}
		if verr := dps.ValidateRegistrationID(row.RegistrationID, false); verr != nil {
			add(manifests.Problem{Line: row.Line, RegistrationID: row.RegistrationID, Column: "registration_id", Message: verr.Error(),
				Hint: "use the registration ids the devices were enrolled and registered with"})
			continue
		}
		if first, ok := seen[row.RegistrationID]; ok {
			add(manifests.Problem{Line: row.Line, RegistrationID: row.RegistrationID, Column: "registration_id",
				Message: fmt.Sprintf("registration id repeats line %d", first), Hint: "list each device once"})
			continue
		}
		seen[row.RegistrationID] = row.Line
	}
}

// validateDeviceIDs checks the --device-id-from column and its values.
func (r *EnrollRunner) validateDeviceIDs(ctx context.Context) error {
	rd, err := manifests.OpenWith(r.Options.ManifestPath, r.Options.Manifest)
	if err != nil {
		return err
	}
	defer rd.Close()
	col := r.Options.DeviceIDFrom
	found := false
	for _, c := range rd.ExtraColumns() {
		found = found || c == col
	}
	if !found {
		return &RowsError{Problems: []manifests.Problem{{Line: 1, Column: col,
			Message: "--device-id-from names a column the manifest does not have (or one of the manifest's own columns)",
			Hint:    fmt.Sprintf("extra columns in the header: %s", strings.Join(rd.ExtraColumns(), ", "))}}}
	}
	var problems []manifests.Problem
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		row, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		v, _ := row.Extra.Get(col)
		if msg := checkDeviceID(v); msg != "" && len(problems) < r.Options.MaxProblems {
			problems = append(problems, manifests.Problem{Line: row.Line, RegistrationID: row.RegistrationID, Column: col, Message: msg,
				Hint: "IoT Hub device ids are 1-128 characters: letters, digits and - . % _ * ? ! ( ) , : = @ $ ' + (an empty value lets DPS use the registration id)"})
		}
	}
	if len(problems) > 0 {
		return &RowsError{Problems: problems}
	}
	return nil
}

// checkDeviceID returns what is wrong with an IoT Hub device id, or "".
// An empty value is allowed: DPS then uses the registration id.
func checkDeviceID(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 128 {
		return fmt.Sprintf("device id is %d characters long, more than 128", len(s))
	}
	for _, c := range s {
		if c > 127 || !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-.%_*?!(),:=@$'+", c)) {
			return fmt.Sprintf("device id has the character %q, which IoT Hub does not allow", c)
		}
	}
	return ""
}

// Plan reads the manifest and the ledger and counts what a run would do.
// It loads credentials only where the decision needs their fingerprint.
func (r *EnrollRunner) Plan(ctx context.Context) (*EnrollPlan, error) {
	r.Options.setDefaults()
	rd, err := manifests.OpenWith(r.Options.ManifestPath, r.Options.Manifest)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	p := &EnrollPlan{}
	for {
		rows, readErr := readChunk(rd, Shard{})
		recs := map[string]ledger.Enrollment{}
		if r.Ledger != nil && len(rows) > 0 {
			if recs, err = r.Ledger.Enrollments(ctx, rowIDs(rows)); err != nil {
				return nil, err
			}
		}
		for _, row := range rows {
			p.Devices++
			rec, found := recs[row.RegistrationID]
			fp, spec := "", ""
			if found && r.needsCredentials() && rec.State.Enrolled() {
				if it := r.desired(rd, row); it != nil {
					fp, spec = it.fingerprint, it.specHash
				}
			}
			p.ByAction[DecideEnroll(rec, found, fp, spec, r.Options)]++
		}
		if errors.Is(readErr, io.EOF) {
			return p, nil
		}
		if readErr != nil {
			return nil, readErr
		}
	}
}

// desired is the enrollment a manifest row asks for.
type desired struct {
	enrollment  dpsservice.IndividualEnrollment
	attestation string // x509 or symmetricKey
	fingerprint string
	specHash    string
}

// desired loads a row's credentials and builds its enrollment; nil when
// the row no longer loads (its files changed since validation).
func (r *EnrollRunner) desired(rd *manifests.Reader, row manifests.Row) *desired {
	opts := r.Options.Manifest
	opts.SkipSignatureChecks = r.validated
	dev, _ := rd.Load(row, opts)
	if dev == nil {
		return nil
	}
	e := r.Options.Template
	e.RegistrationID = dev.RegistrationID
	e.ETag, e.RegistrationState, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC = "", nil, "", ""
	if r.Options.DeviceIDFrom != "" {
		e.DeviceID, _ = row.Extra.Get(r.Options.DeviceIDFrom)
	}
	d := &desired{fingerprint: dev.Fingerprint}
	switch {
	case dev.Certificate != nil && dev.Certificate.Leaf != nil:
		e.Attestation = dpsservice.X509ClientAttestation(dev.Certificate.Leaf)
		d.attestation = dpsservice.AttestationX509
	case len(dev.SymmetricKey) > 0 && dev.Kind == manifests.KindSymmetricKey:
		e.Attestation = dpsservice.SymmetricKeyAttestationOf(base64.StdEncoding.EncodeToString(dev.SymmetricKey), "")
		d.attestation = dpsservice.AttestationSymmetricKey
	default:
		return nil
	}
	d.enrollment = e
	d.specHash = specHash(e, dev.Fingerprint)
	return d
}

// specHash identifies an enrollment as sent, with its attestation replaced
// by the credential's fingerprint, so the ledger never holds anything
// derived from a key but the fingerprint (itself one-way).
func specHash(e dpsservice.IndividualEnrollment, fingerprint string) string {
	e.Attestation = &dpsservice.AttestationMechanism{Type: fingerprint}
	b, _ := json.Marshal(e)
	sum := sha256.Sum256(append([]byte("dps-batch/enroll/v1\x00"), b...))
	return "spec:" + hex.EncodeToString(sum[:8])
}

// Run does the work for every manifest device that needs it. Closing drain
// stops dispatching: no new request starts; requests in flight complete and
// are recorded. Run returns an error only for validation problems, ledger
// I/O and failures every request would hit (*EnrollStopError); a device's
// failure is data in the ledger.
func (r *EnrollRunner) Run(ctx context.Context, drain <-chan struct{}) (*EnrollResult, error) {
	r.Options.setDefaults()
	if r.Stats == nil {
		r.Stats = &EnrollStats{}
	}
	if !r.validated {
		if _, err := r.Validate(ctx); err != nil {
			return nil, err
		}
	}
	defer func() { r.validated = false }()
	plan, err := r.Plan(ctx)
	if err != nil {
		return nil, err
	}
	r.pacer = NewPacer(r.Options.Rate)
	// A run of a thousand bulk requests has no time to probe its way down
	// to an unknown quota in 10% steps, one 429 each: recover to 75% of
	// the rate that was throttled instead.
	r.pacer.Recover = enrollRecover
	r.Stats.pacer.Store(r.pacer)
	r.succeeded.Store(false)
	r.unreached.Store(0)
	r.Stats.total.Store(int64(plan.Work()))
	r.Stats.started.Store(r.now().UnixNano())
	command := "enroll"
	if r.Options.Mode == EnrollModeDeregister {
		command = "deregister"
	}
	runID, err := r.Ledger.StartRun(ctx, command, r.runOptions())
	if err != nil {
		return nil, err
	}
	r.runID = runID
	res := &EnrollResult{Plan: plan, RunID: runID}

	r.halts = newHalter()
	stop, stopWatch := stopOn(ctx, drain, r.halts, func() { r.Stats.stopping.Store(true) })
	stopped, err := r.dispatch(ctx, stop)
	stopWatch()
	r.flushWarnings()
	if err == nil {
		err = r.haltError()
	}
	res.Snapshot = r.Stats.Snapshot()
	res.Stopped = (stopped || ctx.Err() != nil || r.haltError() != nil) && res.Left() > 0
	res.Rate = r.pacer.Rate()
	if c, cerr := r.Ledger.EnrollmentCounts(context.WithoutCancel(ctx)); cerr == nil {
		res.Counts = c
	}
	outcome := "completed"
	left := res.Left()
	switch {
	case err != nil:
		outcome = "error: " + err.Error()
	case ctx.Err() != nil:
		outcome = fmt.Sprintf("interrupted; %d enrollments left", left)
	case res.Stopped:
		outcome = fmt.Sprintf("stopped; %d enrollments left", left)
	case res.Resumable():
		outcome = fmt.Sprintf("unfinished; %d enrollments left", left)
	}
	counts := map[ledger.State]int{}
	for s, n := range res.Counts.ByState {
		counts[ledger.State("enrollment "+string(s))] = n
	}
	if ferr := r.Ledger.FinishRun(context.WithoutCancel(ctx), runID, outcome, counts); ferr != nil && err == nil {
		err = ferr
	}
	return res, err
}

func (r *EnrollRunner) runOptions() map[string]string {
	o := r.Options
	m := map[string]string{
		"manifest":     o.ManifestPath,
		"mode":         string(o.Mode),
		"workers":      fmt.Sprint(o.Workers),
		"rate":         fmt.Sprint(o.Rate),
		"batch":        fmt.Sprint(o.BatchSize),
		"max_attempts": fmt.Sprint(o.MaxAttempts),
		"retry_failed": fmt.Sprint(o.RetryFailed),
	}
	if o.Mode == EnrollModeDeregister {
		m["enrollments"] = fmt.Sprint(o.DeleteEnrollments)
	}
	if o.DeviceIDFrom != "" {
		m["device_id_from"] = o.DeviceIDFrom
	}
	return m
}

// halt stops the run like a drain does and makes Run return err (the first one).
func (r *EnrollRunner) halt(err error) { r.halts.halt(err) }

func (r *EnrollRunner) haltError() error { return r.halts.Err() }

// warnRepeated logs a warning unless warnsPerKind of the same kind were
// logged already in this run.
func (r *EnrollRunner) warnRepeated(kind, msg string, args ...any) {
	r.warns.warn(r.log(), kind, msg, args...)
}

// flushWarnings logs how many warnings were held back, once per kind.
func (r *EnrollRunner) flushWarnings() {
	r.warns.flush(r.log(), "more enrollments failed the same way; the ledger and report list each one")
}

// enItem is one device's work in a batch.
type enItem struct {
	row    manifests.Row
	rec    ledger.Enrollment
	action EnrollAction
	want   *desired
	// next is the item's next step; op the bulk mode of its next send.
	next     enrollStep
	op       dpsservice.BulkMode
	regNext  bool // deregister: its registration state is still to delete
	conflict bool // a create of it was answered 409 in this run
	failures int
	lastErr  error
	outcome  EnrollOutcome
	finished bool
}

// dispatch streams the manifest into batches of up to BatchSize devices and
// a bounded pool of workers. It reports whether it stopped early (stop closed).
func (r *EnrollRunner) dispatch(ctx context.Context, stop <-chan struct{}) (stopped bool, err error) {
	rd, err := manifests.OpenWith(r.Options.ManifestPath, r.Options.Manifest)
	if err != nil {
		return false, err
	}
	defer rd.Close()
	g, gctx := errgroup.WithContext(ctx)
	slots := make(chan struct{}, r.Options.Workers)
	var batch []*enItem
	launch := func() bool {
		if len(batch) == 0 {
			return true
		}
		select {
		case <-stop:
			for _, it := range batch {
				r.finish(it, EnOutUnfinished)
			}
			batch = nil
			return false
		case <-gctx.Done():
			return false
		case slots <- struct{}{}:
		}
		b := batch
		batch = nil
		g.Go(func() error {
			defer func() { <-slots }()
			return r.runBatch(gctx, stop, rd, b)
		})
		return true
	}
loop:
	for {
		rows, readErr := readChunk(rd, Shard{})
		recs, err := r.Ledger.Enrollments(gctx, rowIDs(rows))
		if err != nil {
			if gctx.Err() == nil {
				g.Go(func() error { return fmt.Errorf("read ledger: %w", err) })
			}
			break
		}
		if err := r.addDevices(gctx, rows); err != nil {
			g.Go(func() error { return err })
			break
		}
		var fresh []ledger.Enrollment
		for _, row := range rows {
			rec, found := recs[row.RegistrationID]
			if !found {
				rec = ledger.Enrollment{RegistrationID: row.RegistrationID, State: ledger.EnrollPending}
				fresh = append(fresh, ledger.Enrollment{RegistrationID: row.RegistrationID, State: ledger.EnrollPending, RunID: r.runID})
			}
			it := &enItem{row: row, rec: rec}
			var fp, spec string
			if found && r.needsCredentials() && rec.State.Enrolled() {
				if it.want = r.desired(rd, row); it.want != nil {
					fp, spec = it.want.fingerprint, it.want.specHash
				}
			}
			it.action = DecideEnroll(rec, found, fp, spec, r.Options)
			switch it.action {
			case EnActSkip:
				r.Stats.outcomes[EnOutSkipped].Add(1)
				continue
			case EnActChanged:
				if err := r.recordChanged(gctx, it); err != nil {
					g.Go(func() error { return err })
					break loop
				}
				continue
			}
			batch = append(batch, it)
			if len(batch) >= r.Options.BatchSize {
				// New devices are in the ledger (pending) before any of
				// them is sent, so status covers every device touched.
				if err := r.Ledger.PutEnrollments(gctx, fresh); err != nil {
					g.Go(func() error { return fmt.Errorf("record enrollments in ledger: %w", err) })
					break loop
				}
				fresh = nil
				if !launch() {
					stopped = true
					break loop
				}
			}
		}
		if err := r.Ledger.PutEnrollments(gctx, fresh); err != nil {
			g.Go(func() error { return fmt.Errorf("record enrollments in ledger: %w", err) })
			break
		}
		if errors.Is(readErr, io.EOF) {
			if !launch() {
				stopped = true
			}
			break
		}
		if readErr != nil {
			g.Go(func() error { return readErr })
			break
		}
	}
	err = g.Wait()
	select {
	case <-stop:
		stopped = true
	default:
	}
	return stopped, err
}

// addDevices adds the devices of rows that the ledger's devices table does
// not know, as pending, when this run creates enrollments: the devices
// provision will register, so status and report show each one's
// registration state (pending until provisioned) beside its enrollment.
func (r *EnrollRunner) addDevices(ctx context.Context, rows []manifests.Row) error {
	if len(rows) == 0 || (r.Options.Mode != EnrollModeCreate && r.Options.Mode != EnrollModeUpdate) {
		return nil
	}
	devs := make([]ledger.Device, len(rows))
	for i, row := range rows {
		devs[i] = ledger.Device{RegistrationID: row.RegistrationID, State: ledger.StatePending, RunID: r.runID}
	}
	if _, err := r.Ledger.AddPending(ctx, devs); err != nil {
		return fmt.Errorf("record devices in ledger: %w", err)
	}
	return nil
}

// recordChanged records a device enrolled with other credentials than the
// manifest now gives: exists-different, without a request.
func (r *EnrollRunner) recordChanged(ctx context.Context, it *enItem) error {
	it.rec.State = ledger.EnrollExistsDifferent
	it.rec.ErrorMessage = fmt.Sprintf("the manifest's credentials changed since this enrollment was made (ledger %s, manifest %s)", it.rec.Fingerprint, it.want.fingerprint)
	it.rec.Hint = "--mode update replaces the enrollment with the manifest's credentials"
	it.rec.FinishedAt = r.now()
	if err := r.put(ctx, it); err != nil {
		return err
	}
	r.finish(it, EnOutExistsDifferent)
	return nil
}

// runBatch does everything for one batch of devices. It returns an error
// only for ledger failures, which stop the run.
func (r *EnrollRunner) runBatch(ctx context.Context, stop <-chan struct{}, rd *manifests.Reader, items []*enItem) error {
	for _, it := range items {
		r.prepare(rd, it)
	}
	bctx, cancel := context.WithTimeout(ctx, r.Options.BatchTimeout)
	defer cancel()
	for round := 0; ; round++ {
		live := r.live(items)
		if len(live) == 0 {
			return nil
		}
		if round > 0 {
			r.backoff(bctx, live)
		}
		if r.stopped(bctx, stop) {
			return r.giveUp(ctx, live, stop)
		}
		// Registration states first (deregister), one request each.
		for _, it := range live {
			if it.regNext {
				if err := r.deleteRegistration(bctx, stop, it); err != nil {
					return err
				}
			}
		}
		// Reads of creates whose answer was lost, or answered 409.
		for _, it := range live {
			if !it.finished && !it.regNext && it.next == enStepCheck {
				if err := r.check(bctx, stop, it); err != nil {
					return err
				}
			}
		}
		// Changes, grouped by mode.
		groups := map[dpsservice.BulkMode][]*enItem{}
		var order []dpsservice.BulkMode
		for _, it := range live {
			if it.finished || it.regNext || it.next != enStepSend {
				continue
			}
			if groups[it.op] == nil {
				order = append(order, it.op)
			}
			groups[it.op] = append(groups[it.op], it)
		}
		for _, mode := range order {
			if err := r.send(bctx, stop, mode, groups[mode]); err != nil {
				return err
			}
		}
		for _, it := range r.live(items) {
			if it.failures >= r.Options.MaxAttempts {
				if err := r.giveUpItem(ctx, it, fmt.Sprintf("gave up after %d failed requests (--max-attempts)", it.failures)); err != nil {
					return err
				}
			}
		}
	}
}

// prepare sets an item's first step from its action.
func (r *EnrollRunner) prepare(rd *manifests.Reader, it *enItem) {
	switch it.action {
	case EnActDeregister:
		it.regNext = !it.rec.Registration.Done()
		if r.Options.DeleteEnrollments && it.rec.State != ledger.EnrollDeleted {
			it.next, it.op = enStepSend, "" // a single DELETE
		} else {
			it.next = enStepDone
		}
		return
	}
	if it.want == nil {
		it.want = r.desired(rd, it.row)
	}
	if it.want == nil {
		// The files changed since validation: record nothing, send nothing.
		r.warnRepeated("load", "manifest row no longer loads; skipped (run again after fixing it)", "device", it.row.RegistrationID)
		r.finish(it, EnOutUnfinished)
		return
	}
	switch it.action {
	case EnActCreate:
		it.next, it.op = enStepSend, dpsservice.BulkCreate
	case EnActUpdate:
		it.next, it.op = enStepSend, dpsservice.BulkUpdate
		if it.rec.ETag != "" {
			it.op = dpsservice.BulkUpdateIfMatchETag
		}
	case EnActCheck:
		it.next = enStepCheck
	case EnActDelete:
		it.next, it.op = enStepSend, dpsservice.BulkDelete
	}
}

// live returns the items with work left.
func (r *EnrollRunner) live(items []*enItem) []*enItem {
	var out []*enItem
	for _, it := range items {
		if !it.finished && (it.regNext || it.next == enStepSend || it.next == enStepCheck) {
			out = append(out, it)
		}
	}
	return out
}

// stopped reports whether no new request may start: the run is stopping
// (drain or halt), or the batch's context ended.
func (r *EnrollRunner) stopped(ctx context.Context, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
	}
	return ctx.Err() != nil
}

// begin waits for the pacer before a request; false means it must not be
// sent (stopping, or the context ended while waiting).
func (r *EnrollRunner) begin(ctx context.Context, stop <-chan struct{}) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := r.pacer.Wait(wctx); err != nil {
		return false
	}
	return !r.stopped(ctx, stop)
}

// backoff waits before a batch's next round, after failures.
func (r *EnrollRunner) backoff(ctx context.Context, live []*enItem) {
	n, ra := 0, time.Duration(0)
	for _, it := range live {
		n = max(n, it.failures)
		if it.lastErr != nil {
			ra = max(ra, CapRetryAfter(dpsservice.RetryAfter(it.lastErr), r.Options.MaxRetryAfter))
		}
	}
	if n == 0 {
		return
	}
	d := r.Options.Backoff.Delay(n, ra)
	r.Stats.retries.Add(1)
	r.log().Debug("retrying", "device", live[0].rec.RegistrationID, "items", len(live), "in", d.Round(time.Millisecond).String(),
		"failures", n, "max", r.Options.MaxAttempts)
	_ = sleep(ctx, d)
}

// noteAnswer tells the pacer and the run's health checks about an answer.
func (r *EnrollRunner) noteAnswer(kind string, start time.Time, err error) {
	if o := r.Options.Observer; o != nil {
		status := http.StatusOK
		if err != nil {
			status = dpsservice.Status(err)
		}
		o.Request(kind, status, time.Since(start))
	}
	if err == nil {
		r.pacer.Succeeded()
		r.succeeded.Store(true)
		r.unreached.Store(0)
		return
	}
	s := dpsservice.Status(err)
	if s == 429 || (s == 503 && dpsservice.RetryAfter(err) > 0) {
		r.Stats.throttled.Add(1)
		r.pacer.Throttled(CapRetryAfter(dpsservice.RetryAfter(err), r.Options.MaxRetryAfter))
	}
	if s != 0 || r.succeeded.Load() {
		r.unreached.Store(0)
		return
	}
	// Nothing has answered yet: a host that refuses every connection is as
	// fatal as one that does not resolve.
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		if r.unreached.Add(1) >= unreachedLimit {
			r.halt(&EnrollStopError{Err: err, Hint: "nothing answered at the service host: check HostName in the connection string (or --service-host), its port, and the network"})
		}
	}
}

// enrollRecover is the enrollment pacer's Recover.
const enrollRecover = 0.75

// unreachedLimit is how many requests in a row may fail to connect, before
// any request succeeded, before the run stops.
const unreachedLimit = 3

// failed records an error against an item and, for fatal ones, halts the run.
func (r *EnrollRunner) stopOn(err error) {
	h := dpsservice.Hint(err)
	r.halt(&EnrollStopError{Err: err, Hint: h})
}

// deleteRegistration deletes one device's registration state.
func (r *EnrollRunner) deleteRegistration(ctx context.Context, stop <-chan struct{}, it *enItem) error {
	if !r.begin(ctx, stop) {
		return nil
	}
	r.Stats.deletes.Add(1)
	start := time.Now()
	err := r.Client.DeleteRegistrationState(ctx, it.rec.RegistrationID, "")
	r.noteAnswer("delete", start, err)
	r.noteError(it, err)
	switch {
	case err == nil:
		it.rec.Registration, it.rec.RegistrationAt = ledger.RegDeleted, r.now()
		it.rec.ErrorMessage, it.rec.Hint = "", ""
		it.regNext = false
		r.Stats.regDeleted.Add(1)
	case dpsNotFound(err):
		it.rec.Registration, it.rec.RegistrationAt = ledger.RegNone, r.now()
		it.rec.ErrorMessage, it.rec.Hint = "", ""
		it.regNext = false
		r.Stats.regNone.Add(1)
	default:
		switch callEvent(err) {
		case EnEvFatal, EnEvFatalNoEffect:
			it.regNext = true
			r.stopOn(err)
			return r.put(ctx, it)
		case EnEvRefused, EnEvETagMismatch:
			it.rec.Registration = ledger.RegFailed
			it.regNext = false
			it.next = enStepDone
			if err := r.put(ctx, it); err != nil {
				return err
			}
			r.warnFailed(it, "delete registration state")
			r.finish(it, EnOutFailed)
			return nil
		default:
			it.failures++
			return r.put(ctx, it)
		}
	}
	if it.next != enStepSend {
		it.next = enStepDone
		if err := r.put(ctx, it); err != nil {
			return err
		}
		r.finish(it, EnOutDeregistered)
		return nil
	}
	return r.put(ctx, it)
}

// check reads an enrollment back and applies what it shows.
func (r *EnrollRunner) check(ctx context.Context, stop <-chan struct{}, it *enItem) error {
	if !r.begin(ctx, stop) {
		return nil
	}
	r.Stats.reads.Add(1)
	it.rec.Reads++
	start := time.Now()
	got, err := r.Client.GetEnrollment(ctx, it.rec.RegistrationID)
	r.noteAnswer("get", start, err)
	ev, why := enrollReadEvent(got, err, it.want.enrollment.Attestation)
	if err != nil {
		r.noteError(it, err)
	} else {
		it.rec.ETag = got.ETag
		it.rec.HTTPStatus = 200
	}
	if ev == EnEvFoundDifferent {
		it.rec.ErrorCode = 0
		it.rec.ErrorMessage = "an enrollment exists for this id with another attestation: " + why
		it.rec.Hint = "not changed; --mode update replaces it with the manifest's (or delete it first)"
	}
	return r.apply(ctx, it, ev, "read")
}

// send sends one change for a group of items: a bulk request of up to
// BatchSize items, or single DELETEs for deregister. The intent is in the
// ledger before the request.
func (r *EnrollRunner) send(ctx context.Context, stop <-chan struct{}, mode dpsservice.BulkMode, items []*enItem) error {
	if mode == "" {
		for _, it := range items {
			if err := r.deleteOne(ctx, stop, it); err != nil {
				return err
			}
		}
		return nil
	}
	if !r.begin(ctx, stop) {
		return nil
	}
	now := r.now()
	payload := make([]dpsservice.IndividualEnrollment, 0, len(items))
	for _, it := range items {
		r.intent(it, mode, now)
		e := it.want.enrollment
		if mode == dpsservice.BulkUpdateIfMatchETag {
			e.ETag = it.rec.ETag
		}
		payload = append(payload, e)
	}
	if err := r.put(ctx, items...); err != nil {
		return err
	}
	r.Stats.bulk.Add(1)
	r.Stats.items.Add(int64(len(items)))
	start := time.Now()
	res, err := r.Client.BulkEnrollments(ctx, mode, payload)
	r.noteAnswer("bulk", start, err)
	if err != nil {
		ev := callEvent(err)
		if (ev == EnEvRefused || ev == EnEvExists || ev == EnEvETagMismatch) && len(items) > 1 {
			// DPS refused the request as a whole (a 400 names no item): send
			// each item alone to find which one it refuses. Nothing of the
			// refused request took effect.
			r.log().Debug("bulk request refused; sending its items one at a time", "items", len(items), "error", err)
			for _, it := range items {
				it.lastErr = err
				if err := r.apply(ctx, it, EnEvNotTaken, "bulk "+string(mode)); err != nil {
					return err
				}
				it.failures-- // not the item's fault yet
			}
			for _, it := range items {
				if err := r.send(ctx, stop, mode, []*enItem{it}); err != nil {
					return err
				}
			}
			return nil
		}
		if ev == EnEvGone {
			// The bulk endpoint itself answered 404: not a DPS service host.
			ev = EnEvFatalNoEffect
		}
		for _, it := range items {
			r.noteError(it, err)
			if err := r.apply(ctx, it, ev, "bulk "+string(mode)); err != nil {
				return err
			}
		}
		return nil
	}
	byID := make(map[string]dpsservice.BulkError, len(res.Errors))
	for _, e := range res.Errors {
		byID[e.ID()] = e
	}
	for _, it := range items {
		it.rec.RequestID = res.RequestID
		e, failed := byID[it.rec.RegistrationID]
		if !failed {
			it.rec.HTTPStatus, it.rec.ErrorCode, it.rec.ErrorMessage, it.rec.Hint = 200, 0, "", ""
			it.lastErr = nil
			if err := r.apply(ctx, it, EnEvDone, "bulk "+string(mode)); err != nil {
				return err
			}
			continue
		}
		it.rec.HTTPStatus, it.rec.ErrorCode, it.rec.ErrorMessage = e.HTTPStatus(), e.ErrorCode, e.ErrorStatus
		it.rec.Hint = dpsservice.HintForCode(e.ErrorCode)
		it.lastErr = &dpsservice.Error{Op: "bulk " + string(mode) + " enrollments", ID: it.rec.RegistrationID, HTTPStatus: e.HTTPStatus(), Code: e.ErrorCode, Message: e.ErrorStatus, RequestID: res.RequestID}
		if err := r.apply(ctx, it, itemEvent(e), "bulk "+string(mode)); err != nil {
			return err
		}
	}
	return nil
}

// deleteOne deletes one enrollment (deregister --enrollments).
func (r *EnrollRunner) deleteOne(ctx context.Context, stop <-chan struct{}, it *enItem) error {
	if !r.begin(ctx, stop) {
		return nil
	}
	r.intent(it, dpsservice.BulkDelete, r.now())
	if err := r.put(ctx, it); err != nil {
		return err
	}
	r.Stats.deletes.Add(1)
	start := time.Now()
	err := r.Client.DeleteEnrollment(ctx, it.rec.RegistrationID, "")
	r.noteAnswer("delete", start, err)
	ev := EnEvDone
	if err != nil {
		r.noteError(it, err)
		ev = callEvent(err)
	} else {
		it.rec.HTTPStatus, it.rec.ErrorCode, it.rec.ErrorMessage, it.rec.Hint = 204, 0, "", ""
	}
	return r.apply(ctx, it, ev, "delete enrollment")
}

// intent marks an item as about to be sent in mode.
func (r *EnrollRunner) intent(it *enItem, mode dpsservice.BulkMode, now time.Time) {
	it.rec.State = ledger.EnrollCreating
	if mode == dpsservice.BulkDelete {
		it.rec.State = ledger.EnrollDeleting
	} else {
		it.rec.Attestation, it.rec.Fingerprint, it.rec.SpecHash = it.want.attestation, it.want.fingerprint, it.want.specHash
	}
	it.rec.Op = string(mode)
	it.rec.IntentAt = now
	it.rec.FinishedAt = time.Time{}
	it.rec.Calls++
}

// noteError copies what an error says into the item's row.
func (r *EnrollRunner) noteError(it *enItem, err error) {
	if err == nil {
		return
	}
	it.lastErr = err
	it.rec.Hint = dpsservice.Hint(err)
	var e *dpsservice.Error
	if errors.As(err, &e) {
		it.rec.HTTPStatus, it.rec.ErrorCode, it.rec.ErrorMessage = e.HTTPStatus, e.Code, e.Message
		if e.Message == "" && e.Err != nil {
			it.rec.ErrorMessage = e.Err.Error()
		}
		if e.RequestID != "" {
			it.rec.RequestID = e.RequestID
		} else if e.TrackingID != "" {
			it.rec.RequestID = e.TrackingID
		}
		return
	}
	it.rec.HTTPStatus, it.rec.ErrorCode, it.rec.ErrorMessage = 0, 0, err.Error()
}

// apply moves an item along the transition for ev and records it.
func (r *EnrollRunner) apply(ctx context.Context, it *enItem, ev EnrollEvent, op string) error {
	t, ok := enrollNext(it.rec.State, ev)
	if !ok {
		_ = r.put(ctx, it)
		return fmt.Errorf("enrollment %s: no transition from state %s on event %s (this is a bug in dps-batch; the ledger is consistent)",
			it.rec.RegistrationID, it.rec.State, ev)
	}
	r.log().Debug("enrollment event", "device", it.rec.RegistrationID, "op", op, "state", string(it.rec.State),
		"event", ev.String(), "next", string(t.Next), "step", t.Step.String())
	if enrollCountsAsFailure(ev) && !(ev == EnEvNotTaken && dpsservice.Status(it.lastErr) == 429) {
		// A 429 is the fleet's pace, not the item's failure: the batch
		// timeout bounds it.
		it.failures++
	}
	switch ev {
	case EnEvExists:
		it.conflict = true
	case EnEvDone, EnEvETagMismatch, EnEvGone:
		// The record changed (or is gone): the etag read before is stale.
		it.rec.ETag = ""
		if ev == EnEvGone && it.op == dpsservice.BulkUpdateIfMatchETag {
			it.op = dpsservice.BulkUpdate
		}
	}
	if ev == EnEvETagMismatch && it.rec.State == ledger.EnrollCreating {
		it.rec.Hint = "the enrollment changed at DPS after dps-batch read it (etag mismatch): check it, then run with --mode update --retry-failed to replace it anyway"
	}
	next := t.Next
	switch next {
	case enStateFromOp:
		switch {
		case it.rec.State == ledger.EnrollDeleting:
			next = ledger.EnrollDeleted
		case it.rec.Op == string(dpsservice.BulkCreate):
			next = ledger.EnrollCreated
		default:
			next = ledger.EnrollUpdated
		}
	case enStateFromCheck:
		next = ledger.EnrollCreated
		if it.conflict {
			next = ledger.EnrollExistsSame
		}
	}
	it.rec.State = next
	switch t.Step {
	case enStepResolve:
		it.next = enStepSend
		if it.rec.Op == string(dpsservice.BulkCreate) {
			it.next = enStepCheck
		}
	case enStepSend:
		it.next = enStepSend
		if it.op == "" && it.action != EnActDeregister {
			it.op = dpsservice.BulkCreate
		}
		if ev == EnEvFoundNone {
			// Read back and not found: create it.
			it.op = dpsservice.BulkCreate
		}
	default:
		it.next = t.Step
	}
	if t.Step == enStepDone {
		it.rec.FinishedAt = r.now()
		if next == ledger.EnrollCreated || next == ledger.EnrollExistsSame || next == ledger.EnrollUpdated || next == ledger.EnrollDeleted {
			if next != ledger.EnrollExistsSame {
				it.rec.ErrorMessage, it.rec.Hint, it.rec.ErrorCode = "", "", 0
			} else {
				it.rec.ErrorMessage, it.rec.Hint = "an enrollment with the same attestation existed already; left as it was", ""
			}
			if next == ledger.EnrollDeleted {
				it.rec.ETag = ""
			}
		}
	}
	if err := r.put(ctx, it); err != nil {
		return err
	}
	switch t.Step {
	case enStepDone:
		r.finish(it, outcomeOf(next, it.action))
		if next == ledger.EnrollFailed || next == ledger.EnrollExistsDifferent {
			r.warnFailed(it, op)
		}
	case enStepStop:
		r.stopOn(it.lastErr)
		it.finished = true
		r.Stats.outcomes[EnOutUnfinished].Add(1)
	}
	return nil
}

// outcomeOf is the run outcome of a final state.
func outcomeOf(s ledger.EnrollState, a EnrollAction) EnrollOutcome {
	switch s {
	case ledger.EnrollCreated:
		return EnOutCreated
	case ledger.EnrollUpdated:
		return EnOutUpdated
	case ledger.EnrollExistsSame:
		return EnOutExistsSame
	case ledger.EnrollExistsDifferent:
		return EnOutExistsDifferent
	case ledger.EnrollDeleted:
		if a == EnActDeregister {
			return EnOutDeregistered
		}
		return EnOutDeleted
	}
	return EnOutFailed
}

func (r *EnrollRunner) warnFailed(it *enItem, op string) {
	r.warnRepeated(fmt.Sprintf("%s %s %d %d", op, it.rec.State, it.rec.HTTPStatus, it.rec.ErrorCode), "enrollment failed",
		"device", it.rec.RegistrationID, "op", op, "state", string(it.rec.State), "status", it.rec.HTTPStatus,
		"code", it.rec.ErrorCode, "error", it.rec.ErrorMessage, "hint", it.rec.Hint)
}

// finish counts an item's outcome once.
func (r *EnrollRunner) finish(it *enItem, o EnrollOutcome) {
	if it.finished {
		return
	}
	it.finished = true
	it.outcome = o
	r.Stats.outcomes[o].Add(1)
}

// giveUp records the items of a batch that stop before finishing.
func (r *EnrollRunner) giveUp(ctx context.Context, items []*enItem, stop <-chan struct{}) error {
	why := "stopped before its next request (the run was asked to stop)"
	switch {
	case ctx.Err() != nil:
		why = "run interrupted"
	case r.haltError() != nil:
		why = "the run stopped: " + r.haltError().Error()
	default:
		select {
		case <-stop:
		default:
			why = fmt.Sprintf("no final answer within the batch timeout (%s)", r.Options.BatchTimeout)
		}
	}
	for _, it := range items {
		if err := r.giveUpItem(ctx, it, why); err != nil {
			return err
		}
	}
	return nil
}

// giveUpItem records one item left for the next run: its state stays what
// the service last told (creating stays creating: the next run reads it
// back first).
func (r *EnrollRunner) giveUpItem(ctx context.Context, it *enItem, why string) error {
	if it.finished {
		return nil
	}
	switch it.rec.State {
	case ledger.EnrollCreating:
		if it.rec.Op == string(dpsservice.BulkCreate) {
			why += "; a create may have taken effect: the next run reads the enrollment before sending it again"
		}
	case ledger.EnrollPending:
		if it.rec.Calls == 0 && it.rec.Reads == 0 && !it.regNext && it.failures == 0 {
			r.finish(it, EnOutUnfinished)
			return nil // nothing was sent: leave the row as it was
		}
	}
	if it.lastErr != nil && it.rec.ErrorMessage != "" && !strings.Contains(why, it.rec.ErrorMessage) {
		why += "; last error: " + it.rec.ErrorMessage
	}
	it.rec.ErrorMessage = why
	if err := r.put(ctx, it); err != nil {
		return err
	}
	r.finish(it, EnOutUnfinished)
	return nil
}

// put writes items' rows durably, even while stopping.
func (r *EnrollRunner) put(ctx context.Context, items ...*enItem) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	rows := make([]ledger.Enrollment, len(items))
	for i, it := range items {
		it.rec.RunID = r.runID
		rows[i] = it.rec
	}
	if err := r.Ledger.PutEnrollments(wctx, rows); err != nil {
		return fmt.Errorf("record enrollment %s in ledger: %w", items[0].rec.RegistrationID, err)
	}
	return nil
}

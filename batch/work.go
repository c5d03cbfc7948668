package batch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// work is one device's requests for one run. It sends what the state
// machine (device.go) says, classifies each answer into an Event and applies
// the transition; every step is in the ledger before the next request.
type work struct {
	r     *Runner
	rec   ledger.Device
	dev   *manifests.Device
	d     *dps.Device
	drain <-chan struct{}
	// fresh ends when the user asks to stop (drain): a device that has sent
	// nothing yet stops waiting for the pacer at once.
	fresh context.Context

	started  time.Time          // when the first request was sent (after pacing)
	cancel   context.CancelFunc // ends the device's context
	deadline *time.Timer        // fires cancel DeviceTimeout after started
	timedOut atomic.Bool        // the deadline fired
	stopped  bool               // a request may not be sent: stop now

	failures   int           // answers that spent the --max-attempts budget this run
	puts       int           // register PUTs sent this run, 429s excepted
	retryAfter time.Duration // server's wish before the next poll or lookup
	asked      int           // polls+lookups sent for the current operation
	opGone     bool          // a poll answered 404 for the recorded operation
	putEnded   bool          // rec.PutAt is when this run's last PUT ended unanswered (not just its intent)
	unanswered bool          // this run's last PUT is counted in Stats.unanswered until DPS shows what it did
	doubted    bool          // a lookup's "nothing" took back the last PUT's billable count
	waitSettle bool          // the last lookup found nothing yet: wait for the settle window
	lastErr    error
	lastErrMsg string // the last error's message, kept after later successes
}

// answer is what one request returned, for apply.
type answer struct {
	kind   string // register, poll or lookup
	err    error
	att    ledger.Attempt
	status dps.Status                    // for EvFinal: the final status
	result *dps.DeviceRegistrationResult // for EvFinal: the registration state
}

// run drives the device until a final state, its deadline, the run's
// cancellation, a drain before its first request, or its failure budget.
// runCtx is the run's context, to tell a stop from a device timeout.
func (w *work) run(ctx, runCtx context.Context, action Action, baseline bool) error {
	next := stepRegister
	switch action {
	case ActionPoll:
		next = stepPoll
	case ActionLookup:
		next = stepLookup
	}
	if baseline {
		w.captureBaseline(ctx)
	}
	for {
		if next == stepAsk {
			next = stepLookup
			if w.rec.OperationID != "" && !w.opGone {
				next = stepPoll
			}
		}
		if ctx.Err() != nil || w.stopped || w.failures >= w.r.Options.MaxAttempts {
			return w.giveUp(ctx, runCtx)
		}
		var err error
		switch next {
		case stepRegister:
			if w.puts >= w.r.Options.MaxAttempts {
				// However the answers went, never more PUTs per device per
				// run than --max-attempts.
				return w.giveUp(ctx, runCtx)
			}
			next, err = w.register(ctx)
		case stepPoll:
			next, err = w.poll(ctx)
		case stepLookup:
			next, err = w.lookup(ctx)
		default:
			return err
		}
		if err != nil || next == stepDone || next == stepStop {
			return err
		}
	}
}

// begin waits for the pacer before a request. It reports false when the
// request must not be sent: the device's context ended, or a drain came
// before a request that would start something new at DPS: the device's
// first request in this run, or a register PUT (a stopping run starts no new
// operation; one DPS is already working on is followed to its answer).
func (w *work) begin(ctx context.Context, p *Pacer, register bool) bool {
	fresh := w.started.IsZero() || register
	wctx := ctx
	if fresh && w.fresh != nil {
		// Such a request must not hold a drain while the fleet waits out a
		// 429 pause.
		wctx = w.fresh
	}
	if err := p.Wait(wctx); err != nil {
		// Cancelled, drained, or no token before the deadline: either way
		// this device cannot send now.
		w.stopped = true
		return false
	}
	if fresh {
		select {
		case <-w.drain:
			w.stopped = true
			return false
		default:
		}
	}
	if w.started.IsZero() {
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
	if w.failures == 0 || w.lastErr == nil {
		return
	}
	d := w.r.Options.Backoff.Delay(w.failures, w.retryAfterOf(w.lastErr))
	w.r.Stats.retries.Add(1)
	w.r.log().Debug("retrying", "device", w.rec.RegistrationID, "in", d.Round(time.Millisecond).String(),
		"failures", w.failures, "max", w.r.Options.MaxAttempts, "last_error", w.lastErrMsg)
	_ = sleep(ctx, d)
}

// settledAt is when no register PUT of ours can still take effect at DPS:
// the settle window after the last one ended. When only its intent time is
// known (it was written before a crash), the request may have run for the
// whole request timeout after it.
func (w *work) settledAt() time.Time {
	if w.rec.PutAt.IsZero() {
		return time.Time{}
	}
	at := w.rec.PutAt.Add(w.r.Options.Settle)
	if !w.putEnded {
		at = at.Add(w.r.Options.RequestTimeout)
	}
	return at
}

// noteError copies what an error says into the device's row and tells the
// pacer about throttling.
func (w *work) noteError(err error, pacer *Pacer) {
	w.lastErr = err
	if errors.Is(err, context.Canceled) && w.lastErrMsg != "" {
		// The device's deadline or the run's stop cut a request short:
		// the error worth recording is the one before.
		return
	}
	defer func() { w.lastErrMsg = w.rec.ErrorMessage }()
	de := dpsError(err)
	if de == nil {
		w.rec.HTTPStatus, w.rec.ErrorCode, w.rec.ErrorMessage = 0, 0, err.Error()
		w.rec.Hint = dps.Hint(err)
		return
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
	}
}

func (w *work) register(ctx context.Context) (step, error) {
	w.backoff(ctx)
	if !w.begin(ctx, w.r.registerPacer, true) {
		return stepRegister, nil // the loop sees the stop and gives up
	}
	// Record the intent before sending: if we die after the PUT, the next run
	// sees "registering" and asks DPS before registering again.
	now := w.r.now()
	w.rec.State = ledger.StateRegistering
	w.rec.Attempts++ // taken back below if DPS refuses the request
	w.rec.OperationID = ""
	w.rec.PutAt = now
	// What this request carries decides what its answer must bring home,
	// whatever the flags of the run that receives it.
	w.rec.CSRSent, w.rec.IssuedChain = w.issuing(), ""
	if w.r.Options.Policy.Campaign != 0 {
		w.rec.CampaignID = w.r.Options.Policy.Campaign
	}
	if w.rec.FirstAttemptAt.IsZero() {
		w.rec.FirstAttemptAt = now
	}
	w.opGone, w.putEnded, w.waitSettle = false, false, false
	if err := w.put(ctx); err != nil {
		return stepStop, err
	}
	w.r.Stats.registerRequests.Add(1)
	var csr []byte
	if w.issuing() {
		csr = w.dev.CSR
	}
	resp, err := w.r.Client.RegisterWithCSR(ctx, w.d, w.dev.Payload, csr)
	a := answer{kind: "register", err: err, att: w.attempt("register", resp, err)}
	ev := registerEvent(resp, err)
	if err != nil {
		w.noteError(err, w.r.registerPacer)
	} else {
		w.r.registerPacer.Succeeded()
		w.noteResponse(resp)
	}
	if ev != EvThrottled {
		w.puts++
	}
	switch ev {
	case EvAccepted, EvFinal:
		w.r.Stats.registers.Add(1)
		op := resp.Operation
		w.rec.OperationID = op.OperationID
		w.asked = 0
		w.retryAfter = resp.RetryAfter
		a.status, a.result = op.Status, op.RegistrationState
	case EvNoAnswer, EvFatal:
		w.r.Stats.unanswered.Add(1)
		w.unanswered = true
		w.rec.PutAt = w.r.now()
		w.putEnded = true
	case EvInProgress:
		w.r.Stats.conflicts.Add(1)
		w.rec.Attempts--
	default: // refused, not taken, throttled: DPS did not accept it
		w.rec.Attempts--
	}
	return w.apply(ctx, ev, a)
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
	return w.begin(ctx, w.r.pollPacer, false)
}

func (w *work) poll(ctx context.Context) (step, error) {
	if !w.pollWait(ctx) {
		return stepPoll, nil
	}
	w.asked++
	w.rec.Polls++
	w.r.Stats.polls.Add(1)
	resp, err := w.r.Client.OperationStatus(ctx, w.d, w.rec.OperationID)
	a := answer{kind: "poll", err: err, att: w.attempt("poll", resp, err)}
	ev := pollEvent(resp, err)
	if err != nil {
		w.noteError(err, w.r.pollPacer)
	} else {
		w.r.pollPacer.Succeeded()
		w.noteResponse(resp)
		w.retryAfter = resp.RetryAfter
		op := resp.Operation
		a.status, a.result = op.Status, op.RegistrationState
		if a.result == nil {
			a.result = &dps.DeviceRegistrationResult{RegistrationID: w.rec.RegistrationID, Status: op.Status}
		}
		if ev == EvRefused {
			w.undocumented(op.Status)
		}
	}
	if ev == EvOpGone {
		w.opGone = true
		w.asked = 0
	}
	return w.apply(ctx, ev, a)
}

func (w *work) lookup(ctx context.Context) (step, error) {
	if w.waitSettle {
		// A lost PUT may still take effect until the settle window ends.
		if err := sleep(ctx, time.Until(w.settledAt())); err != nil {
			return stepLookup, nil
		}
		w.waitSettle = false
	}
	if !w.pollWait(ctx) {
		return stepLookup, nil
	}
	w.asked++
	w.rec.Polls++
	w.r.Stats.lookups.Add(1)
	resp, err := w.r.Client.RegistrationStatus(ctx, w.d)
	a := answer{kind: "lookup", err: err, att: w.attempt("lookup", resp, err)}
	nothing := EvNothing
	switch {
	case w.rec.State == ledger.StateAssigning && w.opGone:
		nothing = EvLost
	case w.r.now().Before(w.settledAt()):
		nothing = EvNothingYet
	}
	ev := lookupEvent(resp, err, w.rec.Record, nothing)
	if err != nil {
		w.noteError(err, w.r.pollPacer)
	} else {
		w.r.pollPacer.Succeeded()
		w.noteResponse(resp)
		w.retryAfter = resp.RetryAfter
		a.status, a.result = resp.Registration.Status, resp.Registration
		if ev == EvRefused {
			w.undocumented(resp.Registration.Status)
		}
	}
	switch ev {
	case EvNothing:
		w.lastErr = nil // DPS answered; nothing to back off from
	case EvNothingYet:
		w.waitSettle = true
		w.lastErr = nil
	}
	return w.apply(ctx, ev, a)
}

// captureBaseline looks up the registration record of a device that a
// campaign registers again and whose ledger row has none (written by an
// older dps-batch): the record DPS shows now is the old one, which a lookup
// during the campaign must not take for the campaign's answer. It is not
// billable; if it fails, the device is registered without a baseline.
func (w *work) captureBaseline(ctx context.Context) {
	if !w.pollWait(ctx) {
		return
	}
	w.rec.Polls++
	w.r.Stats.lookups.Add(1)
	resp, err := w.r.Client.RegistrationStatus(ctx, w.d)
	att := w.attempt("lookup", resp, err)
	if err == nil && resp.Registration.Status.Final() {
		w.rec.Record = recordOf(resp.Registration)
	}
	if err != nil {
		w.r.log().Debug("baseline lookup failed; registering without one", "device", w.rec.RegistrationID, "error", err)
	}
	if perr := w.put(ctx, att); perr != nil {
		w.r.log().Warn("record baseline lookup", "device", w.rec.RegistrationID, "error", perr)
	}
	w.asked = 0
	w.retryAfter = 0
}

// undocumented notes a status DPS does not document; the device is recorded
// failed, as the DPS SDKs do, rather than polled until its deadline.
func (w *work) undocumented(st dps.Status) {
	w.rec.ErrorCode = 0
	w.rec.ErrorMessage = fmt.Sprintf("DPS answered with status %q, which is not a documented DPS status", st)
	w.rec.Hint = "check the endpoint is a DPS device endpoint and the --api-version is one it supports"
}

// apply moves the device along the transition for ev and records it. It
// returns the next step, or an error that stops the run.
func (w *work) apply(ctx context.Context, ev Event, a answer) (step, error) {
	t, ok := next(w.rec.State, ev)
	if !ok {
		// The table says this cannot happen; stop rather than guess.
		_ = w.put(ctx, a.att)
		return stepStop, fmt.Errorf("device %s: no transition from state %s on event %s (this is a bug in dps-batch; the ledger is consistent)",
			w.rec.RegistrationID, w.rec.State, ev)
	}
	w.r.log().Debug("device event", "device", w.rec.RegistrationID, "op", a.kind, "state", string(w.rec.State),
		"event", ev.String(), "next", string(t.Next), "step", t.Step.String())
	if countsAsFailure(ev) {
		w.failures++
	}
	w.settleBilling(ev, a)
	var trip *SystemicError
	switch {
	case a.err == nil:
		w.r.fuse.succeeded()
	case ev == EvNothing || ev == EvNothingYet || ev == EvLost, a.kind != "register" && httpStatus(a.err) == http.StatusNotFound:
		// A poll or lookup DPS answered with "not found": about this
		// device's operation or registration, not about the run's setup.
	default:
		trip = w.r.fuse.failure(w.rec.RegistrationID, a.err, t.Next == ledger.StateFailed)
	}
	switch t.Next {
	case stateFromAnswer:
		return stepDone, w.final(ctx, a.status, a.result, a.att)
	case ledger.StateFailed:
		if ev == EvLost {
			w.rec.ErrorMessage = fmt.Sprintf("DPS accepted operation %s, then no longer knew it, and shows no registration for the device", w.rec.OperationID)
			w.rec.Hint = "check the registration in DPS (it may have been deleted); --retry-failed registers the device again (billable)"
		}
		if err := w.fail(ctx, a.kind, a.att); err != nil {
			return stepStop, err
		}
		if trip != nil {
			w.r.halt(trip)
		}
		return stepDone, nil
	}
	w.rec.State = t.Next
	if err := w.put(ctx, a.att); err != nil {
		return stepStop, err
	}
	if trip != nil {
		w.r.halt(trip)
	}
	if t.Step == stepStop {
		// Every device would hit this error: the run halts; this device's
		// state is recorded, the others' requests in flight complete.
		err := a.err
		if h := dps.Hint(err); h != "" {
			err = fmt.Errorf("%w\nhint: %s", err, h)
		}
		w.r.halt(err)
		return stepStop, nil
	}
	return t.Step, nil
}

// settleBilling updates what is known of a registering device's last PUT
// once DPS shows what it did: accepted (a lookup shows an operation or a new
// record; a 409203 after our unanswered PUT, most likely its operation), or
// not (nothing after the settle window). The ledger's attempts and the run's
// counts then follow what took effect at DPS, not what was sent.
func (w *work) settleBilling(ev Event, a answer) {
	if w.rec.State != ledger.StateRegistering {
		return
	}
	resolve := func(accepted bool) {
		if w.unanswered {
			w.unanswered = false
			w.r.Stats.unanswered.Add(-1)
			if accepted {
				w.r.Stats.registers.Add(1)
			}
		}
	}
	switch {
	case ev == EvNothing:
		// The PUT that made the device registering did not take effect.
		w.rec.Attempts = max(w.rec.Attempts-1, 0)
		resolve(false)
		w.doubted = true
	case a.kind == "lookup" && (ev == EvRunning || ev == EvFinal):
		resolve(true)
	case ev == EvInProgress:
		if w.unanswered {
			resolve(true)
		} else if w.doubted {
			// The operation a lookup did not show (DPS may hide running
			// ones) was most likely that PUT's after all.
			w.doubted = false
			w.rec.Attempts++
			w.r.Stats.registers.Add(1)
		}
	}
}

// fail records a permanent failure.
func (w *work) fail(ctx context.Context, kind string, att ledger.Attempt) error {
	w.rec.State = ledger.StateFailed
	w.rec.FinishedAt = w.r.now()
	w.rec.PutAt = time.Time{}
	if err := w.put(ctx, att); err != nil {
		return err
	}
	w.r.warnRepeated(fmt.Sprintf("%s %d %d %s", kind, w.rec.HTTPStatus, w.rec.ErrorCode, w.rec.Hint), "device failed",
		"device", w.rec.RegistrationID, "op", kind, "status", w.rec.HTTPStatus,
		"code", w.rec.ErrorCode, "request_id", w.rec.RequestID, "error", w.rec.ErrorMessage, "hint", w.rec.Hint)
	w.r.Stats.finish(OutcomeFailed, w.elapsed(), "")
	return nil
}

// final records a final answer from DPS, and the record it describes, so a
// later lookup that shows this same record is known to be old.
func (w *work) final(ctx context.Context, st dps.Status, rs *dps.DeviceRegistrationResult, att ledger.Attempt) error {
	if rs == nil {
		rs = &dps.DeviceRegistrationResult{RegistrationID: w.rec.RegistrationID, Status: st}
	}
	issued, lostWhy := issuedStep(-1), ""
	if st == dps.StatusAssigned && w.rec.CSRSent {
		// The chain must be durable before the ledger says assigned.
		var err error
		if issued, lostWhy, err = w.keepIssued(ctx, rs, &att); err != nil {
			return err
		}
		if issued == issuedKept {
			// Left as it was (assigning or registering), the chain in the
			// ledger: the next run writes the file.
			if err := w.put(ctx, att); err != nil {
				return err
			}
			w.r.Stats.finish(OutcomeUnfinished, 0, "")
			return nil
		}
	}
	w.rec.FinishedAt = w.r.now()
	w.rec.PutAt = time.Time{}
	w.rec.Record = recordOf(rs)
	w.rec.Substatus = rs.Substatus
	w.rec.ReturnedPayload = ledger.KeptPayload(rs.Payload) // what DPS returned to flash: a JSON object ≤ 16 KB, else ""
	w.rec.ErrorCode, w.rec.ErrorMessage, w.rec.Hint = rs.ErrorCode, rs.ErrorMessage, ""
	w.rec.AssignedHub, w.rec.DeviceID = "", ""
	outcome := OutcomeAssigned
	switch st {
	case dps.StatusAssigned:
		w.rec.State = ledger.StateAssigned
		w.rec.AssignedHub, w.rec.DeviceID = rs.AssignedHub, rs.DeviceID
		switch issued {
		case issuedLost:
			w.rec.State = ledger.StateIssuedLost
			w.rec.ErrorMessage, w.rec.Hint = lostWhy, reissueHint
			if c := w.r.Options.Policy.Campaign; c != 0 {
				// A campaign registers a device once: only a new one
				// registers it again.
				w.rec.Hint = fmt.Sprintf("DPS returns an issued certificate only once, and campaign #%d already registered this device: "+
					"run the same provision command with --reissue --new-campaign to register it again with its CSR (billable)", c)
			}
			outcome = OutcomeIssuedLost
			w.r.Stats.certsLost.Add(1)
		case issuedWritten:
			w.r.Stats.certsWritten.Add(1)
		}
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
	if outcome == OutcomeIssuedLost {
		w.r.warnRepeated("issued-lost", "issued certificate lost", "device", w.rec.RegistrationID, "error", w.rec.ErrorMessage, "hint", w.rec.Hint)
	}
	w.r.log().Debug("device finished", "device", w.rec.RegistrationID, "status", string(st),
		"hub", w.rec.AssignedHub, "attempt", w.rec.Attempts, "request_id", w.rec.RequestID)
	hub := w.rec.AssignedHub
	if outcome == OutcomeIssuedLost {
		hub = "" // counted per hub with the devices that can connect to it, as status does
	}
	w.r.Stats.finish(outcome, w.elapsed(), hub)
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
	case w.stopped && !w.started.IsZero():
		why = "stopped before its next register request (the run was asked to stop)"
	case w.timedOut.Load():
		why = fmt.Sprintf("no final answer within --timeout-per-device %s", w.r.Options.DeviceTimeout)
	case w.failures >= w.r.Options.MaxAttempts:
		why = fmt.Sprintf("gave up after %d failed requests (--max-attempts)", w.failures)
	case w.puts >= w.r.Options.MaxAttempts:
		why = fmt.Sprintf("gave up after %d register requests (--max-attempts)", w.puts)
	}
	switch w.rec.State {
	case ledger.StateRegistering:
		why += "; a register request may have taken effect: the next run looks the device up before registering it"
	case ledger.StateAssigning:
		why += "; DPS accepted an operation: the next run follows it, without registering again"
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
	if de := dpsError(err); de != nil {
		a.HTTPStatus, a.ErrorCode, a.RequestID = de.HTTPStatus, de.Code, de.RequestID
	}
	if o := w.r.Stats.observer; o != nil {
		o.Request(kind, a.HTTPStatus, a.Latency)
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
	if len(att) == 1 && att[0].Kind == "" {
		att = nil // logged with an earlier write of the same answer
	}
	if err := w.r.Ledger.Put(wctx, w.rec, att...); err != nil {
		return fmt.Errorf("record device %s in ledger: %w", w.rec.RegistrationID, err)
	}
	return nil
}

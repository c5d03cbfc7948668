package batch

import (
	"errors"
	"net/http"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
)

// This file is the device state machine: what each answer from DPS means
// for a device, and the one table of what the runner does next. The states
// are the ledger's (ledger.State); a device in pending, retryable or a final
// state that is to be registered is first written as registering (the intent,
// durable before the PUT), so every answer arrives in registering or
// assigning.
//
// Exactly once rests on three rules the table keeps:
//   - a register PUT is sent only when no earlier PUT of ours can still take
//     effect: the last one was refused (DPS answered 4xx, or it never left
//     this machine), or DPS shows nothing newer than the last record we
//     recorded and the last PUT is older than the settle window;
//   - an operation DPS proved (an operation id, a 409203, a lookup showing
//     assigning) is followed to its end by polls and lookups, never by a PUT;
//   - a lookup counts as "nothing there" only when DPS itself says so (404
//     with errorCode 404201), or shows the very record we recorded at the
//     last final answer (same etag): an old answer, not this registration's.

// Event is what one request told the runner about a device.
type Event int

// The events. Register events come from the answer to a register PUT; the
// others from a poll or a lookup.
const (
	// EvAccepted: the PUT was answered 2xx with an operation id.
	EvAccepted Event = iota + 1
	// EvRefused: DPS refused the request for good (400, 401, 404 on a PUT,
	// a status DPS does not document): no operation was started, and
	// retrying cannot fix it.
	EvRefused
	// EvNotTaken: the PUT was refused, retryably, before it could take
	// effect: 408, a connection that could not be made, a TLS handshake
	// that failed.
	EvNotTaken
	// EvThrottled: the PUT was answered 429: not accepted.
	EvThrottled
	// EvInProgress: the PUT was answered 409203: an operation for this
	// registration id is running, ours (whose answer was lost) or another
	// client's.
	EvInProgress
	// EvNoAnswer: the PUT got no usable answer (timeout, reset, 5xx, a 2xx
	// cut short or without operation id): it may have taken effect.
	EvNoAnswer
	// EvRunning: DPS shows an operation running (poll 202, or a lookup
	// with status assigning).
	EvRunning
	// EvFinal: a final answer (assigned, failed, disabled) from a poll of
	// our operation, or a lookup showing a record newer than the one the
	// ledger holds.
	EvFinal
	// EvOpGone: a poll answered 404: DPS no longer knows the operation.
	EvOpGone
	// EvNothing: a lookup shows nothing newer than the ledger's record (404
	// with 404201, the same record as last time, or unassigned), and no
	// register PUT of ours can still take effect (settle window passed).
	EvNothing
	// EvNothingYet: as EvNothing, but within the settle window of a PUT
	// whose answer was lost: it may still take effect.
	EvNothingYet
	// EvLost: a lookup shows nothing for a device whose operation DPS
	// accepted and then forgot (a poll answered 404).
	EvLost
	// EvUndecided: an answer that decides nothing: 5xx, timeout, 429 on a
	// poll or lookup, a 404 without DPS's 404201, an unusable body.
	EvUndecided
	// EvFatal: a failure every device will hit (the server is not trusted,
	// not TLS, redirects); the request may have taken effect.
	EvFatal
	// EvFatalNoEffect: as EvFatal, but the request never reached DPS.
	EvFatalNoEffect

	numEvents = iota
)

var eventNames = [...]string{"", "accepted", "refused", "not-taken", "throttled", "in-progress", "no-answer",
	"running", "final", "op-gone", "nothing", "nothing-yet", "lost", "undecided", "fatal", "fatal-no-effect"}

func (e Event) String() string {
	if e > 0 && int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "event?"
}

// Events returns every event, in declaration order.
func Events() []Event {
	out := make([]Event, 0, numEvents)
	for e := EvAccepted; e <= Event(numEvents); e++ {
		out = append(out, e)
	}
	return out
}

// step is what a device does next.
type step int

const (
	stepRegister step = iota + 1 // send a register PUT (billable)
	stepPoll                     // poll the recorded operation
	stepLookup                   // look the registration up (not billable)
	stepAsk                      // poll if the operation id is known and alive, else look up
	stepDone                     // the device reached a final state
	stepStop                     // fatal: stop the run; the state is kept for the next one
)

var stepNames = [...]string{"", "register", "poll", "lookup", "ask", "done", "stop"}

func (s step) String() string { return stepNames[s] }

// stateFromAnswer in a transition means: the final state DPS answered
// (assigned, failed or disabled).
const stateFromAnswer ledger.State = "(from the answer)"

// Transition is one row of the table: in state State, after Event, the
// device moves to Next and does Step. Why says why that is safe.
type Transition struct {
	Next ledger.State
	Step step
	Why  string
}

type transitionKey struct {
	state ledger.State
	event Event
}

// transitions is the device state machine. A (state, event) pair missing
// from it cannot happen: a register event needs a PUT, which is only sent in
// registering; a poll needs an operation id, which only assigning has.
var transitions = map[transitionKey]Transition{
	// A register PUT was sent (or was about to be) and its answer arrived.
	{ledger.StateRegistering, EvAccepted}:      {ledger.StateAssigning, stepPoll, "DPS gave an operation id; it is in the ledger before the first poll"},
	{ledger.StateRegistering, EvFinal}:         {stateFromAnswer, stepDone, "a final answer to our PUT, or a lookup showing a record newer than the last one recorded"},
	{ledger.StateRegistering, EvRefused}:       {ledger.StateFailed, stepDone, "DPS refused the request: no operation started, and sending it again cannot succeed"},
	{ledger.StateRegistering, EvNotTaken}:      {ledger.StateRetryable, stepRegister, "the PUT was refused before it could take effect: another PUT wastes nothing"},
	{ledger.StateRegistering, EvThrottled}:     {ledger.StateRetryable, stepRegister, "429: DPS did not accept the PUT; the whole fleet pauses, then it is sent again"},
	{ledger.StateRegistering, EvInProgress}:    {ledger.StateAssigning, stepLookup, "409203 proves an operation is running: another PUT would be a second registration once it ends, so look up until DPS shows its result"},
	{ledger.StateRegistering, EvNoAnswer}:      {ledger.StateRegistering, stepLookup, "the PUT may have taken effect: ask DPS (not billable) before any other PUT"},
	{ledger.StateRegistering, EvRunning}:       {ledger.StateAssigning, stepLookup, "DPS shows an operation running: follow it with lookups, never a PUT"},
	{ledger.StateRegistering, EvNothing}:       {ledger.StateRetryable, stepRegister, "DPS shows nothing newer than our last record and our last PUT is older than the settle window: it did not take effect"},
	{ledger.StateRegistering, EvNothingYet}:    {ledger.StateRegistering, stepLookup, "DPS shows nothing yet, but the lost PUT may still take effect: wait for the settle window, then ask again"},
	{ledger.StateRegistering, EvUndecided}:     {ledger.StateRegistering, stepLookup, "the lookup decided nothing: ask again (counts against --max-attempts)"},
	{ledger.StateRegistering, EvFatal}:         {ledger.StateRegistering, stepStop, "the run stops; the PUT may have been sent, so the next run looks up first"},
	{ledger.StateRegistering, EvFatalNoEffect}: {ledger.StateRetryable, stepStop, "the run stops; the PUT never reached DPS, so the next run may send it"},

	// DPS accepted an operation (an operation id, a 409203, a lookup showing
	// assigning): it is followed to its end, never registered again.
	{ledger.StateAssigning, EvRunning}:       {ledger.StateAssigning, stepAsk, "the operation is still running: ask again after Retry-After"},
	{ledger.StateAssigning, EvFinal}:         {stateFromAnswer, stepDone, "the operation's final answer"},
	{ledger.StateAssigning, EvOpGone}:        {ledger.StateAssigning, stepLookup, "DPS no longer knows the operation: look the registration up; never PUT, DPS accepted one"},
	{ledger.StateAssigning, EvNothing}:       {ledger.StateAssigning, stepLookup, "an operation was proven but DPS shows no result yet (it may hide running operations): keep looking, never PUT"},
	{ledger.StateAssigning, EvNothingYet}:    {ledger.StateAssigning, stepLookup, "an operation was proven but DPS shows no result yet: keep looking, never PUT"},
	{ledger.StateAssigning, EvLost}:          {ledger.StateFailed, stepDone, "DPS accepted an operation, forgot it and shows no registration (deleted?): registering again is the operator's call (--retry-failed)"},
	{ledger.StateAssigning, EvUndecided}:     {ledger.StateAssigning, stepAsk, "the answer decided nothing: ask again (counts against --max-attempts)"},
	{ledger.StateAssigning, EvRefused}:       {ledger.StateFailed, stepDone, "DPS refused the device's poll or lookup for good (credentials, a status it does not document)"},
	{ledger.StateAssigning, EvFatal}:         {ledger.StateAssigning, stepStop, "the run stops; the operation id stays for the next run"},
	{ledger.StateAssigning, EvFatalNoEffect}: {ledger.StateAssigning, stepStop, "the run stops; the operation id stays for the next run"},
}

// Transitions returns the table, for documentation and tests.
func Transitions() map[transitionKey]Transition { return transitions }

// next returns the transition for ev in state st; ok is false for a pair
// that cannot happen.
func next(st ledger.State, ev Event) (Transition, bool) {
	t, ok := transitions[transitionKey{st, ev}]
	return t, ok
}

// countsAsFailure reports whether ev spends the device's --max-attempts
// budget: answers that leave the device no further, so that a server that
// keeps answering them cannot hold a device forever.
func countsAsFailure(ev Event) bool {
	switch ev {
	case EvNoAnswer, EvNotTaken, EvUndecided, EvOpGone:
		return true
	}
	return false
}

// registerEvent classifies the answer to a register PUT.
func registerEvent(resp *dps.Response, err error) Event {
	if err == nil {
		if op := resp.Operation; op.Status.Final() && op.RegistrationState != nil {
			return EvFinal
		}
		return EvAccepted
	}
	switch dps.MayHaveTakenEffect(err) {
	case dps.InProgress:
		return EvInProgress
	case dps.NoEffect:
		switch dps.Classify(err) {
		case dps.Fatal:
			return EvFatalNoEffect
		case dps.Permanent:
			return EvRefused
		}
		if httpStatus(err) == http.StatusTooManyRequests {
			return EvThrottled
		}
		return EvNotTaken
	}
	if dps.Classify(err) == dps.Fatal {
		return EvFatal
	}
	return EvNoAnswer
}

// pollEvent classifies the answer to a poll of the device's operation.
func pollEvent(resp *dps.Response, err error) Event {
	if err != nil {
		return readEvent(err, EvOpGone)
	}
	switch st := resp.Operation.Status; {
	case !known(st):
		return EvRefused
	case st.Final():
		return EvFinal
	}
	return EvRunning
}

// lookupEvent classifies the answer to a status lookup. last is the record
// of the ledger's last final answer; nothing is what "DPS shows nothing new"
// means for this device now (EvNothing, EvNothingYet or EvLost).
func lookupEvent(resp *dps.Response, err error, last ledger.Record, nothing Event) Event {
	if err != nil {
		if de := dpsError(err); de != nil && de.HTTPStatus == http.StatusNotFound && de.Code == dps.CodeNotFound {
			// DPS itself says it has no registration for the id.
			return nothing
		}
		return readEvent(err, EvUndecided)
	}
	reg := resp.Registration
	switch {
	case !known(reg.Status):
		return EvRefused
	case reg.Status == dps.StatusAssigning:
		return EvRunning
	case reg.Status == dps.StatusUnassigned:
		return nothing
	case last.Same(recordOf(reg)):
		// The record we recorded at the last final answer: an old answer.
		return nothing
	}
	return EvFinal
}

// readEvent classifies a failed poll or lookup; notFound is the event for a
// plain 404.
func readEvent(err error, notFound Event) Event {
	switch dps.Classify(err) {
	case dps.Fatal:
		if dps.MayHaveTakenEffect(err) == dps.NoEffect {
			return EvFatalNoEffect
		}
		return EvFatal
	case dps.Permanent:
		de := dpsError(err)
		switch {
		case de != nil && de.HTTPStatus == http.StatusNotFound:
			// Not DPS's "registration not found" (that is handled by the
			// caller): a proxy, a gateway, a route DPS does not have.
			return notFound
		case de != nil && de.HTTPStatus >= 400 && de.HTTPStatus < 500:
			return EvRefused
		}
		// A 2xx whose body is unusable, or a request this client refused
		// to send: nothing learned.
		return EvUndecided
	}
	return EvUndecided
}

// recordOf identifies the registration record a result describes.
func recordOf(rs *dps.DeviceRegistrationResult) ledger.Record {
	if rs == nil {
		return ledger.Record{}
	}
	return ledger.Record{ETag: rs.ETag, Updated: rs.LastUpdatedDateTimeUTC, Created: rs.CreatedDateTimeUTC}
}

func dpsError(err error) *dps.Error {
	var de *dps.Error
	if errors.As(err, &de) {
		return de
	}
	return nil
}

func httpStatus(err error) int {
	if de := dpsError(err); de != nil {
		return de.HTTPStatus
	}
	return 0
}

// known reports whether s is one of the statuses DPS documents.
func known(s dps.Status) bool {
	switch s {
	case dps.StatusUnassigned, dps.StatusAssigning, dps.StatusAssigned, dps.StatusFailed, dps.StatusDisabled:
		return true
	}
	return false
}

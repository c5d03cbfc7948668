package batch

import (
	"errors"
	"net/http"

	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/ledger"
)

// This file is the enrollment state machine: what each answer of the DPS
// service API means for one device's individual enrollment, and the one
// table of what the enrollment runner does next. The states are the
// ledger's (ledger.EnrollState). An enrollment to be created or updated is
// first written as creating (the intent, durable before the bulk request),
// one to be deleted as deleting; so every answer arrives in creating or
// deleting.
//
// Nothing is created twice because:
//   - a create is sent in bulk mode "create", which DPS refuses with a 409
//     for an id that exists: a create can take effect at most once;
//   - a create whose answer was lost (timeout, reset, 5xx, a kill) is read
//     back (GET) before anything else is sent for it: found with the same
//     attestation, it is recorded created; found with another, exists-
//     different; not found, it is sent again;
//   - updates (mode update) and deletes are idempotent: sending one again
//     after a lost answer creates nothing and deletes nothing twice.

// EnrollEvent is what one answer told the runner about one enrollment.
type EnrollEvent int

// The enrollment events.
const (
	// EnEvDone: the bulk answer has no error for the item: the create,
	// update or delete took effect.
	EnEvDone EnrollEvent = iota + 1
	// EnEvExists: a create was refused with 409: the id exists.
	EnEvExists
	// EnEvETagMismatch: an updateIfMatchETag was refused with 412: the
	// record changed since dps-batch read it.
	EnEvETagMismatch
	// EnEvGone: a delete found nothing (404): there is nothing to delete.
	EnEvGone
	// EnEvRefused: DPS refused the item for good (another 4xx).
	EnEvRefused
	// EnEvNotTaken: the item was not changed, and sending it again may
	// work: a per-item 429 or 5xx code, a whole request answered 429, a
	// connection that could not be made.
	EnEvNotTaken
	// EnEvNoAnswer: the request got no usable answer (timeout, reset, 5xx,
	// a 2xx cut short): the change may have taken effect.
	EnEvNoAnswer
	// EnEvFatal: a failure every request will hit (credentials, rights,
	// TLS trust, host); the request may have taken effect.
	EnEvFatal
	// EnEvFatalNoEffect: as EnEvFatal, but the request changed nothing.
	EnEvFatalNoEffect
	// EnEvFoundSame: a read shows the enrollment with the attestation the
	// manifest asks for.
	EnEvFoundSame
	// EnEvFoundDifferent: a read shows the enrollment with another
	// attestation.
	EnEvFoundDifferent
	// EnEvFoundNone: a read shows no enrollment (404).
	EnEvFoundNone
	// EnEvUndecided: a read failed in a way that decides nothing (timeout,
	// 5xx, 429).
	EnEvUndecided

	numEnrollEvents = iota
)

var enrollEventNames = [...]string{"", "done", "exists", "etag-mismatch", "gone", "refused", "not-taken", "no-answer",
	"fatal", "fatal-no-effect", "found-same", "found-different", "found-none", "undecided"}

func (e EnrollEvent) String() string {
	if e > 0 && int(e) < len(enrollEventNames) {
		return enrollEventNames[e]
	}
	return "event?"
}

// EnrollEvents returns every enrollment event, in declaration order.
func EnrollEvents() []EnrollEvent {
	out := make([]EnrollEvent, 0, numEnrollEvents)
	for e := EnEvDone; e <= EnrollEvent(numEnrollEvents); e++ {
		out = append(out, e)
	}
	return out
}

// enrollStep is what an enrollment does next.
type enrollStep int

const (
	enStepSend    enrollStep = iota + 1 // send the change (after recording the intent)
	enStepCheck                         // read the enrollment back (GET) before anything else
	enStepResolve                       // a create: check; an update or delete: send again (idempotent)
	enStepDone                          // final for this run
	enStepStop                          // fatal: stop the run; the state is kept for the next one
)

var enrollStepNames = [...]string{"", "send", "check", "resolve", "done", "stop"}

func (s enrollStep) String() string { return enrollStepNames[s] }

// enStateFromOp in a transition means: the final state the operation asked
// for (created, updated or deleted).
const enStateFromOp ledger.EnrollState = "(from the operation)"

// enStateFromCheck means: created when the read follows a create of ours
// whose answer was lost, exists-same when it follows a 409.
const enStateFromCheck ledger.EnrollState = "(created, or exists-same after a 409)"

// EnrollTransition is one row of the table: in State, after Event, the
// enrollment moves to Next and does Step. Why says why that is safe.
type EnrollTransition struct {
	Next ledger.EnrollState
	Step enrollStep
	Why  string
}

type enrollKey struct {
	state ledger.EnrollState
	event EnrollEvent
}

// enrollTransitions is the enrollment state machine. A pair missing from
// it cannot happen: changes are only sent from creating or deleting, and
// reads only follow creates.
var enrollTransitions = map[enrollKey]EnrollTransition{
	{ledger.EnrollCreating, EnEvDone}:           {enStateFromOp, enStepDone, "DPS answered the bulk request without an error for this item"},
	{ledger.EnrollCreating, EnEvExists}:         {ledger.EnrollCreating, enStepCheck, "409: the id exists (another's, or ours from a lost answer): read it and compare the attestation"},
	{ledger.EnrollCreating, EnEvETagMismatch}:   {ledger.EnrollFailed, enStepDone, "412: the enrollment changed at DPS since it was read; replacing it blindly could undo someone's change"},
	{ledger.EnrollCreating, EnEvGone}:           {ledger.EnrollRetryable, enStepSend, "404 to an update by etag: the enrollment was deleted since it was read; send it again without an etag"},
	{ledger.EnrollCreating, EnEvRefused}:        {ledger.EnrollFailed, enStepDone, "DPS refused the item: sending it again cannot succeed"},
	{ledger.EnrollCreating, EnEvNotTaken}:       {ledger.EnrollRetryable, enStepSend, "DPS did not take the item (or never got it): sending it again creates nothing twice"},
	{ledger.EnrollCreating, EnEvNoAnswer}:       {ledger.EnrollCreating, enStepResolve, "the change may have taken effect: a create is read back before any other request; an update is idempotent"},
	{ledger.EnrollCreating, EnEvFatal}:          {ledger.EnrollCreating, enStepStop, "the run stops; the request may have taken effect, so the next run reads the enrollment first"},
	{ledger.EnrollCreating, EnEvFatalNoEffect}:  {ledger.EnrollRetryable, enStepStop, "the run stops; the request changed nothing, so the next run may send it"},
	{ledger.EnrollCreating, EnEvFoundSame}:      {enStateFromCheck, enStepDone, "DPS holds the attestation the manifest asks for"},
	{ledger.EnrollCreating, EnEvFoundDifferent}: {ledger.EnrollExistsDifferent, enStepDone, "DPS holds another attestation for this id: not ours to replace unless --mode update"},
	{ledger.EnrollCreating, EnEvFoundNone}:      {ledger.EnrollRetryable, enStepSend, "no enrollment: the create did not take effect; sending it again cannot create two (DPS answers 409 to a second create)"},
	{ledger.EnrollCreating, EnEvUndecided}:      {ledger.EnrollCreating, enStepCheck, "the read decided nothing: read again (counts against --max-attempts)"},

	{ledger.EnrollDeleting, EnEvDone}:          {ledger.EnrollDeleted, enStepDone, "DPS deleted it"},
	{ledger.EnrollDeleting, EnEvGone}:          {ledger.EnrollDeleted, enStepDone, "DPS has no such enrollment: nothing to delete"},
	{ledger.EnrollDeleting, EnEvRefused}:       {ledger.EnrollFailed, enStepDone, "DPS refused the delete"},
	{ledger.EnrollDeleting, EnEvETagMismatch}:  {ledger.EnrollFailed, enStepDone, "412: the enrollment changed since it was read"},
	{ledger.EnrollDeleting, EnEvNotTaken}:      {ledger.EnrollRetryable, enStepSend, "the delete was not taken: send it again"},
	{ledger.EnrollDeleting, EnEvNoAnswer}:      {ledger.EnrollDeleting, enStepSend, "a delete may have taken effect; deleting again is harmless (404 means done)"},
	{ledger.EnrollDeleting, EnEvFatal}:         {ledger.EnrollDeleting, enStepStop, "the run stops; the next run deletes again"},
	{ledger.EnrollDeleting, EnEvFatalNoEffect}: {ledger.EnrollRetryable, enStepStop, "the run stops; nothing was deleted"},
}

// EnrollTransitions returns the table, for documentation and tests.
func EnrollTransitions() map[enrollKey]EnrollTransition { return enrollTransitions }

func enrollNext(st ledger.EnrollState, ev EnrollEvent) (EnrollTransition, bool) {
	t, ok := enrollTransitions[enrollKey{st, ev}]
	return t, ok
}

// enrollCountsAsFailure reports whether ev spends an item's --max-attempts
// budget.
func enrollCountsAsFailure(ev EnrollEvent) bool {
	switch ev {
	case EnEvNotTaken, EnEvNoAnswer, EnEvUndecided:
		return true
	}
	return false
}

// callEvent classifies the failure of a whole request (a bulk call, a read
// or a delete).
func callEvent(err error) EnrollEvent {
	switch dpsservice.Classify(err) {
	case dpsservice.Fatal:
		if dpsservice.MayHaveTakenEffect(err) {
			return EnEvFatal
		}
		return EnEvFatalNoEffect
	case dpsservice.Permanent:
		switch dpsservice.Status(err) {
		case http.StatusConflict:
			return EnEvExists
		case http.StatusPreconditionFailed:
			return EnEvETagMismatch
		case http.StatusNotFound:
			if !dpsNotFound(err) {
				// A 404 without a DPS error code comes from a host or
				// route that is not the DPS service API.
				return EnEvFatalNoEffect
			}
			return EnEvGone
		case 0:
			// A request this client refused to send, or an oversized
			// answer: nothing learned.
			if dpsservice.MayHaveTakenEffect(err) {
				return EnEvNoAnswer
			}
			return EnEvRefused
		}
		return EnEvRefused
	}
	if dpsservice.MayHaveTakenEffect(err) {
		return EnEvNoAnswer
	}
	return EnEvNotTaken
}

// itemEvent classifies one item's error in a bulk answer, from its 6-digit
// code (whose first three digits are the HTTP status).
func itemEvent(e dpsservice.BulkError) EnrollEvent {
	switch s := e.HTTPStatus(); {
	case s == http.StatusConflict:
		return EnEvExists
	case s == http.StatusPreconditionFailed:
		return EnEvETagMismatch
	case s == http.StatusNotFound:
		return EnEvGone
	case s == http.StatusTooManyRequests, s == http.StatusRequestTimeout, s >= 500 && s != http.StatusNotImplemented:
		// DPS reports the item as not done: it did not take effect.
		return EnEvNotTaken
	}
	return EnEvRefused
}

// enrollReadEvent classifies the answer to a read of an enrollment.
func enrollReadEvent(got *dpsservice.IndividualEnrollment, err error, want *dpsservice.AttestationMechanism) (EnrollEvent, string) {
	if err != nil {
		if dpsNotFound(err) {
			return EnEvFoundNone, ""
		}
		switch ev := callEvent(err); ev {
		case EnEvFatal, EnEvFatalNoEffect:
			return EnEvFatalNoEffect, "" // a read changes nothing
		case EnEvRefused:
			return EnEvRefused, ""
		}
		return EnEvUndecided, ""
	}
	switch c, why := dpsservice.CompareAttestation(want, got.Attestation); c {
	case dpsservice.Same:
		return EnEvFoundSame, ""
	default:
		return EnEvFoundDifferent, why
	}
}

// dpsNotFound reports whether err is DPS saying "no such record": a 404
// with a DPS error code. A bare 404 (a proxy, a web server, a wrong path)
// proves nothing, and taking it for "not found" would record deletions that
// never happened.
func dpsNotFound(err error) bool {
	var e *dpsservice.Error
	return errors.As(err, &e) && e.HTTPStatus == http.StatusNotFound && e.Code != 0
}

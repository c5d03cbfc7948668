package batch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/ledger"
)

// TestEnrollTransitionTable walks every (state, event) pair: the table is
// written out again here, and the rules that keep "nothing created twice"
// are checked on every row.
func TestEnrollTransitionTable(t *testing.T) {
	const (
		cre  = ledger.EnrollCreating
		del  = ledger.EnrollDeleting
		ret  = ledger.EnrollRetryable
		fail = ledger.EnrollFailed
	)
	type want struct {
		next ledger.EnrollState
		step enrollStep
	}
	wantTable := map[enrollKey]want{
		{cre, EnEvDone}:           {enStateFromOp, enStepDone},
		{cre, EnEvExists}:         {cre, enStepCheck},
		{cre, EnEvETagMismatch}:   {fail, enStepDone},
		{cre, EnEvGone}:           {ret, enStepSend},
		{cre, EnEvRefused}:        {fail, enStepDone},
		{cre, EnEvNotTaken}:       {ret, enStepSend},
		{cre, EnEvNoAnswer}:       {cre, enStepResolve},
		{cre, EnEvFatal}:          {cre, enStepStop},
		{cre, EnEvFatalNoEffect}:  {ret, enStepStop},
		{cre, EnEvFoundSame}:      {enStateFromCheck, enStepDone},
		{cre, EnEvFoundDifferent}: {ledger.EnrollExistsDifferent, enStepDone},
		{cre, EnEvFoundNone}:      {ret, enStepSend},
		{cre, EnEvUndecided}:      {cre, enStepCheck},
		{del, EnEvDone}:           {ledger.EnrollDeleted, enStepDone},
		{del, EnEvGone}:           {ledger.EnrollDeleted, enStepDone},
		{del, EnEvRefused}:        {fail, enStepDone},
		{del, EnEvETagMismatch}:   {fail, enStepDone},
		{del, EnEvNotTaken}:       {ret, enStepSend},
		{del, EnEvNoAnswer}:       {del, enStepSend},
		{del, EnEvFatal}:          {del, enStepStop},
		{del, EnEvFatalNoEffect}:  {ret, enStepStop},
	}
	// Events after which sending a create again is safe: DPS did not take
	// the last one, or a read shows there is none.
	safeToCreate := map[EnrollEvent]bool{EnEvNotTaken: true, EnEvFoundNone: true, EnEvGone: true}
	for _, st := range ledger.EnrollStates() {
		for _, ev := range EnrollEvents() {
			got, ok := enrollNext(st, ev)
			w, expected := wantTable[enrollKey{st, ev}]
			name := fmt.Sprintf("%s+%s", st, ev)
			if ok != expected {
				t.Errorf("%s: transition present %v, want %v", name, ok, expected)
				continue
			}
			if !ok {
				continue
			}
			if got.Next != w.next || got.Step != w.step {
				t.Errorf("%s: -> %s, %s; want %s, %s", name, got.Next, got.Step, w.next, w.step)
			}
			if strings.TrimSpace(got.Why) == "" {
				t.Errorf("%s: no reason given", name)
			}
			if st == cre && got.Step == enStepSend && !safeToCreate[ev] {
				t.Errorf("%s: sends again after an event that does not prove the last create did not take effect", name)
			}
		}
	}
	if len(wantTable) != len(enrollTransitions) {
		t.Errorf("table has %d transitions, this test knows %d", len(enrollTransitions), len(wantTable))
	}
}

func TestEnrollEvents(t *testing.T) {
	httpErr := func(status, code int) error { return &dpsservice.Error{Op: "x", HTTPStatus: status, Code: code} }
	dial := &dpsservice.Error{Op: "x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	for _, tt := range []struct {
		err  error
		want EnrollEvent
	}{
		{httpErr(400, 400004), EnEvRefused},
		{httpErr(401, 401002), EnEvFatalNoEffect},
		{httpErr(403, 403001), EnEvFatalNoEffect},
		{httpErr(404, 404202), EnEvGone},
		{httpErr(404, 0), EnEvFatalNoEffect}, // a bare 404 is not DPS
		{httpErr(409, 409201), EnEvExists},
		{httpErr(412, 412002), EnEvETagMismatch},
		{httpErr(429, 429001), EnEvNotTaken},
		{httpErr(500, 0), EnEvNoAnswer},
		{httpErr(503, 0), EnEvNoAnswer},
		{&dpsservice.Error{Op: "x", Err: context.DeadlineExceeded}, EnEvNoAnswer},
		{&dpsservice.Error{Op: "x", HTTPStatus: 200, Err: dpsservice.ErrMalformedResponse}, EnEvNoAnswer},
		{dial, EnEvNotTaken},
	} {
		if got := callEvent(tt.err); got != tt.want {
			t.Errorf("callEvent(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
	for _, tt := range []struct {
		code int
		want EnrollEvent
	}{
		{409201, EnEvExists}, {412002, EnEvETagMismatch}, {404202, EnEvGone}, {400004, EnEvRefused},
		{429001, EnEvNotTaken}, {500001, EnEvNotTaken}, {401002, EnEvRefused}, {7, EnEvRefused},
	} {
		if got := itemEvent(dpsservice.BulkError{RegistrationID: "a", ErrorCode: tt.code}); got != tt.want {
			t.Errorf("itemEvent(%d) = %s, want %s", tt.code, got, tt.want)
		}
	}
}

func TestDecideEnroll(t *testing.T) {
	create := EnrollOptions{Mode: EnrollModeCreate}
	update := EnrollOptions{Mode: EnrollModeUpdate}
	retry := EnrollOptions{Mode: EnrollModeCreate, RetryFailed: true}
	rec := func(s ledger.EnrollState, op, fp, spec string) ledger.Enrollment {
		return ledger.Enrollment{RegistrationID: "d", State: s, Op: op, Fingerprint: fp, SpecHash: spec}
	}
	for _, tt := range []struct {
		name  string
		rec   ledger.Enrollment
		found bool
		o     EnrollOptions
		want  EnrollAction
	}{
		{"new", ledger.Enrollment{}, false, create, EnActCreate},
		{"pending", rec(ledger.EnrollPending, "", "", ""), true, create, EnActCreate},
		{"lost create", rec(ledger.EnrollCreating, "create", "f", "s"), true, create, EnActCheck},
		{"lost update, update mode", rec(ledger.EnrollCreating, "update", "f", "s"), true, update, EnActUpdate},
		{"created", rec(ledger.EnrollCreated, "create", "f", "s"), true, create, EnActSkip},
		{"created, credentials changed", rec(ledger.EnrollCreated, "create", "f0", "s"), true, create, EnActChanged},
		{"created, update same spec", rec(ledger.EnrollCreated, "create", "f", "s"), true, update, EnActSkip},
		{"created, update other spec", rec(ledger.EnrollCreated, "create", "f", "s0"), true, update, EnActUpdate},
		{"exists-different", rec(ledger.EnrollExistsDifferent, "create", "f", "s"), true, create, EnActSkip},
		{"exists-different, update", rec(ledger.EnrollExistsDifferent, "create", "f", "s"), true, update, EnActUpdate},
		{"exists-different, retry", rec(ledger.EnrollExistsDifferent, "create", "f", "s"), true, retry, EnActCreate},
		{"failed", rec(ledger.EnrollFailed, "create", "f", "s"), true, create, EnActSkip},
		{"failed, retry", rec(ledger.EnrollFailed, "create", "f", "s"), true, retry, EnActCreate},
		{"deleted", rec(ledger.EnrollDeleted, "delete", "", ""), true, create, EnActCreate},
		{"delete mode", rec(ledger.EnrollCreated, "create", "f", "s"), true, EnrollOptions{Mode: EnrollModeDelete}, EnActDelete},
		{"delete mode, deleted", rec(ledger.EnrollDeleted, "delete", "", ""), true, EnrollOptions{Mode: EnrollModeDelete}, EnActSkip},
		{"deregister", rec(ledger.EnrollCreated, "create", "f", "s"), true, EnrollOptions{Mode: EnrollModeDeregister}, EnActDeregister},
		{"deregistered", ledger.Enrollment{State: ledger.EnrollCreated, Registration: ledger.RegDeleted}, true, EnrollOptions{Mode: EnrollModeDeregister}, EnActSkip},
		{"deregistered, enrollments left", ledger.Enrollment{State: ledger.EnrollCreated, Registration: ledger.RegNone}, true, EnrollOptions{Mode: EnrollModeDeregister, DeleteEnrollments: true}, EnActDeregister},
	} {
		if got := DecideEnroll(tt.rec, tt.found, "f", "s", tt.o); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

package batch

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
)

// TestTransitionTable walks every (state, event) pair: each has exactly the
// transition below or none, and the rules exactly-once rests on hold.
func TestTransitionTable(t *testing.T) {
	const (
		reg  = ledger.StateRegistering
		asg  = ledger.StateAssigning
		ret  = ledger.StateRetryable
		fail = ledger.StateFailed
		ans  = stateFromAnswer
	)
	type want struct {
		next ledger.State
		step step
	}
	// The whole table, written out again: a changed row must change here too.
	wantTable := map[transitionKey]want{
		{reg, EvAccepted}:      {asg, stepPoll},
		{reg, EvFinal}:         {ans, stepDone},
		{reg, EvRefused}:       {fail, stepDone},
		{reg, EvNotTaken}:      {ret, stepRegister},
		{reg, EvThrottled}:     {ret, stepRegister},
		{reg, EvInProgress}:    {asg, stepLookup},
		{reg, EvNoAnswer}:      {reg, stepLookup},
		{reg, EvRunning}:       {asg, stepLookup},
		{reg, EvNothing}:       {ret, stepRegister},
		{reg, EvNothingYet}:    {reg, stepLookup},
		{reg, EvUndecided}:     {reg, stepLookup},
		{reg, EvFatal}:         {reg, stepStop},
		{reg, EvFatalNoEffect}: {ret, stepStop},
		{asg, EvRunning}:       {asg, stepAsk},
		{asg, EvFinal}:         {ans, stepDone},
		{asg, EvOpGone}:        {asg, stepLookup},
		{asg, EvNothing}:       {asg, stepLookup},
		{asg, EvNothingYet}:    {asg, stepLookup},
		{asg, EvLost}:          {fail, stepDone},
		{asg, EvUndecided}:     {asg, stepAsk},
		{asg, EvRefused}:       {fail, stepDone},
		{asg, EvFatal}:         {asg, stepStop},
		{asg, EvFatalNoEffect}: {asg, stepStop},
	}
	// Events after which a PUT is safe: DPS refused the last one, or shows
	// nothing newer and the last one can no longer take effect.
	safeToPUT := map[Event]bool{EvNotTaken: true, EvThrottled: true, EvNothing: true}

	pairs := 0
	for _, st := range ledger.States() {
		for _, ev := range Events() {
			pairs++
			key := transitionKey{st, ev}
			got, ok := next(st, ev)
			w, expected := wantTable[key]
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
			if got.Step == stepRegister && !safeToPUT[ev] {
				t.Errorf("%s: registers again after an event that does not prove the last PUT cannot take effect", name)
			}
			if st == asg && (got.Step == stepRegister || got.Next == ret || got.Next == ledger.StatePending) {
				t.Errorf("%s: an operation DPS accepted must be followed, never registered again", name)
			}
			if st == reg && got.Next != reg && got.Next != asg && got.Next != ans && got.Next != fail && !safeToPUT[ev] && ev != EvFatalNoEffect {
				t.Errorf("%s: leaves registering for %s although the PUT may have taken effect", name, got.Next)
			}
		}
	}
	if len(wantTable) != len(transitions) {
		t.Errorf("table has %d transitions, this test knows %d", len(transitions), len(wantTable))
	}
	t.Logf("%d (state, event) pairs walked, %d transitions", pairs, len(transitions))
}

// TestREADMEStateTable: the README's state table names every ledger state.
func TestREADMEStateTable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range ledger.States() {
		if !regexp.MustCompile("(?m)^\\| `" + string(st) + "` \\|").Match(b) {
			t.Errorf("README.md: no row for state %q in the state table", st)
		}
	}
}

// httpErr is what the DPS client returns for an error answer.
func httpErr(status, code int) error {
	return &dps.Error{Op: "register", RegistrationID: "d", HTTPStatus: status, Code: code}
}

func TestRegisterEvent(t *testing.T) {
	opErr := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	readErr := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	tests := []struct {
		name string
		resp *dps.Response
		err  error
		want Event
	}{
		{"202 with operation id", &dps.Response{Operation: &dps.RegistrationOperationStatus{OperationID: "4.x", Status: dps.StatusAssigning}}, nil, EvAccepted},
		{"200 assigned with state", &dps.Response{Operation: &dps.RegistrationOperationStatus{OperationID: "4.x", Status: dps.StatusAssigned,
			RegistrationState: &dps.DeviceRegistrationResult{Status: dps.StatusAssigned}}}, nil, EvFinal},
		{"401002", nil, httpErr(401, dps.CodeInvalidCredentials), EvRefused},
		{"404201 on the PUT", nil, httpErr(404, dps.CodeNotFound), EvRefused},
		{"409203", nil, httpErr(409, dps.CodePreconditionFailed), EvInProgress},
		{"429", nil, httpErr(429, dps.CodeThrottled), EvThrottled},
		{"408", nil, httpErr(408, 0), EvNotTaken},
		{"500", nil, httpErr(500, 0), EvNoAnswer},
		{"503", nil, httpErr(503, 0), EvNoAnswer},
		{"501", nil, httpErr(501, 0), EvRefused},
		{"connection refused", nil, &dps.Error{Err: opErr}, EvNotTaken},
		{"connection reset", nil, &dps.Error{Err: readErr}, EvNoAnswer},
		{"timeout", nil, &dps.Error{Err: context.DeadlineExceeded}, EvNoAnswer},
		{"2xx cut short", nil, &dps.Error{HTTPStatus: 202, Err: fmt.Errorf("%w: eof", dps.ErrMalformedResponse)}, EvNoAnswer},
		{"2xx without operation id", nil, &dps.Error{HTTPStatus: 202, Err: fmt.Errorf("%w: no operationId", dps.ErrProtocol)}, EvNoAnswer},
		{"2xx too large", nil, &dps.Error{HTTPStatus: 202, Err: fmt.Errorf("%w: big", dps.ErrResponseTooLarge)}, EvNoAnswer},
		{"server not trusted", nil, &dps.Error{Err: x509.UnknownAuthorityError{}}, EvFatalNoEffect},
	}
	for _, tt := range tests {
		if got := registerEvent(tt.resp, tt.err); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestLookupEvent(t *testing.T) {
	old := ledger.Record{ETag: "e1", Updated: "2026-01-01T00:00:00.0000000Z"}
	reg := func(st dps.Status, etag string) *dps.Response {
		return &dps.Response{Registration: &dps.DeviceRegistrationResult{Status: st, ETag: etag, LastUpdatedDateTimeUTC: "2026-01-01T00:00:00.0000000Z"}}
	}
	tests := []struct {
		name string
		resp *dps.Response
		err  error
		want Event
	}{
		{"404201", nil, httpErr(404, dps.CodeNotFound), EvNothing},
		{"bare 404", nil, httpErr(404, 0), EvUndecided},
		{"404 with another code", nil, httpErr(404, 404000), EvUndecided},
		{"500", nil, httpErr(500, 0), EvUndecided},
		{"429", nil, httpErr(429, 0), EvUndecided},
		{"401", nil, httpErr(401, dps.CodeInvalidCredentials), EvRefused},
		{"assigning", reg(dps.StatusAssigning, ""), nil, EvRunning},
		{"unassigned", reg(dps.StatusUnassigned, ""), nil, EvNothing},
		{"the same record", reg(dps.StatusAssigned, "e1"), nil, EvNothing},
		{"a newer record", reg(dps.StatusAssigned, "e2"), nil, EvFinal},
		{"a newer failed record", reg(dps.StatusFailed, "e2"), nil, EvFinal},
		{"an undocumented status", reg("exploded", "e2"), nil, EvRefused},
	}
	for _, tt := range tests {
		if got := lookupEvent(tt.resp, tt.err, old, EvNothing); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
	// With no record of an earlier answer, any final record is new.
	if got := lookupEvent(reg(dps.StatusAssigned, "e1"), nil, ledger.Record{}, EvNothing); got != EvFinal {
		t.Errorf("no earlier record: %s, want final", got)
	}
}

func TestPollEvent(t *testing.T) {
	op := func(st dps.Status) *dps.Response {
		return &dps.Response{Operation: &dps.RegistrationOperationStatus{OperationID: "4.x", Status: st}}
	}
	tests := []struct {
		name string
		resp *dps.Response
		err  error
		want Event
	}{
		{"202 assigning", op(dps.StatusAssigning), nil, EvRunning},
		{"unassigned", op(dps.StatusUnassigned), nil, EvRunning},
		{"assigned", op(dps.StatusAssigned), nil, EvFinal},
		{"disabled", op(dps.StatusDisabled), nil, EvFinal},
		{"undocumented", op("exploded"), nil, EvRefused},
		{"404", nil, httpErr(404, 0), EvOpGone},
		{"404201", nil, httpErr(404, dps.CodeNotFound), EvOpGone},
		{"500", nil, httpErr(500, 0), EvUndecided},
		{"2xx unusable", nil, &dps.Error{HTTPStatus: 200, Err: fmt.Errorf("%w: x", dps.ErrProtocol)}, EvUndecided},
	}
	for _, tt := range tests {
		if got := pollEvent(tt.resp, tt.err); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestRecordSame(t *testing.T) {
	a := ledger.Record{ETag: "e1", Updated: "u1", Created: "c1"}
	tests := []struct {
		b    ledger.Record
		want bool
	}{
		{ledger.Record{ETag: "e1", Updated: "u2"}, true}, // the etag decides
		{ledger.Record{ETag: "e2", Updated: "u1", Created: "c1"}, false},
		{ledger.Record{Updated: "u1", Created: "c1"}, true}, // no etag on one side: timestamps
		{ledger.Record{Updated: "u2", Created: "c1"}, false},
		{ledger.Record{}, false},
	}
	for i, tt := range tests {
		if got := a.Same(tt.b); got != tt.want {
			t.Errorf("%d: %+v same as %+v = %v, want %v", i, a, tt.b, got, tt.want)
		}
	}
	if (ledger.Record{}).Same(ledger.Record{}) {
		t.Error("two unknown records are the same")
	}
}

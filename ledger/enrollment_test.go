package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

func TestEnrollmentRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	l := MustOpen(t, path, ledger.Options{Now: func() time.Time { return now }})
	run := MustStartRun(t, l)
	want := ledger.Enrollment{
		RegistrationID: "dev-1", State: ledger.EnrollCreating, Op: "create", Attestation: "x509",
		Fingerprint: "sha256:ab", SpecHash: "h1", ETag: "e1", HTTPStatus: 409, ErrorCode: 409201,
		ErrorMessage: "exists", Hint: "h", RequestID: "r1", Calls: 2, Reads: 1,
		IntentAt: now.Add(-time.Second), FinishedAt: now, RunID: run,
		Registration: ledger.RegDeleted, RegistrationAt: now,
	}
	if err := l.PutEnrollments(ctx, []ledger.Enrollment{want, {RegistrationID: "dev-2", State: ledger.EnrollPending}}); err != nil {
		t.Fatal(err)
	}
	MustClose(t, l)

	r := MustOpen(t, path, ledger.Options{ReadOnly: true})
	got, ok, err := r.Enrollment(ctx, "dev-1")
	if err != nil || !ok {
		t.Fatalf("Enrollment = %v, %v", ok, err)
	}
	want.UpdatedAt = now
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if _, ok, err := r.Enrollment(ctx, "nope"); ok || err != nil {
		t.Errorf("unknown id: ok=%v err=%v", ok, err)
	}
	if err := r.PutEnrollments(ctx, []ledger.Enrollment{want}); !errors.Is(err, ledger.ErrReadOnly) {
		t.Errorf("read-only Put err=%v, want ErrReadOnly", err)
	}
	c, err := r.EnrollmentCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Total != 2 || c.ByState[ledger.EnrollCreating] != 1 || c.ByState[ledger.EnrollPending] != 1 ||
		c.ByRegistration[ledger.RegDeleted] != 1 || c.Calls != 2 || c.Reads != 1 {
		t.Errorf("counts = %+v", c)
	}
}

func TestEnrollmentsInChunksAndEach(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	var rows []ledger.Enrollment
	var ids []string
	for i := range 700 {
		id := fmt.Sprintf("d-%04d", i)
		st := ledger.EnrollCreated
		if i%7 == 0 {
			st = ledger.EnrollFailed
		}
		rows = append(rows, ledger.Enrollment{RegistrationID: id, State: st})
		ids = append(ids, id)
	}
	if err := l.PutEnrollments(ctx, rows); err != nil {
		t.Fatal(err)
	}
	got, err := l.Enrollments(ctx, append(ids, "unknown"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 700 || got["d-0699"].State != ledger.EnrollCreated || got["d-0007"].State != ledger.EnrollFailed {
		t.Errorf("Enrollments returned %d rows", len(got))
	}
	n := 0
	err = l.EachEnrollment(ctx, []ledger.EnrollState{ledger.EnrollFailed}, func(e ledger.Enrollment) error {
		n++
		// Writing while iterating is allowed.
		e.State = ledger.EnrollRetryable
		return l.PutEnrollments(ctx, []ledger.Enrollment{e})
	})
	if err != nil || n != 100 {
		t.Errorf("EachEnrollment(failed) saw %d, err %v; want 100", n, err)
	}
	c, _ := l.EnrollmentCounts(ctx)
	if c.ByState[ledger.EnrollRetryable] != 100 || c.ByState[ledger.EnrollFailed] != 0 {
		t.Errorf("counts after rewrite: %+v", c.ByState)
	}
}

func TestPutEnrollmentsIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	err := l.PutEnrollments(ctx, []ledger.Enrollment{{RegistrationID: "a", State: ledger.EnrollCreating}, {RegistrationID: "b", State: "bogus"}})
	if err == nil {
		t.Fatal("unknown state accepted")
	}
	err = l.PutEnrollments(ctx, []ledger.Enrollment{{RegistrationID: "a", State: ledger.EnrollCreating}, {RegistrationID: "b", State: ledger.EnrollCreating, RunID: 999}})
	if !errors.Is(err, ledger.ErrUnknownRun) {
		t.Fatalf("unknown run err=%v", err)
	}
	if _, ok, _ := l.Enrollment(ctx, "a"); ok {
		t.Error("the first row of a failed batch was written")
	}
}

func TestBindService(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	if err := l.BindService(ctx, "https://My-DPS.azure-devices-provisioning.net/"); err != nil {
		t.Fatal(err)
	}
	if err := l.BindService(ctx, "my-dps.azure-devices-provisioning.net"); err != nil {
		t.Errorf("same host, other spelling: %v", err)
	}
	var be *ledger.ServiceBindingError
	if err := l.BindService(ctx, "other.azure-devices-provisioning.net"); !errors.As(err, &be) || be.Have != "my-dps.azure-devices-provisioning.net" {
		t.Errorf("other host err=%v", err)
	}
	MustClose(t, l)
	r := MustOpen(t, path, ledger.Options{ReadOnly: true})
	if h, ok, err := r.ServiceBinding(ctx); h != "my-dps.azure-devices-provisioning.net" || !ok || err != nil {
		t.Errorf("ServiceBinding = %q %v %v", h, ok, err)
	}
	if err := r.BindService(ctx, "other"); !errors.As(err, &be) {
		t.Errorf("read-only compare err=%v", err)
	}
}

func TestEnrollStates(t *testing.T) {
	for _, s := range ledger.EnrollStates() {
		if s.Enrolled() && !s.Final() {
			t.Errorf("%s is enrolled but not final", s)
		}
	}
	for _, s := range []ledger.EnrollState{ledger.EnrollPending, ledger.EnrollCreating, ledger.EnrollRetryable, ledger.EnrollDeleting} {
		if s.Final() {
			t.Errorf("%s is final; a re-run must continue it", s)
		}
	}
}

func TestEachWithEnrollment(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	var devs []ledger.Device
	var enr []ledger.Enrollment
	for i := range 600 {
		id := fmt.Sprintf("d-%04d", i)
		devs = append(devs, ledger.Device{RegistrationID: id, State: ledger.StatePending})
		if i%3 == 0 {
			enr = append(enr, ledger.Enrollment{RegistrationID: id, State: ledger.EnrollCreated})
		}
	}
	if _, err := l.AddPending(ctx, devs); err != nil {
		t.Fatal(err)
	}
	if err := l.PutEnrollments(ctx, enr); err != nil {
		t.Fatal(err)
	}
	n, with := 0, 0
	last := ""
	err := l.EachWithEnrollment(ctx, nil, func(d ledger.Device, e ledger.Enrollment, ok bool) error {
		n++
		if d.RegistrationID <= last {
			t.Fatalf("%s after %s: not in order", d.RegistrationID, last)
		}
		last = d.RegistrationID
		if ok {
			with++
			if e.RegistrationID != d.RegistrationID || e.State != ledger.EnrollCreated {
				t.Errorf("%s paired with %+v", d.RegistrationID, e)
			}
		}
		return nil
	})
	if err != nil || n != 600 || with != 200 {
		t.Errorf("saw %d devices, %d with an enrollment, err %v; want 600 and 200", n, with, err)
	}
}

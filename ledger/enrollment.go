package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// EnrollState is where a device's individual enrollment is, as dps-batch
// enroll and deregister last left it.
type EnrollState string

// The enrollment states. A device moves pending → creating (the intent,
// recorded before the request that may create or update it) → created,
// updated, exists-same, exists-different or failed; deleting → deleted.
// creating and deleting mean a request may have been sent whose answer is
// not recorded: a later run reads the enrollment back before sending again.
const (
	EnrollPending         EnrollState = "pending"          // known from the manifest, nothing sent
	EnrollCreating        EnrollState = "creating"         // a create or update may have been sent; its answer is not recorded
	EnrollCreated         EnrollState = "created"          // final: created by dps-batch (or found with the same attestation after a lost answer)
	EnrollExistsSame      EnrollState = "exists-same"      // final: it already existed with the same attestation; left as it was
	EnrollExistsDifferent EnrollState = "exists-different" // final failure: it exists with another attestation; --mode update replaces it
	EnrollUpdated         EnrollState = "updated"          // final: created or replaced by --mode update
	EnrollFailed          EnrollState = "failed"           // final failure: DPS refused it
	EnrollRetryable       EnrollState = "retryable"        // not created (DPS said so); the next run sends it again
	EnrollDeleting        EnrollState = "deleting"         // a delete may have been sent; its answer is not recorded
	EnrollDeleted         EnrollState = "deleted"          // final: deleted, or DPS had none
)

// enrollStateCodes are the integers stored in enrollments.state; part of
// the file format: never renumber them.
var enrollStateCodes = map[EnrollState]int{
	EnrollPending:         1,
	EnrollCreating:        2,
	EnrollCreated:         3,
	EnrollExistsSame:      4,
	EnrollExistsDifferent: 5,
	EnrollUpdated:         6,
	EnrollFailed:          7,
	EnrollRetryable:       8,
	EnrollDeleting:        9,
	EnrollDeleted:         10,
}

// EnrollStates returns every enrollment state in a stable order.
func EnrollStates() []EnrollState {
	return []EnrollState{EnrollPending, EnrollCreating, EnrollCreated, EnrollExistsSame, EnrollExistsDifferent,
		EnrollUpdated, EnrollFailed, EnrollRetryable, EnrollDeleting, EnrollDeleted}
}

// Final reports whether s needs no further work from the same command.
func (s EnrollState) Final() bool {
	switch s {
	case EnrollCreated, EnrollExistsSame, EnrollExistsDifferent, EnrollUpdated, EnrollFailed, EnrollDeleted:
		return true
	}
	return false
}

// Enrolled reports whether s means the enrollment exists at DPS as the
// manifest asked for.
func (s EnrollState) Enrolled() bool {
	return s == EnrollCreated || s == EnrollExistsSame || s == EnrollUpdated
}

func enrollStateOf(code int) (EnrollState, error) {
	for s, c := range enrollStateCodes {
		if c == code {
			return s, nil
		}
	}
	return "", fmt.Errorf("unknown enrollment state code %d", code)
}

// RegState is what dps-batch deregister did to a device's registration
// state at DPS.
type RegState int

// The registration outcomes of deregister.
const (
	RegUntouched RegState = 0 // deregister has not deleted it
	RegDeleted   RegState = 1 // deleted
	RegNone      RegState = 2 // DPS had none to delete
	RegFailed    RegState = 3 // DPS refused the delete
)

// String returns "", "deleted", "none" or "failed".
func (r RegState) String() string {
	switch r {
	case RegDeleted:
		return "deleted"
	case RegNone:
		return "none"
	case RegFailed:
		return "failed"
	}
	return ""
}

// Done reports whether the registration state is gone.
func (r RegState) Done() bool { return r == RegDeleted || r == RegNone }

// Enrollment is the ledger's row for one device's individual enrollment.
type Enrollment struct {
	RegistrationID string
	State          EnrollState
	// Op is the bulk mode of the last intent (create, update,
	// updateIfMatchETag, delete); "" before any.
	Op string
	// Attestation is "x509" or "symmetricKey".
	Attestation string
	// Fingerprint identifies the attestation without revealing it (as
	// manifests.Device.Fingerprint).
	Fingerprint string
	// SpecHash identifies the whole enrollment last sent (attestation by
	// fingerprint, and every option), so that a re-run with the same
	// manifest and flags sends nothing again.
	SpecHash string
	// ETag is the enrollment record's etag when dps-batch last read it;
	// "" = unknown.
	ETag         string
	HTTPStatus   int // last HTTP status (a bulk item's from its error code)
	ErrorCode    int // DPS 6-digit code, 0 = none
	ErrorMessage string
	Hint         string
	RequestID    string
	Calls        int       // requests that carried a change of it
	Reads        int       // reads of it
	IntentAt     time.Time // the last intent; zero = none
	FinishedAt   time.Time // zero = not finished
	UpdatedAt    time.Time // set by the ledger on every write
	RunID        int64
	// Registration is what deregister did to the registration state, and
	// RegistrationAt when.
	Registration   RegState
	RegistrationAt time.Time
}

const enrollmentColumns = `registration_id, state, op, attestation, fingerprint, spec_hash, etag,
	http_status, error_code, error_message, hint, request_id, calls, reads,
	intent_at, finished_at, updated_at, run_id, registration, registration_at`

const upsertEnrollmentSQL = `INSERT INTO enrollments (` + enrollmentColumns + `)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (registration_id) DO UPDATE SET
		state = excluded.state, op = excluded.op, attestation = excluded.attestation,
		fingerprint = excluded.fingerprint, spec_hash = excluded.spec_hash, etag = excluded.etag,
		http_status = excluded.http_status, error_code = excluded.error_code,
		error_message = excluded.error_message, hint = excluded.hint, request_id = excluded.request_id,
		calls = excluded.calls, reads = excluded.reads, intent_at = excluded.intent_at,
		finished_at = excluded.finished_at, updated_at = excluded.updated_at, run_id = excluded.run_id,
		registration = excluded.registration, registration_at = excluded.registration_at`

// PutEnrollments writes whole enrollment rows in one transaction: all of
// them are durable when it returns nil, or none. A bulk request's intent
// (its ten items in state creating) is written with one call before the
// request is sent.
func (l *Ledger) PutEnrollments(ctx context.Context, rows []Enrollment) error {
	if len(rows) == 0 {
		return nil
	}
	op := fmt.Sprintf("record %d enrollment(s) (%s, ...)", len(rows), rows[0].RegistrationID)
	if err := l.writable(op); err != nil {
		return err
	}
	args := make([][]any, len(rows))
	now := l.now().UnixMilli()
	for i, e := range rows {
		if e.RegistrationID == "" {
			return fmt.Errorf("ledger %s: %s: enrollment %d has an empty registration id", l.path, op, i+1)
		}
		code, ok := enrollStateCodes[e.State]
		if !ok {
			return fmt.Errorf("ledger %s: %s: enrollment %s: unknown state %q", l.path, op, e.RegistrationID, e.State)
		}
		if e.Registration < RegUntouched || e.Registration > RegFailed {
			return fmt.Errorf("ledger %s: %s: enrollment %s: unknown registration outcome %d", l.path, op, e.RegistrationID, e.Registration)
		}
		args[i] = []any{e.RegistrationID, code, e.Op, e.Attestation, e.Fingerprint, e.SpecHash, e.ETag,
			e.HTTPStatus, e.ErrorCode, e.ErrorMessage, e.Hint, e.RequestID, e.Calls, e.Reads,
			msOrNull(e.IntentAt), msOrNull(e.FinishedAt), now, idOrNull(e.RunID), int(e.Registration), msOrNull(e.RegistrationAt)}
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify(op, err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, upsertEnrollmentSQL)
	if err != nil {
		return l.classify(op, err)
	}
	defer st.Close()
	for _, a := range args {
		if _, err := st.ExecContext(ctx, a...); err != nil {
			return l.classify(op, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return l.classify(op+": commit", err)
	}
	return nil
}

func scanEnrollment(s rowScanner) (Enrollment, error) {
	var (
		e                            Enrollment
		code, reg                    int
		intent, finished, upd, regAt sql.NullInt64
		run                          sql.NullInt64
	)
	err := s.Scan(&e.RegistrationID, &code, &e.Op, &e.Attestation, &e.Fingerprint, &e.SpecHash, &e.ETag,
		&e.HTTPStatus, &e.ErrorCode, &e.ErrorMessage, &e.Hint, &e.RequestID, &e.Calls, &e.Reads,
		&intent, &finished, &upd, &run, &reg, &regAt)
	if err != nil {
		return Enrollment{}, err
	}
	if e.State, err = enrollStateOf(code); err != nil {
		return Enrollment{}, fmt.Errorf("enrollment %s: %w", e.RegistrationID, err)
	}
	e.IntentAt, e.FinishedAt, e.UpdatedAt, e.RegistrationAt = timeOf(intent), timeOf(finished), timeOf(upd), timeOf(regAt)
	e.RunID = run.Int64
	e.Registration = RegState(reg)
	return e, nil
}

// Enrollment returns one device's enrollment row; ok is false when the
// ledger has none.
func (l *Ledger) Enrollment(ctx context.Context, registrationID string) (e Enrollment, ok bool, err error) {
	op := "read enrollment " + registrationID
	if err := l.notClosed(op); err != nil {
		return Enrollment{}, false, err
	}
	e, err = scanEnrollment(l.rdb.QueryRowContext(ctx, "SELECT "+enrollmentColumns+" FROM enrollments WHERE registration_id = ?", registrationID))
	switch {
	case err == sql.ErrNoRows:
		return Enrollment{}, false, nil
	case err != nil:
		return Enrollment{}, false, l.classify(op, err)
	}
	return e, true, nil
}

// enrollmentsSQL selects up to LookupChunk enrollments by id; shorter lists
// are padded with their last id.
var enrollmentsSQL = `SELECT ` + enrollmentColumns + ` FROM enrollments WHERE registration_id IN (?` +
	strings.Repeat(", ?", LookupChunk-1) + `)`

// Enrollments returns the row of every id in ids that the ledger has,
// keyed by registration id, from one snapshot; a run (or a report joining
// enrollments to devices) reads them a chunk of manifest rows at a time.
func (l *Ledger) Enrollments(ctx context.Context, ids []string) (map[string]Enrollment, error) {
	out := make(map[string]Enrollment, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	op := fmt.Sprintf("read %d enrollments (%s, ...)", len(ids), ids[0])
	if err := l.notClosed(op); err != nil {
		return nil, err
	}
	tx, err := l.readTx(ctx)
	if err != nil {
		return nil, l.classify(op, err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, enrollmentsSQL)
	if err != nil {
		return nil, l.classify(op, err)
	}
	defer st.Close()
	args := make([]any, LookupChunk)
	for start := 0; start < len(ids); start += LookupChunk {
		chunk := ids[start:min(start+LookupChunk, len(ids))]
		for i := range args {
			args[i] = chunk[min(i, len(chunk)-1)]
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return nil, l.classify(op, err)
		}
		for rows.Next() {
			e, err := scanEnrollment(rows)
			if err != nil {
				rows.Close()
				return nil, l.classify(op, err)
			}
			out[e.RegistrationID] = e
		}
		if err := closeRows(rows); err != nil {
			return nil, l.classify(op, err)
		}
	}
	return out, nil
}

// EachEnrollment calls fn for every enrollment row in one of states (nil or
// empty: every row), in registration id order, in pages each read in its
// own short transaction (fn may write). It stops at fn's first error.
func (l *Ledger) EachEnrollment(ctx context.Context, states []EnrollState, fn func(Enrollment) error) error {
	var (
		where strings.Builder
		args  []any
	)
	where.WriteString("registration_id > ?")
	if len(states) > 0 {
		where.WriteString(" AND state IN (")
		for i, s := range states {
			code, ok := enrollStateCodes[s]
			if !ok {
				return fmt.Errorf("ledger %s: list enrollments: unknown state %q", l.path, s)
			}
			if i > 0 {
				where.WriteString(", ")
			}
			where.WriteString("?")
			args = append(args, code)
		}
		where.WriteString(")")
	}
	query := fmt.Sprintf("SELECT %s FROM enrollments WHERE %s ORDER BY registration_id LIMIT %d", enrollmentColumns, where.String(), eachPage)
	after := ""
	for {
		if err := l.notClosed("list enrollments"); err != nil {
			return err
		}
		page, err := l.enrollmentPage(ctx, query, append([]any{after}, args...))
		if err != nil {
			return err
		}
		for _, e := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(page) < eachPage {
			return nil
		}
		after = page[len(page)-1].RegistrationID
	}
}

func (l *Ledger) enrollmentPage(ctx context.Context, query string, args []any) ([]Enrollment, error) {
	rows, err := l.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, l.classify("list enrollments", err)
	}
	defer rows.Close()
	var page []Enrollment
	for rows.Next() {
		e, err := scanEnrollment(rows)
		if err != nil {
			return nil, l.classify("list enrollments", err)
		}
		page = append(page, e)
	}
	if err := rows.Err(); err != nil {
		return nil, l.classify("list enrollments", err)
	}
	return page, nil
}

// EnrollmentCounts summarises the enrollments table.
type EnrollmentCounts struct {
	Total          int
	ByState        map[EnrollState]int // states with no row are absent
	ByRegistration map[RegState]int    // deregister outcomes, RegUntouched included
	Calls          int                 // requests that carried a change, over all rows and runs
	Reads          int                 // reads, over all rows and runs
}

// EnrollmentCounts returns the totals of the enrollments table.
func (l *Ledger) EnrollmentCounts(ctx context.Context) (EnrollmentCounts, error) {
	const op = "count enrollments"
	if err := l.notClosed(op); err != nil {
		return EnrollmentCounts{}, err
	}
	c := EnrollmentCounts{ByState: map[EnrollState]int{}, ByRegistration: map[RegState]int{}}
	rows, err := l.rdb.QueryContext(ctx, "SELECT state, registration, count(*), total(calls), total(reads) FROM enrollments GROUP BY state, registration")
	if err != nil {
		return EnrollmentCounts{}, l.classify(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		var code, reg, n int
		var calls, reads float64
		if err := rows.Scan(&code, &reg, &n, &calls, &reads); err != nil {
			return EnrollmentCounts{}, l.classify(op, err)
		}
		s, err := enrollStateOf(code)
		if err != nil {
			return EnrollmentCounts{}, l.classify(op, err)
		}
		c.ByState[s] += n
		c.ByRegistration[RegState(reg)] += n
		c.Total += n
		c.Calls += int(calls)
		c.Reads += int(reads)
	}
	if err := rows.Err(); err != nil {
		return EnrollmentCounts{}, l.classify(op, err)
	}
	return c, nil
}

// ServiceBindingError reports that the ledger's enrollments belong to
// another DPS service host than the one the command names.
type ServiceBindingError struct {
	Path string // the ledger file
	Have string // host stored in the ledger
	Want string // host the command asked for
}

// Error implements error.
func (e *ServiceBindingError) Error() string {
	return fmt.Sprintf("ledger %s records the enrollments of the DPS service %s, not %s: use another --ledger file for this DPS instance", e.Path, e.Have, e.Want)
}

// BindService ties the ledger's enrollments to one DPS service host. The
// first call stores host; later calls return a *ServiceBindingError when it
// differs (compared case-insensitively, without scheme), so a ledger never
// continues one instance's enrollments against another. On a read-only
// ledger it only compares.
func (l *Ledger) BindService(ctx context.Context, host string) error {
	const op = "bind service host"
	if err := l.notClosed(op); err != nil {
		return err
	}
	want := normalizeServiceHost(host)
	if want == "" {
		return fmt.Errorf("ledger %s: %s: empty host", l.path, op)
	}
	if l.ro {
		have, ok, err := l.ServiceBinding(ctx)
		if err != nil || !ok || have == want {
			return err
		}
		return &ServiceBindingError{Path: l.path, Have: have, Want: want}
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify(op, err)
	}
	defer tx.Rollback()
	var have string
	err = tx.QueryRowContext(ctx, "SELECT host FROM service_binding WHERE id = 1").Scan(&have)
	switch {
	case err == sql.ErrNoRows:
		if _, err := tx.ExecContext(ctx, "INSERT INTO service_binding (id, host, bound_at) VALUES (1, ?, ?)", want, l.now().UnixMilli()); err != nil {
			return l.classify(op, err)
		}
		if err := tx.Commit(); err != nil {
			return l.classify(op+": commit", err)
		}
		return nil
	case err != nil:
		return l.classify(op, err)
	case have != want:
		return &ServiceBindingError{Path: l.path, Have: have, Want: want}
	}
	return nil
}

// ServiceBinding returns the service host the ledger's enrollments belong
// to; ok is false when BindService was never called.
func (l *Ledger) ServiceBinding(ctx context.Context) (host string, ok bool, err error) {
	const op = "read service binding"
	if err := l.notClosed(op); err != nil {
		return "", false, err
	}
	err = l.rdb.QueryRowContext(ctx, "SELECT host FROM service_binding WHERE id = 1").Scan(&host)
	switch {
	case err == sql.ErrNoRows:
		return "", false, nil
	case err != nil:
		return "", false, l.classify(op, err)
	}
	return host, true, nil
}

// normalizeServiceHost lower-cases a host and drops a scheme and trailing
// slashes.
func normalizeServiceHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimPrefix(h, "https://")
	return strings.TrimRight(h, "/")
}

// EachWithEnrollment is Each (devices in one of states, nil = all, in
// registration id order) with each device's enrollment row beside it; ok
// is false for a device the enrollments table does not know. Enrollments
// are read a chunk of LookupChunk devices at a time, so a report joining
// the two costs one more query per chunk, not per device.
func (l *Ledger) EachWithEnrollment(ctx context.Context, states []State, fn func(d Device, e Enrollment, ok bool) error) error {
	buf := make([]Device, 0, LookupChunk)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		ids := make([]string, len(buf))
		for i, d := range buf {
			ids[i] = d.RegistrationID
		}
		recs, err := l.Enrollments(ctx, ids)
		if err != nil {
			return err
		}
		for _, d := range buf {
			e, ok := recs[d.RegistrationID]
			if err := fn(d, e, ok); err != nil {
				return err
			}
		}
		buf = buf[:0]
		return nil
	}
	err := l.Each(ctx, states, func(d Device) error {
		buf = append(buf, d)
		if len(buf) < LookupChunk {
			return nil
		}
		return flush()
	})
	if err != nil {
		return err
	}
	return flush()
}

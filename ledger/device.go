package ledger

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// State is where a device is in provisioning. The runner moves devices
// between states; the ledger stores them.
type State string

// The device states. Final states are not retried by a later run unless the
// operator asks for it.
const (
	StatePending     State = "pending"     // known from the manifest, nothing sent yet
	StateRegistering State = "registering" // a register PUT may have been sent; its answer is not recorded
	StateAssigning   State = "assigning"   // DPS returned an operation id (recorded); poll it
	StateAssigned    State = "assigned"    // final: hub + device id known
	StateDisabled    State = "disabled"    // final: enrollment disabled
	StateFailed      State = "failed"      // permanent failure (DPS 'failed' or a non-retryable error)
	StateRetryable   State = "retryable"   // gave up this run on a retryable error; retried on the next run
	// StateIssuedLost: final: DPS assigned the device and issued it a
	// certificate (the registration sent a CSR), but the certificate never
	// reached a durable file, and DPS hands it over only once. Registering
	// again (billable, --reissue) is the only way to a certificate.
	StateIssuedLost State = "issued-lost"
)

// stateCodes are the integers stored in devices.state. Never renumber them:
// they are part of the file format.
var stateCodes = map[State]int{
	StatePending:     1,
	StateRegistering: 2,
	StateAssigning:   3,
	StateAssigned:    4,
	StateDisabled:    5,
	StateFailed:      6,
	StateRetryable:   7,
}

// States returns every state, in the order a device normally moves through
// them; summaries can use it for a stable order.
func States() []State {
	return []State{StatePending, StateRegistering, StateAssigning, StateAssigned, StateIssuedLost, StateDisabled, StateFailed, StateRetryable}
}

// Final reports whether s is a final state: assigned, issued-lost, disabled
// or failed.
func (s State) Final() bool {
	return s == StateAssigned || s == StateIssuedLost || s == StateDisabled || s == StateFailed
}

// stateOf maps a stored code and cert_lost flag back to its State.
func stateOf(code int, certLost ...int) (State, error) {
	lost := len(certLost) > 0 && certLost[0] != 0
	for s, c := range stateCodes {
		if c == code {
			if lost {
				if s != StateAssigned {
					return "", fmt.Errorf("state code %d with cert_lost set", code)
				}
				return StateIssuedLost, nil
			}
			return s, nil
		}
	}
	return "", fmt.Errorf("unknown state code %d", code)
}

// storedState returns the state code and cert_lost flag that store s
// (issued-lost is stored as assigned with cert_lost = 1: see
// migrations/0005_issued_certificates.sql).
func storedState(s State) (code, certLost int, ok bool) {
	if s == StateIssuedLost {
		return stateCodes[StateAssigned], 1, true
	}
	code, ok = stateCodes[s]
	return code, 0, ok
}

// stateCondition is the SQL condition selecting devices in state s, and
// its arguments.
func stateCondition(s State) (string, []any, bool) {
	code, lost, ok := storedState(s)
	if !ok {
		return "", nil, false
	}
	if code == stateCodes[StateAssigned] {
		return "(state = ? AND cert_lost = ?)", []any{code, lost}, true
	}
	return "state = ?", []any{code}, true
}

// Device is the ledger's row for one device: its state and the last thing
// DPS said about it.
type Device struct {
	RegistrationID string
	State          State
	OperationID    string // DPS operation id of the latest register PUT, "" = none
	AssignedHub    string // IoT hub host name, once assigned
	DeviceID       string // IoT hub device id, once assigned
	Substatus      string // DPS substatus, e.g. "initialAssignment"
	ErrorCode      int    // DPS 6-digit code, 0 = none
	ErrorMessage   string
	Hint           string    // what the operator can do about the error
	HTTPStatus     int       // last HTTP status seen, 0 = none
	RequestID      string    // last x-ms-request-id / trackingId
	Attempts       int       // register PUTs sent so far (billable)
	Polls          int       // operation polls + status lookups sent so far
	Fingerprint    string    // credential fingerprint (never key material)
	FirstAttemptAt time.Time // zero = never attempted; stored to the millisecond
	FinishedAt     time.Time // zero = not finished; stored to the millisecond
	UpdatedAt      time.Time // set by the ledger on every write (Options.Now), read back in UTC
	RunID          int64     // run that last wrote the row, 0 = none
	// CampaignID is the re-registration campaign (--reprovision,
	// --retry-failed) in which the device was last registered; 0 = none.
	// A campaign registers each device at most once, whatever the crashes.
	CampaignID int64
	// PutAt is when the last register request that may have taken effect
	// was about to be sent; zero = none. A lookup that finds nothing soon
	// after it does not prove the request will never take effect.
	PutAt time.Time
	// Record identifies the DPS registration record of the last final
	// answer, so that a lookup showing that same record is recognised as
	// an old answer, not the answer to a newer register request.
	Record Record
	// ReturnedPayload is the custom allocation payload DPS returned with
	// the last final answer (registrationState.payload): a compact JSON
	// object of at most MaxReturnedPayload bytes, "" when DPS returned none.
	// KeptPayload turns what DPS sent into this value.
	ReturnedPayload string
	// Issued describes the certificate DPS issued at the last registration
	// (a CSR was sent) once its chain is durably written; zero otherwise.
	Issued IssuedCert
	// CSRSent: the last register request carried a CSR, so its final
	// answer carries a certificate chain to keep.
	CSRSent bool
	// IssuedChain is the chain DPS issued (PEM, leaf first), kept from
	// DPS's answer until its file is durable; "" otherwise. At most
	// MaxIssuedChain bytes.
	IssuedChain string
}

// MaxIssuedChain is the longest issued chain the ledger keeps, in bytes of
// PEM: a leaf, intermediates and a root are a few kilobytes.
const MaxIssuedChain = 64 << 10

// IssuedCert identifies a certificate DPS issued to a device, without the
// certificate itself (that is in the file the manifest names).
type IssuedCert struct {
	Fingerprint string    // "sha256:" + lower-case hex of the leaf's DER
	Serial      string    // the leaf's serial number, upper-case hex
	NotAfter    time.Time // the leaf's notAfter, to the millisecond
}

// IsZero reports whether no issued certificate is recorded.
func (c IssuedCert) IsZero() bool { return c.Fingerprint == "" }

// MaxReturnedPayload is the largest returned payload the ledger keeps, in
// bytes. DPS answers are at most 96 KB; what a device needs flashed with
// it is far smaller.
const MaxReturnedPayload = 16 << 10

// KeptPayload returns the value Device.ReturnedPayload keeps of the payload
// DPS returned: the payload compacted, if it is a JSON object of at most
// MaxReturnedPayload bytes once compacted; "" otherwise (no payload, not
// JSON, not an object, too large).
func KeptPayload(raw []byte) string {
	if len(raw) == 0 || len(raw) > 8*MaxReturnedPayload {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return ""
	}
	if b := buf.Bytes(); len(b) == 0 || b[0] != '{' || len(b) > MaxReturnedPayload {
		return ""
	}
	return buf.String()
}

// Record identifies one version of a device's registration record at DPS,
// as DPS wrote it (strings are kept verbatim: they are compared, never parsed,
// so no local clock is involved).
type Record struct {
	ETag    string // etag
	Updated string // lastUpdatedDateTimeUtc
	Created string // createdDateTimeUtc
}

// IsZero reports whether nothing is known of the record.
func (r Record) IsZero() bool { return r.ETag == "" && r.Updated == "" }

// Same reports whether r and o are the same version of a registration
// record: the same etag, or with no etag on either side, the same
// lastUpdatedDateTimeUtc. Unknown records are never the same.
func (r Record) Same(o Record) bool {
	if r.ETag != "" && o.ETag != "" {
		return r.ETag == o.ETag
	}
	if r.ETag != "" || o.ETag != "" {
		// One side has an etag and the other not: compare what both have.
		return r.Updated != "" && r.Updated == o.Updated && r.Created == o.Created
	}
	return r.Updated != "" && r.Updated == o.Updated
}

// Attempt is one HTTP transaction with DPS, appended to the attempt log.
type Attempt struct {
	RegistrationID string        // "" = the device of the Put
	RunID          int64         // 0 = the device's RunID
	Kind           string        // "register" | "poll" | "lookup"
	HTTPStatus     int           // 0 = transport error
	ErrorCode      int           // DPS 6-digit code, 0 = none
	RequestID      string        // x-ms-request-id / trackingId
	Latency        time.Duration // stored to the microsecond
	At             time.Time     // start of the transaction; zero = commit time. Stored to the millisecond.
}

// kindCodes are the integers stored in attempts.kind; part of the file format.
var kindCodes = map[string]int{"register": 1, "poll": 2, "lookup": 3}

// kindOf maps a stored code back to its kind.
func kindOf(code int) string {
	for k, c := range kindCodes {
		if c == code {
			return k
		}
	}
	return fmt.Sprintf("kind-%d", code)
}

// packID stores a canonical lower-case GUID (what DPS sends as
// x-ms-request-id) as 16 bytes instead of 36 characters; anything else is
// stored as text. unpackID inverts it exactly.
func packID(s string) any {
	if s == "" {
		return nil
	}
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return s
	}
	hexDigits := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if strings.ToLower(hexDigits) != hexDigits {
		return s // upper case would not round-trip
	}
	b, err := hex.DecodeString(hexDigits)
	if err != nil {
		return s
	}
	return b
}

// unpackID reverses packID.
func unpackID(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []byte:
		if len(v) != 16 {
			return hex.EncodeToString(v)
		}
		h := hex.EncodeToString(v)
		return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	}
	return fmt.Sprint(v)
}

// msOrNull stores a time as Unix milliseconds, the zero time as NULL.
func msOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// timeOf reverses msOrNull; times come back in UTC.
func timeOf(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMilli(n.Int64).UTC()
}

// idOrNull stores run id 0 as NULL, which the foreign key allows.
func idOrNull(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

const deviceColumns = `registration_id, state, operation_id, assigned_hub, device_id, substatus,
	error_code, error_message, hint, http_status, request_id, attempts, polls, fingerprint,
	first_attempt_at, finished_at, updated_at, run_id,
	campaign_id, put_at, dps_etag, dps_updated, dps_created,
	returned_payload, issued_fingerprint, issued_serial, issued_not_after, cert_lost, csr_sent, issued_chain`

const deviceSQL = `SELECT ` + deviceColumns + ` FROM devices WHERE registration_id = ?`

// upsertSQL writes a whole device row. updated_at is argument 17 (index 16).
const upsertSQL = `INSERT INTO devices (` + deviceColumns + `)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (registration_id) DO UPDATE SET
		state = excluded.state, operation_id = excluded.operation_id,
		assigned_hub = excluded.assigned_hub, device_id = excluded.device_id,
		substatus = excluded.substatus, error_code = excluded.error_code,
		error_message = excluded.error_message, hint = excluded.hint,
		http_status = excluded.http_status, request_id = excluded.request_id,
		attempts = excluded.attempts, polls = excluded.polls,
		fingerprint = excluded.fingerprint, first_attempt_at = excluded.first_attempt_at,
		finished_at = excluded.finished_at, updated_at = excluded.updated_at,
		run_id = excluded.run_id, campaign_id = excluded.campaign_id,
		put_at = excluded.put_at, dps_etag = excluded.dps_etag,
		dps_updated = excluded.dps_updated, dps_created = excluded.dps_created,
		returned_payload = excluded.returned_payload,
		issued_fingerprint = excluded.issued_fingerprint, issued_serial = excluded.issued_serial,
		issued_not_after = excluded.issued_not_after, cert_lost = excluded.cert_lost,
		csr_sent = excluded.csr_sent, issued_chain = excluded.issued_chain
	RETURNING id`

// updatedAtArg is the index of updated_at in the upsert arguments.
const updatedAtArg = 16

// attemptSQL appends to the log; the device id is argument 1 and at is
// argument 8 (indexes 0 and 7).
const attemptSQL = `INSERT INTO attempts (device, run_id, kind, http_status, error_code, request_id, latency_us, at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?)`

// attemptAtArg is the index of at in the attempt arguments.
const attemptAtArg = 7

// deviceArgs validates d and returns the upsert arguments (updated_at is
// filled in at commit time).
func deviceArgs(d Device) ([]any, error) {
	if d.RegistrationID == "" {
		return nil, fmt.Errorf("device has an empty registration id")
	}
	code, certLost, ok := storedState(d.State)
	if !ok {
		return nil, fmt.Errorf("device %s: unknown state %q", d.RegistrationID, d.State)
	}
	if len(d.IssuedChain) > MaxIssuedChain {
		return nil, fmt.Errorf("device %s: issued chain of %d bytes, more than %d", d.RegistrationID, len(d.IssuedChain), MaxIssuedChain)
	}
	if len(d.ReturnedPayload) > MaxReturnedPayload {
		return nil, fmt.Errorf("device %s: returned payload of %d bytes, more than %d (use KeptPayload)", d.RegistrationID, len(d.ReturnedPayload), MaxReturnedPayload)
	}
	return []any{
		d.RegistrationID, code, d.OperationID, d.AssignedHub, d.DeviceID, d.Substatus,
		d.ErrorCode, d.ErrorMessage, d.Hint, d.HTTPStatus, packID(d.RequestID), d.Attempts, d.Polls, d.Fingerprint,
		msOrNull(d.FirstAttemptAt), msOrNull(d.FinishedAt), nil, idOrNull(d.RunID),
		d.CampaignID, msOrNull(d.PutAt), d.Record.ETag, d.Record.Updated, d.Record.Created,
		d.ReturnedPayload, d.Issued.Fingerprint, d.Issued.Serial, msOrNull(d.Issued.NotAfter), certLost,
		d.CSRSent, d.IssuedChain,
	}, nil
}

// attemptArgs validates a and returns its insert arguments (the device id
// and a zero At are filled in at commit time).
func attemptArgs(d Device, a Attempt) ([]any, error) {
	if a.RegistrationID != "" && a.RegistrationID != d.RegistrationID {
		return nil, fmt.Errorf("device %s: attempt is for device %s", d.RegistrationID, a.RegistrationID)
	}
	kind, ok := kindCodes[a.Kind]
	if !ok {
		return nil, fmt.Errorf("device %s: unknown attempt kind %q", d.RegistrationID, a.Kind)
	}
	run := a.RunID
	if run == 0 {
		run = d.RunID
	}
	return []any{
		nil, idOrNull(run), kind, a.HTTPStatus, a.ErrorCode, packID(a.RequestID), a.Latency.Microseconds(), msOrNull(a.At),
	}, nil
}

// rowScanner is *sql.Row or *sql.Rows.
type rowScanner interface{ Scan(dest ...any) error }

// scanDevice reads one row selected with deviceColumns.
func scanDevice(s rowScanner) (Device, error) {
	var (
		d                       Device
		state                   int
		reqID                   any
		first, finished, update sql.NullInt64
		run, putAt, notAfter    sql.NullInt64
		certLost                int
	)
	err := s.Scan(&d.RegistrationID, &state, &d.OperationID, &d.AssignedHub, &d.DeviceID, &d.Substatus,
		&d.ErrorCode, &d.ErrorMessage, &d.Hint, &d.HTTPStatus, &reqID, &d.Attempts, &d.Polls, &d.Fingerprint,
		&first, &finished, &update, &run,
		&d.CampaignID, &putAt, &d.Record.ETag, &d.Record.Updated, &d.Record.Created,
		&d.ReturnedPayload, &d.Issued.Fingerprint, &d.Issued.Serial, &notAfter, &certLost,
		&d.CSRSent, &d.IssuedChain)
	if err != nil {
		return Device{}, err
	}
	d.Issued.NotAfter = timeOf(notAfter)
	if d.State, err = stateOf(state, certLost); err != nil {
		return Device{}, fmt.Errorf("device %s: %w", d.RegistrationID, err)
	}
	d.RequestID = unpackID(reqID)
	d.FirstAttemptAt, d.FinishedAt, d.UpdatedAt = timeOf(first), timeOf(finished), timeOf(update)
	d.RunID = run.Int64
	d.PutAt = timeOf(putAt)
	return d, nil
}

// Device returns the row of one device; ok is false when the ledger does not
// know it.
func (l *Ledger) Device(ctx context.Context, registrationID string) (d Device, ok bool, err error) {
	if err := l.notClosed("read device " + registrationID); err != nil {
		return Device{}, false, err
	}
	d, err = scanDevice(l.deviceStmt.QueryRowContext(ctx, registrationID))
	switch {
	case err == sql.ErrNoRows:
		return Device{}, false, nil
	case err != nil:
		return Device{}, false, l.classify("read device "+registrationID, err)
	}
	return d, true, nil
}

// AddPending inserts the devices the ledger does not know yet, in state
// pending, in one transaction; known devices are left untouched. It keeps
// RegistrationID, Fingerprint and RunID of each device and ignores the other
// fields. It returns how many rows were added. The runner calls it in chunks
// (thousands of devices) before dispatching work.
func (l *Ledger) AddPending(ctx context.Context, devices []Device) (added int, err error) {
	if err := l.writable("add pending devices"); err != nil {
		return 0, err
	}
	for i, d := range devices {
		if d.RegistrationID == "" {
			return 0, fmt.Errorf("ledger %s: add pending devices: device %d of %d has an empty registration id", l.path, i+1, len(devices))
		}
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return 0, l.classify("add pending devices", err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, `INSERT INTO devices (registration_id, state, fingerprint, updated_at, run_id)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (registration_id) DO NOTHING`)
	if err != nil {
		return 0, l.classify("add pending devices", err)
	}
	defer st.Close()
	now := l.now().UnixMilli()
	for _, d := range devices {
		res, err := st.ExecContext(ctx, d.RegistrationID, stateCodes[StatePending], d.Fingerprint, now, idOrNull(d.RunID))
		if err != nil {
			return 0, l.classify("add pending device "+d.RegistrationID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, l.classify("add pending device "+d.RegistrationID, err)
		}
		added += int(n)
	}
	if err := tx.Commit(); err != nil {
		return 0, l.classify("add pending devices: commit", err)
	}
	return added, nil
}

// eachPage is how many rows Each reads per read transaction. Short reads
// keep the WAL from growing while fn runs and let fn call Put.
const eachPage = 512

// Each calls fn for every device in one of states (nil or empty: every
// device), in registration id order, stopping at the first error, which it
// returns as is.
//
// Rows are read in pages of a few hundred, each page in its own short read
// transaction, so fn may write to the ledger (Put) while Each runs. Every
// device is seen at most once; a device written after Each started is seen
// with its new state if Each has not reached it yet.
func (l *Ledger) Each(ctx context.Context, states []State, fn func(Device) error) error {
	var (
		where strings.Builder
		args  []any
	)
	where.WriteString("registration_id > ?")
	if len(states) > 0 {
		where.WriteString(" AND (")
		for i, s := range states {
			cond, condArgs, ok := stateCondition(s)
			if !ok {
				return fmt.Errorf("ledger %s: list devices: unknown state %q", l.path, s)
			}
			if i > 0 {
				where.WriteString(" OR ")
			}
			where.WriteString(cond)
			args = append(args, condArgs...)
		}
		where.WriteString(")")
	}
	query := fmt.Sprintf("SELECT %s FROM devices WHERE %s ORDER BY registration_id LIMIT %d", deviceColumns, where.String(), eachPage)

	after := ""
	for {
		if err := l.notClosed("list devices"); err != nil {
			return err
		}
		page, err := l.devicePage(ctx, query, append([]any{after}, args...))
		if err != nil {
			return err
		}
		for _, d := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(d); err != nil {
				return err
			}
		}
		if len(page) < eachPage {
			return nil
		}
		after = page[len(page)-1].RegistrationID
	}
}

// devicePage runs one page query of Each.
func (l *Ledger) devicePage(ctx context.Context, query string, args []any) ([]Device, error) {
	rows, err := l.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, l.classify("list devices", err)
	}
	defer rows.Close()
	page := make([]Device, 0, eachPage)
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, l.classify("list devices", err)
		}
		page = append(page, d)
	}
	if err := rows.Err(); err != nil {
		return nil, l.classify("list devices", err)
	}
	return page, nil
}

// Counts summarises the ledger.
type Counts struct {
	Total    int            // devices
	ByState  map[State]int  // devices per state; states with no device are absent
	ByHub    map[string]int // assigned devices per IoT hub
	Attempts int            // register PUTs sent, over all devices and runs
	Polls    int            // operation polls and status lookups sent, over all devices and runs
}

// Counts returns the totals of the ledger, all read from one snapshot.
func (l *Ledger) Counts(ctx context.Context) (Counts, error) {
	if err := l.notClosed("count devices"); err != nil {
		return Counts{}, err
	}
	c := Counts{ByState: map[State]int{}, ByHub: map[string]int{}}
	tx, err := l.readTx(ctx)
	if err != nil {
		return Counts{}, l.classify("count devices", err)
	}
	defer tx.Rollback()

	rows, err := tx.QueryContext(ctx, "SELECT state, cert_lost, count(*), total(attempts), total(polls) FROM devices GROUP BY state, cert_lost")
	if err != nil {
		return Counts{}, l.classify("count devices", err)
	}
	for rows.Next() {
		var code, lost, n int
		var attempts, polls float64
		if err := rows.Scan(&code, &lost, &n, &attempts, &polls); err != nil {
			rows.Close()
			return Counts{}, l.classify("count devices", err)
		}
		s, err := stateOf(code, lost)
		if err != nil {
			rows.Close()
			return Counts{}, l.classify("count devices", err)
		}
		c.ByState[s] = n
		c.Total += n
		c.Attempts += int(attempts)
		c.Polls += int(polls)
	}
	if err := closeRows(rows); err != nil {
		return Counts{}, l.classify("count devices", err)
	}

	rows, err = tx.QueryContext(ctx, "SELECT assigned_hub, count(*) FROM devices WHERE state = ? AND cert_lost = 0 GROUP BY assigned_hub", stateCodes[StateAssigned])
	if err != nil {
		return Counts{}, l.classify("count devices per hub", err)
	}
	for rows.Next() {
		var hub string
		var n int
		if err := rows.Scan(&hub, &n); err != nil {
			rows.Close()
			return Counts{}, l.classify("count devices per hub", err)
		}
		c.ByHub[hub] = n
	}
	if err := closeRows(rows); err != nil {
		return Counts{}, l.classify("count devices per hub", err)
	}
	return c, nil
}

// closeRows returns the iteration error of rows, then its close error.
func closeRows(rows *sql.Rows) error {
	if err := rows.Err(); err != nil {
		rows.Close()
		return err
	}
	return rows.Close()
}

// Attempts returns the attempt log of one device, oldest first. It is meant
// for diagnostics: the log has no index by device, so it reads the whole log.
func (l *Ledger) Attempts(ctx context.Context, registrationID string) ([]Attempt, error) {
	if err := l.notClosed("read attempts of " + registrationID); err != nil {
		return nil, err
	}
	rows, err := l.rdb.QueryContext(ctx, `SELECT a.run_id, a.kind, a.http_status, a.error_code, a.request_id, a.latency_us, a.at
		FROM attempts a WHERE a.device = (SELECT id FROM devices WHERE registration_id = ?) ORDER BY a.rowid`, registrationID)
	if err != nil {
		return nil, l.classify("read attempts of "+registrationID, err)
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		var (
			a       = Attempt{RegistrationID: registrationID}
			run     sql.NullInt64
			kind    int
			reqID   any
			latency int64
			at      sql.NullInt64
		)
		if err := rows.Scan(&run, &kind, &a.HTTPStatus, &a.ErrorCode, &reqID, &latency, &at); err != nil {
			return nil, l.classify("read attempts of "+registrationID, err)
		}
		a.RunID, a.Kind, a.RequestID = run.Int64, kindOf(kind), unpackID(reqID)
		a.Latency, a.At = time.Duration(latency)*time.Microsecond, timeOf(at)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, l.classify("read attempts of "+registrationID, err)
	}
	return out, nil
}

// IntegrityCheck runs SQLite's full integrity check and returns an error
// wrapping ErrCorrupt, with SQLite's first findings, unless it reports "ok".
// It reads every page, so it takes about a second per few hundred MB.
func (l *Ledger) IntegrityCheck(ctx context.Context) error {
	return l.check(ctx, "integrity check", "PRAGMA integrity_check(10)")
}

// QuickCheck runs SQLite's quick check: every page's structure, without
// comparing indexes with their tables, several times faster than
// IntegrityCheck. It returns an error wrapping ErrCorrupt unless it reports
// "ok". A run calls it before its first write, so that damage anywhere in
// the file (the attempt log included, which a run never reads) stops the
// run before it adds records to a file that may not keep them.
func (l *Ledger) QuickCheck(ctx context.Context) error {
	return l.check(ctx, "quick check", "PRAGMA quick_check(10)")
}

func (l *Ledger) check(ctx context.Context, op, pragma string) error {
	if err := l.notClosed(op); err != nil {
		return err
	}
	rows, err := l.rdb.QueryContext(ctx, pragma)
	if err != nil {
		return l.classify(op, err)
	}
	defer rows.Close()
	var found []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return l.classify(op, err)
		}
		found = append(found, s)
	}
	if err := rows.Err(); err != nil {
		return l.classify(op, err)
	}
	if len(found) == 1 && found[0] == "ok" {
		return nil
	}
	return &corruptError{path: l.path, op: op, detail: strings.Join(found, "; ")}
}

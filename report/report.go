// Package report exports a ledger as one row per device, as CSV or JSON
// lines, streamed so that a million-device ledger needs no more memory than
// a thousand-device one.
package report

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jszwec/csvutil"

	"github.com/dps-batch/dps-batch/ledger"
)

// Format is an output format.
type Format string

// The formats Write supports.
const (
	CSV        Format = "csv"
	JSONLines  Format = "jsonl"
	timeFormat        = time.RFC3339
)

// Row is one device in a report. The column names are part of the
// command-line contract; add columns only at the end.
type Row struct {
	RegistrationID string `csv:"registration_id" json:"registration_id"`
	Status         string `csv:"status" json:"status"`
	AssignedHub    string `csv:"assigned_hub" json:"assigned_hub,omitempty"`
	DeviceID       string `csv:"device_id" json:"device_id,omitempty"`
	Substatus      string `csv:"substatus" json:"substatus,omitempty"`
	OperationID    string `csv:"operation_id" json:"operation_id,omitempty"`
	ErrorCode      int    `csv:"error_code,omitempty" json:"error_code,omitempty"`
	ErrorMessage   string `csv:"error_message" json:"error_message,omitempty"`
	Hint           string `csv:"hint" json:"hint,omitempty"`
	Attempts       int    `csv:"attempts" json:"attempts"`
	FirstAttemptAt string `csv:"first_attempt_at" json:"first_attempt_at,omitempty"`
	FinishedAt     string `csv:"finished_at" json:"finished_at,omitempty"`
	RequestID      string `csv:"request_id" json:"request_id,omitempty"`
	// Enrollment is the device's individual enrollment as dps-batch enroll
	// left it ("" when enroll never handled it); EnrollmentError says why
	// it failed or differs.
	Enrollment      string  `csv:"enrollment" json:"enrollment,omitempty"`
	EnrollmentError string  `csv:"enrollment_error" json:"enrollmentError,omitempty"`
	Payload         Payload `csv:"payload" json:"payload,omitempty"`
	// IssuedCertSHA256, IssuedCertSerial and IssuedCertNotAfter identify
	// the certificate DPS issued the device at registration
	// (provision --issue-certs), once its chain is written; "" otherwise.
	IssuedCertSHA256   string `csv:"issued_cert_sha256" json:"issued_cert_sha256,omitempty"`
	IssuedCertSerial   string `csv:"issued_cert_serial" json:"issued_cert_serial,omitempty"`
	IssuedCertNotAfter string `csv:"issued_cert_not_after" json:"issued_cert_not_after,omitempty"`
	// Extra holds the columns carried from elsewhere (a manifest's own
	// columns, Options.Extra): in CSV one column each after payload, in
	// JSON lines the object "extra".
	Extra Extra `csv:"-" json:"extra,omitempty"`
}

// Columns returns the report's CSV column names, in order, before any
// extra column.
func Columns() []string {
	h, err := csvutil.Header(Row{}, "csv")
	if err != nil {
		panic(err) // Row's tags are fixed
	}
	return h
}

// Field is one carried column of a row: its name and the device's value.
type Field struct {
	Name, Value string
}

// Extra is a row's carried columns, in the order they were asked for. As
// JSON it is an object keeping that order.
type Extra []Field

// MarshalJSON returns the fields as one JSON object, in order.
func (x Extra) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range x {
		if i > 0 {
			b.WriteByte(',')
		}
		name, err := json.Marshal(f.Name)
		if err != nil {
			return nil, err
		}
		value, err := json.Marshal(f.Value)
		if err != nil {
			return nil, err
		}
		b.Write(name)
		b.WriteByte(':')
		b.Write(value)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads an object of string values, keeping their order.
func (x *Extra) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*x = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("report extra: want a JSON object")
	}
	out := Extra{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		var v string
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("report extra %q: %w", t, err)
		}
		out = append(out, Field{Name: t.(string), Value: v})
	}
	*x = out
	return nil
}

// Payload is the custom allocation payload DPS returned, a JSON object kept
// as text: a CSV report holds the text, a JSON lines report the object.
type Payload string

// MarshalText returns the JSON text, for CSV.
func (p Payload) MarshalText() ([]byte, error) { return []byte(p), nil }

// MarshalJSON returns the object itself (null when there is none).
func (p Payload) MarshalJSON() ([]byte, error) {
	if p == "" {
		return []byte("null"), nil
	}
	return []byte(p), nil
}

// UnmarshalJSON keeps the JSON value as text (null as "").
func (p *Payload) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*p = ""
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	*p = Payload(buf.String())
	return nil
}

// payloadOf returns the ledger's returned payload as a Payload, or "" when
// it is not valid JSON (the ledger only stores JSON objects, so only a
// damaged or hand-edited file has one that is not).
func payloadOf(s string) Payload {
	if s == "" || !json.Valid([]byte(s)) {
		return ""
	}
	return Payload(s)
}

// FromDevice converts a ledger row to a report row (times in UTC, RFC 3339).
func FromDevice(d ledger.Device) Row {
	return Row{
		RegistrationID:     d.RegistrationID,
		Status:             string(d.State),
		AssignedHub:        d.AssignedHub,
		DeviceID:           d.DeviceID,
		Substatus:          d.Substatus,
		OperationID:        d.OperationID,
		ErrorCode:          d.ErrorCode,
		ErrorMessage:       d.ErrorMessage,
		Hint:               d.Hint,
		Attempts:           d.Attempts,
		FirstAttemptAt:     formatTime(d.FirstAttemptAt),
		FinishedAt:         formatTime(d.FinishedAt),
		RequestID:          d.RequestID,
		Payload:            payloadOf(d.ReturnedPayload),
		IssuedCertSHA256:   strings.TrimPrefix(d.Issued.Fingerprint, "sha256:"),
		IssuedCertSerial:   d.Issued.Serial,
		IssuedCertNotAfter: formatTime(d.Issued.NotAfter),
	}
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeFormat)
}

// ParseFormat checks a --format value.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case CSV, JSONLines:
		return Format(s), nil
	}
	return "", fmt.Errorf("unknown report format %q: use csv or jsonl", s)
}

// Options controls WriteWith.
type Options struct {
	// States selects the devices by state; nil or empty selects all.
	States []ledger.State
	// Extra carries more columns into the report (none when it has no
	// names).
	Extra ExtraColumns
}

// ExtraColumns are columns carried into a report from elsewhere, such as
// the columns of the manifest the devices were provisioned from.
type ExtraColumns struct {
	// Names are the columns, in order. In CSV they follow the report's
	// own columns, so none may be one of Columns(); in JSON lines they are
	// the keys of the object "extra".
	Names []string
	// Values returns a device's values, one per name, by registration id;
	// missing values (a nil or short slice: a device the source lacks) are
	// empty.
	Values func(registrationID string) []string
}

// check reports why the names cannot head columns of a report in format f.
func (x ExtraColumns) check(f Format) error {
	own := map[string]bool{}
	if f != JSONLines {
		for _, c := range Columns() {
			own[c] = true
		}
	}
	seen := map[string]bool{}
	for _, n := range x.Names {
		switch {
		case n == "":
			return fmt.Errorf("an extra report column has no name")
		case own[n]:
			return fmt.Errorf("extra column %s: the report has a column of that name already", n)
		case seen[n]:
			return fmt.Errorf("extra column %s is named twice", n)
		}
		seen[n] = true
	}
	return nil
}

// fill sets dst (one entry per name) to the device's values.
func (x ExtraColumns) fill(dst []string, id string) {
	var values []string
	if x.Values != nil {
		values = x.Values(id)
	}
	for i := range dst {
		dst[i] = ""
		if i < len(values) {
			dst[i] = values[i]
		}
	}
}

// row returns the device's extra fields.
func (x ExtraColumns) row(id string) Extra {
	values := make([]string, len(x.Names))
	x.fill(values, id)
	out := make(Extra, len(x.Names))
	for i, n := range x.Names {
		out[i] = Field{Name: n, Value: values[i]}
	}
	return out
}

// appendWriter writes each record with more fields appended.
type appendWriter struct {
	w     *csv.Writer
	extra []string // the fields to append to the next record
	buf   []string
}

func (a *appendWriter) Write(rec []string) error {
	a.buf = append(append(a.buf[:0], rec...), a.extra...)
	return a.w.Write(a.buf)
}

// withEnrollment adds the device's enrollment side to its row.
func withEnrollment(r Row, e ledger.Enrollment, ok bool) Row {
	if ok {
		r.Enrollment = string(e.State)
		if e.State == ledger.EnrollFailed || e.State == ledger.EnrollExistsDifferent {
			r.EnrollmentError = e.ErrorMessage
		}
	}
	return r
}

// Write streams the devices of l in the given states (nil = all), ordered by
// registration id, to w. It returns the number of rows written. It is
// WriteWith with only Options.States.
func Write(ctx context.Context, l *ledger.Ledger, w io.Writer, f Format, states []ledger.State) (int, error) {
	return WriteWith(ctx, l, w, f, Options{States: states})
}

// WriteWith streams the devices of l that opts selects, ordered by
// registration id, to w, with the extra columns of opts. It returns the
// number of rows written.
func WriteWith(ctx context.Context, l *ledger.Ledger, w io.Writer, f Format, opts Options) (int, error) {
	if err := opts.Extra.check(f); err != nil {
		return 0, err
	}
	extra := len(opts.Extra.Names) > 0
	n := 0
	switch f {
	case JSONLines:
		enc := json.NewEncoder(w)
		err := l.EachWithEnrollment(ctx, opts.States, func(d ledger.Device, en ledger.Enrollment, ok bool) error {
			n++
			row := withEnrollment(FromDevice(d), en, ok)
			if extra {
				row.Extra = opts.Extra.row(d.RegistrationID)
			}
			return enc.Encode(row)
		})
		return n, err
	case CSV, "":
		cw := csv.NewWriter(w)
		aw := &appendWriter{w: cw, extra: opts.Extra.Names}
		enc := csvutil.NewEncoder(aw)
		// The header is written even for an empty report, so consumers always
		// see the columns.
		if err := enc.EncodeHeader(Row{}); err != nil {
			return 0, err
		}
		values := make([]string, len(opts.Extra.Names))
		err := l.EachWithEnrollment(ctx, opts.States, func(d ledger.Device, en ledger.Enrollment, ok bool) error {
			n++
			if extra {
				opts.Extra.fill(values, d.RegistrationID)
				aw.extra = values
			}
			return enc.Encode(withEnrollment(FromDevice(d), en, ok))
		})
		cw.Flush()
		if err == nil {
			err = cw.Error()
		}
		return n, err
	}
	return 0, fmt.Errorf("unknown report format %q", f)
}

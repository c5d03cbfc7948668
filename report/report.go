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
	RegistrationID string  `csv:"registration_id" json:"registration_id"`
	Status         string  `csv:"status" json:"status"`
	AssignedHub    string  `csv:"assigned_hub" json:"assigned_hub,omitempty"`
	DeviceID       string  `csv:"device_id" json:"device_id,omitempty"`
	Substatus      string  `csv:"substatus" json:"substatus,omitempty"`
	OperationID    string  `csv:"operation_id" json:"operation_id,omitempty"`
	ErrorCode      int     `csv:"error_code,omitempty" json:"error_code,omitempty"`
	ErrorMessage   string  `csv:"error_message" json:"error_message,omitempty"`
	Hint           string  `csv:"hint" json:"hint,omitempty"`
	Attempts       int     `csv:"attempts" json:"attempts"`
	FirstAttemptAt string  `csv:"first_attempt_at" json:"first_attempt_at,omitempty"`
	FinishedAt     string  `csv:"finished_at" json:"finished_at,omitempty"`
	RequestID      string  `csv:"request_id" json:"request_id,omitempty"`
	Payload        Payload `csv:"payload" json:"payload,omitempty"`
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
		RegistrationID: d.RegistrationID,
		Status:         string(d.State),
		AssignedHub:    d.AssignedHub,
		DeviceID:       d.DeviceID,
		Substatus:      d.Substatus,
		OperationID:    d.OperationID,
		ErrorCode:      d.ErrorCode,
		ErrorMessage:   d.ErrorMessage,
		Hint:           d.Hint,
		Attempts:       d.Attempts,
		FirstAttemptAt: formatTime(d.FirstAttemptAt),
		FinishedAt:     formatTime(d.FinishedAt),
		RequestID:      d.RequestID,
		Payload:        payloadOf(d.ReturnedPayload),
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

// Write streams the devices of l in the given states (nil = all), ordered by
// registration id, to w. It returns the number of rows written.
func Write(ctx context.Context, l *ledger.Ledger, w io.Writer, f Format, states []ledger.State) (int, error) {
	n := 0
	switch f {
	case JSONLines:
		enc := json.NewEncoder(w)
		err := l.Each(ctx, states, func(d ledger.Device) error {
			n++
			return enc.Encode(FromDevice(d))
		})
		return n, err
	case CSV, "":
		cw := csv.NewWriter(w)
		enc := csvutil.NewEncoder(cw)
		// The header is written even for an empty report, so consumers always
		// see the columns.
		if err := enc.EncodeHeader(Row{}); err != nil {
			return 0, err
		}
		err := l.Each(ctx, states, func(d ledger.Device) error {
			n++
			return enc.Encode(FromDevice(d))
		})
		cw.Flush()
		if err == nil {
			err = cw.Error()
		}
		return n, err
	}
	return 0, fmt.Errorf("unknown report format %q", f)
}

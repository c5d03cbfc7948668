package report

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// fixedLedger holds one device in each interesting state, with fixed times.
func fixedLedger(t *testing.T) *ledger.Ledger {
	t.Helper()
	ctx := context.Background()
	now := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	led, err := ledger.Open(ctx, filepath.Join(t.TempDir(), "r.ledger"), ledger.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	run, err := led.StartRun(ctx, "provision", nil)
	if err != nil {
		t.Fatal(err)
	}
	t0, t1 := now.Add(-2*time.Minute), now.Add(-time.Minute)
	devices := []ledger.Device{
		{RegistrationID: "dev-00001", State: ledger.StateAssigned, OperationID: "4.abc.1", AssignedHub: "hub-1.azure-devices.net",
			DeviceID: "dev-00001", Substatus: "initialAssignment", HTTPStatus: 200, RequestID: "9f0e4a52-0000-4000-8000-000000000001",
			Attempts: 1, FirstAttemptAt: t0, FinishedAt: t1, ReturnedPayload: `{"line":3,"firmware":"v1.2, \"stable\""}`,
			Issued: ledger.IssuedCert{Fingerprint: "sha256:5d41402abc4b2a76b9719d911017c592ae3e0d4b6f5c2b1c0a1e0f3b5d9e8c7a", Serial: "7F3A0C", NotAfter: now.Add(30 * 24 * time.Hour)}},
		{RegistrationID: "dev-00002", State: ledger.StateFailed, HTTPStatus: 401, ErrorCode: 401002, ErrorMessage: "Invalid certificate.",
			Hint: "certificate chain not accepted, with a comma", RequestID: "9f0e4a52-0000-4000-8000-000000000002", Attempts: 1,
			FirstAttemptAt: t0, FinishedAt: t1},
		{RegistrationID: "dev-00003", State: ledger.StateDisabled, ErrorCode: 400209, ErrorMessage: "enrollment \"disabled\"",
			Attempts: 2, FirstAttemptAt: t0, FinishedAt: t1},
		{RegistrationID: "dev-00004", State: ledger.StateAssigning, OperationID: "4.abc.4", Attempts: 1, FirstAttemptAt: t0},
		{RegistrationID: "dev-00005", State: ledger.StatePending},
	}
	for _, d := range devices {
		d.RunID = run
		if err := led.Put(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	return led
}

func TestGoldenReports(t *testing.T) {
	// Columns of a manifest, carried into the report: dev-00004 has no row,
	// dev-00005 a short one; values with commas, quotes and non-ASCII.
	manifest := ExtraColumns{Names: []string{"hub", "line", "notes"}, Values: func(id string) []string {
		return map[string][]string{
			"dev-00001": {"hub-1", "3", `first, "golden" unit`},
			"dev-00002": {"hub-2", "3", "Prüfstand 2"},
			"dev-00003": {"", "4", ""},
			"dev-00005": {"hub-1"},
		}[id]
	}}
	for _, tt := range []struct {
		format Format
		opts   Options
		golden string
	}{
		{CSV, Options{}, "report.golden.csv"},
		{JSONLines, Options{}, "report.golden.jsonl"},
		{CSV, Options{States: []ledger.State{ledger.StateFailed, ledger.StateDisabled}}, "failures.golden.csv"},
		{CSV, Options{Extra: manifest}, "extra.golden.csv"},
		{JSONLines, Options{Extra: manifest}, "extra.golden.jsonl"},
	} {
		t.Run(tt.golden, func(t *testing.T) {
			var buf bytes.Buffer
			if _, err := WriteWith(context.Background(), fixedLedger(t), &buf, tt.format, tt.opts); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./report -update to create it)", err)
			}
			if got := buf.String(); got != string(want) {
				t.Errorf("report differs from %s (go test ./report -update rewrites it after an intended change)\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

func TestEmptyReportHasHeader(t *testing.T) {
	led, err := ledger.Open(context.Background(), filepath.Join(t.TempDir(), "e.ledger"), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	var buf bytes.Buffer
	n, err := Write(context.Background(), led, &buf, CSV, nil)
	if err != nil || n != 0 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if want := "registration_id,status,assigned_hub,device_id,substatus,operation_id,error_code,error_message,hint,attempts,first_attempt_at,finished_at,request_id,enrollment,enrollment_error,payload,issued_cert_sha256,issued_cert_serial,issued_cert_not_after\n"; buf.String() != want {
		t.Errorf("empty report = %q, want header %q", buf.String(), want)
	}
}

func TestParseFormat(t *testing.T) {
	for in, ok := range map[string]bool{"csv": true, "jsonl": true, "xml": false, "": false} {
		if _, err := ParseFormat(in); (err == nil) != ok {
			t.Errorf("ParseFormat(%q) error = %v, want ok=%v", in, err, ok)
		}
	}
}

// TestPayloadColumn: a returned payload is a JSON object in JSON lines and
// its text in CSV; a stored value that is not JSON (a damaged or
// hand-edited ledger) is left out rather than breaking the report.
func TestPayloadColumn(t *testing.T) {
	ctx := context.Background()
	led, err := ledger.Open(ctx, filepath.Join(t.TempDir(), "p.ledger"), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	for id, p := range map[string]string{"p-1": `{"a":[1,2],"b":"x,y"}`, "p-2": `{"a":`, "p-3": ""} {
		if err := led.Put(ctx, ledger.Device{RegistrationID: id, State: ledger.StateAssigned, ReturnedPayload: p}); err != nil {
			t.Fatal(err)
		}
	}
	var jl, cv bytes.Buffer
	if _, err := Write(ctx, led, &jl, JSONLines, nil); err != nil {
		t.Fatalf("jsonl: %v", err)
	}
	if _, err := Write(ctx, led, &cv, CSV, nil); err != nil {
		t.Fatalf("csv: %v", err)
	}
	wantJL := `{"registration_id":"p-1","status":"assigned","attempts":0,"payload":{"a":[1,2],"b":"x,y"}}
{"registration_id":"p-2","status":"assigned","attempts":0}
{"registration_id":"p-3","status":"assigned","attempts":0}
`
	if jl.String() != wantJL {
		t.Errorf("jsonl =\n%s\nwant\n%s", jl.String(), wantJL)
	}
	if !strings.Contains(cv.String(), "\np-1,assigned,,,,,,,,0,,,,,,\"{\"\"a\"\":[1,2],\"\"b\"\":\"\"x,y\"\"}\",,,\np-2,assigned,,,,,,,,0,,,,,,,,,\n") {
		t.Errorf("csv =\n%s", cv.String())
	}

	// A per-device file's payload reads back as the same object.
	var f DeviceFile
	if err := json.Unmarshal([]byte(`{"registrationId":"p-1","status":"assigned","payload":{ "a": [1, 2], "b": "x,y" }}`), &f); err != nil {
		t.Fatal(err)
	}
	if f.Payload != `{"a":[1,2],"b":"x,y"}` {
		t.Errorf("DeviceFile.Payload = %q", f.Payload)
	}
}

// TestExtraColumns: carried columns read back in order (JSON lines) and
// under their names (CSV); names that would clash are refused before
// anything is written.
func TestExtraColumns(t *testing.T) {
	ctx := context.Background()
	led := fixedLedger(t)
	extra := ExtraColumns{Names: []string{"zone", "hub", "batch"}, Values: func(id string) []string {
		if id == "dev-00001" {
			return []string{"z9", "hub-7", "b1"}
		}
		return nil
	}}
	var jl bytes.Buffer
	if _, err := WriteWith(ctx, led, &jl, JSONLines, Options{States: []ledger.State{ledger.StateAssigned, ledger.StatePending}, Extra: extra}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(jl.String()), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], `"extra":{"zone":"z9","hub":"hub-7","batch":"b1"}}`) ||
		!strings.HasSuffix(lines[1], `"extra":{"zone":"","hub":"","batch":""}}`) {
		t.Fatalf("jsonl:\n%s", jl.String())
	}
	var row Row
	if err := json.Unmarshal([]byte(lines[0]), &row); err != nil {
		t.Fatal(err)
	}
	if want := (Extra{{"zone", "z9"}, {"hub", "hub-7"}, {"batch", "b1"}}); len(row.Extra) != 3 || row.Extra[0] != want[0] || row.Extra[1] != want[1] || row.Extra[2] != want[2] {
		t.Errorf("read back: extra %v, want %v", row.Extra, want)
	}
	var cv bytes.Buffer
	if _, err := WriteWith(ctx, led, &cv, CSV, Options{States: []ledger.State{ledger.StatePending}, Extra: extra}); err != nil {
		t.Fatal(err)
	}
	if want := strings.Join(Columns(), ",") + ",zone,hub,batch\ndev-00005,pending,,,,,,,,0,,,,,,,,,,,,\n"; cv.String() != want {
		t.Errorf("csv = %q, want %q", cv.String(), want)
	}

	for _, tt := range []struct {
		format Format
		names  []string
		want   string
	}{
		{CSV, []string{"hub", "status"}, "extra column status: the report has a column of that name already"},
		{CSV, []string{"hub", "hub"}, "extra column hub is named twice"},
		{JSONLines, []string{"hub", ""}, "has no name"},
	} {
		var buf bytes.Buffer
		_, err := WriteWith(ctx, led, &buf, tt.format, Options{Extra: ExtraColumns{Names: tt.names}})
		if err == nil || !strings.Contains(err.Error(), tt.want) || buf.Len() != 0 {
			t.Errorf("%s %v: error %v, wrote %q; want %q and nothing written", tt.format, tt.names, err, buf.String(), tt.want)
		}
	}
	// In JSON lines the names are nested, so a report column's name is fine.
	var buf bytes.Buffer
	if _, err := WriteWith(ctx, led, &buf, JSONLines, Options{Extra: ExtraColumns{Names: []string{"status"}}}); err != nil {
		t.Errorf("jsonl with an extra column named status: %v", err)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
)

// payloadFleet is a symmetric-key fleet whose manifest sends custom
// allocation payloads, and a simulator (real HTTPS on loopback) that echoes
// them back as a custom allocation webhook returning the payload would.
type payloadFleet struct {
	dir, manifest, ledger, caFile, groupKeyFile string
	groupKey                                    string            // base64
	keys                                        map[string]string // base64 key each device signs with
	payloads                                    map[string]string // compact payload DPS returns (and the ledger keeps), by id
	srv                                         *dpssim.Running
}

func newPayloadFleet(t *testing.T) *payloadFleet {
	t.Helper()
	dir := t.TempDir()
	f := &payloadFleet{
		dir: dir, manifest: filepath.Join(dir, "manifest.csv"), ledger: filepath.Join(dir, "fleet.ledger"),
		caFile: filepath.Join(dir, "sim-ca.pem"), groupKeyFile: filepath.Join(dir, "group.key"),
		keys: map[string]string{}, payloads: map[string]string{},
	}
	f.groupKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	if err := os.WriteFile(f.groupKeyFile, []byte(f.groupKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := `{"blob":"` + strings.Repeat("x", ledger.MaxReturnedPayload) + `"}` // DPS returns it; too big to keep
	cfg := dpssim.Config{
		CustomAllocation: dpssim.CustomAllocation{EchoPayload: true},
		Groups: []dpssim.EnrollmentGroup{{EnrollmentGroupID: "sensors",
			Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: f.groupKey}}}},
		Quotas: dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	}
	zero := 0
	cfg.RetryAfterSeconds = &zero
	rows := [][]string{{"registration_id", "symmetric_key", "payload"}}
	individual := []struct{ id, payload, want string }{
		{"line3-0001", `{"line":3,"station":"a, b"}`, `{"line":3,"station":"a, b"}`},
		{"line3-0002", "{ \"line\" : 3,\n \"tags\": [ \"x\" ] }", `{"line":3,"tags":["x"]}`},
		{"line3-0003", "", ""},
		{"line3-0004", big, ""},
	}
	for i, d := range individual {
		key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{byte(i + 1)}, 32))
		f.keys[d.id], f.payloads[d.id] = key, d.want
		rows = append(rows, []string{d.id, key, d.payload})
		cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{RegistrationID: d.id,
			Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: key}}})
	}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("sensor-%05d", i)
		key, err := dps.DeriveDeviceKey(f.groupKey, id)
		if err != nil {
			t.Fatal(err)
		}
		f.keys[id], f.payloads[id] = key, fmt.Sprintf(`{"sensor":%d}`, i)
		rows = append(rows, []string{id, "", f.payloads[id]})
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	if err := w.WriteAll(rows); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.manifest, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sim, err := dpssim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if f.srv, err = dpssim.StartTLS(sim, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	if err := os.WriteFile(f.caFile, f.srv.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *payloadFleet) provision(t *testing.T) {
	t.Helper()
	code, out, errs := runCmd(t, "provision", "--manifest", f.manifest, "--ledger", f.ledger,
		"--id-scope", dpssim.DefaultIDScope, "--endpoint", f.srv.URL, "--ca-file", f.caFile,
		"--group-key-file", f.groupKeyFile, "--rate", "-1", "--poll-rate", "-1")
	if code != exitOK {
		t.Fatalf("provision exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}

// TestReportPayloadFromDPS: the payload DPS returned comes back in the CSV
// and JSON lines reports (compacted; a payload over 16 KB is not kept), and
// in the per-device files for the flashing station.
func TestReportPayloadFromDPS(t *testing.T) {
	f := newPayloadFleet(t)
	f.provision(t)

	code, out, errs := runCmd(t, "report", "--ledger", f.ledger)
	if code != exitOK {
		t.Fatalf("report exit %d: %s", code, errs)
	}
	records, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	header := records[0]
	pcol := slices.Index(header, "payload")
	if pcol < 0 || header[len(header)-1] != "issued_cert_not_after" {
		t.Fatalf("report header %v: want payload, the issued certificate columns last", header)
	}
	seen := 0
	for _, rec := range records[1:] {
		id, status, payload := rec[0], rec[1], rec[pcol]
		want, ok := f.payloads[id]
		if !ok || status != "assigned" {
			t.Errorf("report row %v: unknown device or not assigned", rec)
			continue
		}
		seen++
		if payload != want {
			t.Errorf("%s: payload column %.80q, want %.80q", id, payload, want)
		}
	}
	if seen != len(f.payloads) {
		t.Errorf("report has %d devices, want %d", seen, len(f.payloads))
	}

	code, out, errs = runCmd(t, "report", "--ledger", f.ledger, "--format", "jsonl", "--state", "assigned")
	if code != exitOK {
		t.Fatalf("report jsonl exit %d: %s", code, errs)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var row struct {
			ID      string          `json:"registration_id"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			t.Fatalf("jsonl line %q: %v", line, err)
		}
		if string(row.Payload) != f.payloads[row.ID] {
			t.Errorf("%s: jsonl payload %s, want the object %s", row.ID, row.Payload, f.payloads[row.ID])
		}
	}

	// One file per device, for the flashing station.
	dir := filepath.Join(f.dir, "flash")
	code, _, errs = runCmd(t, "report", "--ledger", f.ledger, "--state", "assigned", "--per-device", dir)
	if code != exitOK || !strings.Contains(errs, fmt.Sprintf("Wrote %d device file(s) to %s", len(f.payloads), dir)) {
		t.Fatalf("report --per-device exit %d: %s", code, errs)
	}
	for id, want := range f.payloads {
		path := filepath.Join(dir, id+".json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var file map[string]json.RawMessage
		if err := json.Unmarshal(b, &file); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if string(file["registrationId"]) != `"`+id+`"` || string(file["status"]) != `"assigned"` ||
			!strings.HasPrefix(string(file["assignedHub"]), `"hub-`) || string(file["deviceId"]) != `"`+id+`"` {
			t.Errorf("%s: %s", path, b)
		}
		var compact bytes.Buffer
		if p, ok := file["payload"]; ok {
			json.Compact(&compact, p)
		}
		if compact.String() != want {
			t.Errorf("%s: payload %.80q, want %.80q", path, compact.String(), want)
		}
		if _, ok := file["symmetricKey"]; ok {
			t.Errorf("%s has a key without --with-keys", path)
		}
		if fi, _ := os.Stat(path); runtime.GOOS != "windows" && fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", path, fi.Mode().Perm())
		}
	}

	// The same again refuses, writing nothing; --force replaces.
	os.Remove(filepath.Join(dir, "sensor-00002.json"))
	code, _, errs = runCmd(t, "report", "--ledger", f.ledger, "--per-device", dir)
	if code != exitUsage || !strings.Contains(errs, "6 of the files exist already") || !strings.Contains(errs, "add --force") {
		t.Errorf("report --per-device over existing files: exit %d, stderr:\n%s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "sensor-00002.json")); err == nil {
		t.Errorf("a refused --per-device wrote a file")
	}
	code, _, errs = runCmd(t, "report", "--ledger", f.ledger, "--per-device", dir, "--force")
	if code != exitOK {
		t.Errorf("report --per-device --force: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "sensor-00002.json")); err != nil {
		t.Errorf("--force did not write the missing file: %v", err)
	}

	// The run history shows the provisioning run.
	code, out, errs = runCmd(t, "status", "--ledger", f.ledger, "--runs", "5")
	if code != exitOK || !strings.Contains(out, "all 1 run(s)") || !strings.Contains(out, "provision") || !strings.Contains(out, "assigned 7") {
		t.Errorf("status --runs 5: exit %d\n%s%s", code, out, errs)
	}
}

// TestReportPerDeviceWithKeys: --with-keys adds each device's key (the
// manifest's individual key or the one derived from the group key), in
// 0600 files; a wrong group key is refused before any file is written.
func TestReportPerDeviceWithKeys(t *testing.T) {
	f := newPayloadFleet(t)
	f.provision(t)
	dir := filepath.Join(f.dir, "keys")

	wrong := filepath.Join(f.dir, "wrong.key")
	if err := os.WriteFile(wrong, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := runCmd(t, "report", "--ledger", f.ledger, "--per-device", dir, "--with-keys", "--manifest", f.manifest, "--group-key-file", wrong)
	if code != exitUsage || !strings.Contains(errs, "device sensor-00001: the manifest's key is not the one it was provisioned with") ||
		!strings.Contains(errs, "and 2 more") {
		t.Errorf("--with-keys with a wrong group key: exit %d, stderr:\n%s", code, errs)
	}
	code, _, errs = runCmd(t, "report", "--ledger", f.ledger, "--per-device", dir, "--with-keys", "--manifest", f.manifest)
	if code != exitUsage || !strings.Contains(errs, "device sensor-00001 is a group device") || !strings.Contains(errs, "--group-key-file") {
		t.Errorf("--with-keys without the group key: exit %d, stderr:\n%s", code, errs)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatalf("a refused --with-keys created %s", dir)
	}

	code, _, errs = runCmd(t, "report", "--ledger", f.ledger, "--per-device", dir, "--with-keys", "--manifest", f.manifest, "--group-key-file", f.groupKeyFile)
	if code != exitOK || !strings.Contains(errs, "mode 0600") {
		t.Fatalf("--with-keys: exit %d: %s", code, errs)
	}
	for id, key := range f.keys {
		path := filepath.Join(dir, id+".json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var file struct {
			RegistrationID, AssignedHub, SymmetricKey string
		}
		if err := json.Unmarshal(b, &file); err != nil || file.RegistrationID != id || file.AssignedHub == "" {
			t.Errorf("%s: %s (%v)", path, b, err)
		}
		if file.SymmetricKey != key {
			t.Errorf("%s: symmetricKey %q, want the key the device registered with", path, file.SymmetricKey)
		}
		if fi, _ := os.Stat(path); runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(dir); runtime.GOOS != "windows" && fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: mode %v, want 0700", dir, fi.Mode().Perm())
	}
}

// TestReportManifestKeysX509: X.509 rows give no key and their files are
// not read; a device missing from the manifest, or listed twice, gives an
// error naming it.
func TestReportManifestKeysX509(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "m.csv")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	content := "registration_id,cert_path,key_path,symmetric_key\n" +
		"cam-1,devices/missing.pem,devices/missing.key,\n" +
		"sym-1,,," + key + "\n" +
		"dup-1,,," + key + "\n" +
		"dup-1,,," + key + "\n"
	if err := os.WriteFile(manifest, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	mk, err := readManifest(context.Background(), manifestRead{path: manifest, keys: true, groupKeyEnv: "DPS_GROUP_KEY"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		dev     ledger.Device
		want    string
		wantErr string
	}{
		{ledger.Device{RegistrationID: "cam-1", Fingerprint: "sha256:00"}, "", ""},
		{ledger.Device{RegistrationID: "sym-1"}, key, ""},
		{ledger.Device{RegistrationID: "sym-1", Fingerprint: "key:0000000000000000"}, "", "not the one it was provisioned with"},
		{ledger.Device{RegistrationID: "dup-1"}, "", "appears more than once"},
		{ledger.Device{RegistrationID: "gone-1"}, "", "device gone-1 is not in manifest"},
	} {
		got, err := mk.key(tt.dev)
		if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("key(%s, %s) = %q, %v; want %q, error containing %q", tt.dev.RegistrationID, tt.dev.Fingerprint, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestReportUsageErrors: bad --state values list the valid states; flags
// that only make sense together are refused, with nothing written.
func TestReportUsageErrors(t *testing.T) {
	dir := t.TempDir()
	led := filepath.Join(dir, "r.ledger")
	l, err := ledger.Open(context.Background(), led, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Put(context.Background(), ledger.Device{RegistrationID: "d-1", State: ledger.StateAssigned}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	const states = "the states are: pending, registering, assigning, assigned, issued-lost, disabled, failed, retryable"
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"state done", []string{"--state", "done"}, `unknown state "done" in --state; ` + states},
		{"state in a list", []string{"--state", "failed,finished"}, `unknown state "finished"`},
		{"state only commas", []string{"--state", " , "}, "names no state"},
		{"force alone", []string{"--force"}, "--force applies to --per-device files only"},
		{"with-keys alone", []string{"--with-keys"}, "--with-keys applies to --per-device files only"},
		{"per-device and out", []string{"--per-device", filepath.Join(dir, "x"), "--out", filepath.Join(dir, "r.csv")}, "--out and --per-device exclude each other"},
		{"per-device and format", []string{"--per-device", filepath.Join(dir, "x"), "--format", "jsonl"}, "--format and --per-device exclude each other"},
		{"manifest without keys", []string{"--per-device", filepath.Join(dir, "x"), "--manifest", "m.csv"}, "--manifest is read only with --with-keys"},
		{"keys without manifest", []string{"--per-device", filepath.Join(dir, "x"), "--with-keys"}, "--manifest is required"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmd(t, append([]string{"report", "--ledger", led}, tt.args...)...)
			if code != exitUsage || !strings.Contains(errs, tt.wantErr) || !strings.Contains(errs, "Try:") {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 2 and %q", code, errs, tt.wantErr)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Errorf("a refused command created the --per-device directory")
	}
	// Valid states in any case, repeated, with spaces.
	code, out, errs := runCmd(t, "report", "--ledger", led, "--state", "Assigned, failed,assigned")
	if code != exitOK || strings.Count(out, "\n") != 2 {
		t.Errorf("report --state 'Assigned, failed,assigned': exit %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "r.csv")); err == nil {
		t.Errorf("a refused command wrote r.csv")
	}
}

// mesFleet is a symmetric-key group fleet described by an MES export: its
// ids are in serial_number and it has columns of its own (Hub, line,
// notes), as provision reads it with --column registration_id=serial_number.
type mesFleet struct {
	dir, export, ledger, caFile, groupKeyFile, groupKey string
	srv                                                 *dpssim.Running
}

func newMESFleet(t *testing.T) *mesFleet {
	t.Helper()
	dir := t.TempDir()
	f := &mesFleet{dir: dir, export: filepath.Join(dir, "mes-export.csv"), ledger: filepath.Join(dir, "mes.ledger"),
		caFile: filepath.Join(dir, "sim-ca.pem"), groupKeyFile: filepath.Join(dir, "group.key"),
		groupKey: base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32))}
	if err := os.WriteFile(f.groupKeyFile, []byte(f.groupKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	export := "serial_number,Hub,line,notes\n" +
		"mes-0001,hub-a,3,\"first, \"\"golden\"\" unit\"\n" +
		"mes-0002,hub-a,3,\n" +
		"mes-0003,hub-b,4,Prüfstand 2\n" +
		"mes-0004,,4,\n"
	if err := os.WriteFile(f.export, []byte(export), 0o644); err != nil {
		t.Fatal(err)
	}
	zero := 0
	sim, err := dpssim.New(dpssim.Config{
		Groups: []dpssim.EnrollmentGroup{{EnrollmentGroupID: "line-3",
			Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: f.groupKey}}}},
		Quotas:            dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
		RetryAfterSeconds: &zero,
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.srv, err = dpssim.StartTLS(sim, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	if err := os.WriteFile(f.caFile, f.srv.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "provision", "--manifest", f.export, "--column", "registration_id=serial_number",
		"--ledger", f.ledger, "--id-scope", dpssim.DefaultIDScope, "--endpoint", f.srv.URL, "--ca-file", f.caFile,
		"--group-key-file", f.groupKeyFile, "--rate", "-1", "--poll-rate", "-1")
	if code != exitOK || !strings.Contains(out, "assigned 4") {
		t.Fatalf("provision of the MES export: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	return f
}

// TestReportColumns: --report-columns carries the MES export's own columns
// into the report, joined by registration id (CSV columns after payload,
// the JSON lines object "extra", in the order asked); a device the manifest
// does not list gets empty values; --column maps the manifest as provision
// read it, for --report-columns and --with-keys alike.
func TestReportColumns(t *testing.T) {
	f := newMESFleet(t)
	// A later export: other column order, mes-0004 gone, a device the
	// ledger does not have.
	later := filepath.Join(f.dir, "later.csv")
	if err := os.WriteFile(later, []byte("line,serial_number,notes,Hub\n4,mes-0003,,hub-c\n3,mes-0001,\"a, b\",hub-a\n9,mes-0099,,hub-z\n3,mes-0002,,hub-a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mapped := []string{"--column", "registration_id=serial_number"}

	code, out, errs := runCmd(t, append([]string{"report", "--ledger", f.ledger, "--manifest", later, "--report-columns", " hub, LINE,hub"}, mapped...)...)
	if code != exitOK {
		t.Fatalf("report --report-columns: exit %d\n%s", code, errs)
	}
	records, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	header := records[0]
	if n := len(header); n < 3 || header[n-3] != "issued_cert_not_after" || header[n-2] != "hub" || header[n-1] != "line" {
		t.Fatalf("header %v: want the report's own columns, then hub and line", header)
	}
	want := map[string][2]string{"mes-0001": {"hub-a", "3"}, "mes-0002": {"hub-a", "3"}, "mes-0003": {"hub-c", "4"}, "mes-0004": {"", ""}}
	if len(records) != 1+len(want) {
		t.Fatalf("report has %d rows, want %d (the ledger's devices only):\n%s", len(records)-1, len(want), out)
	}
	for _, rec := range records[1:] {
		n := len(rec)
		if w, ok := want[rec[0]]; !ok || rec[1] != "assigned" || rec[n-2] != w[0] || rec[n-1] != w[1] {
			t.Errorf("row %v: want %s assigned with hub %q, line %q", rec, rec[0], w[0], w[1])
		}
	}

	// JSON lines, to a file: the object "extra", in the order asked.
	path := filepath.Join(f.dir, "report.jsonl")
	code, _, errs = runCmd(t, append([]string{"report", "--ledger", f.ledger, "--manifest", f.export, "--report-columns", "notes,hub",
		"--format", "jsonl", "--out", path}, mapped...)...)
	if code != exitOK || !strings.Contains(errs, "Wrote 4 device(s)") {
		t.Fatalf("report --format jsonl --report-columns: exit %d\n%s", code, errs)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	wantExtra := []string{`{"notes":"first, \"golden\" unit","hub":"hub-a"}`, `{"notes":"","hub":"hub-a"}`, `{"notes":"Prüfstand 2","hub":"hub-b"}`, `{"notes":"","hub":""}`}
	if len(lines) != len(wantExtra) {
		t.Fatalf("jsonl has %d lines, want %d:\n%s", len(lines), len(wantExtra), b)
	}
	for i, line := range lines {
		var row struct {
			ID    string          `json:"registration_id"`
			Extra json.RawMessage `json:"extra"`
		}
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			t.Fatalf("jsonl line %q: %v", line, err)
		}
		if row.ID != fmt.Sprintf("mes-%04d", i+1) || string(row.Extra) != wantExtra[i] {
			t.Errorf("jsonl line %d: %s, %s; want extra %s", i+1, row.ID, row.Extra, wantExtra[i])
		}
	}

	// Without --report-columns, the report is as before.
	code, out, _ = runCmd(t, "report", "--ledger", f.ledger)
	if code != exitOK || !strings.HasPrefix(out, "registration_id,") || !strings.HasSuffix(strings.SplitN(out, "\n", 2)[0], ",issued_cert_not_after") {
		t.Errorf("report without --report-columns: exit %d\n%s", code, out)
	}

	// --with-keys reads the same export through the same --column mapping.
	dir := filepath.Join(f.dir, "flash")
	code, _, errs = runCmd(t, append([]string{"report", "--ledger", f.ledger, "--per-device", dir, "--with-keys", "--manifest", f.export,
		"--group-key-file", f.groupKeyFile}, mapped...)...)
	if code != exitOK {
		t.Fatalf("report --per-device --with-keys --column: exit %d\n%s", code, errs)
	}
	for i := 1; i <= 4; i++ {
		id := fmt.Sprintf("mes-%04d", i)
		b, err := os.ReadFile(filepath.Join(dir, id+".json"))
		if err != nil {
			t.Fatal(err)
		}
		var file struct{ SymmetricKey string }
		key, _ := dps.DeriveDeviceKey(f.groupKey, id)
		if err := json.Unmarshal(b, &file); err != nil || file.SymmetricKey != key {
			t.Errorf("%s: %s (%v): want the derived key", id, b, err)
		}
	}
}

// TestReportColumnsRefused: a column the manifest lacks is a usage error
// that lists the manifest's extra columns; so are a manifest read without
// the mapping it needs, a name the CSV report has already, a device listed
// twice with different values, and flags that do not go together. Nothing
// is written.
func TestReportColumnsRefused(t *testing.T) {
	f := newMESFleet(t)
	noExtra := filepath.Join(f.dir, "plain.csv")
	dup := filepath.Join(f.dir, "dup.csv")
	withStatus := filepath.Join(f.dir, "status.csv")
	for path, content := range map[string]string{
		noExtra:    "registration_id\nmes-0001\n",
		dup:        "registration_id,hub,line\nmes-0001,hub-a,3\nmes-0002,hub-a,3\nmes-0001,hub-b,3\nmes-0002,hub-a,3\n",
		withStatus: "registration_id,status,hub\nmes-0001,ok,hub-a\n",
	} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(f.dir, "r.csv")
	mapped := []string{"--manifest", f.export, "--column", "registration_id=serial_number"}
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"unknown column", append([]string{"--report-columns", "hub,station"}, mapped...),
			[]string{`--report-columns station: manifest ` + f.export + ` has no extra column "station"; its extra columns (those dps-batch does not read itself) are: hub, line, notes`, "Try: --report-columns hub,line,notes"}},
		{"a column of ours", append([]string{"--report-columns", "serial_number"}, mapped...),
			[]string{`has no extra column "serial_number"; its extra columns`}},
		{"no extra columns", []string{"--manifest", noExtra, "--report-columns", "hub"},
			[]string{"manifest " + noExtra + " has no extra columns"}},
		{"mapping missing", []string{"--manifest", f.export, "--report-columns", "hub"},
			[]string{"registration_id"}},
		{"mapping to an absent column", []string{"--manifest", noExtra, "--column", "registration_id=serial", "--report-columns", "hub"},
			[]string{"the header has no column serial"}},
		{"report column in CSV", []string{"--manifest", withStatus, "--report-columns", "hub,status"},
			[]string{"a CSV report has its own status column", "Try: --format jsonl"}},
		{"duplicate device", []string{"--manifest", dup, "--report-columns", "hub"},
			[]string{"lists devices twice with different values of --report-columns hub: mes-0001 (rows 2 and 4)"}},
		{"strict", append([]string{"--report-columns", "hub", "--strict"}, mapped...), []string{"leave out --strict"}},
		{"without manifest", []string{"--report-columns", "hub"}, []string{"--manifest is required"}},
		{"names nothing", append([]string{"--report-columns", " , "}, mapped...), []string{"names no column"}},
		{"manifest alone", []string{"--manifest", f.export}, []string{"--manifest is read only with --report-columns"}},
		{"column without manifest", []string{"--column", "registration_id=serial_number"}, []string{"--column says how to read --manifest, which is not given"}},
		{"per-device", append([]string{"--report-columns", "hub", "--per-device", filepath.Join(f.dir, "x")}, mapped...),
			[]string{"--report-columns and --per-device exclude each other"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"report", "--ledger", f.ledger}
			if !slices.Contains(tt.args, "--per-device") {
				args = append(args, "--out", out)
			}
			code, stdout, errs := runCmd(t, append(args, tt.args...)...)
			if code != exitUsage || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant exit 2", code, stdout, errs)
			}
			for _, w := range append(tt.wantErr, "Try:") {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused report wrote %s", out)
	}
	// The same duplicate with the same values is no conflict; a status
	// column can go into JSON lines, where the manifest's columns are nested.
	if code, _, errs := runCmd(t, "report", "--ledger", f.ledger, "--manifest", dup, "--report-columns", "line"); code != exitOK {
		t.Errorf("duplicate rows with equal values: exit %d\n%s", code, errs)
	}
	code, stdout, errs := runCmd(t, "report", "--ledger", f.ledger, "--manifest", withStatus, "--report-columns", "status", "--format", "jsonl", "--state", "assigned")
	if code != exitOK || !strings.Contains(stdout, `"status":"assigned"`) || !strings.Contains(stdout, `"extra":{"status":"ok"}`) {
		t.Errorf("jsonl with a manifest status column: exit %d\n%s%s", code, stdout, errs)
	}
}

package main

import (
	"encoding/base64"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/dps"
)

// symFleet is a fleet made by "certs fleet" (symmetric-key, or X.509),
// served by "dps-batch sim" in-process.
type symFleet struct {
	dir, manifest, groupKeyFile, caFile, url string
	ids                                      []string
	groupKey                                 string // base64, for symmetric-group fleets
}

// newSymFleet runs "certs fleet --attestation kind" and starts the
// simulator on the sim.json it wrote. Assignments are immediate and the
// Retry-After is 0, so provisioning takes no waiting.
func newSymFleet(t *testing.T, kind string, count int) symFleet {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fleet")
	code, out, errs := runCmd(t, "certs", "fleet", "--attestation", kind, "--count", strconv.Itoa(count), "--prefix", "sensor-", "--out", dir)
	if code != exitOK {
		t.Fatalf("certs fleet --attestation %s: exit %d\n%s\n%s", kind, code, out, errs)
	}
	f := symFleet{dir: dir, manifest: filepath.Join(dir, "manifest.csv"), caFile: filepath.Join(dir, "sim-ca.pem")}
	for i := 1; i <= count; i++ {
		f.ids = append(f.ids, fmt.Sprintf("sensor-%05d", i))
	}
	if kind == "symmetric-group" {
		f.groupKeyFile = filepath.Join(dir, "group.key")
		b, err := os.ReadFile(f.groupKeyFile)
		if err != nil {
			t.Fatal(err)
		}
		f.groupKey = strings.TrimSpace(string(b))
	}
	if kind != "x509" {
		checkNoKeyIn(t, f.secrets(t), "certs fleet output", out+errs)
	}
	f.url, _, _ = startSimCmd(t, "--config", filepath.Join(dir, "sim.json"), "--listen", "127.0.0.1:0",
		"--ca-out", f.caFile, "--retry-after", "0", "--registrations-per-minute", "-1")
	return f
}

// provisionArgs provisions manifest against the fleet's simulator.
func (f symFleet) provisionArgs(manifest string, extra ...string) []string {
	return append([]string{"provision", "--manifest", manifest, "--id-scope", "0ne00000000",
		"--endpoint", f.url, "--ca-file", f.caFile, "--quiet", "--rate", "-1", "--poll-rate", "-1"}, extra...)
}

// secrets are a symmetric fleet's keys, base64: the group key and each
// device's derived key, or each device's own key.
func (f symFleet) secrets(t *testing.T) []string {
	t.Helper()
	var out []string
	if f.groupKey != "" {
		out = append(out, f.groupKey)
		for _, id := range f.ids {
			k, err := dps.DeriveDeviceKey(f.groupKey, id)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, k)
		}
		return out
	}
	rows := mustReadCSV(t, f.manifest)
	for _, r := range rows[1:] {
		out = append(out, r[1])
	}
	return out
}

// checkNoKeyIn fails if any key, or its raw bytes, is in text.
func checkNoKeyIn(t *testing.T, keys []string, where, text string) {
	t.Helper()
	for _, k := range keys {
		raw, _ := base64.StdEncoding.DecodeString(k)
		if strings.Contains(text, k) || (len(raw) > 0 && strings.Contains(text, string(raw))) {
			t.Errorf("a key appears in %s", where)
			return
		}
	}
}

// mustReadCSV returns every record of a CSV file, header included.
func mustReadCSV(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rows
}

func checkFileMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode = %04o, want %04o", path, got, want)
	}
}

// TestKeysDeriveAuthenticates: the keys "keys derive" writes are the DPS
// derivation of the group key (dps.DeriveDeviceKey), and the simulator's
// enrollment group accepts them: their CSV, provisioned as a manifest with
// no group key at all, registers every device. Files are 0600; no key
// appears on stdout or stderr.
func TestKeysDeriveAuthenticates(t *testing.T) {
	f := newSymFleet(t, "symmetric-group", 5)
	keys := f.secrets(t)
	out := filepath.Join(f.dir, "device-keys.csv")
	code, stdout, stderr := runCmd(t, "keys", "derive", "--manifest", f.manifest, "--group-key-file", f.groupKeyFile, "--out", out)
	if code != exitOK {
		t.Fatalf("keys derive: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "derived the keys of 5 group device(s)") || !strings.Contains(stdout, out) {
		t.Errorf("stdout does not say what was written:\n%s", stdout)
	}
	checkNoKeyIn(t, keys, "keys derive output", stdout+stderr)
	checkFileMode(t, out, 0o600)
	rows := mustReadCSV(t, out)
	if len(rows) != 6 || strings.Join(rows[0], ",") != "registration_id,symmetric_key" {
		t.Fatalf("device-keys.csv rows = %d, header %q", len(rows), rows[0])
	}
	for i, r := range rows[1:] {
		want, err := dps.DeriveDeviceKey(f.groupKey, f.ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if r[0] != f.ids[i] || r[1] != want {
			t.Errorf("row %d: %s with key %t, want %s with dps.DeriveDeviceKey's", i+1, r[0], r[1] == want, f.ids[i])
		}
	}

	// The derived keys authenticate: provision them as individual keys.
	code, stdout, stderr = runCmd(t, f.provisionArgs(out, "--ledger", filepath.Join(f.dir, "derived.ledger"))...)
	if code != exitOK || !strings.Contains(stdout, "assigned 5") {
		t.Fatalf("provision of the derived keys: exit %d\n%s\n%s", code, stdout, stderr)
	}
	checkNoKeyIn(t, keys, "provision output", stdout+stderr)

	// The same keys, one file per device.
	dir := filepath.Join(f.dir, "keys")
	code, stdout, stderr = runCmd(t, "keys", "derive", "--manifest", f.manifest, "--out-dir", dir, "--group-key-file", f.groupKeyFile)
	if code != exitOK {
		t.Fatalf("keys derive --out-dir: exit %d\n%s\n%s", code, stdout, stderr)
	}
	checkNoKeyIn(t, keys, "keys derive --out-dir output", stdout+stderr)
	checkFileMode(t, dir, 0o700)
	for i, id := range f.ids {
		path := filepath.Join(dir, id+".key")
		checkFileMode(t, path, 0o600)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != rows[i+1][1]+"\n" {
			t.Errorf("%s does not hold the device's key on one line", path)
		}
	}

	// --force replaces; from the environment variable too.
	t.Setenv("TEST_GROUP_KEY", f.groupKey)
	var errb, outb syncBuffer
	code = run(t.Context(), []string{"keys", "derive", "--manifest", f.manifest, "--group-key-env", "TEST_GROUP_KEY", "--out", out, "--force"},
		&env{stdin: strings.NewReader(""), stdout: &outb, stderr: &errb, getenv: os.Getenv})
	if code != exitOK {
		t.Errorf("keys derive --force from the environment: exit %d\n%s", code, errb.String())
	}
	checkFileMode(t, out, 0o600)
}

// TestKeysDeriveManifests: rows with their own credentials are skipped,
// mapped columns are read, extra columns are ignored with a warning, and
// a manifest with problems or without group devices writes nothing.
func TestKeysDeriveManifests(t *testing.T) {
	dir := t.TempDir()
	groupKey := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	keyFile := filepath.Join(dir, "group.key")
	if err := os.WriteFile(keyFile, []byte(groupKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mes := write("mes.csv", "serial_number,symmetric_key,hub\nline3-0001,,hub-a\nline3-0002,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==,hub-b\nline3-0003,,hub-a\n")
	out := filepath.Join(dir, "keys.csv")
	code, stdout, stderr := runCmd(t, "keys", "derive", "--manifest", mes, "--group-key-file", keyFile, "--out", out, "--column", "registration_id=serial_number")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "derived the keys of 2 group device(s)") || !strings.Contains(stdout, "skipped 1 row(s) with their own credentials") {
		t.Errorf("stdout:\n%s", stdout)
	}
	if !strings.Contains(stderr, "warning: header: unknown column ignored: hub") {
		t.Errorf("no warning about the hub column:\n%s", stderr)
	}
	rows := mustReadCSV(t, out)
	want0, _ := dps.DeriveDeviceKey(groupKey, "line3-0001")
	want2, _ := dps.DeriveDeviceKey(groupKey, "line3-0003")
	if len(rows) != 3 || rows[1][0] != "line3-0001" || rows[1][1] != want0 || rows[2][0] != "line3-0003" || rows[2][1] != want2 {
		t.Errorf("keys.csv = %d rows, want the two group devices with their derived keys", len(rows))
	}

	tests := []struct {
		name     string
		manifest string
		args     []string
		want     []string
	}{
		{"problems", write("bad.csv", strings.Repeat("registration_id\n", 1)+"BAD ID\nok-1\n"), nil,
			[]string{"has 1 problem(s); no key was written", "row 2 (\"BAD ID\")"}},
		{"no group devices", write("sym.csv", "registration_id,symmetric_key\nd-1,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==\n"), nil,
			[]string{"no devices of a symmetric-key enrollment group", "Try:"}},
		{"strict with an unknown column", mes, []string{"--strict", "--column", "registration_id=serial_number"},
			[]string{"header: hub: unknown column", "leave out --strict"}},
		{"unmapped id column", mes, nil,
			[]string{"registration_id: required column is missing", "--column registration_id=NAME"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "keys.csv")
			args := append([]string{"keys", "derive", "--manifest", tt.manifest, "--group-key-file", keyFile, "--out", out}, tt.args...)
			code, _, stderr := runCmd(t, args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d\n%s", code, exitUsage, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was written", out)
			}
		})
	}
}

// TestKeysDeriveRefuses: keys never go to a terminal, standard output or
// over an existing file without --force; without a group key nothing
// happens.
func TestKeysDeriveRefuses(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "m.csv")
	if err := os.WriteFile(manifest, []byte("registration_id\nd-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "group.key")
	if err := os.WriteFile(keyFile, []byte(base64Key(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.csv")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	keysDir := filepath.Join(dir, "keys")
	if err := os.Mkdir(keysDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keysDir, "d-1.key"), []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"keys", "derive", "--manifest", manifest, "--group-key-file", keyFile}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"no output", base, []string{"--out or --out-dir is required", "never to the terminal"}},
		{"standard output", append(base, "--out", "-"), []string{"refusing to write keys to standard output"}},
		{"a device", append(base, "--out", os.DevNull), []string{"refusing to write keys to " + os.DevNull, "not a regular file"}},
		{"both outputs", append(base, "--out", filepath.Join(dir, "k.csv"), "--out-dir", keysDir), []string{"not both"}},
		{"existing file", append(base, "--out", existing), []string{"already exists", "--force"}},
		{"existing key file", append(base, "--out-dir", keysDir), []string{"d-1.key already exists", "--force"}},
		{"out-dir is a file", append(base, "--out-dir", existing), []string{"is not a directory"}},
		{"no folder", append(base, "--out", filepath.Join(dir, "nope", "k.csv")), []string{"does not exist"}},
		{"no group key", []string{"keys", "derive", "--manifest", manifest, "--out", filepath.Join(dir, "k.csv")}, []string{"no group key", "--group-key-file", "DPS_GROUP_KEY"}},
		{"no manifest", []string{"keys", "derive", "--group-key-file", keyFile, "--out", filepath.Join(dir, "k.csv")}, []string{"--manifest is required"}},
		{"bad column mapping", append(base, "--out", filepath.Join(dir, "k.csv"), "--column", "serial=sn"), []string{"serial is not a column of ours"}},
		{"no subcommand", []string{"keys"}, []string{"a subcommand is required: derive"}},
		{"unknown subcommand", []string{"keys", "print"}, []string{`unknown keys subcommand "print"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d\n%s", code, exitUsage, stderr)
			}
			for _, w := range append(tt.want, "Try:") {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
	for _, p := range []string{existing, filepath.Join(keysDir, "d-1.key")} {
		if b, _ := os.ReadFile(p); string(b) != "keep me" {
			t.Errorf("%s was overwritten", p)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "k.csv")); err == nil {
		t.Errorf("k.csv was written by a refused command")
	}
}

// TestKeysHelpGolden keeps "keys derive --help" under review, like
// TestHelpGolden does for the commands.
func TestKeysHelpGolden(t *testing.T) {
	code, out, errs := runCmd(t, "keys", "derive", "--help")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	for _, want := range []string{"flashed", "--out", "--out-dir", "0600", "Examples:"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys derive --help lacks %q", want)
		}
	}
	path := filepath.Join("testdata", "help", "keys_derive.golden")
	if *updateGolden {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./cmd/dps-batch -run Golden -update creates it)", err)
	}
	if out != string(want) {
		t.Errorf("keys derive --help differs from %s (make golden rewrites it after an intended change)\ngot:\n%s", path, out)
	}
}

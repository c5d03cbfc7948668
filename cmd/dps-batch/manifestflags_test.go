package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProvisionManifestColumns: an MES export with a column of its own
// provisions end to end with one warning naming it; --strict refuses it
// before anything is written or sent; --column reads a column of another
// name as registration_id.
func TestProvisionManifestColumns(t *testing.T) {
	f := newSymFleet(t, "symmetric-individual", 4)
	rows := mustReadCSV(t, f.manifest)
	var b strings.Builder
	b.WriteString("registration_id,symmetric_key,hub\n")
	for i, r := range rows[1:] {
		b.WriteString(r[0] + "," + r[1] + ",line-" + string(rune('a'+i%2)) + "\n")
	}
	mes := filepath.Join(f.dir, "mes.csv")
	if err := os.WriteFile(mes, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	// --strict: refused, no ledger, nothing sent.
	strictLedger := filepath.Join(f.dir, "strict.ledger")
	code, stdout, stderr := runCmd(t, f.provisionArgs(mes, "--ledger", strictLedger, "--strict")...)
	if code != exitUsage || !strings.Contains(stderr, "header: hub: unknown column") || !strings.Contains(stderr, "leave out --strict") {
		t.Errorf("--strict: exit %d, want %d naming the column\n%s%s", code, exitUsage, stdout, stderr)
	}
	if _, err := os.Stat(strictLedger); err == nil {
		t.Errorf("--strict refused the manifest but created a ledger")
	}

	// Default: one warning, every device assigned.
	code, stdout, stderr = runCmd(t, f.provisionArgs(mes, "--ledger", filepath.Join(f.dir, "mes.ledger"))...)
	if code != exitOK || !strings.Contains(stdout, "assigned 4") {
		t.Fatalf("provision of the MES export: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if n := strings.Count(stderr, "warning:"); n != 1 || !strings.Contains(stderr, "warning: header: unknown column ignored: hub — --strict refuses unknown columns; --column OURS=YOURS maps") {
		t.Errorf("want one warning naming hub, got %d:\n%s", n, stderr)
	}
	checkNoKeyIn(t, f.secrets(t), "provision output", stdout+stderr)

	// --column: the ids come from serial_number. Validation reads the
	// mapped column (its problems name registration_id); without the
	// mapping the header is refused with the way to map it.
	sn := filepath.Join(f.dir, "sn.csv")
	if err := os.WriteFile(sn, []byte("Serial_Number,symmetric_key\nBAD ID,"+rows[1][1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCmd(t, f.provisionArgs(sn, "--column", "registration_id=serial_number")...)
	if code != exitUsage || !strings.Contains(stderr, `row 2 ("BAD ID"): registration_id: `) {
		t.Errorf("--column: exit %d, want %d with the row's id problem\n%s", code, exitUsage, stderr)
	}
	code, _, stderr = runCmd(t, f.provisionArgs(sn)...)
	if code != exitUsage || !strings.Contains(stderr, "registration_id: required column is missing") || !strings.Contains(stderr, "--column registration_id=NAME (columns not used: serial_number)") {
		t.Errorf("no --column: exit %d, want %d with the mapping hint\n%s", code, exitUsage, stderr)
	}
}

// TestManifestFlagErrors: bad --column values are usage errors naming what
// is wrong, before the manifest is read.
func TestManifestFlagErrors(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "m.csv")
	if err := os.WriteFile(manifest, []byte("registration_id\nd-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"provision", "--manifest", manifest, "--id-scope", "0ne00000000", "--dry-run"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"not a pair", []string{"--column", "serial_number"}, "want OURS=YOURS, e.g. registration_id=serial_number"},
		{"unknown target", []string{"--column", "device_id=serial_number"}, "device_id is not a column of ours"},
		{"swapped", []string{"--column", "serial_number=registration_id"}, "ours comes first: registration_id=serial_number"},
		{"target twice", []string{"--column", "registration_id=a", "--column", "registration_id=b"}, "registration_id is mapped twice"},
		{"source twice", []string{"--column", "registration_id=a", "--column", "symmetric_key=a"}, "column a is mapped twice"},
		{"mapped column absent", []string{"--column", "payload=config"}, "--column payload=config: the header has no column config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, append(base, tt.args...)...)
			if code != exitUsage || !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "Try:") {
				t.Errorf("exit %d, want %d; stderr lacks %q and a Try: line:\n%s", code, exitUsage, tt.want, stderr)
			}
		})
	}
}

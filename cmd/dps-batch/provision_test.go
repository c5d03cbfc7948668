package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoEndToEnd runs the README's main-job command in-process: fleet,
// simulator over real TLS, provisioning into a real ledger, report; then
// status, report and a resumed demo that finds nothing left to do.
func TestDemoEndToEnd(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := runCmd(t, "demo", "--dir", dir, "--count", "30", "--sas", "10", "--assignment-delay", "0s")
	if code != exitOK {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for _, want := range []string{"assigned 40", "devices registered more than once: 0", "demo-report.csv"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo stdout lacks %q:\n%s", want, out)
		}
	}
	if n := countLines(t, filepath.Join(dir, "demo-report.csv")); n != 41 {
		t.Errorf("demo-report.csv has %d lines, want 41 (header + 40 devices)", n)
	}
	led := filepath.Join(dir, "demo.ledger")

	code, out, errs = runCmd(t, "status", "--ledger", led)
	if code != exitOK || !strings.Contains(out, "assigned     40") || !strings.Contains(out, "register 0, poll 0") {
		t.Errorf("status exit %d, stdout:\n%s\nstderr: %s", code, out, errs)
	}
	code, out, _ = runCmd(t, "status", "--ledger", led, "--json")
	if code != exitOK || !strings.Contains(out, `"assigned": 40`) {
		t.Errorf("status --json exit %d:\n%s", code, out)
	}
	code, out, errs = runCmd(t, "report", "--ledger", led, "--format", "jsonl", "--state", "assigned")
	if code != exitOK || strings.Count(out, "\n") != 40 || !strings.Contains(out, `"status":"assigned"`) {
		t.Errorf("report jsonl exit %d, %d lines, stderr %s", code, strings.Count(out, "\n"), errs)
	}
	code, out, _ = runCmd(t, "report", "--ledger", led, "--state", "failed")
	if code != exitOK || strings.Count(out, "\n") != 1 {
		t.Errorf("report of failed devices: exit %d, want only the header:\n%s", code, out)
	}

	// The same demo again resumes: nothing to do, nothing sent.
	code, out, errs = runCmd(t, "demo", "--dir", dir)
	if code != exitOK || !strings.Contains(out, "skipped 40") || !strings.Contains(out, "Simulator saw 0 register PUTs, 0 polls") {
		t.Errorf("resumed demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}

func TestProvisionUsageErrors(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "m.csv")
	if err := os.WriteFile(manifest, []byte("registration_id,symmetric_key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no manifest", []string{"--id-scope", "0ne00000000"}, "--manifest is required"},
		{"no scope", []string{"--manifest", manifest}, "--id-scope is required"},
		{"bad scope", []string{"--manifest", manifest, "--id-scope", "myscope"}, "does not look like a DPS ID scope"},
		{"negative workers", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "--workers", "-2"}, "--workers must be at least 1"},
		{"negative workers", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "--workers", "-3"}, "--workers must be at least 1"},
		{"zero rate", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "--rate", "0"}, "--rate must be a positive number"},
		{"http endpoint", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "--endpoint", "http://127.0.0.1:1"}, "https"},
		{"missing ca file", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "--ca-file", filepath.Join(dir, "nope.pem")}, "nope.pem"},
		{"bad TLS version", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "--x509-tls", "1.1"}, "--x509-tls must be 1.2 or 1.3"},
		{"positional", []string{"--manifest", manifest, "--id-scope", "0ne00000000", "extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := runCmd(t, append([]string{"provision"}, tt.args...)...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, exitUsage, errs)
			}
			if !strings.Contains(errs, tt.wantErr) || !strings.Contains(errs, "Try:") {
				t.Errorf("stderr lacks %q and a Try: hint:\n%s", tt.wantErr, errs)
			}
		})
	}
}

// TestProvisionValidationAndDryRun: a bad manifest exits 2 naming the row;
// a dry run of a good one prints the plan and creates no ledger.
func TestProvisionValidationAndDryRun(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.csv")
	content := "registration_id,symmetric_key\nok-1,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==\nBAD ID,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==\nok-2,%%%\n"
	if err := os.WriteFile(bad, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := runCmd(t, "provision", "--manifest", bad, "--id-scope", "0ne00000000", "--endpoint", "https://127.0.0.1:1")
	if code != exitUsage || !strings.Contains(errs, "row 3") || !strings.Contains(errs, "row 4") || !strings.Contains(errs, "nothing was sent") {
		t.Errorf("bad manifest: exit %d, stderr:\n%s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.ledger")); err == nil {
		t.Errorf("a ledger was created for a manifest that failed validation")
	}

	good := filepath.Join(dir, "good.csv")
	if err := os.WriteFile(good, []byte("registration_id,symmetric_key\nok-1,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==\nok-2,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "provision", "--manifest", good, "--id-scope", "0ne00000000", "--dry-run", "--rate", "60")
	if code != exitOK || !strings.Contains(out, "to register:            2") || !strings.Contains(out, "billable registrations: 2") || !strings.Contains(out, "estimated time: 2s, limited by --rate 60/min") {
		t.Errorf("dry run: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "good.ledger")); err == nil {
		t.Errorf("--dry-run created a ledger")
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for s := bufio.NewScanner(f); s.Scan(); {
		n++
	}
	return n
}

// TestDemoIndividual runs the individual-enrollment pipeline in one command:
// enroll through the simulator's service API, then provision; every
// enrollment is created once and every device registered once, and the
// report shows both sides.
func TestDemoIndividual(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	code, out, errs := runCmd(t, "demo", "--individual", "--dir", dir, "--count", "12", "--sas", "8", "--assignment-delay", "0s")
	if code != exitOK {
		t.Fatalf("demo --individual exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for _, want := range []string{"created 20", "20 enrollments created; created more than once: 0", "assigned 20", "devices registered more than once: 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "demo-report.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), ",created,"); n != 20 {
		t.Errorf("report shows %d devices with enrollment created, want 20:\n%s", n, b)
	}
	// The simulator forgets its enrollments: a second run refuses the folder.
	if code, _, errs := runCmd(t, "demo", "--individual", "--dir", dir); code != exitUsage || !strings.Contains(errs, "not empty") {
		t.Errorf("second demo --individual in the same folder: exit %d, stderr %s; want a usage error", code, errs)
	}
}

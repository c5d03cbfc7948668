package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoWritesHTMLReport: the demo ends with demo-report.html next to its
// CSV and prints its path; report --format html writes the same report
// from the ledger.
func TestDemoWritesHTMLReport(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := runCmd(t, "demo", "--dir", dir, "--count", "30", "--sas", "10", "--assignment-delay", "0s")
	if code != exitOK {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	html := filepath.Join(dir, "demo-report.html")
	if !strings.Contains(out, "HTML run report written to "+html+"\n") {
		t.Errorf("demo does not print the HTML report's path:\n%s", out)
	}
	b, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, want := range []string{`<section id="summary">`, `data-value="total">40<`, `data-state="assigned">40<`, `data-chart="throughput"`, `data-chart="latency"`, `data-chart="hubs"`} {
		if !strings.Contains(page, want) {
			t.Errorf("demo-report.html lacks %s", want)
		}
	}

	run := filepath.Join(dir, "run.html")
	code, _, errs = runCmd(t, "report", "--ledger", filepath.Join(dir, "demo.ledger"), "--format", "html", "--out", run)
	if code != exitOK || !strings.Contains(errs, "Wrote the HTML report of 40 device(s) to "+run) {
		t.Fatalf("report --format html exit %d, stderr %s", code, errs)
	}
	if fi, err := os.Stat(run); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("run.html: %v %v", fi, err)
	}
	code, out, _ = runCmd(t, "report", "--ledger", filepath.Join(dir, "demo.ledger"), "--format", "html")
	if code != exitOK || !strings.HasPrefix(out, "<!DOCTYPE html>") {
		t.Errorf("report --format html --out -: exit %d, %.40q", code, out)
	}
}

func TestReportHTMLUsage(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--ledger", filepath.Join(dir, "none.ledger"), "--format", "html", "--out", filepath.Join(dir, "r.html")},
		{"--ledger", filepath.Join(dir, "none.ledger"), "--format", "html", "--state", "failed"},
		{"--ledger", filepath.Join(dir, "none.ledger"), "--format", "html", "--per-device", dir},
	} {
		code, _, errs := runCmd(t, append([]string{"report"}, args...)...)
		if code != exitUsage || !strings.Contains(errs, "--format html") {
			t.Errorf("report %v: exit %d, stderr %s", args, code, errs)
		}
	}
	// --allow-conflicts needs several ledgers, in HTML as in CSV.
	code, _, errs := runCmd(t, "report", "--ledger", filepath.Join(dir, "a.ledger"), "--format", "html", "--allow-conflicts")
	if code != exitUsage || !strings.Contains(errs, "--allow-conflicts applies to several ledgers") {
		t.Errorf("--allow-conflicts with one ledger: exit %d, stderr %s", code, errs)
	}
	// Several ledgers are one report now; a missing one is named.
	code, _, errs = runCmd(t, "report", "--ledger", filepath.Join(dir, "a.ledger"), "--ledger", filepath.Join(dir, "b.ledger"), "--format", "html")
	if code == exitOK || !strings.Contains(errs, "a.ledger") {
		t.Errorf("missing ledgers: exit %d, stderr %s", code, errs)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests cover the harness's bookkeeping only; the measurements
// themselves run with make bench, never in make test.

func TestParseBench(t *testing.T) {
	out := []byte(`goos: linux
goarch: amd64
pkg: github.com/dps-batch/dps-batch/ledger
BenchmarkBriefs/Briefs-2         	    1206	    942302 ns/op	      3681 ns/device	   90727 B/op	    1594 allocs/op
BenchmarkPutParallel/full-2         	   81386	     27304 ns/op	        15.90 puts/commit	     36625 puts/s
BenchmarkSASToken          	  123490	      1881 ns/op
PASS
ok  	github.com/dps-batch/dps-batch/ledger	3.616s
`)
	got := parseBench("ledger", out)
	want := []Micro{
		{Package: "ledger", Name: "BenchmarkBriefs/Briefs",
			Metrics: map[string]float64{"ns/op": 942302, "ns/device": 3681, "B/op": 90727, "allocs/op": 1594},
			Units:   []string{"ns/op", "ns/device", "B/op", "allocs/op"}},
		{Package: "ledger", Name: "BenchmarkPutParallel/full",
			Metrics: map[string]float64{"ns/op": 27304, "puts/commit": 15.90, "puts/s": 36625},
			Units:   []string{"ns/op", "puts/commit", "puts/s"}},
		{Package: "ledger", Name: "BenchmarkSASToken", Metrics: map[string]float64{"ns/op": 1881}, Units: []string{"ns/op"}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d results, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Package != w.Package || strings.Join(g.Units, ",") != strings.Join(w.Units, ",") {
			t.Errorf("result %d: got %s/%s %v, want %s/%s %v", i, g.Package, g.Name, g.Units, w.Package, w.Name, w.Units)
		}
		for u, v := range w.Metrics {
			if g.Metrics[u] != v {
				t.Errorf("%s %s: got %v, want %v", w.Name, u, g.Metrics[u], v)
			}
		}
	}
}

func TestTargets(t *testing.T) {
	var out bytes.Buffer
	r := &recorder{out: &out}
	r.begin("quota", "3. Quota")
	r.atLeast("at least, met", 97, "%", 97, "")
	r.atLeast("at least, missed", 96.9, "%", 97, "")
	r.atMost("at most, met", 0, "429s", 0, "")
	r.atMost("at most, missed", 1, "429s", 0, "")
	r.below("below, met", 0.99, "%", 1, "")
	r.below("below, missed", 1, "%", 1, "")
	r.info("informational", 12.5, "CPU-s", "")
	want := map[string]string{
		"at least, met": "PASS", "at least, missed": "FAIL",
		"at most, met": "PASS", "at most, missed": "FAIL",
		"below, met": "PASS", "below, missed": "FAIL",
		"informational": "",
	}
	for _, f := range r.run.Figures {
		if f.Verdict != want[f.Name] {
			t.Errorf("%s: got verdict %q, want %q", f.Name, f.Verdict, want[f.Name])
		}
		if f.Section != "quota" {
			t.Errorf("%s: got section %q, want quota", f.Name, f.Section)
		}
	}
	if missed := r.summary(); missed != 3 {
		t.Errorf("summary: got %d missed, want 3", missed)
	}
	if !strings.Contains(out.String(), "3 of 6 targets met") {
		t.Errorf("summary output lacks the count:\n%s", out.String())
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		v    float64
		unit string
		want string
	}{
		{1234.4, "devices/s", "1234 devices/s"},
		{29.24, "×", "29.2×"},
		{58.93, "%", "58.9%"},
		{0.954, "s", "0.95 s"},
		{0, "requests", "0 requests"},
		{12, "429s", "12 429s"},
		{345.7, "bytes", "346 bytes"},
	}
	for _, tt := range tests {
		if got := formatValue(tt.v, tt.unit); got != tt.want {
			t.Errorf("formatValue(%v, %q): got %q, want %q", tt.v, tt.unit, got, tt.want)
		}
	}
}

func TestSave(t *testing.T) {
	dir := t.TempDir()
	history, results := filepath.Join(dir, "results.json"), filepath.Join(dir, "RESULTS.md")
	save := func(label, date string, v float64) {
		t.Helper()
		r := &recorder{out: &bytes.Buffer{}, run: Run{Label: label, Date: date, Commit: "c-" + label, Machine: "test machine"}}
		r.begin("resume", "4. Resume")
		r.atMost("resume: re-run", v, "s", 5, "")
		if err := r.save(history, results); err != nil {
			t.Fatalf("save %s: %v", label, err)
		}
	}
	save("latest", "2026-01-02 10:00 UTC", 1.5)
	save("before", "2026-01-03 10:00 UTC", 6.25)
	save("latest", "2026-01-04 10:00 UTC", 0.75) // replaces the first "latest"

	b, err := os.ReadFile(history)
	if err != nil {
		t.Fatal(err)
	}
	var runs []Run
	if err := json.Unmarshal(b, &runs); err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, x := range runs {
		labels = append(labels, x.Label)
	}
	if got, want := strings.Join(labels, ","), "before,latest"; got != want {
		t.Errorf("labels: got %s, want %s (the baseline first, one run per label)", got, want)
	}
	if v := runs[1].Figures[0].Value; v != 0.75 {
		t.Errorf("latest value: got %v, want 0.75 (the newer run)", v)
	}
	if err := render(history, results, "before"); err != nil {
		t.Fatalf("render: %v", err)
	}
	if md, err := os.ReadFile(results); err != nil || !strings.Contains(string(md), `## Run "before" in full`) {
		t.Errorf("render -label before: got %s (err %v), want the before run in full", md, err)
	}
	if err := render(history, results, "latest"); err != nil {
		t.Fatalf("render: %v", err)
	}
	if err := render(history, results, "nope"); err == nil {
		t.Error("render of an unknown label: got nil error")
	}
	md, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`## Run "latest" in full`, "Commit: c-latest",
		"| resume | resume: re-run | 0.75 s | ≤ 5.00 s | PASS |",
		"| resume: re-run | ≤ 5.00 s | 6.25 s (FAIL) | 0.75 s |",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("RESULTS.md lacks %q:\n%s", want, md)
		}
	}
}

func TestGrouped(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 20000: "20,000", 1000000: "1,000,000", 123456789: "123,456,789"} {
		if got := grouped(n); got != want {
			t.Errorf("grouped(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestWithin(t *testing.T) {
	r := &recorder{out: &bytes.Buffer{}}
	r.begin("rate", "6. Raised rate")
	for _, tt := range []struct {
		v       float64
		verdict string
	}{{100, "PASS"}, {90, "PASS"}, {110, "PASS"}, {89.9, "FAIL"}, {110.1, "FAIL"}, {299, "FAIL"}} {
		r.within("w", tt.v, "devices/s", 100, 10, "")
		f := r.run.Figures[len(r.run.Figures)-1]
		if f.Verdict != tt.verdict || f.Target != "100 devices/s ± 10%" {
			t.Errorf("within(%v, 100 ± 10%%): got %s, target %q; want %s", tt.v, f.Verdict, f.Target, tt.verdict)
		}
	}
}

func TestParseEstimate(t *testing.T) {
	out := `Dry run: manifest m.csv is valid (3000 devices). Nothing was sent.
  to register:            3000
  billable registrations: 3000
  estimated time: 1m30s, limited by --workers 100 (about 3s per device at DPS)
    (--rate 6000/min (3000 registrations) alone: 30s)
    (--poll-rate 12000/min (about 3000 polls and lookups) alone: 15s)
`
	e, err := parseEstimate(out)
	if err != nil {
		t.Fatal(err)
	}
	if e.d != 90*time.Second || e.limitedBy != "--workers 100 (about 3s per device at DPS)" || len(e.others) != 2 ||
		e.others[0] != "(--rate 6000/min (3000 registrations) alone: 30s)" {
		t.Errorf("parseEstimate: got %+v", e)
	}
	if _, err := parseEstimate("Dry run: nothing to do\n"); err == nil {
		t.Error("parseEstimate without an estimate: got nil error")
	}
}

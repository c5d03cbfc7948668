package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Figure is one measured number, with its target when the issue sets one.
type Figure struct {
	Section string  `json:"section"`
	Name    string  `json:"name"`
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"`
	// Target is the target in words ("≥ 100×"); "" = informational.
	Target string `json:"target,omitempty"`
	// Verdict is "PASS" or "FAIL" when there is a target.
	Verdict string `json:"verdict,omitempty"`
	Note    string `json:"note,omitempty"`
}

// Micro is one go test benchmark result.
type Micro struct {
	Package string `json:"package"`
	Name    string `json:"name"`
	// Metrics maps a unit ("ns/op", "B/op", "allocs/op", custom) to its value.
	Metrics map[string]float64 `json:"metrics"`
	Units   []string           `json:"units"` // in the order go test printed them
}

// Run is one complete harness run, as stored in results.json.
type Run struct {
	Label           string  `json:"label"`
	Date            string  `json:"date"`
	Commit          string  `json:"commit"`
	Machine         string  `json:"machine"`
	Command         string  `json:"command"`
	DurationSeconds float64 `json:"durationSeconds"`
	// Load is the 1-minute load average at the start and end of the run:
	// other work on the machine slows every figure down.
	Load    string   `json:"load,omitempty"`
	Figures []Figure `json:"figures"`
	Notes   []string `json:"notes,omitempty"`
	Micro   []Micro  `json:"micro,omitempty"`
}

// recorder prints figures as they are measured and collects them.
type recorder struct {
	out     io.Writer
	run     Run
	section string
}

func newRecorder(out io.Writer, cfg *config) *recorder {
	commit := cfg.commit
	if commit == "" {
		commit = gitCommit()
	}
	return &recorder{out: out, run: Run{
		Label:   cfg.label,
		Date:    time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Commit:  commit,
		Machine: machine(),
		Command: strings.TrimSpace("go run ./bench " + strings.Join(cfg.args, " ")),
	}}
}

// begin prints a section heading.
func (r *recorder) begin(section, title string) {
	r.section = section
	fmt.Fprintf(r.out, "\n== %s\n", title)
}

// logf prints a progress line that is not a figure.
func (r *recorder) logf(format string, args ...any) {
	fmt.Fprintf(r.out, "   "+format+"\n", args...)
}

// note records (and prints) a sentence that belongs with the figures.
func (r *recorder) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.run.Notes = append(r.run.Notes, s)
	fmt.Fprintf(r.out, "   note: %s\n", s)
}

// info records a figure without a target.
func (r *recorder) info(name string, v float64, unit, note string) {
	r.add(Figure{Name: name, Value: v, Unit: unit, Note: note})
}

// atLeast records a figure whose target is a minimum.
func (r *recorder) atLeast(name string, v float64, unit string, min float64, note string) {
	r.add(Figure{Name: name, Value: v, Unit: unit, Note: note,
		Target: "≥ " + formatValue(min, unit), Verdict: verdict(v >= min)})
}

// atMost records a figure whose target is a maximum.
func (r *recorder) atMost(name string, v float64, unit string, max float64, note string) {
	r.add(Figure{Name: name, Value: v, Unit: unit, Note: note,
		Target: "≤ " + formatValue(max, unit), Verdict: verdict(v <= max)})
}

// below records a figure whose target is a strict maximum.
func (r *recorder) below(name string, v float64, unit string, max float64, note string) {
	r.add(Figure{Name: name, Value: v, Unit: unit, Note: note,
		Target: "< " + formatValue(max, unit), Verdict: verdict(v < max)})
}

// within records a figure whose target is a value give or take tolPct
// percent of it.
func (r *recorder) within(name string, v float64, unit string, want, tolPct float64, note string) {
	r.add(Figure{Name: name, Value: v, Unit: unit, Note: note,
		Target:  formatValue(want, unit) + " ± " + strconv.FormatFloat(tolPct, 'f', -1, 64) + "%",
		Verdict: verdict(math.Abs(v-want) <= want*tolPct/100)})
}

func (r *recorder) add(f Figure) {
	f.Section = r.section
	r.run.Figures = append(r.run.Figures, f)
	fmt.Fprintf(r.out, "   %-46s %14s  %-14s %s\n", f.Name, formatValue(f.Value, f.Unit), f.Target, f.Verdict)
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// formatValue prints v with a precision that suits its size and unit.
func formatValue(v float64, unit string) string {
	var s string
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		s = "n/a"
	case v == math.Trunc(v) && math.Abs(v) < 1e9 && (unit == "" || unit == "requests" || unit == "429s" || unit == "devices"):
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.2f", v)
	}
	switch unit {
	case "":
		return s
	case "×", "%":
		return s + unit
	}
	return s + " " + unit
}

// summary prints every figure with a target and returns how many missed.
func (r *recorder) summary() int {
	fmt.Fprintf(r.out, "\n== Summary (targets of issues 7, 12 and 14)\n")
	passed, missed := 0, 0
	for _, f := range bySection(r.run.Figures) {
		if f.Verdict == "" {
			continue
		}
		fmt.Fprintf(r.out, "   %-4s  %-46s %14s  target %s\n", f.Verdict, f.Name, formatValue(f.Value, f.Unit), f.Target)
		if f.Verdict == "PASS" {
			passed++
		} else {
			missed++
		}
	}
	fmt.Fprintf(r.out, "   %d of %d targets met\n", passed, passed+missed)
	return missed
}

// save merges this run into the history file (replacing a run with the
// same label) and regenerates the results file from it.
func (r *recorder) save(historyPath, outPath string) error {
	runs, err := readHistory(historyPath)
	if err != nil {
		return err
	}
	runs = slices.DeleteFunc(runs, func(x Run) bool { return x.Label == r.run.Label })
	runs = append(runs, r.run)
	// The baseline first, then by date.
	slices.SortStableFunc(runs, func(a, b Run) int {
		if (a.Label == "before") != (b.Label == "before") {
			if a.Label == "before" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Date, b.Date)
	})
	b, err := json.MarshalIndent(runs, "", "  ")
	if err != nil {
		return err
	}
	if err = writeFileAtomic(historyPath, append(b, '\n')); err != nil {
		return err
	}
	return writeFileAtomic(outPath, renderResults(runs, r.run))
}

// readHistory reads the runs recorded so far; none if the file is missing.
func readHistory(path string) ([]Run, error) {
	var runs []Run
	switch b, err := os.ReadFile(path); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read history: %w", err)
	default:
		if err := json.Unmarshal(b, &runs); err != nil {
			return nil, fmt.Errorf("history %s: %w", path, err)
		}
	}
	return runs, nil
}

// render regenerates the results file from the history, showing the run
// labelled label in full, without measuring anything.
func render(historyPath, outPath, label string) error {
	runs, err := readHistory(historyPath)
	if err != nil {
		return err
	}
	for _, x := range runs {
		if x.Label == label {
			return writeFileAtomic(outPath, renderResults(runs, x))
		}
	}
	return fmt.Errorf("history %s has no run labelled %q", historyPath, label)
}

// renderResults writes RESULTS.md: the given run in full, then every
// recorded run side by side.
func renderResults(runs []Run, cur Run) []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# dps-batch benchmark results\n\n")
	p("Generated by `make bench` (`go run ./bench`) from `bench/results.json`; do not edit by hand.\n")
	p("See [README.md](README.md) for what each figure measures and how.\n\n")
	p("## Run %q in full\n\n", cur.Label)
	p("- Date: %s\n- Commit: %s\n- Machine: %s\n- Command: `%s`\n- Duration: %s\n",
		cur.Date, cur.Commit, cur.Machine, cur.Command, time.Duration(cur.DurationSeconds*float64(time.Second)).Round(time.Second))
	if cur.Load != "" {
		p("- Load average (1 min): %s\n", cur.Load)
	}
	p("\n")
	p("| Section | Figure | Value | Target | Result |\n|---|---|---:|---|---|\n")
	for _, f := range bySection(cur.Figures) {
		name := f.Name
		if f.Note != "" {
			name += " (" + f.Note + ")"
		}
		p("| %s | %s | %s | %s | %s |\n", f.Section, name, formatValue(f.Value, f.Unit), f.Target, f.Verdict)
	}
	if len(cur.Notes) > 0 {
		p("\nNotes:\n\n")
		for _, n := range cur.Notes {
			p("- %s\n", n)
		}
	}
	if len(cur.Micro) > 0 {
		p("\n### Microbenchmarks (`go test -bench`)\n\n| Package | Benchmark | Results |\n|---|---|---|\n")
		for _, m := range cur.Micro {
			p("| %s | %s | %s |\n", m.Package, m.Name, microMetrics(m))
		}
	}
	if len(runs) > 1 {
		p("\n## All recorded runs (before and after)\n\n")
		for _, x := range runs {
			p("- **%s**: %s, commit %s, %s", x.Label, x.Date, x.Commit, x.Machine)
			if x.Load != "" {
				p(", load average %s", x.Load)
			}
			p("\n")
		}
		p("\n| Figure | Target |")
		for _, x := range runs {
			p(" %s |", x.Label)
		}
		p("\n|---|---|")
		for range runs {
			p("---:|")
		}
		p("\n")
		for _, key := range figureKeys(runs) {
			p("| %s | %s |", key.name, key.target)
			for _, x := range runs {
				v := "–"
				for _, f := range x.Figures {
					if f.Name == key.name {
						v = formatValue(f.Value, f.Unit)
						if f.Verdict == "FAIL" {
							v += " (FAIL)"
						}
					}
				}
				p(" %s |", v)
			}
			p("\n")
		}
	}
	return b.Bytes()
}

// bySection returns the figures in section order (a section may record
// figures that belong to another, such as the cost of a throughput run).
func bySection(figs []Figure) []Figure {
	out := slices.Clone(figs)
	slices.SortStableFunc(out, func(a, b Figure) int {
		return slices.Index(sections, a.Section) - slices.Index(sections, b.Section)
	})
	return out
}

type figureKey struct{ name, target string }

// figureKeys lists figure names in first-seen order across runs.
func figureKeys(runs []Run) []figureKey {
	var keys []figureKey
	seen := map[string]bool{}
	for _, x := range runs {
		for _, f := range bySection(x.Figures) {
			if !seen[f.Name] {
				seen[f.Name] = true
				keys = append(keys, figureKey{f.Name, f.Target})
			}
		}
	}
	return keys
}

func microMetrics(m Micro) string {
	var parts []string
	for _, u := range m.Units {
		parts = append(parts, formatMicro(m.Metrics[u])+" "+u)
	}
	return strings.Join(parts, ", ")
}

func formatMicro(v float64) string {
	switch {
	case v >= 1000 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".bench-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// loadAverage is the 1-minute load average, or "" where unknown.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return ""
}

// gitCommit describes the checkout, or "unknown" outside a repository.
func gitCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--exclude", "*").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// machine describes the CPU, memory and Go version.
func machine() string {
	cpu := runtime.GOARCH
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			var kb int64
			if n, _ := fmt.Sscanf(line, "MemTotal: %d kB", &kb); n == 1 {
				mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%s/%s, %d CPUs (%s)%s, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpu, mem, runtime.Version())
}

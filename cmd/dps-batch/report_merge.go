package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/report"
)

// ledgerFlags are --ledger (repeatable, or a glob), --station and
// --allow-conflicts of report and status: one ledger, or several merged.
type ledgerFlags struct {
	first          string // the first ledger given, as a plain --ledger flag holds it
	ledgers        []string
	stations       []string
	allowConflicts bool
}

// ledgerValue is the repeatable --ledger flag.
type ledgerValue struct{ lf *ledgerFlags }

func (v ledgerValue) String() string {
	if v.lf == nil {
		return ""
	}
	return strings.Join(v.lf.ledgers, ",")
}

func (v ledgerValue) Set(s string) error {
	if v.lf.first == "" {
		v.lf.first = s
	}
	v.lf.ledgers = append(v.lf.ledgers, s)
	return nil
}

// stationValue is the repeatable --station NAME=PATH flag.
type stationValue struct{ lf *ledgerFlags }

func (v stationValue) String() string {
	if v.lf == nil {
		return ""
	}
	return strings.Join(v.lf.stations, ",")
}

func (v stationValue) Set(s string) error {
	if _, path, ok := strings.Cut(s, "="); ok && v.lf.first == "" {
		v.lf.first = strings.TrimSpace(path)
	}
	v.lf.stations = append(v.lf.stations, s)
	return nil
}

// addLedgerFlags registers --ledger, --station and --allow-conflicts.
func addLedgerFlags(fs *flag.FlagSet) *ledgerFlags {
	lf := &ledgerFlags{}
	fs.Var(ledgerValue{lf}, "ledger", "ledger `file` to read; required. Repeat it, or give a quoted glob (e.g. 'line-*.ledger'), to merge several ledgers, one per station")
	fs.Var(stationValue{lf}, "station", "merge the ledger at PATH as station NAME (`NAME=PATH`; repeatable); a station is otherwise named after its ledger file, without the extension")
	fs.BoolVar(&lf.allowConflicts, "allow-conflicts", false, "with several ledgers: accept devices that two ledgers record differently (every row is shown either way)")
	return lf
}

// merged reports whether several ledgers are read (more than one --ledger,
// a glob, or a --station), so each row names its station.
func (lf *ledgerFlags) merged() bool {
	return len(lf.ledgers) > 1 || len(lf.stations) > 0 || (len(lf.ledgers) == 1 && strings.ContainsAny(lf.ledgers[0], "*?["))
}

// check refuses --allow-conflicts with a single ledger.
func (lf *ledgerFlags) check(example string) error {
	if lf.allowConflicts && !lf.merged() {
		return usagef(example, "--allow-conflicts applies to several ledgers merged: give more than one --ledger (or a glob)")
	}
	return nil
}

// openSources opens the ledgers of lf for reading, with their stations.
func openSources(ctx context.Context, lf *ledgerFlags, example string) (report.Sources, func(), error) {
	specs, err := report.ResolveSources(lf.ledgers, lf.stations)
	if err != nil {
		return nil, nil, usagef(example, "%v", err)
	}
	var srcs report.Sources
	closeAll := func() {
		for _, s := range srcs {
			s.Ledger.Close()
		}
	}
	for _, sp := range specs {
		led, err := openForReading(ctx, sp.Path, example)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		srcs = append(srcs, report.Source{Station: sp.Station, Path: sp.Path, Ledger: led})
	}
	return srcs, closeAll, nil
}

const mergeExample = "dps-batch report --ledger line-1.ledger --ledger line-2.ledger --out fleet.csv"

// mergedReport is what report writes from several ledgers.
type mergedReport struct {
	out       string
	format    report.Format
	states    []ledger.State
	perDevice string
	manifest  manifestRead // with manifest.extra: --report-columns
}

// reportMerged is report with several ledgers: one row per device per
// ledger, the station first, totals per station on stderr.
func reportMerged(ctx context.Context, e *env, lf *ledgerFlags, m mergedReport) error {
	if m.perDevice != "" {
		return usagef("dps-batch report --ledger line-1.ledger --per-device flash/ (one ledger at a time)", "--per-device reads one ledger; several were given")
	}
	srcs, closeAll, err := openSources(ctx, lf, mergeExample)
	if err != nil {
		return err
	}
	defer closeAll()
	opts := report.MergeOptions{Options: report.Options{States: m.states}, AllowConflicts: lf.allowConflicts}
	if len(m.manifest.extra) > 0 {
		mi, err := readManifest(ctx, m.manifest)
		if err != nil {
			return err
		}
		opts.Extra = report.ExtraColumns{Names: m.manifest.extra, Values: mi.values}
	}
	var res *report.MergeResult
	write := func(w io.Writer) error {
		var werr error
		res, werr = report.WriteMerged(ctx, srcs, w, m.format, opts)
		var ce *report.ConflictError
		if errors.As(werr, &ce) {
			return nil // written in full; the conflicts are reported below
		}
		return werr
	}
	if m.out == "-" {
		err = write(e.stdout)
	} else {
		err = writeReplacing(m.out, write)
	}
	if err != nil {
		return err
	}
	if m.out != "-" {
		fmt.Fprintf(e.stderr, "Wrote %d row(s) of %d device(s) from %d ledger(s) to %s\n", res.Rows, res.Devices, len(srcs), m.out)
	}
	printStationTotals(e.stderr, res)
	return mergeConflicts(res, lf.allowConflicts)
}

// mergeConflicts is the error of devices ledgers disagree about: exit 3
// with both rows of each, unless --allow-conflicts.
func mergeConflicts(res *report.MergeResult, allowed bool) error {
	if res.Conflicts == 0 || allowed {
		return nil
	}
	ce := &report.ConflictError{Result: res}
	return &exitError{code: exitDeviceFails, err: fmt.Errorf("%v\nThe same device was provisioned or recorded by more than one station: check which row is right (dps-batch status --ledger FILE on each); add --allow-conflicts to accept them", ce)}
}

// printStationTotals prints a merged report's devices per station and in
// all, by state.
func printStationTotals(w io.Writer, res *report.MergeResult) {
	total := map[ledger.State]int{}
	for _, st := range res.Stations {
		for s, n := range st.ByState {
			total[s] += n
		}
	}
	var states []ledger.State
	for _, s := range allStates {
		if total[s] > 0 {
			states = append(states, s)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := []string{"station", "devices"}
	for _, s := range states {
		header = append(header, string(s))
	}
	fmt.Fprintln(tw, "  "+strings.Join(header, "\t"))
	line := func(name string, n int, by map[ledger.State]int) {
		cells := []string{name, fmt.Sprint(n)}
		for _, s := range states {
			cells = append(cells, fmt.Sprint(by[s]))
		}
		fmt.Fprintln(tw, "  "+strings.Join(cells, "\t"))
	}
	for _, st := range res.Stations {
		line(st.Station, st.Devices, st.ByState)
	}
	line("total", res.Rows, total)
	tw.Flush()
	if res.Rows != res.Devices {
		fmt.Fprintf(w, "%d distinct device(s): %d in more than one ledger with the same outcome, %d recorded differently\n",
			res.Devices, res.Shared, res.Conflicts)
	}
}

// writeReplacing writes a file through a temporary file in its directory
// and a rename, so a failed write never leaves a truncated file where a
// good one was.
func writeReplacing(path string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return fmt.Errorf("create report %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	err = write(tmp)
	if err == nil {
		err = tmp.Chmod(0o644) // a report is for sharing, unlike CreateTemp's 0600
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

// stationStatusJSON is one station (or the total) in status --json with
// several ledgers.
type stationStatusJSON struct {
	Station  string         `json:"station"`
	Ledger   string         `json:"ledger,omitempty"`
	Total    int            `json:"devices"`
	ByState  map[string]int `json:"byState"`
	ByHub    map[string]int `json:"byHub"`
	Attempts int            `json:"registerRequests"`
	Polls    int            `json:"pollRequests"`
}

// statusMerged is status with several ledgers: devices by state per
// station and in all, devices by hub in all, and the devices two ledgers
// record differently.
func statusMerged(ctx context.Context, e *env, lf *ledgerFlags, asJSON bool, runs int) error {
	const example = "dps-batch status --ledger line-1.ledger --ledger line-2.ledger"
	if runs > 0 {
		return usagef("dps-batch status --ledger line-1.ledger --runs 10 (one ledger at a time)", "--runs lists one ledger's runs; several were given")
	}
	srcs, closeAll, err := openSources(ctx, lf, example)
	if err != nil {
		return err
	}
	defer closeAll()
	res, err := report.WriteMerged(ctx, srcs, io.Discard, report.CSV, report.MergeOptions{AllowConflicts: true})
	if err != nil {
		return err
	}
	stations := make([]stationStatusJSON, len(srcs))
	total := stationStatusJSON{Station: "total", ByState: map[string]int{}, ByHub: map[string]int{}}
	for i, src := range srcs {
		c, err := src.Ledger.Counts(ctx)
		if err != nil {
			return fmt.Errorf("ledger %s: %w", src.Path, err)
		}
		st := stationStatusJSON{Station: src.Station, Ledger: src.Path, Total: c.Total, ByState: map[string]int{}, ByHub: map[string]int{},
			Attempts: c.Attempts, Polls: c.Polls}
		for s, n := range c.ByState {
			st.ByState[string(s)] = n
			total.ByState[string(s)] += n
		}
		for h, n := range c.ByHub {
			st.ByHub[h] = n
			total.ByHub[h] += n
		}
		total.Total += c.Total
		total.Attempts += c.Attempts
		total.Polls += c.Polls
		stations[i] = st
	}
	if asJSON {
		out := struct {
			Stations  []stationStatusJSON `json:"stations"`
			Total     stationStatusJSON   `json:"total"`
			Distinct  int                 `json:"distinctDevices"`
			Shared    int                 `json:"sharedDevices"`
			Conflicts int                 `json:"conflicts"`
		}{stations, total, res.Devices, res.Shared, res.Conflicts}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
		return mergeConflicts(res, lf.allowConflicts)
	}
	w := e.stdout
	fmt.Fprintf(w, "%d ledgers: %d devices\n", len(srcs), total.Total)
	var states []ledger.State
	for _, s := range allStates {
		if total.ByState[string(s)] > 0 {
			states = append(states, s)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	cells := []string{"station", "devices"}
	for _, s := range states {
		cells = append(cells, string(s))
	}
	cells = append(cells, "billable", "ledger")
	fmt.Fprintln(tw, "  "+strings.Join(cells, "\t"))
	for _, st := range append(stations, total) {
		cells := []string{st.Station, fmt.Sprint(st.Total)}
		for _, s := range states {
			cells = append(cells, fmt.Sprint(st.ByState[string(s)]))
		}
		cells = append(cells, fmt.Sprint(st.Attempts), st.Ledger)
		fmt.Fprintln(tw, "  "+strings.Join(cells, "\t"))
	}
	tw.Flush()
	printByHub(w, "Assigned by hub (all stations):", total.ByHub)
	if res.Devices != total.Total {
		fmt.Fprintf(w, "%d distinct devices: %d in more than one ledger with the same outcome, %d recorded differently\n",
			res.Devices, res.Shared, res.Conflicts)
	}
	return mergeConflicts(res, lf.allowConflicts)
}

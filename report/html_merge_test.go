package report

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// stationFleet is three stations' ledgers: line-1 with devices 0-299 and
// failures, line-2 with 300-499, line-3 with 500-599 (starting ten minutes
// later), none shared.
func stationFleet(t *testing.T) Sources {
	t.Helper()
	dir := t.TempDir()
	specs := []struct {
		name     string
		from, n  int
		offset   time.Duration
		failures bool
	}{{"line-1", 0, 300, 0, true}, {"line-2", 300, 200, time.Minute, false}, {"line-3", 500, 100, 10 * time.Minute, false}}
	var srcs Sources
	for _, sp := range specs {
		path := filepath.Join(dir, sp.name+".ledger")
		srcs = append(srcs, Source{Station: sp.name, Path: path, Ledger: htmlLedger(t, path, sp.from, sp.n, sp.offset, sp.failures)})
	}
	return srcs
}

func renderMerged(t *testing.T, srcs Sources, opts MergedHTMLOptions) (string, *MergeResult, error) {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC) }
	}
	var buf bytes.Buffer
	res, err := WriteMergedHTML(context.Background(), srcs, &buf, opts)
	return buf.String(), res, err
}

// TestMergedHTMLReport: several ledgers give one self-contained page with
// the totals per station, charts over all of them (a throughput line per
// station), and the station of each run and each device that needs
// attention; the numbers add up to the ledgers' own.
func TestMergedHTMLReport(t *testing.T) {
	ctx := context.Background()
	srcs := stationFleet(t)
	page, res, err := renderMerged(t, srcs, MergedHTMLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkSelfContained(t, page)
	for _, s := range append(sections, "conflicts") {
		if !strings.Contains(page, `<section id="`+s+`"`) {
			t.Errorf("section %s missing", s)
		}
	}
	for _, c := range []string{"throughput", "latency", "hubs"} {
		if !strings.Contains(page, `data-chart="`+c+`"`) {
			t.Errorf("chart %s missing", c)
		}
	}
	if res.Rows != 600 || res.Devices != 600 || res.Conflicts != 0 || res.Shared != 0 || len(res.Stations) != 3 {
		t.Errorf("merge result %+v", res)
	}
	if got := value(t, page, "data-value", "total"); got != "600" {
		t.Errorf("total %q, want 600", got)
	}
	if got := value(t, page, "data-value", "stations"); got != "3" {
		t.Errorf("stations %q, want 3", got)
	}
	if strings.Contains(page, `data-value="distinct"`) {
		t.Error("a distinct-devices tile although no device is in two ledgers")
	}
	total := ledger.Counts{ByState: map[ledger.State]int{}, ByHub: map[string]int{}}
	for _, src := range srcs {
		c, err := src.Ledger.Counts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := value(t, page, "data-station-devices", src.Station); got != formatCount(c.Total) {
			t.Errorf("station %s: %s devices shown, ledger has %d", src.Station, got, c.Total)
		}
		if got := value(t, page, "data-station-billable", src.Station); got != formatCount(c.Attempts) {
			t.Errorf("station %s: %s billable shown, ledger has %d", src.Station, got, c.Attempts)
		}
		for s, n := range c.ByState {
			if got := value(t, page, "data-station-state", src.Station+"/"+string(s)); got != formatCount(n) {
				t.Errorf("station %s, %s: %s shown, ledger has %d", src.Station, s, got, n)
			}
			total.ByState[s] += n
		}
		if got := value(t, page, "data-station-state", src.Station+"/failed"); src.Station != "line-1" && got != "0" {
			t.Errorf("station %s: %s failed shown, want 0", src.Station, got)
		}
		for h, n := range c.ByHub {
			total.ByHub[h] += n
		}
		total.Attempts += c.Attempts
		if got := strings.Count(page, `data-run-station="`+src.Station+`"`); got != 1 {
			t.Errorf("station %s: %d runs in the history, want 1", src.Station, got)
		}
	}
	if got := value(t, page, "data-station-devices", "all stations"); got != "600" {
		t.Errorf("all stations: %s devices", got)
	}
	if got := value(t, page, "data-value", "billable"); got != formatCount(total.Attempts) {
		t.Errorf("billable %s, want %d", got, total.Attempts)
	}
	for s, n := range total.ByState {
		if got := value(t, page, "data-state", string(s)); got != formatCount(n) {
			t.Errorf("state %s: %s shown, ledgers have %d", s, got, n)
		}
		if got := value(t, page, "data-station-state", "all stations/"+string(s)); got != formatCount(n) {
			t.Errorf("all stations, %s: %s shown, ledgers have %d", s, got, n)
		}
	}
	for h, n := range total.ByHub {
		if got := value(t, page, "data-hub", h); got != formatCount(n) {
			t.Errorf("hub %s: %s shown, ledgers have %d", h, got, n)
		}
	}
	// Only line-1 has devices that need attention: 60 of its 300.
	if got := strings.Count(page, `data-attention-station="line-1"`); got != 60 {
		t.Errorf("%d attention rows of line-1, want 60", got)
	}
	if strings.Contains(page, `data-attention-station="line-2"`) || strings.Contains(page, `data-attention-station="line-3"`) {
		t.Error("attention rows of stations without failures")
	}
	if !strings.Contains(page, `dev-00003</span> <span class="muted">(line-1)</span>`) {
		t.Error("the failure groups do not name the station of their first ids")
	}

	r, err := BuildMergedHTMLReport(ctx, srcs, HTMLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The time axis spans all stations: line-3 starts ten minutes later.
	if r.Duration < 12*time.Minute || r.Step != 15*time.Second {
		t.Errorf("span %s, step %s", r.Duration, r.Step)
	}
	sum := 0
	for _, n := range r.Throughput {
		sum += n
	}
	if sum != r.Assigned {
		t.Errorf("throughput sums to %d, %d assigned", sum, r.Assigned)
	}
	for _, st := range r.Stations {
		s := 0
		for _, n := range st.Throughput {
			s += n
		}
		if s != st.Assigned || st.Assigned != st.ByState[ledger.StateAssigned] {
			t.Errorf("station %s: throughput sums to %d, %d assigned", st.Station, s, st.Assigned)
		}
	}
	// The throughput chart has the total and a line per station in its legend.
	chart := r.Chart("throughput")
	for _, name := range []string{"assigned, all stations", "line-1", "line-2", "line-3"} {
		if chart == nil || !strings.Contains(string(chart.SVG), ">"+name+"<") {
			t.Errorf("throughput chart lacks the legend %q", name)
		}
	}
	// Runs in the order they started, whichever ledger.
	for i := 1; i < len(r.Runs); i++ {
		if r.Runs[i].StartedAt.Before(r.Runs[i-1].StartedAt) {
			t.Errorf("run history out of order: %v", r.Runs)
		}
	}
}

// TestMergedHTMLConflicts: a device two ledgers record differently has
// both rows in the page's conflicts table; the page is written in full and
// a *ConflictError returned unless conflicts are allowed. A device both
// record alike counts once as distinct.
func TestMergedHTMLConflicts(t *testing.T) {
	ctx := context.Background()
	srcs := stationFleet(t)
	// line-2 also records dev-00010 (assigned at line-1) as failed, and
	// dev-00012 as line-1 does.
	l1 := srcs[0].Ledger
	d10, _, err := l1.Device(ctx, "dev-00010")
	if err != nil {
		t.Fatal(err)
	}
	d12, _, err := l1.Device(ctx, "dev-00012")
	if err != nil {
		t.Fatal(err)
	}
	if d10.State != ledger.StateAssigned || d12.State != ledger.StateAssigned {
		t.Fatalf("fixture: %s, %s", d10.State, d12.State)
	}
	d10.State, d10.AssignedHub, d10.DeviceID, d10.ErrorCode = ledger.StateFailed, "", "", 401002
	for _, d := range []ledger.Device{d10, d12} {
		if err := srcs[1].Ledger.Put(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	page, res, err := renderMerged(t, srcs, MergedHTMLOptions{})
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Result.Conflicts != 1 {
		t.Fatalf("err %v, want a ConflictError of one device", err)
	}
	if res.Rows != 602 || res.Devices != 600 || res.Shared != 1 || res.Conflicts != 1 {
		t.Errorf("merge result: %d rows, %d devices, %d shared, %d conflicts", res.Rows, res.Devices, res.Shared, res.Conflicts)
	}
	if !strings.Contains(page, "</html>") {
		t.Fatal("the page was not written in full")
	}
	rows := regexp.MustCompile(`<tr data-conflict="dev-00010"><td class="id">dev-00010</td><td>(line-\d)</td><td class="state-(\w+)">`).FindAllStringSubmatch(page, -1)
	if len(rows) != 2 || rows[0][1] != "line-1" || rows[0][2] != "assigned" || rows[1][1] != "line-2" || rows[1][2] != "failed" {
		t.Errorf("conflict rows %v, want line-1 assigned and line-2 failed", rows)
	}
	if strings.Contains(page, `data-conflict="dev-00012"`) {
		t.Error("dev-00012, recorded alike, is listed as a conflict")
	}
	if got := value(t, page, "data-value", "distinct"); got != "600" {
		t.Errorf("distinct %q, want 600", got)
	}
	if got := value(t, page, "data-value", "total"); got != "602" {
		t.Errorf("total %q, want 602 rows", got)
	}
	if !strings.Contains(page, `class="v state-failed" data-value="conflicts">1<`) {
		t.Error("no conflicts tile")
	}

	page2, _, err := renderMerged(t, srcs, MergedHTMLOptions{AllowConflicts: true})
	if err != nil {
		t.Fatalf("allowed: %v", err)
	}
	if page2 != page {
		t.Error("allowing conflicts changed the page")
	}
}

// TestMergedHTMLDuplicateStation: two ledgers with one label are refused.
func TestMergedHTMLDuplicateStation(t *testing.T) {
	srcs := stationFleet(t)
	srcs[1].Station = srcs[0].Station
	if _, _, err := renderMerged(t, srcs, MergedHTMLOptions{}); err == nil || !strings.Contains(err.Error(), "--station NAME=PATH") {
		t.Errorf("err %v", err)
	}
}

// TestMergedHTMLOneLedgerAsSource: one ledger through WriteMergedHTML (a
// glob matching one file) reads as the one-ledger report's numbers, with
// its station.
func TestMergedHTMLOneLedgerAsSource(t *testing.T) {
	srcs := stationFleet(t)[:1]
	page, res, err := renderMerged(t, srcs, MergedHTMLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	single := renderHTML(t, srcs[0].Ledger, HTMLOptions{})
	for _, k := range []string{"total", "assigned", "billable", "retries", "throttled", "attention"} {
		if a, b := value(t, page, "data-value", k), value(t, single, "data-value", k); a != b {
			t.Errorf("%s: merged %q, single %q", k, a, b)
		}
	}
	if res.Rows != 300 || value(t, page, "data-station-devices", "line-1") != "300" {
		t.Errorf("rows %d", res.Rows)
	}
}

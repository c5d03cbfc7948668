package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/ledger"
)

// withoutFlag drops flag name and its value from args.
func withoutFlag(args []string, name string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == name {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// TestShardProvisionMergedReport: a 3,000-device manifest provisioned as
// three shards against the simulator gives three ledgers (the default
// names, .shard-i-of-3.ledger) whose merged report has exactly the
// manifest's devices, each once, with its shard's station, and the totals
// per station; status over the glob agrees.
func TestShardProvisionMergedReport(t *testing.T) {
	const n, shards = 3000, 3
	f := newSASFleet(t, n)
	base := withoutFlag(f.args(), "--ledger")
	want := make([]int, shards) // devices per shard, by the documented hash
	for i := 1; i <= n; i++ {
		want[batch.ShardOf(fmt.Sprintf("sensor-%04d", i), shards)]++
	}
	holds := regexp.MustCompile(`shard \d/3 holds (\d+) of its devices`)
	for i := 0; i < shards; i++ {
		shard := fmt.Sprintf("%d/%d", i, shards)
		code, out, errs := runCmd(t, append(base, "--shard", shard, "--dry-run")...)
		m := holds.FindStringSubmatch(out)
		if code != exitOK || m == nil || m[1] != strconv.Itoa(want[i]) {
			t.Fatalf("dry run of shard %s: exit %d, want %d devices\nstdout:\n%s\nstderr:\n%s", shard, code, want[i], out, errs)
		}
		if code, out, errs := runCmd(t, append(base, "--shard", shard)...); code != exitOK {
			t.Fatalf("shard %s: exit %d\nstdout:\n%s\nstderr:\n%s", shard, code, out, errs)
		}
		if _, err := os.Stat(filepath.Join(f.dir, fmt.Sprintf("m.shard-%d-of-3.ledger", i))); err != nil {
			t.Fatalf("shard %s: %v", shard, err)
		}
	}
	// The run history records the shard.
	code, out, errs := runCmd(t, "status", "--ledger", filepath.Join(f.dir, "m.shard-1-of-3.ledger"), "--runs", "1", "--json")
	if code != exitOK || !strings.Contains(out, `"shard": "1/3"`) {
		t.Errorf("status --runs of shard 1: exit %d, want the option shard 1/3\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "m.ledger")); err == nil {
		t.Error("a shard run wrote the unsharded default ledger m.ledger")
	}

	csvPath := filepath.Join(f.dir, "fleet.csv")
	code, out, errs = runCmd(t, "report", "--ledger", filepath.Join(f.dir, "m.shard-*.ledger"), "--out", csvPath)
	if code != exitOK {
		t.Fatalf("merged report: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	file, err := os.Open(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	recs, err := csv.NewReader(file).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if recs[0][0] != "ledger" || recs[0][1] != "registration_id" || recs[0][2] != "status" {
		t.Fatalf("header %v", recs[0])
	}
	seen := map[string]bool{}
	perStation := map[string]int{}
	for _, r := range recs[1:] {
		station, id, status := r[0], r[1], r[2]
		if seen[id] {
			t.Errorf("%s is in the report twice", id)
		}
		seen[id] = true
		perStation[station]++
		if wantStation := fmt.Sprintf("m.shard-%d-of-3", batch.ShardOf(id, shards)); station != wantStation {
			t.Errorf("%s: station %s, want %s", id, station, wantStation)
		}
		if status != "assigned" {
			t.Errorf("%s: %s, want assigned", id, status)
		}
	}
	for i := 1; i <= n; i++ {
		if id := fmt.Sprintf("sensor-%04d", i); !seen[id] {
			t.Errorf("%s is missing from the merged report", id)
		}
	}
	if len(seen) != n {
		t.Errorf("%d devices in the merged report, want %d", len(seen), n)
	}
	for i := 0; i < shards; i++ {
		station := fmt.Sprintf("m.shard-%d-of-3", i)
		if perStation[station] != want[i] {
			t.Errorf("station %s: %d rows, want %d", station, perStation[station], want[i])
		}
		// The totals on stderr: station, devices, assigned.
		line := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(station) + `\s+(\d+)\s+(\d+)\s*$`).FindStringSubmatch(errs)
		if line == nil || line[1] != strconv.Itoa(want[i]) || line[2] != strconv.Itoa(want[i]) {
			t.Errorf("station %s totals: got %v, want %d devices, all assigned\nstderr:\n%s", station, line, want[i], errs)
		}
	}
	if !regexp.MustCompile(`(?m)^\s+total\s+3000\s+3000\s*$`).MatchString(errs) {
		t.Errorf("no total line of 3000 assigned\nstderr:\n%s", errs)
	}

	// The same three ledgers as one HTML report: 3,000 devices, the
	// totals per station, charts over all of them, the station of each run.
	htmlPath := filepath.Join(f.dir, "fleet.html")
	code, out, errs = runCmd(t, "report", "--ledger", filepath.Join(f.dir, "m.shard-*.ledger"), "--format", "html", "--out", htmlPath)
	if code != exitOK || !strings.Contains(errs, "Wrote the HTML report of 3000 row(s) of 3000 device(s) from 3 ledger(s) to "+htmlPath) {
		t.Fatalf("merged HTML report: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	if !regexp.MustCompile(`(?m)^\s+total\s+3000\s+3000\s*$`).MatchString(errs) {
		t.Errorf("HTML report: no total line of 3000 assigned on stderr\nstderr:\n%s", errs)
	}
	b, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	cell := func(attr, key string) string {
		t.Helper()
		m := regexp.MustCompile(attr + `="` + regexp.QuoteMeta(key) + `">([^<]*)<`).FindStringSubmatch(page)
		if m == nil {
			t.Errorf("fleet.html has no element with %s=%q", attr, key)
			return ""
		}
		return strings.ReplaceAll(m[1], ",", "")
	}
	for attr, want := range map[string]string{"total": "3000", "assigned": "3000", "stations": "3", "billable": "3000", "attention": "No device needs attention."} {
		if got := cell("data-value", attr); got != want {
			t.Errorf("fleet.html %s = %q, want %q", attr, got, want)
		}
	}
	if got := cell("data-station-devices", "all stations"); got != "3000" {
		t.Errorf("fleet.html: all stations %q devices, want 3000", got)
	}
	for i := 0; i < shards; i++ {
		station := fmt.Sprintf("m.shard-%d-of-3", i)
		if got := cell("data-station-devices", station); got != strconv.Itoa(want[i]) {
			t.Errorf("fleet.html: station %s %q devices, want %d", station, got, want[i])
		}
		if got := cell("data-station-state", station+"/assigned"); got != strconv.Itoa(want[i]) {
			t.Errorf("fleet.html: station %s %q assigned, want %d", station, got, want[i])
		}
		if n := strings.Count(page, `data-run-station="`+station+`"`); n != 1 {
			t.Errorf("fleet.html: %d runs of station %s, want 1", n, station)
		}
	}
	for _, c := range []string{"throughput", "latency", "hubs"} {
		if !strings.Contains(page, `data-chart="`+c+`"`) {
			t.Errorf("fleet.html lacks the %s chart", c)
		}
	}
	if strings.Contains(page, `data-value="distinct"`) || !strings.Contains(page, "No device is recorded differently by two ledgers.") {
		t.Error("fleet.html reports devices in more than one ledger")
	}

	code, out, errs = runCmd(t, "status", "--ledger", filepath.Join(f.dir, "m.shard-*.ledger"), "--json")
	if code != exitOK {
		t.Fatalf("merged status: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	var st struct {
		Stations []struct {
			Station string         `json:"station"`
			Devices int            `json:"devices"`
			ByState map[string]int `json:"byState"`
		} `json:"stations"`
		Total struct {
			Devices int `json:"devices"`
		} `json:"total"`
		Distinct  int `json:"distinctDevices"`
		Conflicts int `json:"conflicts"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(st.Stations) != shards || st.Total.Devices != n || st.Distinct != n || st.Conflicts != 0 {
		t.Errorf("status: %+v", st)
	}
	for i, s := range st.Stations {
		if s.Devices != want[i] || s.ByState["assigned"] != want[i] {
			t.Errorf("status station %d: %+v, want %d assigned", i, s, want[i])
		}
	}
}

// TestMergeConflictExits: two ledgers that record one device differently
// give both rows and exit 3 unless --allow-conflicts; a single ledger reads
// as before (no ledger column).
func TestMergeConflictExits(t *testing.T) {
	f := newSASFleet(t, 12)
	if code, out, errs := runCmd(t, f.args()...); code != exitOK {
		t.Fatalf("provision: exit %d\n%s\n%s", code, out, errs)
	}
	ctx := context.Background()
	other := filepath.Join(f.dir, "line-2.ledger")
	led, err := ledger.Open(ctx, other, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := led.Put(ctx, ledger.Device{RegistrationID: "sensor-0003", State: ledger.StateFailed, ErrorCode: 401002}); err != nil {
		t.Fatal(err)
	}
	led.Close()

	code, out, errs := runCmd(t, "report", "--ledger", f.ledger, "--ledger", other)
	if code != exitDeviceFails || !strings.Contains(errs, "sensor-0003") || !strings.Contains(errs, "--allow-conflicts") {
		t.Fatalf("conflict: exit %d, want 3 naming sensor-0003\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	rows := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, ",sensor-0003,") {
			rows++
		}
	}
	if rows != 2 || !strings.Contains(out, "m,sensor-0003,assigned") || !strings.Contains(out, "line-2,sensor-0003,failed") {
		t.Errorf("want both rows of sensor-0003:\n%s", out)
	}
	if code, _, errs := runCmd(t, "report", "--ledger", f.ledger, "--ledger", other, "--allow-conflicts"); code != exitOK {
		t.Errorf("--allow-conflicts: exit %d\n%s", code, errs)
	}
	// The HTML report: written in full with both rows, exit 3 all the same.
	html := filepath.Join(f.dir, "fleet.html")
	code, _, errs = runCmd(t, "report", "--ledger", f.ledger, "--ledger", other, "--format", "html", "--out", html)
	if code != exitDeviceFails || !strings.Contains(errs, "sensor-0003") || !strings.Contains(errs, "--allow-conflicts") {
		t.Errorf("HTML conflict: exit %d, want 3 naming sensor-0003\nstderr:\n%s", code, errs)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	conflictRows := regexp.MustCompile(`<tr data-conflict="sensor-0003"><td class="id">sensor-0003</td><td>([\w-]+)</td><td class="state-(\w+)">`).FindAllStringSubmatch(string(page), -1)
	if len(conflictRows) != 2 || conflictRows[0][1] != "m" || conflictRows[0][2] != "assigned" || conflictRows[1][1] != "line-2" || conflictRows[1][2] != "failed" {
		t.Errorf("HTML conflict rows %v, want m assigned and line-2 failed", conflictRows)
	}
	if code, _, errs := runCmd(t, "report", "--ledger", f.ledger, "--ledger", other, "--format", "html", "--out", html, "--allow-conflicts"); code != exitOK {
		t.Errorf("HTML --allow-conflicts: exit %d\n%s", code, errs)
	}
	code, out, errs = runCmd(t, "status", "--station", "east="+f.ledger, "--station", "west="+other)
	if code != exitDeviceFails || !strings.Contains(out, "east") || !strings.Contains(out, "west") || !strings.Contains(errs, "sensor-0003") {
		t.Errorf("status conflict: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	// One ledger: the report as before.
	code, out, _ = runCmd(t, "report", "--ledger", f.ledger)
	if code != exitOK || !strings.HasPrefix(out, "registration_id,") {
		t.Errorf("single ledger: exit %d\n%s", code, out)
	}
	if code, _, errs := runCmd(t, "report", "--ledger", f.ledger, "--allow-conflicts"); code != exitUsage {
		t.Errorf("--allow-conflicts with one ledger: exit %d, want 2\n%s", code, errs)
	}
}

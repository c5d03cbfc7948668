package report

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// mergeLedger writes a ledger of the given devices at dir/name.
func mergeLedger(t *testing.T, dir, name string, devices ...ledger.Device) Source {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(dir, name)
	led, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	for _, d := range devices {
		if err := led.Put(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	return Source{Station: StationName(path), Path: path, Ledger: led}
}

func assigned(id, hub string) ledger.Device {
	return ledger.Device{RegistrationID: id, State: ledger.StateAssigned, AssignedHub: hub, DeviceID: id,
		FinishedAt: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)}
}

func TestMergeRowsAndStationTotals(t *testing.T) {
	dir := t.TempDir()
	a := mergeLedger(t, dir, "line-1.ledger", assigned("d-01", "hub-a"), assigned("d-03", "hub-a"),
		ledger.Device{RegistrationID: "d-05", State: ledger.StateFailed, ErrorCode: 401002})
	b := mergeLedger(t, dir, "line-2.ledger", assigned("d-02", "hub-b"), assigned("d-04", "hub-b"))
	c := mergeLedger(t, dir, "line-3.ledger") // an empty station
	var buf bytes.Buffer
	res, err := WriteMerged(context.Background(), Sources{a, b, c}, &buf, CSV, MergeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(recs[0], ","), strings.Join(MergedColumns(), ","); got != want {
		t.Errorf("header %s, want %s", got, want)
	}
	var order []string
	for _, r := range recs[1:] {
		order = append(order, r[0]+":"+r[1])
	}
	if got, want := strings.Join(order, " "), "line-1:d-01 line-2:d-02 line-1:d-03 line-2:d-04 line-1:d-05"; got != want {
		t.Errorf("rows %s, want %s", got, want)
	}
	if res.Rows != 5 || res.Devices != 5 || res.Conflicts != 0 || res.Shared != 0 {
		t.Errorf("result %+v", res)
	}
	want := []struct {
		station           string
		devices, assigned int
	}{{"line-1", 3, 2}, {"line-2", 2, 2}, {"line-3", 0, 0}}
	for i, w := range want {
		st := res.Stations[i]
		if st.Station != w.station || st.Devices != w.devices || st.ByState[ledger.StateAssigned] != w.assigned {
			t.Errorf("station %d = %+v, want %+v", i, st, w)
		}
	}
	// --state filters every ledger.
	res, err = WriteMerged(context.Background(), Sources{a, b, c}, &bytes.Buffer{}, CSV,
		MergeOptions{Options: Options{States: []ledger.State{ledger.StateFailed}}})
	if err != nil || res.Rows != 1 || res.Stations[0].Devices != 1 {
		t.Errorf("failed only: %+v, %v", res, err)
	}
}

// TestMergeConflict: two ledgers that disagree about a device give both
// rows and a ConflictError naming both; agreeing ledgers do not.
func TestMergeConflict(t *testing.T) {
	dir := t.TempDir()
	a := mergeLedger(t, dir, "line-1.ledger", assigned("d-01", "hub-a"), assigned("d-02", "hub-a"))
	b := mergeLedger(t, dir, "line-2.ledger", assigned("d-01", "hub-b"), assigned("d-02", "hub-a"))
	var buf bytes.Buffer
	res, err := WriteMerged(context.Background(), Sources{a, b}, &buf, JSONLines, MergeOptions{})
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a ConflictError", err)
	}
	if res.Conflicts != 1 || res.Shared != 1 || res.Rows != 4 || res.Devices != 2 {
		t.Errorf("result %+v", res)
	}
	msg := err.Error()
	for _, s := range []string{"d-01", "line-1", "line-2", "hub-a", "hub-b"} {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not mention %s:\n%s", s, msg)
		}
	}
	var rows []struct {
		Ledger, RegistrationID, AssignedHub string
	}
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var r struct {
			Ledger         string `json:"ledger"`
			RegistrationID string `json:"registration_id"`
			AssignedHub    string `json:"assigned_hub"`
		}
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, struct{ Ledger, RegistrationID, AssignedHub string }{r.Ledger, r.RegistrationID, r.AssignedHub})
	}
	if len(rows) != 4 || rows[0].Ledger != "line-1" || rows[1].Ledger != "line-2" || rows[0].AssignedHub == rows[1].AssignedHub {
		t.Errorf("rows %+v: want both rows of d-01", rows)
	}
	if _, err := WriteMerged(context.Background(), Sources{a, b}, &bytes.Buffer{}, CSV, MergeOptions{AllowConflicts: true}); err != nil {
		t.Errorf("AllowConflicts: %v", err)
	}
}

func TestMergeResolveSources(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a.shard-0-of-2.ledger", "a.shard-1-of-2.ledger", "other.db"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	specs, err := ResolveSources([]string{filepath.Join(dir, "*.ledger"), filepath.Join(dir, "a.shard-0-of-2.ledger")},
		[]string{"east=" + filepath.Join(dir, "other.db")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range specs {
		got = append(got, s.Station)
	}
	if strings.Join(got, ",") != "a.shard-0-of-2,a.shard-1-of-2,east" {
		t.Errorf("stations %v", got)
	}
	// A --station label names a ledger given with --ledger too.
	specs, err = ResolveSources([]string{filepath.Join(dir, "other.db")}, []string{"west=" + filepath.Join(dir, "other.db")})
	if err != nil || len(specs) != 1 || specs[0].Station != "west" {
		t.Errorf("label: %+v, %v", specs, err)
	}
	for _, tt := range []struct{ ledgers, stations []string }{
		{[]string{filepath.Join(dir, "*.none")}, nil},                                     // matches nothing
		{[]string{filepath.Join(dir, "x/a.ledger"), filepath.Join(dir, "a.ledger")}, nil}, // same station
		{nil, []string{"noequals"}},
		{nil, []string{"=path"}},
	} {
		if _, err := ResolveSources(tt.ledgers, tt.stations); err == nil {
			t.Errorf("ResolveSources(%v, %v) = nil error", tt.ledgers, tt.stations)
		}
	}
}

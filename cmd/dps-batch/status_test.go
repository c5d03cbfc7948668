package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// historyLedger writes a ledger with four runs: two finished, one killed,
// and the last one still open (killed or running: the ledger cannot tell).
func historyLedger(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.ledger")
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	l, err := ledger.Open(ctx, path, ledger.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i, end := range []string{"interrupted", "", "completed", ""} {
		id, err := l.StartRun(ctx, "provision", map[string]string{"workers": "8"})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := l.Put(ctx, ledger.Device{RegistrationID: "d-1", State: ledger.StateAssigned, AssignedHub: "hub-1", RunID: id}); err != nil {
				t.Fatal(err)
			}
		}
		now = now.Add(time.Minute)
		if end != "" {
			if err := l.FinishRun(ctx, id, end, map[ledger.State]int{ledger.StateAssigned: 40 + i, ledger.StateFailed: 2, ledger.StatePending: 0}); err != nil {
				t.Fatal(err)
			}
		}
		now = now.Add(time.Minute)
	}
	return path
}

// TestStatusRuns: status --runs N lists the last N runs, newest first, with
// how each ended; the plain status keeps its output and hints at --runs.
func TestStatusRuns(t *testing.T) {
	path := historyLedger(t)

	code, out, errs := runCmd(t, "status", "--ledger", path, "--runs", "3")
	if code != exitOK {
		t.Fatalf("status --runs 3: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 5 || !strings.Contains(lines[0], "the last 3 run(s), newest first") {
		t.Fatalf("status --runs 3 printed %d lines, want a title, a header and 3 runs:\n%s", len(lines), out)
	}
	for i, want := range [][]string{
		{"run", "command", "started", "finished", "outcome", "devices"},
		{"#4", "provision", "killed / still running", " - "},
		{"#3", "provision", "completed", "assigned 42, failed 2"},
		{"#2", "provision", "killed / still running"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("line %d %q lacks %q", i+2, lines[i+1], w)
			}
		}
	}
	if strings.Contains(out, "#1 ") || strings.Contains(out, "pending") {
		t.Errorf("status --runs 3 shows run 1 or zero counts:\n%s", out)
	}
	started := time.Date(2026, 3, 1, 10, 4, 0, 0, time.UTC).Local().Format(time.DateTime)
	finished := time.Date(2026, 3, 1, 10, 5, 0, 0, time.UTC).Local().Format(time.DateTime)
	if !strings.Contains(lines[3], started) || !strings.Contains(lines[3], finished) {
		t.Errorf("run #3 line %q lacks its start %s and end %s (local time)", lines[3], started, finished)
	}

	code, out, _ = runCmd(t, "status", "--ledger", path, "--runs", "10")
	if code != exitOK || !strings.Contains(out, "all 4 run(s)") || !strings.Contains(out, "#1") || !strings.Contains(out, "interrupted") {
		t.Errorf("status --runs 10: exit %d:\n%s", code, out)
	}

	code, out, errs = runCmd(t, "status", "--ledger", path, "--runs", "2", "--json")
	if code != exitOK {
		t.Fatalf("status --runs 2 --json: exit %d: %s", code, errs)
	}
	var got struct {
		Ledger string
		Runs   []struct {
			ID         int64
			Command    string
			StartedAt  time.Time
			FinishedAt *time.Time
			Outcome    string
			Unfinished bool
			Options    map[string]string
			Counts     map[string]int
		}
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --runs --json: %v\n%s", err, out)
	}
	if got.Ledger != path || len(got.Runs) != 2 {
		t.Fatalf("status --runs 2 --json = %+v, want 2 runs of %s", got, path)
	}
	r4, r3 := got.Runs[0], got.Runs[1]
	if r4.ID != 4 || !r4.Unfinished || r4.FinishedAt != nil || r4.Outcome != "" || r4.Counts != nil || r4.Options["workers"] != "8" {
		t.Errorf("run 4 = %+v, want unfinished, no end, outcome or counts", r4)
	}
	if r3.ID != 3 || r3.Unfinished || r3.FinishedAt == nil || !r3.FinishedAt.Equal(time.Date(2026, 3, 1, 10, 5, 0, 0, time.UTC)) ||
		r3.Outcome != "completed" || r3.Counts["assigned"] != 42 || r3.Counts["failed"] != 2 ||
		!r3.StartedAt.Equal(time.Date(2026, 3, 1, 10, 4, 0, 0, time.UTC)) {
		t.Errorf("run 3 = %+v, want completed at 10:05 with its counts", r3)
	}
	if !strings.Contains(out, `"unfinished": true`) || strings.Count(out, "unfinished") != 1 {
		t.Errorf("status --runs --json: want unfinished only on the open run:\n%s", out)
	}

	// The plain status is unchanged but for one line about --runs.
	code, out, _ = runCmd(t, "status", "--ledger", path)
	if code != exitOK || !strings.Contains(out, "Last run #4") || !strings.Contains(out, "Run history: add --runs 10") {
		t.Errorf("status: exit %d, want the last run and the --runs hint:\n%s", code, out)
	}
	code, out, _ = runCmd(t, "status", "--ledger", path, "--json")
	if code != exitOK || strings.Contains(out, `"runs"`) || !strings.Contains(out, `"lastRun"`) {
		t.Errorf("status --json changed:\n%s", out)
	}
}

func TestStatusRunsEmptyAndUsage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.ledger")
	l, err := ledger.Open(context.Background(), path, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	code, out, _ := runCmd(t, "status", "--ledger", path, "--runs", "5")
	if code != exitOK || !strings.Contains(out, "no runs yet") {
		t.Errorf("status --runs on a ledger with no runs: exit %d:\n%s", code, out)
	}
	code, out, _ = runCmd(t, "status", "--ledger", path, "--runs", "5", "--json")
	if code != exitOK || !strings.Contains(out, `"runs": []`) {
		t.Errorf("status --runs --json on a ledger with no runs: exit %d:\n%s", code, out)
	}
	code, out, _ = runCmd(t, "status", "--ledger", path)
	if code != exitOK || strings.Contains(out, "--runs") {
		t.Errorf("status of a ledger with no runs hints at --runs:\n%s", out)
	}
	for _, bad := range []string{"-1", "x"} {
		code, _, errs := runCmd(t, "status", "--ledger", path, "--runs", bad)
		if code != exitUsage || !strings.Contains(errs, "Try:") {
			t.Errorf("status --runs %s: exit %d, stderr:\n%s", bad, code, errs)
		}
	}
}

package simtrace

import (
	"log/slog"
	"testing"
	"time"
)

func TestRePUTs(t *testing.T) {
	reg := func(s int) Event { return Event{Kind: "register", Status: s} }
	poll := func(s int) Event { return Event{Kind: "poll", Status: s} }
	look := func(s int) Event { return Event{Kind: "lookup", Status: s} }
	tests := []struct {
		name string
		h    []Event
		want int
	}{
		{"one clean registration", []Event{reg(202), poll(202), poll(200)}, 0},
		{"throttled then registered", []Event{reg(429), reg(503), reg(202), poll(200)}, 0},
		{"lost answer then lookup 404 then register", []Event{reg(0), look(404), reg(202)}, 0},
		{"lost answer then register at once", []Event{reg(0), reg(202)}, 1},
		{"register again while assigning", []Event{reg(202), reg(409)}, 1},
		{"register after an assigned poll", []Event{reg(202), poll(200), reg(202)}, 1},
		{"register after a lookup found it", []Event{look(200), reg(202)}, 1},
	}
	for _, tt := range tests {
		if got := RePUTs(tt.h); got != tt.want {
			t.Errorf("%s: RePUTs = %d, want %d", tt.name, got, tt.want)
		}
	}
	if got := Count([]Event{reg(202), poll(202), poll(200)}, "poll"); got != 2 {
		t.Errorf("Count(poll) = %d, want 2", got)
	}
}

func TestPerWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	starts := []time.Time{at(10), at(20), at(30)}
	tests := []struct {
		name   string
		times  []time.Time
		want   []int
		before int
	}{
		{"none", nil, []int{0, 0, 0}, 0},
		{"one per window", []time.Time{at(10), at(25), at(99)}, []int{1, 1, 1}, 0},
		// A window includes its start and excludes the next one's.
		{"boundaries", []time.Time{at(19.999), at(20), at(30)}, []int{1, 1, 1}, 0},
		{"twice in one campaign", []time.Time{at(11), at(21), at(22)}, []int{1, 2, 0}, 0},
		{"before the first window", []time.Time{at(1), at(12)}, []int{1, 0, 0}, 1},
	}
	for _, tt := range tests {
		got, before := PerWindow(tt.times, starts)
		if before != tt.before || len(got) != len(tt.want) {
			t.Errorf("%s: PerWindow = %v, %d; want %v, %d", tt.name, got, before, tt.want, tt.before)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s: PerWindow = %v, want %v", tt.name, got, tt.want)
				break
			}
		}
	}
}

func TestSinceAndFromRecord(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r := slog.NewRecord(t0, slog.LevelInfo, "register", 0)
	r.AddAttrs(slog.String("device", "Dev-01"), slog.Int("status", 202))
	id, ev := FromRecord(r)
	if id != "dev-01" || ev.Kind != "register" || ev.Status != 202 || !ev.At.Equal(t0) {
		t.Fatalf("FromRecord = %q, %+v", id, ev)
	}
	h := []Event{{Kind: "register", At: t0}, {Kind: "poll", At: t0.Add(time.Second)}, {Kind: "poll", At: t0.Add(2 * time.Second)}}
	if got := Since(h, t0.Add(time.Second)); len(got) != 2 || got[0].Kind != "poll" {
		t.Errorf("Since = %v, want the last two", got)
	}
	if got := Since(h, t0.Add(time.Hour)); len(got) != 0 {
		t.Errorf("Since(later) = %v, want none", got)
	}
}

func TestIssuedJudge(t *testing.T) {
	tests := []struct {
		x              Issued
		hasChain, lost bool
		ok             bool
	}{
		{Issued{}, false, false, true},
		{Issued{Issued: 1, Delivered: 1}, true, false, true},
		{Issued{Issued: 1, Delivered: 1}, false, true, true},
		{Issued{Issued: 1}, false, true, true},
		{Issued{Issued: 1}, true, false, false},
		{Issued{Issued: 1}, false, false, false},
		{Issued{Issued: 1, Delivered: 1}, false, false, false},
		{Issued{Issued: 1, Delivered: 1}, true, true, false},
		{Issued{}, true, false, false},
	}
	for _, tt := range tests {
		got := tt.x.Judge(tt.hasChain, tt.lost)
		if (got == "") != tt.ok {
			t.Errorf("%+v.Judge(chain %v, lost %v) = %q, want ok %v", tt.x, tt.hasChain, tt.lost, got, tt.ok)
		}
	}
}

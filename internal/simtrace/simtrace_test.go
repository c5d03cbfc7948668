package simtrace

import "testing"

func TestRePUTs(t *testing.T) {
	reg := func(s int) Event { return Event{"register", s} }
	poll := func(s int) Event { return Event{"poll", s} }
	look := func(s int) Event { return Event{"lookup", s} }
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

package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dps-batch/dps-batch/batch"
)

func TestCheckListen(t *testing.T) {
	for _, tt := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:9464", false, true},
		{"[::1]:9464", false, true},
		{"localhost:9464", false, true},
		{"127.0.0.2:0", false, true},
		{"0.0.0.0:9464", false, false},
		{":9464", false, false},
		{"10.1.2.3:9464", false, false},
		{"line3-pc:9464", false, false},
		{"0.0.0.0:9464", true, true},
		{":9464", true, true},
		{"9464", false, false},
		{"9464", true, false},
	} {
		err := CheckListen(tt.addr, tt.remote)
		if (err == nil) != tt.ok {
			t.Errorf("CheckListen(%q, %v) = %v, want ok %v", tt.addr, tt.remote, err, tt.ok)
		}
	}
}

func TestRequestsByStatusClass(t *testing.T) {
	e := New()
	e.Request("register", 202, 30*time.Millisecond)
	e.Request("register", 429, 0)
	e.Request("poll", 200, 10*time.Millisecond)
	e.Request("lookup", 0, 0)
	e.Device(batch.OutcomeAssigned, 2*time.Second)
	want := `
# HELP dpsbatch_requests_total Requests to DPS by kind (register, poll, lookup; enroll: bulk, get, delete) and HTTP status class (2xx, 4xx, 5xx; none when no answer arrived).
# TYPE dpsbatch_requests_total counter
dpsbatch_requests_total{code="2xx",kind="poll"} 1
dpsbatch_requests_total{code="2xx",kind="register"} 1
dpsbatch_requests_total{code="4xx",kind="register"} 1
dpsbatch_requests_total{code="none",kind="lookup"} 1
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want), "dpsbatch_requests_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(e.reqTime); n != 2 {
		t.Errorf("request latency series: %d, want 2 (register, poll: the 429 and the unanswered lookup have no latency)", n)
	}
	if n, err := testutil.GatherAndCount(e.Registry(), "dpsbatch_device_duration_seconds"); err != nil || n != 1 {
		t.Errorf("device latency series: %d (%v)", n, err)
	}
}

func TestProvisionReadsStats(t *testing.T) {
	e := New()
	var st batch.Stats
	e.Provision(&st)
	want := `
# HELP dpsbatch_devices_in_flight Devices being worked on now.
# TYPE dpsbatch_devices_in_flight gauge
dpsbatch_devices_in_flight 0
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want), "dpsbatch_devices_in_flight"); err != nil {
		t.Error(err)
	}
	n, err := testutil.GatherAndCount(e.Registry(), "dpsbatch_devices_total", "dpsbatch_pacer_rate_per_minute")
	if err != nil || n != 7+2 {
		t.Errorf("devices_total and pacer series: %d (%v), want 7 outcomes and 2 pacers", n, err)
	}
}

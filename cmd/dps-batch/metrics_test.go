package main

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dps-batch/dps-batch/ledger"
)

// scrape reads http://addr/metrics.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: HTTP %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return mf
}

// metricValue sums the samples of a family whose labels include want.
func metricValue(mf map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := mf[name]
	if f == nil {
		return -1
	}
	sum := 0.0
next:
	for _, m := range f.GetMetric() {
		for k, v := range want {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// TestMetricsEndpoint: provision --metrics-listen serves the counters of a
// 5,000-device run while it runs (devices in flight, requests counted,
// counters rising from one scrape to the next), and when it ends its
// counters equal the ledger's. The devices are symmetric-key group devices
// (cheap to make and to sign for) against a simulator without quotas, with
// --rate and --poll-rate unlimited.
func TestMetricsEndpoint(t *testing.T) {
	const n = 5000
	f := newSASFleet(t, n)
	k := f.sim.Knobs()
	// Each device is answered assigning, then assigned at its first poll:
	// a register and a poll each, without waiting for an assignment.
	k.AssignmentDelay = 0
	if err := f.sim.SetKnobs(k); err != nil {
		t.Fatal(err)
	}
	addr := closedPort(t)

	var (
		mu  sync.Mutex
		end map[string]*dto.MetricFamily
	)
	metricsScraped = func(a string) {
		if a != addr {
			t.Errorf("metrics served at %s, want %s", a, addr)
		}
		m := scrape(t, a)
		mu.Lock()
		end = m
		mu.Unlock()
	}
	t.Cleanup(func() { metricsScraped = nil })

	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errs := runCmd(t, f.args("--workers", "100", "--poll-rate", "-1", "--metrics-listen", addr)...)
		done <- result{code, out, errs}
	}()

	// Mid-run: devices in flight, requests and finished devices counted.
	var mid map[string]*dto.MetricFamily
	deadline := time.Now().Add(30 * time.Second)
	for mid == nil {
		select {
		case r := <-done:
			t.Fatalf("the run ended (exit %d) before a scrape saw devices in flight and some finished\n%s%s", r.code, r.out, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no scrape saw devices in flight within 30 s")
		}
		if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
			resp.Body.Close()
			m := scrape(t, addr)
			if metricValue(m, "dpsbatch_devices_in_flight", nil) > 0 &&
				metricValue(m, "dpsbatch_devices_total", map[string]string{"outcome": "assigned"}) > 0 {
				mid = m
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
	}{
		{"dpsbatch_requests_total", map[string]string{"kind": "register", "code": "2xx"}},
		{"dpsbatch_requests_total", map[string]string{"kind": "poll", "code": "2xx"}},
		{"dpsbatch_registrations_billable_total", nil},
		{"dpsbatch_request_duration_seconds", map[string]string{"kind": "register"}},
		{"dpsbatch_device_duration_seconds", nil},
		{"dpsbatch_devices_planned", nil},
	} {
		if v := metricValue(mid, c.name, c.labels); v <= 0 {
			t.Errorf("mid-run %s%v = %v, want > 0", c.name, c.labels, v)
		}
	}
	assigned := map[string]string{"outcome": "assigned"}
	if v := metricValue(mid, "dpsbatch_devices_total", assigned); v >= n {
		t.Errorf("mid-run assigned = %v: the run was over", v)
	}
	// A later scrape during the run shows the counters risen.
	for rose := false; !rose; {
		time.Sleep(50 * time.Millisecond)
		select {
		case r := <-done:
			done <- r
			t.Fatal("the run ended before a second scrape")
		default:
		}
		later := scrape(t, addr)
		for _, name := range []string{"dpsbatch_requests_total", "dpsbatch_registrations_billable_total", "dpsbatch_devices_total"} {
			if a, b := metricValue(mid, name, nil), metricValue(later, name, nil); b < a {
				t.Fatalf("%s fell from %v to %v", name, a, b)
			}
		}
		rose = metricValue(later, "dpsbatch_devices_total", assigned) > metricValue(mid, "dpsbatch_devices_total", assigned)
	}

	r := <-done
	if r.code != 0 {
		t.Fatalf("provision exit %d\n%s%s", r.code, r.out, r.err)
	}
	if !strings.Contains(r.err, "metrics: http://"+addr+"/metrics") {
		t.Errorf("stderr does not name the endpoint:\n%s", r.err)
	}
	mu.Lock()
	defer mu.Unlock()
	if end == nil {
		t.Fatal("no scrape after the run")
	}
	led, err := ledger.Open(context.Background(), f.ledger, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	c, err := led.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.ByState[ledger.StateAssigned] != n {
		t.Fatalf("ledger: %d assigned, want %d", c.ByState[ledger.StateAssigned], n)
	}
	got := func(name string, labels map[string]string) int { return int(metricValue(end, name, labels)) }
	for _, s := range []struct {
		outcome string
		state   ledger.State
	}{{"assigned", ledger.StateAssigned}, {"failed", ledger.StateFailed}, {"disabled", ledger.StateDisabled}} {
		if g, w := got("dpsbatch_devices_total", map[string]string{"outcome": s.outcome}), c.ByState[s.state]; g != w {
			t.Errorf("dpsbatch_devices_total{outcome=%q} = %d, ledger has %d", s.outcome, g, w)
		}
	}
	checks := []struct {
		what      string
		got, want int
	}{
		{"billable registrations vs ledger attempts", got("dpsbatch_registrations_billable_total", nil), c.Attempts},
		{"register requests vs ledger attempts", got("dpsbatch_requests_total", map[string]string{"kind": "register"}), c.Attempts},
		{"polls and lookups vs ledger polls", got("dpsbatch_requests_total", map[string]string{"kind": "poll"}) +
			got("dpsbatch_requests_total", map[string]string{"kind": "lookup"}), c.Polls},
		{"device latencies vs finished devices", got("dpsbatch_device_duration_seconds", nil),
			c.ByState[ledger.StateAssigned] + c.ByState[ledger.StateFailed] + c.ByState[ledger.StateDisabled]},
		{"in flight at the end", got("dpsbatch_devices_in_flight", nil), 0},
		{"unfinished", got("dpsbatch_devices_total", map[string]string{"outcome": "unfinished"}), 0},
		{"planned", got("dpsbatch_devices_planned", nil), n},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s: metrics %d, ledger %d", ch.what, ch.got, ch.want)
		}
	}
	for _, name := range []string{"dpsbatch_throttled_total", "dpsbatch_retries_total", "dpsbatch_pacer_rate_per_minute"} {
		if metricValue(end, name, nil) < 0 {
			t.Errorf("%s is missing", name)
		}
	}
}

// TestMetricsListenRefusesRemote: --metrics-listen on a non-loopback address
// needs --metrics-allow-remote; nothing is sent without it.
func TestMetricsListenRefusesRemote(t *testing.T) {
	f := newSASFleet(t, 2)
	code, _, errs := runCmd(t, f.args("--metrics-listen", "0.0.0.0:0")...)
	if code != exitUsage || !strings.Contains(errs, "not a loopback address") || !strings.Contains(errs, "--metrics-allow-remote") {
		t.Fatalf("exit %d, stderr:\n%s", code, errs)
	}
	code, _, errs = runCmd(t, f.args("--metrics-listen", "nohost")...)
	if code != exitUsage || !strings.Contains(errs, "host:port") {
		t.Fatalf("exit %d, stderr:\n%s", code, errs)
	}
	code, out, errs := runCmd(t, f.args("--metrics-listen", "0.0.0.0:0", "--metrics-allow-remote")...)
	if code != 0 {
		t.Fatalf("with --metrics-allow-remote: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(errs, "metrics: http://") {
		t.Errorf("stderr does not name the endpoint:\n%s", errs)
	}
}

// TestEnrollMetrics: enroll --metrics-listen serves the enrollment run's
// counters; at the end they equal the ledger's enrollments table.
func TestEnrollMetrics(t *testing.T) {
	s := newServiceSim(t, nil)
	manifest, ids := writeMixedManifest(t, s.dir, 0, 23)
	ledgerPath := filepath.Join(s.dir, "fleet.ledger")
	addr := closedPort(t)
	var end map[string]*dto.MetricFamily
	metricsScraped = func(a string) { end = scrape(t, a) }
	t.Cleanup(func() { metricsScraped = nil })
	code, out, errs := runCmdEnv(t, map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}, "enroll", "--manifest", manifest,
		"--ledger", ledgerPath, "--ca-file", s.caFile, "--quiet", "--batch", "5", "--metrics-listen", addr)
	if code != exitOK {
		t.Fatalf("enroll exit %d\n%s%s", code, out, errs)
	}
	if end == nil {
		t.Fatal("no scrape after the run")
	}
	led, err := ledger.Open(context.Background(), ledgerPath, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	c, err := led.EnrollmentCounts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := func(name string, labels map[string]string) int { return int(metricValue(end, name, labels)) }
	checks := []struct {
		what      string
		got, want int
	}{
		{"created", got("dpsbatch_enrollments_total", map[string]string{"outcome": "created"}), c.ByState[ledger.EnrollCreated]},
		{"created, all of them", c.ByState[ledger.EnrollCreated], len(ids)},
		{"failed", got("dpsbatch_enrollments_total", map[string]string{"outcome": "failed"}), c.ByState[ledger.EnrollFailed]},
		{"items vs ledger calls", got("dpsbatch_enrollment_items_total", nil), c.Calls},
		{"bulk requests (5 per request)", got("dpsbatch_requests_total", map[string]string{"kind": "bulk", "code": "2xx"}), (len(ids) + 4) / 5},
		{"bulk latencies", got("dpsbatch_request_duration_seconds", map[string]string{"kind": "bulk"}), (len(ids) + 4) / 5},
		{"planned", got("dpsbatch_devices_planned", nil), len(ids)},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s: metrics %d, ledger %d", ch.what, ch.got, ch.want)
		}
	}
	if metricValue(end, "dpsbatch_pacer_rate_per_minute", map[string]string{"pacer": "service"}) <= 0 {
		t.Error("dpsbatch_pacer_rate_per_minute{pacer=\"service\"} missing or 0 (enroll's default rate is limited)")
	}
}

// TestMetricsLinger: with --metrics-linger the endpoint still serves the
// final counts after the run, for a scrape that comes after it ended.
func TestMetricsLinger(t *testing.T) {
	f := newSASFleet(t, 3)
	addr := closedPort(t)
	ended := make(chan struct{})
	metricsScraped = func(string) { close(ended) }
	t.Cleanup(func() { metricsScraped = nil })
	done := make(chan int, 1)
	go func() {
		code, _, _ := runCmd(t, f.args("--metrics-listen", addr, "--metrics-linger", "3s")...)
		done <- code
	}()
	select {
	case <-ended:
	case code := <-done:
		t.Fatalf("exit %d before the run's end was seen", code)
	case <-time.After(30 * time.Second):
		t.Fatal("the run did not end within 30 s")
	}
	m := scrape(t, addr) // after the run: the linger serves it
	if v := metricValue(m, "dpsbatch_devices_total", map[string]string{"outcome": "assigned"}); v != 3 {
		t.Errorf("after the run: assigned = %v, want 3", v)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	if code, _, errs := runCmd(t, f.args("--metrics-linger", "3s")...); code != exitUsage || !strings.Contains(errs, "need --metrics-listen") {
		t.Errorf("--metrics-linger alone: exit %d\n%s", code, errs)
	}
}

package report

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// htmlFleet is a ledger of n devices provisioned over about two minutes,
// over three hubs, with throttling in the attempt log, and (when failures)
// devices that failed, were disabled, are retryable or whose credentials
// changed.
func htmlFleet(t testing.TB, n int, failures bool) *ledger.Ledger {
	t.Helper()
	return htmlLedger(t, filepath.Join(t.TempDir(), "h.ledger"), 0, n, 0, failures)
}

// htmlLedger is htmlFleet's ledger at path, with the devices numbered from
// from to from+n-1, their activity starting offset after 08:00.
func htmlLedger(t testing.TB, path string, from, n int, offset time.Duration, failures bool) *ledger.Ledger {
	t.Helper()
	ctx := context.Background()
	start := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC).Add(offset)
	led, err := ledger.Open(ctx, path, ledger.Options{Now: func() time.Time { return start.Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	run, err := led.StartRun(ctx, "provision", map[string]string{"rate": "6000", "workers": "200"})
	if err != nil {
		t.Fatal(err)
	}
	hubs := []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net", "hub-c.azure-devices.net"}
	for j := range n {
		i := from + j
		id := fmt.Sprintf("dev-%05d", i)
		first := start.Add(time.Duration(j) * 120 * time.Second / time.Duration(n))
		d := ledger.Device{RegistrationID: id, RunID: run, State: ledger.StateAssigned, AssignedHub: hubs[i%3], DeviceID: id,
			HTTPStatus: 200, Attempts: 1, Polls: 1, FirstAttemptAt: first, FinishedAt: first.Add(time.Duration(1000+i%7*300) * time.Millisecond)}
		log := []ledger.Attempt{{Kind: "register", HTTPStatus: 202, Latency: 40 * time.Millisecond, At: first}}
		if i%10 == 5 { // throttled once, then accepted
			d.Attempts = 2
			log = append([]ledger.Attempt{{Kind: "register", HTTPStatus: 429, ErrorCode: 429001, Latency: time.Millisecond, At: first}}, log...)
		}
		if failures {
			switch i % 20 {
			case 3:
				d.State, d.AssignedHub, d.DeviceID, d.HTTPStatus = ledger.StateFailed, "", "", 401
				d.ErrorCode, d.ErrorMessage, d.Hint = 401002, "Invalid certificate.", "the certificate chain is not accepted: upload and verify the CA"
			case 7:
				d.State, d.AssignedHub, d.DeviceID, d.HTTPStatus = ledger.StateDisabled, "", "", 400
				d.ErrorCode, d.ErrorMessage, d.Hint = 400209, "enrollment disabled", "enable the enrollment"
			case 11:
				d.State, d.AssignedHub, d.DeviceID, d.HTTPStatus, d.FinishedAt = ledger.StateRetryable, "", "", 429, time.Time{}
				d.ErrorCode, d.ErrorMessage, d.Hint = 429001, "throttled", "run provision again"
			case 13:
				d.Hint = "credentials changed since this device was assigned (ledger f1, manifest f2): not registered again"
			}
		}
		if err := led.Put(ctx, d, log...); err != nil {
			t.Fatal(err)
		}
	}
	counts, err := led.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := led.FinishRun(ctx, run, "completed", counts.ByState); err != nil {
		t.Fatal(err)
	}
	return led
}

func renderHTML(t *testing.T, led *ledger.Ledger, opts HTMLOptions) string {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC) }
	}
	var buf bytes.Buffer
	if _, err := WriteHTML(context.Background(), led, &buf, opts); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// value returns the text of the element marked attr="key".
func value(t *testing.T, page, attr, key string) string {
	t.Helper()
	m := regexp.MustCompile(attr + `="` + regexp.QuoteMeta(key) + `">([^<]*)<`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no element with %s=%q in the report", attr, key)
	}
	return m[1]
}

// checkSelfContained fails unless the page fetches nothing: no script,
// stylesheet link, image source or CSS url.
func checkSelfContained(t *testing.T, page string) {
	t.Helper()
	for _, bad := range []string{"<script", "<link", "url(", "@import", "<iframe", "<img", "<object", "<embed"} {
		if strings.Contains(page, bad) {
			t.Errorf("report contains %q: it must not load anything", bad)
		}
	}
	if m := regexp.MustCompile(`<[a-z]+[^>]*\ssrc=`).FindString(page); m != "" {
		t.Errorf("report loads %s", m)
	}
	for _, m := range regexp.MustCompile(`(?:href|xlink:href)="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		t.Errorf("report links to %s", m[1])
	}
}

var sections = []string{"summary", "throughput", "latency", "hubs", "failures", "runs", "attention"}

func TestHTMLReportGolden(t *testing.T) {
	led := htmlFleet(t, 400, true)
	page := renderHTML(t, led, HTMLOptions{})
	checkSelfContained(t, page)
	for _, s := range sections {
		if !strings.Contains(page, `<section id="`+s+`"`) {
			t.Errorf("section %s missing", s)
		}
	}
	for _, c := range []string{"throughput", "latency", "hubs"} {
		if !regexp.MustCompile(`<figure class="chart" id="chart-` + c + `"><svg role="img" aria-label="[^"]+" data-chart="` + c + `" width="[0-9.]+pt" height="[0-9.]+pt" viewBox=`).MatchString(page) {
			t.Errorf("chart %s is not an inline SVG figure", c)
		}
	}
	if n := strings.Count(page, "<svg"); n != 3 {
		t.Errorf("%d SVG elements, want 3", n)
	}

	ctx := context.Background()
	counts, err := led.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"total": "400", "assigned": formatCount(counts.ByState[ledger.StateAssigned]), "billable": formatCount(counts.Attempts),
		"retries": "40", "throttled": "40", "attention": "80 device(s): failed, disabled, retryable, or assigned with credentials that changed since.",
	}
	for k, v := range want {
		if got := value(t, page, "data-value", k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if counts.Attempts != 440 {
		t.Errorf("ledger counts %d register requests, want 440", counts.Attempts)
	}
	for s, n := range counts.ByState {
		if got := value(t, page, "data-state", string(s)); got != formatCount(n) {
			t.Errorf("state %s: %s devices shown, ledger has %d", s, got, n)
		}
	}
	for hub, n := range counts.ByHub {
		if got := value(t, page, "data-hub", hub); got != formatCount(n) {
			t.Errorf("hub %s: %s devices shown, ledger has %d", hub, got, n)
		}
	}
	// Failure groups: one per code, biggest first, with the first ids.
	r, err := BuildHTMLReport(ctx, led, HTMLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Failures) != 3 {
		t.Fatalf("failure groups %+v, want 3", r.Failures)
	}
	for _, g := range r.Failures {
		if g.N != 20 || len(g.IDs) != failureIDs || g.Hint == "" {
			t.Errorf("failure group %d: %d devices, ids %v, hint %q", g.Code, g.N, g.IDs, g.Hint)
		}
	}
	if g := r.Failures[0]; g.Code != 400209 || g.IDs[0] != "dev-00007" || g.IDs[1] != "dev-00027" {
		t.Errorf("first failure group %+v", g)
	}
	for _, s := range []string{`<code>401002</code>`, "the certificate chain is not accepted", "dev-00003", "and 15 more", "credentials-changed", "rate=6000 workers=200", "completed"} {
		if !strings.Contains(page, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	// Latency: 1.0 s to 2.8 s by the fleet's construction.
	if r.Latency.P50 < 1 || r.Latency.P99 > 2.8 || r.Latency.P50 > r.Latency.P95 || r.Latency.P95 > r.Latency.P99 {
		t.Errorf("latency %+v", r.Latency)
	}
	// Throughput: every assigned device is in one interval; 429s are marked.
	sum, throttled := 0, 0
	for i := range r.Throughput {
		sum += r.Throughput[i]
		throttled += r.Throttles[i]
	}
	if sum != counts.ByState[ledger.StateAssigned] || throttled != 40 || r.Step != 5*time.Second {
		t.Errorf("throughput sums to %d (want %d), 429s to %d, step %s", sum, counts.ByState[ledger.StateAssigned], throttled, r.Step)
	}
}

func TestHTMLReportEmptyLedger(t *testing.T) {
	led, err := ledger.Open(context.Background(), filepath.Join(t.TempDir(), "e.ledger"), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	page := renderHTML(t, led, HTMLOptions{})
	checkSelfContained(t, page)
	for _, s := range sections {
		if !strings.Contains(page, `<section id="`+s+`"`) {
			t.Errorf("section %s missing", s)
		}
	}
	for _, s := range []string{"The ledger has no devices.", "No requests were recorded.", "No device has finished.", "No device is assigned.", "No device failed", "No run is recorded.", "No device needs attention."} {
		if !strings.Contains(page, s) {
			t.Errorf("empty report lacks %q", s)
		}
	}
	if strings.Contains(page, "<svg") {
		t.Error("an empty report has a chart")
	}
	if got := value(t, page, "data-value", "total"); got != "0" {
		t.Errorf("total %q", got)
	}
}

func TestHTMLReportNoFailures(t *testing.T) {
	page := renderHTML(t, htmlFleet(t, 60, false), HTMLOptions{})
	if !strings.Contains(page, "No device failed") || !strings.Contains(page, "No device needs attention.") {
		t.Error("a clean run shows failures")
	}
	if got := value(t, page, "data-state", "assigned"); got != "60" {
		t.Errorf("assigned %q", got)
	}
}

func TestHTMLReportAttentionCap(t *testing.T) {
	page := renderHTML(t, htmlFleet(t, 200, true), HTMLOptions{AttentionLimit: 7})
	if n := strings.Count(page, `<td class="id">`); n != 7 {
		t.Errorf("%d attention rows, want 7", n)
	}
	if !strings.Contains(page, "The first 7 by registration id are listed") || !strings.Contains(page, "40 device(s)") {
		t.Error("the capped table does not say how many devices need attention")
	}
}

func TestHTMLReportEscapes(t *testing.T) {
	ctx := context.Background()
	led, err := ledger.Open(ctx, filepath.Join(t.TempDir(), "x.ledger"), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	now := time.Now()
	if err := led.Put(ctx, ledger.Device{RegistrationID: "dev<script>", State: ledger.StateFailed, ErrorCode: 400004,
		ErrorMessage: `<img src="http://x/">`, Attempts: 1, FirstAttemptAt: now, FinishedAt: now.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	page := renderHTML(t, led, HTMLOptions{})
	checkSelfContained(t, page)
	if !strings.Contains(page, "dev&lt;script&gt;") {
		t.Error("registration id not escaped")
	}
}

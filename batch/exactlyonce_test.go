package batch_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
)

// These tests count what took effect at the server (the simulator's
// per-device registers), never the client's own view: each is one of the
// sequences in which a careless client pays for a registration twice.

// timeoutClient is a real DPS client to the fixture's simulator with a short
// request timeout, so that a late answer is one the client gave up on.
func (f *fixture) timeoutClient(t *testing.T, timeout time.Duration) *dps.Client {
	t.Helper()
	c, err := dps.NewClient(dps.Config{Endpoint: f.running.URL, IDScope: dpssim.DefaultIDScope, RootCAs: f.running.CAPool, Timeout: timeout})
	must(t, err)
	t.Cleanup(c.Close)
	return c
}

// registersAtServer returns each fixture device's registrations that took
// effect at the simulator.
func registersAtServer(t *testing.T, f *fixture) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, id := range f.ids {
		ri, _ := f.sim.Registration(id)
		out[id] = ri.Registers
	}
	return out
}

// wantRegisters fails for every device whose registrations at the server
// are not want.
func wantRegisters(t *testing.T, f *fixture, want int) {
	t.Helper()
	bad := 0
	for id, n := range registersAtServer(t, f) {
		if n != want {
			if bad++; bad <= 5 {
				ri, _ := f.sim.Registration(id)
				t.Errorf("%s: %d registrations took effect at the server, want %d (register requests %d, lookups %d, polls %d)",
					id, n, want, ri.RegisterRequests, ri.Lookups, ri.Polls)
			}
		}
	}
	if bad > 5 {
		t.Errorf("... and %d more devices", bad-5)
	}
}

func wantAllAssigned(t *testing.T, f *fixture) {
	t.Helper()
	for _, id := range f.ids {
		d, ok, err := f.ledger.Device(context.Background(), id)
		must(t, err)
		if !ok || d.State != ledger.StateAssigned {
			t.Errorf("%s: ledger state %s (%s), want assigned", id, d.State, d.ErrorMessage)
		}
	}
}

// Broken sequence 1: the first PUT takes effect but its answer comes after
// the client's request timeout; while its operation runs, the lookup finds
// nothing (or shows assigning) and another PUT is answered 409203.
func TestLateEffectRegistersOnce(t *testing.T) {
	for _, mode := range []string{dpssim.LookupNotFound, dpssim.LookupAssigning} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, mix{x509Group: 20}, func(c *dpssim.Config) {
				c.AssignmentDelay = dpssim.Duration(2500 * time.Millisecond)
				c.LookupWhileAssigning = mode
				c.Faults = dpssim.Faults{Seed: 1, LateEffectRate: 1, LateEffectFirstPuts: 1, LateAnswerDelay: dpssim.Duration(1500 * time.Millisecond)}
			})
			r := f.runner(f.timeoutClient(t, 700*time.Millisecond))
			r.Options.Workers = 8
			r.Options.MinPollInterval = 200 * time.Millisecond
			r.Options.RequestTimeout = 700 * time.Millisecond
			r.Options.Settle = 300 * time.Millisecond
			res, err := r.Run(context.Background(), nil)
			must(t, err)
			if res.Resumable() || res.Failures() > 0 {
				t.Errorf("run left work or failures: %+v", res.Snapshot)
			}
			wantAllAssigned(t, f)
			wantRegisters(t, f, 1)
			if st := f.sim.Stats(); st.Registers != 20 || st.LateEffects < 20 {
				t.Errorf("server: %d registrations, %d late effects; want 20 and at least 20", st.Registers, st.LateEffects)
			}
			t.Logf("%s: %+v", mode, res.Snapshot)
		})
	}
}

// Broken sequence 2: a reprovision campaign stopped abruptly, then the same
// command: the campaign is continued from the ledger, and no device is
// registered by it twice.
func TestReprovisionCampaignContinuesAfterStop(t *testing.T) {
	f := newFixture(t, mix{symGroup: 120}, func(c *dpssim.Config) {
		c.AssignmentDelay = dpssim.Duration(50 * time.Millisecond)
	})
	_, err := f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	wantRegisters(t, f, 1)

	// The campaign is stopped abruptly (as a kill would: no summary, no
	// resume hint) once about half of its devices were registered.
	ctx, cancel := context.WithCancel(context.Background())
	r := f.runner(nil)
	r.Options.Reprovision = true
	r.Options.Workers = 8
	go func() {
		for f.sim.Stats().Registers < 120+60 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	res, err := r.Run(ctx, nil)
	must(t, err)
	if res.Campaign == nil || !res.CampaignStarted || res.CampaignCompleted {
		t.Fatalf("stopped campaign: %+v started %v completed %v", res.Campaign, res.CampaignStarted, res.CampaignCompleted)
	}
	open, ok, err := f.ledger.OpenCampaign(context.Background())
	must(t, err)
	if !ok || open.ID != res.Campaign.ID || open.Kind != "reprovision" {
		t.Fatalf("open campaign %+v (%v), want #%d reprovision", open, ok, res.Campaign.ID)
	}
	mid := f.sim.Stats().Registers

	// The same command continues it.
	r = f.runner(nil)
	r.Options.Reprovision = true
	res, err = r.Run(context.Background(), nil)
	must(t, err)
	if !res.CampaignCompleted || res.CampaignStarted || res.Campaign.ID != open.ID {
		t.Errorf("resumed run: campaign %+v started %v completed %v; want #%d continued and completed", res.Campaign, res.CampaignStarted, res.CampaignCompleted, open.ID)
	}
	wantRegisters(t, f, 2)
	wantAllAssigned(t, f)
	if _, ok, _ := f.ledger.OpenCampaign(context.Background()); ok {
		t.Error("campaign still open after it completed")
	}
	t.Logf("registrations: 120 first, %d by the stopped campaign run, %d by its continuation", mid-120, f.sim.Stats().Registers-mid)

	// The same command once more (as after a kill right after the campaign
	// was recorded completed): nothing is registered again.
	r = f.runner(nil)
	r.Options.Reprovision = true
	res, err = r.Run(context.Background(), nil)
	must(t, err)
	if !res.CampaignAlreadyCompleted || res.CampaignStarted || res.Campaign == nil || res.Campaign.ID != open.ID {
		t.Errorf("same command after completion: campaign %+v started %v already-completed %v; want #%d reported done", res.Campaign, res.CampaignStarted, res.CampaignAlreadyCompleted, open.ID)
	}
	wantRegisters(t, f, 2)

	// --new-campaign starts campaign #2, which registers every device once more.
	r = f.runner(nil)
	r.Options.Reprovision = true
	r.Options.NewCampaign = true
	res, err = r.Run(context.Background(), nil)
	must(t, err)
	if !res.CampaignStarted || res.Campaign.ID == open.ID || !res.CampaignCompleted {
		t.Errorf("new campaign not started and completed: %+v", res.Campaign)
	}
	wantRegisters(t, f, 3)
}

// An unfinished campaign of one kind refuses a run asking for another kind,
// before anything is sent; NewCampaign abandons it.
func TestCampaignOfAnotherKindIsRefused(t *testing.T) {
	f := newFixture(t, mix{symGroup: 3}, nil)
	_, err := f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	ctx := context.Background()
	c, err := f.ledger.StartCampaign(ctx, "reprovision", 0, nil)
	must(t, err)
	before := f.sim.Stats().Requests
	r := f.runner(nil)
	r.Options.RetryFailed = true
	_, err = r.Run(ctx, nil)
	var ce *batch.CampaignError
	if !errors.As(err, &ce) || ce.Open.ID != c.ID || ce.Want != "retry-failed" {
		t.Fatalf("run error %v, want a CampaignError naming campaign #%d", err, c.ID)
	}
	if n := f.sim.Stats().Requests - before; n != 0 {
		t.Errorf("%d requests sent, want none", n)
	}
	r = f.runner(nil)
	r.Options.RetryFailed = true
	r.Options.NewCampaign = true
	res, err := r.Run(ctx, nil)
	must(t, err)
	if !res.CampaignStarted || !res.CampaignCompleted {
		t.Errorf("new campaign: %+v started %v completed %v", res.Campaign, res.CampaignStarted, res.CampaignCompleted)
	}
	last, _, err := f.ledger.LastCampaign(ctx)
	must(t, err)
	if last.ID == c.ID || last.Kind != "retry-failed" {
		t.Errorf("last campaign %+v", last)
	}
}

// Broken sequence 3: in a campaign, a PUT that never took effect (here: a
// crash right after the registering mark) is followed by a lookup that
// shows the previous registration. It is the old record, not this
// campaign's answer: the device must be registered.
func TestCampaignLookupOfOldRecordRegisters(t *testing.T) {
	f := newFixture(t, mix{symGroup: 6, x509Group: 4}, nil)
	ctx := context.Background()
	_, err := f.runner(nil).Run(ctx, nil)
	must(t, err)
	old := map[string]ledger.Record{}
	c, err := f.ledger.StartCampaign(ctx, "reprovision", 0, nil)
	must(t, err)
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		if d.Record.ETag == "" || d.Record.Updated == "" {
			t.Fatalf("%s: the final answer's record was not kept: %+v", id, d.Record)
		}
		old[id] = d.Record
		// What a kill between the registering mark and the PUT leaves.
		d.State, d.CampaignID, d.PutAt = ledger.StateRegistering, c.ID, time.Now().Add(-time.Hour)
		must(t, f.ledger.Put(ctx, d))
	}
	r := f.runner(nil)
	r.Options.Reprovision = true
	res, err := r.Run(ctx, nil)
	must(t, err)
	if res.Campaign == nil || res.Campaign.ID != c.ID || !res.CampaignCompleted {
		t.Errorf("campaign %+v completed %v, want #%d continued and completed", res.Campaign, res.CampaignCompleted, c.ID)
	}
	wantRegisters(t, f, 2)
	wantAllAssigned(t, f)
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		if d.Record.Same(old[id]) {
			t.Errorf("%s: ledger still holds the old record %+v", id, d.Record)
		}
	}
}

// Broken sequence 3, second form: the lookup shows the previous record
// while the campaign's own operation runs (its PUT's answer was lost).
func TestCampaignLateEffectWithPreviousRecordVisible(t *testing.T) {
	f := newFixture(t, mix{x509Group: 10}, nil)
	ctx := context.Background()
	_, err := f.runner(nil).Run(ctx, nil)
	must(t, err)
	k := f.sim.Knobs()
	k.AssignmentDelay = dpssim.Duration(2 * time.Second)
	k.LookupWhileAssigning = dpssim.LookupPrevious
	k.Faults = dpssim.Faults{Seed: 3, LateEffectRate: 1, LateEffectFirstPuts: 2, LateAnswerDelay: dpssim.Duration(1500 * time.Millisecond)}
	must(t, f.sim.SetKnobs(k))
	r := f.runner(f.timeoutClient(t, 600*time.Millisecond))
	r.Options.Reprovision = true
	r.Options.MinPollInterval = 200 * time.Millisecond
	r.Options.RequestTimeout = 600 * time.Millisecond
	r.Options.Settle = 300 * time.Millisecond
	res, err := r.Run(ctx, nil)
	must(t, err)
	if !res.CampaignCompleted {
		t.Errorf("campaign not completed: %+v", res.Snapshot)
	}
	wantRegisters(t, f, 2)
	wantAllAssigned(t, f)
}

// Broken sequence 4: a fatal error after the PUT was sent (a TLS record
// error in the middle of the answer) must leave the registering mark, so
// the next run looks up before registering.
func TestFatalAfterPUTKeepsRegistering(t *testing.T) {
	fl := newHostileFleet(t)
	var puts, lookups atomic.Int64
	ts := httptestTLS(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPut:
			puts.Add(1)
			// The request arrived (it may have taken effect); the answer
			// is not TLS at all.
			hj, ok := w.(http.Hijacker)
			if !ok {
				t.Error("no hijacker")
				return
			}
			conn, _, err := hj.Hijack()
			if err != nil {
				return
			}
			// The TLS layer is bypassed: plain bytes where a record belongs.
			if tc, ok := conn.(*tls.Conn); ok {
				_, _ = tc.NetConn().Write([]byte("HTTP/1.1 202 Accepted\r\n\r\n"))
			}
			conn.Close()
		case http.MethodPost:
			lookups.Add(1)
			okAnswers(w, r, "4.x")
		default:
			okAnswers(w, r, "4.x")
		}
	}, nil)
	client, err := dps.NewClient(dps.Config{Endpoint: ts.URL, IDScope: dpssim.DefaultIDScope, RootCAs: tlsPool(ts), Timeout: 2 * time.Second})
	must(t, err)
	defer client.Close()
	led := openFaultLedger(t, filepath.Join(fl.dir, "fleet.ledger"), ts.URL)
	r := &batch.Runner{Client: client, Ledger: led, Options: batch.Options{
		ManifestPath: fl.manifest, Workers: 1, RegisterRate: -1, PollRate: -1, MaxAttempts: 3,
		DeviceTimeout: 10 * time.Second, MinPollInterval: time.Millisecond, RequestTimeout: 2 * time.Second, Settle: time.Millisecond,
	}}
	_, runErr := r.Run(context.Background(), nil)
	if puts.Load() == 0 {
		t.Fatal("no PUT reached the server")
	}
	registering := 0
	for _, id := range []string{"dev-x509", "dev-sas"} {
		d, ok, err := led.Device(context.Background(), id)
		must(t, err)
		if ok && d.State == ledger.StateRegistering {
			registering++
		}
		if ok && d.State != ledger.StateRegistering && d.State != ledger.StatePending && d.State != ledger.StateAssigned {
			t.Errorf("%s: state %s after an answer that was not TLS, want registering (the PUT may have taken effect)", id, d.State)
		}
	}
	t.Logf("run error: %v; %d PUTs, %d lookups", runErr, puts.Load(), lookups.Load())
	if runErr == nil && registering == 0 {
		t.Errorf("neither a fatal stop nor a device left registering")
	}
}

// Broken sequence 5: only DPS's 404 with errorCode 404201 means "nothing
// there". A bare 404 (a proxy, a gateway) decides nothing: the device whose
// PUT took effect but whose answer was lost stays registering; it is never
// registered again.
func TestBare404LookupIsNotAbsence(t *testing.T) {
	f := newFixture(t, mix{symGroup: 5}, func(c *dpssim.Config) {
		c.Faults = dpssim.Faults{Seed: 9, DropResponseRate: 1, LookupBare404Rate: 1}
	})
	r := f.runner(nil)
	r.Options.MaxAttempts = 3
	res, err := r.Run(context.Background(), nil)
	must(t, err)
	if res.Snapshot.Outcomes[batch.OutcomeUnfinished] != 5 {
		t.Errorf("outcomes %v, want 5 unfinished", res.Snapshot.Outcomes)
	}
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(context.Background(), id)
		must(t, err)
		if d.State != ledger.StateRegistering {
			t.Errorf("%s: state %s, want registering", id, d.State)
		}
	}
	wantRegisters(t, f, 1)
	// The proxy is gone: the next run looks up, finds the registration,
	// and registers nothing.
	must(t, f.sim.SetFaults(dpssim.Faults{}))
	res, err = f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	if res.Snapshot.RegisterRequests != 0 {
		t.Errorf("second run sent %d register requests, want 0", res.Snapshot.RegisterRequests)
	}
	wantRegisters(t, f, 1)
	wantAllAssigned(t, f)
}

// Broken sequence 5, second form: a device assigning an operation DPS no
// longer knows (poll 404) and for which the lookup answers 404201 is not
// registered again: DPS accepted a PUT for it. It is recorded failed with
// the remedy.
func TestLostOperationIsNotRegisteredAgain(t *testing.T) {
	f := newFixture(t, mix{symGroup: 3}, nil)
	ctx := context.Background()
	for _, id := range f.ids {
		must(t, f.ledger.Put(ctx, ledger.Device{RegistrationID: id, State: ledger.StateAssigning, OperationID: "4.0000000000000000.gone-" + id}))
	}
	res, err := f.runner(nil).Run(ctx, nil)
	must(t, err)
	if res.Snapshot.RegisterRequests != 0 {
		t.Errorf("%d register requests, want 0", res.Snapshot.RegisterRequests)
	}
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		if d.State != ledger.StateFailed || !strings.Contains(d.ErrorMessage, "no longer knew it") || !strings.Contains(d.Hint, "--retry-failed") {
			t.Errorf("%s: %s %q hint %q; want failed, explained, with the remedy", id, d.State, d.ErrorMessage, d.Hint)
		}
	}
	wantRegisters(t, f, 0)
}

// Broken sequence 6: a 2xx DPS accepted but whose body is unusable is an
// accepted PUT: the device is looked up and ends assigned with one
// registration.
func TestUnusableAcceptedAnswerIsLookedUp(t *testing.T) {
	for _, mode := range []string{dpssim.BadBodyTruncated, dpssim.BadBodyNoOperationID, dpssim.BadBodySyncAssigned} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, mix{symGroup: 4, x509Group: 4}, func(c *dpssim.Config) {
				c.Faults = dpssim.Faults{Seed: 5, RegisterBadBodyRate: 1, RegisterBadBody: mode}
			})
			res, err := f.runner(nil).Run(context.Background(), nil)
			must(t, err)
			if res.Resumable() || res.Failures() > 0 {
				t.Errorf("outcomes %v, want all assigned", res.Snapshot.Outcomes)
			}
			wantRegisters(t, f, 1)
			wantAllAssigned(t, f)
		})
	}
}

// Broken sequence 7: 429s are the fleet's pace: neither billable in the
// ledger nor in the summary, nor spent from --max-attempts.
func TestThrottledPUTsAreNotBillable(t *testing.T) {
	f := newFixture(t, mix{symGroup: 12}, func(c *dpssim.Config) {
		c.Quotas = dpssim.Quotas{RegistrationsPerMinute: 600, RegistrationBurst: 2, PollsPer10sPerDevice: -1}
		one := 1
		c.RetryAfterSeconds = &one
	})
	r := f.runner(nil)
	r.Options.MaxAttempts = 2
	r.Options.MaxRetryAfter = 200 * time.Millisecond
	res, err := r.Run(context.Background(), nil)
	must(t, err)
	st := f.sim.Stats()
	if st.Throttled == 0 {
		t.Fatal("the simulator throttled nothing; the test proves nothing")
	}
	if res.Resumable() {
		t.Errorf("429s spent the --max-attempts budget: %v", res.Snapshot.Outcomes)
	}
	if res.Snapshot.Registers != int(st.Registers) {
		t.Errorf("summary counts %d billable registrations, the server %d", res.Snapshot.Registers, st.Registers)
	}
	c, err := f.ledger.Counts(context.Background())
	must(t, err)
	if c.Attempts != int(st.Registers) {
		t.Errorf("ledger counts %d billable registrations, the server %d (%d throttled)", c.Attempts, st.Registers, st.Throttled)
	}
	wantRegisters(t, f, 1)
}

// Broken sequence 8: text from 2xx bodies is cleaned and capped before it
// reaches the ledger, the logs and the by-hub counts.
func TestServerTextFrom2xxIsCleaned(t *testing.T) {
	fl := newHostileFleet(t)
	long := strings.Repeat("h", 5000)
	ts := httptestTLS(t, func(w http.ResponseWriter, r *http.Request) {
		id := regIDOf(r)
		w.Header().Set("Content-Type", "application/json")
		switch r.Method {
		case http.MethodPut:
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprint(w, `{"operationId":"4.ok","status":"assigning"}`)
		default:
			fmt.Fprintf(w, `{"operationId":"4.ok","status":"assigned","registrationState":{"registrationId":%q,"status":"assigned",`+
				`"assignedHub":"evil\u001b[2J%s.net","deviceId":"dev\nsig=SECRET%s","substatus":"%s","etag":"%s"}}`, id, long, long, long, long)
		}
	}, nil)
	client, err := dps.NewClient(dps.Config{Endpoint: ts.URL, IDScope: dpssim.DefaultIDScope, RootCAs: tlsPool(ts), Timeout: 2 * time.Second})
	must(t, err)
	defer client.Close()
	led := openFaultLedger(t, filepath.Join(fl.dir, "fleet.ledger"), ts.URL)
	r := &batch.Runner{Client: client, Ledger: led, Options: batch.Options{
		ManifestPath: fl.manifest, Workers: 2, RegisterRate: -1, PollRate: -1, MinPollInterval: time.Millisecond,
	}}
	res, err := r.Run(context.Background(), nil)
	must(t, err)
	for hub := range res.ByHub {
		if len(hub) > 260 || strings.ContainsFunc(hub, unicode.IsControl) {
			t.Errorf("by-hub key %q… (%d bytes) is not cleaned", hub[:min(40, len(hub))], len(hub))
		}
	}
	for _, id := range []string{"dev-x509", "dev-sas"} {
		d, _, err := led.Device(context.Background(), id)
		must(t, err)
		for name, v := range map[string]string{"hub": d.AssignedHub, "device id": d.DeviceID, "substatus": d.Substatus, "etag": d.Record.ETag} {
			if len(v) > 300 || strings.ContainsFunc(v, unicode.IsControl) || strings.Contains(v, "SECRET") {
				t.Errorf("%s: %s %q… (%d bytes) is not cleaned and capped", id, name, v[:min(40, len(v))], len(v))
			}
		}
		if d.State != ledger.StateAssigned {
			t.Errorf("%s: state %s", id, d.State)
		}
	}
}

// Broken sequence 9: a drain stops devices that have not sent anything at
// once, even while the fleet waits out a long 429 pause.
func TestDrainDoesNotWaitForThePacer(t *testing.T) {
	f := newFixture(t, mix{symGroup: 30}, func(c *dpssim.Config) {
		c.Quotas = dpssim.Quotas{RegistrationsPerMinute: 1, RegistrationBurst: 1, PollsPer10sPerDevice: -1}
		c.RetryAfterSeconds = new(int)
	})
	r := f.runner(nil)
	r.Options.Workers = 30
	r.Options.MaxRetryAfter = 10 * time.Minute // the 429's pause: far beyond this test's bound
	r.Options.DeviceTimeout = 10 * time.Minute // no device deadline ends the wait either
	drain := make(chan struct{})
	go func() {
		for f.sim.Stats().Throttled == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		close(drain)
	}()
	done := make(chan struct{})
	var res *batch.Result
	var err error
	go func() {
		res, err = r.Run(context.Background(), drain)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // the pause is 60 s: a run that waits it out never gets here in time
		t.Fatal("the run did not stop on drain: devices wait for the pacer's 429 pause before seeing it")
	}
	must(t, err)
	if !res.Resumable() {
		t.Errorf("run not resumable after a drain with work left: %+v", res.Snapshot)
	}
	// Devices that sent nothing are left as they were; nobody waited.
	if n := res.Snapshot.Outcomes[batch.OutcomeUnfinished]; n < 20 {
		t.Errorf("%d unfinished, want most of the 30 devices left for the next run", n)
	}
}

package dpssim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// The tests in this file cover what DPS leaves ambiguous: register PUTs
// that take effect late or answer with an unusable body, what the status
// lookup shows while an operation runs, bare 404s from a proxy, and records
// of devices that registered before the simulator started. Registers (and
// RegisterTimes) must count exactly the registrations that took effect.

// asyncRegister sends a register PUT in the background; the channel gets
// its answer, or status -1 and the error text.
func asyncRegister(d *rawDevice) <-chan rawResp {
	out := make(chan rawResp, 1)
	go func() {
		r, err := d.try(http.MethodPut, d.registerPath(), `{"registrationId":"`+d.id+`"}`, nil)
		if err != nil {
			r = rawResp{status: -1, body: []byte(err.Error())}
		}
		out <- r
	}()
	return out
}

func regInfo(t *testing.T, sim *Server, id string) RegistrationInfo {
	t.Helper()
	ri, ok := sim.Registration(id)
	if !ok {
		t.Fatalf("no registration %q", id)
	}
	return ri
}

// requestsSeen is how many authenticated register PUTs id has sent.
func requestsSeen(sim *Server, id string) int {
	ri, _ := sim.Registration(id)
	return ri.RegisterRequests
}

// wantDPS404 checks a 404 + 404201 DPS answer, with its headers.
func wantDPS404(t *testing.T, what string, r rawResp) {
	t.Helper()
	if r.status != http.StatusNotFound || r.header.Get(dps.HeaderErrorCode) != "404201" {
		t.Fatalf("%s = %d (x-ms-error-code %q) %s, want 404 with 404201", what, r.status, r.header.Get(dps.HeaderErrorCode), r.body)
	}
	if e := r.errBody(t); e.ErrorCode != dps.CodeNotFound || e.TrackingID == "" || e.TrackingID != r.header.Get(dps.HeaderRequestID) {
		t.Errorf("%s body = %s, want errorCode 404201 and trackingId = x-ms-request-id", what, r.body)
	}
}

func TestSimConflictWhileAssigning(t *testing.T) {
	sim := mustNew(t, symConfig())
	if err := sim.SetAssignmentDelay(time.Minute); err != nil {
		t.Fatal(err)
	}
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "conflict-1")
	if r := dev.register(""); r.status != http.StatusAccepted {
		t.Fatalf("first register = %d %s, want 202", r.status, r.body)
	}
	r := dev.register("")
	if r.status != http.StatusConflict {
		t.Fatalf("register while the operation runs = %d %s, want 409", r.status, r.body)
	}
	if got := r.header.Get(dps.HeaderErrorCode); got != "409203" {
		t.Errorf("x-ms-error-code = %q, want 409203", got)
	}
	if e := r.errBody(t); e.ErrorCode != dps.CodePreconditionFailed || e.TrackingID != r.header.Get(dps.HeaderRequestID) {
		t.Errorf("409 body = %s, want errorCode 409203 and trackingId = x-ms-request-id", r.body)
	}
	ri := regInfo(t, sim, "conflict-1")
	if ri.Registers != 1 || ri.RegisterRequests != 2 || len(ri.RegisterTimes) != 1 {
		t.Errorf("registration = %+v, want 1 register of 2 requests", ri)
	}
	if st := sim.Stats(); st.Registers != 1 || st.Conflicts != 1 || st.ByStatus[409] != 1 {
		t.Errorf("stats = %+v, want 1 register and 1 conflict", st)
	}
}

func TestSimRegisterTimes(t *testing.T) {
	clk := newFakeClock()
	sim := mustNew(t, symConfig())
	sim.Now = clk.Now
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "times-1")
	t0 := clk.Now()
	dev.registerAndWait()
	clk.Advance(30 * time.Minute) // within the SAS tokens' hour
	dev.registerAndWait()
	ri := regInfo(t, sim, "times-1")
	if len(ri.RegisterTimes) != 2 || !ri.RegisterTimes[0].Equal(t0) || !ri.RegisterTimes[1].Equal(t0.Add(30*time.Minute)) {
		t.Errorf("RegisterTimes = %v, want [%v %v]", ri.RegisterTimes, t0, t0.Add(30*time.Minute))
	}
	status, body := admin(t, run, "GET", "/_sim/registrations/times-1", "")
	var got RegistrationInfo
	if status != 200 || json.Unmarshal(body, &got) != nil || len(got.RegisterTimes) != 2 || got.Registers != 2 {
		t.Errorf("/_sim/registrations/times-1 = %d %s, want registers 2 with 2 registerTimes", status, body)
	}
	if status, body := admin(t, run, "GET", "/_sim/", ""); !strings.Contains(string(body), "registerTimes") || status != 200 {
		t.Errorf("/_sim/ index does not document registerTimes:\n%s", body)
	}
}

func TestSimLateEffect(t *testing.T) {
	late := func(effect, answer time.Duration) Faults {
		return Faults{LateEffectRate: 1, LateEffectDelay: Duration(effect), LateAnswerDelay: Duration(answer)}
	}

	t.Run("client still there gets the normal answer", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: late(500*time.Millisecond, 200*time.Millisecond)})
		run := mustStart(t, sim)
		dev := groupDevice(t, run, "late-1")
		start := time.Now()
		answer := asyncRegister(dev)
		waitFor(t, func() bool { return requestsSeen(sim, "late-1") == 1 })
		// Before the effect: no registration, and the lookup says so.
		if ri := regInfo(t, sim, "late-1"); ri.Registers != 0 || ri.Status != "" {
			t.Fatalf("before the effect: %+v, want nothing registered", ri)
		}
		wantDPS404(t, "lookup before the late effect", dev.lookup())
		r := <-answer
		took := time.Since(start)
		if r.status != http.StatusAccepted {
			t.Fatalf("late register = %d %s, want 202", r.status, r.body)
		}
		if took < 700*time.Millisecond {
			t.Errorf("answer came after %s, want at least effect + answer delay (700ms)", took)
		}
		ri := regInfo(t, sim, "late-1")
		if ri.Registers != 1 || ri.LateEffects != 1 || len(ri.RegisterTimes) != 1 {
			t.Fatalf("after: %+v, want 1 register, 1 late effect", ri)
		}
		if at := ri.RegisterTimes[0].Sub(start); at < 500*time.Millisecond || at > took-200*time.Millisecond+50*time.Millisecond {
			t.Errorf("took effect %s after sending, want about 500ms (the answer came at %s)", at, took)
		}
		if p := dev.poll(r.op(t).OperationID); p.status != http.StatusOK || p.op(t).Status != dps.StatusAssigned {
			t.Errorf("poll = %d %s, want 200 assigned", p.status, p.body)
		}
		if st := sim.Stats(); st.LateEffects != 1 || st.Registers != 1 {
			t.Errorf("stats = %+v, want 1 late effect and 1 register", st)
		}
	})

	t.Run("client gone: the effect still happens", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{LateEffectRate: 1, LateEffectFirstPuts: 1,
			LateEffectDelay: Duration(400 * time.Millisecond)}})
		run := mustStart(t, sim)
		impatient := groupDevice(t, run, "late-2")
		impatient.client.Timeout = 100 * time.Millisecond
		if r := <-asyncRegister(impatient); r.status != -1 {
			t.Fatalf("register with a 100ms client timeout = %d %s, want a timeout", r.status, r.body)
		}
		if ri := regInfo(t, sim, "late-2"); ri.Registers != 0 {
			t.Fatalf("registered before the effect delay: %+v", ri)
		}
		waitFor(t, func() bool { ri, _ := sim.Registration("late-2"); return ri.Registers == 1 })
		if ri := regInfo(t, sim, "late-2"); ri.Status != dps.StatusAssigned || ri.LateEffects != 1 {
			t.Errorf("after the effect: %+v, want assigned by the late effect", ri)
		}
		// A client that registers again pays twice: the oracle shows it.
		// Only the first PUT may be late (lateEffectFirstPuts 1).
		dev := groupDevice(t, run, "late-2")
		start := time.Now()
		if r := dev.register(""); r.status != http.StatusAccepted || time.Since(start) > 300*time.Millisecond {
			t.Fatalf("second register = %d after %s, want 202 at once", r.status, time.Since(start))
		}
		if ri := regInfo(t, sim, "late-2"); ri.Registers != 2 || ri.LateEffects != 1 || len(ri.RegisterTimes) != 2 {
			t.Errorf("after a second PUT: %+v, want 2 registers, 1 of them late", ri)
		}
	})

	t.Run("a late PUT meets a running operation: 409203", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, AssignmentDelay: Duration(time.Minute),
			Faults: Faults{LateEffectRate: 1, LateEffectFirstPuts: 1, LateEffectDelay: Duration(400 * time.Millisecond)}})
		run := mustStart(t, sim)
		dev := groupDevice(t, run, "late-3")
		first := asyncRegister(dev)
		waitFor(t, func() bool { return requestsSeen(sim, "late-3") == 1 })
		if r := dev.register(""); r.status != http.StatusAccepted {
			t.Fatalf("second (on time) register = %d %s, want 202", r.status, r.body)
		}
		r := <-first
		if r.status != http.StatusConflict || r.header.Get(dps.HeaderErrorCode) != "409203" || r.errBody(t).ErrorCode != dps.CodePreconditionFailed {
			t.Fatalf("late register at its effect time = %d %s, want 409 + 409203", r.status, r.body)
		}
		if ri := regInfo(t, sim, "late-3"); ri.Registers != 1 || ri.LateEffects != 1 {
			t.Errorf("registration = %+v, want 1 register (the late PUT was refused)", ri)
		}
		if st := sim.Stats(); st.Conflicts != 1 || st.LateEffects != 1 {
			t.Errorf("stats = %+v, want 1 conflict and 1 late effect", st)
		}
	})

	t.Run("a late PUT meets the registration quota: 429", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Quotas: Quotas{RegistrationsPerMinute: 1},
			Faults: late(400*time.Millisecond, 0)})
		run := mustStart(t, sim)
		lateDev := groupDevice(t, run, "late-4")
		answer := asyncRegister(lateDev)
		waitFor(t, func() bool { return requestsSeen(sim, "late-4") == 1 })
		if err := sim.SetFaults(Faults{}); err != nil {
			t.Fatal(err)
		}
		if r := groupDevice(t, run, "quick-4").register(""); r.status != http.StatusAccepted {
			t.Fatalf("on-time register = %d, want 202 (it takes the only token)", r.status)
		}
		if r := <-answer; r.status != http.StatusTooManyRequests || r.errBody(t).ErrorCode != dps.CodeThrottled {
			t.Fatalf("late register = %d %s, want 429 at its effect time", r.status, r.body)
		}
		if ri := regInfo(t, sim, "late-4"); ri.Registers != 0 || ri.LateEffects != 1 {
			t.Errorf("registration = %+v, want no register", ri)
		}
	})

	t.Run("first N PUTs only, and deterministic for a seed", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{LateEffectRate: 1, LateEffectFirstPuts: 2}})
		run := mustStart(t, sim)
		dev := groupDevice(t, run, "late-5")
		for range 4 {
			dev.registerAndWait()
		}
		if ri := regInfo(t, sim, "late-5"); ri.LateEffects != 2 || ri.Registers != 4 {
			t.Errorf("4 PUTs with lateEffectFirstPuts 2: %+v, want 2 late effects and 4 registers", ri)
		}

		lateSet := func(concurrent bool) string {
			sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{Seed: 5, LateEffectRate: 0.5}})
			var ids []string
			for i := range 30 {
				ids = append(ids, fmt.Sprintf("ld-%02d", i))
			}
			faultTrace(t, mustStart(t, sim), ids, concurrent)
			var late []string
			for _, ri := range sim.Registrations() {
				if ri.Registers != 1 {
					t.Errorf("%s: %d registers, want 1", ri.RegistrationID, ri.Registers)
				}
				if ri.LateEffects > 0 {
					late = append(late, ri.RegistrationID)
				}
			}
			if len(late) == 0 || len(late) == len(ids) {
				t.Errorf("late devices at rate 0.5: %v, want some but not all", late)
			}
			return strings.Join(late, ",")
		}
		if a, b := lateSet(false), lateSet(true); a != b {
			t.Errorf("late devices differ with the same seed:\n%s\n%s", a, b)
		}
	})

	t.Run("Close does not wait for pending late effects", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: late(time.Hour, 0)})
		run, err := StartTLS(sim, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		answer := asyncRegister(groupDevice(t, run, "late-6"))
		waitFor(t, func() bool { return requestsSeen(sim, "late-6") == 1 })
		start := time.Now()
		if err := run.Close(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Close took %s with a late effect pending", took)
		}
		if r := <-answer; r.status != -1 {
			t.Errorf("client of a closed server got %d %s, want a connection error", r.status, r.body)
		}
		if ri := regInfo(t, sim, "late-6"); ri.Registers != 0 {
			t.Errorf("effect happened after Close: %+v", ri)
		}
	})

	t.Run("Shutdown lets due effects happen and does not wait for the rest", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: late(time.Hour, 0)})
		run, err := StartTLS(sim, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer run.Close()
		gone := groupDevice(t, run, "late-7")
		gone.client.Timeout = 100 * time.Millisecond
		if r := <-asyncRegister(gone); r.status != -1 {
			t.Fatalf("register with a 100ms client timeout = %d, want a timeout", r.status)
		}
		if err := sim.SetFaults(late(300*time.Millisecond, 0)); err != nil {
			t.Fatal(err)
		}
		waiting := groupDevice(t, run, "late-8")
		answer := asyncRegister(waiting)
		waitFor(t, func() bool { return requestsSeen(sim, "late-8") == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := run.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("Shutdown took %s", took)
		}
		if r := <-answer; r.status != http.StatusAccepted {
			t.Errorf("late register in flight during Shutdown = %d %s, want 202", r.status, r.body)
		}
		if a, b := regInfo(t, sim, "late-7"), regInfo(t, sim, "late-8"); a.Registers != 0 || b.Registers != 1 {
			t.Errorf("registers = %d (client gone, effect due in an hour) and %d (in flight), want 0 and 1", a.Registers, b.Registers)
		}
	})
}

func TestSimLookupWhileAssigning(t *testing.T) {
	for _, mode := range []string{"", LookupAssigning, LookupNotFound, LookupPrevious} {
		name := mode
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			clk := newFakeClock()
			sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, AssignmentDelay: Duration(2 * time.Second), LookupWhileAssigning: mode})
			sim.Now = clk.Now
			run := mustStart(t, sim)
			want := mode
			if want == "" {
				want = LookupAssigning
			}
			if got := sim.Knobs().LookupWhileAssigning; got != want {
				t.Errorf("Knobs().LookupWhileAssigning = %q, want %q", got, want)
			}
			dev := groupDevice(t, run, "look-1")

			// First operation running: there is no earlier record.
			dev.register("")
			lk := dev.lookup()
			switch mode {
			case "", LookupAssigning:
				if lk.status != http.StatusOK || !jsonHas(lk.body, "status", "assigning") {
					t.Errorf("lookup during the first operation = %d %s, want 200 assigning", lk.status, lk.body)
				}
			default:
				wantDPS404(t, "lookup during the first operation", lk)
			}

			clk.Advance(2 * time.Second)
			done := dev.lookup()
			if done.status != http.StatusOK || !jsonHas(done.body, "status", "assigned") {
				t.Fatalf("lookup once assigned = %d %s, want 200 assigned", done.status, done.body)
			}
			var first dps.DeviceRegistrationResult
			if err := json.Unmarshal(done.body, &first); err != nil {
				t.Fatal(err)
			}

			// Second operation running: the first record exists.
			clk.Advance(time.Minute)
			if r := dev.register(""); r.status != http.StatusAccepted {
				t.Fatalf("second register = %d", r.status)
			}
			lk = dev.lookup()
			switch mode {
			case "", LookupAssigning:
				if lk.status != http.StatusOK || !jsonHas(lk.body, "status", "assigning") || jsonHas(lk.body, "etag", first.ETag) {
					t.Errorf("lookup during the second operation = %d %s, want 200 assigning with a new etag", lk.status, lk.body)
				}
			case LookupNotFound:
				wantDPS404(t, "lookup during the second operation", lk)
			case LookupPrevious:
				if lk.status != http.StatusOK || string(lk.body) != string(done.body) {
					t.Errorf("lookup during the second operation = %d %s, want the completed record unchanged: %s", lk.status, lk.body, done.body)
				}
			}

			clk.Advance(2 * time.Second)
			lk = dev.lookup()
			var second dps.DeviceRegistrationResult
			if lk.status != http.StatusOK || json.Unmarshal(lk.body, &second) != nil || second.Status != dps.StatusAssigned {
				t.Fatalf("lookup after the second operation = %d %s, want 200 assigned", lk.status, lk.body)
			}
			if second.ETag == first.ETag || second.LastUpdatedDateTimeUTC == first.LastUpdatedDateTimeUTC || second.CreatedDateTimeUTC != first.CreatedDateTimeUTC {
				t.Errorf("second record %+v, first %+v: want a new etag and update time, the same created time", second, first)
			}
			if ri := regInfo(t, sim, "look-1"); ri.Registers != 2 || ri.Lookups != 4 {
				t.Errorf("registration = %+v, want 2 registers and 4 lookups", ri)
			}
		})
	}

	t.Run("set at run time", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, AssignmentDelay: Duration(time.Minute)})
		run := mustStart(t, sim)
		dev := groupDevice(t, run, "look-2")
		dev.register("")
		if status, body := admin(t, run, "PUT", "/_sim/knobs", `{"lookupWhileAssigning":"notFound"}`); status != 200 || !strings.Contains(string(body), `"lookupWhileAssigning": "notFound"`) {
			t.Fatalf("PUT /_sim/knobs = %d %s", status, body)
		}
		wantDPS404(t, "lookup with notFound set at run time", dev.lookup())
		if err := sim.SetKnobs(Knobs{RetryAfterSeconds: 3, AssignmentDelay: Duration(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if lk := dev.lookup(); lk.status != http.StatusOK || !jsonHas(lk.body, "status", "assigning") {
			t.Errorf("lookup with the knob back to \"\" = %d %s, want 200 assigning", lk.status, lk.body)
		}
	})
}

func TestSimExistingRegistrations(t *testing.T) {
	hubs := []string{"h1.azure-devices.net", "h2.azure-devices.net"}
	yesterday := time.Date(2026, 3, 1, 10, 0, 0, 123456700, time.UTC)
	before := time.Now()
	cfg := Config{IDScope: testScope, Hubs: hubs, Allocation: AllocationStatic, Groups: symConfig().Groups,
		Registrations: []ExistingRegistration{
			{RegistrationID: "old-1", Status: "assigned", AssignedHub: hubs[1], DeviceID: "boiler-1",
				CreatedDateTimeUTC: yesterday, LastUpdatedDateTimeUTC: yesterday.Add(time.Hour), ETag: "IjEyMyI=", Enrollment: "group:sas-group"},
			{RegistrationID: "old-2", Status: "failed", ErrorCode: 400208, ErrorMessage: "no hub"},
			{RegistrationID: "old-3", Status: "disabled"},
			{RegistrationID: "old-4", Status: "assigned", AssignedHub: hubs[0]},
		}}
	sim := mustNew(t, cfg)
	after := time.Now()
	run := mustStart(t, sim)

	if st := sim.Stats(); st.Registers != 0 || st.Registrations != 4 || st.Assigned != 2 {
		t.Errorf("stats = %+v, want 0 registers, 4 registrations, 2 assigned", st)
	}
	ri := regInfo(t, sim, "OLD-1")
	if !ri.FromConfig || ri.Registers != 0 || ri.Status != dps.StatusAssigned || ri.AssignedHub != hubs[1] || ri.DeviceID != "boiler-1" ||
		ri.Substatus != dps.SubstatusInitialAssignment || ri.Enrollment != "group:sas-group" || !ri.CreatedUTC.Equal(yesterday) {
		t.Errorf("old-1 = %+v, want the configured record, not counted in registers", ri)
	}
	status, body := admin(t, run, "GET", "/_sim/registrations", "")
	if status != 200 || strings.Count(string(body), `"fromConfig": true`) != 4 {
		t.Errorf("/_sim/registrations = %d %s, want the 4 records from the config", status, body)
	}

	// The lookup shows them as DPS shows a device registered yesterday.
	dev := groupDevice(t, run, "old-1")
	lk := dev.lookup()
	want := `{"registrationId":"old-1","createdDateTimeUtc":"2026-03-01T10:00:00.1234567Z","assignedHub":"h2.azure-devices.net",
		"deviceId":"boiler-1","status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2026-03-01T11:00:00.1234567Z","etag":"IjEyMyI="}`
	if lk.status != http.StatusOK || !jsonEqual(t, lk.body, want) {
		t.Errorf("lookup old-1 = %d %s, want %s", lk.status, lk.body, want)
	}
	for _, tt := range []struct {
		id     string
		status dps.Status
		code   int
	}{{"old-2", dps.StatusFailed, 400208}, {"old-3", dps.StatusDisabled, codeEnrollmentDisabled}} {
		lk := groupDevice(t, run, tt.id).lookup()
		var rs dps.DeviceRegistrationResult
		if lk.status != http.StatusOK || json.Unmarshal(lk.body, &rs) != nil || rs.Status != tt.status || rs.ErrorCode != tt.code || rs.ErrorMessage == "" || rs.AssignedHub != "" {
			t.Errorf("lookup %s = %d %s, want 200 %s with errorCode %d and a message", tt.id, lk.status, lk.body, tt.status, tt.code)
		}
	}
	var old4 dps.DeviceRegistrationResult
	if lk := groupDevice(t, run, "old-4").lookup(); json.Unmarshal(lk.body, &old4) != nil || old4.DeviceID != "old-4" || old4.ETag == "" ||
		old4.Substatus != dps.SubstatusInitialAssignment || old4.CreatedDateTimeUTC == "" || old4.CreatedDateTimeUTC != old4.LastUpdatedDateTimeUTC {
		t.Errorf("old-4 with defaults = %s, want deviceId old-4, an etag, initialAssignment, created = updated", lk.body)
	}
	if c := regInfo(t, sim, "old-4").CreatedUTC; c.Before(before) || c.After(after) {
		t.Errorf("old-4 created %v, want the server's creation time (between %v and %v)", c, before, after)
	}

	// Registering again works normally: static allocation moves old-1
	// from h2 to h1, keeping its creation time.
	rs := dev.registerAndWait().op(t).RegistrationState
	if rs.AssignedHub != hubs[0] || rs.Substatus != dps.SubstatusDeviceDataMigrated || rs.CreatedDateTimeUTC != "2026-03-01T10:00:00.1234567Z" ||
		rs.ETag == "IjEyMyI=" || rs.LastUpdatedDateTimeUTC == "2026-03-01T11:00:00.1234567Z" || rs.DeviceID != "old-1" {
		t.Errorf("re-registration of old-1 = %+v, want h1, deviceDataMigrated, the old created time, a new etag and update time", rs)
	}
	if rs := groupDevice(t, run, "old-4").registerAndWait().op(t).RegistrationState; rs.Substatus != dps.SubstatusReprovisionedToInitialAssignment {
		t.Errorf("re-registration of old-4 on its hub: substatus %q, want %q", rs.Substatus, dps.SubstatusReprovisionedToInitialAssignment)
	}
	if ri := regInfo(t, sim, "old-1"); ri.Registers != 1 || len(ri.RegisterTimes) != 1 || !ri.FromConfig {
		t.Errorf("old-1 after registering = %+v, want 1 register", ri)
	}
	if st := sim.Stats(); st.Registers != 2 {
		t.Errorf("stats registers = %d, want 2", st.Registers)
	}

	t.Run("previous lookup shows the configured record", func(t *testing.T) {
		cfg := cfg
		cfg.AssignmentDelay = Duration(time.Minute)
		cfg.LookupWhileAssigning = LookupPrevious
		sim := mustNew(t, cfg)
		dev := groupDevice(t, mustStart(t, sim), "old-1")
		dev.register("")
		if lk := dev.lookup(); lk.status != http.StatusOK || !jsonEqual(t, lk.body, want) {
			t.Errorf("lookup while re-registering = %d %s, want the configured record %s", lk.status, lk.body, want)
		}
	})

	t.Run("evenlyWeighted counts them", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Hubs: hubs, Allocation: AllocationEvenlyWeighted, Groups: symConfig().Groups,
			Registrations: []ExistingRegistration{
				{RegistrationID: "p-1", Status: "assigned", AssignedHub: hubs[0]},
				{RegistrationID: "p-2", Status: "assigned", AssignedHub: hubs[0]},
			}})
		run := mustStart(t, sim)
		var got []string
		for _, id := range []string{"n-1", "n-2", "n-3"} {
			got = append(got, groupDevice(t, run, id).registerAndWait().op(t).RegistrationState.AssignedHub)
		}
		if want := []string{hubs[1], hubs[1], hubs[0]}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("hubs of new devices = %v, want %v (h1 already holds 2)", got, want)
		}
	})
}

func TestSimExistingRegistrationErrors(t *testing.T) {
	key := b64(keyA)
	tests := []struct {
		name    string
		regs    string
		wantErr []string
	}{
		{"bad status", `{"registrationId": "d", "status": "assigning"}`, []string{"registrations[0] (d)", `status "assigning"`, `"assigned", "failed" or "disabled"`}},
		{"no hub", `{"registrationId": "d", "status": "assigned"}`, []string{"registrations[0] (d)", "assignedHub is required", "h1.azure-devices.net"}},
		{"unlinked hub", `{"registrationId": "d", "status": "assigned", "assignedHub": "x.azure-devices.net"}`, []string{"registrations[0] (d)", `"x.azure-devices.net" is not one of the linked hubs`}},
		{"bad id", `{"registrationId": "d 1", "status": "failed"}`, []string{"registrations[0] (d 1)", "registrationId", "allowed: letters"}},
		{"duplicate id", `{"registrationId": "D", "status": "failed"}, {"registrationId": "d", "status": "disabled"}`, []string{"registrations[1] (d)", "twice"}},
		{"bad substatus", `{"registrationId": "d", "status": "assigned", "assignedHub": "h1.azure-devices.net", "substatus": "moved"}`,
			[]string{"substatus \"moved\"", "initialAssignment", "deviceDataMigrated", "deviceDataReset", "reprovisionedToInitialAssignment"}},
		{"hub on failed", `{"registrationId": "d", "status": "failed", "assignedHub": "h1.azure-devices.net"}`, []string{"registrations[0] (d)", "assignedHub, deviceId and substatus are for status \"assigned\""}},
		{"error on assigned", `{"registrationId": "d", "status": "assigned", "assignedHub": "h1.azure-devices.net", "errorCode": 400207}`, []string{"errorCode and errorMessage are for status"}},
		{"short error code", `{"registrationId": "d", "status": "failed", "errorCode": 404}`, []string{"errorCode 404", "6-digit"}},
		{"updated before created", `{"registrationId": "d", "status": "failed", "createdDateTimeUtc": "2026-03-02T00:00:00Z", "lastUpdatedDateTimeUtc": "2026-03-01T00:00:00Z"}`,
			[]string{"registrations[0] (d)", "before createdDateTimeUtc"}},
		{"bad time", `{"registrationId": "d", "status": "failed", "createdDateTimeUtc": "yesterday"}`, []string{"sim.json", "yesterday"}},
		{"bad enrollment", `{"registrationId": "d", "status": "failed", "enrollment": "fleet"}`, []string{`enrollment "fleet"`, "individual:<registrationId>", "group:<enrollmentGroupId>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sim.json")
			writeFile(t, path, `{"hubs": ["h1.azure-devices.net"], "individualEnrollments": [{"registrationId": "d", "attestation": {"symmetricKey": {"primaryKey": "`+key+`"}}}],
				"registrations": [`+tt.regs+`]}`)
			_, err := LoadConfig(path)
			if err == nil {
				t.Fatalf("LoadConfig succeeded, want an error mentioning %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// A valid file: times as DPS writes them, the individual enrollment
	// inferred.
	path := filepath.Join(t.TempDir(), "sim.json")
	writeFile(t, path, `{"hubs": ["h1.azure-devices.net"], "individualEnrollments": [{"registrationId": "d", "attestation": {"symmetricKey": {"primaryKey": "`+key+`"}}}],
		"registrations": [{"registrationId": "d", "status": "assigned", "assignedHub": "h1.azure-devices.net", "lastUpdatedDateTimeUtc": "2026-03-01T10:00:00.1234567Z"}]}`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	ri := regInfo(t, mustNew(t, *cfg), "d")
	if ri.Enrollment != "individual:d" || formatTime(ri.UpdatedUTC) != "2026-03-01T10:00:00.1234567Z" || !ri.CreatedUTC.Equal(ri.UpdatedUTC) {
		t.Errorf("loaded record = %+v, want enrollment individual:d, the given update time and created = updated (not after it)", ri)
	}
}

func TestSimLookupBare404(t *testing.T) {
	sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{LookupBare404Rate: 1}})
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "bare-1")
	dev.registerAndWait()
	lk := dev.lookup()
	if lk.status != http.StatusNotFound || !strings.HasPrefix(lk.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("lookup = %d (%s) %s, want a text/plain 404", lk.status, lk.header.Get("Content-Type"), lk.body)
	}
	for _, h := range []string{dps.HeaderErrorCode, dps.HeaderRequestID} {
		if v := lk.header.Get(h); v != "" {
			t.Errorf("bare 404 has %s: %q, want none (not a DPS answer)", h, v)
		}
	}
	var v map[string]any
	if json.Unmarshal(lk.body, &v) == nil {
		t.Errorf("bare 404 body %q parses as JSON, want plain text", lk.body)
	}
	if st := sim.Stats(); st.Faults != 1 || st.ByStatus[404] != 1 || st.Registers != 1 {
		t.Errorf("stats = %+v, want 1 fault, one 404", st)
	}

	// Deterministic for a seed: the same lookups of the same device get
	// the same answers.
	pattern := func() string {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{Seed: 11, LookupBare404Rate: 0.5}})
		dev := groupDevice(t, mustStart(t, sim), "bare-2")
		dev.registerAndWait()
		var out []string
		for range 16 {
			lk := dev.lookup()
			switch {
			case lk.status == http.StatusOK:
				out = append(out, "ok")
			case lk.status == http.StatusNotFound && lk.header.Get(dps.HeaderErrorCode) == "":
				out = append(out, "bare")
			default:
				t.Fatalf("lookup = %d %s, want 200 or a bare 404", lk.status, lk.body)
			}
		}
		return strings.Join(out, " ")
	}
	a, b := pattern(), pattern()
	if a != b || !strings.Contains(a, "ok") || !strings.Contains(a, "bare") {
		t.Errorf("lookup answers at rate 0.5: %q then %q, want the same mix of ok and bare twice", a, b)
	}
}

func TestSimRegisterBadBody(t *testing.T) {
	setup := func(t *testing.T, mode string) (*Server, *rawDevice) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, AssignmentDelay: Duration(time.Minute),
			Faults: Faults{RegisterBadBodyRate: 1, RegisterBadBody: mode}})
		return sim, groupDevice(t, mustStart(t, sim), "bad-1")
	}
	registered := func(t *testing.T, sim *Server, wantStatus dps.Status) {
		t.Helper()
		ri := regInfo(t, sim, "bad-1")
		if ri.Registers != 1 || len(ri.RegisterTimes) != 1 || ri.Status != wantStatus {
			t.Errorf("registration = %+v, want it registered once (%s) whatever the client saw", ri, wantStatus)
		}
		if st := sim.Stats(); st.Faults != 1 || st.Registers != 1 {
			t.Errorf("stats = %+v, want 1 fault and 1 register", st)
		}
	}

	for _, mode := range []string{BadBodyTruncated, ""} {
		t.Run("truncated "+mode, func(t *testing.T) {
			sim, dev := setup(t, mode)
			req, _ := http.NewRequest(http.MethodPut, dev.base+dev.registerPath(), strings.NewReader(`{"registrationId":"bad-1"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", dps.SASToken(dev.key, testScope, "bad-1", time.Now().Add(time.Hour)))
			resp, err := dev.client.Do(req)
			if err != nil {
				t.Fatalf("register: %v (want the headers, then a short body)", err)
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			var op dps.RegistrationOperationStatus
			if resp.StatusCode != http.StatusAccepted || rerr == nil || json.Unmarshal(body, &op) == nil {
				t.Errorf("register = %d, body %q (read error %v), want 202 with a short, unparseable body", resp.StatusCode, body, rerr)
			}
			registered(t, sim, dps.StatusAssigning)
			if lk := dev.lookup(); lk.status != http.StatusOK || !jsonHas(lk.body, "status", "assigning") {
				t.Errorf("lookup = %d %s, want the registration visible", lk.status, lk.body)
			}
		})
	}

	t.Run("noOperationId", func(t *testing.T) {
		sim, dev := setup(t, BadBodyNoOperationID)
		r := dev.register("")
		var m map[string]any
		if r.status != http.StatusAccepted || json.Unmarshal(r.body, &m) != nil || m["status"] != "assigning" || m["operationId"] != nil {
			t.Errorf("register = %d %s, want 202 assigning without operationId", r.status, r.body)
		}
		if r.header.Get("Retry-After") == "" || r.header.Get(dps.HeaderRequestID) == "" {
			t.Errorf("headers %v, want DPS's Retry-After and x-ms-request-id", r.header)
		}
		registered(t, sim, dps.StatusAssigning)
	})

	t.Run("syncAssigned", func(t *testing.T) {
		sim, dev := setup(t, BadBodySyncAssigned)
		r := dev.register("")
		var m map[string]json.RawMessage
		if r.status != http.StatusOK || json.Unmarshal(r.body, &m) != nil || m["operationId"] != nil {
			t.Fatalf("register = %d %s, want 200 without operationId", r.status, r.body)
		}
		op := r.op(t)
		rs := op.RegistrationState
		if op.Status != dps.StatusAssigned || rs == nil || rs.RegistrationID != "bad-1" || rs.AssignedHub == "" || rs.DeviceID == "" || rs.ETag == "" || rs.Substatus == "" {
			t.Errorf("register body %s, want status assigned with a full registrationState", r.body)
		}
		// Completed at once, although the assignment delay is a minute.
		registered(t, sim, dps.StatusAssigned)
		if lk := dev.lookup(); lk.status != http.StatusOK || !jsonEqual(t, lk.body, string(m["registrationState"])) {
			t.Errorf("lookup = %d %s, want the same record as the 200", lk.status, lk.body)
		}
	})

	t.Run("refused PUTs get no bad body", func(t *testing.T) {
		sim, dev := setup(t, BadBodyNoOperationID)
		if err := sim.SetKnobs(Knobs{RetryAfterSeconds: 3, AssignmentDelay: Duration(time.Minute), Faults: Faults{RegisterBadBodyRate: 1, RegisterBadBody: BadBodyNoOperationID}}); err != nil {
			t.Fatal(err)
		}
		dev.register("")
		if r := dev.register(""); r.status != http.StatusConflict || r.errBody(t).ErrorCode != dps.CodePreconditionFailed {
			t.Errorf("second register = %d %s, want the normal 409203", r.status, r.body)
		}
	})
}

func TestSimKnobValidation(t *testing.T) {
	sim := mustNew(t, symConfig())
	tests := []struct {
		name    string
		k       Knobs
		wantErr []string
	}{
		{"late rate", Knobs{Faults: Faults{LateEffectRate: 1.5}}, []string{"faults.lateEffectRate", "from 0 to 1"}},
		{"bare 404 rate", Knobs{Faults: Faults{LookupBare404Rate: -0.1}}, []string{"faults.lookupBare404Rate", "from 0 to 1"}},
		{"bad body rate", Knobs{Faults: Faults{RegisterBadBodyRate: 2}}, []string{"faults.registerBadBodyRate", "from 0 to 1"}},
		{"first puts", Knobs{Faults: Faults{LateEffectFirstPuts: -1}}, []string{"faults.lateEffectFirstPuts", "0 (no limit)"}},
		{"effect delay", Knobs{Faults: Faults{LateEffectDelay: Duration(-time.Second)}}, []string{"faults.lateEffectDelay", "negative"}},
		{"answer delay", Knobs{Faults: Faults{LateAnswerDelay: Duration(-time.Second)}}, []string{"faults.lateAnswerDelay", "negative"}},
		{"bad body mode", Knobs{Faults: Faults{RegisterBadBody: "half"}}, []string{"faults.registerBadBody", `"half"`, `"truncated"`, `"noOperationId"`, `"syncAssigned"`}},
		{"lookup mode", Knobs{LookupWhileAssigning: "maybe"}, []string{"lookupWhileAssigning", `"maybe"`, `"assigning"`, `"notFound"`, `"previous"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := sim.SetKnobs(tt.k)
			if err == nil {
				t.Fatalf("SetKnobs(%+v) succeeded", tt.k)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	run := mustStart(t, sim)
	if status, body := admin(t, run, "GET", "/_sim/knobs", ""); status != 200 || !strings.Contains(string(body), `"lookupWhileAssigning": "assigning"`) ||
		!strings.Contains(string(body), `"lateEffectRate": 0`) || !strings.Contains(string(body), `"registerBadBody": ""`) {
		t.Errorf("GET /_sim/knobs = %d %s, want the new knobs at their defaults", status, body)
	}
	put := `{"lookupWhileAssigning":"previous","faults":{"lateEffectRate":0.5,"lateEffectFirstPuts":2,"lateEffectDelay":"2s","lateAnswerDelay":"1s",
		"lookupBare404Rate":0.1,"registerBadBodyRate":0.2,"registerBadBody":"syncAssigned"}}`
	status, body := admin(t, run, "PUT", "/_sim/knobs", put)
	if status != 200 {
		t.Fatalf("PUT /_sim/knobs = %d %s", status, body)
	}
	want := Faults{LateEffectRate: 0.5, LateEffectFirstPuts: 2, LateEffectDelay: Duration(2 * time.Second), LateAnswerDelay: Duration(time.Second),
		LookupBare404Rate: 0.1, RegisterBadBodyRate: 0.2, RegisterBadBody: BadBodySyncAssigned}
	if k := sim.Knobs(); k.Faults != want || k.LookupWhileAssigning != LookupPrevious {
		t.Errorf("knobs after PUT = %+v, want faults %+v and previous", k, want)
	}
	for _, bad := range []struct{ body, want string }{
		{`{"faults":{"registerBadBody":"half"}}`, "syncAssigned"},
		{`{"lookupWhileAssigning":"sometimes"}`, "notFound"},
	} {
		if status, body := admin(t, run, "PUT", "/_sim/knobs", bad.body); status != 400 || !strings.Contains(string(body), bad.want) {
			t.Errorf("PUT %s = %d %s, want 400 naming the allowed values", bad.body, status, body)
		}
	}

	// The same checks apply to the config file.
	for _, tt := range []struct{ json, want string }{
		{`{"lookupWhileAssigning": "maybe"}`, "lookupWhileAssigning"},
		{`{"faults": {"registerBadBody": "half"}}`, "faults.registerBadBody"},
		{`{"faults": {"lateEffectRate": 2}}`, "faults.lateEffectRate"},
	} {
		path := filepath.Join(t.TempDir(), "sim.json")
		writeFile(t, path, tt.json)
		if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadConfig(%s) = %v, want an error naming %s", tt.json, err, tt.want)
		}
	}
}

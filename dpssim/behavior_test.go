package dpssim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// symConfig enrolls ids as symmetric-key individual enrollments (key keyA)
// and everything else through a symmetric-key group (groupKey).
func symConfig(ids ...string) Config {
	cfg := Config{IDScope: testScope, Groups: []EnrollmentGroup{{EnrollmentGroupID: "sas-group",
		Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}}}
	for _, id := range ids {
		cfg.Individual = append(cfg.Individual, IndividualEnrollment{RegistrationID: id,
			Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}})
	}
	return cfg
}

// groupDevice is a symmetric-key group member.
func groupDevice(tb testing.TB, run *Running, id string) *rawDevice {
	return newRawDevice(tb, run, id, nil, dps.DeriveDeviceKeyBytes(groupKey, id))
}

func TestAssignmentDelayAndConcurrentRegistration(t *testing.T) {
	clk := newFakeClock()
	sim := mustNew(t, symConfig())
	sim.Now = clk.Now
	if err := sim.SetAssignmentDelay(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "slow-1")
	created := clk.Now()
	reg := dev.register("")
	opID := reg.op(t).OperationID

	pl := dev.poll(opID)
	op := pl.op(t)
	if pl.status != http.StatusAccepted || op.Status != dps.StatusAssigning || pl.header.Get("Retry-After") != "3" {
		t.Fatalf("poll during the delay = %d %s (Retry-After %q), want 202 assigning with Retry-After 3", pl.status, pl.body, pl.header.Get("Retry-After"))
	}
	if rs := op.RegistrationState; rs == nil || rs.RegistrationID != "slow-1" || rs.Status != dps.StatusAssigning {
		t.Errorf("assigning registrationState = %+v, want registrationId and status (Java requires both)", rs)
	}
	if lk := dev.lookup(); lk.status != http.StatusOK || !jsonHas(lk.body, "status", "assigning") {
		t.Errorf("lookup while assigning = %d %s, want 200 assigning", lk.status, lk.body)
	}
	again := dev.register("")
	if again.status != http.StatusConflict || again.errBody(t).ErrorCode != dps.CodePreconditionFailed {
		t.Errorf("second register while assigning = %d %s, want 409 with 409203", again.status, again.body)
	}

	clk.Advance(2 * time.Second)
	pl = dev.poll(opID)
	op = pl.op(t)
	if pl.status != http.StatusOK || op.Status != dps.StatusAssigned {
		t.Fatalf("poll after the delay = %d %s, want 200 assigned", pl.status, pl.body)
	}
	if want := formatTime(created.Add(2 * time.Second)); op.RegistrationState.LastUpdatedDateTimeUTC != want {
		t.Errorf("lastUpdatedDateTimeUtc = %s, want the assignment time %s", op.RegistrationState.LastUpdatedDateTimeUTC, want)
	}
	ri, _ := sim.Registration("slow-1")
	if ri.Registers != 1 || ri.RegisterRequests != 2 {
		t.Errorf("registers = %d, registerRequests = %d; want 1 and 2 (the 409 did not register)", ri.Registers, ri.RegisterRequests)
	}
}

func TestStayAssigningPolls(t *testing.T) {
	sim := mustNew(t, symConfig())
	if err := sim.SetFaults(Faults{StayAssigningPolls: 2}); err != nil {
		t.Fatal(err)
	}
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "sticky-1")
	opID := dev.register("").op(t).OperationID
	var got []int
	for range 3 {
		got = append(got, dev.poll(opID).status)
	}
	if want := []int{202, 202, 200}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("poll statuses = %v, want %v", got, want)
	}
}

// TestRepeatRegistration: an assigned device registering again gets a new
// operation, the same hub under hashed allocation and a substatus that
// depends on the api-version (dps-protocol.md §8).
func TestRepeatRegistration(t *testing.T) {
	for _, tt := range []struct {
		apiVersion, wantSubstatus string
	}{
		{"2021-10-01", dps.SubstatusReprovisionedToInitialAssignment},
		{"2019-03-31", dps.SubstatusInitialAssignment},
	} {
		t.Run(tt.apiVersion, func(t *testing.T) {
			sim := mustNew(t, symConfig())
			run := mustStart(t, sim)
			dev := groupDevice(t, run, "again-1")
			dev.apiVersion = tt.apiVersion
			first := dev.registerAndWait().op(t)
			second := dev.registerAndWait().op(t)
			a, b := first.RegistrationState, second.RegistrationState
			if first.OperationID == second.OperationID {
				t.Errorf("both registrations got operation %s, want a new one per PUT", first.OperationID)
			}
			if a.Substatus != dps.SubstatusInitialAssignment || b.Substatus != tt.wantSubstatus {
				t.Errorf("substatus = %q then %q, want %q then %q", a.Substatus, b.Substatus, dps.SubstatusInitialAssignment, tt.wantSubstatus)
			}
			if a.AssignedHub != b.AssignedHub || a.CreatedDateTimeUTC != b.CreatedDateTimeUTC || a.ETag == b.ETag {
				t.Errorf("hub %s→%s, created %s→%s, etag %s→%s: want same hub, same created time, new etag",
					a.AssignedHub, b.AssignedHub, a.CreatedDateTimeUTC, b.CreatedDateTimeUTC, a.ETag, b.ETag)
			}
			// The superseded operation still answers with its own result.
			if old := dev.poll(first.OperationID); old.status != 200 || old.op(t).RegistrationState.ETag != a.ETag {
				t.Errorf("poll of the first operation = %d %s, want its own final state", old.status, old.body)
			}
			if ri, _ := sim.Registration("again-1"); ri.Registers != 2 || ri.OperationID != second.OperationID {
				t.Errorf("Registration = %+v, want 2 registers and the latest operation id", ri)
			}
		})
	}
}

func TestRegistrationQuota(t *testing.T) {
	clk := newFakeClock()
	sim := mustNew(t, symConfig())
	sim.Now = clk.Now
	if err := sim.SetQuotas(Quotas{RegistrationsPerMinute: 2}); err != nil {
		t.Fatal(err)
	}
	run := mustStart(t, sim)
	for i := range 2 {
		if r := groupDevice(t, run, fmt.Sprintf("q-%d", i)).register(""); r.status != http.StatusAccepted {
			t.Fatalf("register %d within quota = %d %s", i, r.status, r.body)
		}
	}
	third := groupDevice(t, run, "q-2")
	r := third.register("")
	if r.status != http.StatusTooManyRequests || r.errBody(t).ErrorCode != dps.CodeThrottled {
		t.Fatalf("register over quota = %d %s, want 429 with %d", r.status, r.body, dps.CodeThrottled)
	}
	// 2 a minute refill one every 30 s.
	if got := r.header.Get("Retry-After"); got != "30" {
		t.Errorf("Retry-After = %q, want 30", got)
	}
	// Polls are throttled separately: the quota on registrations does not stop them.
	if ri, _ := sim.Registration("q-0"); ri.OperationID == "" {
		t.Fatal("q-0 has no operation")
	} else if p := groupDevice(t, run, "q-0").poll(ri.OperationID); p.status != http.StatusOK {
		t.Errorf("poll while registrations are throttled = %d, want 200", p.status)
	}
	clk.Advance(30 * time.Second)
	if r := third.register(""); r.status != http.StatusAccepted {
		t.Errorf("register after Retry-After = %d %s, want 202", r.status, r.body)
	}
	st := sim.Stats()
	if st.Throttled != 1 || st.Registers != 3 || st.ByStatus[429] != 1 {
		t.Errorf("stats = %+v, want 1 throttled, 3 registers", st)
	}
	ri, _ := sim.Registration("q-2")
	if ri.Registers != 1 || ri.RegisterRequests != 2 {
		t.Errorf("q-2 registers=%d requests=%d, want 1 and 2", ri.Registers, ri.RegisterRequests)
	}

	// A small bucket: 60 a minute, at most 2 at once.
	if err := sim.SetQuotas(Quotas{RegistrationsPerMinute: 60, RegistrationBurst: 2}); err != nil {
		t.Fatal(err)
	}
	var burst []int
	for i := range 3 {
		burst = append(burst, groupDevice(t, run, fmt.Sprintf("b-%d", i)).register("").status)
	}
	if fmt.Sprint(burst) != "[202 202 429]" {
		t.Errorf("statuses with a burst of 2 = %v, want [202 202 429]", burst)
	}

	// Unlimited.
	if err := sim.SetQuotas(Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1}); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if r := groupDevice(t, run, fmt.Sprintf("u-%d", i)).register(""); r.status != http.StatusAccepted {
			t.Fatalf("register %d with no quota = %d", i, r.status)
		}
	}
}

func TestPollQuota(t *testing.T) {
	clk := newFakeClock()
	sim := mustNew(t, symConfig())
	sim.Now = clk.Now
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "poller")
	opID := dev.register("").op(t).OperationID
	for i := range DefaultPollsPer10sPerDevice {
		if p := dev.poll(opID); p.status != http.StatusOK {
			t.Fatalf("poll %d = %d, want 200", i+1, p.status)
		}
		clk.Advance(time.Second)
	}
	p := dev.poll(opID)
	if p.status != http.StatusTooManyRequests || p.errBody(t).ErrorCode != dps.CodeThrottled {
		t.Fatalf("6th poll within 10 s = %d %s, want 429", p.status, p.body)
	}
	// The first poll was at t0, now is t0+5s: it leaves the window in 5 s.
	if got := p.header.Get("Retry-After"); got != "5" {
		t.Errorf("Retry-After = %q, want 5", got)
	}
	// Another device is not affected.
	other := groupDevice(t, run, "poller-2")
	if p := other.poll(other.register("").op(t).OperationID); p.status != http.StatusOK {
		t.Errorf("other device's poll = %d, want 200", p.status)
	}
	clk.Advance(5 * time.Second)
	if p := dev.poll(opID); p.status != http.StatusOK {
		t.Errorf("poll after Retry-After = %d, want 200", p.status)
	}
}

// faultTrace registers each id once and returns the status (or "drop").
func faultTrace(t *testing.T, run *Running, ids []string, concurrent bool) map[string]string {
	t.Helper()
	var mu sync.Mutex
	out := map[string]string{}
	do := func(id string) {
		d := groupDevice(t, run, id)
		r, err := d.try(http.MethodPut, d.registerPath(), `{"registrationId":"`+id+`"}`, nil)
		res := "drop"
		if err == nil {
			res = strconv.Itoa(r.status)
		}
		mu.Lock()
		out[id] = res
		mu.Unlock()
	}
	if !concurrent {
		for _, id := range ids {
			do(id)
		}
		return out
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); do(id) }()
	}
	wg.Wait()
	return out
}

// TestFaultsAreDeterministic: the same seed gives the same faults to the
// same devices, whatever order the requests arrive in.
func TestFaultsAreDeterministic(t *testing.T) {
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("f-%02d", i))
	}
	faults := Faults{Seed: 42, RegisterErrorRate: 0.3, DropConnectionRate: 0.1}
	var traces []map[string]string
	for _, concurrent := range []bool{false, true} {
		sim := mustNew(t, Config{IDScope: testScope, Faults: faults, Groups: symConfig().Groups})
		traces = append(traces, faultTrace(t, mustStart(t, sim), ids, concurrent))
		st := sim.Stats()
		if st.Faults == 0 || st.Registers == 0 {
			t.Errorf("stats = %+v, want some faults and some registrations at these rates", st)
		}
	}
	counts := map[string]int{}
	for _, id := range ids {
		if traces[0][id] != traces[1][id] {
			t.Errorf("%s: %s sequentially, %s concurrently; want the same", id, traces[0][id], traces[1][id])
		}
		counts[traces[0][id]]++
	}
	if counts["500"]+counts["503"] == 0 || counts["drop"] == 0 || counts["202"] == 0 {
		t.Errorf("outcome counts = %v, want some of each of 500/503, drop and 202", counts)
	}
	// Another seed gives another sequence.
	faults.Seed = 43
	sim := mustNew(t, Config{IDScope: testScope, Faults: faults, Groups: symConfig().Groups})
	other := faultTrace(t, mustStart(t, sim), ids, false)
	if fmt.Sprint(other) == fmt.Sprint(traces[0]) {
		t.Errorf("seeds 42 and 43 gave the same faults")
	}
}

func TestFaultKinds(t *testing.T) {
	t.Run("every register fails with 500 or 503 and starts nothing", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{RegisterErrorRate: 1}})
		run := mustStart(t, sim)
		seen := map[int]int{}
		for i := range 20 {
			r := groupDevice(t, run, fmt.Sprintf("e-%d", i)).register("")
			seen[r.status]++
			if code := r.errBody(t).ErrorCode; code != r.status*1000 {
				t.Errorf("status %d with errorCode %d, want %d", r.status, code, r.status*1000)
			}
		}
		if seen[500] == 0 || seen[503] == 0 || seen[500]+seen[503] != 20 {
			t.Errorf("statuses = %v, want only 500 and 503, both", seen)
		}
		if st := sim.Stats(); st.Registers != 0 || st.Faults != 20 {
			t.Errorf("stats = %+v, want 0 registers and 20 faults", st)
		}
	})
	t.Run("poll errors leave the operation intact", func(t *testing.T) {
		sim := mustNew(t, symConfig())
		run := mustStart(t, sim)
		dev := groupDevice(t, run, "pe-1")
		opID := dev.register("").op(t).OperationID
		if err := sim.SetFaults(Faults{PollErrorRate: 1}); err != nil {
			t.Fatal(err)
		}
		if p := dev.poll(opID); p.status < 500 {
			t.Fatalf("poll with PollErrorRate 1 = %d, want 5xx", p.status)
		}
		if err := sim.SetFaults(Faults{}); err != nil {
			t.Fatal(err)
		}
		if p := dev.poll(opID); p.status != 200 {
			t.Errorf("poll after the fault = %d, want 200", p.status)
		}
	})
	t.Run("dropped request has no effect", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{DropConnectionRate: 1}})
		run := mustStart(t, sim)
		d := groupDevice(t, run, "drop-1")
		if _, err := d.try(http.MethodPut, d.registerPath(), `{}`, nil); err == nil {
			t.Fatal("register succeeded, want a dropped connection")
		}
		ri, _ := sim.Registration("drop-1")
		if ri.Registers != 0 || ri.RegisterRequests != 1 {
			t.Errorf("registration = %+v, want the request seen but no operation", ri)
		}
	})
	t.Run("dropped response: the registration happened", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{DropResponseRate: 1}})
		run := mustStart(t, sim)
		d := groupDevice(t, run, "drop-2")
		if _, err := d.try(http.MethodPut, d.registerPath(), `{}`, nil); err == nil {
			t.Fatal("register answered, want the response dropped")
		}
		ri, _ := sim.Registration("drop-2")
		if ri.Registers != 1 || ri.Status != dps.StatusAssigned {
			t.Errorf("registration = %+v, want it registered and assigned although the client saw nothing", ri)
		}
		if st := sim.Stats(); st.Dropped != 1 {
			t.Errorf("dropped = %d, want 1", st.Dropped)
		}
	})
	t.Run("latency", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Groups: symConfig().Groups, Faults: Faults{Latency: Duration(80 * time.Millisecond), LatencyJitter: Duration(20 * time.Millisecond)}})
		run := mustStart(t, sim)
		start := time.Now()
		groupDevice(t, run, "slow-net").register("")
		if took := time.Since(start); took < 80*time.Millisecond {
			t.Errorf("register took %s, want at least the 80ms latency", took)
		}
	})
}

// TestHoldRelease forces an ordering: a register PUT is held after
// authentication, visible as a request but not a registration, until
// released.
func TestHoldRelease(t *testing.T) {
	sim := mustNew(t, symConfig())
	run := mustStart(t, sim)
	sim.Hold()
	dev := groupDevice(t, run, "held-1")
	done := make(chan rawResp, 1)
	go func() {
		r, err := dev.try(http.MethodPut, dev.registerPath(), `{}`, nil)
		if err != nil {
			r = rawResp{status: -1, body: []byte(err.Error())}
		}
		done <- r
	}()
	waitFor(t, func() bool { return sim.Held() == 1 })
	ri, _ := sim.Registration("held-1")
	if ri.RegisterRequests != 1 || ri.Registers != 0 || ri.Status != "" {
		t.Errorf("while held: %+v, want one request and no registration", ri)
	}
	sim.Release()
	if r := <-done; r.status != http.StatusAccepted {
		t.Fatalf("held register after release = %d %s, want 202", r.status, r.body)
	}
	if sim.Held() != 0 {
		t.Errorf("Held() = %d after release, want 0", sim.Held())
	}

	// A client that gives up while held leaves no trace but the request.
	sim.Hold()
	defer sim.Release()
	ctx, cancel := context.WithCancel(context.Background())
	dev2 := groupDevice(t, run, "held-2")
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, run.URL+dev2.registerPath(), nil)
	req.Header.Set("Authorization", dps.SASToken(dev2.key, testScope, "held-2", time.Now().Add(time.Hour)))
	errc := make(chan error, 1)
	go func() {
		resp, err := dev2.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, func() bool { return sim.Held() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client error = %v, want context.Canceled", err)
	}
	waitFor(t, func() bool { return sim.Held() == 0 })
	if ri, _ := sim.Registration("held-2"); ri.Registers != 0 {
		t.Errorf("abandoned held request registered: %+v", ri)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAllocation(t *testing.T) {
	hubs := []string{"h1.azure-devices.net", "h2.azure-devices.net", "h3.azure-devices.net"}
	assign := func(t *testing.T, cfg Config, n int) map[string]string {
		t.Helper()
		cfg.IDScope, cfg.Hubs = testScope, hubs
		cfg.Groups = symConfig().Groups
		sim := mustNew(t, cfg)
		run := mustStart(t, sim)
		got := map[string]string{}
		for i := range n {
			id := fmt.Sprintf("a-%03d", i)
			got[id] = groupDevice(t, run, id).registerAndWait().op(t).RegistrationState.AssignedHub
		}
		return got
	}
	count := func(m map[string]string) map[string]int {
		c := map[string]int{}
		for _, h := range m {
			c[h]++
		}
		return c
	}
	t.Run("hashed is deterministic and spreads", func(t *testing.T) {
		a, b := assign(t, Config{}, 60), assign(t, Config{}, 60)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("hashed allocation differs between two simulators")
		}
		if c := count(a); len(c) != 3 {
			t.Errorf("hub counts = %v, want all three hubs used", c)
		}
	})
	t.Run("evenlyWeighted balances", func(t *testing.T) {
		c := count(assign(t, Config{Allocation: AllocationEvenlyWeighted}, 30))
		for _, h := range hubs {
			if c[h] != 10 {
				t.Errorf("hub counts = %v, want 10 each", c)
				break
			}
		}
	})
	t.Run("static uses the first hub", func(t *testing.T) {
		if c := count(assign(t, Config{Allocation: AllocationStatic}, 10)); c[hubs[0]] != 10 {
			t.Errorf("hub counts = %v, want all on %s", c, hubs[0])
		}
	})
	t.Run("enrollment pins a hub and a device id", func(t *testing.T) {
		sim := mustNew(t, Config{IDScope: testScope, Hubs: hubs, Individual: []IndividualEnrollment{{RegistrationID: "pinned",
			DeviceID: "boiler-7", IoTHub: hubs[2], Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}})
		rs := newRawDevice(t, mustStart(t, sim), "pinned", nil, keyA).registerAndWait().op(t).RegistrationState
		if rs.AssignedHub != hubs[2] || rs.DeviceID != "boiler-7" {
			t.Errorf("assigned %s as %s, want %s as boiler-7", rs.AssignedHub, rs.DeviceID, hubs[2])
		}
	})
}

// TestCustomAllocationPayload: the payload picks the hub, is echoed when
// configured, and a hub that is not linked fails the registration.
func TestCustomAllocationPayload(t *testing.T) {
	sim := mustNew(t, Config{IDScope: testScope, Hubs: []string{"a.azure-devices.net", "b.azure-devices.net"},
		Allocation: AllocationCustom, CustomAllocation: CustomAllocation{HubField: "site", EchoPayload: true}, Groups: symConfig().Groups})
	run := mustStart(t, sim)
	tests := []struct {
		id, payload string
		wantStatus  dps.Status
		wantHub     string
	}{
		{"c-1", `{"site":"b.azure-devices.net","model":"x1"}`, dps.StatusAssigned, "b.azure-devices.net"},
		{"c-2", `{"site":"a.azure-devices.net"}`, dps.StatusAssigned, "a.azure-devices.net"},
		{"c-3", `{"site":"nowhere.azure-devices.net"}`, dps.StatusFailed, ""},
		{"c-4", `{"site":7}`, dps.StatusFailed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			dev := groupDevice(t, run, tt.id)
			reg := dev.register(tt.payload)
			pl := dev.poll(reg.op(t).OperationID)
			op := pl.op(t)
			rs := op.RegistrationState
			if op.Status != tt.wantStatus || rs.AssignedHub != tt.wantHub {
				t.Fatalf("result = %s, want %s on %q", pl.body, tt.wantStatus, tt.wantHub)
			}
			if tt.wantStatus == dps.StatusFailed {
				if rs.ErrorCode != dps.CodeCustomAllocation || rs.ErrorMessage == "" {
					t.Errorf("failed registrationState = %s, want errorCode 400207 and a message", pl.body)
				}
				return
			}
			if !jsonEqual(t, rs.Payload, tt.payload) {
				t.Errorf("payload = %s, want the request's %s echoed", rs.Payload, tt.payload)
			}
		})
	}
	// Without the field, hashed allocation applies.
	dev := groupDevice(t, run, "c-5")
	if rs := dev.registerAndWait().op(t).RegistrationState; rs.AssignedHub == "" {
		t.Errorf("payload without the hub field: not assigned")
	}
}

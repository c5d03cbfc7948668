package main

import (
	"encoding/json"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/internal/simtrace"
	"github.com/dps-batch/dps-batch/ledger"
)

// provisionJSON is what the tests read of provision --json.
type provisionJSON struct {
	Devices    int `json:"devices"`
	Registers  int `json:"registers"`
	Requests   int `json:"registerRequests"`
	Unanswered int `json:"registersUnanswered"`
	Conflicts  int `json:"registerConflicts"`
	Campaign   *struct {
		ID        int64  `json:"id"`
		Kind      string `json:"kind"`
		Started   bool   `json:"startedByThisRun"`
		Completed bool   `json:"completed"`
	} `json:"campaign"`
}

// TestReprovisionCampaignSurvivesKill is the acceptance test of re-registration
// campaigns: a fleet of 400 symmetric-key group devices is provisioned, then
// a --reprovision campaign is killed with SIGKILL part-way, status shows the
// campaign open, and the same command finishes it (exit 0). At the simulator
// (the oracle, whatever the client saw): no device was registered more than
// twice in all, each exactly once by the campaign, and every device is
// assigned; the resumed run's "registers" is what DPS accepted from it.
func TestReprovisionCampaignSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("campaign kill: starts dps-batch processes")
	}
	const n = 400
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	// Assigned at the first poll, polled at once; the kill comes after more
	// registrations than --workers, so the campaign has devices assigned
	// (a worker is freed only by a finished device), and others in flight.
	f := newChaosFleet(t, fleetSpec{symGroup: n}, func(c *dpssim.Config) {
		zero := 0
		c.RetryAfterSeconds = &zero
		c.AssignmentDelay = 0
	})
	// A PUT killed in flight was written as an intent first; the resumed run
	// looks it up and, finding nothing, waits --settle after the intent plus
	// --request-timeout before it may send another: keep both short.
	base := f.provisionArgs("--workers", "100", "--quiet", "--json", "--request-timeout", "3s")
	c := &crashLoop{t: t, f: f, rng: mrand.New(mrand.NewPCG(uint64(seed), 2)), putsFrom: 150, putsSpan: 100}
	start := time.Now()

	first := &stage{name: "first provisioning", args: base, targets: map[string]bool{}}
	for _, id := range f.ids {
		first.targets[id] = true
	}
	c.runStage(first, nil)
	c.verifyStage(first)
	if t.Failed() {
		t.FailNow()
	}

	reprov := &stage{name: "reprovision campaign", kind: "reprovision", args: append(base, "--reprovision"), targets: first.targets}
	c.stages = append(c.stages, reprov)
	c.st = reprov
	reprov.before = f.sim.Stats()
	reprov.start = time.Now()
	r := c.runOnce(phasePuts, false)
	if r.kill == nil {
		t.Fatalf("the campaign run exited %d before the kill (after %d registrations); stdout:\n%s\nstderr:\n%s", r.code, f.sim.Stats().Registers-n, r.stdout, r.stderr)
	}
	c.kills = append(c.kills, *r.kill)
	reprov.kills = append(reprov.kills, *r.kill)
	// Requests the killed process had in flight reach their end at the
	// simulator; then count what the campaign registered so far.
	time.Sleep(200 * time.Millisecond)
	c.checkAfterKill(r.kill)
	if t.Failed() {
		t.FailNow()
	}
	killed := 0
	for _, ri := range f.sim.Registrations() {
		killed += c.inStage(ri)
	}
	if killed == 0 || killed >= n {
		t.Fatalf("the kill landed with %d of %d devices registered by the campaign; want it part-way", killed, n)
	}
	// Devices the campaign already finished are what a re-run must skip.
	devs, led := ledgerDevices(t, f.ledger)
	led.Close()
	done := 0
	for _, d := range devs {
		if d.State == ledger.StateAssigned && d.CampaignID == 1 {
			done++
		}
	}
	if done == 0 {
		t.Fatalf("the kill landed before the campaign finished any device (%d registered): the re-run would have nothing to skip", killed)
	}
	code, out, errs := runCmd(t, "status", "--ledger", f.ledger)
	want := "Open campaign #1 (reprovision)"
	if code != exitOK || !strings.Contains(out, want) {
		t.Fatalf("status after the kill: exit %d, want 0 and %q in:\n%s%s", code, want, out, errs)
	}
	t.Logf("status after the kill: %s", strings.TrimSpace(lineWith(out, "Open campaign")))

	resumed := time.Now()
	r = c.runOnce(phaseNone, false)
	if r.code != exitOK {
		t.Fatalf("the same command after the kill exited %d, want 0; stderr:\n%s", r.code, r.stderr)
	}
	var sum provisionJSON
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatalf("provision --json: %v\n%s", err, r.stdout)
	}
	c.verifyStage(reprov)

	// Per device, at the simulator: at most twice in all, once per stage.
	sims := f.simRegistrations(t)
	most, byResumed := 0, 0
	for _, id := range f.ids {
		ri := sims[id]
		most = max(most, ri.Registers)
		if ri.Registers > 2 {
			t.Errorf("%s: registered %d times at DPS in all (first provisioning + one campaign), want at most 2%s", id, ri.Registers, c.explain(id))
		}
		if ri.Status != "assigned" {
			t.Errorf("%s: %q at DPS, want assigned", id, ri.Status)
		}
		counts, _ := simtrace.PerWindow(ri.RegisterTimes, []time.Time{resumed})
		byResumed += counts[0]
	}
	if sum.Campaign == nil || sum.Campaign.ID != 1 || sum.Campaign.Kind != "reprovision" || sum.Campaign.Started || !sum.Campaign.Completed {
		t.Errorf("provision --json campaign = %+v, want #1 reprovision, continued (not started) and completed by this run", sum.Campaign)
	}
	if sum.Registers != byResumed {
		t.Errorf("provision --json registers = %d (accepted by DPS), but %d registrations took effect at DPS during the run", sum.Registers, byResumed)
	}
	if killed+byResumed != n {
		t.Errorf("the campaign registered %d devices before the kill and %d after, want %d in all", killed, byResumed, n)
	}
	code, out, errs = runCmd(t, "status", "--ledger", f.ledger, "--json")
	var js struct {
		ByState  map[string]int `json:"byState"`
		Campaign *struct {
			ID      int64  `json:"id"`
			Open    bool   `json:"open"`
			Outcome string `json:"outcome"`
		} `json:"campaign"`
	}
	if code != exitOK || json.Unmarshal([]byte(out), &js) != nil {
		t.Fatalf("status --json: exit %d\n%s%s", code, out, errs)
	}
	if js.Campaign == nil || js.Campaign.ID != 1 || js.Campaign.Open || js.Campaign.Outcome != ledger.CampaignCompleted {
		t.Errorf("status --json campaign after the campaign = %+v, want #1 completed", js.Campaign)
	}
	if js.ByState["assigned"] != n {
		t.Errorf("status --json byState = %v, want %d assigned", js.ByState, n)
	}
	t.Logf("campaign kill: %d devices, 1 kill after %v with %d registered by the campaign (%d of them assigned in the ledger); status showed the open campaign; the same command registered %d more (summary: %d accepted, %d requests, %d unanswered, %d 409203) and completed campaign #1; at most %d registrations per device in all, %d per device in the campaign; in %v",
		n, reprov.kills[0].after.Round(time.Millisecond), killed, done, byResumed, sum.Registers, sum.Requests, sum.Unanswered, sum.Conflicts, most, reprov.maxRegs, time.Since(start).Round(time.Millisecond))
}

// lineWith returns the first line of s that contains sub.
func lineWith(s, sub string) string {
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

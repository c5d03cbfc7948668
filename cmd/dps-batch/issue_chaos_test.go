package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
)

// TestIssueCertsCrashLoop is the acceptance test of certificates issued at
// registration under crashes: a symmetric-key group fleet whose keys
// --generate-csr-keys makes is provisioned with --issue-certs while the
// process is killed with SIGKILL at random instants of every phase, and
// the simulator loses some answers that carry a chain. The same command is
// run again after each kill until it is done. Then every device has either
// a durable chain file that verifies to the policy's root, is for its own
// key and is the certificate the simulator issued last, or is issued-lost
// with its remedy; no device was registered twice (the simulator's count).
// Then --reissue, killed too, registers exactly the issued-lost devices
// once more and brings every device a verifying certificate.
func TestIssueCertsCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("crash loop: starts dps-batch processes")
	}
	n, kills := 500, 12
	if chaosLong() {
		n, kills = 1000, 30
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	f := newChaosFleet(t, fleetSpec{symGroup: n}, func(c *dpssim.Config) {
		for i := range c.Groups {
			c.Groups[i].CredentialPolicyName = "line-1"
		}
		c.CredentialPolicies = []dpssim.CredentialPolicy{{Name: "line-1", ValidityDays: 30}}
		c.Faults = dpssim.Faults{Seed: seed, LoseIssuedAnswerRate: 0.03}
	})
	keys := filepath.Join(f.dir, "csr-keys")
	base := f.provisionArgs("--issue-certs", "--generate-csr-keys", keys, "--workers", "50", "--quiet", "--json")
	// Kills land after 1 to 30 register answers, so each run does a
	// little and the fleet lasts for every kill.
	c := &crashLoop{t: t, f: f, rng: mrand.New(mrand.NewPCG(uint64(seed), 15)), putsFrom: 1, putsSpan: 30}

	first := &stage{name: "provisioning with --issue-certs", args: base, targets: map[string]bool{}}
	for _, id := range f.ids {
		first.targets[id] = true
	}
	c.runIssueStage(first, schedule(kills), 10)
	lost := verifyIssueStage(t, f, keys, nil)
	if len(first.kills) < 10 {
		t.Errorf("%d kills landed, want at least 10", len(first.kills))
	}

	// status names the issued-lost devices and the remedy.
	if len(lost) > 0 {
		code, out, errs := runCmd(t, "status", "--ledger", f.ledger)
		if code != exitOK || !strings.Contains(out, fmt.Sprintf("%d device(s) issued-lost", len(lost))) || !strings.Contains(out, "--reissue") {
			t.Errorf("status: exit %d, want the issued-lost count %d and --reissue in:\n%s%s", code, len(lost), out, errs)
		}
	}

	reissue := &stage{name: "--reissue campaign", kind: "reissue", args: append(base, "--reissue"), targets: map[string]bool{}}
	for id := range lost {
		reissue.targets[id] = true
	}
	if err := f.sim.SetFaults(dpssim.Faults{}); err != nil {
		t.Fatal(err)
	}
	sched := []phase{}
	if len(lost) > 20 {
		sched = []phase{phasePuts, phasePolls}
	}
	c.runIssueStage(reissue, sched, 0)
	extra := map[string]int{}
	for id := range lost {
		extra[id] = 1
	}
	again := verifyIssueStage(t, f, keys, extra)
	if len(again) > 0 {
		// Kills during the campaign lost some chains again. The campaign
		// registered each of its devices once and is complete: a new one
		// is the operator's explicit choice.
		t.Logf("%d devices issued-lost again by kills during --reissue; running --reissue --new-campaign without kills", len(again))
		last := &stage{name: "--reissue --new-campaign", kind: "reissue", args: append(base, "--reissue", "--new-campaign"), targets: again}
		c.runIssueStage(last, nil, 0)
		for id := range again {
			extra[id]++
		}
		if still := verifyIssueStage(t, f, keys, extra); len(still) > 0 {
			t.Errorf("%d devices still issued-lost after a --reissue run without kills or faults", len(still))
		}
	}
	chainsLost := 0
	for _, ri := range f.sim.Registrations() {
		chainsLost += ri.ChainsLost
	}
	byPhase := map[phase]int{}
	for _, k := range c.kills {
		byPhase[k.at]++
	}
	t.Logf("issue-certs crash loop: %d devices, %d runs, %d kills (%d validation, %d during PUTs, %d during polls, %d during the final write); "+
		"%d devices issued-lost after the first stage (the simulator lost %d answers carrying a chain in all), each brought back by --reissue with one more registration per campaign; "+
		"kills left %d chains kept in the ledger before their file, each written by the next run",
		n, c.runs, len(c.kills), byPhase[phaseValidation], byPhase[phasePuts], byPhase[phasePolls], byPhase[phaseFinal], len(lost), chainsLost, keptAtKills)
}

// runIssueStage runs the stage's command, killing it as schedule says
// (and during PUTs and polls, in turn, until at least minKills landed while
// devices are left), then again until it exits by itself: 0, or 3 while
// devices are issued-lost.
func (c *crashLoop) runIssueStage(st *stage, schedule []phase, minKills int) {
	t := c.t
	if last, ok := c.lastCampaign(); ok {
		st.prevCampaign = last.ID
	}
	st.before = c.f.sim.Stats()
	st.start = time.Now()
	c.stages = append(c.stages, st)
	c.st = st
	for i := 0; ; i++ {
		target := phaseNone
		switch {
		case i < len(schedule):
			target = schedule[i]
		case len(st.kills) < minKills && c.left() > 20:
			target = []phase{phasePuts, phasePolls}[i%2]
		}
		r := c.runOnce(target, c.runs%4 == 3)
		if k := r.kill; k != nil {
			c.kills = append(c.kills, *k)
			st.kills = append(st.kills, *k)
			c.checkAfterKill(k)
			keptAtKills += c.checkAssignedHaveFiles()
			if t.Failed() {
				t.FailNow()
			}
			if st.completed {
				return
			}
			continue
		}
		switch r.code {
		case exitOK, exitDeviceFails:
			if i < len(schedule)-1 {
				t.Logf("%s, run %d finished before its %s kill", st.name, st.runs, target)
			}
			var sum struct {
				CertsWritten *int `json:"certificatesWritten"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil || sum.CertsWritten == nil {
				t.Errorf("%s: provision --json has no certificatesWritten (%v):\n%s", st.name, err, r.stdout)
			}
			return
		case exitResumable:
			continue
		default:
			t.Fatalf("%s, run %d exited %d; stderr:\n%s", st.name, st.runs, r.code, r.stderr)
		}
	}
}

// keptAtKills counts, over the kills of TestIssueCertsCrashLoop, the
// devices a kill left with their chain kept in the ledger and no record of
// the file yet: the next run wrote those from the ledger.
var keptAtKills int

// checkAssignedHaveFiles checks, right after a kill, that every device the
// ledger records assigned with a certificate has its chain file, whole, and
// the one the ledger names: the file is durable before the ledger says
// assigned. It returns how many devices the kill left with a kept chain.
func (c *crashLoop) checkAssignedHaveFiles() (kept int) {
	t := c.t
	if _, err := os.Stat(c.f.ledger); err != nil {
		return 0
	}
	devs, led := ledgerDevices(t, c.f.ledger)
	led.Close()
	bad := 0
	for id, d := range devs {
		if d.IssuedChain != "" {
			kept++
		}
		if d.State != ledger.StateAssigned || d.Issued.IsZero() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(c.f.dir, "issued", id+".pem"))
		var why string
		if err != nil {
			why = err.Error()
		} else if chain, err := certs.ParseCertsPEM(data); err != nil || len(chain) == 0 {
			why = fmt.Sprintf("chain file does not parse: %v", err)
		} else if sum := sha256.Sum256(chain[0].Raw); "sha256:"+hex.EncodeToString(sum[:]) != d.Issued.Fingerprint {
			why = "chain file's leaf is not the certificate the ledger records"
		}
		if why != "" {
			if bad++; bad <= 5 {
				t.Errorf("after kill %d: device %s is assigned in the ledger, but %s", len(c.kills), id, why)
			}
		}
	}
	return kept
}

// verifyIssueStage checks every device after a stage and returns the
// issued-lost ones. extra says how many times --reissue registered each
// device again: the server must count one registration more than that.
func verifyIssueStage(t *testing.T, f *chaosFleet, keysDir string, extra map[string]int) map[string]bool {
	t.Helper()
	info, ok := f.sim.CredentialPolicy("line-1")
	if !ok {
		t.Fatal("no credential policy line-1 at the simulator")
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(info.RootPEM))
	sims := f.simRegistrations(t)
	devs, led := ledgerDevices(t, f.ledger)
	defer led.Close()
	if err := led.IntegrityCheck(context.Background()); err != nil {
		t.Errorf("ledger integrity: %v", err)
	}
	lost := map[string]bool{}
	bad := 0
	fail := func(id, format string, args ...any) {
		if bad++; bad <= 10 {
			t.Errorf("device %s: %s", id, fmt.Sprintf(format, args...))
		}
	}
	for _, id := range f.ids {
		d, ri := devs[id], sims[id]
		if want := 1 + extra[id]; ri.Registers != want {
			fail(id, "registered %d times at DPS, want %d (ledger %s)", ri.Registers, 1+extra[id], d.State)
		}
		switch d.State {
		case ledger.StateIssuedLost:
			lost[id] = true
			if !strings.Contains(d.Hint, "--reissue") || d.ErrorMessage == "" {
				fail(id, "issued-lost without its reason and remedy: %q / %q", d.ErrorMessage, d.Hint)
			}
			if _, err := os.Stat(filepath.Join(f.dir, "issued", id+".pem")); err == nil && extra[id] == 0 {
				fail(id, "issued-lost, yet its chain file exists")
			}
		case ledger.StateAssigned:
			if why := checkIssuedFile(f, keysDir, roots, id, d, ri); why != "" {
				fail(id, "%s", why)
			}
		default:
			fail(id, "ledger state %s (%s), want assigned or issued-lost", d.State, d.ErrorMessage)
		}
	}
	if bad > 10 {
		t.Errorf("... %d devices wrong in all", bad)
	}
	return lost
}

// checkIssuedFile says what is wrong with an assigned device's chain file,
// "" when it is whole, verifies to the policy's root, is for the device's
// own key, is what the ledger recorded and what the simulator issued last.
func checkIssuedFile(f *chaosFleet, keysDir string, roots *x509.CertPool, id string, d ledger.Device, ri dpssim.RegistrationInfo) string {
	data, err := os.ReadFile(filepath.Join(f.dir, "issued", id+".pem"))
	if err != nil {
		return fmt.Sprintf("assigned, but %v", err)
	}
	chain, err := certs.ParseCertsPEM(data)
	if err != nil || len(chain) < 2 {
		return fmt.Sprintf("chain file holds %d certificates (%v)", len(chain), err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Sprintf("issued chain does not verify: %v", err)
	}
	if leaf.Subject.CommonName != id {
		return fmt.Sprintf("issued CN %q", leaf.Subject.CommonName)
	}
	keyPEM, err := os.ReadFile(filepath.Join(keysDir, id+".key"))
	if err != nil {
		return err.Error()
	}
	key, err := certs.ParseKeyPEM(keyPEM)
	if err != nil {
		return err.Error()
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return "issued certificate is not for the device's operational key"
	}
	sum := sha256.Sum256(leaf.Raw)
	if d.Issued.Fingerprint != "sha256:"+hex.EncodeToString(sum[:]) {
		return fmt.Sprintf("ledger fingerprint %s is not the file's", d.Issued.Fingerprint)
	}
	if ri.LastIssuedSerial != d.Issued.Serial {
		return fmt.Sprintf("ledger serial %s, the simulator issued %s last", d.Issued.Serial, ri.LastIssuedSerial)
	}
	return ""
}

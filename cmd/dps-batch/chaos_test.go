package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/internal/simtrace"
	"github.com/dps-batch/dps-batch/ledger"
)

// cliEnv makes the test binary behave as the dps-batch command, so that the
// crash loop can SIGKILL a real process at any instant while the simulator
// keeps running (and counting) inside the test.
const cliEnv = "DPSBATCH_TEST_RUN_CLI"

// longEnv selects the long forms of the chaos tests (make chaos).
const longEnv = "DPSBATCH_CHAOS_LONG"

func init() {
	if os.Getenv(cliEnv) == "1" {
		main() // exits
	}
}

func chaosLong() bool { return os.Getenv(longEnv) == "1" }

// fleetSpec says how many devices of each attestation kind a test fleet has.
type fleetSpec struct {
	x509Group      int // X.509 devices admitted by the fleet's enrollment group
	x509Individual int // X.509 devices with their own enrollment (and a device id override)
	symIndividual  int // symmetric-key devices with their own enrollment
	symGroup       int // devices whose key derives from the group key
	// symDisabled are symmetric-key devices whose individual enrollment is
	// disabled: every registration of theirs ends "disabled", so they are
	// what --retry-failed registers again.
	symDisabled int
}

func (s fleetSpec) total() int {
	return s.x509Group + s.x509Individual + s.symIndividual + s.symGroup + s.symDisabled
}

// chaosFleet is a mixed fleet on disk (certificates, keys, manifest, group
// key file) and a simulator that admits all of it, serving HTTPS on loopback
// inside the test, so its counters outlive every dps-batch process.
type chaosFleet struct {
	dir, manifest, ledger, caFile, groupKeyFile string
	ids                                         []string
	groupKey                                    []byte
	symKeys                                     map[string][]byte // individual symmetric keys by registration id
	deviceIDs                                   map[string]string // expected IoT hub device id by registration id
	disabled                                    map[string]bool   // devices whose enrollment is disabled
	// settle is the --settle every provision command passes (default 1s).
	settle time.Duration

	sim    *dpssim.Server
	srv    *dpssim.Running
	trace  *simTrace
	simLog *lockedBuffer // the simulator's request log, as text
}

// newChaosFleet writes the fleet and starts its simulator: Retry-After 1 s,
// a 300 ms assignment delay and no quotas, unless tweak changes them.
func newChaosFleet(t testing.TB, spec fleetSpec, tweak func(*dpssim.Config)) *chaosFleet {
	t.Helper()
	dir := t.TempDir()
	f := &chaosFleet{
		dir:          dir,
		manifest:     filepath.Join(dir, "manifest.csv"),
		ledger:       filepath.Join(dir, "fleet.ledger"),
		caFile:       filepath.Join(dir, "sim-ca.pem"),
		groupKeyFile: filepath.Join(dir, "group.key"),
		symKeys:      map[string][]byte{},
		deviceIDs:    map[string]string{},
		disabled:     map[string]bool{},
		settle:       time.Second,
	}
	nx := spec.x509Group + spec.x509Individual
	var cfg dpssim.Config
	var rows bytes.Buffer
	rows.WriteString("registration_id,cert_path,key_path,chain_path,symmetric_key\n")
	if nx > 0 {
		fl, err := certs.GenerateFleet(context.Background(), certs.FleetOptions{Dir: filepath.Join(dir, "pki"), Count: nx})
		if err != nil {
			t.Fatalf("generate fleet: %v", err)
		}
		cfg = dpssim.FleetConfig(dpssim.DefaultIDScope, certs.CertPEM(fl.GroupCA.Cert))
		for i, id := range fl.RegistrationIDs {
			fmt.Fprintf(&rows, "%s,pki/devices/%s.pem,pki/devices/%s.key,pki/ca/intermediate.pem,\n", id, id, id)
			f.ids = append(f.ids, id)
			f.deviceIDs[id] = id
			if i < spec.x509Individual {
				pem, err := os.ReadFile(filepath.Join(dir, "pki", "devices", id+".pem"))
				if err != nil {
					t.Fatal(err)
				}
				f.deviceIDs[id] = "boiler-" + id
				cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{
					RegistrationID: id, DeviceID: f.deviceIDs[id],
					Attestation: dpssim.Attestation{X509: &dpssim.X509Attestation{Certificate: string(pem)}},
				})
			}
		}
	} else {
		cfg.IDScope = dpssim.DefaultIDScope
	}
	for i := 1; i <= spec.symIndividual; i++ {
		id := fmt.Sprintf("symkey-%05d", i)
		key := randomBytes(t, 32)
		f.symKeys[id] = key
		f.ids = append(f.ids, id)
		f.deviceIDs[id] = id
		fmt.Fprintf(&rows, "%s,,,,%s\n", id, base64.StdEncoding.EncodeToString(key))
		cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{
			RegistrationID: id,
			Attestation:    dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
		})
	}
	for i := 1; i <= spec.symDisabled; i++ {
		id := fmt.Sprintf("disabled-%05d", i)
		key := randomBytes(t, 32)
		f.symKeys[id] = key
		f.ids = append(f.ids, id)
		f.deviceIDs[id] = id
		f.disabled[id] = true
		fmt.Fprintf(&rows, "%s,,,,%s\n", id, base64.StdEncoding.EncodeToString(key))
		cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{
			RegistrationID:     id,
			Attestation:        dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
			ProvisioningStatus: "disabled",
		})
	}
	if spec.symGroup > 0 {
		f.groupKey = randomBytes(t, 32)
		b64 := base64.StdEncoding.EncodeToString(f.groupKey)
		if err := os.WriteFile(f.groupKeyFile, []byte(b64+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Groups = append(cfg.Groups, dpssim.EnrollmentGroup{
			EnrollmentGroupID: "sensors",
			Attestation:       dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: b64}},
		})
		for i := 1; i <= spec.symGroup; i++ {
			id := fmt.Sprintf("sensor-%05d", i)
			f.ids = append(f.ids, id)
			f.deviceIDs[id] = id
			fmt.Fprintf(&rows, "%s,,,,\n", id)
		}
	}
	if err := os.WriteFile(f.manifest, rows.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	retryAfter := 1
	cfg.RetryAfterSeconds = &retryAfter
	cfg.AssignmentDelay = dpssim.Duration(300 * time.Millisecond)
	cfg.Quotas = dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: dpssim.DefaultPollsPer10sPerDevice}
	if tweak != nil {
		tweak(&cfg)
	}
	sim, err := dpssim.New(cfg)
	if err != nil {
		t.Fatalf("simulator config: %v", err)
	}
	f.trace = newSimTrace(sim)
	f.simLog = &lockedBuffer{}
	sim.Logger = slog.New(teeHandler{f.trace, slog.NewTextHandler(f.simLog, nil)})
	srv, err := dpssim.StartTLS(sim, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	if err := os.WriteFile(f.caFile, srv.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	f.sim, f.srv = sim, srv
	return f
}

// provisionArgs is the one command the tests run, again and again.
func (f *chaosFleet) provisionArgs(extra ...string) []string {
	args := []string{"provision",
		"--manifest", f.manifest, "--ledger", f.ledger,
		"--id-scope", dpssim.DefaultIDScope, "--endpoint", f.srv.URL, "--ca-file", f.caFile,
		"--rate", "-1", "--poll-rate", "-1", "--request-timeout", "10s", "--timeout-per-device", "2m",
		"--settle", f.settle.String(),
	}
	if f.groupKey != nil {
		args = append(args, "--group-key-file", f.groupKeyFile)
	}
	return append(args, extra...)
}

// simRegistrations reads GET /_sim/registrations over HTTPS, the way an
// operator would check the simulator, keyed by registration id.
func (f *chaosFleet) simRegistrations(t testing.TB) map[string]dpssim.RegistrationInfo {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: f.srv.ClientTLSConfig()}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(f.srv.URL + "/_sim/registrations")
	if err != nil {
		t.Fatalf("GET /_sim/registrations: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /_sim/registrations: HTTP %d", resp.StatusCode)
	}
	var list []dpssim.RegistrationInfo
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatalf("decode /_sim/registrations: %v", err)
	}
	m := make(map[string]dpssim.RegistrationInfo, len(list))
	for _, r := range list {
		m[r.RegistrationID] = r
	}
	return m
}

// ledgerDevices reads every device row of the ledger (read-only, as status
// and report do), keyed by registration id.
func ledgerDevices(t testing.TB, path string) (map[string]ledger.Device, *ledger.Ledger) {
	t.Helper()
	led, err := ledger.Open(context.Background(), path, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open ledger read-only: %v", err)
	}
	t.Cleanup(func() { led.Close() })
	m := map[string]ledger.Device{}
	if err := led.Each(context.Background(), nil, func(d ledger.Device) error {
		m[d.RegistrationID] = d
		return nil
	}); err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	return m, led
}

// simEvent is one device request as the simulator answered it.
type simEvent = simtrace.Event

// simTrace records, in order, every device request the simulator answers
// (through its Logger, which sees each request before its answer is
// flushed), so that tests can replay a device's history as DPS saw it,
// including requests whose answer a killed process never read. It also
// says when a run's devices have their final answers, to time the
// final-write kill. The pass/fail oracle is not this trace but the
// simulator's own count of registrations (see internal/simtrace).
type simTrace struct {
	sim *dpssim.Server

	mu       sync.Mutex
	byID     map[string][]simEvent
	answered map[string]bool // the device was told a final state since resetAnswered
	since    time.Time       // a final answer counts only for a registration that took effect since

	registers, polls, lookups, nAnswered atomic.Int64
}

// resetAnswered starts counting final answers afresh, for a new run: only
// answers about a registration that took effect at or after since (the
// stage's start) count, so that a lookup showing the record of an earlier
// stage is not taken for the campaign's answer.
func (tr *simTrace) resetAnswered(since time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	clear(tr.answered)
	tr.since = since
	tr.nAnswered.Store(0)
}

func newSimTrace(sim *dpssim.Server) *simTrace {
	return &simTrace{sim: sim, byID: map[string][]simEvent{}, answered: map[string]bool{}}
}

func (tr *simTrace) Enabled(context.Context, slog.Level) bool { return true }
func (tr *simTrace) WithAttrs([]slog.Attr) slog.Handler       { return tr }
func (tr *simTrace) WithGroup(string) slog.Handler            { return tr }

func (tr *simTrace) Handle(_ context.Context, r slog.Record) error {
	id, ev := simtrace.FromRecord(r)
	final := false
	switch ev.Kind {
	case "register":
		tr.registers.Add(1)
	case "poll":
		tr.polls.Add(1)
		final = ev.Status == http.StatusOK // polls answer 200 only with a final state
	case "lookup":
		tr.lookups.Add(1)
		if ev.Status == http.StatusOK {
			tr.mu.Lock()
			since := tr.since
			tr.mu.Unlock()
			ri, _ := tr.sim.Registration(id)
			n := len(ri.RegisterTimes)
			final = ri.Status.Final() && n > 0 && !ri.RegisterTimes[n-1].Before(since)
		}
	default:
		return nil // a request that never named a device operation
	}
	tr.mu.Lock()
	tr.byID[id] = append(tr.byID[id], ev)
	if final && !tr.answered[id] {
		tr.answered[id] = true
		tr.nAnswered.Add(1)
	}
	tr.mu.Unlock()
	return nil
}

// events returns the requests the simulator answered for one device.
func (tr *simTrace) events(id string) []simEvent {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]simEvent(nil), tr.byID[strings.ToLower(id)]...)
}

// requests is the total of device requests answered so far.
func (tr *simTrace) requests() int64 {
	return tr.registers.Load() + tr.polls.Load() + tr.lookups.Load()
}

// attemptLogs reads the whole attempt log of a ledger in one pass, oldest
// first, as histories keyed by registration id. (Ledger.Attempts reads the
// log of one device at a time by scanning it all, which is quadratic for a
// fleet.) It reads the file format directly: attempts.kind 1, 2, 3 are
// register, poll, lookup (ledger/migrations/0001_init.sql).
func attemptLogs(t testing.TB, path string) map[string][]simEvent {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.ToSlash(path)+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT d.registration_id, a.kind, a.http_status, a.at FROM attempts a JOIN devices d ON d.id = a.device ORDER BY a.rowid`)
	if err != nil {
		t.Fatalf("read attempt log of %s: %v", path, err)
	}
	defer rows.Close()
	kinds := map[int]string{1: "register", 2: "poll", 3: "lookup"}
	out := map[string][]simEvent{}
	for rows.Next() {
		var id string
		var kind, status int
		var at int64
		if err := rows.Scan(&id, &kind, &status, &at); err != nil {
			t.Fatal(err)
		}
		out[id] = append(out[id], simEvent{Kind: kinds[kind], Status: status, At: time.UnixMilli(at)})
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read attempt log of %s: %v", path, err)
	}
	return out
}

// teeHandler sends each log record to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.a.Enabled(ctx, l) || h.b.Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.a.Handle(ctx, r.Clone())
	if err2 := h.b.Handle(ctx, r); err == nil {
		err = err2
	}
	return err
}

func (h teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{h.a.WithAttrs(as), h.b.WithAttrs(as)}
}

func (h teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{h.a.WithGroup(name), h.b.WithGroup(name)}
}

// lockedBuffer is a bytes.Buffer that a child process's output copier
// writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// phase is a moment of a provisioning run at which the crash loop kills it.
type phase string

const (
	phaseValidation phase = "validation" // reading and checking the manifest, before any request
	phasePuts       phase = "puts"       // register PUTs in flight
	phasePolls      phase = "polls"      // polls and lookups in flight
	phaseFinal      phase = "final"      // every device has its final answer: final ledger writes, run record, close
	phaseNone       phase = "none"       // let the run finish
)

// kill is one SIGKILL the crash loop delivered.
type kill struct {
	target, at phase
	after      time.Duration // since the process started
	powerLoss  bool          // the ledger files were replaced by a copy taken at the kill, without -shm
}

// stage is one command the crash loop runs until it is done: the first
// provisioning of the fleet, then re-registration campaigns. Its window at
// the simulator is from its start to the next stage's: every registration
// that took effect in it (RegisterTimes) is the stage's.
type stage struct {
	name    string          // for messages
	kind    string          // campaign kind ("reprovision", "retry-failed"); "" for the first provisioning
	args    []string        // the command, the same for every run of the stage
	targets map[string]bool // the devices the stage must register, each exactly once

	start        time.Time // the stage's window opens
	prevCampaign int64     // the last campaign before the stage, 0 = none
	campaign     int64     // the campaign the stage ran, once the ledger has it
	before       dpssim.Stats

	runs      int
	kills     []kill
	openShown int  // kills after which status printed the stage's campaign as open
	completed bool // a kill landed after the campaign was recorded completed
	exit      int  // the exit code of the run that finished the stage

	// Figures from verifyStage.
	registers, maxRegs, rePUTs int
	stats                      dpssim.Stats // the simulator's totals during the stage
}

// crashLoop runs each stage's command until it is done, killing it with
// SIGKILL as a schedule says.
type crashLoop struct {
	t     *testing.T
	f     *chaosFleet
	rng   *mrand.Rand
	kills []kill
	runs  int
	// putsFrom and putsSpan place the "puts" kill: after putsFrom plus a
	// random number below putsSpan register answers in the run (default
	// 1 and 80), never more than the devices left to do.
	putsFrom, putsSpan int64

	stages []*stage
	st     *stage // the stage running
}

// runOutcome is how one run of a stage's command ended.
type runOutcome struct {
	kill           *kill // nil when the process exited by itself
	code           int
	stdout, stderr string
}

// runOnce starts the stage's command and kills it at target. It returns the
// kill, or the exit code when the process ended first.
func (c *crashLoop) runOnce(target phase, powerLoss bool) runOutcome {
	t := c.t
	c.runs++
	c.st.runs++
	var outBuf, errBuf lockedBuffer
	cmd := exec.Command(os.Args[0], c.st.args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	baseReq := c.f.trace.requests()
	baseReg, basePoll := c.f.trace.registers.Load(), c.f.trace.polls.Load()+c.f.trace.lookups.Load()
	var todo int64 // devices this run has to finish
	if target == phasePuts || target == phasePolls || target == phaseFinal {
		todo = int64(max(c.left(), 1))
	}
	if target == phaseFinal {
		c.f.trace.resetAnswered(c.st.start)
	}
	// threshold is a random count of requests in [from, from+span), never
	// more than the devices left, so a small campaign is killed too.
	threshold := func(from, span int64) int64 {
		n := from + c.rng.Int64N(span)
		if n > todo {
			n = 1 + c.rng.Int64N(todo)
		}
		return n
	}
	putsFrom, putsSpan := c.putsFrom, c.putsSpan
	if putsFrom <= 0 || putsSpan <= 0 {
		putsFrom, putsSpan = 1, 80
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dps-batch: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ended := func(err error) runOutcome {
		return runOutcome{code: exitCodeOf(t, err), stdout: outBuf.String(), stderr: errBuf.String()}
	}

	// The trigger: a condition on what the simulator has seen in this run,
	// then a random delay, so kills land at varied instants of each phase.
	var ready func() bool
	var jitter time.Duration
	switch target {
	case phaseValidation:
		ready = func() bool { return strings.Contains(errBuf.String(), "Validating") }
		jitter = time.Duration(c.rng.Int64N(int64(150 * time.Millisecond)))
	case phasePuts:
		n := threshold(putsFrom, putsSpan)
		ready = func() bool { return c.f.trace.registers.Load()-baseReg >= n }
		jitter = time.Duration(c.rng.Int64N(int64(3 * time.Millisecond)))
	case phasePolls:
		n := threshold(1, 80)
		ready = func() bool { return c.f.trace.polls.Load()+c.f.trace.lookups.Load()-basePoll >= n }
		jitter = time.Duration(c.rng.Int64N(int64(3 * time.Millisecond)))
	case phaseFinal:
		// Every device this run has to finish has its final answer.
		ready = func() bool { return c.f.trace.nAnswered.Load() >= todo }
		jitter = time.Duration(c.rng.Int64N(int64(4 * time.Millisecond)))
	default:
		ready = func() bool { return false }
	}
	tick := time.NewTicker(500 * time.Microsecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Minute)
	for !ready() {
		select {
		case err := <-exited:
			return ended(err)
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("run %d: no %s phase within 5 minutes; stderr:\n%s", c.runs, target, errBuf.String())
		case <-tick.C:
		}
	}
	if jitter > 0 {
		select {
		case err := <-exited:
			return ended(err)
		case <-time.After(jitter):
		}
	}
	at := target
	if target == phaseValidation && c.f.trace.requests() != baseReq {
		// The manifest was checked sooner than the delay: requests had begun.
		at = phasePolls
		if c.f.trace.registers.Load() != baseReg {
			at = phasePuts
		}
	}
	_ = cmd.Process.Kill() // SIGKILL
	err := <-exited
	if code := exitCodeOf(t, err); code != -1 {
		// It finished before the signal landed.
		return ended(err)
	}
	k := &kill{target: target, at: at, after: time.Since(start), powerLoss: powerLoss}
	if powerLoss {
		c.powerLoss()
	}
	return runOutcome{kill: k, code: -1, stdout: outBuf.String(), stderr: errBuf.String()}
}

// lastCampaign reads the ledger's most recent campaign; ok is false when
// there is none (or no ledger yet).
func (c *crashLoop) lastCampaign() (camp ledger.Campaign, ok bool) {
	if _, err := os.Stat(c.f.ledger); os.IsNotExist(err) {
		return ledger.Campaign{}, false
	}
	_, led := ledgerDevices(c.t, c.f.ledger)
	defer led.Close()
	camp, ok, err := led.LastCampaign(context.Background())
	if err != nil {
		c.t.Fatalf("read last campaign: %v", err)
	}
	return camp, ok
}

// stageCampaign is the campaign the running stage started, from the
// ledger's last one; 0 while it has none.
func (c *crashLoop) stageCampaign(last ledger.Campaign, ok bool) int64 {
	if !ok || last.ID <= c.st.prevCampaign {
		return 0
	}
	return last.ID
}

// left is the number of the stage's devices not yet done: in a final state
// (for a campaign: reached in the stage's campaign).
func (c *crashLoop) left() int {
	if _, err := os.Stat(c.f.ledger); os.IsNotExist(err) {
		return len(c.st.targets)
	}
	devs, led := ledgerDevices(c.t, c.f.ledger)
	last, ok, err := led.LastCampaign(context.Background())
	led.Close()
	if err != nil {
		c.t.Fatalf("read last campaign: %v", err)
	}
	camp := c.stageCampaign(last, ok)
	n := 0
	for id := range c.st.targets {
		d := devs[id]
		done := d.State.Final()
		if c.st.kind != "" {
			done = done && camp != 0 && d.CampaignID == camp
		}
		if !done {
			n++
		}
	}
	return n
}

// powerLoss replaces the ledger by a copy of its files as the kill left
// them, minus the shared-memory index, which does not survive a reboot:
// SQLite must rebuild it from the write-ahead log.
func (c *crashLoop) powerLoss() {
	t := c.t
	for _, suffix := range []string{"", "-wal"} {
		src := c.f.ledger + suffix
		b, err := os.ReadFile(src)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		tmp := src + ".copy"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, src); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(c.f.ledger + "-shm"); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// exitCodeOf returns the exit code of a finished command, or -1 when it was
// killed by a signal.
func exitCodeOf(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("wait for dps-batch: %v", err)
	}
	if ee.ExitCode() == -1 {
		return -1
	}
	return ee.ExitCode()
}

// starts are the instants the stages so far began: the windows
// simtrace.PerWindow splits registrations into.
func (c *crashLoop) starts() []time.Time {
	out := make([]time.Time, len(c.stages))
	for i, st := range c.stages {
		out[i] = st.start
	}
	return out
}

// inStage counts the registrations that took effect at DPS in the running
// stage's window.
func (c *crashLoop) inStage(ri dpssim.RegistrationInfo) int {
	counts, _ := simtrace.PerWindow(ri.RegisterTimes, c.starts())
	return counts[len(counts)-1]
}

// explain is everything known about one device, for a failure message: the
// simulator's count and times, its request log lines, the ledger row and
// the attempt log.
func (c *crashLoop) explain(id string) string {
	var b strings.Builder
	ri, _ := c.f.sim.Registration(id)
	fmt.Fprintf(&b, "\n    simulator: status %q, %d registrations took effect at %v; %d register requests (%d late effects)",
		ri.Status, ri.Registers, ri.RegisterTimes, ri.RegisterRequests, ri.LateEffects)
	for i, st := range c.stages {
		fmt.Fprintf(&b, "\n    stage %d (%s) began %s", i+1, st.name, st.start.Format(time.RFC3339Nano))
	}
	b.WriteString("\n    simulator request log:")
	for line := range strings.Lines(c.f.simLog.String()) {
		if strings.Contains(line, " device="+id+" ") {
			b.WriteString("\n      " + strings.TrimSpace(line))
		}
	}
	if _, err := os.Stat(c.f.ledger); err == nil {
		devs, led := ledgerDevices(c.t, c.f.ledger)
		led.Close()
		d := devs[id]
		fmt.Fprintf(&b, "\n    ledger row: state %s, campaign %d, attempts %d, operation %q, put at %v, record %+v, run %d, error %q",
			d.State, d.CampaignID, d.Attempts, d.OperationID, d.PutAt, d.Record, d.RunID, d.ErrorMessage)
		b.WriteString("\n    ledger attempt log:")
		for _, e := range attemptLogs(c.t, c.f.ledger)[id] {
			fmt.Fprintf(&b, " %s %d @%s;", e.Kind, e.Status, e.At.Format("15:04:05.000"))
		}
	}
	return b.String()
}

// checkAfterKill asserts what must hold at any instant, even right after
// SIGKILL, judged from the simulator's own count of registrations:
//   - no device was registered twice in the stage's window;
//   - every PUT was recorded as an intent first: the ledger counts at least
//     the registrations that took effect as billable, and no device DPS
//     received a PUT from is pending or without a first attempt;
//   - no device DPS registered in this stage is pending or retryable in the
//     ledger (a re-run would register it again);
//   - in a campaign, the campaign was recorded before its first
//     registration, and each device registered in it carries its id;
//   - status can read the ledger, and shows the campaign as open exactly
//     when the ledger has it open.
func (c *crashLoop) checkAfterKill(k *kill) {
	t := c.t
	t.Helper()
	st := c.st
	where := fmt.Sprintf("%s: after kill %d (%s)", st.name, len(c.kills), k.at)
	if _, err := os.Stat(c.f.ledger); os.IsNotExist(err) {
		// Killed before the ledger was created: DPS must have seen nothing.
		if n := c.f.sim.Stats().RegisterRequests; n > 0 {
			t.Errorf("%s: no ledger, yet the simulator received %d register PUTs", where, n)
		}
		return
	}
	devs, led := ledgerDevices(t, c.f.ledger)
	last, hasLast, err := led.LastCampaign(context.Background())
	if err != nil {
		t.Fatalf("%s: read last campaign: %v", where, err)
	}
	camp := c.stageCampaign(last, hasLast)
	bad := 0
	report := func(id, format string, args ...any) {
		if bad++; bad <= 5 {
			t.Errorf("%s: %s: %s%s", where, id, fmt.Sprintf(format, args...), c.explain(id))
		}
	}
	for _, ri := range c.f.sim.Registrations() {
		id := ri.RegistrationID
		d, ok := devs[id]
		if !ok {
			if ri.RegisterRequests > 0 {
				report(id, "simulator saw %d register PUT(s) from a device the ledger does not know", ri.RegisterRequests)
			}
			continue
		}
		n := c.inStage(ri)
		switch {
		case n > 1:
			report(id, "registered %d times at DPS in this stage", n)
		case d.Attempts < ri.Registers:
			report(id, "ledger counts %d billable register PUT(s), yet %d registrations took effect at DPS: a PUT was sent before its intent was durable", d.Attempts, ri.Registers)
		case ri.RegisterRequests > 0 && (d.State == ledger.StatePending || d.FirstAttemptAt.IsZero()):
			report(id, "simulator received %d register PUT(s), yet the ledger says %s, first attempt %v: a PUT was sent before its intent was durable", ri.RegisterRequests, d.State, d.FirstAttemptAt)
		case n > 0 && (d.State == ledger.StatePending || d.State == ledger.StateRetryable):
			report(id, "registered at DPS in this stage (now %s) but %s in the ledger: a re-run would register it again", ri.Status, d.State)
		case n > 0 && st.kind != "" && camp == 0:
			report(id, "registered at DPS by the %s campaign before the ledger recorded the campaign", st.kind)
		case n > 0 && st.kind != "" && d.CampaignID != camp:
			report(id, "registered at DPS in campaign #%d, but the ledger says campaign %d: a re-run could register it again", camp, d.CampaignID)
		}
	}
	if err := led.IntegrityCheck(context.Background()); err != nil {
		t.Errorf("%s: %v", where, err)
	}
	led.Close()
	code, out, errs := runCmd(t, "status", "--ledger", c.f.ledger, "--json")
	var js struct {
		Devices  int `json:"devices"`
		Campaign *struct {
			ID   int64 `json:"id"`
			Open bool  `json:"open"`
		} `json:"campaign"`
	}
	if code != exitOK {
		t.Errorf("%s: status exit %d: %s", where, code, errs)
	} else if err := json.Unmarshal([]byte(out), &js); err != nil || js.Devices != len(c.f.ids) {
		t.Errorf("%s: status --json printed %q (%v)", where, out, err)
	} else if hasLast && (js.Campaign == nil || js.Campaign.ID != last.ID || js.Campaign.Open != last.Open()) {
		t.Errorf("%s: status --json shows campaign %+v; the ledger's last one is #%d, open %v", where, js.Campaign, last.ID, last.Open())
	}
	if st.kind == "" {
		return
	}
	code, out, errs = runCmd(t, "status", "--ledger", c.f.ledger)
	shows := strings.Contains(out, "Open campaign #")
	switch {
	case code != exitOK:
		t.Errorf("%s: status exit %d: %s", where, code, errs)
	case camp != 0 && last.Open():
		want := fmt.Sprintf("Open campaign #%d (%s)", camp, st.kind)
		if !strings.Contains(out, want) {
			t.Errorf("%s: campaign #%d is open in the ledger, but status does not say %q:\n%s", where, camp, want, out)
		} else {
			st.openShown++
		}
	case shows:
		t.Errorf("%s: no campaign is open in the ledger, but status says so:\n%s", where, out)
	case camp != 0:
		// Killed after the run recorded the campaign completed, before it
		// exited.
		st.completed = true
	}
}

// runStage runs the stage's command until it is done: SIGKILL as schedule
// says, then the same command again until it exits by itself with nothing
// left to do (0, or 3 when the fleet has disabled devices). Exit 4 (work
// left) means: run it again.
func (c *crashLoop) runStage(st *stage, schedule []phase) {
	t := c.t
	last, ok := c.lastCampaign()
	if ok {
		st.prevCampaign = last.ID
	}
	st.before = c.f.sim.Stats()
	st.start = time.Now()
	c.stages = append(c.stages, st)
	c.st = st
	wantExit := exitOK
	if len(c.f.disabled) > 0 {
		wantExit = exitDeviceFails // the disabled devices stay disabled
	}
	for i := 0; ; i++ {
		target := phaseNone
		if i < len(schedule) {
			target = schedule[i]
		}
		runStart := time.Now()
		r := c.runOnce(target, c.runs%4 == 3)
		if k := r.kill; k != nil {
			t.Logf("%s, run %d: killed during %s after %v", st.name, st.runs, k.at, k.after.Round(time.Millisecond))
			c.kills = append(c.kills, *k)
			st.kills = append(st.kills, *k)
			c.checkAfterKill(k)
			if t.Failed() {
				t.FailNow()
			}
			if st.completed {
				// The same command would now start a new campaign and
				// register its devices again; an operator reading status
				// sees this one completed and stops here.
				t.Logf("%s, run %d: killed after campaign #%d was recorded completed; status says so, the stage is done", st.name, st.runs, c.stageCampaign(c.lastCampaign()))
				return
			}
			continue
		}
		t.Logf("%s, run %d: exit %d after %v", st.name, st.runs, r.code, time.Since(runStart).Round(time.Millisecond))
		switch r.code {
		case exitOK, exitDeviceFails:
		case exitResumable:
			t.Logf("%s, run %d exited 4 (resumable); running it again", st.name, st.runs)
			continue
		default:
			t.Fatalf("%s, run %d exited %d, want 0, 3 or 4; stderr:\n%s", st.name, st.runs, r.code, r.stderr)
		}
		st.exit = r.code
		if r.code != wantExit {
			t.Errorf("%s, run %d exited %d with nothing left to do, want %d; stderr:\n%s", st.name, st.runs, r.code, wantExit, r.stderr)
		}
		if target != phaseNone && i < len(schedule)-1 {
			// The stage finished before the schedule did: nothing is left
			// to kill in the middle of.
			t.Logf("%s, run %d finished before its %s kill", st.name, st.runs, target)
		}
		return
	}
}

// verifyStage asserts a finished stage's end state. The pass/fail oracle is
// the simulator's: each of the stage's devices was registered exactly once
// in the stage's window, every other device not at all. Then: every enabled
// device assigned, the disabled ones disabled, the ledger equal to GET
// /_sim/registrations (status, hub, device id), a campaign's devices
// carrying its id and the campaign recorded completed, and a ledger that
// passes PRAGMA integrity_check. The client-view re-PUT count (simtrace.RePUTs
// on the simulator's request history and the ledger's attempt log, from the
// stage's start) is kept as a diagnostic figure.
func (c *crashLoop) verifyStage(st *stage) {
	t := c.t
	t.Helper()
	f := c.f
	// A late PUT takes effect LateEffectDelay after it arrived: let any
	// still due land in this stage's window, not the next one's.
	time.Sleep(time.Duration(f.sim.Knobs().Faults.LateEffectDelay) + 250*time.Millisecond)
	sims := f.simRegistrations(t)
	devs, led := ledgerDevices(t, f.ledger)
	if err := led.IntegrityCheck(context.Background()); err != nil {
		t.Errorf("%s: integrity check: %v", st.name, err)
	}
	if st.kind != "" {
		last, ok, err := led.LastCampaign(context.Background())
		switch {
		case err != nil:
			t.Fatalf("%s: read last campaign: %v", st.name, err)
		case !ok || last.ID <= st.prevCampaign:
			t.Errorf("%s: the ledger recorded no new campaign (last: %+v)", st.name, last)
		case last.Kind != st.kind || last.Outcome != ledger.CampaignCompleted || last.Open():
			t.Errorf("%s: campaign #%d is %s %q (open %v), want a completed %s campaign", st.name, last.ID, last.Kind, last.Outcome, last.Open(), st.kind)
		default:
			st.campaign = last.ID
		}
	}
	logs := attemptLogs(t, f.ledger)
	if len(devs) != len(f.ids) {
		t.Errorf("%s: ledger has %d devices, want %d", st.name, len(devs), len(f.ids))
	}
	starts := c.starts()
	idx := len(starts) - 1
	for i, s := range c.stages {
		if s == st {
			idx = i
		}
	}
	bad := 0
	for _, id := range f.ids {
		d, ri := devs[id], sims[id]
		var errs []string
		counts, _ := simtrace.PerWindow(ri.RegisterTimes, starts)
		n := counts[idx]
		st.registers += n
		st.maxRegs = max(st.maxRegs, n)
		want := 0
		if st.targets[id] {
			want = 1
		}
		if n != want {
			errs = append(errs, fmt.Sprintf("registered %d times at DPS during %s, want exactly %d", n, st.name, want))
		}
		if f.disabled[id] {
			if d.State != ledger.StateDisabled || ri.Status != "disabled" {
				errs = append(errs, fmt.Sprintf("ledger state %s (%s), simulator status %q; want disabled (its enrollment is)", d.State, d.ErrorMessage, ri.Status))
			}
		} else {
			if d.State != ledger.StateAssigned {
				errs = append(errs, fmt.Sprintf("ledger state %s (%s), want assigned", d.State, d.ErrorMessage))
			}
			if got, want := string(ri.Status), string(d.State); got != want {
				errs = append(errs, fmt.Sprintf("simulator status %q, ledger state %q", got, want))
			}
			if d.AssignedHub != ri.AssignedHub || d.AssignedHub == "" {
				errs = append(errs, fmt.Sprintf("ledger hub %q, simulator hub %q", d.AssignedHub, ri.AssignedHub))
			}
			if d.DeviceID != ri.DeviceID || d.DeviceID != f.deviceIDs[id] {
				errs = append(errs, fmt.Sprintf("ledger device id %q, simulator %q, want %q", d.DeviceID, ri.DeviceID, f.deviceIDs[id]))
			}
		}
		if st.campaign != 0 {
			if in := d.CampaignID == st.campaign; in != st.targets[id] {
				errs = append(errs, fmt.Sprintf("ledger campaign %d; the stage's campaign is #%d and the device is one of its devices: %v", d.CampaignID, st.campaign, st.targets[id]))
			}
		}
		if d.Attempts < ri.Registers {
			errs = append(errs, fmt.Sprintf("ledger recorded %d register intents, %d registrations took effect at DPS", d.Attempts, ri.Registers))
		}
		// Diagnostic only: the client-view pattern.
		st.rePUTs += simtrace.RePUTs(simtrace.Since(f.trace.events(id), st.start)) + simtrace.RePUTs(simtrace.Since(logs[id], st.start.Truncate(time.Millisecond)))
		if len(errs) > 0 {
			if bad++; bad <= 10 {
				t.Errorf("%s: device %s: %s%s", st.name, id, strings.Join(errs, "; "), c.explain(id))
			}
		}
	}
	if bad > 10 {
		t.Errorf("%s: ... %d devices wrong in all", st.name, bad)
	}
	after := f.sim.Stats()
	st.stats = dpssim.Stats{
		RegisterRequests: after.RegisterRequests - st.before.RegisterRequests,
		Registers:        after.Registers - st.before.Registers,
		Polls:            after.Polls - st.before.Polls,
		Lookups:          after.Lookups - st.before.Lookups,
		Conflicts:        after.Conflicts - st.before.Conflicts,
		LateEffects:      after.LateEffects - st.before.LateEffects,
		Faults:           after.Faults - st.before.Faults,
	}
}

// logStage prints a stage's figures.
func (c *crashLoop) logStage(st *stage) {
	byPhase := map[phase]int{}
	powerLosses := 0
	for _, k := range st.kills {
		byPhase[k.at]++
		if k.powerLoss {
			powerLosses++
		}
	}
	campaign, open := "", ""
	if st.kind != "" {
		campaign = fmt.Sprintf(" campaign #%d;", st.campaign)
		open = fmt.Sprintf("; status showed the open campaign after %d of them", st.openShown)
		if st.completed {
			open += " (the last one landed after the campaign was recorded completed)"
		}
	}
	c.t.Logf("%s:%s %d devices to register, %d runs, %d kills (%d validation, %d during PUTs, %d during polls, %d during the final write; %d with power-loss ledger copies)%s; "+
		"registrations at DPS: %d, at most %d per device; %d register requests, %d polls, %d lookups, %d 409203, %d late effects, %d faults injected; client-view re-PUT pattern (diagnostic): %d",
		st.name, campaign, len(st.targets), st.runs, len(st.kills), byPhase[phaseValidation], byPhase[phasePuts], byPhase[phasePolls], byPhase[phaseFinal], powerLosses, open,
		st.registers, st.maxRegs, st.stats.RegisterRequests, st.stats.Polls, st.stats.Lookups, st.stats.Conflicts, st.stats.LateEffects, st.stats.Faults, st.rePUTs)
}

// schedule lists n kills: every phase in turn, the final-write kill last,
// when every device of the run has its answer.
func schedule(n int) []phase {
	cycle := []phase{phaseValidation, phasePuts, phasePolls, phasePuts, phasePolls}
	var out []phase
	for len(out) < n-1 {
		out = append(out, cycle[len(out)%len(cycle)])
	}
	return append(out, phaseFinal)
}

// TestCrashLoop provisions a mixed fleet of at least 1,000 devices and kills
// the dps-batch process with SIGKILL at random instants of every phase,
// re-running the same command after each kill until it is done. Some kills
// also throw away the ledger's shared-memory index, as a power loss would.
// Then, on the same simulator and ledger, a --reprovision campaign and a
// --retry-failed campaign (the fleet's disabled devices) are killed the same
// way. The oracle is the simulator's count of registrations per device and
// stage: exactly one for each device the stage must register, none for the
// others, whatever the kills.
//
// Late PUTs: some register PUTs take effect lateEffectDelay after they
// arrived, whether or not their client is still there (killed). Exactly once
// rests on no PUT taking effect later than --settle after it ended (or after
// its intent plus --request-timeout, when a kill hid its end): the runner
// sends another PUT only after a lookup that finds nothing once that window
// has passed. So lateEffectDelay stays well below --settle here; a DPS that
// took longer would defeat any client.
//
// Long form: DPSBATCH_CHAOS_LONG=1 (make chaos).
func TestCrashLoop(t *testing.T) {
	spec := fleetSpec{x509Group: 880, x509Individual: 20, symIndividual: 80, symDisabled: 20, symGroup: 100}
	kills := [3]int{12, 6, 4} // first provisioning, reprovision, retry-failed
	workers := "200"
	// A late PUT killed in flight takes effect about when the next run's
	// first lookups arrive: a runner that did not wait out the settle
	// window would register the device again.
	settle := 5 * time.Second
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	faults := dpssim.Faults{Seed: seed, LateEffectRate: 0.05, LateEffectDelay: dpssim.Duration(2 * time.Second)}
	if chaosLong() {
		spec = fleetSpec{x509Group: 3900, x509Individual: 100, symIndividual: 400, symDisabled: 100, symGroup: 500}
		kills = [3]int{40, 16, 8}
		workers = "400"
		settle = 6 * time.Second
		// The long form also fails requests, drops connections and loses
		// answers, so kills land in retries and lookups too.
		faults = dpssim.Faults{Seed: seed, RegisterErrorRate: 0.05, PollErrorRate: 0.05, LookupErrorRate: 0.05,
			DropConnectionRate: 0.02, DropResponseRate: 0.02,
			LateEffectRate: 0.05, LateEffectDelay: dpssim.Duration(2500 * time.Millisecond)}
	} else if testing.Short() {
		t.Skip("crash loop: long test")
	}
	if 2*time.Duration(faults.LateEffectDelay) > settle {
		t.Fatalf("late effects after %v with --settle %v: exactly once needs the delay well below the settle window", time.Duration(faults.LateEffectDelay), settle)
	}
	f := newChaosFleet(t, spec, func(c *dpssim.Config) { c.Faults = faults })
	f.settle = settle
	c := &crashLoop{t: t, f: f, rng: mrand.New(mrand.NewPCG(uint64(seed), 1))}
	// --request-timeout bounds how long a PUT killed in flight may have
	// been on its way: the next run waits it plus --settle after the intent.
	base := f.provisionArgs("--workers", workers, "--quiet", "--request-timeout", "5s")
	all, enabled := map[string]bool{}, map[string]bool{}
	for _, id := range f.ids {
		all[id] = true
		if !f.disabled[id] {
			enabled[id] = true
		}
	}
	start := time.Now()

	first := &stage{name: "first provisioning", args: base, targets: all}
	c.runStage(first, schedule(kills[0]))
	c.verifyStage(first)
	c.logStage(first)
	if t.Failed() {
		t.FailNow()
	}

	// While a campaign's operation runs, the status lookup shows the
	// device's previous record: the hardest case for telling "our PUT took
	// effect" from "nothing yet" (dpssim README, lookupWhileAssigning).
	k := f.sim.Knobs()
	k.LookupWhileAssigning = dpssim.LookupPrevious
	if err := f.sim.SetKnobs(k); err != nil {
		t.Fatal(err)
	}
	reprov := &stage{name: "reprovision campaign", kind: "reprovision", args: append(slices.Clone(base), "--reprovision"), targets: enabled}
	c.runStage(reprov, schedule(kills[1]))
	c.verifyStage(reprov)
	c.logStage(reprov)
	if t.Failed() {
		t.FailNow()
	}

	retry := &stage{name: "retry-failed campaign", kind: "retry-failed", args: append(slices.Clone(base), "--retry-failed"), targets: f.disabled}
	c.runStage(retry, schedule(kills[2]))
	c.verifyStage(retry)
	c.logStage(retry)

	st := f.sim.Stats()
	maxRegs := 0
	for _, s := range c.stages {
		maxRegs = max(maxRegs, s.maxRegs)
	}
	t.Logf("crash loop: %d devices (%d disabled), %d stages (2 campaigns), %d runs, %d kills survived, at most %d registration(s) per device per stage at DPS; totals: %d register requests, %d registrations, %d polls, %d lookups, %d late effects, %d faults injected, in %v",
		len(f.ids), len(f.disabled), len(c.stages), c.runs, len(c.kills), maxRegs,
		st.RegisterRequests, st.Registers, st.Polls, st.Lookups, st.LateEffects, st.Faults, time.Since(start).Round(time.Millisecond))
	if len(first.kills) < 10 {
		t.Errorf("first provisioning: only %d kills landed, want at least 10", len(first.kills))
	}
	byPhase := map[phase]int{}
	for _, k := range first.kills {
		byPhase[k.at]++
	}
	for _, p := range []phase{phaseValidation, phasePuts, phasePolls} {
		if byPhase[p] == 0 {
			t.Errorf("first provisioning: no kill landed during %s", p)
		}
	}
	for _, s := range []*stage{reprov, retry} {
		if s.openShown == 0 {
			t.Errorf("%s: no kill landed while the campaign was open (status never showed it): the stage tested nothing", s.name)
		}
	}
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		t.Fatal(err)
	}
	return b
}

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
}

func (s fleetSpec) total() int { return s.x509Group + s.x509Individual + s.symIndividual + s.symGroup }

// chaosFleet is a mixed fleet on disk (certificates, keys, manifest, group
// key file) and a simulator that admits all of it, serving HTTPS on loopback
// inside the test, so its counters outlive every dps-batch process.
type chaosFleet struct {
	dir, manifest, ledger, caFile, groupKeyFile string
	ids                                         []string
	groupKey                                    []byte
	symKeys                                     map[string][]byte // individual symmetric keys by registration id
	deviceIDs                                   map[string]string // expected IoT hub device id by registration id

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
// including requests whose answer a killed process never read.
type simTrace struct {
	sim *dpssim.Server

	mu       sync.Mutex
	byID     map[string][]simEvent
	answered map[string]bool // the device was told a final state since resetAnswered

	registers, polls, lookups, nAnswered atomic.Int64
}

// resetAnswered starts counting final answers afresh, for a new run.
func (tr *simTrace) resetAnswered() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	clear(tr.answered)
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
			ri, _ := tr.sim.Registration(id)
			final = ri.Status.Final()
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
	rows, err := db.Query(`SELECT d.registration_id, a.kind, a.http_status FROM attempts a JOIN devices d ON d.id = a.device ORDER BY a.rowid`)
	if err != nil {
		t.Fatalf("read attempt log of %s: %v", path, err)
	}
	defer rows.Close()
	kinds := map[int]string{1: "register", 2: "poll", 3: "lookup"}
	out := map[string][]simEvent{}
	for rows.Next() {
		var id string
		var kind, status int
		if err := rows.Scan(&id, &kind, &status); err != nil {
			t.Fatal(err)
		}
		out[id] = append(out[id], simEvent{Kind: kinds[kind], Status: status})
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

// crashLoop runs the same provision command until it exits 0, killing it
// with SIGKILL as schedule says.
type crashLoop struct {
	t     *testing.T
	f     *chaosFleet
	args  []string
	rng   *mrand.Rand
	kills []kill
	runs  int
}

// runOnce starts the command and kills it at target. It returns the kill,
// or the exit code when the process ended first.
func (c *crashLoop) runOnce(target phase, powerLoss bool) (k *kill, code int, stderr string) {
	t := c.t
	c.runs++
	var outBuf, errBuf lockedBuffer
	cmd := exec.Command(os.Args[0], c.args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	baseReq := c.f.trace.requests()
	baseReg, basePoll := c.f.trace.registers.Load(), c.f.trace.polls.Load()+c.f.trace.lookups.Load()
	var left int64 // devices this run has to finish, for the final-write kill
	if target == phaseFinal {
		left = int64(c.unfinished())
		c.f.trace.resetAnswered()
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dps-batch: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// The trigger: a condition on what the simulator has seen in this run,
	// then a random delay, so kills land at varied instants of each phase.
	var ready func() bool
	var jitter time.Duration
	switch target {
	case phaseValidation:
		ready = func() bool { return strings.Contains(errBuf.String(), "Validating") }
		jitter = time.Duration(c.rng.Int64N(int64(150 * time.Millisecond)))
	case phasePuts:
		n := 1 + c.rng.Int64N(80)
		ready = func() bool { return c.f.trace.registers.Load()-baseReg >= n }
		jitter = time.Duration(c.rng.Int64N(int64(3 * time.Millisecond)))
	case phasePolls:
		n := 1 + c.rng.Int64N(80)
		ready = func() bool { return c.f.trace.polls.Load()+c.f.trace.lookups.Load()-basePoll >= n }
		jitter = time.Duration(c.rng.Int64N(int64(3 * time.Millisecond)))
	case phaseFinal:
		// Every device this run has to finish has its final answer.
		ready = func() bool { return c.f.trace.nAnswered.Load() >= left }
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
			return nil, exitCodeOf(t, err), errBuf.String()
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("run %d: no %s phase within 5 minutes; stderr:\n%s", c.runs, target, errBuf.String())
		case <-tick.C:
		}
	}
	if jitter > 0 {
		select {
		case err := <-exited:
			return nil, exitCodeOf(t, err), errBuf.String()
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
		return nil, code, errBuf.String()
	}
	k = &kill{target: target, at: at, after: time.Since(start)}
	if powerLoss {
		c.powerLoss()
		k.powerLoss = true
	}
	return k, -1, errBuf.String()
}

// unfinished is the number of devices the ledger does not record as
// assigned (all of them before the ledger exists).
func (c *crashLoop) unfinished() int {
	if _, err := os.Stat(c.f.ledger); os.IsNotExist(err) {
		return len(c.f.ids)
	}
	devs, led := ledgerDevices(c.t, c.f.ledger)
	led.Close()
	n := 0
	for _, id := range c.f.ids {
		if devs[id].State != ledger.StateAssigned {
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

// checkAfterKill asserts what must hold at any instant, even right after
// SIGKILL: every register PUT that reached DPS was recorded as an intent
// first (ledger attempts >= the simulator's register requests), so no
// device DPS knows is pending or retryable in the ledger; and status can
// read the ledger the kill left behind.
func (c *crashLoop) checkAfterKill(k *kill) {
	t := c.t
	t.Helper()
	if _, err := os.Stat(c.f.ledger); os.IsNotExist(err) {
		// Killed before the ledger was created: DPS must have seen nothing.
		if n := c.f.sim.Stats().RegisterRequests; n > 0 {
			t.Errorf("after kill %d (%s): no ledger, yet the simulator received %d register PUTs", len(c.kills), k.at, n)
		}
		return
	}
	devs, led := ledgerDevices(t, c.f.ledger)
	for _, ri := range c.f.sim.Registrations() {
		d, ok := devs[ri.RegistrationID]
		if !ok {
			if ri.RegisterRequests > 0 {
				t.Errorf("after kill %d (%s): simulator saw %d register PUT(s) from %s, which the ledger does not know", len(c.kills), k.at, ri.RegisterRequests, ri.RegistrationID)
			}
			continue
		}
		if d.Attempts < ri.RegisterRequests {
			t.Errorf("after kill %d (%s): %s: ledger recorded %d register intent(s), simulator received %d PUT(s): a PUT was sent before its intent was durable",
				len(c.kills), k.at, ri.RegistrationID, d.Attempts, ri.RegisterRequests)
		}
		if ri.Status != "" && (d.State == ledger.StatePending || d.State == ledger.StateRetryable) {
			t.Errorf("after kill %d (%s): %s is %s at DPS but %s in the ledger: a re-run would register it again",
				len(c.kills), k.at, ri.RegistrationID, ri.Status, d.State)
		}
	}
	if err := led.IntegrityCheck(context.Background()); err != nil {
		t.Errorf("after kill %d (%s): %v", len(c.kills), k.at, err)
	}
	led.Close()
	code, out, errs := runCmd(t, "status", "--ledger", c.f.ledger, "--json")
	if code != exitOK {
		t.Errorf("after kill %d (%s): status exit %d: %s", len(c.kills), k.at, code, errs)
	} else if !strings.Contains(out, `"devices"`) {
		t.Errorf("after kill %d: status --json printed %q", len(c.kills), out)
	}
}

// chaosFigures are the numbers a crash loop or soak reports.
type chaosFigures struct {
	devices, kills, runs, rePUTs int
	byPhase                      map[phase]int
}

// verifyFleet asserts the end state: every device assigned, the ledger
// equal to GET /_sim/registrations (hub, device id, status), exactly one
// operation per device at DPS, no register PUT of a device DPS was
// assigning or had assigned (from the simulator's request history, which
// includes requests a killed process never recorded, and from the ledger's
// attempt log), and a ledger that passes PRAGMA integrity_check.
func verifyFleet(t *testing.T, f *chaosFleet) (rePUT int) {
	t.Helper()
	sims := f.simRegistrations(t)
	devs, led := ledgerDevices(t, f.ledger)
	if err := led.IntegrityCheck(context.Background()); err != nil {
		t.Errorf("integrity check: %v", err)
	}
	logs := attemptLogs(t, f.ledger)
	if len(devs) != len(f.ids) {
		t.Errorf("ledger has %d devices, want %d", len(devs), len(f.ids))
	}
	bad := 0
	for _, id := range f.ids {
		d, ri := devs[id], sims[id]
		var errs []string
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
		if ri.Registers != 1 {
			errs = append(errs, fmt.Sprintf("simulator started %d operations, want exactly 1", ri.Registers))
		}
		if d.Attempts < ri.RegisterRequests {
			errs = append(errs, fmt.Sprintf("ledger recorded %d register intents, simulator received %d PUTs", d.Attempts, ri.RegisterRequests))
		}
		if n := simtrace.RePUTs(f.trace.events(id)); n > 0 {
			rePUT += n
			errs = append(errs, fmt.Sprintf("simulator received %d register PUT(s) after it knew the device: %v", n, f.trace.events(id)))
		}
		if n := simtrace.RePUTs(logs[id]); n > 0 {
			errs = append(errs, fmt.Sprintf("attempt log shows %d register(s) after DPS answered for the device: %v", n, logs[id]))
		}
		if len(errs) > 0 {
			bad++
			if bad <= 10 {
				t.Errorf("device %s: %s", id, strings.Join(errs, "; "))
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d devices wrong in all", bad)
	}
	return rePUT
}

// TestCrashLoop provisions a mixed fleet of at least 1,000 devices and kills
// the dps-batch process with SIGKILL at random instants of every phase,
// re-running the same command after each kill until it exits 0. Some kills
// also throw away the ledger's shared-memory index, as a power loss would.
// Long form: DPSBATCH_CHAOS_LONG=1 (make chaos).
func TestCrashLoop(t *testing.T) {
	spec := fleetSpec{x509Group: 880, x509Individual: 20, symIndividual: 100, symGroup: 100}
	minKills := 12
	workers := "200"
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	var faults func(*dpssim.Config)
	if chaosLong() {
		spec = fleetSpec{x509Group: 3900, x509Individual: 100, symIndividual: 500, symGroup: 500}
		minKills = 40
		workers = "400"
		// The long form also fails requests, drops connections and loses
		// answers, so kills land in retries and lookups too.
		faults = func(c *dpssim.Config) {
			c.Faults = dpssim.Faults{Seed: seed, RegisterErrorRate: 0.05, PollErrorRate: 0.05, LookupErrorRate: 0.05,
				DropConnectionRate: 0.02, DropResponseRate: 0.02}
		}
	} else if testing.Short() {
		t.Skip("crash loop: long test")
	}
	f := newChaosFleet(t, spec, faults)
	c := &crashLoop{t: t, f: f, args: f.provisionArgs("--workers", workers, "--quiet"), rng: mrand.New(mrand.NewPCG(uint64(seed), 1))}

	// The schedule visits every phase several times; the final-write kill
	// comes last, when every device has its answer.
	cycle := []phase{phaseValidation, phasePuts, phasePolls, phasePuts, phasePolls}
	var schedule []phase
	for len(schedule) < minKills-1 {
		schedule = append(schedule, cycle[len(schedule)%len(cycle)])
	}
	schedule = append(schedule, phaseFinal)

	start := time.Now()
	for i := 0; ; i++ {
		target := phaseNone
		if i < len(schedule) {
			target = schedule[i]
		}
		runStart := time.Now()
		k, code, stderr := c.runOnce(target, i%4 == 3)
		if k != nil {
			t.Logf("run %d: killed during %s after %v", c.runs, k.at, k.after.Round(time.Millisecond))
			c.kills = append(c.kills, *k)
			c.checkAfterKill(k)
			if t.Failed() {
				t.FailNow()
			}
			continue
		}
		t.Logf("run %d: exit %d after %v", c.runs, code, time.Since(runStart).Round(time.Millisecond))
		switch code {
		case exitOK:
		case exitResumable:
			t.Logf("run %d exited 4 (resumable); running it again", c.runs)
			continue
		default:
			t.Fatalf("run %d exited %d, want 0 or 4; stderr:\n%s", c.runs, code, stderr)
		}
		if target == phaseNone || i >= len(schedule)-1 {
			break
		}
		// The fleet finished before the schedule did: nothing is left to
		// kill in the middle of.
		t.Logf("run %d finished before its %s kill", c.runs, target)
		break
	}
	byPhase := map[phase]int{}
	powerLosses := 0
	for _, k := range c.kills {
		byPhase[k.at]++
		if k.powerLoss {
			powerLosses++
		}
	}
	rePUT := verifyFleet(t, f)
	st := f.sim.Stats()
	t.Logf("crash loop: %d devices, %d runs, %d kills survived (%d validation, %d during PUTs, %d during polls, %d during the final write; %d with power-loss ledger copies), %d register PUTs (%d started operations), %d polls, %d lookups, %d faults injected, %d re-PUTs of devices DPS knew, in %v",
		len(f.ids), c.runs, len(c.kills), byPhase[phaseValidation], byPhase[phasePuts], byPhase[phasePolls], byPhase[phaseFinal], powerLosses,
		st.RegisterRequests, st.Registers, st.Polls, st.Lookups, st.Faults, rePUT, time.Since(start).Round(time.Millisecond))
	if len(c.kills) < 10 {
		t.Errorf("only %d kills landed, want at least 10", len(c.kills))
	}
	for _, p := range []phase{phaseValidation, phasePuts, phasePolls} {
		if byPhase[p] == 0 {
			t.Errorf("no kill landed during %s", p)
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

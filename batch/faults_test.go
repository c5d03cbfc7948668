package batch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/internal/simtrace"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// chaosLong selects the long forms (make chaos).
func chaosLong() bool { return os.Getenv("DPSBATCH_CHAOS_LONG") == "1" }

// Devices of the soak fleet that must fail, each for its own reason.
const (
	soakDisabled  = "disabled-00001"  // its individual enrollment is disabled
	soakWrongCert = "wrongcert-00001" // its certificate comes from a CA DPS does not know
	soakBadAlloc  = "badalloc-00001"  // its payload names a hub that is not linked
)

// soakFleet is a mixed fleet on disk plus a simulator, a client and a
// ledger for it, with a trace of every request the simulator answered.
type soakFleet struct {
	dir, manifest, ledgerPath string
	groupKey                  []byte
	ids                       []string // devices that must end assigned
	sim                       *dpssim.Server
	srv                       *dpssim.Running
	trace                     *requestTrace
	client                    *dps.Client
}

// newSoakFleet writes n devices (a quarter each: X.509 group, X.509
// individual, symmetric-key individual and group) plus the three devices
// that must fail, and starts a simulator for them.
func newSoakFleet(t *testing.T, n int, tweak func(*dpssim.Config)) *soakFleet {
	t.Helper()
	f := &soakFleet{dir: t.TempDir()}
	f.manifest = filepath.Join(f.dir, "manifest.csv")
	f.ledgerPath = filepath.Join(f.dir, "fleet.ledger")
	root, err := certs.NewRoot("soak root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("soak intermediate", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := certs.NewRoot("rogue root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteCertFile(filepath.Join(f.dir, "intermediate.pem"), false, inter.Cert); err != nil {
		t.Fatal(err)
	}
	f.groupKey = soakKey(t)
	retryAfter := 1
	cfg := dpssim.Config{
		IDScope:           dpssim.DefaultIDScope,
		Allocation:        dpssim.AllocationCustom, // payloads without a hub fall back to hashed
		RetryAfterSeconds: &retryAfter,
		AssignmentDelay:   dpssim.Duration(300 * time.Millisecond),
		Certificates:      []dpssim.CACertificate{{Name: "inter", PEM: string(certs.CertPEM(inter.Cert)), Verified: true}},
		Groups: []dpssim.EnrollmentGroup{
			{EnrollmentGroupID: "x509", Attestation: dpssim.Attestation{X509: &dpssim.X509Attestation{CACertificate: "inter"}}},
			{EnrollmentGroupID: "sas", Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(f.groupKey)}}},
		},
		Quotas: dpssim.Quotas{RegistrationsPerMinute: -1},
	}
	var rows bytes.Buffer
	rows.WriteString("registration_id,cert_path,key_path,chain_path,symmetric_key,payload\n")
	x509Row := func(id string, ca *certs.CA, chain string) *certs.Leaf {
		leaf, err := ca.NewDevice(id, certs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := certs.WriteLeaf(f.dir, leaf, id, false, false); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rows, "%s,%s.pem,%s.key,%s,,\n", id, id, id, chain)
		return leaf
	}
	for i := 0; i < n; i++ {
		switch i % 4 {
		case 0:
			id := fmt.Sprintf("xg-%05d", i)
			x509Row(id, inter, "intermediate.pem")
			f.ids = append(f.ids, id)
		case 1:
			id := fmt.Sprintf("xi-%05d", i)
			leaf := x509Row(id, inter, "")
			cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{RegistrationID: id,
				Attestation: dpssim.Attestation{X509: &dpssim.X509Attestation{Certificate: string(certs.CertPEM(leaf.Cert))}}})
			f.ids = append(f.ids, id)
		case 2:
			id := fmt.Sprintf("si-%05d", i)
			key := base64.StdEncoding.EncodeToString(soakKey(t))
			fmt.Fprintf(&rows, "%s,,,,%s,\n", id, key)
			cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{RegistrationID: id,
				Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: key}}})
			f.ids = append(f.ids, id)
		case 3:
			id := fmt.Sprintf("sg-%05d", i)
			fmt.Fprintf(&rows, "%s,,,,,\n", id)
			f.ids = append(f.ids, id)
		}
	}
	disabledKey := base64.StdEncoding.EncodeToString(soakKey(t))
	fmt.Fprintf(&rows, "%s,,,,%s,\n", soakDisabled, disabledKey)
	cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{RegistrationID: soakDisabled, ProvisioningStatus: dpssim.ProvisioningDisabled,
		Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: disabledKey}}})
	x509Row(soakWrongCert, rogue, "")
	fmt.Fprintf(&rows, "%s,,,,,\"{\"\"iotHub\"\":\"\"nowhere.azure-devices.net\"\"}\"\n", soakBadAlloc)
	if err := os.WriteFile(f.manifest, rows.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(&cfg)
	}
	if f.sim, err = dpssim.New(cfg); err != nil {
		t.Fatal(err)
	}
	f.trace = newRequestTrace()
	f.sim.Logger = slog.New(f.trace)
	if f.srv, err = dpssim.StartTLS(f.sim, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	if f.client, err = dps.NewClient(dps.Config{Endpoint: f.srv.URL, IDScope: dpssim.DefaultIDScope, RootCAs: f.srv.CAPool, Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.client.Close)
	return f
}

func soakKey(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// openFaultLedger opens the ledger read-write with the run lock and binding,
// as the provision command does.
func openFaultLedger(t *testing.T, path, endpoint string) *ledger.Ledger {
	t.Helper()
	led, err := ledger.Open(context.Background(), path, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	if err := led.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := led.Bind(context.Background(), dpssim.DefaultIDScope, endpoint); err != nil {
		t.Fatal(err)
	}
	return led
}

// soakOptions is the retry budget of the soak: 12 failed requests per
// device per run, short back-off, Retry-After capped at 3 s. At the soak's
// fault rates (about one request in six fails) a device needing five
// successful requests fails 12 times in one run with a probability near
// 2e-7; the default budget of 6 would leave about one device in 500.
func soakOptions(manifest string, groupKey []byte, workers int) batch.Options {
	return batch.Options{
		ManifestPath:    manifest,
		Manifest:        manifests.Options{GroupKey: groupKey},
		Workers:         workers,
		RegisterRate:    12000,
		PollRate:        -1,
		MaxAttempts:     12,
		DeviceTimeout:   2 * time.Minute,
		MinPollInterval: 200 * time.Millisecond,
		MaxRetryAfter:   3 * time.Second,
		Backoff:         batch.Backoff{Base: 100 * time.Millisecond, Max: time.Second},
		// The simulator acts on a request at once or never (no late
		// effects here), so a short settle window is safe.
		RequestTimeout: 5 * time.Second,
		Settle:         500 * time.Millisecond,
	}
}

// traceEvent is one device request as the simulator answered it.
type traceEvent = simtrace.Event

// requestTrace is an slog.Handler for the simulator's request log: it keeps
// each device's requests in the order they were answered.
type requestTrace struct {
	mu   sync.Mutex
	byID map[string][]traceEvent
}

func newRequestTrace() *requestTrace { return &requestTrace{byID: map[string][]traceEvent{}} }

func (tr *requestTrace) Enabled(context.Context, slog.Level) bool { return true }
func (tr *requestTrace) WithAttrs([]slog.Attr) slog.Handler       { return tr }
func (tr *requestTrace) WithGroup(string) slog.Handler            { return tr }

func (tr *requestTrace) Handle(_ context.Context, r slog.Record) error {
	id, ev := simtrace.FromRecord(r)
	tr.mu.Lock()
	tr.byID[id] = append(tr.byID[id], ev)
	tr.mu.Unlock()
	return nil
}

func (tr *requestTrace) events(id string) []traceEvent {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]traceEvent(nil), tr.byID[strings.ToLower(id)]...)
}

func (tr *requestTrace) total() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, evs := range tr.byID {
		n += len(evs)
	}
	return n
}

// burst429 collapses the simulator's registration quota to 12 a minute
// (Retry-After 5 s) for a moment at each of the given offsets from now:
// bursts of 429 that the whole fleet must ride out.
func burst429(sim *dpssim.Server, length time.Duration, at ...time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { _ = sim.SetQuotas(dpssim.Quotas{RegistrationsPerMinute: -1}) }()
		start := time.Now()
		for _, off := range at {
			select {
			case <-done:
				return
			case <-time.After(time.Until(start.Add(off))):
			}
			_ = sim.SetQuotas(dpssim.Quotas{RegistrationsPerMinute: 12})
			select {
			case <-done:
				return
			case <-time.After(length):
			}
			_ = sim.SetQuotas(dpssim.Quotas{RegistrationsPerMinute: -1})
		}
	}()
	return func() { close(done); wg.Wait() }
}

// TestFaultSoak provisions a mixed fleet through 10% 5xx on registers and
// polls, 5% dropped connections, lost answers, bursts of 429, random
// latency and operations that stay assigning for several polls. Every device
// must end assigned within one run's retry budget, the ledger must match the
// simulator, no device DPS knew may be registered again, and the three
// devices that cannot succeed must end disabled or failed with DPS's code
// and a hint, and be left alone by the next run unless --retry-failed.
// Long form: DPSBATCH_CHAOS_LONG=1.
func TestFaultSoak(t *testing.T) {
	n, workers := 400, 128
	if chaosLong() {
		n, workers = 4000, 256
	}
	seed := time.Now().UnixNano()
	t.Logf("fault seed %d", seed)
	f := newSoakFleet(t, n, func(c *dpssim.Config) {
		// No Retry-After on 202s and 503s: devices poll at MinPollInterval,
		// and only the 429 bursts pause the fleet.
		zero := 0
		c.RetryAfterSeconds = &zero
		c.Faults = dpssim.Faults{
			Seed:               seed,
			RegisterErrorRate:  0.10,
			PollErrorRate:      0.10,
			LookupErrorRate:    0.10,
			DropConnectionRate: 0.05,
			DropResponseRate:   0.02,
			Latency:            dpssim.Duration(2 * time.Millisecond),
			LatencyJitter:      dpssim.Duration(40 * time.Millisecond),
			StayAssigningPolls: 2,
		}
	})
	ctx := context.Background()
	led := openFaultLedger(t, f.ledgerPath, f.srv.URL)
	opts := soakOptions(f.manifest, f.groupKey, workers)

	stopBursts := burst429(f.sim, 400*time.Millisecond, 500*time.Millisecond, 2*time.Second)
	start := time.Now()
	r := &batch.Runner{Client: f.client, Ledger: led, Options: opts}
	res, err := r.Run(ctx, nil)
	stopBursts()
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	elapsed := time.Since(start)
	st := f.sim.Stats()
	snap := res.Snapshot
	t.Logf("soak: %d devices in %v: %d register PUTs (%d started operations), %d polls, %d lookups; %d faults injected (%d dropped), %d throttled; runner: %d retries, %d throttled",
		len(f.ids)+3, elapsed.Round(time.Millisecond), st.RegisterRequests, st.Registers, st.Polls, st.Lookups, st.Faults, st.Dropped, st.Throttled, snap.Retries, snap.Throttled)

	if got, want := snap.Outcomes[batch.OutcomeAssigned], len(f.ids); got != want {
		t.Errorf("assigned in the run: got %d, want %d (snapshot %+v)", got, want, snap)
	}
	if got := snap.Outcomes[batch.OutcomeUnfinished]; got != 0 {
		t.Errorf("devices left unfinished: %d, want 0 (the retry budget should absorb these fault rates)", got)
	}
	if st.Faults == 0 || st.Throttled == 0 || st.Dropped == 0 {
		t.Errorf("the soak injected %d faults, %d drops, %d 429s: want some of each", st.Faults, st.Dropped, st.Throttled)
	}

	sims := map[string]dpssim.RegistrationInfo{}
	for _, ri := range f.sim.Registrations() {
		sims[ri.RegistrationID] = ri
	}
	// An assignment takes about delay/MinPollInterval + StayAssigningPolls
	// + 1 polls; every failed request may add one more, each 429 a few.
	const maxAsks = 40
	rePUTs, bad, mostAsks, mostPUTs := 0, 0, 0, 0
	for _, id := range f.ids {
		d, ok, err := led.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		ri := sims[id]
		var errs []string
		if !ok || d.State != ledger.StateAssigned {
			errs = append(errs, fmt.Sprintf("ledger state %q (%s)", d.State, d.ErrorMessage))
		}
		if ri.Status != dps.StatusAssigned || ri.AssignedHub != d.AssignedHub || ri.DeviceID != d.DeviceID || d.AssignedHub == "" {
			errs = append(errs, fmt.Sprintf("simulator %s %s %s, ledger %s %s %s", ri.Status, ri.AssignedHub, ri.DeviceID, d.State, d.AssignedHub, d.DeviceID))
		}
		if ri.Registers != 1 {
			errs = append(errs, fmt.Sprintf("%d operations started, want 1", ri.Registers))
		}
		// Retries are bounded: by the failure budget for PUTs, and for polls
		// and lookups by the budget plus the polls an assignment takes.
		if ri.RegisterRequests > opts.MaxAttempts {
			errs = append(errs, fmt.Sprintf("%d register PUTs, want at most %d (the retry budget)", ri.RegisterRequests, opts.MaxAttempts))
		}
		if asks := ri.Polls + ri.Lookups; asks > maxAsks {
			errs = append(errs, fmt.Sprintf("%d polls and lookups, want at most %d", asks, maxAsks))
		}
		mostAsks = max(mostAsks, ri.Polls+ri.Lookups)
		mostPUTs = max(mostPUTs, ri.RegisterRequests)
		// The ledger counts the PUTs DPS accepted or may have accepted (no
		// answer): at least what took effect, at most what was sent.
		if d.Attempts < ri.Registers || d.Attempts > ri.RegisterRequests {
			errs = append(errs, fmt.Sprintf("ledger counted %d billable register PUTs; simulator: %d took effect of %d received", d.Attempts, ri.Registers, ri.RegisterRequests))
		}
		// The oracle is the server's count above; the client-visible
		// history only helps explain a failure.
		if k := simtrace.RePUTs(f.trace.events(id)); k > 0 {
			rePUTs += k
			if len(errs) > 0 {
				errs = append(errs, fmt.Sprintf("history: %v", f.trace.events(id)))
			}
		}
		if len(errs) > 0 {
			if bad++; bad <= 10 {
				t.Errorf("device %s: %s", id, strings.Join(errs, "; "))
			}
		}
	}
	if err := led.IntegrityCheck(ctx); err != nil {
		t.Error(err)
	}

	// The devices that cannot succeed: recorded once, with DPS's code and a hint.
	permanent := []struct {
		id        string
		state     ledger.State
		code      int
		hint      string
		registers int // register PUTs that reached DPS's enrollment check
	}{
		{soakDisabled, ledger.StateDisabled, 400209, "disabled", 1},
		{soakWrongCert, ledger.StateFailed, dps.CodeInvalidCredentials, "certificate chain not accepted", 0},
		{soakBadAlloc, ledger.StateFailed, dps.CodeCustomAllocation, "custom allocation", 1},
	}
	before := map[string]dpssim.RegistrationInfo{}
	beforePUTs := map[string]int{} // including PUTs refused before authentication
	for _, p := range permanent {
		d, _, err := led.Device(ctx, p.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != p.state || d.ErrorCode != p.code || !strings.Contains(d.Hint, p.hint) {
			t.Errorf("%s: ledger %s, code %d, hint %q; want %s, %d, a hint about %q (message %q)", p.id, d.State, d.ErrorCode, d.Hint, p.state, p.code, p.hint, d.ErrorMessage)
		}
		ri := sims[p.id]
		if ri.Registers != p.registers {
			t.Errorf("%s: %d operations started at DPS, want %d", p.id, ri.Registers, p.registers)
		}
		before[p.id] = ri
		beforePUTs[p.id] = simtrace.Count(f.trace.events(p.id), "register")
	}
	if got := snap.Outcomes[batch.OutcomeFailed] + snap.Outcomes[batch.OutcomeDisabled]; got != len(permanent) {
		t.Errorf("failed+disabled in the run: %d, want %d", got, len(permanent))
	}

	t.Logf("first run checked after %v", time.Since(start).Round(time.Millisecond))
	// The same run again: nothing to do, not even for the failed devices.
	requests := f.trace.total()
	res2, err := (&batch.Runner{Client: f.client, Ledger: led, Options: opts}).Run(ctx, nil)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if got := f.trace.total() - requests; got != 0 {
		t.Errorf("second run sent %d requests, want 0", got)
	}
	if got := res2.Failures(); got != len(permanent) {
		t.Errorf("second run reports %d failures, want the %d from before", got, len(permanent))
	}

	t.Logf("second run done after %v", time.Since(start).Round(time.Millisecond))
	// With --retry-failed, only the failed and disabled devices are tried again.
	opts.RetryFailed = true
	if _, err := (&batch.Runner{Client: f.client, Ledger: led, Options: opts}).Run(ctx, nil); err != nil {
		t.Fatalf("retry-failed run: %v", err)
	}
	for _, p := range permanent {
		if got := simtrace.Count(f.trace.events(p.id), "register"); got <= beforePUTs[p.id] {
			t.Errorf("%s: --retry-failed sent no register PUT", p.id)
		}
		d, _, _ := led.Device(ctx, p.id)
		if d.State != p.state || d.ErrorCode != p.code {
			t.Errorf("%s after --retry-failed: %s %d, want %s %d", p.id, d.State, d.ErrorCode, p.state, p.code)
		}
	}
	t.Logf("third run done after %v", time.Since(start).Round(time.Millisecond))
	for _, id := range f.ids {
		if ri, _ := f.sim.Registration(id); ri.Registers != 1 || ri.RegisterRequests != sims[id].RegisterRequests {
			t.Errorf("%s: --retry-failed touched an assigned device (%d PUTs, was %d)", id, ri.RegisterRequests, sims[id].RegisterRequests)
			break
		}
	}
	t.Logf("soak figures: devices %d, faults injected %d (%d dropped connections or answers), 429s %d, retries %d (at most %d PUTs and %d polls+lookups for one device), re-PUTs the client view flags %d (diagnostic; the server counted one registration per device)",
		len(f.ids)+len(permanent), st.Faults, st.Dropped, st.Throttled, snap.Retries, mostPUTs, mostAsks, rePUTs)
}

// hostileFleet is two devices, one X.509 and one symmetric-key, for runs
// against servers that misbehave.
type hostileFleet struct {
	dir, manifest string
}

func newHostileFleet(t *testing.T) *hostileFleet {
	t.Helper()
	f := &hostileFleet{dir: t.TempDir()}
	root, err := certs.NewRoot("hostile root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := root.NewDevice("dev-x509", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certs.WriteLeaf(f.dir, leaf, "dev-x509", false, false); err != nil {
		t.Fatal(err)
	}
	f.manifest = filepath.Join(f.dir, "manifest.csv")
	body := "registration_id,cert_path,key_path,symmetric_key\n" +
		"dev-x509,dev-x509.pem,dev-x509.key,\n" +
		"dev-sas,,," + base64.StdEncoding.EncodeToString(soakKey(t)) + "\n"
	if err := os.WriteFile(f.manifest, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// hostileServer counts what reaches it, per kind of request.
type hostileServer struct {
	registers, polls, lookups atomic.Int64
	bytesSent                 atomic.Int64
}

// okAnswers answers like DPS: 202 to a register, an assigned operation to
// a poll, an assigned registration to a lookup.
func okAnswers(w http.ResponseWriter, r *http.Request, opID string) {
	id := regIDOf(r)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	switch r.Method {
	case http.MethodPut:
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"operationId":%q,"status":"assigning"}`, opID)
	case http.MethodGet:
		fmt.Fprintf(w, `{"operationId":%q,"status":"assigned","registrationState":{"registrationId":%q,"assignedHub":"hub.azure-devices.net","deviceId":%q,"status":"assigned"}}`, opID, id, id)
	default:
		fmt.Fprintf(w, `{"registrationId":%q,"assignedHub":"hub.azure-devices.net","deviceId":%q,"status":"assigned"}`, id, id)
	}
}

// regIDOf returns the registration id in a device request's path.
func regIDOf(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) >= 3 {
		return parts[2]
	}
	return ""
}

// TestHostileServerRuns runs the runner against servers that break the
// protocol or the network in hostile ways. Each run must end within a
// bounded time with every device recorded in the ledger with a clear
// error, must not register a device again when its first PUT may have
// taken effect, and must never send anything to another host.
func TestHostileServerRuns(t *testing.T) {
	var evilConns atomic.Int64
	evil := httptestTLS(t, func(w http.ResponseWriter, r *http.Request) { okAnswers(w, r, "4.evil") }, &evilConns)
	evilURL := evil.URL

	type want struct {
		state     ledger.State // for both devices
		msg       string       // in the recorded error message ("" = none expected)
		hint      string       // in the recorded hint
		fatal     bool         // the run stops with an error
		registers int64        // register PUTs the server may see, at most (0 = no bound checked)
	}
	tests := []struct {
		name  string
		serve func(s *hostileServer) http.HandlerFunc
		want  want
	}{
		{
			name: "50 MB answer",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusAccepted)
					chunk := bytes.Repeat([]byte(" "), 64<<10)
					for i := 0; i < 800; i++ {
						n, err := w.Write(chunk)
						s.bytesSent.Add(int64(n))
						if err != nil {
							return
						}
					}
				}
			},
			// DPS accepted the PUT (2xx); only its answer is unusable, and so
			// is every lookup's: the device stays registering, never re-PUT.
			want: want{state: ledger.StateRegistering, msg: "too large", hint: "large response", registers: 2},
		},
		{
			name: "register answer cut short",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodPut {
						w.Header().Set("Content-Length", "200")
						w.WriteHeader(http.StatusAccepted)
						fmt.Fprint(w, `{"operationId":"4.cut","sta`)
						return
					}
					okAnswers(w, r, "4.cut")
				}
			},
			// The PUT was accepted (202) even if its answer was lost: look it up, never PUT again.
			want: want{state: ledger.StateAssigned, registers: 2},
		},
		{
			name: "register answer is not JSON",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodPut {
						w.WriteHeader(http.StatusAccepted)
						fmt.Fprint(w, `<html>accepted</html>`)
						return
					}
					okAnswers(w, r, "4.html")
				}
			},
			want: want{state: ledger.StateAssigned, registers: 2},
		},
		{
			name: "202 without operation id",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusAccepted)
					fmt.Fprint(w, `{"status":"assigning"}`)
				}
			},
			// A 2xx is an accepted PUT: the lookup shows it assigning, so the
			// device follows it (until its deadline here), never PUTs again.
			want: want{state: ledger.StateAssigning, msg: "no operationId", registers: 2},
		},
		{
			name: "operation id changes on every poll",
			serve: func(s *hostileServer) http.HandlerFunc {
				var n atomic.Int64
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						if !strings.HasSuffix(r.URL.Path, "/operations/4.first") {
							w.WriteHeader(http.StatusNotFound)
							return
						}
						if n.Add(1) <= 4 {
							w.WriteHeader(http.StatusAccepted)
							fmt.Fprintf(w, `{"operationId":"4.moved-%d","status":"assigning"}`, n.Load())
							return
						}
					}
					okAnswers(w, r, "4.first")
				}
			},
			want: want{state: ledger.StateAssigned, registers: 2},
		},
		{
			name: "unknown status",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodPut {
						w.WriteHeader(http.StatusAccepted)
					}
					fmt.Fprint(w, `{"operationId":"4.odd","registrationId":"x","status":"exploded"}`)
				}
			},
			want: want{state: ledger.StateFailed, msg: `"exploded"`, registers: 2},
		},
		{
			name: "Retry-After of 10 hours",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", "36000")
					if r.Method == http.MethodPut && s.registers.Load() <= 2 {
						w.WriteHeader(http.StatusTooManyRequests)
						return
					}
					okAnswers(w, r, "4.slow")
				}
			},
			want: want{state: ledger.StateAssigned, registers: 4},
		},
		{
			name: "negative Retry-After",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", "-30")
					okAnswers(w, r, "4.neg")
				}
			},
			want: want{state: ledger.StateAssigned, registers: 2},
		},
		{
			name: "accepts the connection, never answers",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					// Reading the body lets the server notice the client hanging up.
					_, _ = io.Copy(io.Discard, r.Body)
					select {
					case <-r.Context().Done():
					case <-time.After(time.Minute):
					}
					// Never answer, not even the empty 200 that returning
					// from a handler sends: close the connection instead.
					panic(http.ErrAbortHandler)
				}
			},
			// Unknown whether the PUT arrived: it stays "registering", so the next run looks up first.
			want: want{state: ledger.StateRegistering, msg: "timed out", registers: 2},
		},
		{
			name: "redirect to another host",
			serve: func(s *hostileServer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, evilURL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
				}
			},
			want: want{msg: "redirect refused", hint: "redirects", fatal: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fl := newHostileFleet(t)
			s := &hostileServer{}
			handler := tt.serve(s)
			ts := httptestTLS(t, func(w http.ResponseWriter, r *http.Request) {
				switch r.Method {
				case http.MethodPut:
					s.registers.Add(1)
				case http.MethodGet:
					s.polls.Add(1)
				case http.MethodPost:
					s.lookups.Add(1)
				}
				handler(w, r)
			}, nil)
			client, err := dps.NewClient(dps.Config{Endpoint: ts.URL, IDScope: dpssim.DefaultIDScope, RootCAs: tlsPool(ts), Timeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			led := openFaultLedger(t, filepath.Join(fl.dir, "fleet.ledger"), ts.URL)
			r := &batch.Runner{Client: client, Ledger: led, Options: batch.Options{
				ManifestPath:    fl.manifest,
				Workers:         2,
				RegisterRate:    -1,
				PollRate:        -1,
				MaxAttempts:     3,
				DeviceTimeout:   8 * time.Second,
				MinPollInterval: 50 * time.Millisecond,
				MaxRetryAfter:   time.Second,
				Backoff:         batch.Backoff{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond},
				RequestTimeout:  500 * time.Millisecond,
				Settle:          200 * time.Millisecond,
			}}
			start := time.Now()
			_, err = r.Run(context.Background(), nil)
			elapsed := time.Since(start)
			if tt.want.fatal != (err != nil) {
				t.Errorf("run error: %v, want fatal %v", err, tt.want.fatal)
			}
			if elapsed > 15*time.Second {
				t.Errorf("run took %v (server saw %d PUTs, %d polls, %d lookups), want it bounded by timeouts and capped Retry-After",
					elapsed, s.registers.Load(), s.polls.Load(), s.lookups.Load())
			}
			if tt.want.registers > 0 && s.registers.Load() > tt.want.registers {
				t.Errorf("server saw %d register PUTs for 2 devices, want at most %d", s.registers.Load(), tt.want.registers)
			}
			requests := s.registers.Load() + s.polls.Load() + s.lookups.Load()
			if got := s.bytesSent.Load(); requests > 0 && got/requests > 8<<20 {
				t.Errorf("server wrote %d MB in %d answers before the client hung up, want at most 8 MB each", got>>20, requests)
			}
			explained := 0 // devices whose record names the failure and its fix
			for _, id := range []string{"dev-x509", "dev-sas"} {
				d, ok, err := led.Device(context.Background(), id)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					if tt.want.fatal {
						continue // the run stopped before reaching it
					}
					t.Errorf("%s: not in the ledger", id)
					continue
				}
				if tt.want.fatal && d.State != ledger.StateRegistering && d.State != ledger.StatePending && d.State != ledger.StateRetryable {
					t.Errorf("%s: state %s after a fatal error, want it left for a re-run", id, d.State)
				}
				if tt.want.state != "" && d.State != tt.want.state {
					t.Errorf("%s: state %s (%q), want %s", id, d.State, d.ErrorMessage, tt.want.state)
				}
				if tt.want.state == ledger.StateAssigned && d.AssignedHub != "hub.azure-devices.net" {
					t.Errorf("%s: hub %q", id, d.AssignedHub)
				}
				if tt.want.state != ledger.StateAssigned && d.ErrorMessage == "" {
					t.Errorf("%s: state %s with no recorded error", id, d.State)
				}
				if strings.Contains(d.ErrorMessage, tt.want.msg) && strings.Contains(d.Hint, tt.want.hint) {
					explained++
				} else if !tt.want.fatal {
					// After a fatal error the other device may only say it was interrupted.
					t.Errorf("%s: recorded error %q, hint %q; want them to mention %q and %q", id, d.ErrorMessage, d.Hint, tt.want.msg, tt.want.hint)
				}
			}
			if explained == 0 {
				t.Errorf("no device records the failure (%q, hint %q)", tt.want.msg, tt.want.hint)
			}
		})
	}
	t.Cleanup(func() {
		if n := evilConns.Load(); n != 0 {
			t.Errorf("the other host accepted %d connections, want none", n)
		}
	})
}

// httptestTLS starts a TLS server on loopback; conns, if not nil, counts
// the connections it accepts.
func httptestTLS(t *testing.T, h http.HandlerFunc, conns *atomic.Int64) *httptest.Server {
	t.Helper()
	ts := httptest.NewUnstartedServer(h)
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	if conns != nil {
		ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		}
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

// tlsPool trusts the test server's certificate.
func tlsPool(ts *httptest.Server) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ts.Certificate())
	return p
}

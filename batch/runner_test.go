package batch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
	"github.com/dps-batch/dps-batch/report"
)

// mix says how many devices of each attestation kind a fleet has.
type mix struct {
	x509Group, x509Individual, symIndividual, symGroup int
}

func (m mix) total() int { return m.x509Group + m.x509Individual + m.symIndividual + m.symGroup }

// fixture is a fleet on disk, a real simulator on loopback TLS, a real DPS
// client and a real SQLite ledger.
type fixture struct {
	dir      string
	manifest string
	groupKey []byte
	sim      *dpssim.Server
	running  *dpssim.Running
	client   *dps.Client
	ledger   *ledger.Ledger
	ids      []string
}

// newFixture writes a mixed fleet and starts the simulator with tweak applied
// to its configuration.
func newFixture(t *testing.T, m mix, tweak func(*dpssim.Config)) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	root, err := certs.NewRoot("test root", certs.Options{})
	must(t, err)
	inter, err := root.NewIntermediate("test intermediate", certs.Options{})
	must(t, err)
	selfRoot, err := certs.NewRoot("individual root", certs.Options{})
	must(t, err)
	must(t, certs.WriteCertFile(filepath.Join(f.dir, "intermediate.pem"), false, inter.Cert))

	f.groupKey = randomKey(t)
	zero := 0
	cfg := dpssim.Config{
		IDScope:           dpssim.DefaultIDScope,
		RetryAfterSeconds: &zero,
		Certificates:      []dpssim.CACertificate{{Name: "inter", PEM: string(certs.CertPEM(inter.Cert)), Verified: true}},
		Groups: []dpssim.EnrollmentGroup{
			{EnrollmentGroupID: "x509-group", Attestation: dpssim.Attestation{X509: &dpssim.X509Attestation{CACertificate: "inter"}}},
			{EnrollmentGroupID: "sas-group", Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(f.groupKey)}}},
		},
		Quotas: dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	}
	var rows strings.Builder
	rows.WriteString("registration_id,cert_path,key_path,chain_path,symmetric_key,payload\n")
	n := 0
	next := func(prefix string) string { n++; return fmt.Sprintf("%s-%05d", prefix, n) }
	for i := 0; i < m.x509Group; i++ {
		id := next("xg")
		leaf, err := inter.NewDevice(id, certs.Options{})
		must(t, err)
		_, err = certs.WriteLeaf(f.dir, leaf, id, false, false)
		must(t, err)
		fmt.Fprintf(&rows, "%s,%s.pem,%s.key,intermediate.pem,,\n", id, id, id)
		f.ids = append(f.ids, id)
	}
	for i := 0; i < m.x509Individual; i++ {
		id := next("xi")
		leaf, err := selfRoot.NewDevice(id, certs.Options{})
		must(t, err)
		_, err = certs.WriteLeaf(f.dir, leaf, id, false, false)
		must(t, err)
		fmt.Fprintf(&rows, "%s,%s.pem,%s.key,,,\n", id, id, id)
		cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{RegistrationID: id,
			Attestation: dpssim.Attestation{X509: &dpssim.X509Attestation{Certificate: string(certs.CertPEM(leaf.Cert))}}})
		f.ids = append(f.ids, id)
	}
	for i := 0; i < m.symIndividual; i++ {
		id := next("si")
		key := base64.StdEncoding.EncodeToString(randomKey(t))
		fmt.Fprintf(&rows, "%s,,,,%s,\"{\"\"line\"\":%d}\"\n", id, key, i%3)
		cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{RegistrationID: id, DeviceID: "device-" + id,
			Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: key}}})
		f.ids = append(f.ids, id)
	}
	for i := 0; i < m.symGroup; i++ {
		id := next("sg")
		fmt.Fprintf(&rows, "%s,,,,,\n", id)
		f.ids = append(f.ids, id)
	}
	f.manifest = filepath.Join(f.dir, "manifest.csv")
	must(t, os.WriteFile(f.manifest, []byte(rows.String()), 0o600))
	if tweak != nil {
		tweak(&cfg)
	}
	f.sim, err = dpssim.New(cfg)
	must(t, err)
	f.running, err = dpssim.StartTLS(f.sim, "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { f.running.Close() })
	f.client, err = dps.NewClient(dps.Config{Endpoint: f.running.URL, IDScope: dpssim.DefaultIDScope, RootCAs: f.running.CAPool})
	must(t, err)
	t.Cleanup(f.client.Close)
	f.openLedger(t)
	return f
}

func (f *fixture) openLedger(t *testing.T) {
	t.Helper()
	led, err := ledger.Open(context.Background(), filepath.Join(f.dir, "fleet.ledger"), ledger.Options{})
	must(t, err)
	must(t, led.Bind(context.Background(), dpssim.DefaultIDScope, f.running.URL))
	f.ledger = led
	t.Cleanup(func() { led.Close() })
}

// runner returns a runner tuned for tests: no poll floor, fast back-off.
func (f *fixture) runner(client batch.Client) *batch.Runner {
	if client == nil {
		client = f.client
	}
	return &batch.Runner{
		Client: client,
		Ledger: f.ledger,
		Options: batch.Options{
			ManifestPath:    f.manifest,
			Manifest:        manifests.Options{GroupKey: f.groupKey},
			Workers:         64,
			RegisterRate:    -1,
			PollRate:        -1,
			MinPollInterval: time.Millisecond,
			DeviceTimeout:   time.Minute,
			Backoff:         batch.Backoff{Base: 5 * time.Millisecond, Max: 50 * time.Millisecond},
			RequestTimeout:  5 * time.Second,
			Settle:          100 * time.Millisecond,
		},
	}
}

// assertLedgerMatchesSim checks every device is assigned in the ledger, the
// simulator agrees on hub and device id, and no device was registered twice.
func assertLedgerMatchesSim(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	for _, id := range f.ids {
		d, ok, err := f.ledger.Device(ctx, id)
		must(t, err)
		if !ok || d.State != ledger.StateAssigned {
			t.Errorf("device %s: ledger state %q (found %v), want assigned (error %q)", id, d.State, ok, d.ErrorMessage)
			continue
		}
		r, ok := f.sim.Registration(id)
		if !ok {
			t.Errorf("device %s: simulator has no registration", id)
			continue
		}
		if r.Status != dps.StatusAssigned || r.AssignedHub != d.AssignedHub || r.DeviceID != d.DeviceID {
			t.Errorf("device %s: simulator %s/%s/%s, ledger %s/%s/%s", id, r.Status, r.AssignedHub, r.DeviceID, d.State, d.AssignedHub, d.DeviceID)
		}
		if r.Registers != 1 {
			t.Errorf("device %s: simulator saw %d registrations start, want exactly 1", id, r.Registers)
		}
	}
	must(t, f.ledger.IntegrityCheck(ctx))
}

func TestProvisionMixedFleet(t *testing.T) {
	m := mix{x509Group: 1200, x509Individual: 200, symIndividual: 300, symGroup: 300}
	if testing.Short() {
		m = mix{x509Group: 120, x509Individual: 20, symIndividual: 30, symGroup: 30}
	}
	f := newFixture(t, m, nil)
	r := f.runner(nil)
	res, err := r.Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Outcomes[batch.OutcomeAssigned]; got != m.total() {
		t.Fatalf("assigned = %d, want %d (snapshot %+v)", got, m.total(), res.Snapshot)
	}
	if res.Resumable() || res.Failures() != 0 {
		t.Errorf("Resumable() = %v, Failures() = %d; want false, 0", res.Resumable(), res.Failures())
	}
	if got := res.Snapshot.Registers; got != m.total() {
		t.Errorf("register PUTs = %d, want %d", got, m.total())
	}
	assertLedgerMatchesSim(t, f)

	// Individual symmetric-key devices have a deviceId override.
	d, _, err := f.ledger.Device(context.Background(), "si-01401")
	if m.x509Group == 1200 {
		must(t, err)
		if d.DeviceID != "device-si-01401" {
			t.Errorf("deviceId override: got %q, want %q", d.DeviceID, "device-si-01401")
		}
	}

	// The report has one row per device, matching the simulator.
	var buf bytes.Buffer
	n, err := report.Write(context.Background(), f.ledger, &buf, report.CSV, nil)
	must(t, err)
	records, err := csv.NewReader(&buf).ReadAll()
	must(t, err)
	if n != m.total() || len(records) != m.total()+1 {
		t.Fatalf("report rows = %d (csv records %d), want %d + header", n, len(records), m.total())
	}
	for _, rec := range records[1:] {
		r, ok := f.sim.Registration(rec[0])
		if !ok || rec[1] != "assigned" || rec[2] != r.AssignedHub || rec[3] != r.DeviceID || rec[5] != r.OperationID {
			t.Errorf("report row %v does not match simulator %+v", rec, r)
		}
	}

	// Running again does nothing at all: zero requests.
	before := f.sim.Stats().Requests
	res, err = f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Outcomes[batch.OutcomeSkipped]; got != m.total() {
		t.Errorf("second run skipped %d, want %d", got, m.total())
	}
	if after := f.sim.Stats().Requests; after != before {
		t.Errorf("second run sent %d requests, want 0", after-before)
	}
}

// TestResumeAfterCancel stops a run mid-way (hard cancel, like a second
// Ctrl-C) while devices are registering and assigning, then runs again.
func TestResumeAfterCancel(t *testing.T) {
	m := mix{x509Group: 150, symIndividual: 50, symGroup: 100}
	f := newFixture(t, m, func(c *dpssim.Config) {
		c.AssignmentDelay = dpssim.Duration(300 * time.Millisecond)
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := f.runner(nil)
	r.Options.Workers = 40
	r.Options.MinPollInterval = 50 * time.Millisecond
	r.Stats = &batch.Stats{}
	go func() {
		for r.Stats.Snapshot().Outcomes[batch.OutcomeAssigned] < 60 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	res, err := r.Run(ctx, nil)
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("first run: %v", err)
	}
	if res == nil || !res.Resumable() {
		t.Fatalf("first run result %+v: want resumable", res)
	}
	c, err := f.ledger.Counts(context.Background())
	must(t, err)
	inFlight := c.ByState[ledger.StateAssigning] + c.ByState[ledger.StateRegistering]
	if inFlight == 0 {
		t.Errorf("no device was in flight when the run stopped (counts %v); the test proves nothing", c.ByState)
	}
	t.Logf("stopped with %v", c.ByState)

	res, err = f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	if res.Resumable() || res.Snapshot.Outcomes[batch.OutcomeAssigned]+res.Snapshot.Outcomes[batch.OutcomeSkipped] != m.total() {
		t.Fatalf("second run: %+v", res.Snapshot)
	}
	if res.Snapshot.Registers >= m.total() {
		t.Errorf("second run sent %d register PUTs for %d devices: it re-registered", res.Snapshot.Registers, m.total())
	}
	assertLedgerMatchesSim(t, f)
}

// TestDrainFinishesInFlight closes drain (first Ctrl-C): no new devices
// start, every started device finishes and is recorded.
func TestDrainFinishesInFlight(t *testing.T) {
	m := mix{symGroup: 200}
	f := newFixture(t, m, func(c *dpssim.Config) { c.AssignmentDelay = dpssim.Duration(100 * time.Millisecond) })
	r := f.runner(nil)
	r.Options.Workers = 10
	r.Stats = &batch.Stats{}
	drain := make(chan struct{})
	go func() {
		for r.Stats.Snapshot().Registers < 30 {
			time.Sleep(2 * time.Millisecond)
		}
		close(drain)
	}()
	res, err := r.Run(context.Background(), drain)
	must(t, err)
	if !res.Stopped || !res.Resumable() {
		t.Fatalf("Stopped = %v, Resumable = %v; want both true", res.Stopped, res.Resumable())
	}
	c, err := f.ledger.Counts(context.Background())
	must(t, err)
	if c.ByState[ledger.StateAssigning] != 0 || c.ByState[ledger.StateRegistering] != 0 {
		t.Errorf("after drain, in-flight devices remain: %v", c.ByState)
	}
	if got, started := c.ByState[ledger.StateAssigned], res.Snapshot.Registers; got != started {
		t.Errorf("assigned %d, but %d registrations were started", got, started)
	}
	res, err = f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	assertLedgerMatchesSim(t, f)
}

// TestThrottlingAdapts sets the simulator's quota below the configured
// rate: the shared pacer backs off and every device is still assigned.
func TestThrottlingAdapts(t *testing.T) {
	const quota = 2400 // per minute: 40/s
	m := mix{symGroup: 240}
	f := newFixture(t, m, func(c *dpssim.Config) {
		one := 1
		c.RetryAfterSeconds = &one
		c.Quotas.RegistrationsPerMinute = quota
		c.Quotas.RegistrationBurst = 5
	})
	r := f.runner(nil)
	r.Options.RegisterRate = 3 * quota
	r.Options.Workers = 100
	res, err := r.Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Outcomes[batch.OutcomeAssigned]; got != m.total() {
		t.Fatalf("assigned %d, want %d: %+v", got, m.total(), res.Snapshot)
	}
	throttled := f.sim.Stats().Throttled
	if throttled == 0 {
		t.Errorf("the simulator throttled nothing: the test proves nothing")
	}
	if limit := int64(m.total() / 5); throttled > limit {
		t.Errorf("throttled %d requests, want at most %d: the pacer did not slow the fleet down", throttled, limit)
	}
	t.Logf("throttled %d of %d register requests", throttled, f.sim.Stats().RegisterRequests)
	assertLedgerMatchesSim(t, f)
}

// countingClient counts requests that reach the network.
type countingClient struct {
	batch.Client
	n atomic.Int64
}

func (c *countingClient) RegisterWithCSR(ctx context.Context, d *dps.Device, p json.RawMessage, csr []byte) (*dps.Response, error) {
	c.n.Add(1)
	return c.Client.RegisterWithCSR(ctx, d, p, csr)
}

func TestValidationSendsNothing(t *testing.T) {
	f := newFixture(t, mix{x509Group: 3, symIndividual: 2}, nil)
	// Append bad rows of several classes after the good ones.
	bad := strings.Join([]string{
		"Bad_ID,,,,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==,",        // line 7: upper case id
		"si-00004,,,,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==,",      // line 8: duplicate id
		"nofile,missing.pem,missing.key,,,",                              // line 9: missing files
		"badkey,,,,not base64!,",                                         // line 10: bad base64
		"badpayload,,,,c2VjcmV0LWtleS1vZi1hdC1sZWFzdC0xNi1ieXRlcw==,[1]", // line 11: payload not object
		"cnmismatch,xg-00001.pem,xg-00001.key,intermediate.pem,,",        // line 12: CN != id
	}, "\n") + "\n"
	fh, err := os.OpenFile(f.manifest, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = fh.WriteString(bad)
	must(t, err)
	must(t, fh.Close())

	cc := &countingClient{Client: f.client}
	_, err = f.runner(cc).Run(context.Background(), nil)
	var ve *batch.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Run error = %v, want *batch.ValidationError", err)
	}
	lines := map[int]bool{}
	for _, p := range ve.Summary.Errors {
		lines[p.Line] = true
		if p.Hint == "" {
			t.Errorf("problem without a hint: %v", p)
		}
	}
	for _, want := range []int{7, 8, 9, 10, 11, 12} {
		if !lines[want] {
			t.Errorf("no problem reported for line %d; got %v", want, ve.Summary.Errors)
		}
	}
	if got := f.sim.Stats().Requests; got != 0 || cc.n.Load() != 0 {
		t.Errorf("simulator saw %d requests (client %d), want 0", got, cc.n.Load())
	}
	c, err := f.ledger.Counts(context.Background())
	must(t, err)
	if c.Total != 0 {
		t.Errorf("ledger has %d devices after a failed validation, want 0", c.Total)
	}
}

// TestPermanentFailuresRecordedOnce: a disabled enrollment and an unknown
// device end disabled and failed with DPS's codes; a re-run leaves them
// alone unless RetryFailed is set.
func TestPermanentFailuresRecordedOnce(t *testing.T) {
	f := newFixture(t, mix{symIndividual: 3}, func(c *dpssim.Config) {
		c.Individual[0].ProvisioningStatus = "disabled"
		c.Individual = c.Individual[:2] // si-00003 is not enrolled: 401002
	})
	res, err := f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	s := res.Snapshot
	if s.Outcomes[batch.OutcomeAssigned] != 1 || s.Outcomes[batch.OutcomeDisabled] != 1 || s.Outcomes[batch.OutcomeFailed] != 1 {
		t.Fatalf("outcomes %v, want 1 assigned, 1 disabled, 1 failed", s.Outcomes)
	}
	ctx := context.Background()
	dis, _, err := f.ledger.Device(ctx, "si-00001")
	must(t, err)
	if dis.State != ledger.StateDisabled || dis.Hint == "" {
		t.Errorf("disabled device: %+v", dis)
	}
	failed, _, err := f.ledger.Device(ctx, "si-00003")
	must(t, err)
	if failed.State != ledger.StateFailed || failed.ErrorCode != dps.CodeInvalidCredentials || failed.HTTPStatus != 401 || failed.Hint == "" || failed.RequestID == "" {
		t.Errorf("unknown device: %+v, want failed with 401002, a hint and a request id", failed)
	}
	log, err := f.ledger.Attempts(ctx, "si-00003")
	must(t, err)
	if len(log) != 1 || log[0].Kind != "register" || failed.Attempts != 0 {
		t.Errorf("unknown device: attempt log %+v, %d counted billable; want one register (permanent failures are not retried) and 0 (DPS refused it)", log, failed.Attempts)
	}

	before := f.sim.Stats().Requests
	res, err = f.runner(nil).Run(ctx, nil)
	must(t, err)
	if f.sim.Stats().Requests != before || res.Failures() != 2 {
		t.Errorf("re-run sent %d requests and counted %d failures; want 0 and 2", f.sim.Stats().Requests-before, res.Failures())
	}
	r := f.runner(nil)
	r.Options.RetryFailed = true
	res, err = r.Run(ctx, nil)
	must(t, err)
	// The disabled device's PUT is accepted (its operation ends disabled);
	// the unknown device's is refused: two sent, one billable.
	if s := res.Snapshot; s.RegisterRequests != 2 || s.Registers != 1 {
		t.Errorf("--retry-failed sent %d register PUTs, %d accepted; want 2 and 1", s.RegisterRequests, s.Registers)
	}
}

// TestChangedCredentialsAreReported: an assigned device whose key changed in
// the manifest is reported, not re-registered, unless Reprovision is set.
func TestChangedCredentialsAreReported(t *testing.T) {
	f := newFixture(t, mix{symGroup: 2}, nil)
	_, err := f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	// Same devices, but now with individual keys: another credential.
	key := base64.StdEncoding.EncodeToString(randomKey(t))
	must(t, os.WriteFile(f.manifest, []byte("registration_id,symmetric_key\nsg-00001,"+key+"\nsg-00002,\n"), 0o600))
	res, err := f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Outcomes[batch.OutcomeChanged]; got != 1 || res.Snapshot.Registers != 0 {
		t.Errorf("changed = %d, registers = %d; want 1 and 0", got, res.Snapshot.Registers)
	}
	r := f.runner(nil)
	r.Options.Reprovision = true
	res, err = r.Run(context.Background(), nil)
	must(t, err)
	// The device with the new individual key has no enrollment (401):
	// two PUTs sent, one accepted.
	if s := res.Snapshot; s.RegisterRequests != 2 || s.Registers != 1 {
		t.Errorf("--reprovision sent %d register PUTs, %d accepted; want 2 and 1", s.RegisterRequests, s.Registers)
	}
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	_, err := rand.Read(k)
	must(t, err)
	return k
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDrainBeforeDispatch: a stop asked for during validation or planning
// ends the run before any request, and it is resumable.
func TestDrainBeforeDispatch(t *testing.T) {
	f := newFixture(t, mix{symGroup: 20}, nil)
	drain := make(chan struct{})
	close(drain)
	res, err := f.runner(nil).Run(context.Background(), drain)
	must(t, err)
	if !res.Stopped || !res.Resumable() {
		t.Errorf("Stopped = %v, Resumable = %v; want true, true", res.Stopped, res.Resumable())
	}
	if got := f.sim.Stats().Requests; got != 0 {
		t.Errorf("simulator saw %d requests, want 0", got)
	}
	res, err = f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Outcomes[batch.OutcomeAssigned]; got != 20 {
		t.Errorf("resumed run assigned %d, want 20", got)
	}
}

// TestReprovisionResumes: an interrupted --reprovision campaign, resumed
// with the same cutoff, registers every device exactly once more.
func TestReprovisionResumes(t *testing.T) {
	m := mix{symGroup: 60}
	f := newFixture(t, m, nil)
	_, err := f.runner(nil).Run(context.Background(), nil)
	must(t, err)
	time.Sleep(5 * time.Millisecond)
	cutoff := time.Now()

	r := f.runner(nil)
	r.Options.Workers = 4
	r.Options.Policy = batch.Policy{Reprovision: true, ReprovisionBefore: cutoff}
	r.Stats = &batch.Stats{}
	drain := make(chan struct{})
	go func() {
		for r.Stats.Snapshot().Registers < 20 {
			time.Sleep(time.Millisecond)
		}
		close(drain)
	}()
	res, err := r.Run(context.Background(), drain)
	must(t, err)
	if !res.Stopped {
		t.Fatalf("the reprovisioning run was not stopped: %+v", res.Snapshot)
	}
	r2 := f.runner(nil)
	r2.Options.Policy = batch.Policy{Reprovision: true, ReprovisionBefore: cutoff}
	res2, err := r2.Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Registers + res2.Snapshot.Registers; got != m.total() {
		t.Errorf("the campaign sent %d register PUTs over two runs, want %d (one per device)", got, m.total())
	}
	for _, id := range f.ids {
		if r, _ := f.sim.Registration(id); r.Registers != 2 || r.Status != dps.StatusAssigned {
			t.Errorf("device %s: %d registrations, status %s; want 2, assigned", id, r.Registers, r.Status)
		}
	}
}

// TestValidatedDevicesAreNotLoadedAgain checks that dispatch registers the
// X.509 devices Validate loaded, without reading their files again, but only
// for rows that are still the same: the files are removed between the two,
// and one row is edited.
func TestValidatedDevicesAreNotLoadedAgain(t *testing.T) {
	m := mix{x509Group: 20, x509Individual: 5, symGroup: 5}
	f := newFixture(t, m, nil)
	r := f.runner(nil)
	if _, err := r.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, id := range f.ids {
		if strings.HasPrefix(id, "x") {
			must(t, os.Remove(filepath.Join(f.dir, id+".pem")))
			must(t, os.Remove(filepath.Join(f.dir, id+".key")))
		}
	}
	// An edited row is loaded from disk, where its files are now missing.
	edited := f.ids[0]
	b, err := os.ReadFile(f.manifest)
	must(t, err)
	row := fmt.Sprintf("%s,%s.pem,%s.key,intermediate.pem,,", edited, edited, edited)
	if !bytes.Contains(b, []byte(row+"\n")) {
		t.Fatalf("manifest lacks the row %q", row)
	}
	must(t, os.WriteFile(f.manifest, bytes.Replace(b, []byte(row+"\n"), []byte(row+`"{""line"":1}"`+"\n"), 1), 0o600))

	res, err := r.Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.Outcomes[batch.OutcomeAssigned]; got != m.total()-1 {
		t.Errorf("assigned = %d, want %d (snapshot %+v)", got, m.total()-1, res.Snapshot)
	}
	if got := res.Snapshot.Outcomes[batch.OutcomeUnfinished]; got != 1 {
		t.Errorf("unfinished = %d, want 1: the edited row, whose files are gone", got)
	}
	if _, ok := f.sim.Registration(edited); ok {
		t.Errorf("the edited row's device %s was registered with the credentials validated before the edit", edited)
	}

	// The same runner validates again for its next run, and now the files
	// are missing.
	if _, err := r.Run(context.Background(), nil); err == nil {
		t.Fatal("a second Run passed with the device files removed")
	}
}

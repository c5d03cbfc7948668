package batch_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// enrollFixture is a simulator serving the service API (no enrollments in
// its configuration), a manifest of X.509 and symmetric-key devices and a
// ledger path.
type enrollFixture struct {
	sim      *dpssim.Server
	run      *dpssim.Running
	host     string // host:port of the simulator
	dir      string
	manifest string
	ledger   string
	x509IDs  []string
	symIDs   []string
	keys     map[string]string // symmetric device keys (base64)
}

const enrollScope = "0ne00000e11"

// Service policies of the enrollment tests.
var (
	ownerPolicyKey  = base64.StdEncoding.EncodeToString([]byte("owner-policy-key-owner-policy-ke"))
	readerPolicyKey = base64.StdEncoding.EncodeToString([]byte("reader-policy-key-reader-policy-"))
)

func enrollSimConfig() dpssim.Config {
	zero := 0
	return dpssim.Config{
		IDScope:           enrollScope,
		RetryAfterSeconds: &zero,
		ServicePolicies: []dpssim.ServicePolicy{
			{Name: dpssim.DefaultServicePolicy, PrimaryKey: ownerPolicyKey, Rights: []string{dpssim.RightEnrollmentRead, dpssim.RightEnrollmentWrite, dpssim.RightRegistrationStatusRead, dpssim.RightRegistrationStatusWrite}},
			{Name: "readonly", PrimaryKey: readerPolicyKey, Rights: []string{dpssim.RightEnrollmentRead, dpssim.RightRegistrationStatusRead}},
		},
		Quotas: dpssim.Quotas{ServiceOperationsPerMinute: -1, RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	}
}

func newEnrollFixture(t *testing.T, nX509, nSym int, tweak func(*dpssim.Config)) *enrollFixture {
	t.Helper()
	cfg := enrollSimConfig()
	if tweak != nil {
		tweak(&cfg)
	}
	sim, err := dpssim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, err := dpssim.StartTLS(sim, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Close() })
	u, _ := url.Parse(run.URL)
	f := &enrollFixture{sim: sim, run: run, host: u.Host, dir: t.TempDir(), keys: map[string]string{}}
	f.ledger = filepath.Join(f.dir, "fleet.ledger")
	var rows []string
	if nX509 > 0 {
		fleet, err := certs.GenerateFleet(context.Background(), certs.FleetOptions{Dir: f.dir, Count: nX509, Prefix: "cert-"})
		if err != nil {
			t.Fatal(err)
		}
		f.x509IDs = fleet.RegistrationIDs
		b, err := os.ReadFile(fleet.ManifestPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
			rows = append(rows, strings.TrimSpace(line)+",")
		}
	}
	for i := range nSym {
		id := fmt.Sprintf("sym-%03d", i+1)
		key := base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("device-key-%03d-0123456789abcdef", i+1)))
		f.symIDs = append(f.symIDs, id)
		f.keys[id] = key
		rows = append(rows, id+",,,,"+key)
	}
	f.manifest = filepath.Join(f.dir, "enroll.csv")
	content := "registration_id,cert_path,key_path,chain_path,symmetric_key\n" + strings.Join(rows, "\n") + "\n"
	if err := os.WriteFile(f.manifest, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *enrollFixture) ids() []string {
	return append(append([]string(nil), f.x509IDs...), f.symIDs...)
}

// client is a service client signed with policy ("" = the owner).
func (f *enrollFixture) client(t *testing.T, policy string, mod func(*dpsservice.Config)) *dpsservice.Client {
	t.Helper()
	cs, err := f.sim.ServiceConnectionString(f.host, policy)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := dpsservice.ParseConnectionString(cs)
	if err != nil {
		t.Fatal(err)
	}
	cfg := dpsservice.Config{Credential: parsed.Credential, RootCAs: f.run.CAPool, Timeout: 10 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := dpsservice.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (f *enrollFixture) openLedger(t *testing.T) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(context.Background(), f.ledger, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func (f *enrollFixture) runner(t *testing.T, c batch.ServiceClient, l *ledger.Ledger, mod func(*batch.EnrollOptions)) *batch.EnrollRunner {
	t.Helper()
	o := batch.EnrollOptions{ManifestPath: f.manifest, Rate: -1, Workers: 4,
		Backoff: batch.Backoff{Base: 5 * time.Millisecond, Max: 50 * time.Millisecond}}
	if mod != nil {
		mod(&o)
	}
	return &batch.EnrollRunner{Client: c, Ledger: l, Options: o}
}

// creates returns the creates per id that took effect at the simulator.
func (f *enrollFixture) creates() map[string]int {
	out := map[string]int{}
	for _, e := range f.sim.Enrollments() {
		out[e.RegistrationID] = e.Creates
	}
	return out
}

func (f *enrollFixture) wantCreatedOnce(t *testing.T) {
	t.Helper()
	c := f.creates()
	for _, id := range f.ids() {
		if c[id] != 1 {
			t.Errorf("device %s was created %d times at the server, want exactly once", id, c[id])
		}
	}
}

func wantStates(t *testing.T, l *ledger.Ledger, ids []string, want ledger.EnrollState) {
	t.Helper()
	got, err := l.Enrollments(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if got[id].State != want {
			t.Errorf("ledger: %s is %q (%s), want %q", id, got[id].State, got[id].ErrorMessage, want)
		}
	}
}

// countingService wraps the real client: it records bulk sizes and lets a
// test change answers.
type countingService struct {
	batch.ServiceClient
	mu    sync.Mutex
	sizes []int
	reads int
	// bulk, when set, replaces the bulk call.
	bulk func(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error)
}

var _ batch.ServiceClient = (*countingService)(nil)

func (c *countingService) BulkEnrollments(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error) {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(items))
	bulk := c.bulk
	c.mu.Unlock()
	if bulk != nil {
		return bulk(ctx, mode, items)
	}
	return c.ServiceClient.BulkEnrollments(ctx, mode, items)
}

func (c *countingService) GetEnrollment(ctx context.Context, id string) (*dpsservice.IndividualEnrollment, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.ServiceClient.GetEnrollment(ctx, id)
}

func TestEnrollCreatesInBulksOfTenOnce(t *testing.T) {
	f := newEnrollFixture(t, 13, 14, nil)
	l := f.openLedger(t)
	cc := &countingService{ServiceClient: f.client(t, "", nil)}
	res, err := f.runner(t, cc, l, nil).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := res.Snapshot.Outcomes[batch.EnOutCreated]; n != 27 || res.Failures() != 0 || res.Resumable() {
		t.Fatalf("outcomes %v, failures %d, resumable %v; want 27 created", res.Snapshot.Outcomes, res.Failures(), res.Resumable())
	}
	total := 0
	for _, n := range cc.sizes {
		if n > dpsservice.MaxBulkItems {
			t.Errorf("a bulk request carried %d items, more than 10", n)
		}
		total += n
	}
	if total != 27 || len(cc.sizes) != 3 {
		t.Errorf("bulk sizes %v, want 27 items in 3 requests", cc.sizes)
	}
	f.wantCreatedOnce(t)
	wantStates(t, l, f.ids(), ledger.EnrollCreated)
	// The devices are in the ledger for provision, pending, each beside
	// its enrollment.
	paired := 0
	err = l.EachWithEnrollment(context.Background(), nil, func(d ledger.Device, e ledger.Enrollment, ok bool) error {
		if d.State == ledger.StatePending && ok && e.State == ledger.EnrollCreated {
			paired++
		}
		return nil
	})
	if err != nil || paired != 27 {
		t.Errorf("%d pending devices beside created enrollments (err %v), want 27", paired, err)
	}
	// The X.509 enrollment holds the device's certificate: the device
	// attests against it at once.
	got, err := f.client(t, "", nil).GetEnrollment(context.Background(), f.x509IDs[0])
	if err != nil || got.Attestation.Type != "x509" {
		t.Fatalf("GET %s = %+v, %v", f.x509IDs[0], got, err)
	}

	// The same command again sends nothing.
	cc2 := &countingService{ServiceClient: f.client(t, "", nil)}
	res, err = f.runner(t, cc2, l, nil).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cc2.sizes) != 0 || cc2.reads != 0 || res.Snapshot.Outcomes[batch.EnOutSkipped] != 27 {
		t.Errorf("re-run sent %d bulk requests and %d reads, skipped %d; want nothing sent, 27 skipped", len(cc2.sizes), cc2.reads, res.Snapshot.Outcomes[batch.EnOutSkipped])
	}
	f.wantCreatedOnce(t)
}

func TestEnrollExistsSameDifferentThenUpdate(t *testing.T) {
	f := newEnrollFixture(t, 0, 4, nil)
	ctx := context.Background()
	c := f.client(t, "", nil)
	same, diff := f.symIDs[0], f.symIDs[1]
	other := base64.StdEncoding.EncodeToString([]byte("someone else's key, 32 bytes ok!"))
	_, err := c.BulkEnrollments(ctx, dpsservice.BulkCreate, []dpsservice.IndividualEnrollment{
		{RegistrationID: same, Attestation: dpsservice.SymmetricKeyAttestationOf(f.keys[same], "")},
		{RegistrationID: diff, Attestation: dpsservice.SymmetricKeyAttestationOf(other, "")},
	})
	if err != nil {
		t.Fatal(err)
	}
	l := f.openLedger(t)
	res, err := f.runner(t, c, l, nil).Run(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := res.Snapshot.Outcomes
	if o[batch.EnOutCreated] != 2 || o[batch.EnOutExistsSame] != 1 || o[batch.EnOutExistsDifferent] != 1 || res.Failures() != 1 {
		t.Fatalf("outcomes %v failures %d; want 2 created, 1 exists-same, 1 exists-different (a failure)", o, res.Failures())
	}
	rec, _, _ := l.Enrollment(ctx, diff)
	if rec.State != ledger.EnrollExistsDifferent || !strings.Contains(rec.ErrorMessage, "another attestation") || !strings.Contains(rec.Hint, "--mode update") || rec.ETag == "" {
		t.Errorf("exists-different row = %+v", rec)
	}
	if s, _ := f.sim.Enrollment(diff); s.Creates != 1 || s.Updates != 0 {
		t.Errorf("the different enrollment was changed: %+v", s)
	}

	// --mode update replaces it, by etag; the others are skipped.
	cc := &countingService{ServiceClient: c}
	var modes []dpsservice.BulkMode
	cc.bulk = func(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error) {
		modes = append(modes, mode)
		return c.BulkEnrollments(ctx, mode, items)
	}
	res, err = f.runner(t, cc, l, func(o *batch.EnrollOptions) { o.Mode = batch.EnrollModeUpdate }).Run(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutUpdated] != 1 || res.Snapshot.Outcomes[batch.EnOutSkipped] != 3 {
		t.Fatalf("update outcomes %v", res.Snapshot.Outcomes)
	}
	if len(modes) != 1 || modes[0] != dpsservice.BulkUpdateIfMatchETag {
		t.Errorf("bulk modes %v, want one updateIfMatchETag", modes)
	}
	got, err := c.GetEnrollment(ctx, diff)
	if err != nil {
		t.Fatal(err)
	}
	if cmp, _ := dpsservice.CompareAttestation(dpsservice.SymmetricKeyAttestationOf(f.keys[diff], ""), got.Attestation); cmp != dpsservice.Same {
		t.Errorf("after update the enrollment holds %v", cmp)
	}
}

func TestEnrollUpdateETagMismatchIsRecorded(t *testing.T) {
	f := newEnrollFixture(t, 0, 1, nil)
	ctx := context.Background()
	c := f.client(t, "", nil)
	id := f.symIDs[0]
	other := base64.StdEncoding.EncodeToString([]byte("someone else's key, 32 bytes ok!"))
	if _, err := c.PutEnrollment(ctx, &dpsservice.IndividualEnrollment{RegistrationID: id, Attestation: dpsservice.SymmetricKeyAttestationOf(other, "")}, ""); err != nil {
		t.Fatal(err)
	}
	l := f.openLedger(t)
	if _, err := f.runner(t, c, l, nil).Run(ctx, nil); err != nil {
		t.Fatal(err) // exists-different, etag recorded
	}
	// Someone changes it after dps-batch read it.
	cur, _ := c.GetEnrollment(ctx, id)
	cur.ProvisioningStatus = dpsservice.StatusDisabled
	if _, err := c.PutEnrollment(ctx, cur, cur.ETag); err != nil {
		t.Fatal(err)
	}
	res, err := f.runner(t, c, l, func(o *batch.EnrollOptions) { o.Mode = batch.EnrollModeUpdate }).Run(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutFailed] != 1 {
		t.Fatalf("outcomes %v, want the 412 recorded as a failure", res.Snapshot.Outcomes)
	}
	rec, _, _ := l.Enrollment(ctx, id)
	if rec.State != ledger.EnrollFailed || rec.HTTPStatus != 412 || !strings.Contains(rec.Hint, "etag") || rec.ETag != "" {
		t.Errorf("row after 412 = %+v", rec)
	}
	if s, _ := f.sim.Enrollment(id); s.ProvisioningStatus != "disabled" {
		t.Errorf("the other party's change was overwritten: %+v", s)
	}
	// --retry-failed replaces it knowingly.
	res, err = f.runner(t, c, l, func(o *batch.EnrollOptions) { o.Mode = batch.EnrollModeUpdate; o.RetryFailed = true }).Run(ctx, nil)
	if err != nil || res.Snapshot.Outcomes[batch.EnOutUpdated] != 1 {
		t.Fatalf("retry: %v %v", res.Snapshot.Outcomes, err)
	}
}

// lostAnswer answers the first n bulk requests with a timeout after the
// real request took effect: the answer is lost.
func lostAnswer(real batch.ServiceClient, n int) func(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error) {
	var mu sync.Mutex
	return func(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error) {
		res, err := real.BulkEnrollments(ctx, mode, items)
		mu.Lock()
		defer mu.Unlock()
		if n > 0 {
			n--
			return nil, &dpsservice.Error{Op: "bulk create enrollments", Err: context.DeadlineExceeded}
		}
		return res, err
	}
}

func TestEnrollLostAnswerIsReadBackNotSentAgain(t *testing.T) {
	f := newEnrollFixture(t, 3, 5, nil)
	l := f.openLedger(t)
	c := f.client(t, "", nil)
	cc := &countingService{ServiceClient: c}
	cc.bulk = lostAnswer(c, 1)
	res, err := f.runner(t, cc, l, func(o *batch.EnrollOptions) { o.Workers = 1 }).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutCreated] != 8 || cc.reads != 8 || len(cc.sizes) != 1 {
		t.Fatalf("outcomes %v, %d reads, %d bulk requests; want 8 created from 8 reads after one bulk request", res.Snapshot.Outcomes, cc.reads, len(cc.sizes))
	}
	f.wantCreatedOnce(t)
}

func TestEnrollDroppedResponsesAtTheServerCreateOnce(t *testing.T) {
	f := newEnrollFixture(t, 0, 40, func(c *dpssim.Config) { c.Faults = dpssim.Faults{Seed: 7, DropResponseRate: 0.3} })
	l := f.openLedger(t)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		res, err := f.runner(t, f.client(t, "", func(c *dpsservice.Config) { c.Timeout = 2 * time.Second }), l, nil).Run(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Resumable() {
			break
		}
	}
	f.wantCreatedOnce(t)
	wantStates(t, l, f.ids(), ledger.EnrollCreated)
}

func TestEnrollResumesAfterAKillMidCall(t *testing.T) {
	f := newEnrollFixture(t, 2, 8, nil)
	ctx := context.Background()
	c := f.client(t, "", nil)
	l := f.openLedger(t)
	// A run was killed right after recording its intent for these ten and
	// sending the bulk request: the server took it for the first five
	// (their answer was never recorded), not for the others.
	ids := f.ids()
	run, err := l.StartRun(ctx, "enroll", nil)
	if err != nil {
		t.Fatal(err)
	}
	var intents []ledger.Enrollment
	for _, id := range ids {
		intents = append(intents, ledger.Enrollment{RegistrationID: id, State: ledger.EnrollCreating, Op: "create", IntentAt: time.Now(), Calls: 1, RunID: run})
	}
	if err := l.PutEnrollments(ctx, intents); err != nil {
		t.Fatal(err)
	}
	took := ids[:5]
	var items []dpsservice.IndividualEnrollment
	for _, id := range took {
		if k, ok := f.keys[id]; ok {
			items = append(items, dpsservice.IndividualEnrollment{RegistrationID: id, Attestation: dpsservice.SymmetricKeyAttestationOf(k, "")})
		} else {
			cert := loadLeaf(t, f, id)
			items = append(items, dpsservice.IndividualEnrollment{RegistrationID: id, Attestation: dpsservice.X509ClientAttestation(cert)})
		}
	}
	if _, err := c.BulkEnrollments(ctx, dpsservice.BulkCreate, items); err != nil {
		t.Fatal(err)
	}

	cc := &countingService{ServiceClient: c}
	res, err := f.runner(t, cc, l, nil).Run(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutCreated] != 10 || cc.reads != 10 {
		t.Fatalf("outcomes %v after %d reads; want all 10 created, each read back first", res.Snapshot.Outcomes, cc.reads)
	}
	sent := 0
	for _, n := range cc.sizes {
		sent += n
	}
	if sent != 5 {
		t.Errorf("%d items sent again, want the 5 the server did not take", sent)
	}
	f.wantCreatedOnce(t)
}

func loadLeaf(t *testing.T, f *enrollFixture, id string) *x509.Certificate {
	t.Helper()
	rd, err := manifests.Open(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for {
		row, err := rd.Next()
		if err != nil {
			t.Fatalf("%s not in manifest: %v", id, err)
		}
		if row.RegistrationID != id {
			continue
		}
		dev, problems := rd.Load(row, manifests.Options{})
		if dev == nil {
			t.Fatal(problems)
		}
		return dev.Certificate.Leaf
	}
}

func TestEnrollPerItemErrorsAreRecordedPerDevice(t *testing.T) {
	f := newEnrollFixture(t, 0, 12, nil)
	c := f.client(t, "", nil)
	victim := f.symIDs[3]
	cc := &countingService{ServiceClient: c}
	cc.bulk = func(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error) {
		var keep []dpsservice.IndividualEnrollment
		for _, e := range items {
			if e.RegistrationID != victim {
				keep = append(keep, e)
			}
		}
		res, err := c.BulkEnrollments(ctx, mode, keep)
		if err != nil || len(keep) == len(items) {
			return res, err
		}
		res.IsSuccessful = false
		res.Errors = append(res.Errors, dpsservice.BulkError{RegistrationID: victim, ErrorCode: 400004, ErrorStatus: "Invalid attestation"})
		return res, nil
	}
	l := f.openLedger(t)
	res, err := f.runner(t, cc, l, nil).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutCreated] != 11 || res.Snapshot.Outcomes[batch.EnOutFailed] != 1 {
		t.Fatalf("outcomes %v", res.Snapshot.Outcomes)
	}
	rec, _, _ := l.Enrollment(context.Background(), victim)
	if rec.State != ledger.EnrollFailed || rec.ErrorCode != 400004 || rec.HTTPStatus != 400 || rec.ErrorMessage != "Invalid attestation" || rec.Hint == "" {
		t.Errorf("victim row = %+v", rec)
	}
}

func TestEnrollWholeRequestRefusedIsSplit(t *testing.T) {
	f := newEnrollFixture(t, 0, 5, nil)
	c := f.client(t, "", nil)
	victim := f.symIDs[2]
	cc := &countingService{ServiceClient: c}
	cc.bulk = func(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error) {
		for _, e := range items {
			if e.RegistrationID == victim {
				return nil, &dpsservice.Error{Op: "bulk", HTTPStatus: 400, Code: 400004, Message: "bad item"}
			}
		}
		return c.BulkEnrollments(ctx, mode, items)
	}
	l := f.openLedger(t)
	res, err := f.runner(t, cc, l, nil).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutCreated] != 4 || res.Snapshot.Outcomes[batch.EnOutFailed] != 1 {
		t.Fatalf("outcomes %v, sizes %v", res.Snapshot.Outcomes, cc.sizes)
	}
	wantStates(t, l, []string{victim}, ledger.EnrollFailed)
}

func TestEnrollThrottledStaysCorrect(t *testing.T) {
	f := newEnrollFixture(t, 0, 60, func(c *dpssim.Config) {
		c.Quotas.ServiceOperationsPerMinute = 240 // 4/s
		c.Quotas.ServiceOperationBurst = 1
	})
	l := f.openLedger(t)
	// Three times the quota, in batches of 2 (30 requests).
	r := f.runner(t, f.client(t, "", nil), l, func(o *batch.EnrollOptions) { o.Rate = 720; o.BatchSize = 2; o.MaxRetryAfter = 2 * time.Second })
	res, err := r.Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutCreated] != 60 {
		t.Fatalf("outcomes %v", res.Snapshot.Outcomes)
	}
	if res.Snapshot.Throttled == 0 || res.Rate >= 720 {
		t.Errorf("throttled %d, rate now %.0f/min: want 429s seen and the rate cut", res.Snapshot.Throttled, res.Rate)
	}
	f.wantCreatedOnce(t)
}

func TestEnrollWithinQuotaHasNo429(t *testing.T) {
	f := newEnrollFixture(t, 0, 40, func(c *dpssim.Config) {
		c.Quotas.ServiceOperationsPerMinute = 600 // 10/s
		// A bucket of 3 absorbs the jitter of request arrival times; the
		// real quota is per minute.
		c.Quotas.ServiceOperationBurst = 3
	})
	l := f.openLedger(t)
	r := f.runner(t, f.client(t, "", nil), l, func(o *batch.EnrollOptions) { o.Rate = 540; o.BatchSize = 2 })
	res, err := r.Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Outcomes[batch.EnOutCreated] != 40 || res.Snapshot.Throttled != 0 {
		t.Errorf("outcomes %v, throttled %d; want 40 created with no 429", res.Snapshot.Outcomes, res.Snapshot.Throttled)
	}
}

func TestEnrollStopsOnCredentialErrors(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		mod    func(*dpsservice.Config)
		status int
	}{
		{"read-only policy", "readonly", nil, 0},
		{"expired SAS", "", func(c *dpsservice.Config) {
			c.Credential.(*dpsservice.SharedAccessKey).Now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
		}, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newEnrollFixture(t, 0, 25, nil)
			l := f.openLedger(t)
			cc := &countingService{ServiceClient: f.client(t, tt.policy, tt.mod)}
			res, err := f.runner(t, cc, l, nil).Run(context.Background(), nil)
			var se *batch.EnrollStopError
			if !errors.As(err, &se) || se.Hint == "" {
				t.Fatalf("err = %v, want *EnrollStopError with a hint", err)
			}
			if st := dpsservice.Status(err); st != 401 && st != 403 || tt.status != 0 && st != tt.status {
				t.Errorf("status %d, want 401 or 403", st)
			}
			if res == nil || !res.Resumable() || res.Left() != 25 {
				t.Errorf("result %+v: want every device left for the next run", res)
			}
			if len(cc.sizes) > 4 {
				t.Errorf("%d bulk requests after a credential error; want the run to stop", len(cc.sizes))
			}
			if n := len(f.sim.Enrollments()); n != 0 {
				t.Errorf("%d enrollments created", n)
			}
			recs, _ := l.Enrollments(context.Background(), f.ids())
			for _, id := range f.ids() {
				if s := recs[id].State; s != ledger.EnrollPending && s != ledger.EnrollRetryable {
					t.Errorf("%s is %s after a refused request, want pending or retryable", id, s)
				}
			}
		})
	}
}

func TestEnrollStopsOnAHostThatIsNotDPS(t *testing.T) {
	t.Run("refused connections", func(t *testing.T) {
		f := newEnrollFixture(t, 0, 30, nil)
		ln := httptest.NewUnstartedServer(http.NotFoundHandler())
		addr := ln.Listener.Addr().String()
		ln.Listener.Close() // nothing listens there now
		cred, _ := dpsservice.NewSharedAccessKey(addr, "p", ownerPolicyKey)
		c, err := dpsservice.NewClient(dpsservice.Config{Credential: cred, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		l := f.openLedger(t)
		_, err = f.runner(t, c, l, nil).Run(context.Background(), nil)
		var se *batch.EnrollStopError
		if !errors.As(err, &se) || !strings.Contains(se.Hint, "nothing answered") {
			t.Fatalf("err = %v, want a stop naming the host", err)
		}
	})
	t.Run("bare 404", func(t *testing.T) {
		f := newEnrollFixture(t, 0, 3, nil)
		ts := httptest.NewTLSServer(http.NotFoundHandler())
		t.Cleanup(ts.Close)
		u, _ := url.Parse(ts.URL)
		cred, _ := dpsservice.NewSharedAccessKey(u.Host, "p", ownerPolicyKey)
		c, err := dpsservice.NewClient(dpsservice.Config{Credential: cred, HTTPClient: ts.Client()})
		if err != nil {
			t.Fatal(err)
		}
		l := f.openLedger(t)
		_, err = f.runner(t, c, l, nil).Run(context.Background(), nil)
		var se *batch.EnrollStopError
		if !errors.As(err, &se) {
			t.Fatalf("err = %v, want a stop", err)
		}
	})
}

// registerAll provisions the fixture's symmetric devices through the device API.
func registerAll(t *testing.T, f *enrollFixture, ids []string) {
	t.Helper()
	dc, err := dps.NewClient(dps.Config{Endpoint: f.run.URL, IDScope: enrollScope, RootCAs: f.run.CAPool})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ctx := context.Background()
	for _, id := range ids {
		key, _ := base64.StdEncoding.DecodeString(f.keys[id])
		d := dps.NewSymmetricKeyDevice(id, key)
		resp, err := dc.Register(ctx, d, nil)
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		for st := resp.Operation.Status; !st.Final(); {
			time.Sleep(10 * time.Millisecond)
			r, err := dc.OperationStatus(ctx, d, resp.Operation.OperationID)
			if err != nil {
				t.Fatal(err)
			}
			st = r.Operation.Status
		}
	}
}

func TestDeregister(t *testing.T) {
	f := newEnrollFixture(t, 0, 6, func(c *dpssim.Config) {
		c.Hubs = []string{"hub-a.azure-devices.net"}
	})
	ctx := context.Background()
	c := f.client(t, "", nil)
	l := f.openLedger(t)
	if _, err := f.runner(t, c, l, nil).Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	registered := f.symIDs[:4]
	registerAll(t, f, registered)

	res, err := f.runner(t, c, l, func(o *batch.EnrollOptions) { o.Mode = batch.EnrollModeDeregister; o.DeleteEnrollments = true }).Run(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := res.Snapshot
	if s.Outcomes[batch.EnOutDeregistered] != 6 || s.RegDeleted != 4 || s.RegNone != 2 {
		t.Fatalf("deregister: outcomes %v, %d deleted, %d none", s.Outcomes, s.RegDeleted, s.RegNone)
	}
	for _, id := range f.symIDs {
		if _, err := c.GetRegistrationState(ctx, id); !dpsservice.IsNotFound(err) {
			t.Errorf("registration state of %s: %v, want 404", id, err)
		}
		if e, _ := f.sim.Enrollment(id); e.Exists || e.Deletes != 1 {
			t.Errorf("enrollment %s: %+v, want deleted once", id, e)
		}
	}
	wantStates(t, l, f.ids(), ledger.EnrollDeleted)
	res, err = f.runner(t, c, l, func(o *batch.EnrollOptions) { o.Mode = batch.EnrollModeDeregister; o.DeleteEnrollments = true }).Run(ctx, nil)
	if err != nil || res.Snapshot.Outcomes[batch.EnOutSkipped] != 6 || res.Snapshot.Requests() != 0 {
		t.Errorf("second deregister: %v %+v, want all skipped", err, res.Snapshot)
	}
	// Enrolling again after retirement (re-manufacture) creates anew.
	res, err = f.runner(t, c, l, nil).Run(ctx, nil)
	if err != nil || res.Snapshot.Outcomes[batch.EnOutCreated] != 6 {
		t.Errorf("re-enroll: %v %v", err, res.Snapshot.Outcomes)
	}
}

func TestEnrollDeleteMode(t *testing.T) {
	f := newEnrollFixture(t, 2, 3, nil)
	ctx := context.Background()
	c := f.client(t, "", nil)
	l := f.openLedger(t)
	if _, err := f.runner(t, c, l, nil).Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	res, err := f.runner(t, c, l, func(o *batch.EnrollOptions) { o.Mode = batch.EnrollModeDelete }).Run(ctx, nil)
	if err != nil || res.Snapshot.Outcomes[batch.EnOutDeleted] != 5 {
		t.Fatalf("delete: %v %v", err, res.Snapshot.Outcomes)
	}
	for _, id := range f.ids() {
		if e, _ := f.sim.Enrollment(id); e.Exists {
			t.Errorf("%s still exists", id)
		}
	}
}

func TestEnrollTemplateAndDeviceID(t *testing.T) {
	f := newEnrollFixture(t, 0, 2, func(c *dpssim.Config) { c.Hubs = []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net"} })
	// Add a device_name column.
	b, _ := os.ReadFile(f.manifest)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	lines[0] += ",device_name"
	for i := 1; i < len(lines); i++ {
		lines[i] += fmt.Sprintf(",boiler-%d", i)
	}
	os.WriteFile(f.manifest, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	c := f.client(t, "", nil)
	l := f.openLedger(t)
	tpl := dpsservice.IndividualEnrollment{ProvisioningStatus: dpsservice.StatusDisabled, IoTHubs: []string{"hub-b.azure-devices.net"}, AllocationPolicy: dpsservice.AllocationStatic,
		InitialTwin: &dpsservice.InitialTwin{Tags: []byte(`{"line":"3"}`)}}
	res, err := f.runner(t, c, l, func(o *batch.EnrollOptions) { o.Template = tpl; o.DeviceIDFrom = "device_name" }).Run(context.Background(), nil)
	if err != nil || res.Snapshot.Outcomes[batch.EnOutCreated] != 2 {
		t.Fatalf("%v %v", err, res)
	}
	got, err := c.GetEnrollment(context.Background(), f.symIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if got.DeviceID != "boiler-1" || got.ProvisioningStatus != dpsservice.StatusDisabled || len(got.IoTHubs) != 1 || got.AllocationPolicy != dpsservice.AllocationStatic {
		t.Errorf("enrollment = %+v", got)
	}

	// A bad device id refuses the run before anything is sent.
	lines[1] = strings.Replace(lines[1], "boiler-1", "boiler 1/x", 1)
	os.WriteFile(f.manifest, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	_, err = f.runner(t, c, l, func(o *batch.EnrollOptions) { o.DeviceIDFrom = "device_name"; o.Mode = batch.EnrollModeUpdate }).Run(context.Background(), nil)
	var re *batch.RowsError
	if !errors.As(err, &re) || len(re.Problems) != 1 || re.Problems[0].Line != 2 {
		t.Errorf("err = %v, want one problem on line 2", err)
	}
}

func TestExportEnrollmentsPagesWithRetries(t *testing.T) {
	f := newEnrollFixture(t, 0, 57, nil)
	c := f.client(t, "", nil)
	l := f.openLedger(t)
	if _, err := f.runner(t, c, l, nil).Run(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if err := f.sim.SetFaults(dpssim.Faults{Seed: 11, ServiceErrorRate: 0.4}); err != nil {
		t.Fatal(err)
	}
	var got []string
	st, err := batch.ExportEnrollments(context.Background(), c, batch.ExportOptions{PageSize: 8, Rate: -1, MaxAttempts: 20,
		Backoff: batch.Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond}}, func(e dpsservice.IndividualEnrollment) error {
		got = append(got, e.RegistrationID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 57 || st.Pages != 8 || st.Retries == 0 {
		t.Errorf("exported %d in %d pages with %d retries; want 57 in 8 pages, some retried", len(got), st.Pages, st.Retries)
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Errorf("%s exported twice", id)
		}
		seen[id] = true
	}
}

// groupClient loses the answer of the first bulk request after it took effect.
type groupClient struct {
	*dpsservice.Client
	lost int
}

func (g *groupClient) BulkGroups(ctx context.Context, mode dpsservice.BulkMode, groups []dpsservice.EnrollmentGroup) (*dpsservice.BulkResult, error) {
	res, err := g.Client.BulkGroups(ctx, mode, groups)
	if g.lost > 0 {
		g.lost--
		return nil, &dpsservice.Error{Op: "bulk create enrollment groups", Err: context.DeadlineExceeded}
	}
	return res, err
}

func TestEnrollGroupCreatesOnce(t *testing.T) {
	f := newEnrollFixture(t, 0, 0, nil)
	key := base64.StdEncoding.EncodeToString([]byte("group key, 32 bytes long, really"))
	g := dpsservice.EnrollmentGroup{EnrollmentGroupID: "sensors", Attestation: dpsservice.SymmetricKeyAttestationOf(key, "")}
	c := &groupClient{Client: f.client(t, "", nil), lost: 1}
	o := batch.GroupOptions{Backoff: batch.Backoff{Base: time.Millisecond}}
	res, err := batch.EnrollGroup(context.Background(), c, g, o)
	if err != nil || res.Outcome != batch.GroupCreated {
		t.Fatalf("first: %+v, %v; want created (read back after the lost answer)", res, err)
	}
	res, err = batch.EnrollGroup(context.Background(), c, g, o)
	if err != nil || res.Outcome != batch.GroupExistsSame {
		t.Fatalf("again: %+v, %v; want exists-same", res, err)
	}
	other := g
	other.Attestation = dpsservice.SymmetricKeyAttestationOf(base64.StdEncoding.EncodeToString([]byte("another key, 32 bytes long, yes!")), "")
	if res, err = batch.EnrollGroup(context.Background(), c, other, o); err != nil || res.Outcome != batch.GroupExistsDifferent {
		t.Fatalf("other key: %+v, %v; want exists-different", res, err)
	}
	o.Update = true
	if res, err = batch.EnrollGroup(context.Background(), c, other, o); err != nil || res.Outcome != batch.GroupUpdated {
		t.Fatalf("update: %+v, %v", res, err)
	}
	if gi, _ := f.sim.EnrollmentGroup("sensors"); gi.Creates != 1 || gi.Updates != 1 {
		t.Errorf("at the simulator: %+v, want 1 create and 1 update", gi)
	}
}

package batch_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// issueFixture is a symmetric-key group fleet whose rows carry P-384
// operational keys (csr_key_path), a simulator whose group names a
// credential policy, and a client of the certificate-issuing api-version.
func issueFixture(t *testing.T, n int, tweak func(*dpssim.Config)) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), groupKey: randomKey(t)}
	zero := 0
	cfg := dpssim.Config{
		IDScope:           dpssim.DefaultIDScope,
		RetryAfterSeconds: &zero,
		Groups: []dpssim.EnrollmentGroup{{EnrollmentGroupID: "sas-group", CredentialPolicyName: "line-1",
			Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(f.groupKey)}}}},
		CredentialPolicies: []dpssim.CredentialPolicy{{Name: "line-1", ValidityDays: 30}},
		Quotas:             dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	}
	var rows strings.Builder
	rows.WriteString("registration_id,csr_key_path\n")
	must(t, os.Mkdir(filepath.Join(f.dir, "keys"), 0o700))
	for i := range n {
		id := fmt.Sprintf("cert-dev-%04d", i)
		key, err := certs.GenerateCSRKey()
		must(t, err)
		der, err := x509.MarshalECPrivateKey(key)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(f.dir, "keys", id+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600))
		fmt.Fprintf(&rows, "%s,keys/%s.key\n", id, id)
		f.ids = append(f.ids, id)
	}
	f.manifest = filepath.Join(f.dir, "manifest.csv")
	must(t, os.WriteFile(f.manifest, []byte(rows.String()), 0o600))
	if tweak != nil {
		tweak(&cfg)
	}
	var err error
	f.sim, err = dpssim.New(cfg)
	must(t, err)
	f.running, err = dpssim.StartTLS(f.sim, "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { f.running.Close() })
	f.client, err = dps.NewClient(dps.Config{Endpoint: f.running.URL, IDScope: dpssim.DefaultIDScope, RootCAs: f.running.CAPool,
		APIVersion: dps.CertificateIssuanceAPIVersion})
	must(t, err)
	t.Cleanup(f.client.Close)
	f.openLedger(t)
	return f
}

func (f *fixture) issuingRunner() *batch.Runner {
	r := f.runner(nil)
	r.Options.Manifest = manifests.Options{GroupKey: f.groupKey, IssueCerts: true}
	return r
}

// policyRoot returns the simulator's issuing root for the policy.
func policyRoot(t *testing.T, f *fixture) *x509.CertPool {
	t.Helper()
	info, ok := f.sim.CredentialPolicy("line-1")
	if !ok {
		t.Fatal("simulator has no credential policy line-1")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(info.RootPEM)) {
		t.Fatal("policy root PEM does not parse")
	}
	return pool
}

// verifyIssued checks the device's issued chain file: leaf first, CN = id,
// the CSR key's certificate, verifying to the policy's root; and that the
// ledger's identity of it matches the file and the simulator's last issue.
func verifyIssued(t *testing.T, f *fixture, roots *x509.CertPool, id string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.dir, "issued", id+".pem"))
	if err != nil {
		t.Errorf("device %s: %v", id, err)
		return
	}
	chain, err := certs.ParseCertsPEM(data)
	if err != nil || len(chain) < 2 {
		t.Errorf("device %s: chain file: %d certificates, err %v", id, len(chain), err)
		return
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device %s: issued chain does not verify: %v", id, err)
	}
	if leaf.Subject.CommonName != id {
		t.Errorf("device %s: issued CN %q", id, leaf.Subject.CommonName)
	}
	keyPEM, err := os.ReadFile(filepath.Join(f.dir, "keys", id+".key"))
	must(t, err)
	key, err := certs.ParseKeyPEM(keyPEM)
	must(t, err)
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Errorf("device %s: issued certificate is not for the device's operational key", id)
	}
	d, _, err := f.ledger.Device(context.Background(), id)
	must(t, err)
	if want := strings.ToUpper(leaf.SerialNumber.Text(16)); d.Issued.Serial != want || !d.Issued.NotAfter.Equal(leaf.NotAfter.Truncate(time.Millisecond)) {
		t.Errorf("device %s: ledger issued %+v, file serial %s notAfter %s", id, d.Issued, want, leaf.NotAfter)
	}
	if r, ok := f.sim.Registration(id); !ok || r.LastIssuedSerial != d.Issued.Serial {
		t.Errorf("device %s: simulator's last issued serial %q, ledger %q", id, r.LastIssuedSerial, d.Issued.Serial)
	}
}

// TestIssueCertsWritesVerifyingChains: every device sends its CSR, gets a
// chain, and has it written before it is recorded assigned; the simulator
// issued exactly one certificate per device.
func TestIssueCertsWritesVerifyingChains(t *testing.T) {
	f := issueFixture(t, 40, nil)
	res, err := f.issuingRunner().Run(context.Background(), nil)
	must(t, err)
	if got := res.Snapshot.CertsWritten; got != 40 {
		t.Errorf("CertsWritten=%d, want 40", got)
	}
	roots := policyRoot(t, f)
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(context.Background(), id)
		must(t, err)
		if d.State != ledger.StateAssigned {
			t.Errorf("device %s: state %s (%s), want assigned", id, d.State, d.ErrorMessage)
			continue
		}
		verifyIssued(t, f, roots, id)
		r, _ := f.sim.Registration(id)
		if r.Registers != 1 || r.CertificatesIssued != 1 {
			t.Errorf("device %s: %d registrations, %d certificates issued at the server, want 1 and 1", id, r.Registers, r.CertificatesIssued)
		}
	}
}

// TestLostIssuedAnswerIsIssuedLostThenReissued: when the answer carrying the
// chain is lost, the device ends issued-lost with the remedy, a re-run
// registers nothing, and --reissue registers exactly those devices once
// more and writes their new certificates.
func TestLostIssuedAnswerIsIssuedLostThenReissued(t *testing.T) {
	f := issueFixture(t, 30, func(c *dpssim.Config) {
		c.Faults.Seed = 7
		c.Faults.LoseIssuedAnswerRate = 0.4
	})
	ctx := context.Background()
	res, err := f.issuingRunner().Run(ctx, nil)
	must(t, err)
	lost := map[string]bool{}
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		switch d.State {
		case ledger.StateIssuedLost:
			lost[id] = true
			if !strings.Contains(d.Hint, "--reissue") {
				t.Errorf("device %s: issued-lost hint %q, want the --reissue remedy", id, d.Hint)
			}
		case ledger.StateAssigned:
		default:
			t.Errorf("device %s: state %s (%s)", id, d.State, d.ErrorMessage)
		}
		r, _ := f.sim.Registration(id)
		if r.Registers != 1 {
			t.Errorf("device %s: %d registrations at the server, want 1", id, r.Registers)
		}
		if lost[id] != (r.ChainsDelivered == 0) {
			t.Errorf("device %s: ledger issued-lost=%v but the server delivered %d chains", id, lost[id], r.ChainsDelivered)
		}
	}
	if len(lost) == 0 || len(lost) == len(f.ids) {
		t.Fatalf("%d of %d devices issued-lost; the fault rate should lose some, not all", len(lost), len(f.ids))
	}
	if res.Snapshot.CertsLost != len(lost) || res.Snapshot.Outcomes[batch.OutcomeIssuedLost] != len(lost) {
		t.Errorf("summary: %d lost, %d issued-lost outcomes; ledger has %d", res.Snapshot.CertsLost, res.Snapshot.Outcomes[batch.OutcomeIssuedLost], len(lost))
	}

	// The same command again registers nothing.
	if _, err := f.issuingRunner().Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range f.ids {
		if r, _ := f.sim.Registration(id); r.Registers != 1 {
			t.Errorf("device %s: %d registrations after a plain re-run, want 1", id, r.Registers)
		}
	}

	// --reissue: exactly the issued-lost devices, once each (no faults now).
	must(t, f.sim.SetFaults(dpssim.Faults{}))
	r := f.issuingRunner()
	r.Options.Policy.Reissue = true
	if _, err := r.Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	roots := policyRoot(t, f)
	for _, id := range f.ids {
		want := 1
		if lost[id] {
			want = 2
		}
		if r, _ := f.sim.Registration(id); r.Registers != want {
			t.Errorf("device %s (issued-lost %v): %d registrations after --reissue, want %d", id, lost[id], r.Registers, want)
		}
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		if d.State != ledger.StateAssigned {
			t.Errorf("device %s: state %s after --reissue, want assigned", id, d.State)
			continue
		}
		verifyIssued(t, f, roots, id)
	}
	// And --reissue again does nothing: its campaign completed.
	r = f.issuingRunner()
	r.Options.Policy.Reissue = true
	if _, err := r.Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range f.ids {
		want := 1
		if lost[id] {
			want = 2
		}
		if r, _ := f.sim.Registration(id); r.Registers != want {
			t.Errorf("device %s: %d registrations after a second --reissue, want %d", id, r.Registers, want)
		}
	}
}

// rewindToAssigning puts every device back where a kill between DPS's
// final answer and the ledger's record of it leaves the row: assigning,
// with its operation id, the CSR sent; with keep, the chain DPS returned is
// in the row, as the runner keeps it before writing the file.
func rewindToAssigning(t *testing.T, f *fixture, keep bool) {
	t.Helper()
	ctx := context.Background()
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		path := filepath.Join(f.dir, "issued", id+".pem")
		chain, err := os.ReadFile(path)
		must(t, err)
		must(t, os.Remove(path))
		d.State, d.Issued, d.FinishedAt, d.CSRSent, d.IssuedChain = ledger.StateAssigning, ledger.IssuedCert{}, time.Time{}, true, ""
		if keep {
			d.IssuedChain = string(chain)
		}
		must(t, f.ledger.Put(ctx, d))
	}
}

// TestKeptChainIsWrittenByTheNextRun: a run that stopped after keeping
// the chain in the ledger and before its file was durable is finished by
// the next one from the ledger, though DPS no longer returns the chain,
// and nothing is registered again.
func TestKeptChainIsWrittenByTheNextRun(t *testing.T) {
	f := issueFixture(t, 3, nil)
	ctx := context.Background()
	if _, err := f.issuingRunner().Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	rewindToAssigning(t, f, true)
	res, err := f.issuingRunner().Run(ctx, nil)
	must(t, err)
	roots := policyRoot(t, f)
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		if d.State != ledger.StateAssigned || d.IssuedChain != "" {
			t.Errorf("device %s: %s (%s), chain still kept: %v; want assigned from the kept chain", id, d.State, d.ErrorMessage, d.IssuedChain != "")
			continue
		}
		verifyIssued(t, f, roots, id)
		if r, _ := f.sim.Registration(id); r.Registers != 1 {
			t.Errorf("device %s: %d registrations, want 1", id, r.Registers)
		}
	}
	if res.Snapshot.CertsWritten != 3 {
		t.Errorf("CertsWritten=%d, want 3", res.Snapshot.CertsWritten)
	}

	// Without the kept chain, the file left by the earlier run is not
	// taken (it may be any old certificate): the device is issued-lost.
	rewindToAssigning(t, f, false)
	if _, err := f.issuingRunner().Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range f.ids {
		if d, _, _ := f.ledger.Device(ctx, id); d.State != ledger.StateIssuedLost {
			t.Errorf("device %s: %s, want issued-lost", id, d.State)
		}
	}
}

// TestUnwritableOutputKeepsTheChains: when the issued folder cannot be
// written mid-run, the run stops registering, every certificate DPS issued
// is kept in the ledger (none is lost), and the same command, once the
// folder is fixed, writes them all without registering anything again.
func TestUnwritableOutputKeepsTheChains(t *testing.T) {
	f := issueFixture(t, 12, func(c *dpssim.Config) { c.AssignmentDelay = dpssim.Duration(time.Second) })
	ctx := context.Background()
	r := f.issuingRunner()
	type ran struct {
		res *batch.Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		res, err := r.Run(ctx, nil)
		done <- ran{res, err}
	}()
	// The folder breaks once every device is registered (and loaded),
	// before DPS assigns them: a file where it should be.
	for f.sim.Stats().Registers < int64(len(f.ids)) {
		time.Sleep(5 * time.Millisecond)
	}
	blocker := filepath.Join(f.dir, "issued")
	must(t, os.RemoveAll(blocker))
	must(t, os.WriteFile(blocker, []byte("not a folder"), 0o644))
	out := <-done
	res, err := out.res, out.err
	if err == nil || !strings.Contains(err.Error(), "cannot write issued certificates") {
		t.Fatalf("run err=%v, want the halt naming the unwritable folder", err)
	}
	if res.Snapshot.CertsLost != 0 || res.Snapshot.Outcomes[batch.OutcomeIssuedLost] != 0 {
		t.Errorf("%d certificates lost, want none", res.Snapshot.CertsLost)
	}
	delivered := 0
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		ri, _ := f.sim.Registration(id)
		delivered += ri.ChainsDelivered
		if ri.ChainsDelivered > 0 && (d.IssuedChain == "" || d.State == ledger.StateAssigned || d.State == ledger.StateIssuedLost) {
			t.Errorf("device %s: DPS delivered its chain, ledger %s with chain kept %v", id, d.State, d.IssuedChain != "")
		}
	}
	if delivered == 0 {
		t.Fatal("no chain was delivered before the halt: the test did not exercise the failed write")
	}
	must(t, os.Remove(blocker))
	if _, err := f.issuingRunner().Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	roots := policyRoot(t, f)
	for _, id := range f.ids {
		verifyIssued(t, f, roots, id)
		if ri, _ := f.sim.Registration(id); ri.Registers != 1 {
			t.Errorf("device %s: %d registrations, want 1", id, ri.Registers)
		}
	}
}

// TestCSRInFlightNeedsIssueCerts: a registration that sent a CSR, resumed
// by a run without --issue-certs, is not followed (its answer would be
// spent without the certificate): the device stays unfinished; with
// --issue-certs the chain is received and written, and nothing is
// registered again.
func TestCSRInFlightNeedsIssueCerts(t *testing.T) {
	f := issueFixture(t, 4, func(c *dpssim.Config) { c.IssuedChainEveryPoll = true })
	ctx := context.Background()
	if _, err := f.issuingRunner().Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	rewindToAssigning(t, f, false)
	plain := f.runner(nil)
	plain.Options.Manifest = manifests.Options{GroupKey: f.groupKey, IgnoreCSRColumns: true}
	before := f.sim.Stats()
	res, err := plain.Run(ctx, nil)
	must(t, err)
	if after := f.sim.Stats(); after.Polls != before.Polls || after.Lookups != before.Lookups || after.RegisterRequests != before.RegisterRequests {
		t.Errorf("the run without --issue-certs sent %d polls, %d lookups, %d register requests; want none",
			after.Polls-before.Polls, after.Lookups-before.Lookups, after.RegisterRequests-before.RegisterRequests)
	}
	if res.Snapshot.Outcomes[batch.OutcomeUnfinished] != 4 {
		t.Errorf("unfinished=%d, want 4", res.Snapshot.Outcomes[batch.OutcomeUnfinished])
	}
	for _, id := range f.ids {
		d, _, err := f.ledger.Device(ctx, id)
		must(t, err)
		if d.State != ledger.StateAssigning {
			t.Errorf("device %s: %s, want left assigning", id, d.State)
		}
	}
	if _, err := f.issuingRunner().Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	roots := policyRoot(t, f)
	for _, id := range f.ids {
		verifyIssued(t, f, roots, id)
		if ri, _ := f.sim.Registration(id); ri.Registers != 1 {
			t.Errorf("device %s: %d registrations, want 1", id, ri.Registers)
		}
	}
}

// TestIssueCertsOnAssignedDevicesSaysReprovision: turning on certificate
// issuance for devices assigned without one registers nothing and says
// so; --reprovision registers them again with their CSR and writes their
// certificates.
func TestIssueCertsOnAssignedDevicesSaysReprovision(t *testing.T) {
	f := issueFixture(t, 6, nil)
	ctx := context.Background()
	plain := f.runner(nil)
	plain.Options.Manifest = manifests.Options{GroupKey: f.groupKey, IgnoreCSRColumns: true}
	if _, err := plain.Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	res, err := f.issuingRunner().Run(ctx, nil)
	must(t, err)
	if s := res.Snapshot; s.SkippedWithoutCert != 6 || s.Registers != 0 || s.CertsWritten != 0 {
		t.Errorf("issuing run over assigned devices: %d skipped without a certificate, %d registrations, %d certificates; want 6, 0, 0",
			s.SkippedWithoutCert, s.Registers, s.CertsWritten)
	}
	r := f.issuingRunner()
	r.Options.Policy.Reprovision = true
	res, err = r.Run(ctx, nil)
	must(t, err)
	if res.Snapshot.CertsWritten != 6 {
		t.Errorf("--reprovision --issue-certs wrote %d certificates, want 6", res.Snapshot.CertsWritten)
	}
	roots := policyRoot(t, f)
	for _, id := range f.ids {
		verifyIssued(t, f, roots, id)
		if r, _ := f.sim.Registration(id); r.Registers != 2 || r.CertificatesIssued != 1 {
			t.Errorf("device %s: %d registrations, %d certificates at the server; want 2 and 1", id, r.Registers, r.CertificatesIssued)
		}
	}
}

package dpssim

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// Keys for CSRs, made once: RSA and P-384 generation is slow under -race.
var (
	p384Key = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECKey(elliptic.P384()) })
	p256Key = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECKey(elliptic.P256()) })
	rsaKey  = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func mustECKey(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// newCSR returns a DER PKCS#10 request for cn signed by key.
func newCSR(t *testing.T, cn string, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

// issueConfig serves a symmetric key group and an individual enrollment
// linked to the generated credential policy "factory", and an individual
// enrollment linked to none.
func issueConfig() Config {
	return Config{
		IDScope:            testScope,
		RetryAfterSeconds:  new(int),
		Quotas:             Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
		CredentialPolicies: []CredentialPolicy{{Name: "factory"}},
		Groups: []EnrollmentGroup{
			{EnrollmentGroupID: "fleet", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}, CredentialPolicyName: "factory"},
		},
		Individual: []IndividualEnrollment{
			{RegistrationID: "plain-1", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}},
		},
	}
}

// fleetDevice is a device of the "fleet" group.
func fleetDevice(id string) *dps.Device {
	return dps.NewSymmetricKeyDevice(id, dps.DeriveDeviceKeyBytes(groupKey, id))
}

// registerCSR registers with a CSR and polls once (assignment is at the
// first poll), returning the operation id and the final answer.
func registerCSR(t *testing.T, c *dps.Client, d *dps.Device, csr []byte) (string, *dps.RegistrationOperationStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.RegisterWithCSR(ctx, d, nil, csr)
	if err != nil {
		t.Fatalf("RegisterWithCSR %s: %v", d.RegistrationID, err)
	}
	if resp.HTTPStatus != http.StatusAccepted {
		t.Fatalf("register %s: HTTP %d, want 202", d.RegistrationID, resp.HTTPStatus)
	}
	opID := resp.Operation.OperationID
	poll, err := c.OperationStatus(ctx, d, opID)
	if err != nil {
		t.Fatalf("poll %s: %v", d.RegistrationID, err)
	}
	return opID, poll.Operation
}

// policyRoot fetches a credential policy over /_sim/ and returns its root
// and intermediates.
func policyRoot(t *testing.T, run *Running, name string) (roots, inters *x509.CertPool, info CredentialPolicyInfo) {
	t.Helper()
	status, body := admin(t, run, "GET", "/_sim/credential-policies", "")
	if status != 200 {
		t.Fatalf("GET /_sim/credential-policies: %d %s", status, body)
	}
	var list []CredentialPolicyInfo
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("decode credential policies: %v", err)
	}
	for _, p := range list {
		if p.Name == name {
			info = p
		}
	}
	if info.Name == "" {
		t.Fatalf("credential policy %q not listed: %s", name, body)
	}
	chain, err := certs.ParseCertsPEM([]byte(info.ChainPEM))
	if err != nil || len(chain) < 2 {
		t.Fatalf("chainPem: %v (%d certificates)", err, len(chain))
	}
	roots, inters = x509.NewCertPool(), x509.NewCertPool()
	root, err := certs.ParseCertsPEM([]byte(info.RootPEM))
	if err != nil || len(root) != 1 || !root[0].Equal(chain[len(chain)-1]) {
		t.Fatalf("rootPem is not the last certificate of chainPem (%v)", err)
	}
	roots.AddCert(root[0])
	for _, c := range chain[:len(chain)-1] {
		inters.AddCert(c)
	}
	return roots, inters, info
}

func simRegistration(t *testing.T, run *Running, id string) RegistrationInfo {
	t.Helper()
	status, body := admin(t, run, "GET", "/_sim/registrations/"+id, "")
	if status != 200 {
		t.Fatalf("GET /_sim/registrations/%s: %d %s", id, status, body)
	}
	var ri RegistrationInfo
	if err := json.Unmarshal(body, &ri); err != nil {
		t.Fatalf("decode registration: %v", err)
	}
	return ri
}

// TestIssueCertificate registers with a P-384 CSR through the dps client:
// the final poll carries a chain that verifies to the policy's root, names
// the device and certifies the CSR's key; a second poll and the lookup do
// not carry it, and the oracle counts one issued, one delivered.
func TestIssueCertificate(t *testing.T) {
	sim := mustNew(t, issueConfig())
	run := mustStart(t, sim)
	c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
	d := fleetDevice("cert-dev-1")
	key := p384Key()
	opID, op := registerCSR(t, c, d, newCSR(t, d.RegistrationID, key))
	if op.Status != dps.StatusAssigned || op.RegistrationState == nil {
		t.Fatalf("final = %+v, want assigned", op)
	}
	chain, err := op.RegistrationState.IssuedChain()
	if err != nil {
		t.Fatalf("IssuedChain: %v", err)
	}
	roots, inters, info := policyRoot(t, run, "factory")
	if len(chain) != 3 || !info.Generated || info.ValidityDays != DefaultValidityDays {
		t.Fatalf("chain of %d certificates, policy %+v: want leaf, issuing CA, root of a generated policy valid 30 days", len(chain), info)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued leaf does not verify to the policy root: %v", err)
	}
	// The chain as sent must itself be a path: leaf, then issuers, root last.
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			t.Errorf("chain[%d] is not signed by chain[%d]: %v", i, i+1, err)
		}
	}
	if last := chain[len(chain)-1]; last.CheckSignatureFrom(last) != nil {
		t.Errorf("the chain does not end with a self-signed root")
	}
	if leaf.Subject.CommonName != d.RegistrationID {
		t.Errorf("leaf CN = %q, want %q", leaf.Subject.CommonName, d.RegistrationID)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("leaf key is not the CSR's key")
	}
	if leaf.SignatureAlgorithm != x509.ECDSAWithSHA384 {
		t.Errorf("leaf signature algorithm = %v, want ECDSA-SHA384", leaf.SignatureAlgorithm)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 30*24*time.Hour || got > 30*24*time.Hour+time.Hour {
		t.Errorf("leaf validity = %v, want 30 days (plus the clock skew allowance)", got)
	}
	if leaf.IsCA {
		t.Errorf("issued leaf is a CA")
	}

	// Handed over once: a second poll of the same operation and the lookup
	// show the assignment without the chain.
	ctx := context.Background()
	again, err := c.OperationStatus(ctx, d, opID)
	if err != nil {
		t.Fatalf("second poll: %v", err)
	}
	if again.Operation.Status != dps.StatusAssigned || len(again.Operation.RegistrationState.IssuedCertificateChain) != 0 {
		t.Errorf("second poll = %s %v, want assigned without issuedCertificateChain", again.Operation.Status, again.Operation.RegistrationState.IssuedCertificateChain)
	}
	if _, err := again.Operation.RegistrationState.IssuedChain(); !errors.Is(err, dps.ErrNoIssuedChain) {
		t.Errorf("IssuedChain on the second poll: %v, want ErrNoIssuedChain", err)
	}
	look, err := c.RegistrationStatus(ctx, d)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if look.Registration.Status != dps.StatusAssigned || len(look.Registration.IssuedCertificateChain) != 0 {
		t.Errorf("lookup = %s %v, want assigned without issuedCertificateChain", look.Registration.Status, look.Registration.IssuedCertificateChain)
	}

	ri := simRegistration(t, run, d.RegistrationID)
	sum := sha256.Sum256(leaf.Raw)
	if ri.CertificatesIssued != 1 || ri.ChainsDelivered != 1 || ri.ChainsLost != 0 || ri.Registers != 1 {
		t.Errorf("oracle = issued %d, delivered %d, lost %d, registers %d; want 1, 1, 0, 1", ri.CertificatesIssued, ri.ChainsDelivered, ri.ChainsLost, ri.Registers)
	}
	if ri.LastIssuedSerial != strings.ToUpper(leaf.SerialNumber.Text(16)) || ri.LastIssuedSHA256 != strings.ToUpper(hex.EncodeToString(sum[:])) || !ri.LastIssuedNotAfter.Equal(leaf.NotAfter) {
		t.Errorf("oracle last issued = %s %s %v, want the leaf's serial %X, thumbprint and not-after %v", ri.LastIssuedSerial, ri.LastIssuedSHA256, ri.LastIssuedNotAfter, leaf.SerialNumber, leaf.NotAfter)
	}
	if st := sim.Stats(); st.CertificatesIssued != 1 || st.ChainsDelivered != 1 || st.ChainsLost != 0 {
		t.Errorf("stats = issued %d, delivered %d, lost %d; want 1, 1, 0", st.CertificatesIssued, st.ChainsDelivered, st.ChainsLost)
	}

	// A second registration with a new CSR issues a new certificate with a
	// different serial.
	_, op2 := registerCSR(t, c, d, newCSR(t, d.RegistrationID, key))
	chain2, err := op2.RegistrationState.IssuedChain()
	if err != nil {
		t.Fatalf("second registration: %v", err)
	}
	if chain2[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("re-registration issued the same serial %X", leaf.SerialNumber)
	}
	if ri := simRegistration(t, run, d.RegistrationID); ri.CertificatesIssued != 2 || ri.ChainsDelivered != 2 || ri.LastIssuedSerial != strings.ToUpper(chain2[0].SerialNumber.Text(16)) {
		t.Errorf("after re-registration: issued %d, delivered %d, last serial %s; want 2, 2, %X", ri.CertificatesIssued, ri.ChainsDelivered, ri.LastIssuedSerial, chain2[0].SerialNumber)
	}

	opensslVerify(t, op.RegistrationState.IssuedCertificateChain, info)
}

// opensslVerify checks an issued chain (base64 DER, leaf first) with
// openssl: the leaf, untrusted intermediates, the policy root as CA file.
func opensslVerify(t *testing.T, chain []string, info CredentialPolicyInfo) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Log("openssl not on PATH: skipping the openssl verify check (crypto/x509 checks ran)")
		return
	}
	dir := t.TempDir()
	pemOf := func(list []string) []byte {
		var out []byte
		for _, s := range list {
			der, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		return out
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := write("leaf.pem", pemOf(chain[:1]))
	untrusted := write("untrusted.pem", pemOf(chain[1:len(chain)-1]))
	root := write("root.pem", []byte(info.RootPEM))
	args := []string{"verify", "-purpose", "sslclient", "-CAfile", root, "-untrusted", untrusted, leaf}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// The root that came in the chain is the policy's root.
	if got := string(pemOf(chain[len(chain)-1:])); got != info.RootPEM {
		t.Errorf("the chain's last certificate is not the policy root")
	}
	// Without the intermediates the leaf must not verify.
	if out, err := exec.Command(bin, "verify", "-CAfile", root, leaf).CombinedOutput(); err == nil {
		t.Errorf("openssl verify without the intermediates succeeded, want failure:\n%s", out)
	}
}

// TestIssuedChainEveryPoll: with the knob, every final poll carries the chain.
func TestIssuedChainEveryPoll(t *testing.T) {
	sim := mustNew(t, issueConfig())
	k := sim.Knobs()
	k.IssuedChainEveryPoll = true
	if err := sim.SetKnobs(k); err != nil {
		t.Fatal(err)
	}
	run := mustStart(t, sim)
	c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
	d := fleetDevice("cert-every")
	opID, op := registerCSR(t, c, d, newCSR(t, d.RegistrationID, p384Key()))
	first, err := op.RegistrationState.IssuedChain()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		again, err := c.OperationStatus(context.Background(), d, opID)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := again.Operation.RegistrationState.IssuedChain()
		if err != nil || !chain[0].Equal(first[0]) {
			t.Errorf("poll %d: chain %v (%v), want the same leaf again", i+2, chain, err)
		}
	}
	if ri := simRegistration(t, run, d.RegistrationID); ri.CertificatesIssued != 1 || ri.ChainsDelivered != 3 {
		t.Errorf("oracle = issued %d, delivered %d; want 1, 3", ri.CertificatesIssued, ri.ChainsDelivered)
	}
}

// TestIssueRefusesBadCSR: CSRs outside the preview's limits get a 400 with
// a DPS error body that says what is wrong, and register nothing.
func TestIssueRefusesBadCSR(t *testing.T) {
	sim := mustNew(t, issueConfig())
	run := mustStart(t, sim)
	c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
	badSig := func(t *testing.T, id string) []byte {
		der := newCSR(t, id, p384Key())
		der[len(der)-3] ^= 0x55 // inside the ECDSA signature's s value
		return der
	}
	tests := []struct {
		name, id string
		csr      func(t *testing.T, id string) []byte
		want     string
	}{
		{"RSA", "bad-rsa", func(t *testing.T, id string) []byte { return newCSR(t, id, rsaKey()) }, "RSA"},
		{"P-256", "bad-p256", func(t *testing.T, id string) []byte { return newCSR(t, id, p256Key()) }, "P-256"},
		{"CN mismatch", "bad-cn", func(t *testing.T, id string) []byte { return newCSR(t, "someone-else", p384Key()) }, `"someone-else" does not match`},
		{"bad signature", "bad-sig", badSig, "signature"},
		{"not a CSR", "bad-der", func(t *testing.T, id string) []byte { return []byte("hello, not DER") }, "PKCS#10"},
		{"no credential policy", "plain-1", func(t *testing.T, id string) []byte { return newCSR(t, id, p384Key()) }, "credential policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := fleetDevice(tt.id)
			if tt.id == "plain-1" {
				d = dps.NewSymmetricKeyDevice(tt.id, keyA)
			}
			_, err := c.RegisterWithCSR(context.Background(), d, nil, tt.csr(t, tt.id))
			var de *dps.Error
			if !errors.As(err, &de) || de.HTTPStatus != http.StatusBadRequest || de.Code != dps.CodeBadRequest {
				t.Fatalf("register: %v, want HTTP 400 with errorCode %d", err, dps.CodeBadRequest)
			}
			if !strings.Contains(de.Message, tt.want) || de.TrackingID == "" {
				t.Errorf("message %q (tracking id %q), want it to mention %q and a tracking id", de.Message, de.TrackingID, tt.want)
			}
			if ri := simRegistration(t, run, tt.id); ri.Registers != 0 || ri.Status != "" || ri.CertificatesIssued != 0 {
				t.Errorf("after a refused CSR: registers %d, status %q, issued %d; want nothing registered", ri.Registers, ri.Status, ri.CertificatesIssued)
			}
		})
	}

	// What the client cannot send: text that is not base64, and PEM.
	raw := newRawDevice(t, run, "bad-b64", nil, dps.DeriveDeviceKeyBytes(groupKey, "bad-b64"))
	raw.apiVersion = dps.CertificateIssuanceAPIVersion
	pemCSR := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: newCSR(t, "bad-b64", p384Key())}))
	for _, tc := range []struct {
		csr  any
		want string
	}{
		{"***not base64***", "not base64"},
		{pemCSR, "PEM"},
		{42, "JSON string"},
	} {
		body, _ := json.Marshal(map[string]any{"registrationId": "bad-b64", "csr": tc.csr})
		r := raw.do(http.MethodPut, raw.registerPath(), string(body), nil)
		if r.status != http.StatusBadRequest {
			t.Fatalf("register with csr %.20v: %d %s, want 400", tc.csr, r.status, r.body)
		}
		e := r.errBody(t)
		if e.ErrorCode != dps.CodeBadRequest || e.TrackingID == "" || e.TimestampUTC == "" || !strings.Contains(e.Message, tc.want) {
			t.Errorf("error body %+v, want errorCode %d, trackingId, timestampUtc and a message about %q", e, dps.CodeBadRequest, tc.want)
		}
	}
	if ri := simRegistration(t, run, "bad-b64"); ri.Registers != 0 || ri.RegisterRequests != 2 {
		t.Errorf("bad-b64: registers %d of %d requests, want 0 of 2 (a csr that is no string is refused before authentication)", ri.Registers, ri.RegisterRequests)
	}
	if st := sim.Stats(); st.Registers != 0 || st.CertificatesIssued != 0 {
		t.Errorf("stats: registers %d, issued %d, want 0, 0", st.Registers, st.CertificatesIssued)
	}
}

// TestIssueCSRInLookup: a status lookup carrying a csr is a bad request;
// with an older api-version the field is unknown and ignored.
func TestIssueCSRInLookup(t *testing.T) {
	sim := mustNew(t, issueConfig())
	run := mustStart(t, sim)
	id := "lookup-csr"
	raw := newRawDevice(t, run, id, nil, dps.DeriveDeviceKeyBytes(groupKey, id))
	csr := base64.StdEncoding.EncodeToString(newCSR(t, id, p384Key()))
	body := `{"registrationId":"` + id + `","csr":"` + csr + `"}`
	lookupPath := func() string { return "/" + raw.scope + "/registrations/" + id + "?api-version=" + raw.version() }

	raw.apiVersion = dps.CertificateIssuanceAPIVersion
	r := raw.do(http.MethodPost, lookupPath(), body, nil)
	if r.status != http.StatusBadRequest || !strings.Contains(r.errBody(t).Message, "csr") {
		t.Errorf("lookup with csr (%s): %d %s, want 400 about the csr", raw.apiVersion, r.status, r.body)
	}

	// Older versions: the lookup answers as usual (404, never registered),
	// and a register PUT with a csr registers without issuing anything.
	raw.apiVersion = dps.DefaultAPIVersion
	if r := raw.do(http.MethodPost, lookupPath(), body, nil); r.status != http.StatusNotFound {
		t.Errorf("lookup with csr (%s): %d %s, want 404 as without it", raw.apiVersion, r.status, r.body)
	}
	r = raw.do(http.MethodPut, raw.registerPath(), `{"registrationId":"`+id+`","csr":{"not":"a string"}}`, nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("register with csr (%s): %d %s, want 202", raw.apiVersion, r.status, r.body)
	}
	p := raw.poll(r.op(t).OperationID)
	if p.status != 200 || !jsonHas(p.body, "status", "assigned") || strings.Contains(string(p.body), "issuedCertificateChain") {
		t.Errorf("poll (%s): %d %s, want assigned without issuedCertificateChain", raw.apiVersion, p.status, p.body)
	}
	if ri := simRegistration(t, run, id); ri.Registers != 1 || ri.CertificatesIssued != 0 {
		t.Errorf("registers %d, issued %d; want 1, 0", ri.Registers, ri.CertificatesIssued)
	}
}

// TestIssueLoseAnswer: with loseIssuedAnswerRate 1 the certificate is
// issued but the answer carrying it is lost; the chain is not offered
// again, and the oracle shows issued 1, delivered 0.
func TestIssueLoseAnswer(t *testing.T) {
	cfg := issueConfig()
	cfg.Faults = Faults{Seed: 7, LoseIssuedAnswerRate: 1}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
	d := fleetDevice("cert-lost")
	ctx := context.Background()
	resp, err := c.RegisterWithCSR(ctx, d, nil, newCSR(t, d.RegistrationID, p384Key()))
	if err != nil {
		t.Fatal(err)
	}
	opID := resp.Operation.OperationID
	if resp, err := c.OperationStatus(ctx, d, opID); err == nil {
		t.Fatalf("poll carrying the chain answered %+v, want the answer lost", resp.Operation)
	} else if de := (*dps.Error)(nil); !errors.As(err, &de) || de.Err == nil {
		t.Errorf("lost answer: %v, want a dps.Error for an unreadable answer", err)
	}
	ri := simRegistration(t, run, d.RegistrationID)
	if ri.CertificatesIssued != 1 || ri.ChainsDelivered != 0 || ri.ChainsLost != 1 || ri.Status != dps.StatusAssigned || ri.LastIssuedSerial == "" {
		t.Errorf("oracle = %+v, want assigned, issued 1, delivered 0, lost 1, a serial", ri)
	}
	// The next poll answers (nothing left to lose), without the chain.
	again, err := c.OperationStatus(ctx, d, opID)
	if err != nil {
		t.Fatalf("next poll: %v", err)
	}
	if again.Operation.Status != dps.StatusAssigned || len(again.Operation.RegistrationState.IssuedCertificateChain) != 0 {
		t.Errorf("next poll = %s with %d chain entries, want assigned without the chain", again.Operation.Status, len(again.Operation.RegistrationState.IssuedCertificateChain))
	}
	look, err := c.RegistrationStatus(ctx, d)
	if err != nil || len(look.Registration.IssuedCertificateChain) != 0 {
		t.Errorf("lookup: %v, chain %v; want no chain", err, look.Registration.IssuedCertificateChain)
	}
	if st := sim.Stats(); st.CertificatesIssued != 1 || st.ChainsDelivered != 0 || st.ChainsLost != 1 || st.Faults < 1 {
		t.Errorf("stats = issued %d, delivered %d, lost %d, faults %d; want 1, 0, 1, >= 1", st.CertificatesIssued, st.ChainsDelivered, st.ChainsLost, st.Faults)
	}
}

// TestIssueLoseAnswerDeterministic: the fault follows the seed.
func TestIssueLoseAnswerDeterministic(t *testing.T) {
	run1 := func() []bool {
		cfg := issueConfig()
		cfg.Faults = Faults{Seed: 42, LoseIssuedAnswerRate: 0.5}
		sim := mustNew(t, cfg)
		run := mustStart(t, sim)
		c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
		var lost []bool
		for _, id := range []string{"det-1", "det-2", "det-3", "det-4", "det-5", "det-6", "det-7", "det-8"} {
			d := fleetDevice(id)
			resp, err := c.RegisterWithCSR(context.Background(), d, nil, newCSR(t, id, p384Key()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.OperationStatus(context.Background(), d, resp.Operation.OperationID)
			lost = append(lost, err != nil)
			ri, _ := sim.Registration(id)
			if (err != nil) != (ri.ChainsLost == 1) || ri.ChainsLost+ri.ChainsDelivered != 1 {
				t.Errorf("%s: poll error %v, oracle lost %d delivered %d", id, err, ri.ChainsLost, ri.ChainsDelivered)
			}
		}
		return lost
	}
	a, b := run1(), run1()
	some, all := false, true
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("device %d: lost %v then %v with the same seed", i+1, a[i], b[i])
		}
		some = some || a[i]
		all = all && a[i]
	}
	if !some || all {
		t.Errorf("rate 0.5 lost %v: want some but not all answers lost (seed 42)", a)
	}
}

// TestIssueSyncAnswer: a synchronous register answer (registerBadBody
// syncAssigned) carries the chain, once.
func TestIssueSyncAnswer(t *testing.T) {
	cfg := issueConfig()
	cfg.Faults = Faults{RegisterBadBodyRate: 1, RegisterBadBody: BadBodySyncAssigned}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	id := "sync-1"
	raw := newRawDevice(t, run, id, nil, dps.DeriveDeviceKeyBytes(groupKey, id))
	raw.apiVersion = dps.CertificateIssuanceAPIVersion
	body := `{"registrationId":"` + id + `","csr":"` + base64.StdEncoding.EncodeToString(newCSR(t, id, p384Key())) + `"}`
	r := raw.do(http.MethodPut, raw.registerPath(), body, nil)
	var v dps.RegistrationOperationStatus
	if err := json.Unmarshal(r.body, &v); err != nil || r.status != 200 || v.RegistrationState == nil {
		t.Fatalf("sync register: %d %s", r.status, r.body)
	}
	if chain, err := v.RegistrationState.IssuedChain(); err != nil || chain[0].Subject.CommonName != id {
		t.Errorf("sync answer chain: %v", err)
	}
	if ri := simRegistration(t, run, id); ri.CertificatesIssued != 1 || ri.ChainsDelivered != 1 {
		t.Errorf("oracle = issued %d, delivered %d; want 1, 1", ri.CertificatesIssued, ri.ChainsDelivered)
	}
}

// writeP384CA writes a P-384 root and issuing CA (chain file: issuing CA
// then root) and the issuing CA's key into dir.
func writeP384CA(t *testing.T, dir string) (chainFile, keyFile string, root *x509.Certificate) {
	t.Helper()
	mk := func(cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		key := mustECKey(elliptic.P384())
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		signer := key
		if parent == nil {
			parent = tmpl
		} else {
			signer = parentKey
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, key
	}
	root, rootKey := mk("file root", nil, nil)
	inter, interKey := mk("file issuing CA", root, rootKey)
	chainFile, keyFile = filepath.Join(dir, "issuing-chain.pem"), filepath.Join(dir, "issuing.key")
	if err := os.WriteFile(chainFile, certs.CertPEM(inter, root), 0o600); err != nil {
		t.Fatal(err)
	}
	kp, err := certs.KeyPEM(interKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, kp, 0o600); err != nil {
		t.Fatal(err)
	}
	return chainFile, keyFile, root
}

// TestCredentialPolicyConfig: policies load from files relative to the
// configuration file and issue from them; bad policies are config errors.
func TestCredentialPolicyConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pki"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, _, root := writeP384CA(t, filepath.Join(dir, "pki"))
	cfgText := `{
  "idScope": "` + testScope + `",
  "retryAfterSeconds": 0,
  "credentialPolicies": [{"name": "from-files", "certificateFile": "pki/issuing-chain.pem", "keyFile": "pki/issuing.key", "validityDays": 7}],
  "enrollmentGroups": [{"enrollmentGroupId": "fleet", "credentialPolicyName": "from-files",
    "attestation": {"symmetricKey": {"primaryKey": "` + b64(groupKey) + `"}}}]
}`
	cfgPath := filepath.Join(dir, "sim.json")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	sim := mustNew(t, *cfg)
	run := mustStart(t, sim)
	roots, inters, info := policyRoot(t, run, "from-files")
	if info.Generated || info.ValidityDays != 7 || !strings.Contains(info.Root, "file root") {
		t.Errorf("policy info = %+v, want the file CA, 7 days", info)
	}
	c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
	d := fleetDevice("file-dev")
	_, op := registerCSR(t, c, d, newCSR(t, d.RegistrationID, p384Key()))
	chain, err := op.RegistrationState.IssuedChain()
	if err != nil {
		t.Fatal(err)
	}
	if !chain[len(chain)-1].Equal(root) {
		t.Errorf("the chain does not end with the root from the file")
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got < 7*24*time.Hour || got > 7*24*time.Hour+time.Hour {
		t.Errorf("validity %v, want 7 days", got)
	}
	opensslVerify(t, op.RegistrationState.IssuedCertificateChain, info)

	// Errors.
	p256CA := mustCA(t)
	p256Key, _ := certs.KeyPEM(p256CA.Key)
	chainPEM, _ := os.ReadFile(filepath.Join(dir, "pki", "issuing-chain.pem"))
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "pki", "issuing.key"))
	interOnly, _ := certs.ParseCertsPEM(chainPEM)
	group := func(policy string) []EnrollmentGroup {
		return []EnrollmentGroup{{EnrollmentGroupID: "g", CredentialPolicyName: policy, Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}}
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"validity too short", Config{CredentialPolicies: []CredentialPolicy{{Name: "p", ValidityDays: 6}}}, "validityDays 6"},
		{"validity too long", Config{CredentialPolicies: []CredentialPolicy{{Name: "p", ValidityDays: 91}}}, "validityDays 91"},
		{"unknown policy (group)", Config{CredentialPolicies: []CredentialPolicy{{Name: "p"}}, Groups: group("nope")}, `credentialPolicyName "nope"`},
		{"unknown policy (individual)", Config{Individual: []IndividualEnrollment{{RegistrationID: "d", CredentialPolicyName: "missing",
			Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}}, `credentialPolicyName "missing"`},
		{"name twice", Config{CredentialPolicies: []CredentialPolicy{{Name: "p"}, {Name: "p"}}}, "used twice"},
		{"no name", Config{CredentialPolicies: []CredentialPolicy{{}}}, "name is required"},
		{"P-256 key", Config{CredentialPolicies: []CredentialPolicy{{Name: "p", Certificate: string(certs.CertPEM(p256CA.Cert)), Key: string(p256Key)}}}, "P-384"},
		{"no root", Config{CredentialPolicies: []CredentialPolicy{{Name: "p", Certificate: string(certs.CertPEM(interOnly[0])), Key: string(keyPEM)}}}, "self-signed root"},
		{"key without certificate", Config{CredentialPolicies: []CredentialPolicy{{Name: "p", Key: string(keyPEM)}}}, "without certificate"},
		{"certificate without key", Config{CredentialPolicies: []CredentialPolicy{{Name: "p", Certificate: string(chainPEM)}}}, "without its key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// mustCA is a P-256 root (the certs package's default key).
func mustCA(t *testing.T) *certs.CA {
	t.Helper()
	ca, err := certs.NewRoot("p256 root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestIssueServiceAPI: enrollments accept and return credentialPolicyName
// through the service API, devices of such an enrollment get certificates,
// and an unknown policy is a 400.
func TestIssueServiceAPI(t *testing.T) {
	cfg := svcConfig()
	cfg.CredentialPolicies = []CredentialPolicy{{Name: "factory"}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	svc := newSvcClient(t, run, DefaultServicePolicy, ownerKey)

	enr := symEnrollment("svc-dev", b64(keyA))
	enr["credentialPolicyName"] = "factory"
	r := svc.do("PUT", "/enrollments/svc-dev", enr, nil)
	if r.status != 200 || r.doc(t).CredentialPolicyName != "factory" {
		t.Fatalf("PUT enrollment with a policy: %s, want 200 naming it", r)
	}
	if g := svc.do("GET", "/enrollments/svc-dev", nil, nil); g.doc(t).CredentialPolicyName != "factory" {
		t.Errorf("GET enrollment: %s, want credentialPolicyName factory", g)
	}
	grp := map[string]any{"enrollmentGroupId": "svc-group", "credentialPolicyName": "factory",
		"attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": b64(groupKey)}}}
	if r := svc.do("PUT", "/enrollmentGroups/svc-group", grp, nil); r.status != 200 || r.doc(t).CredentialPolicyName != "factory" {
		t.Errorf("PUT group with a policy: %s, want 200 naming it", r)
	}
	if ei, ok := sim.EnrollmentGroup("svc-group"); !ok || ei.CredentialPolicyName != "factory" {
		t.Errorf("/_sim/ enrollment group = %+v, want credentialPolicyName factory", ei)
	}

	bad := symEnrollment("svc-bad", b64(keyA))
	bad["credentialPolicyName"] = "nope"
	e := wantError(t, svc.do("PUT", "/enrollments/svc-bad", bad, nil), 400, dps.CodeBadRequest)
	if !strings.Contains(e.Message, `"nope"`) {
		t.Errorf("unknown policy message %q, want it named", e.Message)
	}
	grp["enrollmentGroupId"], grp["credentialPolicyName"] = "svc-bad-group", "nope"
	wantError(t, svc.do("PUT", "/enrollmentGroups/svc-bad-group", grp, nil), 400, dps.CodeBadRequest)
	if _, ok := sim.Enrollment("svc-bad"); ok {
		t.Errorf("an enrollment with an unknown policy was stored")
	}

	c := newDPSClient(t, run, dps.CertificateIssuanceAPIVersion)
	d := dps.NewSymmetricKeyDevice("svc-dev", keyA)
	_, op := registerCSR(t, c, d, newCSR(t, d.RegistrationID, p384Key()))
	if _, err := op.RegistrationState.IssuedChain(); err != nil {
		t.Errorf("device of a service API enrollment with a policy: %v", err)
	}
}

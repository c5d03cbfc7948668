package manifests

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testNow is the clock used by tests; test certificates are valid around it.
var testNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func testOptions() Options { return Options{Now: func() time.Time { return testNow }} }

// testCA is a certificate authority for tests.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// certOpts adjusts a test certificate.
type certOpts struct {
	notBefore, notAfter time.Time
	eku                 []x509.ExtKeyUsage // nil: clientAuth; empty non-nil: none
	key                 crypto.Signer      // nil: a new P-256 key
	ips                 []net.IP           // IP address SANs
}

// p256Key returns a fresh ECDSA P-256 key.
func p256Key(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func issueCert(tb testing.TB, parent *testCA, cn string, isCA bool, o certOpts) (*x509.Certificate, crypto.Signer) {
	tb.Helper()
	key := o.key
	if key == nil {
		key = p256Key(tb)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		IPAddresses:           o.ips,
	}
	if !o.notBefore.IsZero() {
		tmpl.NotBefore = o.notBefore
	}
	if !o.notAfter.IsZero() {
		tmpl.NotAfter = o.notAfter
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if o.eku != nil {
			tmpl.ExtKeyUsage = o.eku
		}
	}
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c, key
}

func newTestCA(tb testing.TB, parent *testCA, cn string, o certOpts) *testCA {
	tb.Helper()
	c, k := issueCert(tb, parent, cn, true, o)
	return &testCA{cert: c, key: k}
}

func certPEM(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func keyPEM(tb testing.TB, k crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// mustWrite writes data to dir/name (creating folders) with the given mode.
func mustWrite(tb testing.TB, dir, name string, data []byte, mode os.FileMode) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // WriteFile's mode is masked by umask
		tb.Fatal(err)
	}
	return p
}

// fixture is a folder with a PKI and device files, written once per test
// binary and shared read-only by tests.
type fixture struct {
	dir          string
	root, inter  *testCA
	otherInter   *testCA // from an unrelated root
	leaf         *x509.Certificate
	leafKey      crypto.Signer
	devKeys      map[string]crypto.Signer
	devCerts     map[string]*x509.Certificate
	expiredInter *testCA
	rsaCert      *x509.Certificate // dev-rsa, RSA key in PKCS#1 PEM
	edCert       *x509.Certificate // dev-ed, Ed25519 key
}

var (
	fixtureOnce sync.Once
	sharedFx    *fixture
	fixtureErr  string
)

// header lists every column; fixture rows use it.
const header = "registration_id,cert_path,key_path,chain_path,symmetric_key,payload"

// mustFixture returns the shared fixture, building it on first use.
func mustFixture(t *testing.T) *fixture {
	t.Helper()
	fixtureOnce.Do(func() {
		dir, err := os.MkdirTemp("", "manifests-fixture-")
		if err != nil {
			fixtureErr = err.Error()
			return
		}
		sharedFx = buildFixture(t, dir)
	})
	if sharedFx == nil {
		t.Fatalf("fixture: %s", fixtureErr)
	}
	return sharedFx
}

func buildFixture(tb testing.TB, dir string) *fixture {
	fx := &fixture{dir: dir, devKeys: map[string]crypto.Signer{}, devCerts: map[string]*x509.Certificate{}}
	fx.root = newTestCA(tb, nil, "Test Root", certOpts{})
	fx.inter = newTestCA(tb, fx.root, "Test Intermediate", certOpts{})
	otherRoot := newTestCA(tb, nil, "Other Root", certOpts{})
	fx.otherInter = newTestCA(tb, otherRoot, "Other Intermediate", certOpts{})
	fx.expiredInter = newTestCA(tb, fx.root, "Expired Intermediate", certOpts{notBefore: testNow.Add(-48 * time.Hour), notAfter: testNow.Add(-time.Hour)})

	mustWrite(tb, dir, "ca/root.pem", certPEM(fx.root.cert), 0o644)
	mustWrite(tb, dir, "ca/intermediate.pem", certPEM(fx.inter.cert), 0o644)
	mustWrite(tb, dir, "ca/chain.pem", certPEM(fx.inter.cert, fx.root.cert), 0o644)
	mustWrite(tb, dir, "ca/other-intermediate.pem", certPEM(fx.otherInter.cert), 0o644)
	mustWrite(tb, dir, "ca/expired-intermediate.pem", certPEM(fx.expiredInter.cert), 0o644)

	// Good devices dev-1 .. dev-5 issued by the intermediate.
	for _, id := range []string{"dev-1", "dev-2", "dev-3", "dev-4", "dev-5"} {
		c, k := issueCert(tb, fx.inter, id, false, certOpts{})
		fx.devCerts[id], fx.devKeys[id] = c, k
		mustWrite(tb, dir, "devices/"+id+".pem", certPEM(c), 0o644)
		mustWrite(tb, dir, "devices/"+id+"-full.pem", certPEM(c, fx.inter.cert), 0o644)
		mustWrite(tb, dir, "devices/"+id+".key", keyPEM(tb, k), 0o600)
	}
	fx.leaf, fx.leafKey = fx.devCerts["dev-1"], fx.devKeys["dev-1"]

	// Other key types and encodings.
	k5, err := x509.MarshalECPrivateKey(fx.devKeys["dev-5"].(*ecdsa.PrivateKey))
	if err != nil {
		tb.Fatal(err)
	}
	mustWrite(tb, dir, "keys/dev-5.sec1.key", append(
		pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: k5})...), 0o600)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	c, _ := issueCert(tb, fx.inter, "dev-rsa", false, certOpts{key: rsaKey})
	fx.rsaCert = c
	mustWrite(tb, dir, "keys/dev-rsa.pem", certPEM(c), 0o644)
	mustWrite(tb, dir, "keys/dev-rsa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), 0o600)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	c, _ = issueCert(tb, fx.inter, "dev-ed", false, certOpts{key: edKey})
	fx.edCert = c
	mustWrite(tb, dir, "keys/dev-ed.pem", certPEM(c), 0o644)
	mustWrite(tb, dir, "keys/dev-ed.key", keyPEM(tb, edKey), 0o600)
	mustWrite(tb, dir, "keys/with space.key", keyPEM(tb, fx.devKeys["dev-2"]), 0o640)

	// Bad certificates, each with its matching key at <name>.key.
	bad := map[string]struct {
		parent *testCA
		cn     string
		o      certOpts
	}{
		"expired":      {fx.inter, "dev-3", certOpts{notBefore: testNow.Add(-48 * time.Hour), notAfter: testNow.Add(-24 * time.Hour)}},
		"future":       {fx.inter, "dev-3", certOpts{notBefore: testNow.Add(24 * time.Hour), notAfter: testNow.Add(48 * time.Hour)}},
		"server-only":  {fx.inter, "dev-3", certOpts{eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		"no-eku":       {fx.inter, "dev-3", certOpts{eku: []x509.ExtKeyUsage{}}},
		"expired-int":  {fx.expiredInter, "dev-3", certOpts{}},
		"other-issuer": {fx.otherInter, "dev-3", certOpts{}},
	}
	for name, b := range bad {
		c, k := issueCert(tb, b.parent, b.cn, false, b.o)
		mustWrite(tb, dir, "bad/"+name+".pem", certPEM(c), 0o644)
		mustWrite(tb, dir, "bad/"+name+".key", keyPEM(tb, k), 0o600)
	}
	c3 := fx.devCerts["dev-3"]
	k3 := keyPEM(tb, fx.devKeys["dev-3"])
	mustWrite(tb, dir, "bad/out-of-order.pem", certPEM(c3, fx.root.cert, fx.inter.cert), 0o644)
	mustWrite(tb, dir, "bad/key-as-cert.pem", k3, 0o600)
	mustWrite(tb, dir, "bad/garbage.pem", []byte("hello, this is not a certificate\n"), 0o644)
	mustWrite(tb, dir, "bad/der.cer", c3.Raw, 0o644)
	mustWrite(tb, dir, "bad/broken.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c3.Raw[:len(c3.Raw)/2]}), 0o644)
	mustWrite(tb, dir, "bad/csr.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0}}), 0o644)
	block, _ := pem.Decode(k3)
	mustWrite(tb, dir, "bad/encrypted.key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: block.Bytes}), 0o600)
	mustWrite(tb, dir, "bad/legacy-encrypted.key", pem.EncodeToMemory(&pem.Block{
		Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: block.Bytes}), 0o600)
	mustWrite(tb, dir, "bad/corrupt.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: block.Bytes[:len(block.Bytes)-7]}), 0o600)
	mustWrite(tb, dir, "bad/two-keys.key", append(append([]byte{}, k3...), k3...), 0o600)
	mustWrite(tb, dir, "bad/open.key", k3, 0o644)
	mustWrite(tb, dir, "bad/combined.pem", append(certPEM(c3), k3...), 0o600)
	if err := os.MkdirAll(filepath.Join(dir, "bad/a-directory"), 0o755); err != nil {
		tb.Fatal(err)
	}
	// A sparse 2 MiB file: over the size cap without using disk.
	f, err := os.OpenFile(filepath.Join(dir, "bad/huge.key"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(2 << 20); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return fx
}

// TestMain removes the shared fixture folder.
func TestMain(m *testing.M) {
	code := m.Run()
	if sharedFx != nil {
		os.RemoveAll(sharedFx.dir)
	}
	os.Exit(code)
}

// writeManifest writes lines as dir/name and returns its path.
func writeManifest(tb testing.TB, dir, name string, lines ...string) string {
	tb.Helper()
	return mustWrite(tb, dir, name, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// problemStrings renders problems for failure messages.
func problemStrings(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString("\n\t")
		b.WriteString(p.Severity.String())
		b.WriteString(": ")
		b.WriteString(p.Error())
	}
	if b.Len() == 0 {
		return " (none)"
	}
	return b.String()
}

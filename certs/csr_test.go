package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustCSRKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := GenerateCSRKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestGenerateCSRKeyIsP384(t *testing.T) {
	key := mustCSRKey(t)
	if key.Curve != elliptic.P384() {
		t.Errorf("curve = %s, want P-384", key.Curve.Params().Name)
	}
	if other := mustCSRKey(t); key.Equal(other) {
		t.Errorf("two keys are equal")
	}
}

func TestNewCSR(t *testing.T) {
	key := mustCSRKey(t)
	der, err := NewCSR("dev-00042", key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CheckSignature: %v", err)
	}
	if csr.Subject.CommonName != "dev-00042" {
		t.Errorf("CN = %q, want dev-00042", csr.Subject.CommonName)
	}
	if len(csr.Subject.Names) != 1 {
		t.Errorf("subject = %v, want the CN alone", csr.Subject)
	}
	if csr.SignatureAlgorithm != x509.ECDSAWithSHA384 {
		t.Errorf("signature algorithm = %v, want ECDSA-SHA384", csr.SignatureAlgorithm)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Errorf("CSR public key is not the key's")
	}
	if len(csr.Extensions) != 0 {
		t.Errorf("CSR has %d extensions, want none", len(csr.Extensions))
	}
	if err := CheckCSR(csr, "dev-00042"); err != nil {
		t.Errorf("CheckCSR: %v", err)
	}
	if err := CheckCSR(csr, "dev-00043"); err == nil || !strings.Contains(err.Error(), `CN is "dev-00042", want the registration id "dev-00043"`) {
		t.Errorf("CheckCSR with another id: err = %v, want a CN mismatch", err)
	}

	// PEM round trip, with another block before it.
	pemData := CSRPEM(der)
	if !bytes.HasPrefix(pemData, []byte("-----BEGIN CERTIFICATE REQUEST-----\n")) {
		t.Errorf("CSRPEM starts %q", firstLine(pemData))
	}
	back, err := ParseCSRPEM(append(CertPEM(mustRoot(t, Options{}).Cert), pemData...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Raw, der) {
		t.Errorf("ParseCSRPEM returned another CSR")
	}
	if _, err := ParseCSRPEM(CertPEM(mustRoot(t, Options{}).Cert)); err == nil || !strings.Contains(err.Error(), "no PEM CERTIFICATE REQUEST") {
		t.Errorf("ParseCSRPEM without a CSR: err = %v", err)
	}

	path := filepath.Join(t.TempDir(), "dev.csr")
	if err := os.WriteFile(path, pemData, 0o644); err != nil {
		t.Fatal(err)
	}
	if loaded, err := LoadCSR(path); err != nil || !bytes.Equal(loaded.Raw, der) {
		t.Errorf("LoadCSR: %v", err)
	}
}

// TestNewCSRRefusesKeys: every key the preview cannot use is refused by
// NewCSR and CheckCSRKey with an error naming the key and the rule.
func TestNewCSRRefusesKeys(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, tt := range []struct {
		name string
		key  crypto.Signer
		want string
	}{
		{"P-256", p256, "an EC P-256 key"},
		{"P-521", p521, "an EC P-521 key"},
		{"RSA", rsaKey, "an RSA 2048-bit key"},
		{"Ed25519", edKey, "an Ed25519 key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			der, err := NewCSR("dev-1", tt.key)
			if err == nil {
				t.Fatalf("NewCSR made a CSR (%d bytes)", len(der))
			}
			for _, want := range []string{"dev-1", tt.want, "only EC keys on NIST P-384", "ECDSA-SHA384", "2025-07-01-preview"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %q, want it to contain %q", err, want)
				}
			}
			if !errors.Is(err, ErrCSRKey) {
				t.Errorf("err does not wrap ErrCSRKey")
			}
			if err := CheckCSRKey(tt.key.Public()); !errors.Is(err, ErrCSRKey) {
				t.Errorf("CheckCSRKey: err = %v, want ErrCSRKey", err)
			}
		})
	}
	if err := CheckCSRKey(mustCSRKey(t).Public()); err != nil {
		t.Errorf("CheckCSRKey(P-384) = %v", err)
	}
	if _, err := NewCSR("dev-1", nil); !errors.Is(err, ErrCSRKey) {
		t.Errorf("NewCSR(nil key): err = %v, want ErrCSRKey", err)
	}
	if _, err := NewCSR("Dev 1", mustCSRKey(t)); err == nil || !strings.Contains(err.Error(), "registration id") {
		t.Errorf("NewCSR with an invalid id: err = %v", err)
	}
}

// TestCheckCSRRefuses: CSRs made elsewhere that the preview would refuse.
func TestCheckCSRRefuses(t *testing.T) {
	key := mustCSRKey(t)
	sha256DER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "dev-1"}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	sha256CSR, _ := x509.ParseCertificateRequest(sha256DER)
	if err := CheckCSR(sha256CSR, "dev-1"); !errors.Is(err, ErrCSRKey) || !strings.Contains(err.Error(), "ECDSA-SHA256") {
		t.Errorf("SHA-256 CSR: err = %v, want a refusal naming ECDSA-SHA256", err)
	}

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p256DER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}}, p256)
	p256CSR, _ := x509.ParseCertificateRequest(p256DER)
	if err := CheckCSR(p256CSR, "dev-1"); !errors.Is(err, ErrCSRKey) || !strings.Contains(err.Error(), "P-256") {
		t.Errorf("P-256 CSR: err = %v, want a refusal naming P-256", err)
	}

	der, err := NewCSR("dev-1", key)
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := x509.ParseCertificateRequest(der)
	bad.Signature = append([]byte(nil), bad.Signature...)
	bad.Signature[len(bad.Signature)-1] ^= 1
	if err := CheckCSR(bad, "dev-1"); err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Errorf("tampered CSR: err = %v, want a signature error", err)
	}
	if err := CheckCSR(nil, "dev-1"); err == nil {
		t.Errorf("CheckCSR(nil) = nil")
	}
}

func TestP384CA(t *testing.T) {
	if kt, err := ParseKeyType("ecdsa-p384"); err != nil || kt != ECDSAP384 {
		t.Fatalf("ParseKeyType(ecdsa-p384) = %q, %v", kt, err)
	}
	root := mustRoot(t, Options{KeyType: ECDSAP384})
	ca := mustIntermediate(t, root, Options{KeyType: ECDSAP384})
	for _, c := range []*x509.Certificate{root.Cert, ca.Cert} {
		pub, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P384() {
			t.Errorf("%s: public key %T, want ECDSA P-384", c.Subject.CommonName, c.PublicKey)
		}
		if c.SignatureAlgorithm != x509.ECDSAWithSHA384 {
			t.Errorf("%s: signature %v, want ECDSA-SHA384", c.Subject.CommonName, c.SignatureAlgorithm)
		}
	}
}

// TestSignCSR: a CSR signed by a P-384 CA gives a client certificate for
// the CSR's key and CN that verifies to the root.
func TestSignCSR(t *testing.T) {
	root := mustRoot(t, Options{KeyType: ECDSAP384})
	ca := mustIntermediate(t, root, Options{KeyType: ECDSAP384})
	key := mustCSRKey(t)
	der, err := NewCSR("dev-7", key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	leaf, err := ca.SignCSR(csr, Options{Validity: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Key != nil {
		t.Errorf("SignCSR returned a key")
	}
	if leaf.Cert.Subject.CommonName != "dev-7" || !key.PublicKey.Equal(leaf.Cert.PublicKey) {
		t.Errorf("certificate CN %q or key differs from the CSR's", leaf.Cert.Subject.CommonName)
	}
	if d := leaf.Cert.NotAfter.Sub(leaf.Cert.NotBefore); d < 30*24*time.Hour || d > 30*24*time.Hour+clockSkew {
		t.Errorf("validity %v, want 30 days", d)
	}
	leaf.Key = key
	verifyLeaf(t, root, leaf, x509.ExtKeyUsageClientAuth)

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p256DER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}}, p256)
	p256CSR, _ := x509.ParseCertificateRequest(p256DER)
	if _, err := ca.SignCSR(p256CSR, Options{}); !errors.Is(err, ErrCSRKey) {
		t.Errorf("SignCSR(P-256 CSR): err = %v, want ErrCSRKey", err)
	}
	badCN, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "Dev 1"}, SignatureAlgorithm: x509.ECDSAWithSHA384}, key)
	badCNCSR, _ := x509.ParseCertificateRequest(badCN)
	if _, err := ca.SignCSR(badCNCSR, Options{}); err == nil || !strings.Contains(err.Error(), "subject CN") {
		t.Errorf("SignCSR(bad CN): err = %v", err)
	}
}

func TestEnsureCSRKey(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "keys", "station")
	path := filepath.Join(dir, "dev-1.key")
	created, err := EnsureCSRKey(path)
	if err != nil || !created {
		t.Fatalf("EnsureCSRKey = %v, %v; want created", created, err)
	}
	checkMode(t, path, 0o600)
	checkMode(t, dir, 0o700)
	checkMode(t, filepath.Join(parent, "keys"), 0o700)
	key, err := LoadCSRKey(path)
	if err != nil {
		t.Fatal(err)
	}
	checkKeyFile(t, path, key.Public())
	before, _ := os.ReadFile(path)

	created, err = EnsureCSRKey(path)
	if err != nil || created {
		t.Errorf("second EnsureCSRKey = %v, %v; want kept", created, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("second EnsureCSRKey changed the key")
	}
	if got := listDir(t, dir); got != "dev-1.key" {
		t.Errorf("folder holds %q, want the key alone", got)
	}

	// An existing key the preview cannot use is an error and left alone.
	other := filepath.Join(dir, "p256.key")
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p256PEM, _ := KeyPEM(p256)
	if err := os.WriteFile(other, p256PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if created, err := EnsureCSRKey(other); created || !errors.Is(err, ErrCSRKey) || !strings.Contains(err.Error(), "left untouched") {
		t.Errorf("EnsureCSRKey(P-256 file) = %v, %v; want an ErrCSRKey error", created, err)
	}
	if after, _ := os.ReadFile(other); !bytes.Equal(after, p256PEM) {
		t.Errorf("EnsureCSRKey changed a P-256 key file")
	}
	garbage := filepath.Join(dir, "garbage.key")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if created, err := EnsureCSRKey(garbage); created || err == nil {
		t.Errorf("EnsureCSRKey(garbage) = %v, %v; want an error", created, err)
	}
	if _, err := EnsureCSRKey(""); err == nil {
		t.Errorf("EnsureCSRKey(\"\") = nil error")
	}
	if _, err := LoadCSRKey(filepath.Join(dir, "missing.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadCSRKey(missing): err = %v, want ErrNotExist", err)
	}
}

// TestEnsureCSRKeyConcurrent: many callers racing for one path all
// succeed, exactly one creates it, and all end with the same key; no
// temporary file is left.
func TestEnsureCSRKeyConcurrent(t *testing.T) {
	for round := range 5 {
		dir := filepath.Join(t.TempDir(), "keys")
		path := filepath.Join(dir, "dev-1.key")
		const n = 16
		var wg sync.WaitGroup
		results := make([]bool, n)
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i], errs[i] = EnsureCSRKey(path)
			}()
		}
		close(start)
		wg.Wait()
		creators := 0
		for i := range n {
			if errs[i] != nil {
				t.Errorf("round %d caller %d: %v", round, i, errs[i])
			}
			if results[i] {
				creators++
			}
		}
		if creators != 1 {
			t.Errorf("round %d: %d callers created the key, want 1", round, creators)
		}
		if got := listDir(t, dir); got != "dev-1.key" {
			t.Errorf("round %d: folder holds %q, want the key alone", round, got)
		}
		if _, err := LoadCSRKey(path); err != nil {
			t.Errorf("round %d: %v", round, err)
		}
	}
}

// TestGenerateFleetIssue: every kind of fleet made with Issue gets a P-384
// issuing CA, a P-384 operational key per device and the manifest columns.
func TestGenerateFleetIssue(t *testing.T) {
	for _, tt := range []struct {
		attestation string
		header      string
		extra       func(id string) string // the kind's own columns after the id
	}{
		{AttestationX509, "registration_id,cert_path,key_path,chain_path,csr_key_path,issued_cert_path",
			func(id string) string { return ",devices/" + id + ".pem,devices/" + id + ".key,ca/intermediate.pem" }},
		{AttestationSymmetricGroup, "registration_id,csr_key_path,issued_cert_path", func(string) string { return "" }},
		{AttestationSymmetricIndividual, "registration_id,symmetric_key,csr_key_path,issued_cert_path", nil},
	} {
		t.Run(tt.attestation, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "fleet")
			fl, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Attestation: tt.attestation, Issue: true, Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			rows := readManifest(t, fl.ManifestPath)
			if got := strings.Join(rows[0], ","); got != tt.header {
				t.Errorf("header = %s, want %s", got, tt.header)
			}
			if len(rows) != 4 {
				t.Fatalf("manifest has %d rows, want 4", len(rows))
			}
			seen := map[string]bool{}
			for i, row := range rows[1:] {
				id := fl.RegistrationIDs[i]
				if tt.extra != nil {
					want := id + tt.extra(id) + ",csr-keys/" + id + ".key,issued/" + id + ".pem"
					if got := strings.Join(row, ","); got != want {
						t.Errorf("row %d = %s, want %s", i+1, got, want)
					}
				} else if row[0] != id || row[2] != "csr-keys/"+id+".key" || row[3] != "issued/"+id+".pem" || row[1] == "" {
					t.Errorf("row %d = %v", i+1, row)
				}
				keyPath := filepath.Join(dir, filepath.FromSlash(row[len(row)-2]))
				key, err := LoadCSRKey(keyPath)
				if err != nil {
					t.Fatal(err)
				}
				checkKeyFile(t, keyPath, key.Public())
				if seen[string(key.D.Bytes())] {
					t.Errorf("%s repeats a key", keyPath)
				}
				seen[string(key.D.Bytes())] = true
			}
			checkMode(t, fl.CSRKeyDir, 0o700)
			if fi, err := os.Stat(fl.IssuedDir); err != nil || !fi.IsDir() {
				t.Errorf("issued folder: %v", err)
			}

			// The issuing CA: P-384 root and intermediate; chain.pem is
			// intermediate then root; the key files match.
			root := readCerts(t, fl.IssuingRootCertPath)[0]
			ca := readCerts(t, fl.IssuingCACertPath)[0]
			chain := readCerts(t, fl.IssuingChainPath)
			if len(chain) != 2 || !chain[0].Equal(ca) || !chain[1].Equal(root) {
				t.Errorf("chain.pem holds %d certificates, want the intermediate then the root", len(chain))
			}
			for _, c := range []*x509.Certificate{root, ca} {
				if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P384() || !c.IsCA {
					t.Errorf("%s: not a P-384 CA", c.Subject.CommonName)
				}
			}
			checkKeyFile(t, fl.IssuingRootKeyPath, root.PublicKey)
			checkKeyFile(t, fl.IssuingCAKeyPath, ca.PublicKey)
			loaded, err := LoadCA(fl.IssuingChainPath, fl.IssuingCAKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			if fl.IssuingCA == nil || !fl.IssuingCA.Cert.Equal(loaded.Cert) {
				t.Errorf("Fleet.IssuingCA is not the written intermediate")
			}

			// A CSR made with a fleet key, signed by the issuing CA,
			// verifies to the issuing root with the CN of its device.
			id := fl.RegistrationIDs[0]
			key, _ := LoadCSRKey(filepath.Join(fl.CSRKeyDir, id+".key"))
			der, err := NewCSR(id, key)
			if err != nil {
				t.Fatal(err)
			}
			csr, _ := x509.ParseCertificateRequest(der)
			leaf, err := loaded.SignCSR(csr, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: pool(root), Intermediates: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("issued certificate does not verify: %v", err)
			}
			if x := fl.Attestation == AttestationX509; x != (fl.RootCertPath != "") {
				t.Errorf("onboarding CA path %q for a %s fleet", fl.RootCertPath, fl.Attestation)
			}
		})
	}
}

// TestGenerateFleetIssueRefusesExistingKey: an operational key in the way
// stops the fleet before anything is written, and --force replaces it.
func TestGenerateFleetIssueRefusesExistingKey(t *testing.T) {
	for _, attestation := range Attestations {
		t.Run(attestation, func(t *testing.T) {
			dir := t.TempDir()
			keyPath := filepath.Join(dir, FleetCSRKeyDir, "dev-00002.key")
			if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(keyPath, []byte("in use"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Attestation: attestation, Issue: true})
			if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), keyPath) {
				t.Fatalf("err = %v, want ErrExists naming %s", err, keyPath)
			}
			if got := listDir(t, dir); got != FleetCSRKeyDir {
				t.Errorf("refused fleet wrote %q", got)
			}
			if got := listDir(t, filepath.Dir(keyPath)); got != "dev-00002.key" {
				t.Errorf("refused fleet wrote keys: %q", got)
			}
			if _, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Attestation: attestation, Issue: true, Force: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadCSRKey(keyPath); err != nil {
				t.Errorf("after --force: %v", err)
			}
		})
	}
}

// TestGenerateFleetWithoutIssue: a fleet without Issue has none of it.
func TestGenerateFleetWithoutIssue(t *testing.T) {
	dir := t.TempDir()
	fl, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 1, Attestation: AttestationSymmetricGroup})
	if err != nil {
		t.Fatal(err)
	}
	if fl.IssuingCA != nil || fl.CSRKeyDir != "" || fl.IssuingChainPath != "" {
		t.Errorf("fleet without Issue has issuing fields: %+v", fl.IssuingChainPath)
	}
	if got := listDir(t, dir); got != "group.key manifest.csv" {
		t.Errorf("fleet without Issue wrote %q", got)
	}
}

// TestOpenSSLCSR checks CSRs with an independent implementation: openssl
// verifies the self-signature and reads the key, curve, hash and CN of a
// CSR made here; CSRs and keys openssl makes are accepted (P-384, SHA-384)
// or refused (SHA-256); and a certificate the fleet's issuing CA signs
// from a CSR verifies with openssl against DIR/issuing/root.pem.
func TestOpenSSLCSR(t *testing.T) {
	bin := mustOpenSSL(t)
	dir := t.TempDir()
	key := mustCSRKey(t)
	der, err := NewCSR("dev-00001", key)
	if err != nil {
		t.Fatal(err)
	}
	csrPath := filepath.Join(dir, "dev-00001.csr")
	if err := os.WriteFile(csrPath, CSRPEM(der), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := openssl(t, bin, "req", "-in", csrPath, "-noout", "-verify", "-text", "-nameopt", "RFC2253")
	if err != nil || !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
	for _, want := range []string{"Subject: CN=dev-00001", "ecdsa-with-SHA384", "secp384r1"} {
		if !strings.Contains(out, want) {
			t.Errorf("openssl req -text lacks %q:\n%s", want, out)
		}
	}

	// A key and CSRs made by openssl.
	keyPath := filepath.Join(dir, "openssl.key")
	if out, err := openssl(t, bin, "ecparam", "-name", "secp384r1", "-genkey", "-out", keyPath); err != nil {
		t.Fatalf("openssl ecparam: %v\n%s", err, out)
	}
	opensslKey, err := LoadCSRKey(keyPath)
	if err != nil {
		t.Fatalf("LoadCSRKey(openssl SEC1 key): %v", err)
	}
	if created, err := EnsureCSRKey(keyPath); created || err != nil {
		t.Errorf("EnsureCSRKey(openssl key) = %v, %v; want kept", created, err)
	}
	for _, tt := range []struct{ digest, wantErr string }{{"-sha384", ""}, {"-sha256", "ECDSA-SHA256"}} {
		path := filepath.Join(dir, "openssl"+tt.digest+".csr")
		if out, err := openssl(t, bin, "req", "-new", "-key", keyPath, "-subj", "/CN=dev-00002", tt.digest, "-out", path); err != nil {
			t.Fatalf("openssl req -new: %v\n%s", err, out)
		}
		csr, err := LoadCSR(path)
		if err != nil {
			t.Fatal(err)
		}
		err = CheckCSR(csr, "dev-00002")
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s CSR: %v", tt.digest, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s CSR: err = %v, want %q", tt.digest, err, tt.wantErr)
		case tt.wantErr == "" && !opensslKey.PublicKey.Equal(csr.PublicKey):
			t.Errorf("%s CSR: public key is not the key file's", tt.digest)
		}
	}

	fl, err := GenerateFleet(context.Background(), FleetOptions{Dir: filepath.Join(dir, "fleet"), Count: 1, Attestation: AttestationSymmetricGroup, Issue: true})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	leaf, err := fl.IssuingCA.SignCSR(csr, Options{Validity: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// The chain as DPS returns it: leaf, intermediates, root.
	issued := filepath.Join(fl.IssuedDir, "dev-00001.pem")
	root := readCerts(t, fl.IssuingRootCertPath)[0]
	if err := WriteCertFile(issued, false, append(append([]*x509.Certificate{leaf.Cert}, leaf.Chain...), root)...); err != nil {
		t.Fatal(err)
	}
	for _, untrusted := range []string{fl.IssuingCACertPath, issued} {
		args := []string{"verify", "-purpose", "sslclient", "-CAfile", fl.IssuingRootCertPath, "-untrusted", untrusted, issued}
		if out, err := openssl(t, bin, args...); err != nil || !strings.Contains(out, ": OK") {
			t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := openssl(t, bin, "verify", "-CAfile", fl.IssuingRootCertPath, issued); err == nil {
		t.Errorf("openssl verify without the intermediate succeeded, want failure:\n%s", out)
	}
}

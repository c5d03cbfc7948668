package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
)

// TestIssueCertsBadRowsSendNothing: rows that cannot work under the
// certificate-issuing preview (an RSA or P-256 operational key, a CSR whose
// CN is not the registration id, an output folder that cannot be made) are
// each reported with their line, column and fix, and nothing reaches DPS
// or the ledger.
func TestIssueCertsBadRowsSendNothing(t *testing.T) {
	f := newChaosFleet(t, fleetSpec{symGroup: 5}, func(c *dpssim.Config) {
		c.Groups[0].CredentialPolicyName = "line-1"
		c.CredentialPolicies = []dpssim.CredentialPolicy{{Name: "line-1"}}
	})
	writePEM := func(name, typ string, der []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(f.dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	writePEM("rsa.key", "PRIVATE KEY", must1(x509.MarshalPKCS8PrivateKey(rsaKey)))
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	writePEM("p256.key", "PRIVATE KEY", must1(x509.MarshalPKCS8PrivateKey(p256)))
	good, err := certs.GenerateCSRKey()
	if err != nil {
		t.Fatal(err)
	}
	writePEM("good.key", "PRIVATE KEY", must1(x509.MarshalPKCS8PrivateKey(good)))
	writePEM("other.csr", "CERTIFICATE REQUEST", must1(certs.NewCSR("someone-else", good)))
	// A regular file where the output folder's parent should be: no one,
	// not even root, can make a folder under it.
	if err := os.WriteFile(filepath.Join(f.dir, "not-a-dir"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	manifest := "registration_id,csr_key_path,csr_path,issued_cert_path\n" +
		"sensor-00001,rsa.key,,\n" +
		"sensor-00002,p256.key,,\n" +
		"sensor-00003,,other.csr,\n" +
		"sensor-00004,good.key,,not-a-dir/out/sensor-00004.pem\n" +
		"sensor-00005,good.key,,\n"
	if err := os.WriteFile(f.manifest, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, f.provisionArgs("--issue-certs", "--quiet")...)
	if code != exitUsage {
		t.Fatalf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", code, exitUsage, out, errs)
	}
	for _, want := range []string{
		"row 2 (sensor-00001): csr_key_path", "RSA", "P-384",
		"row 3 (sensor-00002)", "P-256",
		"row 4 (sensor-00003): csr_path", "someone-else",
		"row 5 (sensor-00004): issued_cert_path", "not-a-dir",
		"certs csr",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	if strings.Contains(errs, "row 6") {
		t.Errorf("the good row is reported:\n%s", errs)
	}
	if st := f.sim.Stats(); st.RegisterRequests != 0 || st.Lookups != 0 {
		t.Errorf("the simulator saw %d register requests and %d lookups, want none", st.RegisterRequests, st.Lookups)
	}
	if _, err := os.Stat(f.ledger); !os.IsNotExist(err) {
		t.Errorf("a ledger was created (%v); a manifest that fails validation must create nothing", err)
	}

	// Without --issue-certs, CSR columns are refused: the devices would
	// be registered without certificates.
	if err := os.WriteFile(f.manifest, []byte("registration_id,csr_key_path\nsensor-00005,good.key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs = runCmd(t, f.provisionArgs("--quiet")...)
	if code != exitUsage || !strings.Contains(errs, "--issue-certs") {
		t.Errorf("CSR columns without --issue-certs: exit %d, want %d and a hint naming --issue-certs:\n%s", code, exitUsage, errs)
	}
	// --issue-certs with another api-version is a usage error.
	code, _, errs = runCmd(t, f.provisionArgs("--quiet", "--issue-certs", "--api-version", "2019-03-31")...)
	if code != exitUsage || !strings.Contains(errs, "2025-07-01-preview") {
		t.Errorf("--issue-certs --api-version 2019-03-31: exit %d, want %d naming the preview version:\n%s", code, exitUsage, errs)
	}
	// Even the default version, given explicitly, is not silently changed.
	code, _, errs = runCmd(t, f.provisionArgs("--quiet", "--issue-certs", "--api-version", "2021-10-01")...)
	if code != exitUsage || !strings.Contains(errs, "2025-07-01-preview") {
		t.Errorf("--issue-certs --api-version 2021-10-01: exit %d, want %d:\n%s", code, exitUsage, errs)
	}
	// A dry run of --generate-csr-keys plans the keys and makes none.
	if err := os.WriteFile(f.manifest, []byte("registration_id\nsensor-00001\nsensor-00002\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(f.dir, "planned-keys")
	code, out, errs = runCmd(t, f.provisionArgs("--generate-csr-keys", keys, "--dry-run")...)
	if code != exitOK || !strings.Contains(out, "billable registrations: 2") || !strings.Contains(out, "operational keys") {
		t.Errorf("--generate-csr-keys --dry-run: exit %d\n%s\n%s", code, out, errs)
	}
	if _, err := os.Stat(keys); !os.IsNotExist(err) {
		t.Errorf("the dry run made %s (%v)", keys, err)
	}
	if st := f.sim.Stats(); st.RegisterRequests != 0 {
		t.Errorf("the simulator saw %d register requests, want none", st.RegisterRequests)
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestDemoIssueCerts: demo --issue-certs provisions X.509 devices and group
// sensors with certificates issued at registration; every device has a
// chain that openssl (when installed) and Go verify to the demo's issuing
// root, and the same command in the same folder resumes with nothing to do.
func TestDemoIssueCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	code, out, errs := runCmd(t, "demo", "--issue-certs", "--dir", dir, "--count", "12", "--sas", "6", "--assignment-delay", "0s")
	if code != exitOK {
		t.Fatalf("demo --issue-certs: exit %d\n%s\n%s", code, out, errs)
	}
	for _, want := range []string{"issued certificates written: 18", "devices registered more than once: 0", "openssl verify -CAfile"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	root := filepath.Join(dir, "issuing", "root.pem")
	rootPEM, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	ents, err := os.ReadDir(filepath.Join(dir, "issued"))
	if err != nil || len(ents) != 18 {
		t.Fatalf("issued folder: %d files (%v), want 18", len(ents), err)
	}
	openssl, _ := exec.LookPath("openssl")
	for _, ent := range ents {
		path := filepath.Join(dir, "issued", ent.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := certs.ParseCertsPEM(data)
		if err != nil || len(chain) < 2 {
			t.Fatalf("%s: %d certificates (%v)", path, len(chain), err)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		if id := strings.TrimSuffix(ent.Name(), ".pem"); chain[0].Subject.CommonName != id {
			t.Errorf("%s: CN %q", path, chain[0].Subject.CommonName)
		}
		if openssl != "" {
			if why := opensslVerify(t, openssl, root, path); why != "" {
				t.Errorf("%s: %s", path, why)
			}
		}
	}
	code, out, errs = runCmd(t, "demo", "--dir", dir)
	if code != exitOK || !strings.Contains(out, "skipped 18") || !strings.Contains(out, "registrations accepted by DPS (billable): 0") {
		t.Errorf("demo again in the same folder: exit %d, want every device skipped\n%s\n%s", code, out, errs)
	}
}

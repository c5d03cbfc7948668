package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
)

// TestIssueCertsThousandGroupDevices is the acceptance run of certificates
// issued at registration: an enrollment group made with enroll group
// --symmetric --credential-policy, 1,000 devices whose P-384 keys
// --generate-csr-keys makes, provisioned with --issue-certs. Every device
// gets a chain file that verifies to the policy's root (Go's verifier, and
// openssl verify when it is installed) with CN = registration id, for the
// device's own key; the simulator issued one certificate per device; the
// report carries each certificate's fingerprint, serial and expiry.
func TestIssueCertsThousandGroupDevices(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 50
	}
	s := newServiceSim(t, func(c *dpssim.Config) {
		c.CredentialPolicies = []dpssim.CredentialPolicy{{Name: "line-1", ValidityDays: 30}}
	})
	vars := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	groupKey := filepath.Join(s.dir, "sensors.key")
	if code, out, errs := runCmdEnv(t, vars, "enroll", "group", "--id", "sensors", "--symmetric", "--key-out", groupKey,
		"--credential-policy", "line-1", "--ca-file", s.caFile); code != exitOK {
		t.Fatalf("enroll group --credential-policy: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := runCmdEnv(t, vars, "enroll", "group", "--id", "other", "--symmetric", "--key-out", filepath.Join(s.dir, "o.key"),
		"--credential-policy", "no-such-policy", "--ca-file", s.caFile); code == exitOK || !strings.Contains(errs, "no-such-policy") {
		t.Errorf("enroll group with an unknown credential policy: exit %d, want a refusal naming it:\n%s", code, errs)
	}

	var rows strings.Builder
	rows.WriteString("registration_id\n")
	for i := range n {
		fmt.Fprintf(&rows, "sensor-%05d\n", i)
	}
	manifest := filepath.Join(s.dir, "devices.csv")
	if err := os.WriteFile(manifest, []byte(rows.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(s.dir, "csr-keys")
	ledgerPath := filepath.Join(s.dir, "devices.ledger")
	code, out, errs := runCmd(t, "provision", "--manifest", manifest, "--ledger", ledgerPath, "--id-scope", svcScope,
		"--endpoint", s.run.URL, "--ca-file", s.caFile, "--group-key-file", groupKey, "--rate", "-1", "--poll-rate", "-1",
		"--issue-certs", "--generate-csr-keys", keys, "--quiet")
	if code != exitOK {
		t.Fatalf("provision --issue-certs: exit %d\n%s\n%s", code, out, errs)
	}
	if want := fmt.Sprintf("issued certificates written: %d", n); !strings.Contains(out, want) {
		t.Errorf("summary lacks %q:\n%s", want, out)
	}
	if want := fmt.Sprintf("%d made", n); !strings.Contains(errs, want) {
		t.Errorf("stderr lacks %q (keys made):\n%s", want, errs)
	}
	fi, err := os.Stat(filepath.Join(keys, "sensor-00000.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("generated key: %v, mode %v; want 0600", err, fi)
	}

	info, ok := s.sim.CredentialPolicy("line-1")
	if !ok {
		t.Fatal("no credential policy line-1")
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(info.RootPEM))
	rootFile := filepath.Join(s.dir, "policy-root.pem")
	if err := os.WriteFile(rootFile, []byte(info.RootPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	openssl, _ := exec.LookPath("openssl")
	if openssl == "" {
		t.Log("openssl is not installed: chains are verified with Go's verifier only")
	}
	f := &chaosFleet{dir: s.dir}
	devs, led := ledgerDevices(t, ledgerPath)
	led.Close()
	sims := s.sim.Registrations()
	byID := map[string]dpssim.RegistrationInfo{}
	for _, ri := range sims {
		byID[ri.RegistrationID] = ri
	}
	bad := 0
	for i := range n {
		id := fmt.Sprintf("sensor-%05d", i)
		ri := byID[id]
		why := checkIssuedFile(f, keys, roots, id, devs[id], ri)
		if why == "" && (ri.Registers != 1 || ri.CertificatesIssued != 1) {
			why = fmt.Sprintf("%d registrations and %d certificates issued at the server, want 1 and 1", ri.Registers, ri.CertificatesIssued)
		}
		if why == "" && openssl != "" {
			why = opensslVerify(t, openssl, rootFile, filepath.Join(s.dir, "issued", id+".pem"))
		}
		if why != "" {
			if bad++; bad <= 10 {
				t.Errorf("device %s: %s", id, why)
			}
		}
	}

	// The report names each device's certificate.
	report := filepath.Join(s.dir, "report.csv")
	if code, out, errs := runCmd(t, "report", "--ledger", ledgerPath, "--out", report); code != exitOK {
		t.Fatalf("report: exit %d\n%s\n%s", code, out, errs)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	header := strings.Split(lines[0], ",")
	col := func(name string) int {
		for i, h := range header {
			if h == name {
				return i
			}
		}
		t.Fatalf("report header %v has no %s column", header, name)
		return -1
	}
	fp, serial, notAfter := col("issued_cert_sha256"), col("issued_cert_serial"), col("issued_cert_not_after")
	if len(lines) != n+1 {
		t.Errorf("report has %d rows, want %d", len(lines)-1, n)
	}
	for _, line := range lines[1:] {
		f := strings.Split(line, ",")
		id := f[0]
		d := devs[id]
		if "sha256:"+f[fp] != d.Issued.Fingerprint || f[serial] != d.Issued.Serial || f[notAfter] == "" {
			if bad++; bad <= 10 {
				t.Errorf("report row %s: fingerprint %q serial %q notAfter %q; ledger %+v", id, f[fp], f[serial], f[notAfter], d.Issued)
			}
		}
	}
}

// opensslVerify runs openssl verify on a chain file (leaf first): "" when
// it verifies to root.
func opensslVerify(t *testing.T, openssl, root, chainFile string) string {
	data, err := os.ReadFile(chainFile)
	if err != nil {
		return err.Error()
	}
	chain, err := certs.ParseCertsPEM(data)
	if err != nil || len(chain) < 2 {
		return fmt.Sprintf("chain file: %d certificates (%v)", len(chain), err)
	}
	dir := t.TempDir()
	leaf, untrusted := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "untrusted.pem")
	if err := certs.WriteCertFile(leaf, true, chain[0]); err != nil {
		return err.Error()
	}
	if err := certs.WriteCertFile(untrusted, true, chain[1:]...); err != nil {
		return err.Error()
	}
	out, err := exec.Command(openssl, "verify", "-CAfile", root, "-untrusted", untrusted, leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		return fmt.Sprintf("openssl verify: %v: %s", err, out)
	}
	return ""
}

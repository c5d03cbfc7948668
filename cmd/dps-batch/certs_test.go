package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
)

// mustRunCerts runs a certs command that must succeed and returns stdout.
func mustRunCerts(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := runCmd(t, append([]string{"certs"}, args...)...)
	if code != exitOK {
		t.Fatalf("dps-batch certs %s: exit %d, stderr:\n%s", strings.Join(args, " "), code, errs)
	}
	if !strings.Contains(errs, "TEST certificates") {
		t.Errorf("stderr = %q, want the test-certificate warning", errs)
	}
	return out
}

// mustReadCerts parses the PEM certificates in path.
func mustReadCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := certs.ParseCertsPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cs
}

// checkKey fails unless path is a mode-0600 PKCS#8 key for cert.
func checkKey(t *testing.T, path string, cert *x509.Certificate) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("%s mode = %v, want 0600", path, got)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("%s is not a PKCS#8 PRIVATE KEY PEM", path)
	}
	key, err := certs.ParseKeyPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		t.Errorf("%s does not match the certificate %q", path, cert.Subject.CommonName)
	}
}

func TestCertsHelp(t *testing.T) {
	code, out, _ := runCmd(t, "certs", "--help")
	if code != exitOK {
		t.Fatalf("certs --help exit = %d, want 0", code)
	}
	for _, v := range certsVerbs() {
		if !strings.Contains(out, "  "+v.name) {
			t.Errorf("certs --help does not list %q:\n%s", v.name, out)
		}
	}
	wantFlags := map[string][]string{
		"root":         {"-cn", "-out", "-key-type", "-validity", "-force", "43800h"},
		"intermediate": {"-cn", "-ca", "-ca-key", "-out", "-key-type", "-validity", "-force"},
		"device":       {"-id", "-ca", "-ca-key", "-out", "-key-type", "-validity", "-force", "8760h"},
		"verification": {"-code", "-ca", "-ca-key", "-out", "-force"},
		"fleet":        {"-count", "-out", "-prefix", "-chain", "-id-scope", "-key-type", "-validity", "-force", "-workers", "0ne00000000"},
	}
	for _, v := range certsVerbs() {
		t.Run(v.name, func(t *testing.T) {
			code, out, errs := runCmd(t, "certs", v.name, "--help")
			if code != exitOK {
				t.Fatalf("certs %s --help exit = %d, stderr %q", v.name, code, errs)
			}
			for _, want := range append(wantFlags[v.name], "Examples:", "dps-batch certs "+v.name+" --") {
				if !strings.Contains(out, want) {
					t.Errorf("certs %s --help lacks %q:\n%s", v.name, want, out)
				}
			}
		})
	}
}

func TestCertsStepByStep(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	rootPEM, rootKey := filepath.Join(pki, "root.pem"), filepath.Join(pki, "root.key")
	interPEM, interKey := filepath.Join(pki, "intermediate.pem"), filepath.Join(pki, "intermediate.key")

	out := mustRunCerts(t, "root", "--cn", "CLI Root", "--out", pki)
	if !strings.Contains(out, rootPEM) || !strings.Contains(out, rootKey) {
		t.Errorf("root stdout = %q, want both paths", out)
	}
	mustRunCerts(t, "intermediate", "--cn", "CLI Intermediate", "--ca", rootPEM, "--ca-key", rootKey, "--out", pki)
	out = mustRunCerts(t, "device", "--id", "dev-0001", "--ca", interPEM, "--ca-key", interKey, "--out", filepath.Join(dir, "devices"))
	if !strings.Contains(out, "dev-0001-fullchain.pem") {
		t.Errorf("device stdout = %q, want the full-chain path", out)
	}
	mustRunCerts(t, "verification", "--ca", rootPEM, "--ca-key", rootKey, "--code", "ABC123DEF456", "--out", filepath.Join(dir, "verify.pem"))

	root := mustReadCerts(t, rootPEM)[0]
	inter := mustReadCerts(t, interPEM)[0]
	checkKey(t, rootKey, root)
	checkKey(t, interKey, inter)
	if !root.IsCA || !inter.IsCA || inter.Issuer.CommonName != "CLI Root" {
		t.Errorf("root IsCA=%v, intermediate IsCA=%v issuer %q; want CAs, intermediate issued by CLI Root", root.IsCA, inter.IsCA, inter.Issuer.CommonName)
	}

	devPEM := filepath.Join(dir, "devices", "dev-0001.pem")
	dev := mustReadCerts(t, devPEM)
	if len(dev) != 1 || dev[0].Subject.CommonName != "dev-0001" {
		t.Fatalf("%s: %d certificates, CN %q; want the leaf alone with CN dev-0001", devPEM, len(dev), dev[0].Subject.CommonName)
	}
	checkKey(t, filepath.Join(dir, "devices", "dev-0001.key"), dev[0])
	full := mustReadCerts(t, filepath.Join(dir, "devices", "dev-0001-fullchain.pem"))
	if len(full) != 2 || !full[0].Equal(dev[0]) || !full[1].Equal(inter) {
		t.Errorf("full chain has %d certificates, want the device then the intermediate (no root)", len(full))
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inters := x509.NewCertPool()
	inters.AddCert(full[1])
	if _, err := dev[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device does not verify through the full chain: %v", err)
	}

	ver := mustReadCerts(t, filepath.Join(dir, "verify.pem"))
	if len(ver) != 1 || ver[0].Subject.CommonName != "ABC123DEF456" {
		t.Errorf("verification certificate: %d certificates, want one with CN ABC123DEF456", len(ver))
	} else if err := ver[0].CheckSignatureFrom(root); err != nil {
		t.Errorf("verification certificate not signed by the root key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "verify.key")); err == nil {
		t.Errorf("verification wrote a key; DPS needs only the certificate")
	}

	if bin, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl not on PATH: skipping the openssl verify check")
	} else {
		out, err := exec.Command(bin, "verify", "-purpose", "sslclient", "-CAfile", rootPEM, "-untrusted", interPEM, devPEM).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify: %v\n%s", err, out)
		}
	}

	// A device issued by a root gets a full chain of the leaf alone.
	mustRunCerts(t, "device", "--id", "dev-0002", "--ca", rootPEM, "--ca-key", rootKey, "--out", filepath.Join(dir, "devices"), "--key-type", "ed25519")
	if got := mustReadCerts(t, filepath.Join(dir, "devices", "dev-0002-fullchain.pem")); len(got) != 1 {
		t.Errorf("full chain for a root-issued device has %d certificates, want 1", len(got))
	}
}

func TestCertsBadInput(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	mustRunCerts(t, "root", "--cn", "R", "--out", pki)
	mustRunCerts(t, "intermediate", "--cn", "I", "--ca", filepath.Join(pki, "root.pem"), "--ca-key", filepath.Join(pki, "root.key"), "--out", pki)
	mustRunCerts(t, "device", "--id", "leaf", "--ca", filepath.Join(pki, "root.pem"), "--ca-key", filepath.Join(pki, "root.key"), "--out", pki)
	rootPEM, rootKey := filepath.Join(pki, "root.pem"), filepath.Join(pki, "root.key")
	interKey := filepath.Join(pki, "intermediate.key")
	missing := filepath.Join(dir, "missing.pem")
	out := filepath.Join(dir, "out") // must stay empty

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string
	}{
		{"no subcommand", nil, exitUsage, []string{"a subcommand is required", "Try: dps-batch certs --help"}},
		{"unknown subcommand", []string{"leaf"}, exitUsage, []string{`unknown certs subcommand "leaf"`}},
		{"positional argument", []string{"root", "--cn", "R", "--out", out, "extra"}, exitUsage, []string{`unexpected argument "extra"`}},
		{"root without --cn", []string{"root", "--out", out}, exitUsage, []string{"--cn is required", "Try: dps-batch certs root"}},
		{"root without --out", []string{"root", "--cn", "R"}, exitUsage, []string{"--out is required"}},
		{"unknown key type", []string{"root", "--cn", "R", "--out", out, "--key-type", "dsa"}, exitUsage, []string{"--key-type", `unknown key type "dsa"`}},
		{"negative validity", []string{"root", "--cn", "R", "--out", out, "--validity", "-1h"}, exitUsage, []string{"--validity -1h0m0s is negative"}},
		{"bad validity", []string{"root", "--cn", "R", "--out", out, "--validity", "5y"}, exitUsage, []string{"-validity"}},
		{"root exists", []string{"root", "--cn", "R", "--out", pki}, exitUsage, []string{rootPEM, "already exists", "use --force"}},
		{"device invalid id", []string{"device", "--id", "Dev_1.", "--ca", rootPEM, "--ca-key", rootKey, "--out", out}, exitUsage, []string{"--id", "upper-case"}},
		{"device id too long", []string{"device", "--id", strings.Repeat("d", 65), "--ca", rootPEM, "--ca-key", rootKey, "--out", out}, exitUsage, []string{"limited to 64"}},
		{"device without --ca", []string{"device", "--id", "d1", "--out", out}, exitUsage, []string{"--ca is required"}},
		{"device unreadable CA", []string{"device", "--id", "d1", "--ca", missing, "--ca-key", rootKey, "--out", out}, exitUsage, []string{missing}},
		{"device CA key mismatch", []string{"device", "--id", "d1", "--ca", rootPEM, "--ca-key", interKey, "--out", out}, exitUsage, []string{"does not match", interKey, rootPEM}},
		{"device CA not a CA", []string{"device", "--id", "d1", "--ca", filepath.Join(pki, "leaf.pem"), "--ca-key", filepath.Join(pki, "leaf.key"), "--out", out}, exitUsage, []string{"not a CA certificate"}},
		{"device exists", []string{"device", "--id", "leaf", "--ca", rootPEM, "--ca-key", rootKey, "--out", pki}, exitUsage, []string{"leaf.pem", "use --force"}},
		{"intermediate under intermediate", []string{"intermediate", "--cn", "I2", "--ca", filepath.Join(pki, "intermediate.pem"), "--ca-key", interKey, "--out", out}, exitUsage, []string{"may only issue leaf certificates"}},
		{"intermediate bad name", []string{"intermediate", "--cn", "I2", "--ca", rootPEM, "--ca-key", rootKey, "--out", out, "--name", "../x"}, exitUsage, []string{"--name"}},
		{"verification without code", []string{"verification", "--ca", rootPEM, "--ca-key", rootKey, "--out", filepath.Join(out, "v.pem")}, exitUsage, []string{"--code is required"}},
		{"verification code too long", []string{"verification", "--ca", rootPEM, "--ca-key", rootKey, "--code", strings.Repeat("A", 65), "--out", filepath.Join(out, "v.pem")}, exitUsage, []string{"--code", "at most 64"}},
		{"verification exists", []string{"verification", "--ca", rootPEM, "--ca-key", rootKey, "--code", "X", "--out", rootPEM}, exitUsage, []string{rootPEM, "use --force"}},
		{"fleet count 0", []string{"fleet", "--count", "0", "--out", out}, exitUsage, []string{"--count must be at least 1"}},
		{"fleet count negative", []string{"fleet", "--count", "-5", "--out", out}, exitUsage, []string{"--count must be at least 1 (got -5)"}},
		{"fleet count missing", []string{"fleet", "--out", out}, exitUsage, []string{"--count"}},
		{"fleet without --out", []string{"fleet", "--count", "2"}, exitUsage, []string{"--out is required"}},
		{"fleet bad chain", []string{"fleet", "--count", "2", "--out", out, "--chain", "flat"}, exitUsage, []string{`--chain "flat"`}},
		{"fleet bad prefix", []string{"fleet", "--count", "2", "--out", out, "--prefix", "Dev "}, exitUsage, []string{`--prefix "Dev "`}},
		{"fleet bad key type", []string{"fleet", "--count", "2", "--out", out, "--key-type", "rsa4096"}, exitUsage, []string{"unknown key type"}},
		{"fleet negative workers", []string{"fleet", "--count", "2", "--out", out, "--workers", "-1"}, exitUsage, []string{"--workers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, append([]string{"certs"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit = %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr = %q, want it to contain %q", stderr, want)
				}
			}
			if strings.Contains(stderr, "PRIVATE KEY") || strings.Contains(stdout, "PRIVATE KEY") {
				t.Errorf("output contains key material")
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was created by a failed command", out)
			}
		})
	}
}

func TestCertsFleet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	code, out, errs := runCmd(t, "certs", "fleet", "--count", "4", "--out", dir, "--prefix", "cam-")
	if code != exitOK {
		t.Fatalf("fleet exit = %d, stderr:\n%s", code, errs)
	}
	for _, want := range []string{"fleet of 4 devices", filepath.Join(dir, "manifest.csv"), filepath.Join(dir, "ca", "intermediate.pem"), "cam-00001 ... cam-00004"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout = %q, want it to contain %q", out, want)
		}
	}
	if !strings.Contains(errs, "TEST certificates") {
		t.Errorf("stderr = %q, want the test-certificate warning", errs)
	}
	// The simulator config comes from another package: either it was
	// written and reported, or its error is a warning and the exit is still 0.
	if !strings.Contains(out, "simulator:") && !strings.Contains(errs, "warning: simulator configuration not written") {
		t.Errorf("neither a simulator config line on stdout nor a warning on stderr:\n%s\n%s", out, errs)
	}

	f, err := os.Open(filepath.Join(dir, "manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"registration_id", "cert_path", "key_path", "chain_path"},
		{"cam-00001", "devices/cam-00001.pem", "devices/cam-00001.key", "ca/intermediate.pem"},
		{"cam-00002", "devices/cam-00002.pem", "devices/cam-00002.key", "ca/intermediate.pem"},
		{"cam-00003", "devices/cam-00003.pem", "devices/cam-00003.key", "ca/intermediate.pem"},
		{"cam-00004", "devices/cam-00004.pem", "devices/cam-00004.key", "ca/intermediate.pem"},
	}
	if got, wantS := csvString(rows), csvString(want); got != wantS {
		t.Errorf("manifest:\n%s\nwant:\n%s", got, wantS)
	}
	for _, row := range rows[1:] {
		leaf := mustReadCerts(t, filepath.Join(dir, row[1]))[0]
		checkKey(t, filepath.Join(dir, row[2]), leaf)
		if leaf.Subject.CommonName != row[0] {
			t.Errorf("%s: CN = %q, want %q", row[1], leaf.Subject.CommonName, row[0])
		}
	}
	before, err := os.ReadFile(filepath.Join(dir, "ca", "root.pem"))
	if err != nil {
		t.Fatal(err)
	}

	// Again without --force: refused, nothing changed.
	code, _, errs = runCmd(t, "certs", "fleet", "--count", "4", "--out", dir, "--prefix", "cam-")
	if code != exitUsage || !strings.Contains(errs, "use --force") || !strings.Contains(errs, "manifest.csv") {
		t.Errorf("second fleet without --force: exit %d, stderr %q; want 2 naming manifest.csv with a --force hint", code, errs)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca", "root.pem")); !bytes.Equal(before, after) {
		t.Errorf("refused fleet changed ca/root.pem")
	}

	// With --force and chain root: replaced, manifest has an empty chain_path.
	code, _, errs = runCmd(t, "certs", "fleet", "--count", "2", "--out", dir, "--prefix", "cam-", "--chain", "root", "--force")
	if code != exitOK {
		t.Fatalf("fleet --force exit = %d, stderr:\n%s", code, errs)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca", "root.pem")); bytes.Equal(before, after) {
		t.Errorf("fleet --force kept the old root")
	}
	data, err := os.ReadFile(filepath.Join(dir, "manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(data), "registration_id,cert_path,key_path,chain_path\ncam-00001,devices/cam-00001.pem,devices/cam-00001.key,\ncam-00002,devices/cam-00002.pem,devices/cam-00002.key,\n"; got != want {
		t.Errorf("manifest after --force --chain root:\n%s\nwant:\n%s", got, want)
	}
}

// TestCertsFleetInterrupted checks that the first interrupt stops a fleet:
// exit 130 and no manifest, so the partial fleet is not mistaken for a
// complete one.
func TestCertsFleetInterrupted(t *testing.T) {
	dir := t.TempDir()
	drain := make(chan struct{})
	close(drain)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"certs", "fleet", "--count", "50", "--out", dir},
		&env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, drain: drain})
	if code != exitInterrupted {
		t.Errorf("exit = %d, want %d (stderr %q)", code, exitInterrupted, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.csv")); err == nil {
		t.Errorf("manifest.csv written by an interrupted fleet")
	}
}

func csvString(rows [][]string) string {
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.Join(r, ",") + "\n")
	}
	return b.String()
}

func TestFleetProgress(t *testing.T) {
	if p := fleetProgress(&bytes.Buffer{}, 9999); p != nil {
		t.Errorf("fleetProgress for 9999 devices is set, want nil (small fleets print nothing)")
	}
	var buf bytes.Buffer
	p := fleetProgress(&buf, 20000)
	for _, done := range []int{1, 1999, 2000, 2001, 4000, 20000} {
		p(done)
	}
	if got, want := buf.String(), "generated 2000/20000 devices\ngenerated 4000/20000 devices\n"; got != want {
		t.Errorf("progress output = %q, want %q", got, want)
	}
}

// TestCertsFleetProvisions: every kind of fleet "certs fleet" makes
// provisions end to end against "dps-batch sim" serving the sim.json it
// wrote: every device assigned. Key files, and files holding keys, are
// 0600; no key is printed.
func TestCertsFleetProvisions(t *testing.T) {
	tests := []struct {
		kind      string
		secret    []string // files that hold keys: mode 0600
		public    []string // files without keys: mode 0644
		groupFlag bool
	}{
		{kind: "x509", public: []string{"manifest.csv", "sim.json"}},
		{kind: "symmetric-group", secret: []string{"group.key", "sim.json"}, public: []string{"manifest.csv"}, groupFlag: true},
		{kind: "symmetric-individual", secret: []string{"manifest.csv", "sim.json"}},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			const n = 6
			f := newSymFleet(t, tt.kind, n)
			for _, name := range tt.secret {
				checkFileMode(t, filepath.Join(f.dir, name), 0o600)
			}
			for _, name := range tt.public {
				checkFileMode(t, filepath.Join(f.dir, name), 0o644)
			}
			var extra []string
			if tt.groupFlag {
				extra = []string{"--group-key-file", f.groupKeyFile}
			}
			code, stdout, stderr := runCmd(t, f.provisionArgs(f.manifest, extra...)...)
			if code != exitOK || !strings.Contains(stdout, fmt.Sprintf("assigned %d", n)) {
				t.Fatalf("provision: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if tt.kind != "x509" {
				checkNoKeyIn(t, f.secrets(t), "provision output", stdout+stderr)
			}
		})
	}
}

// TestCertsFleetBadAttestation: an unknown kind, or certificate flags with
// a symmetric-key fleet, are usage errors that write nothing.
func TestCertsFleetBadAttestation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--attestation", "tpm"}, []string{`--attestation "tpm": want x509, symmetric-group, symmetric-individual`}},
		{[]string{"--attestation", "symmetric-group", "--chain", "root"}, []string{"--chain: only for --attestation x509", "Try: leave out --chain"}},
		{[]string{"--attestation", "symmetric-individual", "--key-type", "rsa2048", "--validity", "1h"}, []string{"--key-type, --validity: only for --attestation x509"}},
	} {
		code, _, errs := runCmd(t, append([]string{"certs", "fleet", "--count", "2", "--out", dir}, tt.args...)...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d", tt.args, code, exitUsage)
		}
		for _, w := range tt.want {
			if !strings.Contains(errs, w) {
				t.Errorf("%v: stderr lacks %q:\n%s", tt.args, w, errs)
			}
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a refused fleet created %s", dir)
	}
}

// TestProvisionCollapsesRepeatedProblems: a group fleet provisioned
// without its group key fails validation with one line for all its rows,
// whose hint is a command that works; a distinct problem keeps its row.
func TestProvisionCollapsesRepeatedProblems(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sensors")
	if code, _, errs := runCmd(t, "certs", "fleet", "--attestation", "symmetric-group", "--count", "200", "--out", dir); code != exitOK {
		t.Fatalf("certs fleet: exit %d\n%s", code, errs)
	}
	manifest := filepath.Join(dir, "manifest.csv")
	f, err := os.OpenFile(manifest, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("Not-An-Id\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, _, stderr := runCmd(t, "provision", "--manifest", manifest, "--id-scope", "0ne00000000", "--endpoint", "https://127.0.0.1:1")
	if code != exitUsage {
		t.Fatalf("exit %d, want %d\n%s", code, exitUsage, stderr)
	}
	if n := strings.Count(stderr, "row has no credentials"); n != 1 {
		t.Errorf("%q appears %d times, want once:\n%s", "row has no credentials", n, stderr)
	}
	if want := "Manifest " + manifest + " has 202 problem(s); nothing was sent:"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	var listed []string
	for _, l := range lines {
		if strings.HasPrefix(l, "  ") {
			listed = append(listed, l)
		}
	}
	if len(listed) != 2 {
		t.Fatalf("listed %d problem lines, want 2 (the repeated one, and row 202's id):\n%s", len(listed), stderr)
	}
	if want := "  rows 2-202 (201 rows): row has no credentials — for devices of a symmetric-key enrollment group, give the group key: dps-batch provision --group-key-file FILE, or the environment variable DPS_GROUP_KEY"; !strings.HasPrefix(listed[0], want) {
		t.Errorf("first line:\n%s\nwant prefix:\n%s", listed[0], want)
	}
	if !strings.HasPrefix(listed[1], "  row 202 (Not-An-Id): registration_id: ") {
		t.Errorf("second line = %q, want row 202's own problem", listed[1])
	}
}

// mustLoadCSR reads the CSR at path and checks it as DPS would for id.
func mustLoadCSR(t *testing.T, path, id string) *x509.CertificateRequest {
	t.Helper()
	csr, err := certs.LoadCSR(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("%s: signature: %v", path, err)
	}
	if csr.Subject.CommonName != id || csr.SignatureAlgorithm != x509.ECDSAWithSHA384 {
		t.Errorf("%s: CN %q, signature %v; want %s, ECDSA-SHA384", path, csr.Subject.CommonName, csr.SignatureAlgorithm, id)
	}
	if err := certs.CheckCSR(csr, id); err != nil {
		t.Errorf("%s: %v", path, err)
	}
	return csr
}

func TestCertsCSR(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "csr")
	code, out, errs := runCmd(t, "certs", "csr", "--id", "dev-0001", "--out", dir)
	if code != exitOK {
		t.Fatalf("certs csr: exit %d, stderr:\n%s", code, errs)
	}
	csrPath, keyPath := filepath.Join(dir, "dev-0001.csr"), filepath.Join(dir, "dev-0001.key")
	csr := mustLoadCSR(t, csrPath, "dev-0001")
	checkFileMode(t, keyPath, 0o600)
	checkFileMode(t, csrPath, 0o644)
	key, err := certs.LoadCSRKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Errorf("the CSR is not for the key written")
	}
	for _, want := range []string{csrPath, keyPath, "csr_key_path", "issued_cert_path", "provision --issue-certs"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	keyPEM, _ := os.ReadFile(keyPath)
	if strings.Contains(out+errs, "PRIVATE KEY") || strings.Contains(out+errs, string(keyPEM[40:80])) {
		t.Errorf("the key is printed:\n%s\n%s", out, errs)
	}

	// Again: refused without --force, nothing changed; replaced with it.
	code, _, errs = runCmd(t, "certs", "csr", "--id", "dev-0001", "--out", dir)
	if code != exitUsage || !strings.Contains(errs, "--force") {
		t.Errorf("second csr: exit %d, stderr %q; want 2 with a --force hint", code, errs)
	}
	if after, _ := os.ReadFile(keyPath); !bytes.Equal(after, keyPEM) {
		t.Errorf("refused csr changed the key")
	}
	if code, _, errs := runCmd(t, "certs", "csr", "--id", "dev-0001", "--out", dir, "--force"); code != exitOK {
		t.Fatalf("csr --force: exit %d, stderr %q", code, errs)
	}
	if after, _ := os.ReadFile(keyPath); bytes.Equal(after, keyPEM) {
		t.Errorf("csr --force kept the old key")
	}

	// --key: the CSR is for that key, which is not copied or changed.
	dir2 := filepath.Join(t.TempDir(), "other")
	before, _ := os.ReadFile(keyPath)
	code, out, errs = runCmd(t, "certs", "csr", "--id", "dev-0002", "--key", keyPath, "--out", dir2)
	if code != exitOK {
		t.Fatalf("certs csr --key: exit %d, stderr:\n%s", code, errs)
	}
	csr2 := mustLoadCSR(t, filepath.Join(dir2, "dev-0002.csr"), "dev-0002")
	k2, _ := certs.LoadCSRKey(keyPath)
	if !k2.PublicKey.Equal(csr2.PublicKey) {
		t.Errorf("CSR made with --key is not for that key")
	}
	if got, _ := os.ReadDir(dir2); len(got) != 1 {
		t.Errorf("csr --key wrote %d files, want the CSR alone", len(got))
	}
	if after, _ := os.ReadFile(keyPath); !bytes.Equal(before, after) {
		t.Errorf("csr --key changed the key file")
	}
	if !strings.Contains(out, "given, unchanged") {
		t.Errorf("stdout does not say the key was given:\n%s", out)
	}

	// Keys the preview cannot use, and bad flags: usage errors, nothing written.
	p256 := filepath.Join(t.TempDir(), "p256.key")
	root, err := certs.NewRoot("r", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p256PEM, _ := certs.KeyPEM(root.Key)
	if err := os.WriteFile(p256, p256PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	dir3 := filepath.Join(t.TempDir(), "refused")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--id", "dev-3", "--key", p256, "--out", dir3}, "an EC P-256 key; DPS certificate issuance (API 2025-07-01-preview) accepts only EC keys on NIST P-384"},
		{[]string{"--id", "dev-3", "--key", filepath.Join(dir3, "missing.key"), "--out", dir3}, "--key"},
		{[]string{"--id", "Dev 3", "--out", dir3}, "--id"},
		{[]string{"--out", dir3}, "--id"},
		{[]string{"--id", "dev-3"}, "--out"},
	} {
		code, _, errs := runCmd(t, append([]string{"certs", "csr"}, tt.args...)...)
		if code != exitUsage || !strings.Contains(errs, tt.want) {
			t.Errorf("certs csr %v: exit %d, stderr %q; want 2 containing %q", tt.args, code, errs, tt.want)
		}
	}
	if _, err := os.Stat(dir3); err == nil {
		t.Errorf("a refused csr created %s", dir3)
	}
}

// TestCertsFleetIssue: "certs fleet --issue" with every attestation writes
// the operational keys, the issuing CA and the manifest columns, and a
// sim.json that dpssim.LoadConfig accepts, with the credential policy that
// every enrollment names; it prints the next steps and no key.
func TestCertsFleetIssue(t *testing.T) {
	for _, tt := range []struct {
		kind    string
		args    []string
		header  string
		simMode os.FileMode
		policy  string
	}{
		{"x509", nil, "registration_id,cert_path,key_path,chain_path,csr_key_path,issued_cert_path", 0o644, "fleet-policy"},
		{"symmetric-group", []string{"--workers", "2"}, "registration_id,csr_key_path,issued_cert_path", 0o600, "fleet-policy"},
		{"symmetric-individual", []string{"--credential-policy", "line-7"}, "registration_id,symmetric_key,csr_key_path,issued_cert_path", 0o600, "line-7"},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "fleet")
			args := append([]string{"certs", "fleet", "--attestation", tt.kind, "--count", "3", "--prefix", "cam-", "--out", dir, "--issue"}, tt.args...)
			code, out, errs := runCmd(t, args...)
			if code != exitOK {
				t.Fatalf("%v: exit %d, stderr:\n%s", args, code, errs)
			}
			rows := mustReadCSV(t, filepath.Join(dir, "manifest.csv"))
			if got := strings.Join(rows[0], ","); got != tt.header {
				t.Errorf("manifest header = %s, want %s", got, tt.header)
			}
			if len(rows) != 4 {
				t.Fatalf("manifest has %d rows, want 4", len(rows))
			}
			for _, row := range rows[1:] {
				id := row[0]
				if got, want := strings.Join(row[len(row)-2:], ","), "csr-keys/"+id+".key,issued/"+id+".pem"; got != want {
					t.Errorf("%s: csr_key_path,issued_cert_path = %s, want %s", id, got, want)
				}
				keyPath := filepath.Join(dir, "csr-keys", id+".key")
				checkFileMode(t, keyPath, 0o600)
				if _, err := certs.LoadCSRKey(keyPath); err != nil {
					t.Error(err)
				}
			}
			checkFileMode(t, filepath.Join(dir, "csr-keys"), 0o700)
			checkFileMode(t, filepath.Join(dir, "issuing", "intermediate.key"), 0o600)
			checkFileMode(t, filepath.Join(dir, "issuing", "root.key"), 0o600)
			checkFileMode(t, filepath.Join(dir, "issuing", "root.pem"), 0o644)
			checkFileMode(t, filepath.Join(dir, "sim.json"), tt.simMode)
			if fi, err := os.Stat(filepath.Join(dir, "issued")); err != nil || !fi.IsDir() {
				t.Errorf("no issued folder: %v", err)
			}
			chain := mustReadCerts(t, filepath.Join(dir, "issuing", "chain.pem"))
			root := mustReadCerts(t, filepath.Join(dir, "issuing", "root.pem"))[0]
			if len(chain) != 2 || !chain[1].Equal(root) || chain[0].CheckSignatureFrom(root) != nil {
				t.Errorf("issuing/chain.pem is not the intermediate then the root")
			}

			cfg, err := dpssim.LoadConfig(filepath.Join(dir, "sim.json"))
			if err != nil {
				t.Fatal(err)
			}
			want := []dpssim.CredentialPolicy{{Name: tt.policy, CertificateFile: "issuing/chain.pem", KeyFile: "issuing/intermediate.key", ValidityDays: 30}}
			if got := rawPolicies(t, filepath.Join(dir, "sim.json")); !reflect.DeepEqual(got, want) {
				t.Errorf("sim.json credentialPolicies = %+v, want %+v", got, want)
			}
			if len(cfg.CredentialPolicies) != 1 || cfg.CredentialPolicies[0].Name != tt.policy {
				t.Errorf("loaded credential policies = %+v", cfg.CredentialPolicies)
			}
			named := 0
			for _, g := range cfg.Groups {
				if g.CredentialPolicyName != tt.policy {
					t.Errorf("group %s names policy %q, want %q", g.EnrollmentGroupID, g.CredentialPolicyName, tt.policy)
				}
				named++
			}
			for _, ie := range cfg.Individual {
				if ie.CredentialPolicyName != tt.policy {
					t.Errorf("enrollment %s names policy %q, want %q", ie.RegistrationID, ie.CredentialPolicyName, tt.policy)
				}
				named++
			}
			if wantNamed := map[string]int{"x509": 1, "symmetric-group": 1, "symmetric-individual": 3}[tt.kind]; named != wantNamed {
				t.Errorf("%d enrollments, want %d", named, wantNamed)
			}

			for _, want := range []string{"--issue-certs", "openssl verify -CAfile " + filepath.Join(dir, "issuing", "root.pem"),
				"-untrusted " + filepath.Join(dir, "issuing", "intermediate.pem"), fmt.Sprintf("credential policy %q", tt.policy)} {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out+errs, "PRIVATE KEY") {
				t.Errorf("output holds a key:\n%s\n%s", out, errs)
			}
		})
	}
}

// rawPolicies returns sim.json's credentialPolicies as written, file
// references unresolved.
func rawPolicies(t *testing.T, path string) []dpssim.CredentialPolicy {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		CredentialPolicies []dpssim.CredentialPolicy `json:"credentialPolicies"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	return raw.CredentialPolicies
}

// TestCertsFleetIssueFlags: --credential-policy needs --issue; --workers
// is refused for a symmetric fleet without --issue.
func TestCertsFleetIssueFlags(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--credential-policy", "p"}, "--credential-policy: only with --issue"},
		{[]string{"--issue", "--credential-policy", " "}, "--credential-policy must not be empty"},
		{[]string{"--attestation", "symmetric-group", "--workers", "2"}, "--workers: only for --attestation x509"},
	} {
		code, _, errs := runCmd(t, append([]string{"certs", "fleet", "--count", "2", "--out", dir}, tt.args...)...)
		if code != exitUsage || !strings.Contains(errs, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 containing %q", tt.args, code, errs, tt.want)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a refused fleet created %s", dir)
	}
}

// TestCertsFleetIssueProvisions: a fleet made with --issue, of every
// attestation, served by "dps-batch sim" from its sim.json and provisioned
// with --issue-certs, ends with one issued chain per device that verifies
// to DIR/issuing/root.pem, for the device's CN and operational key.
func TestCertsFleetIssueProvisions(t *testing.T) {
	for _, kind := range certs.Attestations {
		t.Run(kind, func(t *testing.T) {
			const n = 4
			dir := filepath.Join(t.TempDir(), "fleet")
			if code, _, errs := runCmd(t, "certs", "fleet", "--attestation", kind, "--count", strconv.Itoa(n), "--out", dir, "--issue"); code != exitOK {
				t.Fatalf("certs fleet --issue: exit %d\n%s", code, errs)
			}
			caFile := filepath.Join(dir, "sim-ca.pem")
			url, _, _ := startSimCmd(t, "--config", filepath.Join(dir, "sim.json"), "--listen", "127.0.0.1:0",
				"--ca-out", caFile, "--retry-after", "0", "--registrations-per-minute", "-1")
			args := []string{"provision", "--manifest", filepath.Join(dir, "manifest.csv"), "--id-scope", "0ne00000000",
				"--endpoint", url, "--ca-file", caFile, "--quiet", "--rate", "-1", "--poll-rate", "-1", "--issue-certs"}
			if kind == certs.AttestationSymmetricGroup {
				args = append(args, "--group-key-file", filepath.Join(dir, "group.key"))
			}
			code, stdout, stderr := runCmd(t, args...)
			if code != exitOK || !strings.Contains(stdout, fmt.Sprintf("assigned %d", n)) {
				t.Fatalf("provision --issue-certs: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			root := mustReadCerts(t, filepath.Join(dir, "issuing", "root.pem"))[0]
			inter := mustReadCerts(t, filepath.Join(dir, "issuing", "intermediate.pem"))[0]
			bin, _ := exec.LookPath("openssl")
			for i := 1; i <= n; i++ {
				id := fmt.Sprintf("dev-%05d", i)
				issued := filepath.Join(dir, "issued", id+".pem")
				chain := mustReadCerts(t, issued)
				leaf := chain[0]
				if leaf.Subject.CommonName != id {
					t.Errorf("%s: CN %q", issued, leaf.Subject.CommonName)
				}
				key, err := certs.LoadCSRKey(filepath.Join(dir, "csr-keys", id+".key"))
				if err != nil {
					t.Fatal(err)
				}
				if !key.PublicKey.Equal(leaf.PublicKey) {
					t.Errorf("%s: not for the device's operational key", issued)
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: certPool(root), Intermediates: certPool(inter),
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
					t.Errorf("%s does not verify to issuing/root.pem: %v", issued, err)
				}
				if bin != "" {
					out, err := exec.Command(bin, "verify", "-CAfile", filepath.Join(dir, "issuing", "root.pem"),
						"-untrusted", filepath.Join(dir, "issuing", "intermediate.pem"), issued).CombinedOutput()
					if err != nil || !strings.Contains(string(out), ": OK") {
						t.Errorf("openssl verify %s: %v\n%s", issued, err, out)
					}
				}
			}
		})
	}
}

func certPool(cs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cs {
		p.AddCert(c)
	}
	return p
}

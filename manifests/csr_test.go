package manifests

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// csrHeader is the header of the certificate issuance tests' manifests.
const csrHeader = "registration_id,csr_key_path,csr_path,issued_cert_path"

// issueOpts are options for certificate issuance with group-key
// credentials, so that rows need no other credential.
func issueOpts() Options {
	o := testOptions()
	o.IssueCerts = true
	o.GroupKey = []byte("0123456789abcdef0123456789abcdef")
	return o
}

func p384Key(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// csrPEM makes a PEM CSR for cn signed by key with alg (0: the default
// for the key).
func csrPEM(tb testing.TB, key crypto.Signer, cn string, alg x509.SignatureAlgorithm) []byte {
	tb.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn}, SignatureAlgorithm: alg}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// csrFixture is a folder of keys and CSRs for the issuance tests.
type csrFixture struct {
	dir     string
	key     *ecdsa.PrivateKey // dev-1's P-384 key, keys/dev-1.key
	csrDER  []byte            // csr/dev-1.pem
	csrPub  crypto.PublicKey
	rsaPath string
}

func newCSRFixture(t *testing.T) *csrFixture {
	t.Helper()
	dir := t.TempDir()
	fx := &csrFixture{dir: dir, key: p384Key(t)}
	mustWrite(t, dir, "keys/dev-1.key", keyPEM(t, fx.key), 0o600)
	sec1, err := x509.MarshalECPrivateKey(fx.key)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, dir, "keys/dev-1.sec1.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), 0o600)
	mustWrite(t, dir, "keys/open.key", keyPEM(t, p384Key(t)), 0o644)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, dir, "keys/rsa.key", keyPEM(t, rsaKey), 0o600)
	mustWrite(t, dir, "keys/p256.key", keyPEM(t, p256Key(t)), 0o600)

	good := csrPEM(t, fx.key, "dev-1", x509.ECDSAWithSHA384)
	mustWrite(t, dir, "csr/dev-1.pem", good, 0o644)
	b, _ := pem.Decode(good)
	fx.csrDER, fx.csrPub = b.Bytes, fx.key.Public()
	tampered := append([]byte(nil), b.Bytes...)
	tampered[len(tampered)-1] ^= 0x01 // the last byte of the signature's s
	mustWrite(t, dir, "csr/tampered.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), 0o644)
	mustWrite(t, dir, "csr/p256.pem", csrPEM(t, p256Key(t), "dev-1", x509.ECDSAWithSHA256), 0o644)
	mustWrite(t, dir, "csr/rsa.pem", csrPEM(t, rsaKey, "dev-1", x509.SHA384WithRSA), 0o644)
	mustWrite(t, dir, "csr/sha256.pem", csrPEM(t, fx.key, "dev-1", x509.ECDSAWithSHA256), 0o644)
	mustWrite(t, dir, "csr/dev-2.pem", csrPEM(t, fx.key, "dev-2", x509.ECDSAWithSHA384), 0o644)
	mustWrite(t, dir, "csr/der.csr", b.Bytes, 0o644)
	mustWrite(t, dir, "csr/two.pem", append(append([]byte(nil), good...), good...), 0o644)
	if err := os.MkdirAll(filepath.Join(dir, "out/a-directory"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, dir, "a-file", []byte("not a folder\n"), 0o644)
	return fx
}

// TestCSRFromKey: a row with a P-384 key gets a CSR made from it, with the
// registration id as CN, signed ECDSA-SHA384, for that key.
func TestCSRFromKey(t *testing.T) {
	fx := newCSRFixture(t)
	for _, keyFile := range []string{"keys/dev-1.key", "keys/dev-1.sec1.key"} {
		t.Run(keyFile, func(t *testing.T) {
			dev, probs := loadRowOpts(t, fx.dir, csrHeader, "dev-1,"+keyFile+",,", issueOpts())
			if dev == nil || len(probs) > 0 {
				t.Fatalf("Load = %v, problems:%s; want a device and no problems", dev, problemStrings(probs))
			}
			csr, err := x509.ParseCertificateRequest(dev.CSR)
			if err != nil {
				t.Fatalf("Device.CSR does not parse: %v", err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Errorf("CSR signature: %v", err)
			}
			if csr.Subject.CommonName != "dev-1" {
				t.Errorf("CSR CN = %q, want dev-1", csr.Subject.CommonName)
			}
			if csr.SignatureAlgorithm != x509.ECDSAWithSHA384 {
				t.Errorf("CSR signature algorithm = %v, want ECDSA-SHA384", csr.SignatureAlgorithm)
			}
			if !fx.key.PublicKey.Equal(csr.PublicKey) || !fx.key.PublicKey.Equal(dev.CSRPublicKey) {
				t.Error("the CSR's and Device.CSRPublicKey must be the key's public key")
			}
			if want := filepath.Join(fx.dir, "issued", "dev-1.pem"); dev.IssuedCertPath != want {
				t.Errorf("IssuedCertPath = %q, want %q", dev.IssuedCertPath, want)
			}
			if dev.Kind != KindGroupKey {
				t.Errorf("Kind = %q, want the row's credential kind, %q", dev.Kind, KindGroupKey)
			}
			for _, s := range []string{fmt.Sprint(dev), fmt.Sprintf("%+v", dev), fmt.Sprintf("%#v", dev)} {
				if strings.Contains(s, "PRIVATE") || strings.Contains(s, fx.key.D.String()) {
					t.Errorf("printed device shows its key: %s", s)
				}
			}
		})
	}
}

// TestCSRFile: a ready CSR is passed on as it is, and an issued_cert_path
// resolves against the manifest's folder.
func TestCSRFile(t *testing.T) {
	fx := newCSRFixture(t)
	dev, probs := loadRowOpts(t, fx.dir, csrHeader, "dev-1,,csr/dev-1.pem,out/new/dev-1.pem", issueOpts())
	if dev == nil || len(probs) > 0 {
		t.Fatalf("Load = %v, problems:%s; want a device and no problems", dev, problemStrings(probs))
	}
	if string(dev.CSR) != string(fx.csrDER) {
		t.Error("Device.CSR is not the file's CSR")
	}
	if !fx.key.PublicKey.Equal(dev.CSRPublicKey) {
		t.Error("Device.CSRPublicKey is not the CSR's key")
	}
	if want := filepath.Join(fx.dir, "out", "new", "dev-1.pem"); dev.IssuedCertPath != want {
		t.Errorf("IssuedCertPath = %q, want %q", dev.IssuedCertPath, want)
	}
}

// TestCSRProblems: every row that cannot work under the preview's limits
// is an error naming its row, column and file, and saying why.
func TestCSRProblems(t *testing.T) {
	fx := newCSRFixture(t)
	tests := []struct {
		name    string
		row     string
		col     string
		path    string
		msg     []string // substrings of the message
		hint    string   // substring of the hint
		warning bool     // the problem is a warning: the device loads
	}{
		{name: "RSA key", row: "dev-1,keys/rsa.key,,", col: colCSRKeyPath, path: "keys/rsa.key",
			msg:  []string{"RSA keys are not supported by DPS certificate issuance (preview: EC P-384 only)"},
			hint: "dps-batch certs csr"},
		{name: "P-256 key", row: "dev-1,keys/p256.key,,", col: colCSRKeyPath, path: "keys/p256.key",
			msg: []string{"EC P-256 keys are not supported", "EC P-384 only"}, hint: "secp384r1"},
		{name: "key file open to others", row: "dev-1,keys/open.key,,", col: colCSRKeyPath, path: "keys/open.key",
			msg: []string{"mode 0644, want 0600"}, hint: "chmod 600 keys/open.key", warning: true},
		{name: "missing key", row: "dev-1,keys/nope.key,,", col: colCSRKeyPath, path: "keys/nope.key",
			msg: []string{"file not found"}},
		{name: "CSR in the key column", row: "dev-1,csr/dev-1.pem,,", col: colCSRKeyPath, path: "csr/dev-1.pem",
			msg: []string{"certificate request (CSR), not a private key"}, hint: "csr_path"},
		{name: "key in the CSR column", row: "dev-1,,keys/dev-1.key,", col: colCSRPath, path: "keys/dev-1.key",
			msg: []string{"private key", "not a certificate request"}, hint: "csr_key_path"},
		{name: "P-256 CSR", row: "dev-1,,csr/p256.pem,", col: colCSRPath, path: "csr/p256.pem",
			msg: []string{"CSR public key: EC P-256 keys are not supported", "EC P-384 only"}},
		{name: "RSA CSR", row: "dev-1,,csr/rsa.pem,", col: colCSRPath, path: "csr/rsa.pem",
			msg: []string{"RSA keys are not supported"}},
		{name: "SHA-256 CSR", row: "dev-1,,csr/sha256.pem,", col: colCSRPath, path: "csr/sha256.pem",
			msg: []string{"signed with ECDSA-SHA256", "ECDSA-SHA384 only"}, hint: "-sha384"},
		{name: "CN mismatch", row: "dev-1,,csr/dev-2.pem,", col: colCSRPath, path: "csr/dev-2.pem",
			msg: []string{`CN is "dev-2"`, `registration id is "dev-1"`}},
		{name: "tampered signature", row: "dev-1,,csr/tampered.pem,", col: colCSRPath, path: "csr/tampered.pem",
			msg: []string{"CSR signature does not verify"}},
		{name: "DER CSR", row: "dev-1,,csr/der.csr,", col: colCSRPath, path: "csr/der.csr",
			msg: []string{"DER (binary)"}, hint: "openssl req -inform der"},
		{name: "two CSRs", row: "dev-1,,csr/two.pem,", col: colCSRPath, path: "csr/two.pem",
			msg: []string{"2 certificate requests"}},
		{name: "both columns", row: "dev-1,keys/dev-1.key,csr/dev-1.pem,", col: colCSRPath, path: "csr/dev-1.pem",
			msg: []string{"both csr_key_path and csr_path"}, hint: "keep one"},
		{name: "no CSR", row: "dev-1,,,out/dev-1.pem", col: colCSRKeyPath,
			msg: []string{"row has no CSR"}, hint: "--generate-csr-keys"},
		{name: "output is a directory", row: "dev-1,keys/dev-1.key,,out/a-directory", col: colIssuedCertPath, path: "out/a-directory",
			msg: []string{"is a directory"}},
		{name: "output folder is a file", row: "dev-1,keys/dev-1.key,,a-file/dev-1.pem", col: colIssuedCertPath,
			msg: []string{"a-file is a file, not a folder"}},
		{name: "output under a file", row: "dev-1,keys/dev-1.key,,a-file/sub/dev-1.pem", col: colIssuedCertPath,
			msg: []string{"cannot create the output folder", "a-file is a file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev, probs := loadRowOpts(t, fx.dir, csrHeader, tt.row, issueOpts())
			if tt.warning != (dev != nil) {
				t.Errorf("Load gave device %v; want one: %v", dev, tt.warning)
			}
			var found *Problem
			for i, p := range probs {
				if p.Column == tt.col && p.Path == tt.path && containsAll(p.Message, tt.msg) {
					found = &probs[i]
				}
			}
			if found == nil {
				t.Fatalf("no %s problem with path %q and message with %q; got:%s", tt.col, tt.path, tt.msg, problemStrings(probs))
			}
			if found.Line != 2 || found.RegistrationID != "dev-1" {
				t.Errorf("problem names row %d (%q), want 2 (dev-1)", found.Line, found.RegistrationID)
			}
			if !strings.Contains(found.Hint, tt.hint) {
				t.Errorf("hint %q lacks %q", found.Hint, tt.hint)
			}
			if (found.Severity == SeverityWarning) != tt.warning {
				t.Errorf("severity %v, want warning: %v", found.Severity, tt.warning)
			}
			if dev != nil && dev.CSR == nil {
				t.Error("a device loaded with a warning has no CSR")
			}
		})
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestIssuedFolderNotWritable: an output folder that cannot be written is
// an error on every row writing there, found once per folder, and one
// problem group however many rows it concerns.
func TestIssuedFolderNotWritable(t *testing.T) {
	fx := newCSRFixture(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "locked")
	want := "not writable"
	if os.Geteuid() == 0 {
		// Root writes anywhere: a folder that is a file stops it still.
		mustWrite(t, dir, "locked", []byte("a file\n"), 0o644)
		want = "is a file, not a folder"
	} else {
		if err := os.Mkdir(out, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(out, 0o700) })
	}
	key := filepath.Join(fx.dir, "keys/dev-1.key")
	var lines []string
	for i := 1; i <= 3; i++ {
		// Row 3's folder does not exist yet; its nearest existing one is out.
		sub := ""
		if i == 3 {
			sub = "sub/"
		}
		lines = append(lines, fmt.Sprintf("dev-%d,%s,,%s/%sdev-%d.pem", i, key, out, sub, i))
	}
	manifest := writeManifest(t, dir, "m.csv", append([]string{csrHeader}, lines...)...)
	s, err := Validate(context.Background(), manifest, issueOpts(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var rows []int
	for _, p := range s.Errors {
		if p.Column != colIssuedCertPath || !strings.Contains(p.Message, want) || !strings.Contains(p.Message, out) {
			t.Errorf("unexpected problem: %s", p.Error())
			continue
		}
		rows = append(rows, p.Line)
	}
	if fmt.Sprint(rows) != "[2 3 4]" {
		t.Errorf("issued_cert_path errors on rows %v, want [2 3 4]; all:%s", rows, problemStrings(s.Errors))
	}
	if len(s.ErrorGroups) != 2 || s.ErrorGroups[0].Count != 2 {
		var gs []string
		for _, g := range s.ErrorGroups {
			gs = append(gs, g.String())
		}
		t.Errorf("want one group for the two rows of the folder and one for the subfolder, got:\n%s", strings.Join(gs, "\n"))
	}
	if len(s.ByKind) != 0 {
		t.Errorf("ByKind = %v, want no usable rows", s.ByKind)
	}
}

// TestIssuedFolderCheckedOnce: rows writing to the same folder check it
// once.
func TestIssuedFolderCheckedOnce(t *testing.T) {
	fx := newCSRFixture(t)
	var b strings.Builder
	b.WriteString(csrHeader + "\n")
	for i := 1; i <= 50; i++ {
		fmt.Fprintf(&b, "dev-%d,keys/dev-1.key,,\n", i)
	}
	r, err := NewReaderWith(strings.NewReader(b.String()), fx.dir, issueOpts())
	if err != nil {
		t.Fatal(err)
	}
	for {
		row, err := r.Next()
		if err != nil {
			break
		}
		if dev, probs := r.Load(row, issueOpts()); dev == nil {
			t.Fatalf("row %d:%s", row.Line, problemStrings(probs))
		}
	}
	if len(r.cache.folders) != 1 {
		t.Errorf("%d folders checked, want 1", len(r.cache.folders))
	}
	// The probe leaves nothing behind, and the folder is not made here.
	if entries, _ := os.ReadDir(fx.dir); len(entries) != 4 { // a-file, csr, keys, out
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("manifest folder holds %v", names)
	}
}

// TestDuplicateIssuedCertPath: two rows whose chains would go to the same
// file are an error on the second, in Validate; a repeated id is reported
// once, not again for its default file.
func TestDuplicateIssuedCertPath(t *testing.T) {
	fx := newCSRFixture(t)
	manifest := writeManifest(t, fx.dir, "m.csv", csrHeader,
		"dev-1,keys/dev-1.key,,out/a.pem",
		"dev-2,keys/dev-1.key,,out/../out/a.pem", // the same file, written otherwise
		"dev-3,keys/dev-1.key,,",
		"dev-4,keys/dev-1.key,,issued/dev-3.pem", // dev-3's default
		"dev-5,keys/dev-1.key,,",
		"dev-5,keys/dev-1.key,,", // repeated id
		"dev-6,keys/dev-1.key,,out/b.pem",
	)
	s, err := Validate(context.Background(), manifest, issueOpts(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range s.Errors {
		got = append(got, fmt.Sprintf("%d %s %s", p.Line, p.Column, p.Message))
	}
	want := []string{
		"3 issued_cert_path another device's issued certificate is written to the same file (first on row 2)",
		"5 issued_cert_path another device's issued certificate is written to the same file (first on row 4)",
		"7 registration_id duplicate registration id (first on row 6)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s.ByKind[KindGroupKey] != 4 {
		t.Errorf("ByKind = %v, want 4 usable group-key rows", s.ByKind)
	}
}

// TestCSRColumnsNeedIssueCerts: without IssueCerts, a header with the
// issuance columns is refused, since the devices would be registered
// without certificates; IgnoreCSRColumns allows them for callers that do
// not register.
func TestCSRColumnsNeedIssueCerts(t *testing.T) {
	fx := newCSRFixture(t)
	manifest := writeManifest(t, fx.dir, "m.csv", "registration_id,csr_key_path,issued_cert_path", "dev-1,keys/dev-1.key,")
	opts := issueOpts()
	opts.IssueCerts = false
	_, err := Validate(context.Background(), manifest, opts, 0)
	var he *HeaderError
	if !errors.As(err, &he) {
		t.Fatalf("Validate error = %v, want a *HeaderError", err)
	}
	var cols []string
	for _, p := range he.Problems {
		cols = append(cols, p.Column)
		if p.Line != 1 || !strings.Contains(p.Message, "registered without certificates") ||
			p.Hint != "add --issue-certs (api-version 2025-07-01-preview) or remove the columns" {
			t.Errorf("problem: %s", p.Error())
		}
	}
	if fmt.Sprint(cols) != "[csr_key_path issued_cert_path]" {
		t.Errorf("problems name columns %v, want [csr_key_path issued_cert_path]", cols)
	}

	opts.IgnoreCSRColumns = true
	s, err := Validate(context.Background(), manifest, opts, 0)
	if err != nil || !s.OK() {
		t.Fatalf("Validate with IgnoreCSRColumns: %v%s", err, problemStrings(s.Errors))
	}
	r, err := OpenWith(manifest, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	row, _ := r.Next()
	dev, _ := r.Load(row, opts)
	if row.CSRKeyPath != "keys/dev-1.key" || dev == nil || dev.CSR != nil || dev.IssuedCertPath != "" {
		t.Errorf("row %+v, device %v: want the column read and no CSR", row, dev)
	}
}

// TestIssueCertsHeader: issuing with no CSR column and no key folder is a
// header error; a mapped column counts.
func TestIssueCertsHeader(t *testing.T) {
	fx := newCSRFixture(t)
	_, err := NewReaderWith(strings.NewReader("registration_id\ndev-1\n"), fx.dir, issueOpts())
	var he *HeaderError
	if !errors.As(err, &he) || len(he.Problems) != 1 || he.Problems[0].Column != colCSRKeyPath ||
		!strings.Contains(he.Problems[0].Hint, "--generate-csr-keys") {
		t.Fatalf("error = %v, want a header error about csr_key_path", err)
	}

	opts := issueOpts()
	opts.Columns = ColumnMap{colCSRKeyPath: "operational_key"}
	dev, probs := loadRowOpts(t, fx.dir, "registration_id,operational_key", "dev-1,keys/dev-1.key", opts)
	if dev == nil || dev.CSR == nil {
		t.Fatalf("mapped csr_key_path: device %v, problems:%s", dev, problemStrings(probs))
	}
}

// loadRowOpts is loadRow with header options.
func loadRowOpts(t *testing.T, baseDir, hdr, line string, opts Options) (*Device, []Problem) {
	t.Helper()
	r, err := NewReaderWith(strings.NewReader(hdr+"\n"+line+"\n"), baseDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	row, err := r.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return r.Load(row, opts)
}

// TestCSRKeyDir: rows without either CSR column use CSRKeyDir/<id>.key.
func TestCSRKeyDir(t *testing.T) {
	fx := newCSRFixture(t)
	keyDir := t.TempDir()
	mustWrite(t, keyDir, "dev-1.key", keyPEM(t, fx.key), 0o600)
	opts := issueOpts()
	opts.CSRKeyDir = keyDir

	dev, probs := loadRowOpts(t, fx.dir, "registration_id", "dev-1", opts)
	if dev == nil || len(probs) > 0 {
		t.Fatalf("Load = %v, problems:%s", dev, problemStrings(probs))
	}
	csr, err := x509.ParseCertificateRequest(dev.CSR)
	if err != nil || csr.Subject.CommonName != "dev-1" || !fx.key.PublicKey.Equal(csr.PublicKey) {
		t.Errorf("CSR from the key folder: %v, CN %q", err, csr.Subject.CommonName)
	}

	// A row's own column wins over the folder.
	dev, probs = loadRowOpts(t, fx.dir, csrHeader, "dev-1,,csr/dev-1.pem,", opts)
	if dev == nil || string(dev.CSR) != string(fx.csrDER) {
		t.Errorf("csr_path with CSRKeyDir: device %v, problems:%s", dev, problemStrings(probs))
	}

	_, probs = loadRowOpts(t, fx.dir, "registration_id", "dev-2", opts)
	wantPath := filepath.Join(keyDir, "dev-2.key")
	if len(probs) != 1 || probs[0].Column != colCSRKeyPath || probs[0].Path != wantPath || !strings.Contains(probs[0].Message, "not found") {
		t.Errorf("missing key in the folder: problems:%s; want file not found for %s", problemStrings(probs), wantPath)
	}
}

// TestCSRSkipSignatureChecks: the runner's second pass still makes CSRs,
// and skips verifying a ready CSR's signature only.
func TestCSRSkipSignatureChecks(t *testing.T) {
	fx := newCSRFixture(t)
	opts := issueOpts()
	opts.SkipSignatureChecks = true
	dev, probs := loadRowOpts(t, fx.dir, csrHeader, "dev-1,,csr/tampered.pem,", opts)
	if dev == nil || dev.CSR == nil {
		t.Errorf("tampered CSR, signatures skipped: device %v, problems:%s", dev, problemStrings(probs))
	}
	if _, probs := loadRowOpts(t, fx.dir, csrHeader, "dev-1,,csr/dev-2.pem,", opts); len(probs) == 0 {
		t.Error("CN mismatch not found with SkipSignatureChecks")
	}
	dev, probs = loadRowOpts(t, fx.dir, csrHeader, "dev-1,keys/dev-1.key,,", opts)
	if dev == nil || dev.CSR == nil {
		t.Errorf("key row with SkipSignatureChecks: device %v, problems:%s", dev, problemStrings(probs))
	}
}

// TestNotIssuing: devices loaded without IssueCerts carry no CSR, and the
// X.509 rows of the shared fixture are unchanged.
func TestNotIssuing(t *testing.T) {
	fx := mustFixture(t)
	dev, probs := loadRow(t, fx.dir, header, "dev-1,devices/dev-1.pem,devices/dev-1.key,,,", testOptions())
	if dev == nil || len(probs) > 0 {
		t.Fatalf("problems:%s", problemStrings(probs))
	}
	if dev.CSR != nil || dev.CSRPublicKey != nil || dev.IssuedCertPath != "" {
		t.Error("device has certificate issuance fields without IssueCerts")
	}
}

// TestIssueCertsIDLimit: an issued certificate's CN is the id, so ids are
// held to the certificate CN limit of 64 characters.
func TestIssueCertsIDLimit(t *testing.T) {
	fx := newCSRFixture(t)
	id := strings.Repeat("a", 65)
	_, probs := loadRowOpts(t, fx.dir, csrHeader, id+",keys/dev-1.key,,", issueOpts())
	if len(probs) != 1 || probs[0].Column != colRegistrationID || !strings.Contains(probs[0].Message, "limited to 64") {
		t.Errorf("65-character id: problems:%s; want one registration_id error", problemStrings(probs))
	}
}

// TestIssuedPathIsNotAnInput: an issued_cert_path that names the row's own
// key or CSR, or an existing key file, is refused: the chain would replace
// the device's key.
func TestIssuedPathIsNotAnInput(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	for _, name := range []string{"a.key", "other.key"} {
		if err := os.WriteFile(filepath.Join(dir, name), keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	manifest := "registration_id,csr_key_path,issued_cert_path\n" +
		"dev-1,a.key,a.key\n" +
		"dev-2,a.key,./a.key\n" +
		"dev-3,a.key,other.key\n" +
		"dev-4,a.key,issued/dev-4.pem\n"
	path := filepath.Join(dir, "m.csv")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := Validate(context.Background(), path, Options{IssueCerts: true, GroupKey: make([]byte, 32)}, 100)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, p := range sum.Errors {
		msgs = append(msgs, p.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"row 2 (dev-1): issued_cert_path", "row 3 (dev-2): issued_cert_path", "is the row's csr_key_path", "row 4 (dev-3): issued_cert_path", "holds a private key"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "dev-4") {
		t.Errorf("the good row is reported:\n%s", all)
	}
}

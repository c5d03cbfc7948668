package manifests

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goodRow is a valid X.509 row used as line 2 of every bad-row manifest, so
// the tests also check that one bad row does not taint its neighbours.
const goodRow = "dev-1,devices/dev-1.pem,devices/dev-1.key,ca/intermediate.pem,,"

// TestValidateBadRows covers every class of row problem: each case writes a
// manifest of the header, goodRow and the bad row (line 3) and checks that
// Validate reports the problem against line 3 and the right column.
func TestValidateBadRows(t *testing.T) {
	fx := mustFixture(t)
	const key16 = "MDEyMzQ1Njc4OWFiY2RlZg==" // 16 bytes
	groupKey := []byte("0123456789abcdef0123456789abcdef")
	type want struct {
		column   string
		substr   string // in Message
		severity Severity
	}
	tests := []struct {
		name     string
		row      string
		groupKey []byte
		want     []want
		hint     string // substring of the first wanted problem's hint, if set
	}{
		{name: "empty id", row: ",,,,MDEyMzQ1Njc4OWFiY2RlZg==,",
			want: []want{{colRegistrationID, "registration id is empty", SeverityError}}},
		{name: "upper-case id", row: "Dev-9,,," + ",MDEyMzQ1Njc4OWFiY2RlZg==,",
			want: []want{{colRegistrationID, "upper-case", SeverityError}}},
		{name: "bad character in id", row: "dev 9,,,," + key16 + ",",
			want: []want{{colRegistrationID, `' '`, SeverityError}}},
		{name: "x509 id over 64 characters", row: strings.Repeat("a", 65) + ",devices/dev-3.pem,devices/dev-3.key,,,",
			want: []want{{colRegistrationID, "limited to 64", SeverityError}, {colCertPath, "certificate CN is", SeverityError}}},
		{name: "duplicate id", row: goodRow,
			want: []want{{colRegistrationID, "duplicate registration id (first on row 2)", SeverityError}}},
		{name: "missing cert file", row: "dev-3,devices/nope.pem,devices/dev-3.key,,,",
			want: []want{{colCertPath, "file not found", SeverityError}}, hint: "relative paths resolve against the manifest's folder"},
		{name: "directory as cert", row: "dev-3,bad/a-directory,devices/dev-3.key,,,",
			want: []want{{colCertPath, "is a directory", SeverityError}}},
		{name: "key over size cap", row: "dev-3,devices/dev-3.pem,bad/huge.key,,,",
			want: []want{{colKeyPath, "the limit is 1048576", SeverityError}}},
		{name: "missing chain file", row: "dev-3,devices/dev-3.pem,devices/dev-3.key,ca/nope.pem,,",
			want: []want{{colChainPath, "file not found", SeverityError}}},
		{name: "key in cert_path", row: "dev-3,bad/key-as-cert.pem,devices/dev-3.key,,,",
			want: []want{{colCertPath, `holds a private key (PEM "PRIVATE KEY")`, SeverityError}}, hint: "swapped"},
		{name: "cert in key_path", row: "dev-3,devices/dev-3.pem,devices/dev-4.pem,,,",
			want: []want{{colKeyPath, "holds a certificate, not a private key", SeverityError}}, hint: "swapped"},
		{name: "cert_path as key_path", row: "dev-3,devices/dev-3.pem,devices/dev-3.pem,,,",
			want: []want{{colKeyPath, "holds a certificate but no private key", SeverityError}}},
		{name: "garbage cert", row: "dev-3,bad/garbage.pem,devices/dev-3.key,,,",
			want: []want{{colCertPath, "no PEM certificate found", SeverityError}}},
		{name: "DER cert", row: "dev-3,bad/der.cer,devices/dev-3.key,,,",
			want: []want{{colCertPath, "DER (binary), not PEM", SeverityError}}, hint: "openssl x509 -inform der -in bad/der.cer"},
		{name: "truncated cert", row: "dev-3,bad/broken.pem,devices/dev-3.key,,,",
			want: []want{{colCertPath, "certificate 1 in the file cannot be parsed", SeverityError}}},
		{name: "CSR as cert", row: "dev-3,bad/csr.pem,devices/dev-3.key,,,",
			want: []want{{colCertPath, "certificate request (CSR)", SeverityError}}},
		{name: "encrypted key", row: "dev-3,devices/dev-3.pem,bad/encrypted.key,,,",
			want: []want{{colKeyPath, "private key is encrypted", SeverityError}},
			hint: "decrypt it with: openssl pkey -in bad/encrypted.key -out bad/encrypted.key.plain"},
		{name: "legacy encrypted key", row: "dev-3,devices/dev-3.pem,bad/legacy-encrypted.key,,,",
			want: []want{{colKeyPath, "private key is encrypted", SeverityError}}},
		{name: "corrupt key", row: "dev-3,devices/dev-3.pem,bad/corrupt.key,,,",
			want: []want{{colKeyPath, "not a usable private key", SeverityError}}},
		{name: "two keys", row: "dev-3,devices/dev-3.pem,bad/two-keys.key,,,",
			want: []want{{colKeyPath, "holds 2 private keys", SeverityError}}},
		{name: "key does not match", row: "dev-3,devices/dev-3.pem,devices/dev-4.key,,,",
			want: []want{{colKeyPath, "private key does not match the certificate", SeverityError}}},
		{name: "CN differs from id", row: "dev-3,devices/dev-4.pem,devices/dev-4.key,,,",
			want: []want{{colCertPath, `certificate CN is "dev-4", want "dev-3"`, SeverityError}}},
		{name: "expired cert", row: "dev-3,bad/expired.pem,bad/expired.key,,,",
			want: []want{{colCertPath, "the device certificate (CN \"dev-3\") expired on 2026-05-31 12:00:00Z", SeverityError}}},
		{name: "not yet valid", row: "dev-3,bad/future.pem,bad/future.key,,,",
			want: []want{{colCertPath, "is not valid until 2026-06-02 12:00:00Z", SeverityError}}},
		{name: "serverAuth only", row: "dev-3,bad/server-only.pem,bad/server-only.key,,,",
			want: []want{{colCertPath, "does not include clientAuth", SeverityError}}, hint: "extendedKeyUsage=clientAuth"},
		{name: "no EKU", row: "dev-3,bad/no-eku.pem,bad/no-eku.key,,,",
			want: []want{{colCertPath, "no extended key usage", SeverityError}}},
		{name: "chain out of order", row: "dev-3,bad/out-of-order.pem,devices/dev-3.key,,,",
			want: []want{{colCertPath, `out of order: the device certificate (CN "dev-3") is issued by certificate 3 of cert_path (CN "Test Intermediate")`, SeverityError}}},
		{name: "chain from another CA", row: "dev-3,bad/other-issuer.pem,bad/other-issuer.key,ca/intermediate.pem,,",
			want: []want{{colChainPath, `chain is broken: the device certificate (CN "dev-3") is not issued by the next certificate, certificate 1 of chain_path (CN "Test Intermediate")`, SeverityError}}},
		{name: "expired intermediate", row: "dev-3,bad/expired-int.pem,bad/expired-int.key,ca/expired-intermediate.pem,,",
			want: []want{{colChainPath, `certificate 1 of chain_path (CN "Expired Intermediate") expired`, SeverityError}}},
		{name: "cert without key", row: "dev-3,devices/dev-3.pem,,,,",
			want: []want{{colKeyPath, "key_path is empty", SeverityError}}},
		{name: "key without cert", row: "dev-3,,devices/dev-3.key,,,",
			want: []want{{colCertPath, "cert_path is empty", SeverityError}}},
		{name: "both credentials", row: "dev-3,devices/dev-3.pem,devices/dev-3.key,," + key16 + ",",
			want: []want{{colSymmetricKey, "both X.509", SeverityError}}},
		{name: "no credentials without group key", row: "dev-3,,,,,",
			want: []want{{"", "row has no credentials", SeverityError}}},
		{name: "bad base64 key", row: "dev-3,,,,not*base64*at*all=,",
			want: []want{{colSymmetricKey, "not valid base64 (bad data at character 4)", SeverityError}}},
		{name: "short key", row: "dev-3,,,,c2hvcnQ=,",
			want: []want{{colSymmetricKey, "symmetric key is 5 bytes", SeverityError}}},
		{name: "long key", row: "dev-3,,,," + strings.Repeat("QUFB", 22) + ",",
			want: []want{{colSymmetricKey, "symmetric key is 66 bytes", SeverityError}}},
		{name: "payload not JSON", row: "dev-3,,,,," + `{site:1}`, groupKey: groupKey,
			want: []want{{colPayload, "payload is not valid JSON", SeverityError}}},
		{name: "payload array", row: "dev-3,,,,," + `"[1,2]"`, groupKey: groupKey,
			want: []want{{colPayload, "payload is a JSON array, not an object", SeverityError}}},
		{name: "wrong field count", row: "dev-3,,,,",
			want: []want{{"", "row has 5 fields, the header has 6", SeverityError}}},
		{name: "bare quote", row: `dev-3,,,,,{"a":1}`, groupKey: groupKey,
			want: []want{{"", `malformed CSV at line 3`, SeverityError}}},
		{name: "key file readable by others", row: "dev-3,devices/dev-3.pem,bad/open.key,,,",
			want: []want{{colKeyPath, "open to other users (mode 0644, want 0600)", SeverityWarning}}, hint: "chmod 600 bad/open.key"},
		{name: "group-readable key with a space in its path", row: "dev-2,devices/dev-2.pem,keys/with space.key,,,",
			want: []want{{colKeyPath, "(mode 0640, want 0600)", SeverityWarning}}, hint: "chmod 600 'keys/with space.key'"},
		{name: "key in the cert_path column", row: "dev-3," + key16 + ",devices/dev-3.key,,,",
			want: []want{{colCertPath, "looks like a base64 key (not shown)", SeverityError}}},
		{name: "key in the id column", row: key16 + ",,,,,", groupKey: groupKey,
			want: []want{{colRegistrationID, "looks like a base64 key (not shown)", SeverityError}}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeManifest(t, fx.dir, fmt.Sprintf("bad-%02d.csv", i), header, goodRow, tt.row)
			opts := testOptions()
			opts.GroupKey = tt.groupKey
			s, err := Validate(context.Background(), path, opts, 0)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			all := append(append([]Problem{}, s.Errors...), s.Warnings...)
			for _, p := range all {
				if p.Line != 3 {
					t.Errorf("problem on line %d, want only line 3: %s", p.Line, p.Error())
				}
				if p.Hint == "" {
					t.Errorf("problem without a hint: %s", p.Error())
				}
			}
			for j, w := range tt.want {
				var found *Problem
				for k := range all {
					p := &all[k]
					if p.Column == w.column && strings.Contains(p.Message, w.substr) && p.Severity == w.severity {
						found = p
						break
					}
				}
				if found == nil {
					t.Fatalf("want %s on line 3, column %q, message containing %q; got:%s", w.severity, w.column, w.substr, problemStrings(all))
				}
				if j == 0 && tt.hint != "" && !strings.Contains(found.Hint, tt.hint) {
					t.Errorf("hint = %q, want it to contain %q", found.Hint, tt.hint)
				}
			}
			if s.Rows != 2 {
				t.Errorf("Rows = %d, want 2", s.Rows)
			}
			wantOK := 1 // the good row
			if len(s.Errors) == 0 {
				wantOK = 2 // only warnings on the bad row
			}
			if got := s.ByKind[KindX509] + s.ByKind[KindSymmetricKey] + s.ByKind[KindGroupKey]; got != wantOK {
				t.Errorf("usable rows = %d, want %d (ByKind %v)", got, wantOK, s.ByKind)
			}
		})
	}
}

// TestValidateUnreadableFile needs a user that file modes apply to.
func TestValidateUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: file modes do not stop reads")
	}
	fx := mustFixture(t)
	dir := t.TempDir()
	mustWrite(t, dir, "k.key", keyPEM(t, fx.devKeys["dev-2"]), 0o000)
	path := writeManifest(t, dir, "m.csv", header, "dev-2,"+filepath.Join(fx.dir, "devices/dev-2.pem")+",k.key,,,")
	s, err := Validate(context.Background(), path, testOptions(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Errors) != 1 || s.Errors[0].Column != colKeyPath || !strings.Contains(s.Errors[0].Message, "permission denied") {
		t.Errorf("got:%s\nwant one key_path permission denied error", problemStrings(s.Errors))
	}
}

// TestValidateAllProblemsAtOnce checks that problems of many rows and many
// columns are reported together, sorted by line, with the cap applied.
func TestValidateAllProblemsAtOnce(t *testing.T) {
	fx := mustFixture(t)
	path := writeManifest(t, fx.dir, "many.csv", header,
		"# a comment line",
		"dev-3,devices/dev-4.pem,devices/dev-3.key,,,", // line 3: CN and key mismatch
		"dev-4,devices/dev-4.pem,devices/dev-4.key,,,", // line 4: good
		"dev-5,,,,,", // line 5: no credentials
		"dev-4,devices/dev-4.pem,devices/dev-4.key,,,",   // line 6: duplicate of line 4
		"dev-2,devices/dev-2.pem,bad/open.key,,,",        // line 7: key mismatch + warning
		"dev-4,devices/dev-4.pem,devices/dev-4.key,,,",   // line 8: duplicate again
		"dev-1,devices/dev-1-full.pem,devices/dev-1.key", // line 9: field count
	)
	tests := []struct {
		max           int
		wantLines     []int
		wantTruncated int
	}{
		{max: 0, wantLines: []int{3, 3, 5, 6, 7, 8, 9}},
		{max: 3, wantLines: []int{3, 3, 5}, wantTruncated: 4},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("max=", tt.max), func(t *testing.T) {
			s, err := Validate(context.Background(), path, testOptions(), tt.max)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, p := range s.Errors {
				got = append(got, p.Line)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantLines) {
				t.Errorf("error lines = %v, want %v; errors:%s", got, tt.wantLines, problemStrings(s.Errors))
			}
			if s.TruncatedErrors != tt.wantTruncated {
				t.Errorf("TruncatedErrors = %d, want %d", s.TruncatedErrors, tt.wantTruncated)
			}
			if len(s.Warnings) != 1 || s.Warnings[0].Line != 7 {
				t.Errorf("warnings:%s\nwant one, on line 7", problemStrings(s.Warnings))
			}
			if s.Rows != 7 {
				t.Errorf("Rows = %d, want 7", s.Rows)
			}
			if s.ByKind[KindX509] != 1 {
				t.Errorf("ByKind[x509] = %d, want 1 (line 4 only)", s.ByKind[KindX509])
			}
			if s.OK() {
				t.Error("OK() = true, want false")
			}
		})
	}
}

// TestValidateDuplicatesExact checks duplicate reporting on a manifest with
// many ids: every repeat names the first row, and nothing else is flagged.
func TestValidateDuplicatesExact(t *testing.T) {
	dir := t.TempDir()
	lines := []string{"registration_id,symmetric_key"}
	const n = 5000
	for i := range n {
		lines = append(lines, fmt.Sprintf("d-%d,MDEyMzQ1Njc4OWFiY2RlZg==", i))
	}
	lines = append(lines, "d-17,MDEyMzQ1Njc4OWFiY2RlZg==", "d-4999,MDEyMzQ1Njc4OWFiY2RlZg==", "d-17,MDEyMzQ1Njc4OWFiY2RlZg==")
	path := writeManifest(t, dir, "m.csv", lines...)
	s, err := Validate(context.Background(), path, testOptions(), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"row 5002 (d-17): registration_id: duplicate registration id (first on row 19)",
		"row 5003 (d-4999): registration_id: duplicate registration id (first on row 5001)",
		"row 5004 (d-17): registration_id: duplicate registration id (first on row 19)",
	}
	if len(s.Errors) != len(want) {
		t.Fatalf("got %d errors, want %d:%s", len(s.Errors), len(want), problemStrings(s.Errors))
	}
	for i, p := range s.Errors {
		if got := p.Error(); !strings.HasPrefix(got, want[i]) {
			t.Errorf("error %d = %q, want prefix %q", i, got, want[i])
		}
	}
	if got := s.ByKind[KindSymmetricKey]; got != n {
		t.Errorf("ByKind[symmetric-key] = %d, want %d", got, n)
	}
}

func TestValidateErrors(t *testing.T) {
	dir := t.TempDir()
	bad := writeManifest(t, dir, "bad.csv", "registration_id,key_path")
	good := writeManifest(t, dir, "good.csv", "registration_id,symmetric_key", "d-1,MDEyMzQ1Njc4OWFiY2RlZg==")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name  string
		ctx   context.Context
		path  string
		check func(error) bool
	}{
		{"missing manifest", context.Background(), filepath.Join(dir, "nope.csv"), func(err error) bool { return errors.Is(err, os.ErrNotExist) }},
		{"directory", context.Background(), dir, func(err error) bool { return err != nil && strings.Contains(err.Error(), "is a directory") }},
		{"bad header", context.Background(), bad, func(err error) bool { var he *HeaderError; return errors.As(err, &he) }},
		{"canceled", canceled, good, func(err error) bool { return errors.Is(err, context.Canceled) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Validate(tt.ctx, tt.path, testOptions(), 10)
			if !tt.check(err) || s != nil {
				t.Errorf("Validate = %v, %v; want nil and a matching error", s, err)
			}
		})
	}
}

// TestIDHashesRepeated checks the chunk merge: repeats within a chunk, across
// chunks and in the last partial chunk are found, and nothing else.
func TestIDHashesRepeated(t *testing.T) {
	h := idHashes{seed: maphash.MakeSeed()}
	const n = 3*idHashChunk + 100
	for i := range n {
		h.add(fmt.Sprint("id-", i))
	}
	repeats := []string{"id-5", "id-7", fmt.Sprint("id-", 2*idHashChunk+1), fmt.Sprint("id-", n-1)}
	for _, id := range repeats {
		h.add(id)
	}
	h.add("id-5") // a third time
	got := h.repeated()
	if len(got) != len(repeats) {
		t.Errorf("got %d repeated hashes, want %d", len(got), len(repeats))
	}
	for _, id := range repeats {
		if _, ok := got[maphash.String(h.seed, id)]; !ok {
			t.Errorf("%s not reported as repeated", id)
		}
	}
	if got := (&idHashes{}).repeated(); got != nil {
		t.Errorf("empty set: repeated = %v, want nil", got)
	}
}

package certs

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkKeyFile fails unless path is a mode-0600 PKCS#8 key matching want.
func checkKeyFile(t *testing.T, path string, want crypto.PublicKey) {
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
	if block, _ := pem.Decode(data); block == nil || block.Type != "PRIVATE KEY" {
		t.Errorf("%s does not start with a PKCS#8 PRIVATE KEY block", path)
	}
	key, err := ParseKeyPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !publicKeysEqual(key.Public(), want) {
		t.Errorf("%s holds a different key", path)
	}
}

// readCerts parses the certificates in path.
func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}

// listDir returns the names in dir, sorted.
func listDir(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

func TestWriteCAAndLeaf(t *testing.T) {
	dir := t.TempDir()
	root := mustRoot(t, Options{})
	inter := mustIntermediate(t, root, Options{})
	leaf, err := inter.NewDevice("dev-7", Options{})
	if err != nil {
		t.Fatal(err)
	}

	rp, err := WriteCA(filepath.Join(dir, "ca"), root, "root", false)
	if err != nil {
		t.Fatalf("WriteCA: %v", err)
	}
	checkKeyFile(t, rp.Key, root.Key.Public())
	if got := readCerts(t, rp.Cert); len(got) != 1 || !got[0].Equal(root.Cert) {
		t.Errorf("%s: want the root certificate alone", rp.Cert)
	}
	if fi, err := os.Stat(rp.Cert); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("%s mode = %v (err %v), want 0644", rp.Cert, fi.Mode().Perm(), err)
	}

	lp, err := WriteLeaf(dir, leaf, "dev-7", true, false)
	if err != nil {
		t.Fatalf("WriteLeaf: %v", err)
	}
	if got, want := lp, (Paths{filepath.Join(dir, "dev-7.pem"), filepath.Join(dir, "dev-7.key"), filepath.Join(dir, "dev-7-fullchain.pem")}); got != want {
		t.Errorf("paths = %+v, want %+v", got, want)
	}
	checkKeyFile(t, lp.Key, leaf.Key.Public())
	if got := readCerts(t, lp.Cert); len(got) != 1 || !got[0].Equal(leaf.Cert) {
		t.Errorf("%s: want the leaf alone", lp.Cert)
	}
	full := readCerts(t, lp.FullChain)
	if len(full) != 2 || !full[0].Equal(leaf.Cert) || !full[1].Equal(inter.Cert) {
		t.Errorf("%s: %d certificates, want leaf then intermediate (no root)", lp.FullChain, len(full))
	}
	if got, want := listDir(t, dir), "ca dev-7-fullchain.pem dev-7.key dev-7.pem"; got != want {
		t.Errorf("files = %q, want %q (no temporary files left)", got, want)
	}
}

func TestWriteRefusesExisting(t *testing.T) {
	root := mustRoot(t, Options{})
	other := mustRoot(t, Options{})
	tests := []struct {
		name     string
		existing string // file created before writing
	}{
		{"cert exists", "root.pem"},
		{"key exists", "root.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			existing := writeTestFile(t, dir, tt.existing, []byte("keep me"))
			_, err := WriteCA(dir, root, "root", false)
			if !errors.Is(err, ErrExists) {
				t.Fatalf("err = %v, want ErrExists", err)
			}
			for _, s := range []string{existing, "use --force"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %q, want it to contain %q", err, s)
				}
			}
			// All or nothing: the other file was not written either.
			if got, want := listDir(t, dir), tt.existing; got != want {
				t.Errorf("files = %q, want only %q", got, want)
			}
			if data, _ := os.ReadFile(existing); string(data) != "keep me" {
				t.Errorf("%s was overwritten without force", existing)
			}

			// With force both files are replaced.
			if _, err := WriteCA(dir, other, "root", true); err != nil {
				t.Fatalf("WriteCA with force: %v", err)
			}
			checkKeyFile(t, filepath.Join(dir, "root.key"), other.Key.Public())
			if got := readCerts(t, filepath.Join(dir, "root.pem")); !got[0].Equal(other.Cert) {
				t.Errorf("root.pem not replaced with force")
			}
		})
	}
}

func TestWriteCertFile(t *testing.T) {
	dir := t.TempDir()
	root := mustRoot(t, Options{})
	path := filepath.Join(dir, "sub", "v.pem")
	if err := WriteCertFile(path, false, root.Cert); err != nil {
		t.Fatalf("WriteCertFile: %v", err)
	}
	if got := readCerts(t, path); len(got) != 1 || !got[0].Equal(root.Cert) {
		t.Errorf("%s does not hold the certificate", path)
	}
	if err := WriteCertFile(path, false, root.Cert); !errors.Is(err, ErrExists) {
		t.Errorf("second write without force: err = %v, want ErrExists", err)
	}
	if err := WriteCertFile(path, true, root.Cert); err != nil {
		t.Errorf("second write with force: %v", err)
	}
}

func TestWriteWhereDirIsAFile(t *testing.T) {
	dir := t.TempDir()
	notDir := writeTestFile(t, dir, "plain", []byte("x"))
	_, err := WriteCA(filepath.Join(notDir, "ca"), mustRoot(t, Options{}), "root", false)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(notDir, "ca", "root")) {
		t.Errorf("err = %v, want a write error naming the file", err)
	}
}

func TestWriteSecretFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret.json")
	if err := WriteSecretFile(path, []byte("one"), false); err != nil {
		t.Fatal(err)
	}
	if err := WriteSecretFile(path, []byte("two"), false); !errors.Is(err, ErrExists) {
		t.Errorf("second write without force: %v, want ErrExists", err)
	}
	if err := WriteSecretStream(path, true, func(w io.Writer) error { _, err := io.WriteString(w, "three"); return err }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("mode = %04o, want 0600", got)
	}
	if b, _ := os.ReadFile(path); string(b) != "three" {
		t.Errorf("content = %q, want three", b)
	}
	failing := errors.New("fill failed")
	if err := WriteSecretStream(path, true, func(io.Writer) error { return failing }); !errors.Is(err, failing) {
		t.Errorf("failed fill: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "three" {
		t.Errorf("a failed fill changed the file: %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the folder, want 1 (no temporary file left)", len(entries))
	}
}

package certs

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mustOpenSSL returns the openssl binary or skips the test.
func mustOpenSSL(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not on PATH: skipping the interoperability check (crypto/x509 checks still run)")
	}
	return path
}

// openssl runs the openssl command and returns its combined output.
func openssl(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

// TestOpenSSLVerifiesFleet checks the files with an independent
// implementation: openssl verifies each chain for client authentication and
// reads each PKCS#8 key, whose public half must equal the certificate's.
func TestOpenSSLVerifiesFleet(t *testing.T) {
	bin := mustOpenSSL(t)
	for _, kt := range KeyTypes {
		for _, chain := range []string{ChainIntermediate, ChainRoot} {
			t.Run(string(kt)+"/"+chain, func(t *testing.T) {
				dir := t.TempDir()
				fl, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 2, KeyType: kt, Chain: chain})
				if err != nil {
					t.Fatal(err)
				}
				dev := filepath.Join(dir, "devices", "dev-00002.pem")
				args := []string{"verify", "-purpose", "sslclient", "-CAfile", fl.RootCertPath}
				if fl.IntermediateCertPath != "" {
					args = append(args, "-untrusted", fl.IntermediateCertPath)
				}
				out, err := openssl(t, bin, append(args, dev)...)
				if err != nil || !strings.Contains(out, ": OK") {
					t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
				}

				// Without the intermediate the chain must not verify: the
				// device file holds the leaf alone.
				if fl.IntermediateCertPath != "" {
					if out, err := openssl(t, bin, "verify", "-CAfile", fl.RootCertPath, dev); err == nil {
						t.Errorf("openssl verify without -untrusted succeeded, want failure:\n%s", out)
					}
				}

				keyPub, err := openssl(t, bin, "pkey", "-in", filepath.Join(dir, "devices", "dev-00002.key"), "-pubout")
				if err != nil {
					t.Fatalf("openssl pkey: %v\n%s", err, keyPub)
				}
				certPub, err := openssl(t, bin, "x509", "-in", dev, "-noout", "-pubkey")
				if err != nil {
					t.Fatalf("openssl x509: %v\n%s", err, certPub)
				}
				if keyPub != certPub {
					t.Errorf("openssl: key file's public key differs from the certificate's")
				}
				subj, err := openssl(t, bin, "x509", "-in", dev, "-noout", "-subject", "-nameopt", "RFC2253")
				if err != nil || strings.TrimSpace(subj) != "subject=CN=dev-00002" {
					t.Errorf("openssl subject = %q (err %v), want subject=CN=dev-00002", subj, err)
				}
			})
		}
	}
}

// TestOpenSSLKeysLoad checks that keys openssl writes in its traditional
// formats load, and that a root made from one issues verifiable devices.
func TestOpenSSLKeysLoad(t *testing.T) {
	bin := mustOpenSSL(t)
	dir := t.TempDir()
	tests := []struct {
		name    string
		gen     []string // openssl arguments writing KEY
		wantErr string   // LoadCA error wanted; "" for success
	}{
		{"SEC1 EC with parameters", []string{"ecparam", "-name", "prime256v1", "-genkey", "-out", "KEY"}, ""},
		{"PKCS#1 RSA", []string{"genrsa", "-traditional", "-out", "KEY", "2048"}, ""},
		{"PKCS#8 Ed25519", []string{"genpkey", "-algorithm", "ed25519", "-out", "KEY"}, ""},
		{"encrypted PKCS#8", []string{"genpkey", "-algorithm", "ed25519", "-aes256", "-pass", "pass:test", "-out", "KEY"},
			"encrypted private keys are not supported: decrypt it with openssl pkey"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keyPath := filepath.Join(dir, fmt.Sprintf("k%d.key", i))
			args := make([]string, len(tt.gen))
			for j, a := range tt.gen {
				args[j] = strings.ReplaceAll(a, "KEY", keyPath)
			}
			if out, err := openssl(t, bin, args...); err != nil {
				t.Skipf("this openssl cannot run %q: %v\n%s", strings.Join(args, " "), err, out)
			}
			certPath := filepath.Join(dir, fmt.Sprintf("c%d.pem", i))
			if out, err := openssl(t, bin, "req", "-x509", "-new", "-key", keyPath, "-passin", "pass:test", "-subj", "/CN=OpenSSL Root",
				"-days", "2", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
				"-out", certPath); err != nil {
				t.Fatalf("openssl req: %v\n%s", err, out)
			}
			ca, err := LoadCA(certPath, keyPath)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), keyPath) {
					t.Fatalf("LoadCA: err = %v, want one naming %s and containing %q", err, keyPath, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			leaf, err := ca.NewDevice("dev-9", Options{})
			if err != nil {
				t.Fatal(err)
			}
			devPath := filepath.Join(dir, fmt.Sprintf("d%d.pem", i))
			if err := WriteCertFile(devPath, false, leaf.Cert); err != nil {
				t.Fatal(err)
			}
			if out, err := openssl(t, bin, "verify", "-purpose", "sslclient", "-CAfile", certPath, devPath); err != nil || !strings.Contains(out, ": OK") {
				t.Errorf("openssl verify: %v\n%s", err, out)
			}
		})
	}
}

package certs

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyPEMRoundTrip(t *testing.T) {
	for _, kt := range KeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			key, err := generateKey(kt)
			if err != nil {
				t.Fatal(err)
			}
			data, err := KeyPEM(key)
			if err != nil {
				t.Fatalf("KeyPEM: %v", err)
			}
			if block, _ := pem.Decode(data); block == nil || block.Type != "PRIVATE KEY" {
				t.Fatalf("KeyPEM wrote %q, want a PKCS#8 PRIVATE KEY block", firstLine(data))
			}
			got, err := ParseKeyPEM(data)
			if err != nil {
				t.Fatalf("ParseKeyPEM: %v", err)
			}
			if !publicKeysEqual(got.Public(), key.Public()) {
				t.Errorf("parsed key differs from the original")
			}
		})
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

func TestParseKeyPEMFormats(t *testing.T) {
	rsaKey, err := generateKey(RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := generateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PrivateKey(rsaKey.(*rsa.PrivateKey))
	enc := func(typ string, der []byte, headers map[string]string) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der, Headers: headers})
	}
	ecParams := enc("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, nil)

	tests := []struct {
		name    string
		data    []byte
		want    any // public key wanted, nil when an error is wanted
		wantErr string
	}{
		{"PKCS#1 RSA", enc("RSA PRIVATE KEY", pkcs1, nil), rsaKey.Public(), ""},
		{"SEC1 EC", enc("EC PRIVATE KEY", sec1, nil), ecKey.Public(), ""},
		{"SEC1 after EC PARAMETERS", append(ecParams, enc("EC PRIVATE KEY", sec1, nil)...), ecKey.Public(), ""},
		{"PKCS#8 encrypted", enc("ENCRYPTED PRIVATE KEY", []byte{1, 2, 3}, nil), nil, "encrypted private keys are not supported: decrypt it with openssl pkey"},
		{"legacy encrypted PEM", enc("RSA PRIVATE KEY", []byte{1, 2, 3}, map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}), nil, "encrypted private keys are not supported"},
		{"certificate only", CertPEM(mustRoot(t, Options{}).Cert), nil, "no PEM private key block"},
		{"not PEM", []byte("hello"), nil, "no PEM private key block"},
		{"corrupt PKCS#8", enc("PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00}, nil), nil, "parse PRIVATE KEY block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKeyPEM(tt.data)
			if tt.want == nil {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKeyPEM: %v", err)
			}
			if !publicKeysEqual(got.Public(), tt.want) {
				t.Errorf("parsed key's public key differs from the original")
			}
		})
	}
}

func TestParseCertsPEM(t *testing.T) {
	root := mustRoot(t, Options{})
	inter := mustIntermediate(t, root, Options{})
	keyPEM, err := KeyPEM(inter.Key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCertsPEM(append(append(CertPEM(inter.Cert), keyPEM...), CertPEM(root.Cert)...))
	if err != nil {
		t.Fatalf("ParseCertsPEM: %v", err)
	}
	if len(got) != 2 || !got[0].Equal(inter.Cert) || !got[1].Equal(root.Cert) {
		t.Errorf("ParseCertsPEM returned %d certificates, want intermediate then root", len(got))
	}
	for _, tt := range []struct {
		name, data, wantErr string
	}{
		{"empty", "", "no PEM CERTIFICATE block"},
		{"key only", string(keyPEM), "no PEM CERTIFICATE block"},
		{"corrupt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "PEM block 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCertsPEM([]byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// writeTestFile writes data to dir/name and returns the path.
func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	root := mustRoot(t, Options{})
	inter := mustIntermediate(t, root, Options{})
	leaf, err := inter.NewDevice("dev-1", Options{})
	if err != nil {
		t.Fatal(err)
	}
	rootKey := mustKeyFile(t, dir, "root.key", root)
	interKey := mustKeyFile(t, dir, "inter.key", inter)
	leafKey := mustKeyFile(t, dir, "leaf.key", &CA{Key: leaf.Key})
	rootPEM := writeTestFile(t, dir, "root.pem", CertPEM(root.Cert))
	interPEM := writeTestFile(t, dir, "inter.pem", CertPEM(inter.Cert))
	interChain := writeTestFile(t, dir, "inter-chain.pem", CertPEM(inter.Cert, root.Cert))
	leafPEM := writeTestFile(t, dir, "leaf.pem", CertPEM(leaf.Cert))
	mid := mustSubCA(t, root, "Mid CA")
	deep, err := mid.NewIntermediate("Deep Intermediate", Options{})
	if err != nil {
		t.Fatal(err)
	}
	deepChain := writeTestFile(t, dir, "deep-chain.pem", CertPEM(deep.Cert, mid.Cert, root.Cert))
	deepKey := mustKeyFile(t, dir, "deep.key", deep)
	garbage := writeTestFile(t, dir, "garbage.pem", []byte("not a certificate"))
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name        string
		cert, key   string
		wantCN      string
		wantParents int
		wantErr     []string // substrings of the error
	}{
		{"root", rootPEM, rootKey, "Test Root", 0, nil},
		{"intermediate", interPEM, interKey, "Test Intermediate", 0, nil},
		{"intermediate with root in file", interChain, interKey, "Test Intermediate", 0, nil},
		{"second-level intermediate with its chain", deepChain, deepKey, "Deep Intermediate", 1, nil},
		{"key does not match", rootPEM, interKey, "", 0, []string{"does not match", interKey, rootPEM}},
		{"not a CA", leafPEM, leafKey, "", 0, []string{"not a CA certificate", leafPEM}},
		{"missing cert", missing, rootKey, "", 0, []string{"missing.pem"}},
		{"missing key", rootPEM, filepath.Join(dir, "nokey.key"), "", 0, []string{"nokey.key"}},
		{"garbage cert", garbage, rootKey, "", 0, []string{garbage, "no PEM CERTIFICATE"}},
		{"cert as key", rootPEM, rootPEM, "", 0, []string{rootPEM, "no PEM private key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, err := LoadCA(tt.cert, tt.key)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("LoadCA: got nil error, want one containing %q", tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("err = %q, want it to contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			if got := ca.Cert.Subject.CommonName; got != tt.wantCN {
				t.Errorf("CN = %q, want %q", got, tt.wantCN)
			}
			if got := len(ca.Parents); got != tt.wantParents {
				t.Errorf("len(Parents) = %d, want %d", got, tt.wantParents)
			}
			// The loaded CA must be able to issue a verifiable device.
			leaf, err := ca.NewDevice("dev-2", Options{})
			if err != nil {
				t.Fatalf("NewDevice from loaded CA: %v", err)
			}
			verifyLeaf(t, root, leaf, x509.ExtKeyUsageClientAuth)
		})
	}
}

// mustKeyFile writes ca's key as PKCS#8 PEM to dir/name.
func mustKeyFile(t *testing.T, dir, name string, ca *CA) string {
	t.Helper()
	data, err := KeyPEM(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return writeTestFile(t, dir, name, data)
}

package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"testing"
	"time"
)

// mustRoot returns a new root CA or fails the test.
func mustRoot(tb testing.TB, opts Options) *CA {
	tb.Helper()
	ca, err := NewRoot("Test Root", opts)
	if err != nil {
		tb.Fatalf("NewRoot: %v", err)
	}
	return ca
}

// mustIntermediate returns a new intermediate under root or fails the test.
func mustIntermediate(tb testing.TB, root *CA, opts Options) *CA {
	tb.Helper()
	ca, err := root.NewIntermediate("Test Intermediate", opts)
	if err != nil {
		tb.Fatalf("NewIntermediate: %v", err)
	}
	return ca
}

// verifyLeaf verifies leaf against root using leaf.Chain as intermediates.
func verifyLeaf(t *testing.T, root *CA, leaf *Leaf, usage x509.ExtKeyUsage) [][]*x509.Certificate {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	inter := x509.NewCertPool()
	for _, c := range leaf.Chain {
		inter.AddCert(c)
	}
	chains, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		t.Fatalf("verify %q: %v", leaf.Cert.Subject.CommonName, err)
	}
	return chains
}

func TestDeviceChainVerifies(t *testing.T) {
	for _, kt := range KeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			opts := Options{KeyType: kt}
			root := mustRoot(t, opts)
			inter := mustIntermediate(t, root, opts)
			for _, tc := range []struct {
				name      string
				ca        *CA
				wantChain int
			}{
				{"by root", root, 0},
				{"by intermediate", inter, 1},
			} {
				t.Run(tc.name, func(t *testing.T) {
					leaf, err := tc.ca.NewDevice("dev-00001", opts)
					if err != nil {
						t.Fatalf("NewDevice: %v", err)
					}
					if got, want := leaf.Cert.Subject.CommonName, "dev-00001"; got != want {
						t.Errorf("CN = %q, want %q", got, want)
					}
					if got := len(leaf.Chain); got != tc.wantChain {
						t.Errorf("len(Chain) = %d, want %d", got, tc.wantChain)
					}
					chains := verifyLeaf(t, root, leaf, x509.ExtKeyUsageClientAuth)
					if got, want := len(chains[0]), tc.wantChain+2; got != want {
						t.Errorf("verified chain length = %d, want %d", got, want)
					}
					if !publicKeysEqual(leaf.Key.Public(), leaf.Cert.PublicKey) {
						t.Errorf("leaf key does not match certificate")
					}
					if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: pool(root.Cert), Intermediates: pool(leaf.Chain...)}); err == nil {
						t.Errorf("device certificate verified for server auth; want client auth only")
					}
				})
			}
		})
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestDefaults(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := Options{Now: func() time.Time { return now }}
	root := mustRoot(t, opts)
	leaf, err := root.NewDevice("d1", opts)
	if err != nil {
		t.Fatalf("NewDevice: %v", err)
	}
	tests := []struct {
		name      string
		got, want time.Time
	}{
		{"root NotBefore", root.Cert.NotBefore, now.Add(-5 * time.Minute)},
		{"root NotAfter", root.Cert.NotAfter, now.Add(DefaultCAValidity)},
		{"leaf NotBefore", leaf.Cert.NotBefore, now.Add(-5 * time.Minute)},
		{"leaf NotAfter", leaf.Cert.NotAfter, now.Add(DefaultLeafValidity)},
	}
	for _, tt := range tests {
		if !tt.got.Equal(tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if got := root.Cert.SerialNumber.BitLen(); got < 64 || got > 128 {
		t.Errorf("serial has %d bits, want a random 128-bit number", got)
	}
	if root.Cert.SerialNumber.Cmp(leaf.Cert.SerialNumber) == 0 {
		t.Errorf("root and leaf share serial %v", root.Cert.SerialNumber)
	}
	if k, ok := leaf.Key.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("default leaf key is %T, want *ecdsa.PrivateKey on P-256", leaf.Key)
	}
}

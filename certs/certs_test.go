package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"strings"
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

// mustSubCA returns a CA under parent without a path length limit, so it
// can issue further intermediates: a three-level chain for chain tests.
func mustSubCA(tb testing.TB, parent *CA, cn string) *CA {
	tb.Helper()
	key, err := generateKey(ECDSAP256)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl, err := template(cn, Options{}, DefaultCAValidity)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.MaxPathLen = true, true, -1
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	cert, err := sign(tmpl, parent.Cert, key.Public(), parent.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, Parents: parent.chain()}
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

func TestIntermediateChain(t *testing.T) {
	root := mustRoot(t, Options{})
	inter := mustIntermediate(t, root, Options{})
	if got := len(inter.Parents); got != 0 {
		t.Errorf("intermediate under root: len(Parents) = %d, want 0 (the root is excluded)", got)
	}
	if !inter.Cert.IsCA || !inter.Cert.MaxPathLenZero || inter.Cert.MaxPathLen != 0 {
		t.Errorf("intermediate: IsCA=%v MaxPathLen=%d MaxPathLenZero=%v, want CA with path length 0",
			inter.Cert.IsCA, inter.Cert.MaxPathLen, inter.Cert.MaxPathLenZero)
	}
	if got, want := inter.Cert.KeyUsage&x509.KeyUsageCertSign, x509.KeyUsageCertSign; got != want {
		t.Errorf("intermediate key usage lacks CertSign")
	}
	if _, err := inter.NewIntermediate("too deep", Options{}); err == nil {
		t.Errorf("NewIntermediate under a path-length-0 CA: got nil error, want a refusal")
	}
	if !isSelfSigned(root.Cert) || isSelfSigned(inter.Cert) {
		t.Errorf("isSelfSigned(root)=%v isSelfSigned(intermediate)=%v, want true, false", isSelfSigned(root.Cert), isSelfSigned(inter.Cert))
	}
}

func TestThreeLevelChain(t *testing.T) {
	root := mustRoot(t, Options{})
	mid := mustSubCA(t, root, "Mid CA")
	inter, err := mid.NewIntermediate("Issuing CA", Options{})
	if err != nil {
		t.Fatalf("NewIntermediate under an unconstrained intermediate: %v", err)
	}
	if got := len(inter.Parents); got != 1 || !inter.Parents[0].Equal(mid.Cert) {
		t.Fatalf("Parents = %d certificates, want [Mid CA]", got)
	}
	leaf, err := inter.NewDevice("dev-3", Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range leaf.Chain {
		names = append(names, c.Subject.CommonName)
	}
	if got, want := strings.Join(names, ","), "Issuing CA,Mid CA"; got != want {
		t.Errorf("Chain = %s, want %s", got, want)
	}
	chains := verifyLeaf(t, root, leaf, x509.ExtKeyUsageClientAuth)
	if got := len(chains[0]); got != 4 {
		t.Errorf("verified chain length = %d, want 4", got)
	}
}

func TestValidityCappedAtIssuer(t *testing.T) {
	root := mustRoot(t, Options{Validity: 48 * time.Hour})
	leaf, err := root.NewDevice("d1", Options{Validity: 1000 * time.Hour})
	if err != nil {
		t.Fatalf("NewDevice: %v", err)
	}
	if got, want := leaf.Cert.NotAfter, root.Cert.NotAfter; !got.Equal(want) {
		t.Errorf("leaf NotAfter = %v, want the root's %v", got, want)
	}
}

func TestVerificationCert(t *testing.T) {
	root := mustRoot(t, Options{})
	inter := mustIntermediate(t, root, Options{})
	const code = "5C6D8F1A2B3E4D5C6B7A8F9E0D1C2B3A4F5E6D7C8B9A0F1E"
	for _, ca := range []*CA{root, inter} {
		t.Run(ca.Cert.Subject.CommonName, func(t *testing.T) {
			leaf, err := ca.NewVerification(code, Options{})
			if err != nil {
				t.Fatalf("NewVerification: %v", err)
			}
			if got := leaf.Cert.Subject.CommonName; got != code {
				t.Errorf("CN = %q, want %q", got, code)
			}
			// Proof of possession: the certificate is signed by ca.Key.
			if err := leaf.Cert.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("verification certificate not signed by %q: %v", ca.Cert.Subject.CommonName, err)
			}
			verifyLeaf(t, root, leaf, x509.ExtKeyUsageAny)
		})
	}
}

func TestBadInputs(t *testing.T) {
	root := mustRoot(t, Options{})
	tests := []struct {
		name    string
		do      func() error
		wantErr string
	}{
		{"root empty CN", func() error { _, err := NewRoot(" ", Options{}); return err }, "common name is empty"},
		{"root unknown key type", func() error { _, err := NewRoot("r", Options{KeyType: "dsa"}); return err }, `unknown key type "dsa"`},
		{"root negative validity", func() error { _, err := NewRoot("r", Options{Validity: -time.Hour}); return err }, "negative"},
		{"intermediate empty CN", func() error { _, err := root.NewIntermediate("", Options{}); return err }, "common name is empty"},
		{"device upper case", func() error { _, err := root.NewDevice("Dev-1", Options{}); return err }, "upper-case"},
		{"device too long", func() error { _, err := root.NewDevice(strings.Repeat("a", 65), Options{}); return err }, "limited to 64"},
		{"device empty", func() error { _, err := root.NewDevice("", Options{}); return err }, "empty"},
		{"device unknown key type", func() error { _, err := root.NewDevice("d1", Options{KeyType: "p384"}); return err }, "unknown key type"},
		{"verification empty", func() error { _, err := root.NewVerification("", Options{}); return err }, "empty"},
		{"verification too long", func() error { _, err := root.NewVerification(strings.Repeat("A", 65), Options{}); return err }, "at most 64"},
		{"verification control char", func() error { _, err := root.NewVerification("AB\nCD", Options{}); return err }, "non-printable"},
		{"server no hosts", func() error { _, err := root.NewServer(nil, Options{}); return err }, "no hosts"},
		{"server empty host", func() error { _, err := root.NewServer([]string{"localhost", ""}, Options{}); return err }, "empty host"},
		{"CA without key", func() error { _, err := (&CA{Cert: root.Cert}).NewDevice("d1", Options{}); return err }, "no certificate or key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestMutualTLS runs a real handshake on loopback: the server presents a
// NewServer certificate, the client a device certificate with its chain, and
// the server requires and verifies it against the root.
func TestMutualTLS(t *testing.T) {
	for _, kt := range KeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			opts := Options{KeyType: kt}
			root := mustRoot(t, opts)
			inter := mustIntermediate(t, root, opts)
			server, err := root.NewServer([]string{"127.0.0.1", "localhost"}, opts)
			if err != nil {
				t.Fatalf("NewServer: %v", err)
			}
			device, err := inter.NewDevice("dev-00042", opts)
			if err != nil {
				t.Fatalf("NewDevice: %v", err)
			}

			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
				Certificates: []tls.Certificate{server.TLSCertificate()},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool(root.Cert),
			})
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			t.Cleanup(func() { ln.Close() })
			gotCN := make(chan string, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					gotCN <- "accept: " + err.Error()
					return
				}
				defer conn.Close()
				tc := conn.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					gotCN <- "handshake: " + err.Error()
					return
				}
				gotCN <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
			}()

			conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
				RootCAs:      pool(root.Cert),
				Certificates: []tls.Certificate{device.TLSCertificate()},
			})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			if err := conn.Handshake(); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if got, want := <-gotCN, "dev-00042"; got != want {
				t.Errorf("server saw client CN %q, want %q", got, want)
			}
		})
	}
}

func TestNewServerNames(t *testing.T) {
	root := mustRoot(t, Options{})
	leaf, err := root.NewServer([]string{"localhost", "127.0.0.1", "::1", "sim.example.test"}, Options{})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if got, want := strings.Join(leaf.Cert.DNSNames, ","), "localhost,sim.example.test"; got != want {
		t.Errorf("DNSNames = %q, want %q", got, want)
	}
	if got := len(leaf.Cert.IPAddresses); got != 2 {
		t.Errorf("len(IPAddresses) = %d, want 2", got)
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := leaf.Cert.VerifyHostname(h); err != nil {
			t.Errorf("VerifyHostname(%q): %v", h, err)
		}
	}
	tc := leaf.TLSCertificate()
	if tc.Leaf != leaf.Cert || len(tc.Certificate) != 1 || tc.PrivateKey != leaf.Key {
		t.Errorf("TLSCertificate() = %d certs, Leaf set %v, key set %v; want 1, true, true", len(tc.Certificate), tc.Leaf == leaf.Cert, tc.PrivateKey == leaf.Key)
	}
}

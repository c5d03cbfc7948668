package manifests

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// loadRow reads the single data row of a manifest with the given header and
// loads it.
func loadRow(t *testing.T, baseDir, hdr, line string, opts Options) (*Device, []Problem) {
	t.Helper()
	r, err := NewReader(strings.NewReader(hdr+"\n"+line+"\n"), baseDir)
	if err != nil {
		t.Fatal(err)
	}
	row, err := r.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return r.Load(row, opts)
}

// TestLoadX509 checks the certificate chains a device ends up presenting,
// for each way a manifest can supply them.
func TestLoadX509(t *testing.T) {
	fx := mustFixture(t)
	subdir := filepath.Join(fx.dir, "manifests")
	tests := []struct {
		name      string
		baseDir   string
		row       string
		wantChain []*x509.Certificate
	}{
		{"leaf only", fx.dir, "dev-1,devices/dev-1.pem,devices/dev-1.key,,,", []*x509.Certificate{fx.leaf}},
		{"full-chain cert_path", fx.dir, "dev-1,devices/dev-1-full.pem,devices/dev-1.key,,,", []*x509.Certificate{fx.leaf, fx.inter.cert}},
		{"chain_path", fx.dir, "dev-1,devices/dev-1.pem,devices/dev-1.key,ca/intermediate.pem,,", []*x509.Certificate{fx.leaf, fx.inter.cert}},
		{"chain_path up to the root", fx.dir, "dev-1,devices/dev-1.pem,devices/dev-1.key,ca/chain.pem,,", []*x509.Certificate{fx.leaf, fx.inter.cert, fx.root.cert}},
		{"full chain plus overlapping chain_path", fx.dir, "dev-1,devices/dev-1-full.pem,devices/dev-1.key,ca/chain.pem,,", []*x509.Certificate{fx.leaf, fx.inter.cert, fx.root.cert}},
		{"paths relative to a subfolder", subdir, "dev-1,../devices/dev-1.pem,../devices/dev-1.key,../ca/intermediate.pem,,", []*x509.Certificate{fx.leaf, fx.inter.cert}},
		{"absolute paths", "/nonexistent", fmt.Sprintf("dev-1,%s,%s,,,", filepath.Join(fx.dir, "devices/dev-1.pem"), filepath.Join(fx.dir, "devices/dev-1.key")), []*x509.Certificate{fx.leaf}},
		{"SEC1 key after EC PARAMETERS", fx.dir, "dev-5,devices/dev-5.pem,keys/dev-5.sec1.key,,,", []*x509.Certificate{fx.devCerts["dev-5"]}},
		{"RSA PKCS#1 key", fx.dir, "dev-rsa,keys/dev-rsa.pem,keys/dev-rsa.key,,,", []*x509.Certificate{fx.rsaCert}},
		{"Ed25519 key", fx.dir, "dev-ed,keys/dev-ed.pem,keys/dev-ed.key,,,", []*x509.Certificate{fx.edCert}},
		{"certificate and key in one file", fx.dir, "dev-3,bad/combined.pem,bad/combined.pem,,,", []*x509.Certificate{fx.devCerts["dev-3"]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev, problems := loadRow(t, tt.baseDir, header, tt.row, testOptions())
			if dev == nil || len(problems) > 0 {
				t.Fatalf("Load = %v, problems:%s\nwant a device and no problems", dev, problemStrings(problems))
			}
			leaf := tt.wantChain[0]
			if dev.Kind != KindX509 || dev.Line != 2 || dev.RegistrationID != leaf.Subject.CommonName {
				t.Errorf("device = kind %q line %d id %q, want x509, 2, %q", dev.Kind, dev.Line, dev.RegistrationID, leaf.Subject.CommonName)
			}
			c := dev.Certificate
			if len(c.Certificate) != len(tt.wantChain) {
				t.Fatalf("chain has %d certificates, want %d", len(c.Certificate), len(tt.wantChain))
			}
			for i, want := range tt.wantChain {
				if !bytes.Equal(c.Certificate[i], want.Raw) {
					t.Errorf("certificate %d is not %q", i, want.Subject.CommonName)
				}
			}
			if c.Leaf == nil || !c.Leaf.Equal(leaf) {
				t.Error("Leaf is not the device certificate")
			}
			if !publicKeyEqual(leaf.PublicKey, c.PrivateKey.(crypto.Signer).Public()) {
				t.Error("PrivateKey does not match the leaf")
			}
			sum := sha256.Sum256(leaf.Raw)
			if want := "sha256:" + hex.EncodeToString(sum[:]); dev.Fingerprint != want {
				t.Errorf("Fingerprint = %q, want %q", dev.Fingerprint, want)
			}
			if dev.SymmetricKey != nil || dev.Payload != nil {
				t.Errorf("SymmetricKey/Payload set for an X.509 row without payload")
			}
		})
	}
}

// TestDeviceCertificateHandshake proves a loaded certificate works as is: a
// TLS server that trusts only the root accepts it, so the intermediate from
// chain_path is sent, in order.
func TestDeviceCertificateHandshake(t *testing.T) {
	fx := mustFixture(t)
	dev, problems := loadRow(t, fx.dir, header, "dev-2,devices/dev-2.pem,devices/dev-2.key,ca/intermediate.pem,,", testOptions())
	if dev == nil {
		t.Fatalf("Load problems:%s", problemStrings(problems))
	}
	serverCert, serverKey := issueCert(t, fx.root, "localhost", false, certOpts{
		eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	roots := x509.NewCertPool()
	roots.AddCert(fx.root.cert)
	clock := func() time.Time { return testNow }
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverCert.Raw}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		Time:         clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gotCN := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			gotCN <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			gotCN <- "handshake: " + err.Error()
			return
		}
		gotCN <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{*dev.Certificate},
		RootCAs:      roots,
		Time:         clock,
	})
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer conn.Close()
	conn.Write([]byte("x")) // completes the TLS 1.3 client-auth flight
	if got := <-gotCN; got != "dev-2" {
		t.Errorf("server saw client %q, want dev-2", got)
	}
}

func TestLoadSymmetric(t *testing.T) {
	groupKey := []byte("group-key-of-32-bytes-0123456789")
	individual := []byte("individual-key-0123456789")
	indB64 := base64.StdEncoding.EncodeToString(individual)
	tests := []struct {
		name        string
		row         string
		groupKey    []byte
		wantKind    Kind
		wantKey     []byte
		wantPayload string
	}{
		{"individual", "sensor-1," + indB64 + ",", nil, KindSymmetricKey, individual, ""},
		{"individual wins over the group key", "sensor-1," + indB64 + ",", groupKey, KindSymmetricKey, individual, ""},
		{"group", "sensor-1,,", groupKey, KindGroupKey, dps.DeriveDeviceKeyBytes(groupKey, "sensor-1"), ""},
		{"group, other id", "sensor-2,,", groupKey, KindGroupKey, dps.DeriveDeviceKeyBytes(groupKey, "sensor-2"), ""},
		{"payload", `sensor-3,,"{""line"": 3}"`, groupKey, KindGroupKey, dps.DeriveDeviceKeyBytes(groupKey, "sensor-3"), `{"line": 3}`},
	}
	fingerprints := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions()
			opts.GroupKey = tt.groupKey
			dev, problems := loadRow(t, "", "registration_id,symmetric_key,payload", tt.row, opts)
			if dev == nil || len(problems) > 0 {
				t.Fatalf("Load problems:%s", problemStrings(problems))
			}
			if dev.Kind != tt.wantKind || !bytes.Equal(dev.SymmetricKey, tt.wantKey) {
				t.Errorf("kind %q key %x, want %q %x", dev.Kind, dev.SymmetricKey, tt.wantKind, tt.wantKey)
			}
			if string(dev.Payload) != tt.wantPayload || (tt.wantPayload == "" && dev.Payload != nil) {
				t.Errorf("Payload = %q, want %q", dev.Payload, tt.wantPayload)
			}
			if !regexp.MustCompile(`^key:[0-9a-f]{16}$`).MatchString(dev.Fingerprint) {
				t.Errorf("Fingerprint = %q, want key: and 16 hex digits", dev.Fingerprint)
			}
			h := sha256.Sum256(append([]byte("dps-batch/v1\x00"), tt.wantKey...))
			if want := "key:" + hex.EncodeToString(h[:8]); dev.Fingerprint != want {
				t.Errorf("Fingerprint = %q, want %q", dev.Fingerprint, want)
			}
			fingerprints[dev.Fingerprint+string(dev.Kind)] = string(tt.wantKey)
		})
	}
	if len(fingerprints) != 4 { // the two individual rows share one key
		t.Errorf("got %d distinct fingerprints, want 4", len(fingerprints))
	}
}

// TestNoKeyMaterialInProblems makes rows fail in every way that involves a
// key and checks that no problem text contains any piece of any key.
func TestNoKeyMaterialInProblems(t *testing.T) {
	fx := mustFixture(t)
	dir := t.TempDir()
	key := p256Key(t)
	kp := keyPEM(t, key)
	der, _ := pem.Decode(kp)
	mustWrite(t, dir, "other.key", kp, 0o644)
	mustWrite(t, dir, "enc.key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der.Bytes}), 0o600)
	mustWrite(t, dir, "corrupt.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der.Bytes[:40]}), 0o600)
	mustWrite(t, dir, "rsa-label.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der.Bytes[:len(der.Bytes)-1]}), 0o600)
	mustWrite(t, dir, "key-as-cert.pem", kp, 0o600)

	random := func(n int) string {
		b := make([]byte, n)
		rand.Read(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	sym, short, long := random(32), random(8), random(65)
	badB64 := sym[:10] + "!" + sym[11:]
	groupKey := []byte("the-group-key-0123456789abcdef01")
	derived := dps.DeriveDeviceKeyBytes(groupKey, "dev-9")

	cert := filepath.Join(fx.dir, "devices/dev-1.pem")
	rows := []string{
		"dev-1," + cert + ",other.key,,,",                // mismatch + open-mode warning
		"dev-1," + cert + ",enc.key,,,",                  // encrypted
		"dev-1," + cert + ",corrupt.key,,,",              // unparsable
		"dev-1," + cert + ",rsa-label.key,,,",            // unparsable, other label
		"dev-1,key-as-cert.pem,other.key,,,",             // key in cert_path
		"dev-1," + cert + ",other.key,," + sym + ",",     // both credentials
		"dev-2,,,," + badB64 + ",",                       // bad base64
		"dev-3,,,," + short + ",",                        // too short
		"dev-4,,,," + long + ",",                         // too long
		sym + ",,,,,",                                    // key in the id column
		"dev-5," + sym + ",other.key,,,",                 // key in cert_path column
		"dev-6," + cert + "," + sym + ",,,",              // key in key_path column
		"dev-7," + cert + ",other.key," + sym + ",,",     // key in chain_path column
		"dev-8,,,,," + sym,                               // key in payload column
		"dev-9,,,,,[1]",                                  // group device, bad payload
		sym + ",,,",                                      // key as id in a short row
		"dev-1,,,," + sym + ",",                          // duplicate id
		"dev-1,,,," + sym + "," + strings.Repeat("x", 5), // duplicate id, bad payload
	}
	path := writeManifest(t, dir, "m.csv", append([]string{header}, rows...)...)
	opts := testOptions()
	opts.GroupKey = groupKey
	s, err := Validate(context.Background(), path, opts, 0)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for _, p := range append(s.Errors, s.Warnings...) {
		text.WriteString(p.Error())
		text.WriteString(p.RegistrationID + p.Path + "\n")
	}
	if n := len(s.Errors); n < len(rows) {
		t.Fatalf("got %d errors, want at least one per row (%d):%s", n, len(rows), problemStrings(s.Errors))
	}

	secrets := map[string]string{
		"symmetric key": sym, "bad base64 key": badB64, "short key": short, "long key": long,
		"group key": base64.StdEncoding.EncodeToString(groupKey), "raw group key": string(groupKey),
		"derived key": base64.StdEncoding.EncodeToString(derived), "derived key hex": hex.EncodeToString(derived),
		"key DER hex": hex.EncodeToString(der.Bytes),
	}
	for i, line := range strings.Split(string(kp), "\n") {
		if line != "" && !strings.HasPrefix(line, "-----") {
			secrets[fmt.Sprintf("PEM line %d", i)] = line
		}
	}
	const window = 12 // no 12-character piece of a secret may show
	all := text.String()
	for name, secret := range secrets {
		for i := 0; i+window <= len(secret); i++ {
			if piece := secret[i : i+window]; strings.Contains(all, piece) {
				t.Fatalf("problem text contains part of the %s (%q):\n%s", name, piece, all)
			}
		}
	}
}

// TestLoadConcurrent loads rows sharing one chain file from many goroutines
// (run with -race): the chain cache must be safe and give equal results.
func TestLoadConcurrent(t *testing.T) {
	fx := mustFixture(t)
	r, err := NewReader(strings.NewReader(header+"\n"), fx.dir)
	if err != nil {
		t.Fatal(err)
	}
	rows := []Row{
		{Line: 2, RegistrationID: "dev-1", CertPath: "devices/dev-1.pem", KeyPath: "devices/dev-1.key", ChainPath: "ca/chain.pem"},
		{Line: 3, RegistrationID: "dev-3", CertPath: "bad/other-issuer.pem", KeyPath: "bad/other-issuer.key", ChainPath: "ca/chain.pem"},
	}
	errc := make(chan error, 16)
	for g := range 16 {
		go func() {
			for range 20 {
				row := rows[g%2]
				dev, problems := r.Load(row, testOptions())
				if wantOK := row.Line == 2; (dev != nil) != wantOK {
					errc <- fmt.Errorf("row %d: device %v, problems:%s", row.Line, dev, problemStrings(problems))
					return
				}
			}
			errc <- nil
		}()
	}
	for range 16 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

func TestDecodeKey(t *testing.T) {
	key32 := bytes.Repeat([]byte{0xab}, 32)
	b64 := base64.StdEncoding.EncodeToString(key32)
	tests := []struct {
		in      string
		want    []byte
		wantErr string
	}{
		{b64, key32, ""},
		{"  " + b64 + "\n", key32, ""},
		{base64.StdEncoding.EncodeToString(key32[:16]), key32[:16], ""},
		{base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 64)), bytes.Repeat([]byte{1}, 64), ""},
		{base64.StdEncoding.EncodeToString(key32[:15]), nil, "key is 15 bytes; DPS keys are 16 to 64 bytes"},
		{base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 65)), nil, "key is 65 bytes"},
		{"", nil, "key is 0 bytes"},
		{b64[:20] + "-" + b64[21:], nil, "not valid base64 (bad data at character 21)"},
		{base64.RawStdEncoding.EncodeToString(key32), nil, "not valid base64"},
	}
	for _, tt := range tests {
		got, err := DecodeKey(tt.in)
		switch {
		case tt.wantErr == "" && (err != nil || !bytes.Equal(got, tt.want)):
			t.Errorf("DecodeKey(%q) = %x, %v; want %x", tt.in, got, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("DecodeKey(%q) error = %v, want %q", tt.in, err, tt.wantErr)
		case err != nil && len(tt.in) > 12 && strings.Contains(err.Error(), strings.TrimSpace(tt.in)[:12]):
			t.Errorf("DecodeKey error %q quotes the key", err)
		}
	}
}

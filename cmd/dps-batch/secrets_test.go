package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
)

// secretSet is every form in which a secret could leak: raw bytes, base64,
// hex, PEM text and PEM body lines.
type secretSet struct {
	needles [][]byte
	names   []string
}

// add records s under name in raw, base64 (standard and URL), and hex form.
func (ss *secretSet) add(name string, raw []byte) {
	ss.addText(name+" (raw)", raw)
	ss.addText(name+" (base64)", []byte(base64.StdEncoding.EncodeToString(raw)))
	ss.addText(name+" (base64url)", []byte(base64.RawURLEncoding.EncodeToString(raw)))
	ss.addText(name+" (hex)", []byte(hex.EncodeToString(raw)))
}

// addText records one exact byte string; short ones would match by chance.
func (ss *secretSet) addText(name string, b []byte) {
	if len(b) < 12 {
		return
	}
	ss.needles = append(ss.needles, append([]byte(nil), b...))
	ss.names = append(ss.names, name)
}

// addKeyFile records a PEM private key file: its text, each body line, the
// DER, and for ECDSA keys the private scalar.
func (ss *secretSet) addKeyFile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(path)
	ss.addText(name+" (PEM)", bytes.TrimSpace(b))
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	ss.add(name+" (DER)", block.Bytes)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "-----") {
			ss.addText(name+" (PEM line)", []byte(strings.TrimSpace(line)))
		}
	}
	key, err := certs.ParseKeyPEM(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if ec, ok := key.(*ecdsa.PrivateKey); ok {
		d, err := ec.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		ss.add(name+" (scalar)", d)
	}
}

// addSignature records a SAS signature as sent (URL-encoded), as base64
// and as raw HMAC bytes.
func (ss *secretSet) addSignature(sig string) {
	ss.addText("SAS signature (as sent)", []byte(sig))
	dec, err := url.QueryUnescape(sig)
	if err != nil {
		return
	}
	ss.addText("SAS signature (base64)", []byte(dec))
	if raw, err := base64.StdEncoding.DecodeString(dec); err == nil {
		ss.add("SAS signature", raw)
	}
}

// scan returns a description of every secret found in data.
func (ss *secretSet) scan(where string, data []byte) []string {
	var hits []string
	for i, n := range ss.needles {
		if bytes.Contains(data, n) {
			hits = append(hits, fmt.Sprintf("%s in %s", ss.names[i], where))
		}
	}
	// Whatever the secret, these shapes must never be written.
	for _, shape := range []string{"PRIVATE KEY-----", "SharedAccessSignature sr=", "&sig=", "?sig="} {
		if bytes.Contains(data, []byte(shape)) {
			hits = append(hits, fmt.Sprintf("%q in %s", shape, where))
		}
	}
	return hits
}

// TestNoSecretsWritten runs provision -v (through injected 5xx, lost answers
// and a device whose key DPS rejects, so that error and retry paths log),
// then report (CSV and JSON lines) and status (text and JSON), and scans
// every byte they wrote — stdout, stderr, the ledger and its WAL, the
// report, the simulator's request log — for the fleet's private keys,
// symmetric keys, group key, derived device keys and every SAS signature
// that went over the wire. A key file open to other users gets a warning.
func TestNoSecretsWritten(t *testing.T) {
	f := newChaosFleet(t, fleetSpec{x509Group: 16, x509Individual: 4, symIndividual: 8, symGroup: 8}, func(c *dpssim.Config) {
		c.Faults = dpssim.Faults{Seed: 9, RegisterErrorRate: 0.1, PollErrorRate: 0.05, DropResponseRate: 0.05}
		zero := 0
		c.RetryAfterSeconds = &zero
		c.AssignmentDelay = 0
	})

	// Serve the simulator through a recorder of Authorization headers, so
	// the test knows every SAS signature that was sent.
	var (
		mu   sync.Mutex
		sigs = map[string]bool{}
	)
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := r.Header.Get("Authorization"); h != "" {
			_, after, _ := strings.Cut(h, "sig=")
			sig, _, _ := strings.Cut(after, "&")
			mu.Lock()
			sigs[sig] = true
			mu.Unlock()
		}
		f.sim.ServeHTTP(w, r)
	}))
	ts.TLS = f.sim.TLSConfig(tls.Certificate{})
	ts.StartTLS()
	t.Cleanup(ts.Close)
	caFile := filepath.Join(f.dir, "recorder-ca.pem")
	if err := os.WriteFile(caFile, certs.CertPEM(ts.Certificate()), 0o644); err != nil {
		t.Fatal(err)
	}

	// One symmetric-key device with a key DPS does not have: a 401 to log.
	wrongKey := randomBytes(t, 32)
	b, err := os.ReadFile(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	right := base64.StdEncoding.EncodeToString(f.symKeys["symkey-00001"])
	b = bytes.Replace(b, []byte(right), []byte(base64.StdEncoding.EncodeToString(wrongKey)), 1)
	if err := os.WriteFile(f.manifest, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// One key file readable by others.
	openKey := filepath.Join(f.dir, "pki", "devices", "dev-00007.key")
	if err := os.Chmod(openKey, 0o644); err != nil {
		t.Fatal(err)
	}

	args := f.provisionArgs("-v", "--quiet")
	for i := range args {
		switch args[i] {
		case f.srv.URL:
			args[i] = ts.URL
		case f.caFile:
			args[i] = caFile
		}
	}
	type output struct {
		name string
		data []byte
	}
	var outputs []output
	run := func(args ...string) int {
		code, stdout, stderr := runCmd(t, args...)
		outputs = append(outputs, output{strings.Join(args[:1], " ") + " stdout", []byte(stdout)}, output{args[0] + " stderr", []byte(stderr)})
		return code
	}
	if code := run(args...); code != exitDeviceFails {
		t.Errorf("provision: exit %d, want %d (one device's key is wrong)", code, exitDeviceFails)
	}
	if st := f.sim.Stats(); st.Faults == 0 {
		t.Errorf("no fault was injected: the retry paths were not logged")
	}
	provisionErr := string(outputs[1].data)
	if !strings.Contains(provisionErr, "warning") || !strings.Contains(provisionErr, "dev-00007.key") || !strings.Contains(provisionErr, "0644") {
		t.Errorf("no warning about the key file open to other users:\n%s", provisionErr)
	}
	if !strings.Contains(provisionErr, "level=DEBUG") {
		t.Errorf("-v printed no debug log:\n%s", provisionErr)
	}
	reportFile := filepath.Join(f.dir, "report.csv")
	for _, a := range [][]string{
		{"report", "--ledger", f.ledger, "--out", reportFile},
		{"report", "--ledger", f.ledger, "--format", "jsonl"},
		{"status", "--ledger", f.ledger},
		{"status", "--ledger", f.ledger, "--json"},
	} {
		if code := run(a...); code != exitOK {
			t.Errorf("%v: exit %d", a, code)
		}
	}

	// What must never appear.
	var ss secretSet
	err = filepath.WalkDir(filepath.Join(f.dir, "pki"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".key") {
			ss.addKeyFile(t, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, k := range f.symKeys {
		ss.add("symmetric key of "+id, k)
	}
	ss.add("wrong symmetric key", wrongKey)
	ss.add("group key", f.groupKey)
	for _, id := range f.ids {
		if strings.HasPrefix(id, "sensor-") {
			ss.add("derived key of "+id, dps.DeriveDeviceKeyBytes(f.groupKey, id))
		}
	}
	mu.Lock()
	for sig := range sigs {
		ss.addSignature(sig)
	}
	nSigs := len(sigs)
	mu.Unlock()
	if nSigs == 0 {
		t.Fatal("no SAS signature was recorded")
	}

	// Where it must not appear: every output, and every file the commands
	// wrote (everything in the folder that is not an input).
	outputs = append(outputs, output{"simulator log", []byte(f.simLog.String())})
	inputs := map[string]bool{f.manifest: true, f.groupKeyFile: true, f.caFile: true, caFile: true}
	err = filepath.WalkDir(f.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || inputs[p] || strings.HasPrefix(p, filepath.Join(f.dir, "pki")+string(filepath.Separator)) {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		outputs = append(outputs, output{"file " + filepath.Base(p), b})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var hits []string
	scanned, files := 0, 0
	for _, o := range outputs {
		scanned += len(o.data)
		if strings.HasPrefix(o.name, "file ") {
			files++
		}
		hits = append(hits, ss.scan(o.name, o.data)...)
	}
	if files < 2 {
		t.Errorf("scanned %d written files, want at least the ledger and the report", files)
	}
	for i, h := range hits {
		if i == 20 {
			t.Errorf("... %d secrets found in all", len(hits))
			break
		}
		t.Errorf("secret found: %s", h)
	}
	t.Logf("secrets found: %d, in %d bytes of %d outputs (%d files), checked against %d forms of %d SAS signatures and the fleet's keys",
		len(hits), scanned, len(outputs), files, len(ss.needles), nSigs)
}

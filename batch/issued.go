package batch

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
)

// Certificates DPS issues at registration (api-version 2025-07-01-preview):
// the register PUT carries the device's CSR, and the final operation result
// carries the issued chain, once. The status lookup never returns it. So the
// chain is written to its file durably (write, fsync, rename, fsync the
// folder) before the ledger records the device assigned: after a crash,
// either the file is whole, or the device ends issued-lost, never assigned
// without a certificate.

// reissueHint is the remedy for an issued-lost device.
const reissueHint = "DPS returns an issued certificate only once; run the same provision command with --reissue " +
	"to register the device again with its CSR and get a new certificate (one more billable registration per device)"

// issuing reports whether this device's registration sends a CSR.
func (w *work) issuing() bool { return w.dev != nil && w.dev.CSR != nil }

// issuedOutcome is what became of the certificate of an assigned device
// that sent a CSR.
type issuedOutcome struct {
	cert      ledger.IssuedCert
	recovered bool   // the chain came from the file a previous run wrote, not from this answer
	lost      string // why there is no durable certificate; "" = cert is durable
	halt      error  // the output cannot be written: every next certificate would be lost too
}

// keepIssued writes the chain in rs to the device's issued_cert_path, or,
// when rs carries none, recovers the chain a previous run wrote before it
// died (the file is durable before the ledger records assigned).
func (w *work) keepIssued(rs *dps.DeviceRegistrationResult, kind string) issuedOutcome {
	chain, err := rs.IssuedChain()
	switch {
	case errors.Is(err, dps.ErrNoIssuedChain):
		if cert, ok := w.recoverIssued(); ok {
			return issuedOutcome{cert: cert, recovered: true}
		}
		msg := "DPS assigned the device and issued its certificate, but the answer that carried the chain was not received or not kept " +
			"(the connection failed, or the process stopped before the chain was written)"
		if kind == "lookup" {
			msg += "; the assignment was then learnt from the registration status lookup, which never carries the chain"
		}
		return issuedOutcome{lost: msg}
	case err != nil:
		return issuedOutcome{lost: fmt.Sprintf("DPS assigned the device, but its issued certificate chain is unusable: %v", err)}
	}
	leaf := chain[0]
	if why := w.mismatch(leaf); why != "" {
		return issuedOutcome{lost: "DPS assigned the device, but the certificate it issued " + why}
	}
	if err := writeChain(w.dev.IssuedCertPath, chain); err != nil {
		return issuedOutcome{
			lost: fmt.Sprintf("DPS issued the device's certificate, but it could not be written to %s: %v", w.dev.IssuedCertPath, err),
			halt: fmt.Errorf("cannot write issued certificates: %w; the run stopped so that no more certificates are issued and lost; "+
				"fix the folder (space, permissions), then run the same command with --reissue for the issued-lost devices", err),
		}
	}
	return issuedOutcome{cert: identity(leaf)}
}

// mismatch says why leaf is not the certificate the device asked for, ""
// when it is: CN = registration id and the CSR's public key.
func (w *work) mismatch(leaf *x509.Certificate) string {
	if leaf.Subject.CommonName != w.rec.RegistrationID {
		return fmt.Sprintf("has CN %q, not the registration id", leaf.Subject.CommonName)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(w.dev.CSRPublicKey) {
		return "is not for the public key of the device's CSR"
	}
	return ""
}

// recoverIssued reads the chain a previous run wrote to the device's
// issued_cert_path before it could record the device assigned. The file is
// taken only if its leaf is for this device's CSR key, differs from the
// certificate the ledger already has, is still valid, and was written after
// the register request of this registration.
func (w *work) recoverIssued() (ledger.IssuedCert, bool) {
	path := w.dev.IssuedCertPath
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return ledger.IssuedCert{}, false
	}
	if !w.rec.PutAt.IsZero() && fi.ModTime().Before(w.rec.PutAt.Add(-2*time.Second)) {
		return ledger.IssuedCert{}, false // older than this registration: a previous certificate
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return ledger.IssuedCert{}, false
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return ledger.IssuedCert{}, false
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil || w.mismatch(leaf) != "" || !w.r.now().Before(leaf.NotAfter) {
		return ledger.IssuedCert{}, false
	}
	cert := identity(leaf)
	if cert.Fingerprint == w.rec.Issued.Fingerprint {
		return ledger.IssuedCert{}, false
	}
	return cert, true
}

// identity is what the ledger keeps of an issued certificate.
func identity(leaf *x509.Certificate) ledger.IssuedCert {
	sum := sha256.Sum256(leaf.Raw)
	return ledger.IssuedCert{
		Fingerprint: "sha256:" + hex.EncodeToString(sum[:]),
		Serial:      strings.ToUpper(leaf.SerialNumber.Text(16)),
		NotAfter:    leaf.NotAfter.UTC().Truncate(time.Millisecond),
	}
}

// writeChain writes chain as PEM, leaf first, to path durably: a temporary
// file in the same folder is written and fsynced, then renamed over path,
// then the folder is fsynced, so a crash leaves either the old file or the
// whole new one. Certificates are public: the file is 0644.
func writeChain(path string, chain []*x509.Certificate) error {
	var buf bytes.Buffer
	for _, c := range chain {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			return err
		}
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o644); err != nil && runtime.GOOS != "windows" {
		f.Close()
		return err
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable. Windows cannot open a folder for
// syncing; there, NTFS's rename is journaled.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

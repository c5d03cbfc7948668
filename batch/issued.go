package batch

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
)

// Certificates DPS issues at registration (api-version 2025-07-01-preview):
// the register PUT carries the device's CSR, and the final operation result
// carries the issued chain, once; the status lookup never returns it. So
// the chain is kept in the ledger row as soon as it arrives (certificates
// are public), then written to its file durably (write, fsync, rename,
// fsync the folder), and only then is the device recorded assigned, its
// kept copy dropped. After a crash at any instant the device is either
// assigned with a whole file, or not yet assigned with the chain in the
// ledger (the next run writes the file without asking DPS for anything
// billable), or issued-lost: the answer with the chain never reached the
// ledger.

// reissueHint is the remedy for an issued-lost device.
const reissueHint = "DPS returns an issued certificate only once; run the same provision command with --reissue " +
	"to register the device again with its CSR and get a new certificate (one more billable registration per device)"

// issuing reports whether this run sends this device's CSR.
func (w *work) issuing() bool { return w.dev != nil && w.dev.CSR != nil }

// issuedStep is what became of the certificate of a device DPS assigned
// after a registration that sent a CSR.
type issuedStep int

const (
	issuedWritten issuedStep = iota // the chain's file is durable: record the device assigned
	issuedLost                      // no chain to write: record the device issued-lost
	issuedKept                      // the chain is kept in the ledger, its file not written: the device stays unfinished
)

// keepIssued keeps the chain of an assigned device's certificate: from
// DPS's answer rs (or, when rs carries none, from the ledger, where an
// earlier run kept it), first in the ledger, then in the device's
// issued_cert_path. It runs before the answer is applied to the row, whose
// state is still what it was (the ledger must not say assigned before the
// file is durable). att is the answer's attempt: it is logged with the
// first write that follows, and zeroed here when that write is this one.
// For issuedLost it returns why.
func (w *work) keepIssued(ctx context.Context, rs *dps.DeviceRegistrationResult, att *ledger.Attempt) (issuedStep, string, error) {
	chain, err := rs.IssuedChain()
	switch {
	case errors.Is(err, dps.ErrNoIssuedChain) && w.rec.IssuedChain != "":
		// Kept by an earlier run that stopped before the file was durable.
		if chain, err = parseChain(w.rec.IssuedChain); err != nil {
			return issuedLost, fmt.Sprintf("the issued chain kept in the ledger is unusable: %v", err), nil
		}
	case errors.Is(err, dps.ErrNoIssuedChain):
		msg := "DPS assigned the device and issued its certificate, but the answer that carried the chain was not received or not kept " +
			"(the connection failed, or the process stopped before the chain reached the ledger)"
		if att.Kind == "lookup" {
			msg += "; the assignment was then learnt from the registration status lookup, which never carries the chain"
		}
		return issuedLost, msg, nil
	case err != nil:
		return issuedLost, fmt.Sprintf("DPS assigned the device, but its issued certificate chain is unusable: %v", err), nil
	default:
		// Kept before anything else, even a chain that does not match:
		// it is what DPS issued for this registration.
		if w.issuing() {
			chain, _ = w.leafFirst(chain)
		}
		kept := chainPEM(chain)
		if len(kept) > ledger.MaxIssuedChain {
			return issuedLost, fmt.Sprintf("DPS assigned the device, but its issued chain of %d certificates is too large to keep", len(chain)), nil
		}
		w.rec.IssuedChain = kept
		if err := w.put(ctx, *att); err != nil {
			return issuedKept, "", err
		}
		*att = ledger.Attempt{}
	}
	if !w.issuing() {
		// The request sent a CSR; this run has no manifest CSR for the
		// device (no --issue-certs), so it cannot check or place the file.
		w.rec.ErrorMessage = "the device's registration sent a CSR and DPS's certificate is kept in the ledger, but this run does not issue certificates: its file was not written"
		w.rec.Hint = "run the same command with --issue-certs to write it (nothing is registered again)"
		w.r.warnRepeated("issued-kept-no-flag", "issued certificate kept in the ledger, not written: run with --issue-certs",
			"device", w.rec.RegistrationID)
		return issuedKept, "", nil
	}
	chain, why := w.leafFirst(chain)
	if why != "" {
		return issuedLost, "DPS assigned the device, but the certificate it issued " + why, nil
	}
	if err := writeChain(w.dev.IssuedCertPath, []byte(chainPEM(chain))); err != nil {
		w.rec.ErrorMessage = fmt.Sprintf("DPS issued the device's certificate, but it could not be written to %s: %v", w.dev.IssuedCertPath, err)
		w.rec.Hint = "the certificate is kept in the ledger: fix the folder (space, permissions), then run the same command again to write it (nothing is registered again)"
		w.r.halt(fmt.Errorf("cannot write issued certificates: %w; the run stopped so that no more registrations start; "+
			"the certificates DPS issued are kept in the ledger: fix the folder, then run the same command again to write them", err))
		return issuedKept, "", nil
	}
	w.rec.Issued = identity(chain[0])
	w.rec.IssuedChain = ""
	return issuedWritten, "", nil
}

// leafFirst returns chain with the certificate for the device's CSR key
// first (DPS sends the leaf first; a reordered answer is put right), and
// why it is not the certificate the device asked for ("" when it is: CN =
// registration id and the CSR's public key).
func (w *work) leafFirst(chain []*x509.Certificate) ([]*x509.Certificate, string) {
	at := -1
	for i, c := range chain {
		if pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && pub.Equal(w.dev.CSRPublicKey) {
			at = i
			break
		}
	}
	if at < 0 {
		return chain, "is not for the public key of the device's CSR (the chain is kept in the ledger row)"
	}
	if at > 0 {
		chain = append([]*x509.Certificate{chain[at]}, append(append([]*x509.Certificate{}, chain[:at]...), chain[at+1:]...)...)
	}
	if cn := chain[0].Subject.CommonName; cn != w.rec.RegistrationID {
		return chain, fmt.Sprintf("has CN %q, not the registration id (the chain is kept in the ledger row)", cn)
	}
	return chain, ""
}

// chainPEM encodes certificates as PEM, in order.
func chainPEM(chain []*x509.Certificate) string {
	var b strings.Builder
	for _, c := range chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.String()
}

// parseChain parses a PEM chain.
func parseChain(chain string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(chain)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
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

// writeChain writes a PEM chain to path durably: a temporary file in the
// same folder is written and fsynced, then renamed over path (write-through
// on Windows), then the folder is fsynced, so a crash leaves either the old
// file or the whole new one. Certificates are public: the file is 0644. A
// file at path that holds a private key or a CSR is never replaced.
func writeChain(path string, chain []byte) error {
	if old, err := os.ReadFile(path); err == nil && (bytes.Contains(old, []byte("PRIVATE KEY")) || bytes.Contains(old, []byte("CERTIFICATE REQUEST"))) {
		return fmt.Errorf("%s holds a private key or a CSR, not a certificate: it is not replaced (point issued_cert_path elsewhere)", path)
	}
	dir := filepath.Dir(path)
	if err := mkdirDurable(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o644); err != nil && !isWindows {
		f.Close()
		return err
	}
	if _, err := f.Write(chain); err != nil {
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
	if err := renameDurable(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// mkdirDurable creates dir and its missing parents, fsyncing the folder
// each new one was made in, so a crash cannot lose a folder a durable file
// was written into.
func mkdirDurable(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a folder", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirDurable(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return syncDir(parent)
}

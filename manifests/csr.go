package manifests

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/dps-batch/dps-batch/dps"
)

// Certificate issuance (Options.IssueCerts): the CSR of each row, made from
// its csr_key_path or read from its csr_path, and the file the issued chain
// goes to. The limits are those of the preview API
// (dps.CertificateIssuanceAPIVersion): EC P-384 keys, ECDSA with SHA-384,
// subject CN = registration id.

// DefaultIssuedCertDir is the folder, relative to the manifest's, of the
// issued chains of rows without issued_cert_path: each goes to
// DefaultIssuedCertDir/<registration id>.pem.
const DefaultIssuedCertDir = "issued"

// CSRSignatureAlgorithm is the signature algorithm of the CSRs Load makes
// and the only one it accepts in csr_path files.
const CSRSignatureAlgorithm = x509.ECDSAWithSHA384

// previewKeyHint says how to make a key DPS certificate issuance accepts.
const previewKeyHint = "make an EC P-384 key and CSR with `dps-batch certs csr`, or a key with `openssl ecparam -name secp384r1 -genkey -noout -out KEY`"

// previewCSRHint says how to make a CSR DPS certificate issuance accepts.
const previewCSRHint = "make the CSR from an EC P-384 key, CN = registration id, SHA-384: `dps-batch certs csr`, or `openssl req -new -sha384 -key KEY -subj /CN=ID -out CSR` with a key from `openssl ecparam -name secp384r1 -genkey -noout -out KEY`"

// previewKeyProblem says why pub cannot be used for DPS certificate
// issuance, or returns "" when it can (EC P-384).
func previewKeyProblem(pub crypto.PublicKey) string {
	var kind string
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P384() {
			return ""
		}
		kind = "EC " + k.Curve.Params().Name
	case *rsa.PublicKey:
		kind = "RSA"
	case ed25519.PublicKey:
		kind = "Ed25519"
	default:
		kind = fmt.Sprintf("%T", pub)
	}
	return kind + " keys are not supported by DPS certificate issuance (preview: EC P-384 only)"
}

// csr makes or reads the row's CSR. It returns the CSR (DER) and its
// public key, or nils when there are problems.
func (l *loader) csr(keyDir string) ([]byte, crypto.PublicKey) {
	row := l.row
	switch {
	case row.CSRKeyPath != "" && row.CSRPath != "":
		l.add(colCSRPath, row.CSRPath, "row has both csr_key_path and csr_path",
			"keep one: csr_key_path to make the CSR from the device's key, or csr_path for a CSR made elsewhere")
		l.csrFromKey(row.CSRKeyPath, l.r.resolve(row.CSRKeyPath)) // report its problems too
		l.csrFile()
		return nil, nil
	case row.CSRKeyPath != "":
		return l.csrFromKey(row.CSRKeyPath, l.r.resolve(row.CSRKeyPath))
	case row.CSRPath != "":
		return l.csrFile()
	case keyDir != "":
		if l.idBad {
			return nil, nil // no file name without an id; the id is reported
		}
		written := filepath.Join(keyDir, row.RegistrationID+".key")
		path := written
		if abs, err := filepath.Abs(written); err == nil {
			path = abs
		}
		if l.planKeys {
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return nil, nil // made by the run itself (--generate-csr-keys); a dry run plans it
			}
		}
		return l.csrFromKey(written, path)
	default:
		l.add(colCSRKeyPath, "", "row has no CSR: certificate issuance needs one for every device",
			"give the row csr_key_path (the device's EC P-384 key) or csr_path (its CSR), or make keys for the rows without either with --generate-csr-keys DIR")
		return nil, nil
	}
}

// csrFromKey reads the private key at path (written as in the manifest),
// checks it and makes the row's CSR from it. The key is not kept.
func (l *loader) csrFromKey(written, path string) ([]byte, crypto.PublicKey) {
	data, mode, ok := l.readFile(colCSRKeyPath, written, path)
	if !ok {
		return nil, nil
	}
	l.checkKeyMode(colCSRKeyPath, written, mode)
	key, iss := parseKey(data, false)
	clear(data)
	if iss != nil {
		iss = csrKeyIssue(iss)
		l.add(colCSRKeyPath, written, iss.msg, iss.hint(written))
		return nil, nil
	}
	if msg := previewKeyProblem(key.Public()); msg != "" {
		l.add(colCSRKeyPath, written, msg, previewKeyHint)
		return nil, nil
	}
	if l.errors > 0 || l.idBad {
		return nil, nil // the row is unusable: spare the signature
	}
	tmpl := &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: l.row.RegistrationID},
		SignatureAlgorithm: CSRSignatureAlgorithm,
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		l.add(colCSRKeyPath, written, fmt.Sprintf("cannot make the CSR with this key: %v", err),
			"check the key with: openssl pkey -noout -in "+shellQuote(written))
		return nil, nil
	}
	return der, key.Public()
}

// csrKeyIssue rewords a key_path issue from parseKey for csr_key_path.
func csrKeyIssue(iss *issue) *issue {
	switch {
	case strings.Contains(iss.msg, `"CERTIFICATE REQUEST"`) || strings.Contains(iss.msg, `"NEW CERTIFICATE REQUEST"`):
		return &issue{msg: "file holds a certificate request (CSR), not a private key",
			hintText: "put the CSR's path in csr_path instead, or point csr_key_path at the device's private key"}
	case strings.HasPrefix(iss.msg, "file holds a certificate"):
		return &issue{msg: iss.msg,
			hintText: "point csr_key_path at the device's operational private key (PEM, EC P-384)"}
	}
	r := strings.NewReplacer(
		"point key_path at the device's PEM private key", "point csr_key_path at the device's operational private key (PEM, EC P-384)",
		"the device certificate's private key", "the device's operational private key",
		"the private key the certificate was issued for", "the device's operational private key",
	)
	return &issue{msg: iss.msg, hintText: r.Replace(iss.hintText)}
}

// csrFile reads and checks the row's csr_path.
func (l *loader) csrFile() ([]byte, crypto.PublicKey) {
	written := l.row.CSRPath
	data, _, ok := l.readFile(colCSRPath, written, l.r.resolve(written))
	if !ok {
		return nil, nil
	}
	csr, iss := parseCSR(data)
	if iss != nil {
		l.add(colCSRPath, written, iss.msg, iss.hint(written))
		return nil, nil
	}
	before := l.errors
	if cn := csr.Subject.CommonName; !l.idBad && cn != l.row.RegistrationID {
		l.add(colCSRPath, written, fmt.Sprintf("CSR subject CN is %q, but the registration id is %q", cn, l.id),
			"DPS issues a certificate only for a CSR whose CN is the registration id: make the CSR for this id, or fix registration_id (are rows swapped?)")
	}
	switch msg := previewKeyProblem(csr.PublicKey); {
	case msg != "":
		l.add(colCSRPath, written, "CSR public key: "+msg, previewCSRHint)
	case csr.SignatureAlgorithm != CSRSignatureAlgorithm:
		l.add(colCSRPath, written, fmt.Sprintf("CSR is signed with %v; DPS certificate issuance accepts %v only (preview)", csr.SignatureAlgorithm, CSRSignatureAlgorithm),
			"sign the request with SHA-384: `openssl req -new -sha384 -key KEY -subj /CN=ID -out CSR`")
	case !l.skipSigs:
		// Skipped in a second pass: Validate checked it in this run.
		if err := csr.CheckSignature(); err != nil {
			l.add(colCSRPath, written, fmt.Sprintf("CSR signature does not verify: %v", err),
				"the request was changed or damaged after it was signed; make it again from the device's key")
		}
	}
	if l.errors > before {
		return nil, nil
	}
	return csr.Raw, csr.PublicKey
}

// parseCSR parses the one PEM certificate request in data.
func parseCSR(data []byte) (*x509.CertificateRequest, *issue) {
	var (
		der   []byte
		n     int
		rest  = data
		other string
	)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE REQUEST" || b.Type == "NEW CERTIFICATE REQUEST":
			n++
			if der == nil {
				der = b.Bytes
			}
		case isKeyBlock(b.Type):
			return nil, &issue{msg: fmt.Sprintf("file holds a private key (PEM %q), not a certificate request", b.Type),
				hintText: "put the key's path in csr_key_path (the CSR is made from it), or point csr_path at the CSR"}
		case b.Type == "CERTIFICATE":
			return nil, &issue{msg: "file holds a certificate, not a certificate request (CSR)",
				hintText: `point csr_path at the device's PKCS#10 request (PEM "CERTIFICATE REQUEST")`}
		default:
			if other == "" {
				other = b.Type
			}
		}
	}
	switch {
	case n > 1:
		return nil, &issue{msg: fmt.Sprintf("file holds %d certificate requests, want one", n),
			hintText: "keep only this device's CSR in the file"}
	case n == 0 && other != "":
		return nil, &issue{msg: fmt.Sprintf("file holds a PEM %q block, want CERTIFICATE REQUEST", other),
			hintText: `point csr_path at the device's PKCS#10 request (PEM "CERTIFICATE REQUEST")`}
	case n == 0 && len(data) > 0 && data[0] == 0x30:
		return nil, &issue{msg: "file is DER (binary), not PEM",
			hintText: "convert it: openssl req -inform der -in %s -out csr.pem"}
	case n == 0:
		return nil, &issue{msg: "no PEM certificate request found in the file",
			hintText: `CSRs are PEM text starting with "-----BEGIN CERTIFICATE REQUEST-----"`}
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, &issue{msg: fmt.Sprintf("certificate request cannot be parsed: %v", err),
			hintText: "check it with: openssl req -noout -text -in %s"}
	}
	return csr, nil
}

// issuedPath returns the resolved file the row's issued chain goes to:
// its issued_cert_path, or DefaultIssuedCertDir/<id>.pem beside the
// manifest. It returns "" for a row without issued_cert_path whose id is
// not valid.
func (r *Reader) issuedPath(row Row, idValid bool) string {
	written := row.IssuedCertPath
	if written == "" {
		if !idValid {
			return ""
		}
		written = filepath.Join(DefaultIssuedCertDir, row.RegistrationID+".pem")
	}
	return r.resolve(written)
}

// issuedCertPath checks where the row's issued chain will be written and
// returns the resolved path: a file (or nothing yet) in a folder that can
// be written, or made in a folder that can be.
func (l *loader) issuedCertPath() string {
	written := l.row.IssuedCertPath
	if written == "" && l.idBad {
		return ""
	}
	if written != "" && looksLikeKey(written) {
		l.add(colIssuedCertPath, "", "value looks like a base64 key (not shown), not a file path",
			"check that the fields follow the header's column order")
		return ""
	}
	path := l.r.issuedPath(l.row, !l.idBad)
	shown := written
	if shown == "" {
		shown = filepath.Join(DefaultIssuedCertDir, l.row.RegistrationID+".pem")
	}
	// The chain replaces the file: never one of the row's inputs (a
	// column mix-up would overwrite the device's key).
	for _, in := range []struct{ col, written string }{
		{colCSRKeyPath, l.row.CSRKeyPath}, {colCSRPath, l.row.CSRPath},
		{colKeyPath, l.row.KeyPath}, {colCertPath, l.row.CertPath}, {colChainPath, l.row.ChainPath},
	} {
		if in.written != "" && samePath(l.r.resolve(in.written), path) {
			l.add(colIssuedCertPath, shown, fmt.Sprintf("is the row's %s: writing the issued chain there would replace it", in.col),
				"name a new file for the issued chain, e.g. "+shellQuote(filepath.Join(DefaultIssuedCertDir, l.row.RegistrationID+".pem"))+"; check that the fields follow the header's column order")
			return ""
		}
	}
	if fi, err := os.Stat(path); err == nil {
		switch {
		case fi.IsDir():
			l.add(colIssuedCertPath, shown, "is a directory; issued_cert_path names the file the issued certificate chain is written to",
				"name a file, e.g. "+shellQuote(filepath.Join(shown, l.row.RegistrationID+".pem")))
			return ""
		case !fi.Mode().IsRegular():
			l.add(colIssuedCertPath, shown, fmt.Sprintf("is not a regular file (%s)", fi.Mode().Type()),
				"point issued_cert_path at a new file (or a regular one, which is replaced)")
			return ""
		case holdsKeyOrCSR(path):
			l.add(colIssuedCertPath, shown, "holds a private key or a CSR, which the issued chain would replace",
				"point issued_cert_path at a new file, e.g. "+shellQuote(filepath.Join(DefaultIssuedCertDir, l.row.RegistrationID+".pem")))
			return ""
		}
	}
	// Not tied to the row's file, so that one unwritable folder is one
	// problem group however many rows write to it.
	if msg, hint := l.r.cache.folder(filepath.Dir(path)); msg != "" {
		l.add(colIssuedCertPath, "", msg, hint)
		return ""
	}
	return path
}

// samePath reports whether two resolved paths name the same file: equal
// after cleaning (case-insensitively on Windows and macOS, whose usual file
// systems ignore case), or the same existing file.
func samePath(a, b string) bool {
	a, b = filepath.Clean(a), filepath.Clean(b)
	if a == b || (runtime.GOOS == "windows" || runtime.GOOS == "darwin") && strings.EqualFold(a, b) {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// holdsKeyOrCSR reports whether the file at path starts like a PEM private
// key or CSR (its first 4 KB are read).
func holdsKeyOrCSR(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	return bytes.Contains(head, []byte("PRIVATE KEY-----")) || bytes.Contains(head, []byte("CERTIFICATE REQUEST-----"))
}

// maxCachedFolders bounds the output folder cache; past it folders are
// checked per row.
const maxCachedFolders = 4096

// folderCheck is the cached outcome of checking an output folder.
type folderCheck struct {
	once      sync.Once
	msg, hint string // "" when the folder can be written
}

// folder reports why the issued chains cannot be written in dir, or ""
// when they can. Each folder is checked once.
func (c *loadCache) folder(dir string) (string, string) {
	c.mu.Lock()
	fc, ok := c.folders[dir]
	if !ok {
		fc = &folderCheck{}
		if len(c.folders) < maxCachedFolders {
			if c.folders == nil {
				c.folders = make(map[string]*folderCheck)
			}
			c.folders[dir] = fc
		}
	}
	c.mu.Unlock()
	fc.once.Do(func() { fc.msg, fc.hint = checkFolder(dir) })
	return fc.msg, fc.hint
}

// checkFolder checks that dir, or the nearest of its ancestors that
// exists, is a directory in which a file can be created: the writer makes
// the missing folders. The probe creates and removes an empty file.
func checkFolder(dir string) (string, string) {
	const elsewhere = "; or point issued_cert_path elsewhere"
	for d := dir; ; {
		fi, err := os.Stat(d)
		switch {
		case err == nil && fi.IsDir():
			return probeWritable(dir, d)
		case err == nil:
			msg := fmt.Sprintf("cannot create the output folder %s: %s is a file, not a folder", dir, d)
			if d == dir {
				msg = fmt.Sprintf("output folder %s is a file, not a folder", dir)
			}
			return msg,
				"move the file away or choose another folder for the issued certificates" + elsewhere
		case errors.Is(err, fs.ErrPermission):
			return fmt.Sprintf("cannot reach the output folder %s: permission denied", d),
				"make its parent folders searchable by the user running dps-batch" + elsewhere
		}
		// Missing (or a path through a file): look at the parent.
		parent := filepath.Dir(d)
		if parent == d {
			return fmt.Sprintf("cannot create the output folder %s: %v", dir, unwrapPathError(err)), "check the path" + elsewhere
		}
		d = parent
	}
}

// probeWritable checks that a file can be created in d, the nearest
// existing folder of dir.
func probeWritable(dir, d string) (string, string) {
	f, err := os.CreateTemp(d, ".dps-batch-write-test-*")
	if err == nil {
		name := f.Name()
		f.Close()
		if err := os.Remove(name); err != nil {
			return fmt.Sprintf("output folder %s: cannot remove a test file: %v", d, unwrapPathError(err)), "check the folder's permissions"
		}
		return "", ""
	}
	hint := "make it writable by the user running dps-batch: chmod u+w " + shellQuote(d) + "; or point issued_cert_path elsewhere"
	if d == dir {
		return fmt.Sprintf("output folder %s is not writable: %v", dir, unwrapPathError(err)), hint
	}
	return fmt.Sprintf("cannot create the output folder %s: %s is not writable: %v", dir, d, unwrapPathError(err)), hint
}

// checkIssuanceID is the check of ids Validate uses to find the default
// issued_cert_path of a row, as Load does.
func checkIssuanceID(id string) bool { return dps.ValidateRegistrationID(id, true) == nil }

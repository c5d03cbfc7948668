package certs

import (
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
	"io/fs"
	"os"
	"path/filepath"
)

// Certificate issuance at registration (DPS device API 2025-07-01-preview):
// the register request carries a PKCS#10 certificate signing request whose
// subject CN is the registration id, and DPS answers with a certificate
// issued by the enrollment's credential policy. The preview accepts only EC
// keys on NIST P-384 signed with ECDSA-SHA384; the functions here make and
// check keys and CSRs against those limits before anything is sent.

// CSRRule states what the preview accepts; errors about keys and CSRs
// end with it.
const CSRRule = "DPS certificate issuance (API 2025-07-01-preview) accepts only EC keys on NIST P-384 (secp384r1) with ECDSA-SHA384 signatures"

// ErrCSRKey is wrapped by errors about a key or CSR that DPS certificate
// issuance cannot use.
var ErrCSRKey = errors.New("key not accepted for DPS certificate issuance")

// csrDirMode is the mode of folders EnsureCSRKey creates: they hold
// operational keys, so they are owner only.
const csrDirMode fs.FileMode = 0o700

// GenerateCSRKey returns a new ECDSA key on NIST P-384, the only kind the
// preview issues certificates for.
func GenerateCSRKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECDSA P-384 key: %w", err)
	}
	return k, nil
}

// CheckCSRKey returns nil if pub is an ECDSA P-384 public key and otherwise
// an error (wrapping ErrCSRKey) that names the key's type and says what the
// preview accepts.
func CheckCSRKey(pub crypto.PublicKey) error {
	var what string
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P384() {
			return nil
		}
		what = "an EC " + k.Curve.Params().Name + " key"
	case *rsa.PublicKey:
		what = fmt.Sprintf("an RSA %d-bit key", k.N.BitLen())
	case ed25519.PublicKey:
		what = "an Ed25519 key"
	case nil:
		what = "no key"
	default:
		what = fmt.Sprintf("a %T key", pub)
	}
	return fmt.Errorf("%w: %s; %s", ErrCSRKey, what, CSRRule)
}

// NewCSR returns a DER PKCS#10 certificate signing request for
// registrationID signed by key: subject CN = the registration id (DPS
// requires it), no other subject attributes or extensions, signature
// ECDSA-SHA384. The id is validated, and keys the preview cannot use (RSA,
// P-256, P-521, Ed25519, ...) are refused with an error wrapping ErrCSRKey.
// key may be any crypto.Signer, such as a key in a hardware module.
func NewCSR(registrationID string, key crypto.Signer) ([]byte, error) {
	if err := ValidateRegistrationID(registrationID); err != nil {
		return nil, fmt.Errorf("new CSR: %w", err)
	}
	if key == nil {
		return nil, fmt.Errorf("new CSR for %s: %w", registrationID, CheckCSRKey(nil))
	}
	if err := CheckCSRKey(key.Public()); err != nil {
		return nil, fmt.Errorf("new CSR for %s: %w", registrationID, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: registrationID},
		SignatureAlgorithm: x509.ECDSAWithSHA384,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("new CSR for %s: %w", registrationID, err)
	}
	return der, nil
}

// CheckCSR checks csr as DPS certificate issuance would: the key is EC
// P-384, the signature is ECDSA-SHA384 and verifies, and, when
// registrationID is not empty, the subject CN equals it. Errors about the
// key or signature algorithm wrap ErrCSRKey.
func CheckCSR(csr *x509.CertificateRequest, registrationID string) error {
	if csr == nil {
		return errors.New("no CSR")
	}
	if err := CheckCSRKey(csr.PublicKey); err != nil {
		return err
	}
	if csr.SignatureAlgorithm != x509.ECDSAWithSHA384 {
		return fmt.Errorf("%w: the CSR is signed with %v; %s", ErrCSRKey, csr.SignatureAlgorithm, CSRRule)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("CSR signature does not verify: %w", err)
	}
	if registrationID != "" && csr.Subject.CommonName != registrationID {
		return fmt.Errorf("CSR subject CN is %q, want the registration id %q (DPS requires them equal)", csr.Subject.CommonName, registrationID)
	}
	return nil
}

// CSRPEM returns der as a PEM "CERTIFICATE REQUEST" block, what openssl
// req reads and writes.
func CSRPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// ParseCSRPEM returns the first "CERTIFICATE REQUEST" (or the older "NEW
// CERTIFICATE REQUEST") block in data, parsed. Other blocks are skipped.
// The signature is not checked: CheckCSR does that.
func ParseCSRPEM(data []byte) (*x509.CertificateRequest, error) {
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE REQUEST block found")
		}
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			continue
		}
		csr, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		return csr, nil
	}
}

// LoadCSR reads a PEM CSR from path (see ParseCSRPEM). Errors name the file.
func LoadCSR(path string) (*x509.CertificateRequest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CSR: %w", err)
	}
	csr, err := ParseCSRPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CSR %s: %w", path, err)
	}
	return csr, nil
}

// LoadCSRKey reads a private key from path (PEM: PKCS#8 or SEC1,
// unencrypted) and returns it if it is an EC P-384 key. A missing file is
// an error wrapping fs.ErrNotExist; a key of another kind wraps ErrCSRKey.
// Errors name the file and never include key material.
func LoadCSRKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CSR key: %w", err)
	}
	key, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CSR key %s: %w", path, err)
	}
	if err := CheckCSRKey(key.Public()); err != nil {
		return nil, fmt.Errorf("CSR key %s: %w", path, err)
	}
	return key.(*ecdsa.PrivateKey), nil // CheckCSRKey accepted an *ecdsa.PublicKey
}

// EnsureCSRKey makes sure path holds a device's operational key for
// certificate issuance. If the file exists it is left untouched (it may be
// the key of a certificate already issued) and created is false; it must
// hold an EC P-384 key, or the error says why it cannot be used. Otherwise
// its folder is created (mode 0700) and a new P-384 key is written as
// PKCS#8 PEM with mode 0600, atomically and durably: a temporary file in
// the same folder is written and synced, then linked to path, which fails
// if path exists, so of several processes racing for the same path exactly
// one creates it and the others keep its key; then the folder is synced.
func EnsureCSRKey(path string) (created bool, err error) {
	if path == "" {
		return false, errors.New("CSR key: empty path")
	}
	if _, err := LoadCSRKey(path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%w (the existing file is left untouched)", err)
	}
	key, err := GenerateCSRKey()
	if err != nil {
		return false, err
	}
	data, err := KeyPEM(key)
	if err != nil {
		return false, err
	}
	if err := mkdirDurable(filepath.Dir(path), csrDirMode); err != nil {
		return false, err
	}
	err = writeNew(file{path, data, keyFileMode})
	if errors.Is(err, ErrExists) {
		// Created by someone else since the check above: theirs is kept.
		if _, err := LoadCSRKey(path); err != nil {
			return false, fmt.Errorf("%w (the existing file is left untouched)", err)
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// SignCSR issues a device (TLS client) certificate for csr, as a credential
// policy does at registration: csr is checked with CheckCSR, its subject CN
// must be a valid registration id and becomes the certificate's CN, and its
// public key is certified. opts.KeyType is ignored (the device made the
// key); opts.Validity zero means DefaultLeafValidity. The returned Leaf has
// no Key: the device holds it.
func (ca *CA) SignCSR(csr *x509.CertificateRequest, opts Options) (*Leaf, error) {
	if err := CheckCSR(csr, ""); err != nil {
		return nil, fmt.Errorf("sign CSR: %w", err)
	}
	id := csr.Subject.CommonName
	if err := ValidateRegistrationID(id); err != nil {
		return nil, fmt.Errorf("sign CSR: subject CN: %w", err)
	}
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("sign CSR: CA has no certificate or key")
	}
	tmpl, err := template(id, opts, DefaultLeafValidity)
	if err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", id, err)
	}
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	capNotAfter(tmpl, ca.Cert)
	cert, err := sign(tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", id, err)
	}
	return &Leaf{Cert: cert, Chain: ca.chain()}, nil
}

// Package certs builds a test PKI for dps-batch: a root CA, an optional
// intermediate CA, device (client authentication) certificates whose subject
// CN is the DPS registration id, proof-of-possession verification
// certificates and TLS server certificates for the local simulator.
//
// Everything is generated in memory with the standard library; the file
// helpers write keys as PKCS#8 PEM with mode 0600. The certificates are for
// tests and demos, not for production: there is no revocation, no policy and
// no protection of the CA keys beyond file permissions.
//
// Defaults follow common practice for test PKIs: ECDSA P-256 keys (P-384 on
// request, and for the keys and CSRs of DPS certificate issuance), 128-bit
// random serial numbers, NotBefore backdated five minutes to allow for clock
// skew, five years of validity for CAs and one year for leaves.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// KeyType names the kind of key pair generated for a certificate.
type KeyType string

// The supported key types.
const (
	ECDSAP256 KeyType = "ecdsa-p256" // ECDSA on NIST P-256; the default
	ECDSAP384 KeyType = "ecdsa-p384" // ECDSA on NIST P-384: what DPS certificate issuance (preview) accepts
	RSA2048   KeyType = "rsa2048"    // RSA with a 2048-bit modulus; slow to generate
	Ed25519   KeyType = "ed25519"    // Ed25519; not accepted by every TLS stack
)

// KeyTypes lists the supported key types, default first.
var KeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, Ed25519}

// ParseKeyType returns the KeyType named s; "" means the default.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return ECDSAP256, nil
	}
	for _, kt := range KeyTypes {
		if string(kt) == s {
			return kt, nil
		}
	}
	return "", fmt.Errorf("unknown key type %q (want %s, %s, %s or %s)", s, ECDSAP256, ECDSAP384, RSA2048, Ed25519)
}

// Default validity periods, used when Options.Validity is zero.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour // roots and intermediates: 5 years
	DefaultLeafValidity = 365 * 24 * time.Hour     // devices, verification and servers: 1 year
)

// clockSkew is how far NotBefore is backdated, so a certificate made now is
// accepted by a peer whose clock is slightly behind.
const clockSkew = 5 * time.Minute

// Options tunes certificate generation. The zero value gives an ECDSA P-256
// key, the default validity for the kind of certificate and the system clock.
type Options struct {
	// KeyType is the key pair to generate; "" means ECDSAP256.
	KeyType KeyType
	// Validity is how long the certificate is valid from now; zero means
	// DefaultCAValidity for CAs and DefaultLeafValidity for leaves. A
	// certificate never outlives its issuer: NotAfter is capped at the
	// issuer's NotAfter.
	Validity time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// CA is a certificate authority that can issue certificates.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Key is the CA private key; it matches Cert's public key.
	Key crypto.Signer
	// Parents are the issuers above this CA, nearest first, excluding the
	// self-signed root; empty for a root (and for an intermediate whose
	// parents are not known, e.g. one loaded from a single-certificate file).
	Parents []*x509.Certificate
}

// Leaf is an end-entity certificate with its key and the chain a peer needs
// to verify it against the root.
type Leaf struct {
	// Cert is the leaf certificate.
	Cert *x509.Certificate
	// Key is the leaf private key; it matches Cert's public key.
	Key crypto.Signer
	// Chain holds the issuing CAs from the leaf's issuer upward, excluding
	// the self-signed root; empty when the leaf was issued by a root.
	Chain []*x509.Certificate
}

// NewRoot returns a new self-signed root CA named cn.
func NewRoot(cn string, opts Options) (*CA, error) {
	if strings.TrimSpace(cn) == "" {
		return nil, errors.New("new root: common name is empty")
	}
	key, err := generateKey(opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("new root %q: %w", cn, err)
	}
	tmpl, err := template(cn, opts, DefaultCAValidity)
	if err != nil {
		return nil, fmt.Errorf("new root %q: %w", cn, err)
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	cert, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new root %q: %w", cn, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// NewIntermediate returns a CA named cn issued by ca. The intermediate may
// issue leaf certificates only (path length 0), which is all DPS needs and
// keeps chains short; ca itself must allow a sub-CA.
func (ca *CA) NewIntermediate(cn string, opts Options) (*CA, error) {
	if strings.TrimSpace(cn) == "" {
		return nil, errors.New("new intermediate: common name is empty")
	}
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, fmt.Errorf("new intermediate %q: CA has no certificate or key", cn)
	}
	// A parsed certificate has MaxPathLen -1 when unconstrained and
	// MaxPathLenZero set when the path length is explicitly 0.
	if ca.Cert.MaxPathLen == 0 && ca.Cert.MaxPathLenZero {
		return nil, fmt.Errorf("new intermediate %q: CA %q may only issue leaf certificates (path length 0)", cn, ca.Cert.Subject.CommonName)
	}
	key, err := generateKey(opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("new intermediate %q: %w", cn, err)
	}
	tmpl, err := template(cn, opts, DefaultCAValidity)
	if err != nil {
		return nil, fmt.Errorf("new intermediate %q: %w", cn, err)
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLen = 0
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	capNotAfter(tmpl, ca.Cert)
	cert, err := sign(tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("new intermediate %q: %w", cn, err)
	}
	return &CA{Cert: cert, Key: key, Parents: ca.chain()}, nil
}

// NewDevice returns a client-authentication certificate for a DPS device.
// Its subject CN is registrationID exactly, because DPS takes the
// registration id of an X.509 device from the CN; the id is validated first.
func (ca *CA) NewDevice(registrationID string, opts Options) (*Leaf, error) {
	if err := ValidateRegistrationID(registrationID); err != nil {
		return nil, fmt.Errorf("new device: %w", err)
	}
	leaf, err := ca.issue(registrationID, opts, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	if err != nil {
		return nil, fmt.Errorf("new device %s: %w", registrationID, err)
	}
	return leaf, nil
}

// NewVerification returns a proof-of-possession certificate: subject CN is
// the verification code DPS displayed for ca, and it is signed by ca.Key.
// Uploading it to DPS proves control of the CA key.
func (ca *CA) NewVerification(code string, opts Options) (*Leaf, error) {
	if err := validateCode(code); err != nil {
		return nil, fmt.Errorf("new verification certificate: %w", err)
	}
	leaf, err := ca.issue(code, opts, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageDigitalSignature
	})
	if err != nil {
		return nil, fmt.Errorf("new verification certificate: %w", err)
	}
	return leaf, nil
}

// NewServer returns a TLS server certificate for hosts, each of which
// becomes an IP address or DNS name subject alternative name. The first host
// is also the subject CN.
func (ca *CA) NewServer(hosts []string, opts Options) (*Leaf, error) {
	if len(hosts) == 0 {
		return nil, errors.New("new server certificate: no hosts given")
	}
	var ips []net.IP
	var names []string
	for _, h := range hosts {
		switch {
		case strings.TrimSpace(h) == "":
			return nil, errors.New("new server certificate: empty host name")
		case net.ParseIP(h) != nil:
			ips = append(ips, net.ParseIP(h))
		default:
			names = append(names, h)
		}
	}
	leaf, err := ca.issue(hosts[0], opts, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageDigitalSignature
		if _, isRSA := t.PublicKey.(*rsa.PublicKey); isRSA {
			// RSA key exchange (TLS 1.2 and older) encrypts to the server key.
			t.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		t.IPAddresses = ips
		t.DNSNames = names
	})
	if err != nil {
		return nil, fmt.Errorf("new server certificate for %s: %w", strings.Join(hosts, ","), err)
	}
	return leaf, nil
}

// TLSCertificate returns l as a tls.Certificate that sends the leaf and its
// chain (without the root) in the handshake.
func (l *Leaf) TLSCertificate() tls.Certificate {
	der := make([][]byte, 0, 1+len(l.Chain))
	der = append(der, l.Cert.Raw)
	for _, c := range l.Chain {
		der = append(der, c.Raw)
	}
	return tls.Certificate{Certificate: der, PrivateKey: l.Key, Leaf: l.Cert}
}

// issue creates a leaf named cn signed by ca; usage sets the key usages and
// names on the template (its PublicKey is set to the new key beforehand).
func (ca *CA) issue(cn string, opts Options, usage func(*x509.Certificate)) (*Leaf, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("CA has no certificate or key")
	}
	key, err := generateKey(opts.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := template(cn, opts, DefaultLeafValidity)
	if err != nil {
		return nil, err
	}
	tmpl.BasicConstraintsValid = true
	tmpl.PublicKey = key.Public()
	usage(tmpl)
	capNotAfter(tmpl, ca.Cert)
	cert, err := sign(tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, err
	}
	return &Leaf{Cert: cert, Key: key, Chain: ca.chain()}, nil
}

// chain returns the certificates a peer needs between a certificate issued
// by ca and the root: ca itself unless it is a self-signed root, then its
// parents.
func (ca *CA) chain() []*x509.Certificate {
	var out []*x509.Certificate
	if !isSelfSigned(ca.Cert) {
		out = append(out, ca.Cert)
	}
	for _, p := range ca.Parents {
		if !isSelfSigned(p) {
			out = append(out, p)
		}
	}
	return out
}

// isSelfSigned reports whether c is a self-signed (root) certificate. It
// compares names and key identifiers rather than checking the signature,
// because it runs for every certificate issued and a signature check would
// cost as much as the signing.
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) &&
		(len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId))
}

// serialLimit bounds serial numbers to 128 bits (RFC 5280 allows up to 20 octets).
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func template(cn string, opts Options, defaultValidity time.Duration) (*x509.Certificate, error) {
	validity := opts.Validity
	switch {
	case validity < 0:
		return nil, fmt.Errorf("validity %v is negative", validity)
	case validity == 0:
		validity = defaultValidity
	}
	serial, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	// A zero serial is invalid; bump it (the odds are 2^-128, but be correct).
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	now := opts.now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(validity),
	}, nil
}

// capNotAfter keeps a certificate from outliving its issuer, which would
// make it unverifiable for the remainder anyway.
func capNotAfter(tmpl, issuer *x509.Certificate) {
	if tmpl.NotAfter.After(issuer.NotAfter) {
		tmpl.NotAfter = issuer.NotAfter
	}
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new certificate: %w", err)
	}
	return cert, nil
}

func generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256, "":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
		}
		return k, nil
	case ECDSAP384:
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate ECDSA P-384 key: %w", err)
		}
		return k, nil
	case RSA2048:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate RSA 2048 key: %w", err)
		}
		return k, nil
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate Ed25519 key: %w", err)
		}
		return k, nil
	default:
		_, err := ParseKeyType(string(kt))
		return nil, err
	}
}

// validateCode checks a DPS verification code: it becomes the subject CN, so
// it must be 1 to 64 printable ASCII characters.
func validateCode(code string) error {
	if code == "" {
		return errors.New("verification code is empty")
	}
	if len(code) > 64 {
		return fmt.Errorf("verification code is %d characters; a certificate CN holds at most 64", len(code))
	}
	for i := 0; i < len(code); i++ {
		if c := code[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("verification code has a non-printable character at position %d", i+1)
		}
	}
	return nil
}

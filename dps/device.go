package dps

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net/http"
	"sync"
)

// credKind is the attestation a device uses.
type credKind int

const (
	credNone credKind = iota
	credX509
	credSAS
)

// Device is one device's identity: its registration id and credential.
// Create it with NewX509Device or NewSymmetricKeyDevice. An X.509 device
// gets its own HTTP transport on first use, so its TLS connections are never
// shared with another certificate; call Close when the device is done.
//
// A Device may be used by one request at a time. Printing a Device in any
// form shows only the registration id and a certificate fingerprint.
type Device struct {
	// RegistrationID is the DPS registration id (the certificate CN for X.509).
	RegistrationID string

	// s is behind a pointer so that fmt's %v/%#v on a Device value prints an
	// address, never the key or the certificate's private key.
	s *deviceState
}

type deviceState struct {
	kind        credKind
	key         []byte           // symmetric key (raw bytes); never printed
	cert        *tls.Certificate // leaf + chain and private key
	fingerprint string           // "sha256:" + first 8 bytes of the leaf DER hash, hex

	mu    sync.Mutex
	owner *Client // the client hc was built for
	hc    *http.Client
	tr    *http.Transport
}

// NewX509Device returns a device that authenticates with a TLS client
// certificate. cert.Certificate holds the leaf DER first, then the chain up
// to (and including) a CA verified in DPS, as group enrollments require;
// cert.PrivateKey is the leaf's ECDSA, RSA or Ed25519 key.
func NewX509Device(registrationID string, cert tls.Certificate) *Device {
	s := &deviceState{kind: credX509, cert: &cert}
	if len(cert.Certificate) > 0 {
		sum := sha256.Sum256(cert.Certificate[0])
		s.fingerprint = "sha256:" + hex.EncodeToString(sum[:8])
	}
	return &Device{RegistrationID: registrationID, s: s}
}

// NewSymmetricKeyDevice returns a device that authenticates with SAS tokens
// signed by key, the raw (base64-decoded) device key. For group enrollments
// derive it first with DeriveDeviceKeyBytes. The key is copied.
func NewSymmetricKeyDevice(registrationID string, key []byte) *Device {
	k := make([]byte, len(key))
	copy(k, key)
	return &Device{RegistrationID: registrationID, s: &deviceState{kind: credSAS, key: k}}
}

// String returns the registration id and the credential type, such as
// "dev-001 (x509 sha256:ab12cd34ef56a7b8…)" or "dev-002 (symmetric key)".
// It never includes key material.
func (d *Device) String() string {
	if d == nil {
		return "<nil device>"
	}
	switch d.kind() {
	case credX509:
		if d.s.fingerprint == "" {
			return d.RegistrationID + " (x509, no certificate)"
		}
		return d.RegistrationID + " (x509 " + d.s.fingerprint + "…)"
	case credSAS:
		return d.RegistrationID + " (symmetric key)"
	}
	return d.RegistrationID + " (no credential)"
}

// GoString makes %#v print the same as String.
func (d *Device) GoString() string { return fmt.Sprintf("dps.Device(%s)", d.String()) }

// Close closes the idle connections of an X.509 device's own transport and
// drops it; a later request builds a new one. It is a no-op for
// symmetric-key devices and safe to call more than once.
func (d *Device) Close() {
	if d == nil || d.s == nil {
		return
	}
	d.s.mu.Lock()
	tr := d.s.tr
	d.s.owner, d.s.hc, d.s.tr = nil, nil, nil
	d.s.mu.Unlock()
	if tr != nil {
		tr.CloseIdleConnections()
	}
}

func (d *Device) kind() credKind {
	if d.s == nil {
		return credNone
	}
	return d.s.kind
}

// x509Client returns the device's own HTTP client for c, building it on
// first use (or when the device moves to another Client).
func (d *Device) x509Client(c *Client) (*http.Client, error) {
	s := d.s
	if len(s.cert.Certificate) == 0 || s.cert.PrivateKey == nil {
		return nil, fmt.Errorf("%w: X.509 device has no certificate or private key", ErrInvalidRequest)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owner == c && s.hc != nil {
		return s.hc, nil
	}
	if s.tr != nil {
		s.tr.CloseIdleConnections()
	}
	cert := s.cert
	tlsConf := c.tlsConfig()
	// Always present the device certificate, whatever CA names the server
	// lists in its request: DPS, not the client, decides which chains it
	// accepts (Go would otherwise send no certificate on a name mismatch).
	tlsConf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return cert, nil
	}
	tlsConf.Renegotiation = tls.RenegotiateOnceAsClient
	// By default TLS 1.2, the only version DPS supports today
	// (learn.microsoft.com/azure/iot-dps/tls-support). Offering 1.3 costs
	// every device's handshake its 1.3 key shares (post-quantum hybrid
	// included: about a tenth of a millisecond of CPU) for nothing, and
	// under 1.3 a server rejects a client certificate only after the
	// handshake, where the rejection can reach the client as a bare
	// connection reset instead of the alert that names it.
	tlsConf.MaxVersion = c.cfg.X509MaxTLSVersion
	// No ClientSessionCache: a resumed session carries the identity of the
	// certificate that created it, so sessions are never shared. (The
	// client's verifier requires that too.)
	c.verifier.apply(tlsConf)
	tr := c.newTransport(tlsConf)
	// One request at a time per device; keep the connection for the
	// register+poll sequence, and let a forgotten Close cost at most
	// deviceIdleTimeout of an open socket.
	tr.MaxIdleConns = 1
	tr.MaxIdleConnsPerHost = 1
	tr.IdleConnTimeout = deviceIdleTimeout
	s.owner, s.tr = c, tr
	s.hc = c.newHTTPClient(tr)
	return s.hc, nil
}

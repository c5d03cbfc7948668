package dps

import (
	"crypto/fips140"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// maxVerifiedChains bounds the server chains a client remembers. A DPS
// endpoint presents one chain, or a few behind a load balancer.
const maxVerifiedChains = 16

// serverVerifier checks server certificate chains with the checks
// crypto/tls makes by default (roots, intermediates sent by the server, the
// endpoint's host name, server-auth usage, validity now) and remembers the
// chains it has accepted until the first of their certificates expires.
//
// Every X.509 device opens its own connection, so a batch of ten thousand
// devices meets the same server chain ten thousand times; verifying it once
// saves a signature check and a chain build per device. The cache holds only
// successes, keyed by the exact certificates presented and the host name,
// so a different chain or host is always verified in full.
//
// It checks against the endpoint's host name, so it is used only where
// every TLS connection of the transport goes to the endpoint: not through
// an https:// proxy (whose own certificate the same configuration checks),
// not for a host name crypto/tls would send in another (punycode) form, and
// not in FIPS 140 mode, where crypto/tls also filters the chains it
// accepts. See newServerVerifier.
type serverVerifier struct {
	roots *x509.CertPool // nil: the system roots
	host  string         // the endpoint's host name (no port)
	now   func() time.Time

	mu       sync.Mutex
	verified map[[sha256.Size]byte]validity
}

// validity is when a verified chain is good: from its latest NotBefore
// until its earliest NotAfter.
type validity struct{ from, until time.Time }

// newServerVerifier returns a verifier for connections to endpoint made
// through proxy (the transports' Proxy function), or nil when crypto/tls's
// own verification must stay in place (see serverVerifier).
func newServerVerifier(endpoint *url.URL, proxy func(*http.Request) (*url.URL, error), roots *x509.CertPool, now func() time.Time) *serverVerifier {
	host := endpoint.Hostname()
	if fips140.Enabled() || !isASCII(host) {
		return nil
	}
	if p, err := proxy(&http.Request{URL: endpoint}); err != nil || (p != nil && p.Scheme == "https") {
		return nil
	}
	return &serverVerifier{roots: roots, host: host, now: now, verified: make(map[[sha256.Size]byte]validity)}
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// apply makes conf verify the server with v; a nil v leaves conf as it is.
// crypto/tls's own check is turned off only because VerifyPeerCertificate
// takes its place: it runs at the same point of every full handshake,
// before the client certificate is sent, and a failure aborts the
// handshake with the error crypto/tls would have returned. (On a
// renegotiation crypto/tls does not call it but requires the same leaf as
// the first handshake, as it does with its own verification.) conf must not
// resume sessions: VerifyPeerCertificate is not called on resumed
// connections.
func (v *serverVerifier) apply(conf *tls.Config) {
	if v == nil {
		return
	}
	if conf.ClientSessionCache != nil {
		panic("dps: serverVerifier on a configuration that resumes sessions")
	}
	conf.InsecureSkipVerify = true
	conf.VerifyPeerCertificate = v.verify
}

func (v *serverVerifier) verify(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if len(rawCerts) == 0 {
		return errors.New("tls: server sent no certificate")
	}
	key := v.key(rawCerts)
	now := v.now()
	v.mu.Lock()
	good, ok := v.verified[key]
	v.mu.Unlock()
	if ok && !now.Before(good.from) && now.Before(good.until) {
		return nil
	}

	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return errors.New("tls: failed to parse certificate from server: " + err.Error())
		}
		certs[i] = c
	}
	opts := x509.VerifyOptions{Roots: v.roots, CurrentTime: now, DNSName: v.host, Intermediates: x509.NewCertPool()}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := certs[0].Verify(opts)
	if err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: certs, Err: err}
	}
	// The chain is good while every certificate on it is.
	good = validity{from: certs[0].NotBefore, until: certs[0].NotAfter}
	for _, c := range chains[0] {
		if c.NotBefore.After(good.from) {
			good.from = c.NotBefore
		}
		if c.NotAfter.Before(good.until) {
			good.until = c.NotAfter
		}
	}
	v.mu.Lock()
	if len(v.verified) >= maxVerifiedChains {
		clear(v.verified)
	}
	v.verified[key] = good
	v.mu.Unlock()
	return nil
}

// key hashes the host name and the certificates, each length-prefixed so
// that no two different inputs hash the same bytes.
func (v *serverVerifier) key(rawCerts [][]byte) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(v.host)))
	h.Write(n[:])
	h.Write([]byte(v.host))
	for _, raw := range rawCerts {
		binary.BigEndian.PutUint64(n[:], uint64(len(raw)))
		h.Write(n[:])
		h.Write(raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

package dpssim

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// attested is who a request proved to be.
type attested struct {
	enr    *enrollment
	x509   *dps.X509RegistrationResult
	symKey *dps.SymmetricKeyRegistrationResult
}

// unauthorized is the 401 DPS answers for every credential problem.
func unauthorized(format string, args ...any) *apiError {
	return &apiError{status: http.StatusUnauthorized, code: dps.CodeInvalidCredentials, msg: fmt.Sprintf(format, args...)}
}

// authenticate checks the request's credentials for regID: a SAS token in
// the Authorization header, else the TLS client certificate chain. Messages
// explain the reason (DPS itself only says "Unauthorized" or "Invalid
// certificate") but never contain key material or signatures.
func (s *Server) authenticate(r *http.Request, regID string, tpm bool, now time.Time) (attested, *apiError) {
	if h := r.Header.Get("Authorization"); h != "" {
		return s.authSAS(h, regID, now)
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return s.authX509(r.TLS.PeerCertificates, regID, now)
	}
	if tpm {
		return attested{}, unauthorized("TPM attestation is not supported by this simulator; use X.509 or a symmetric key")
	}
	return attested{}, unauthorized("no credentials: present a TLS client certificate (X.509) or an Authorization: SharedAccessSignature header (symmetric key)")
}

// sasToken is a parsed "SharedAccessSignature sr=…&sig=…&se=…&skn=…" header.
type sasToken struct {
	srRaw  string // sr exactly as sent: the signed text
	sr     string // sr decoded
	sig    []byte
	seRaw  string
	expiry int64
	skn    string
}

// parseSAS accepts the fields in any order, sr raw or percent-encoded with
// either hex case, sig URL-encoded or not, and skn absent or empty.
func parseSAS(h string) (sasToken, error) {
	const prefix = "sharedaccesssignature "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return sasToken{}, errors.New("the Authorization header is not a SharedAccessSignature token")
	}
	var t sasToken
	seen := map[string]bool{}
	for _, field := range strings.Split(strings.TrimSpace(h[len(prefix):]), "&") {
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			return sasToken{}, fmt.Errorf("SAS token field %q has no '='", redactField(field))
		}
		k = strings.ToLower(k)
		if seen[k] {
			return sasToken{}, fmt.Errorf("SAS token has %s twice", k)
		}
		seen[k] = true
		switch k {
		case "sr":
			t.srRaw = v
			dec, err := url.QueryUnescape(v)
			if err != nil {
				return sasToken{}, fmt.Errorf("SAS token sr is not valid URL encoding: %w", err)
			}
			t.sr = dec
		case "sig":
			// PathUnescape keeps a literal '+' (unencoded base64) intact.
			dec, err := url.PathUnescape(v)
			if err != nil {
				return sasToken{}, errors.New("SAS token sig is not valid URL encoding")
			}
			sig, err := base64.StdEncoding.DecodeString(dec)
			if err != nil {
				return sasToken{}, errors.New("SAS token sig is not base64")
			}
			t.sig = sig
		case "se":
			t.seRaw = v
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return sasToken{}, fmt.Errorf("SAS token se %q is not a Unix time in seconds", v)
			}
			t.expiry = n
		case "skn":
			t.skn = v
		}
	}
	for _, k := range []string{"sr", "sig", "se"} {
		if !seen[k] {
			return sasToken{}, fmt.Errorf("SAS token has no %s field", k)
		}
	}
	return t, nil
}

// redactField shows a malformed field's name but never its value.
func redactField(f string) string {
	if len(f) > 8 {
		return f[:3] + "…"
	}
	return f
}

// signedBy reports whether key signed the token: HMAC-SHA256 over the
// literal sr text, a newline and the literal se text.
func (t sasToken) signedBy(key []byte) bool {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(t.srRaw))
	mac.Write([]byte{'\n'})
	mac.Write([]byte(t.seRaw))
	return hmac.Equal(mac.Sum(nil), t.sig)
}

func (t sasToken) signedByAny(keys [][]byte) bool {
	for _, k := range keys {
		if t.signedBy(k) {
			return true
		}
	}
	return false
}

func (s *Server) authSAS(h, regID string, now time.Time) (attested, *apiError) {
	t, err := parseSAS(h)
	if err != nil {
		return attested{}, unauthorized("%v", err)
	}
	want := dps.SASResource(s.in.idScope, regID)
	if !strings.EqualFold(t.sr, want) {
		return attested{}, unauthorized("SAS token is scoped to %q, not %q", t.sr, want)
	}
	if t.expiry <= now.Unix() {
		return attested{}, unauthorized("SAS token expired at %s", time.Unix(t.expiry, 0).UTC().Format(time.RFC3339))
	}
	switch t.skn {
	case "", dps.SASKeyName:
	default:
		return attested{}, unauthorized("SAS token skn %q: device tokens use %q or none", t.skn, dps.SASKeyName)
	}
	if e := s.in.individual(regID); e != nil {
		if e.isX509() {
			return attested{}, unauthorized("the individual enrollment for %q uses X.509 attestation: present its certificate instead of a SAS token", regID)
		}
		if !t.signedByAny(e.keys) {
			return attested{}, unauthorized("SAS signature does not match the individual enrollment's primary or secondary key")
		}
		return attested{enr: e, symKey: &dps.SymmetricKeyRegistrationResult{}}, nil
	}
	_, symKeyGroups := s.in.groupLists()
	for _, g := range symKeyGroups {
		for _, gk := range g.keys {
			if t.signedBy(dps.DeriveDeviceKeyBytes(gk, regID)) {
				return attested{enr: g, symKey: &dps.SymmetricKeyRegistrationResult{EnrollmentGroupID: g.id}}, nil
			}
		}
	}
	return attested{}, unauthorized("no enrollment for %q: no individual enrollment, and no symmetric key group whose derived key signs this token", regID)
}

func (s *Server) authX509(chain []*x509.Certificate, regID string, now time.Time) (attested, *apiError) {
	leaf := chain[0]
	// DPS takes an X.509 device's registration id from its certificate CN.
	if !strings.EqualFold(leaf.Subject.CommonName, regID) {
		return attested{}, unauthorized("certificate CN %q does not match the registration id %q", leaf.Subject.CommonName, regID)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return attested{}, unauthorized("device certificate is not valid now (valid %s to %s)", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	key := chainKey(chain)
	// The generation is read before matching: a change of the enrollments
	// while matching makes the cached result stale at once.
	gen := s.in.gen.Load()
	if att, ok := s.auths.get(key, now, gen); ok {
		return att, nil
	}
	att, validUntil, aerr := s.matchX509(chain, regID, now)
	if aerr == nil {
		s.auths.put(key, att, validUntil, gen)
	}
	return att, aerr
}

// matchX509 finds the enrollment for a certificate chain whose leaf CN is
// regID, and how long the answer holds (the end of the verified chain's
// validity).
func (s *Server) matchX509(chain []*x509.Certificate, regID string, now time.Time) (attested, time.Time, *apiError) {
	leaf := chain[0]
	info := &dps.X509RegistrationResult{CertificateInfo: certInfo(leaf)}
	// Individual enrollment first, then groups up the chain (DPS matching order).
	if e := s.in.individual(regID); e != nil {
		if !e.isX509() {
			return attested{}, time.Time{}, unauthorized("the individual enrollment for %q uses symmetric key attestation: send a SAS token", regID)
		}
		enrolled := false
		for _, c := range e.certs {
			enrolled = enrolled || bytes.Equal(leaf.Raw, c.Raw)
		}
		if !enrolled {
			return attested{}, time.Time{}, unauthorized("the presented certificate is not the one in the individual enrollment for %q (neither its primary nor its secondary certificate)", regID)
		}
		validUntil := leaf.NotAfter
		if len(chain) > 1 {
			ok, until := s.chainsToVerifiedCA(chain, now)
			if !ok {
				return attested{}, time.Time{}, unauthorized("the device presented a certificate chain: for an individual enrollment one CA certificate of that chain must be uploaded and verified (or present the device certificate alone)")
			}
			validUntil = until
		}
		return attested{enr: e, x509: info}, validUntil, nil
	}
	g, ca, chains, err := s.findX509Group(chain, now)
	if g == nil && err == nil {
		return attested{}, time.Time{}, unauthorized("no enrollment for %q: no individual enrollment, and no enrollment group's CA is in or directly above the presented chain (present the full chain up to the group's CA)", regID)
	}
	if err != nil {
		return attested{}, time.Time{}, unauthorized("certificate chain does not verify up to enrollment group %q's CA %q: %v", g.id, ca.cert.Subject.CommonName, err)
	}
	if ca.ref != nil && !ca.ref.verified.Load() {
		return attested{}, time.Time{}, unauthorized("enrollment group %q's CA certificate %q is not verified: do proof of possession first (see dps-batch sim --help)", g.id, ca.ref.name)
	}
	info.EnrollmentGroupID = g.id
	info.SigningCertificateInfo = certInfo(ca.cert)
	return attested{enr: g, x509: info}, earliestNotAfter(chains), nil
}

// findX509Group walks the presented chain from the leaf's issuer upward and
// returns the first X.509 group whose CA is the certificate at that level,
// or issued the topmost presented certificate, with the verified chains
// from the leaf to that CA. A group found whose chain does not verify is
// returned with the verification error.
func (s *Server) findX509Group(chain []*x509.Certificate, now time.Time) (*enrollment, groupCA, [][]*x509.Certificate, error) {
	var firstErr error
	var firstGroup *enrollment
	var firstCA groupCA
	x509Groups, _ := s.in.groupLists()
	for level := 1; level <= len(chain); level++ {
		for _, g := range x509Groups {
			for _, gca := range g.cas {
				ca := gca.cert
				if level < len(chain) {
					if !sameCert(chain[level], ca) {
						continue
					}
				} else if !bytes.Equal(chain[len(chain)-1].RawIssuer, ca.RawSubject) {
					continue
				}
				// x509 verification checks every signature, validity period,
				// CA constraint and the client-auth usage.
				chains, err := chain[0].Verify(verifyOptions(ca, chain[1:level], now))
				if err == nil {
					return g, gca, chains, nil
				}
				if firstErr == nil {
					firstGroup, firstCA, firstErr = g, gca, err
				}
			}
		}
		if firstErr != nil {
			return firstGroup, firstCA, nil, firstErr
		}
	}
	return nil, groupCA{}, nil, nil
}

// chainsToVerifiedCA reports whether the chain verifies up to a verified
// uploaded CA certificate, and until when.
func (s *Server) chainsToVerifiedCA(chain []*x509.Certificate, now time.Time) (bool, time.Time) {
	for _, ca := range s.in.cas {
		if !ca.verified.Load() {
			continue
		}
		if chains, err := chain[0].Verify(verifyOptions(ca.cert, chain[1:], now)); err == nil {
			return true, earliestNotAfter(chains)
		}
	}
	return false, time.Time{}
}

// earliestNotAfter is when the first certificate of the verified chains
// expires.
func earliestNotAfter(chains [][]*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range chains {
		for _, cert := range c {
			if t.IsZero() || cert.NotAfter.Before(t) {
				t = cert.NotAfter
			}
		}
	}
	return t
}

// authCache remembers successful X.509 authentications, so the poll after
// a register (and repeat registrations) skip the chain verification. Only
// successes are kept: a CA can become verified at run time, never
// unverified, so a success stays a success until the chain expires or the
// enrollments change (the service API creates, updates and deletes them;
// each change starts a new generation and older entries no longer count).
type authCache struct {
	mu sync.Mutex
	m  map[[32]byte]cachedAuth
}

type cachedAuth struct {
	att        attested
	validUntil time.Time
	gen        uint64 // enrollment generation the result was computed in
}

// maxCachedAuths bounds the cache; it is emptied when full.
const maxCachedAuths = 100_000

func (c *authCache) get(key [32]byte, now time.Time, gen uint64) (attested, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || now.After(e.validUntil) || e.gen != gen {
		return attested{}, false
	}
	return e.att, true
}

func (c *authCache) put(key [32]byte, att attested, validUntil time.Time, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedAuths {
		c.m = make(map[[32]byte]cachedAuth)
	}
	c.m[key] = cachedAuth{att: att, validUntil: validUntil, gen: gen}
}

// chainKey identifies a presented chain.
func chainKey(chain []*x509.Certificate) [32]byte {
	h := sha256.New()
	for _, c := range chain {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func verifyOptions(root *x509.Certificate, intermediates []*x509.Certificate, now time.Time) x509.VerifyOptions {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	return x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// sameCert compares subject and public key, so a CA re-issued with the same
// key still matches.
func sameCert(a, b *x509.Certificate) bool {
	return bytes.Equal(a.RawSubject, b.RawSubject) && bytes.Equal(a.RawSubjectPublicKeyInfo, b.RawSubjectPublicKeyInfo)
}

// certInfo is the X509CertificateInfo DPS reports for a certificate.
func certInfo(c *x509.Certificate) *dps.X509CertificateInfo {
	s1 := sha1.Sum(c.Raw)
	s256 := sha256.Sum256(c.Raw)
	return &dps.X509CertificateInfo{
		SubjectName:      c.Subject.String(),
		SHA1Thumbprint:   strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
		IssuerName:       c.Issuer.String(),
		NotBeforeUTC:     formatTime(c.NotBefore),
		NotAfterUTC:      formatTime(c.NotAfter),
		SerialNumber:     strings.ToUpper(c.SerialNumber.Text(16)),
		Version:          c.Version,
	}
}

// VerificationCode is the proof-of-possession code the simulator issues for
// a CA certificate. It is derived from the certificate (48 hex digits, like
// DPS's codes) rather than random, so "dps-batch sim verification-code" can
// print it offline and it survives restarts.
func VerificationCode(ca *x509.Certificate) string {
	sum := sha256.Sum256(append([]byte("dpssim proof of possession\n"), ca.Raw...))
	return strings.ToUpper(hex.EncodeToString(sum[:24]))
}

// verifyPossession checks a verification certificate for ca: its CN is the
// code and it is signed by ca's key.
func verifyPossession(ca *caCert, vc *x509.Certificate, now time.Time) error {
	if vc.Subject.CommonName != ca.code {
		return fmt.Errorf("verification certificate CN is %q; want the verification code %q", vc.Subject.CommonName, ca.code)
	}
	if err := vc.CheckSignatureFrom(ca.cert); err != nil {
		return fmt.Errorf("verification certificate is not signed by the key of CA %q: %w", ca.name, err)
	}
	if now.Before(vc.NotBefore) || now.After(vc.NotAfter) {
		return errors.New("verification certificate is not valid now")
	}
	return nil
}

package dpssim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// Certificate issuance at registration (device api-version
// 2025-07-01-preview): a device whose enrollment names a credential policy
// sends a PKCS#10 CSR with its register PUT, and the final operation result
// carries registrationState.issuedCertificateChain, the leaf issued from the
// CSR followed by the policy's CA chain up to the root. The chain is handed
// over once; the status lookup never returns it.

// Limits of the certificate issuance preview.
const (
	// DefaultValidityDays is an issued certificate's validity when
	// CredentialPolicy.ValidityDays is 0.
	DefaultValidityDays = 30
	// MinValidityDays and MaxValidityDays bound CredentialPolicy.ValidityDays.
	MinValidityDays = 7
	MaxValidityDays = 90
)

// issuanceClockSkew backdates an issued certificate's NotBefore, as the
// certs package does, so a device whose clock is a little behind accepts it.
const issuanceClockSkew = 5 * time.Minute

// credPolicy is a compiled CredentialPolicy: the issuing CA, its key, and
// the chain that follows an issued leaf (the issuing CA first, the root last).
type credPolicy struct {
	name      string
	ca        *x509.Certificate
	key       crypto.Signer
	chain     []*x509.Certificate
	chainB64  []string // chain as base64 DER, as the answer carries it
	validity  time.Duration
	days      int
	generated bool
}

// supportsCSR says whether an api-version knows the register body's csr
// field. Other versions ignore it, as a service ignores unknown fields.
func supportsCSR(apiVersion string) bool {
	return apiVersion == dps.CertificateIssuanceAPIVersion
}

// compileCredentialPolicies validates Config.CredentialPolicies: the CA and
// key given as PEM (readFiles inlined the files), or a fresh P-384 root and
// issuing CA when no certificate is given.
func (in *instance) compileCredentialPolicies(list []CredentialPolicy) error {
	in.credPolicies = map[string]*credPolicy{}
	for i, cp := range list {
		field := fmt.Sprintf("credentialPolicies[%d] (%s)", i, cp.Name)
		if strings.TrimSpace(cp.Name) == "" {
			return fmt.Errorf("credentialPolicies[%d]: name is required", i)
		}
		if in.credPolicies[cp.Name] != nil {
			return fmt.Errorf("%s: name is used twice", field)
		}
		p, err := compileCredentialPolicy(cp)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		in.credPolicies[cp.Name] = p
		in.credPolicyOrder = append(in.credPolicyOrder, p)
	}
	return nil
}

func compileCredentialPolicy(cp CredentialPolicy) (*credPolicy, error) {
	days := cp.ValidityDays
	if days == 0 {
		days = DefaultValidityDays
	}
	if days < MinValidityDays || days > MaxValidityDays {
		return nil, fmt.Errorf("validityDays %d: want %d to %d (the certificate issuance preview's limits), or 0 for %d",
			cp.ValidityDays, MinValidityDays, MaxValidityDays, DefaultValidityDays)
	}
	if cp.CertificateFile != "" {
		return nil, fmt.Errorf("certificateFile %q was not read (use LoadConfig, or put the PEM text in certificate)", cp.CertificateFile)
	}
	if cp.KeyFile != "" {
		return nil, fmt.Errorf("keyFile %q was not read (use LoadConfig, or put the PEM text in key)", cp.KeyFile)
	}
	p := &credPolicy{name: cp.Name, days: days, validity: time.Duration(days) * 24 * time.Hour}
	if strings.TrimSpace(cp.Certificate) == "" {
		if strings.TrimSpace(cp.Key) != "" {
			return nil, errors.New("key is given without certificate (certificateFile): give both, or neither to have a CA generated")
		}
		if err := p.generate(); err != nil {
			return nil, err
		}
		return p, nil
	}
	if strings.TrimSpace(cp.Key) == "" {
		return nil, errors.New("certificate (certificateFile) is given without its key (keyFile)")
	}
	chain, err := certs.ParseCertsPEM([]byte(cp.Certificate))
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	ca := chain[0]
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, fmt.Errorf("certificate: %q is not a CA certificate (basic constraints CA:FALSE or missing)", ca.Subject.CommonName)
	}
	if ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("certificate: %q lacks the certificate-signing key usage", ca.Subject.CommonName)
	}
	// Each certificate must be issued by the next, and the last must be a
	// self-signed root: the answer's chain ends with the root.
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("certificate: %q is not signed by the next certificate in the file, %q: list the issuing CA first, then its issuers up to the root", chain[i].Subject.CommonName, chain[i+1].Subject.CommonName)
		}
	}
	last := chain[len(chain)-1]
	if err := last.CheckSignatureFrom(last); err != nil || !bytes.Equal(last.RawSubject, last.RawIssuer) {
		return nil, fmt.Errorf("certificate: the chain ends with %q, which is not a self-signed root: append the issuers up to and including the root", last.Subject.CommonName)
	}
	key, err := certs.ParseKeyPEM([]byte(cp.Key))
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P384() {
		return nil, fmt.Errorf("key: %s; the certificate issuance preview signs with ECDSA on NIST P-384 (SHA-384)", describeKey(key.Public()))
	}
	if !ek.PublicKey.Equal(ca.PublicKey) {
		return nil, fmt.Errorf("key does not match the CA certificate %q", ca.Subject.CommonName)
	}
	p.ca, p.key, p.chain = ca, ek, chain
	p.encodeChain()
	return p, nil
}

// generate makes a fresh P-384 root and issuing CA for the policy.
func (p *credPolicy) generate() error {
	now := time.Now()
	mk := func(cn string, parent *x509.Certificate, parentKey crypto.Signer, pathLen int) (*x509.Certificate, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generate the credential policy CA key: %w", err)
		}
		serial, err := randomSerial()
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial,
			Subject:               pkix.Name{CommonName: cn, Organization: []string{"dpssim"}},
			NotBefore:             now.Add(-issuanceClockSkew),
			NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			MaxPathLen:            pathLen,
			MaxPathLenZero:        pathLen == 0,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			SignatureAlgorithm:    x509.ECDSAWithSHA384,
		}
		signer := crypto.Signer(key)
		if parent == nil {
			parent = tmpl
		} else {
			signer = parentKey
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
		if err != nil {
			return nil, nil, fmt.Errorf("sign the credential policy CA: %w", err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, err
		}
		return c, key, nil
	}
	root, rootKey, err := mk("dpssim credential policy "+p.name+" root", nil, nil, 1)
	if err != nil {
		return err
	}
	ca, caKey, err := mk("dpssim credential policy "+p.name+" issuing CA", root, rootKey, 0)
	if err != nil {
		return err
	}
	p.ca, p.key, p.chain, p.generated = ca, caKey, []*x509.Certificate{ca, root}, true
	p.encodeChain()
	return nil
}

func (p *credPolicy) encodeChain() {
	p.chainB64 = make([]string, len(p.chain))
	for i, c := range p.chain {
		p.chainB64[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
}

// serialLimit bounds issued serial numbers to 128 bits.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	return serial, nil
}

// issue signs a client-authentication certificate for cn with the CSR's
// public key, valid from now for the policy's validity (never beyond the
// CA's), and returns it with the chain the answer carries: the leaf as
// base64 DER followed by the policy's chain.
func (p *credPolicy) issue(csr *x509.CertificateRequest, cn string, now time.Time) (*x509.Certificate, []string, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-issuanceClockSkew),
		NotAfter:              now.Add(p.validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		SignatureAlgorithm:    x509.ECDSAWithSHA384,
	}
	if tmpl.NotAfter.After(p.ca.NotAfter) {
		tmpl.NotAfter = p.ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, csr.PublicKey, p.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign the device certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	chain := make([]string, 0, 1+len(p.chainB64))
	chain = append(chain, base64.StdEncoding.EncodeToString(der))
	chain = append(chain, p.chainB64...)
	return leaf, chain, nil
}

// describeKey names a public key's type for error messages.
func describeKey(pub any) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("the key is RSA (%d bits)", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "the key is EC on " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "the key is Ed25519"
	}
	return fmt.Sprintf("the key is of an unsupported type (%T)", pub)
}

// csrError is a 400 about a register PUT's CSR.
func csrError(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "invalid csr: " + fmt.Sprintf(format, args...)}
}

// checkCSR decodes and checks a register PUT's csr (base64 DER PKCS#10)
// for registration id: the signature, the subject CN and the key (EC on
// NIST P-384 only, the preview's limit).
func checkCSR(b64, id string) (*x509.CertificateRequest, *apiError) {
	s := strings.TrimSpace(b64)
	if s == "" {
		return nil, csrError("it is empty; send the base64 DER of a PKCS#10 certificate signing request")
	}
	if strings.Contains(s, "-----BEGIN") {
		return nil, csrError("it is PEM; send the base64 DER of the PKCS#10 request without the PEM armour (the BEGIN/END lines)")
	}
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, csrError("it is not base64 (%v); send the base64 DER of a PKCS#10 certificate signing request", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, csrError("it is not a DER PKCS#10 certificate signing request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, csrError("its signature does not verify with its public key: %v", err)
	}
	if !strings.EqualFold(csr.Subject.CommonName, id) {
		return nil, csrError("its subject CN %q does not match the registration id %q; they must be equal", csr.Subject.CommonName, id)
	}
	if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P384() {
		return nil, csrError("%s; certificate issuance accepts only EC keys on NIST P-384 (secp384r1), signed with ECDSA SHA-384", describeKey(csr.PublicKey))
	}
	return csr, nil
}

// chainAnswer is an answer carrying an issued chain: which registration and
// operation it hands over.
type chainAnswer struct {
	rec *registration
	op  *operation
}

// withChain returns the final result of op for an answer: with the issued
// chain if op has one that was not handed over yet (or always, with
// Knobs.IssuedChainEveryPoll), which marks it handed over. s.mu held.
func withChain(op *operation, k *Knobs) (*dps.DeviceRegistrationResult, bool) {
	if len(op.issued) == 0 || (op.handedOver && !k.IssuedChainEveryPoll) {
		return op.final, false
	}
	st := *op.final
	st.IssuedCertificateChain = append([]string(nil), op.issued...)
	op.handedOver = true
	return &st, true
}

// handOverChain runs the faults that lose an answer carrying an issued
// chain, just before it is written: Faults.LoseIssuedAnswerRate (the status
// line, the headers and half of the JSON body, then the connection is
// closed: an answer the client cannot read, which no HTTP client retries
// transparently), then DropResponseRate (the connection is closed with no
// answer). A lost answer is counted and does not return; the chain stays
// handed over. It replaces maybeDropResponse for such answers.
func (c *call) handOverChain(k *Knobs, seq int, ca chainAnswer, status int, body any, location string) {
	f := &k.Faults
	lose := f.LoseIssuedAnswerRate > 0 && draw(f.Seed, c.kind, drawLoseIssued, c.regID, seq) < f.LoseIssuedAnswerRate
	drop := f.DropResponseRate > 0 && draw(f.Seed, c.kind, drawDropResponse, c.regID, seq) < f.DropResponseRate
	if !lose && !drop {
		return
	}
	c.s.mu.Lock()
	ca.rec.chainsLost++
	c.s.mu.Unlock()
	c.s.stats.chainsLost.Add(1)
	if !lose {
		c.drop()
	}
	c.countFault()
	b, _ := json.Marshal(body)
	if location != "" {
		c.w.Header().Set("Location", location)
	}
	c.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	c.write(status, b[:len(b)/2], -1)
	_ = http.NewResponseController(c.w).Flush()
	c.log(status, 0)
	panic(http.ErrAbortHandler)
}

// chainDelivered counts an answer carrying an issued chain as written.
func (c *call) chainDelivered(ca chainAnswer) {
	c.s.mu.Lock()
	ca.rec.chainsDelivered++
	c.s.mu.Unlock()
	c.s.stats.chainsDelivered.Add(1)
}

// issueFor issues op's certificate when its assignment becomes final.
// It returns false when issuing failed (the operation then fails). s.mu held.
func (s *Server) issueFor(rec *registration, op *operation) bool {
	leaf, chain, err := op.out.policy.issue(op.csr, op.cn, op.readyAt)
	if err != nil {
		return false
	}
	op.issued = chain
	rec.certsIssued++
	rec.lastIssued = leaf
	s.stats.certsIssued.Add(1)
	return true
}

// CredentialPolicyInfo describes a credential policy: its name, the
// validity of what it issues, and the CA chain issued certificates chain to
// (issuing CA first, root last), so tests can verify issued chains.
type CredentialPolicyInfo struct {
	// Name is the policy's name (enrollments' credentialPolicyName).
	Name string `json:"name"`
	// ValidityDays is the issued certificates' validity.
	ValidityDays int `json:"validityDays"`
	// Generated says the CA was generated at start (no certificateFile).
	Generated bool `json:"generated"`
	// IssuingCA is the issuing CA's subject; Root the root's.
	IssuingCA string `json:"issuingCa"`
	Root      string `json:"root"`
	// ChainPEM is the issuing CA and its issuers up to the root, as PEM,
	// issuing CA first.
	ChainPEM string `json:"chainPem"`
	// RootPEM is the root alone, as PEM: the trust anchor of issued chains.
	RootPEM string `json:"rootPem"`
	// IssuingCAPEM is the issuing CA alone, as PEM.
	IssuingCAPEM string `json:"issuingCaPem"`
}

// CredentialPolicies lists the credential policies in configuration order.
func (s *Server) CredentialPolicies() []CredentialPolicyInfo {
	s.init()
	out := make([]CredentialPolicyInfo, 0, len(s.in.credPolicyOrder))
	for _, p := range s.in.credPolicyOrder {
		out = append(out, p.info())
	}
	return out
}

// CredentialPolicy returns one credential policy's info.
func (s *Server) CredentialPolicy(name string) (CredentialPolicyInfo, bool) {
	s.init()
	p := s.in.credPolicies[name]
	if p == nil {
		return CredentialPolicyInfo{}, false
	}
	return p.info(), true
}

func (p *credPolicy) info() CredentialPolicyInfo {
	root := p.chain[len(p.chain)-1]
	return CredentialPolicyInfo{
		Name:         p.name,
		ValidityDays: p.days,
		Generated:    p.generated,
		IssuingCA:    p.ca.Subject.String(),
		Root:         root.Subject.String(),
		ChainPEM:     string(certs.CertPEM(p.chain...)),
		RootPEM:      string(certs.CertPEM(root)),
		IssuingCAPEM: string(certs.CertPEM(p.ca)),
	}
}

// credPolicyNames lists the policy names for error messages.
func (in *instance) credPolicyNames() string {
	if len(in.credPolicyOrder) == 0 {
		return "there are none (credentialPolicies is empty)"
	}
	names := make([]string, 0, len(in.credPolicyOrder))
	for _, p := range in.credPolicyOrder {
		names = append(names, fmt.Sprintf("%q", p.name))
	}
	sort.Strings(names)
	return "known: " + strings.Join(names, ", ")
}

// credentialPolicy resolves an enrollment's credentialPolicyName ("" is
// none).
func (in *instance) credentialPolicy(name string) (*credPolicy, error) {
	if name == "" {
		return nil, nil
	}
	p := in.credPolicies[name]
	if p == nil {
		return nil, fmt.Errorf("credentialPolicyName %q: no such credential policy; %s", name, in.credPolicyNames())
	}
	return p, nil
}

// issuedInfo fills a registration's issuance oracle. s.mu held.
func (rec *registration) issuedInfo(ri *RegistrationInfo) {
	ri.CertificatesIssued = rec.certsIssued
	ri.ChainsDelivered = rec.chainsDelivered
	ri.ChainsLost = rec.chainsLost
	if c := rec.lastIssued; c != nil {
		sum := sha256.Sum256(c.Raw)
		ri.LastIssuedSerial = strings.ToUpper(c.SerialNumber.Text(16))
		ri.LastIssuedSHA256 = strings.ToUpper(hex.EncodeToString(sum[:]))
		ri.LastIssuedNotAfter = c.NotAfter.UTC()
	}
}

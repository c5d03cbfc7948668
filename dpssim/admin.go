package dpssim

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// adminIndex is what GET /_sim/ answers.
const adminIndex = `dpssim inspection and admin API (no client certificate needed)

GET  /_sim/registrations                          every registration: status, hub, deviceId, request counts
GET  /_sim/registrations/{registrationId}         one registration
GET  /_sim/stats                                  totals: registers, conflicts, late effects, polls, lookups, throttled, faults, by HTTP status
GET  /_sim/knobs                                  run-time tunables: retryAfterSeconds, assignmentDelay, quotas, faults, lookupWhileAssigning, issuedChainEveryPoll
PUT  /_sim/knobs                                  change some of them, e.g. {"faults":{"registerErrorRate":0.2}}
POST /_sim/hold                                   hold register requests before they take effect
POST /_sim/release                                let held register requests proceed
GET  /_sim/certificates                           uploaded CA certificates, verified or not, with verification codes
POST /_sim/certificates/{name}/verificationCode   the code to put in a proof-of-possession certificate's CN
POST /_sim/certificates/{name}/verify             body: the verification certificate (PEM, or {"certificate": "..."})
GET  /_sim/enrollments                            every individual enrollment id: exists, creates, updates, deletes (service API)
GET  /_sim/enrollments/{registrationId}           one individual enrollment id
GET  /_sim/enrollmentGroups                       every enrollment group id: exists, creates, updates, deletes
GET  /_sim/enrollmentGroups/{enrollmentGroupId}   one enrollment group id
GET  /_sim/servicePolicies                        the service API's shared access policies: names and rights (no keys)
GET  /_sim/credential-policies                    credential policies: name, validity, CA chain PEM (issuing CA first, root last), root PEM
GET  /_sim/credential-policies/{name}             one credential policy

Per registration, "registers" counts the register PUTs that took effect at this server (started an
operation), whatever the client saw: on time or late (faults.lateEffectRate, counted when the effect
happens, even if the client had gone), with the answer lost (dropResponseRate) or unusable
(registerBadBodyRate). Refused PUTs (401, 409203, 429, injected 5xx, dropped before taking effect) do
not count, nor do records loaded from the config's "registrations" ("fromConfig": true).
"registerTimes" lists when each counted registration took effect, to count them per time window.

Certificates issued at registration (device api-version 2025-07-01-preview, a csr in the register PUT, an
enrollment naming a credential policy): per registration, "certificatesIssued" counts the certificates
issued (one per operation assigned with a csr), "chainsDelivered" the answers carrying the chain that
were written, "chainsLost" those lost instead (faults.loseIssuedAnswerRate, dropResponseRate), and
"lastIssuedSerial", "lastIssuedSha256Thumbprint" and "lastIssuedNotAfter" describe the last leaf issued.

The service API (enrollments, enrollmentGroups, registrations; SAS or bearer token) is served on this
port too. Per enrollment id, "creates" counts the creates that took effect (PUT, bulk create, bulk
update of a missing one), whatever the client saw; "updates" and "deletes" likewise. /_sim/stats has
the totals (serviceRequests, enrollmentCreates, serviceThrottled, ...).
`

// CertificateInfo describes an uploaded CA certificate.
type CertificateInfo struct {
	// Name is the certificate's name in the configuration.
	Name string `json:"name"`
	// Subject is the certificate's subject, e.g. "CN=My Root".
	Subject string `json:"subject"`
	// SHA256Thumbprint is the upper-case hex SHA-256 of the certificate.
	SHA256Thumbprint string `json:"sha256Thumbprint"`
	// Verified says proof of possession was done (in the file or at run time).
	Verified bool `json:"verified"`
	// VerificationCode is the CN a proof-of-possession certificate needs.
	VerificationCode string `json:"verificationCode"`
}

// Certificates lists the uploaded CA certificates in configuration order.
func (s *Server) Certificates() []CertificateInfo {
	s.init()
	out := make([]CertificateInfo, 0, len(s.in.cas))
	for _, ca := range s.in.cas {
		out = append(out, ca.info())
	}
	return out
}

func (ca *caCert) info() CertificateInfo {
	return CertificateInfo{
		Name:             ca.name,
		Subject:          ca.cert.Subject.String(),
		SHA256Thumbprint: certInfo(ca.cert).SHA256Thumbprint,
		Verified:         ca.verified.Load(),
		VerificationCode: ca.code,
	}
}

// CertificateVerificationCode returns the proof-of-possession code for the
// named CA certificate (DPS's "Generate Verification Code").
func (s *Server) CertificateVerificationCode(name string) (string, error) {
	s.init()
	ca := s.in.caByName[name]
	if ca == nil {
		return "", fmt.Errorf("no CA certificate named %q", name)
	}
	return ca.code, nil
}

// VerifyCertificate completes proof of possession for the named CA: vc must
// have the verification code as its CN and be signed by the CA's key. On
// success the CA is verified until the server stops.
func (s *Server) VerifyCertificate(name string, vc *x509.Certificate) error {
	s.init()
	ca := s.in.caByName[name]
	if ca == nil {
		return fmt.Errorf("no CA certificate named %q", name)
	}
	if err := verifyPossession(ca, vc, s.now()); err != nil {
		return fmt.Errorf("verify CA certificate %q: %w", name, err)
	}
	ca.verified.Store(true)
	return nil
}

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/_sim"), "/")
	get, post := r.Method == http.MethodGet, r.Method == http.MethodPost
	switch {
	case p == "" && get:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, adminIndex)
	case p == "/registrations" && get:
		adminJSON(w, http.StatusOK, s.Registrations())
	case strings.HasPrefix(p, "/registrations/") && get:
		id := strings.TrimPrefix(p, "/registrations/")
		if ri, ok := s.Registration(id); ok {
			adminJSON(w, http.StatusOK, ri)
		} else {
			adminError(w, http.StatusNotFound, fmt.Errorf("no registration %q", id))
		}
	case p == "/stats" && get:
		adminJSON(w, http.StatusOK, s.Stats())
	case p == "/knobs" && get:
		adminJSON(w, http.StatusOK, s.Knobs())
	case p == "/knobs" && (r.Method == http.MethodPut || r.Method == http.MethodPatch):
		// Decoding over the current values changes only the fields sent.
		k := s.Knobs()
		dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&k); err != nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf("knobs: %w", err))
			return
		}
		if err := s.SetKnobs(k); err != nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf("knobs: %w", err))
			return
		}
		adminJSON(w, http.StatusOK, s.Knobs())
	case p == "/hold" && post:
		s.Hold()
		adminJSON(w, http.StatusOK, map[string]any{"holding": true, "held": s.Held()})
	case p == "/release" && post:
		held := s.Held()
		s.Release()
		adminJSON(w, http.StatusOK, map[string]any{"holding": false, "released": held})
	case p == "/enrollments" && get:
		adminJSON(w, http.StatusOK, s.Enrollments())
	case strings.HasPrefix(p, "/enrollments/") && get:
		id := strings.TrimPrefix(p, "/enrollments/")
		if ei, ok := s.Enrollment(id); ok {
			adminJSON(w, http.StatusOK, ei)
		} else {
			adminError(w, http.StatusNotFound, fmt.Errorf("no individual enrollment %q was ever known", id))
		}
	case p == "/enrollmentGroups" && get:
		adminJSON(w, http.StatusOK, s.EnrollmentGroups())
	case strings.HasPrefix(p, "/enrollmentGroups/") && get:
		id := strings.TrimPrefix(p, "/enrollmentGroups/")
		if ei, ok := s.EnrollmentGroup(id); ok {
			adminJSON(w, http.StatusOK, ei)
		} else {
			adminError(w, http.StatusNotFound, fmt.Errorf("no enrollment group %q was ever known", id))
		}
	case p == "/servicePolicies" && get:
		type policyInfo struct {
			Name   string   `json:"name"`
			Rights []string `json:"rights"`
		}
		var out []policyInfo
		for _, sp := range s.ServicePolicies() {
			out = append(out, policyInfo{Name: sp.Name, Rights: sp.Rights})
		}
		adminJSON(w, http.StatusOK, out)
	case p == "/credential-policies" && get:
		adminJSON(w, http.StatusOK, s.CredentialPolicies())
	case strings.HasPrefix(p, "/credential-policies/") && get:
		name := strings.TrimPrefix(p, "/credential-policies/")
		if cp, ok := s.CredentialPolicy(name); ok {
			adminJSON(w, http.StatusOK, cp)
		} else {
			adminError(w, http.StatusNotFound, fmt.Errorf("no credential policy %q", name))
		}
	case p == "/certificates" && get:
		adminJSON(w, http.StatusOK, s.Certificates())
	case strings.HasPrefix(p, "/certificates/") && strings.HasSuffix(p, "/verificationCode") && (get || post):
		name := strings.TrimSuffix(strings.TrimPrefix(p, "/certificates/"), "/verificationCode")
		code, err := s.CertificateVerificationCode(name)
		if err != nil {
			adminError(w, http.StatusNotFound, err)
			return
		}
		adminJSON(w, http.StatusOK, map[string]string{"name": name, "verificationCode": code})
	case strings.HasPrefix(p, "/certificates/") && strings.HasSuffix(p, "/verify") && post:
		name := strings.TrimSuffix(strings.TrimPrefix(p, "/certificates/"), "/verify")
		if _, err := s.CertificateVerificationCode(name); err != nil {
			adminError(w, http.StatusNotFound, err)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		if err != nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf("reading the verification certificate: %w", err))
			return
		}
		vc, err := parseVerificationCert(body)
		if err != nil {
			adminError(w, http.StatusBadRequest, err)
			return
		}
		if err := s.VerifyCertificate(name, vc); err != nil {
			adminError(w, http.StatusBadRequest, err)
			return
		}
		adminJSON(w, http.StatusOK, s.in.caByName[name].info())
	default:
		adminError(w, http.StatusNotFound, fmt.Errorf("%s %s is not a simulator admin endpoint; GET /_sim/ lists them", r.Method, r.URL.Path))
	}
}

// parseVerificationCert accepts a PEM certificate, or the ARM request shape
// {"certificate": "<PEM or base64 DER>"}.
func parseVerificationCert(body []byte) (*x509.Certificate, error) {
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '{' {
		var v struct {
			Certificate string `json:"certificate"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, fmt.Errorf("verification request: %w", err)
		}
		body = bytes.TrimSpace([]byte(v.Certificate))
	}
	if len(body) == 0 {
		return nil, errors.New("no verification certificate in the request body")
	}
	if bytes.Contains(body, []byte("-----BEGIN")) {
		return parseOneCert(string(body))
	}
	der, err := base64.StdEncoding.DecodeString(string(body))
	if err != nil {
		return nil, errors.New("verification certificate is neither PEM nor base64 DER")
	}
	return x509.ParseCertificate(der)
}

func adminJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		adminError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func adminError(w http.ResponseWriter, status int, err error) {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

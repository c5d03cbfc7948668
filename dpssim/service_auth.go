package dpssim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Service API authentication: shared access signatures of the instance's
// policies (sr = the host name, skn = the policy), or bearer tokens of a
// trusted issuer standing in for Microsoft Entra ID. Every failure is 401 +
// 401002, missing rights included: DPS's troubleshooting table has no 403.

// Microsoft Entra roles of the DPS data plane, as the "roles" claim of a
// bearer token names them.
const (
	// RoleDataContributor grants every service API right.
	RoleDataContributor = "Device Provisioning Service Data Contributor"
	// RoleDataReader grants EnrollmentRead and RegistrationStatusRead.
	RoleDataReader = "Device Provisioning Service Data Reader"
)

var roleRights = map[string][]string{
	RoleDataContributor: {RightEnrollmentRead, RightEnrollmentWrite, RightRegistrationStatusRead, RightRegistrationStatusWrite},
	RoleDataReader:      {RightEnrollmentRead, RightRegistrationStatusRead},
}

var knownRights = map[string]bool{
	RightServiceConfig: true, RightEnrollmentRead: true, RightEnrollmentWrite: true,
	RightRegistrationStatusRead: true, RightRegistrationStatusWrite: true,
}

// policy is a compiled ServicePolicy.
type policy struct {
	name   string
	keys   [][]byte
	rights map[string]bool
	spec   ServicePolicy
}

// entraIssuer is a compiled EntraIssuer.
type entraIssuer struct {
	issuer, audience string
	ec               *ecdsa.PublicKey
	rsa              *rsa.PublicKey
	hmac             []byte
}

// compileServiceAuth validates the policies and issuers; with no policy it
// makes DefaultServicePolicy with a random key.
func (in *instance) compileServiceAuth(cfg Config) error {
	in.serviceHost = strings.TrimSpace(cfg.ServiceHostName)
	if strings.ContainsAny(in.serviceHost, "/ ") {
		return fmt.Errorf("serviceHostName %q is not a host name", cfg.ServiceHostName)
	}
	in.policyByName = map[string]*policy{}
	specs := cfg.ServicePolicies
	if len(specs) == 0 {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		specs = []ServicePolicy{{Name: DefaultServicePolicy, PrimaryKey: base64.StdEncoding.EncodeToString(key),
			Rights: []string{RightServiceConfig, RightEnrollmentRead, RightEnrollmentWrite, RightRegistrationStatusRead, RightRegistrationStatusWrite}}}
	}
	for i, sp := range specs {
		field := fmt.Sprintf("servicePolicies[%d] (%s)", i, sp.Name)
		if sp.Name == "" || strings.ContainsAny(sp.Name, "&= ;") {
			return fmt.Errorf("servicePolicies[%d]: name %q: want a non-empty name without '&', '=', ';' or spaces", i, sp.Name)
		}
		if in.policyByName[strings.ToLower(sp.Name)] != nil {
			return fmt.Errorf("%s: name is used twice", field)
		}
		keys, err := decodeKeys(SymmetricKeyAttestation{PrimaryKey: sp.PrimaryKey, SecondaryKey: sp.SecondaryKey})
		if err != nil {
			return fmt.Errorf("%s: %s", field, strings.ReplaceAll(err.Error(), "attestation.symmetricKey.", ""))
		}
		p := &policy{name: sp.Name, keys: keys, rights: map[string]bool{}, spec: sp}
		if len(sp.Rights) == 0 {
			return fmt.Errorf("%s: rights is empty; want some of EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite, ServiceConfig", field)
		}
		for _, r := range sp.Rights {
			if !knownRights[r] {
				return fmt.Errorf("%s: right %q: want EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite or ServiceConfig", field, r)
			}
			p.rights[r] = true
		}
		in.policies = append(in.policies, p)
		in.policyByName[strings.ToLower(sp.Name)] = p
	}
	for i, ei := range cfg.EntraIssuers {
		field := fmt.Sprintf("entraIssuers[%d] (%s)", i, ei.Issuer)
		iss, err := compileIssuer(ei)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		in.issuers = append(in.issuers, iss)
	}
	return nil
}

func compileIssuer(ei EntraIssuer) (*entraIssuer, error) {
	if ei.Issuer == "" {
		return nil, errors.New("issuer is required")
	}
	if ei.PublicKeyFile != "" {
		return nil, fmt.Errorf("publicKeyFile %q was not read (use LoadConfig, or put the PEM text in publicKeyPEM)", ei.PublicKeyFile)
	}
	iss := &entraIssuer{issuer: ei.Issuer, audience: ei.Audience}
	if iss.audience == "" {
		iss.audience = DefaultEntraAudience
	}
	switch {
	case ei.PublicKeyPEM != "" && ei.HMACKey != "":
		return nil, errors.New("set publicKeyPEM or hmacKey, not both")
	case ei.HMACKey != "":
		k, err := base64.StdEncoding.DecodeString(ei.HMACKey)
		if err != nil || len(k) < 16 {
			return nil, errors.New("hmacKey: want base64 of at least 16 bytes")
		}
		iss.hmac = k
	case ei.PublicKeyPEM != "":
		block, _ := pem.Decode([]byte(ei.PublicKeyPEM))
		if block == nil {
			return nil, errors.New("publicKeyPEM: no PEM block")
		}
		var pub any
		switch block.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("publicKeyPEM: %w", err)
			}
			pub = c.PublicKey
		default:
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("publicKeyPEM: %w", err)
			}
			pub = k
		}
		switch k := pub.(type) {
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() {
				return nil, errors.New("publicKeyPEM: ES256 needs a P-256 key")
			}
			iss.ec = k
		case *rsa.PublicKey:
			iss.rsa = k
		default:
			return nil, fmt.Errorf("publicKeyPEM: %T keys are not supported; use ECDSA P-256 (ES256) or RSA (RS256)", pub)
		}
	default:
		return nil, errors.New("set publicKeyPEM (ES256 or RS256) or hmacKey (HS256)")
	}
	return iss, nil
}

// principal is who a service request authenticated as.
type principal struct {
	name   string // `policy "x"` or `token of "issuer"`, for messages
	rights map[string]bool
}

// authService checks a service request's Authorization header. Messages say
// why, but never contain keys, signatures or tokens.
func (s *Server) authService(r *http.Request, now time.Time) (principal, *apiError) {
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if h == "" {
		return principal{}, unauthorized("no credentials: send Authorization: SharedAccessSignature sr=<host>&sig=...&se=...&skn=<policy> or Authorization: Bearer <token>")
	}
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return s.authBearer(strings.TrimSpace(h[7:]), now)
	}
	t, err := parseSAS(h)
	if err != nil {
		return principal{}, unauthorized("%v", err)
	}
	if !s.hostMatches(t.sr, r.Host) {
		want := hostOnly(r.Host)
		if s.in.serviceHost != "" {
			want += " or " + s.in.serviceHost
		}
		return principal{}, unauthorized("SAS token is scoped to %q, not this service host (%s)", t.sr, want)
	}
	if t.expiry <= now.Unix() {
		return principal{}, unauthorized("SAS token expired at %s", time.Unix(t.expiry, 0).UTC().Format(time.RFC3339))
	}
	skn, err := url.QueryUnescape(t.skn)
	if err != nil || skn == "" {
		return principal{}, unauthorized("SAS token has no skn: service tokens name a shared access policy, e.g. skn=%s", DefaultServicePolicy)
	}
	p := s.in.policyByName[strings.ToLower(skn)]
	if p == nil {
		return principal{}, unauthorized("SAS token skn %q names no shared access policy of this instance", skn)
	}
	if !t.signedByAny(p.keys) {
		return principal{}, unauthorized("SAS signature does not match shared access policy %q's primary or secondary key", p.name)
	}
	return principal{name: fmt.Sprintf("shared access policy %q", p.name), rights: p.rights}, nil
}

// hostMatches compares a token's sr with the request's host (with or
// without its port) and the configured service host name, ignoring case.
func (s *Server) hostMatches(sr, requestHost string) bool {
	for _, h := range []string{requestHost, hostOnly(requestHost), s.in.serviceHost} {
		if h != "" && strings.EqualFold(sr, h) {
			return true
		}
	}
	return false
}

// hostOnly drops the port from a Host header.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// jwtClaims are the claims the simulator reads from a bearer token.
type jwtClaims struct {
	Issuer   string          `json:"iss"`
	Audience json.RawMessage `json:"aud"`
	Expiry   *float64        `json:"exp"`
	NotBef   *float64        `json:"nbf"`
	Roles    []string        `json:"roles"`
}

func (s *Server) authBearer(token string, now time.Time) (principal, *apiError) {
	if len(s.in.issuers) == 0 {
		return principal{}, unauthorized("bearer tokens are not accepted: this simulator trusts no token issuer (configure entraIssuers)")
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return principal{}, unauthorized("bearer token is not a JWT (header.claims.signature)")
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	var claims jwtClaims
	for i, v := range []any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[i], "="))
		if err != nil {
			return principal{}, unauthorized("bearer token part %d is not base64url", i+1)
		}
		if err := json.Unmarshal(b, v); err != nil {
			return principal{}, unauthorized("bearer token part %d is not JSON", i+1)
		}
	}
	var iss *entraIssuer
	for _, c := range s.in.issuers {
		if c.issuer == claims.Issuer {
			iss = c
		}
	}
	if iss == nil {
		return principal{}, unauthorized("bearer token issuer %q is not trusted", claims.Issuer)
	}
	sig, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[2], "="))
	if err != nil {
		return principal{}, unauthorized("bearer token signature is not base64url")
	}
	if err := iss.verify(hdr.Alg, parts[0]+"."+parts[1], sig); err != nil {
		return principal{}, unauthorized("bearer token: %v", err)
	}
	if claims.Expiry == nil {
		return principal{}, unauthorized("bearer token has no exp")
	}
	if exp := time.Unix(int64(*claims.Expiry), 0); !now.Before(exp) {
		return principal{}, unauthorized("bearer token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	if claims.NotBef != nil && now.Before(time.Unix(int64(*claims.NotBef), 0)) {
		return principal{}, unauthorized("bearer token is not valid before %s", time.Unix(int64(*claims.NotBef), 0).UTC().Format(time.RFC3339))
	}
	var auds []string
	if err := json.Unmarshal(claims.Audience, &auds); err != nil {
		var one string
		if json.Unmarshal(claims.Audience, &one) != nil {
			return principal{}, unauthorized("bearer token has no aud")
		}
		auds = []string{one}
	}
	audOK := false
	for _, a := range auds {
		audOK = audOK || strings.TrimSuffix(a, "/") == strings.TrimSuffix(iss.audience, "/")
	}
	if !audOK {
		return principal{}, unauthorized("bearer token audience %v is not %q", auds, iss.audience)
	}
	rights := map[string]bool{}
	for _, role := range claims.Roles {
		for _, r := range roleRights[role] {
			rights[r] = true
		}
	}
	if len(rights) == 0 {
		return principal{}, unauthorized("bearer token has no DPS data-plane role (roles %q or %q)", RoleDataContributor, RoleDataReader)
	}
	return principal{name: fmt.Sprintf("the token of %q", iss.issuer), rights: rights}, nil
}

// verify checks a JWT signature; the algorithm must fit the issuer's key.
func (iss *entraIssuer) verify(alg, signed string, sig []byte) error {
	sum := sha256.Sum256([]byte(signed))
	switch {
	case alg == "ES256" && iss.ec != nil:
		if len(sig) != 64 {
			return errors.New("ES256 signature is not 64 bytes")
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(iss.ec, sum[:], r, s) {
			return errors.New("signature does not verify with the issuer's key")
		}
	case alg == "RS256" && iss.rsa != nil:
		if rsa.VerifyPKCS1v15(iss.rsa, crypto.SHA256, sum[:], sig) != nil {
			return errors.New("signature does not verify with the issuer's key")
		}
	case alg == "HS256" && iss.hmac != nil:
		mac := hmac.New(sha256.New, iss.hmac)
		mac.Write([]byte(signed))
		if !hmac.Equal(mac.Sum(nil), sig) {
			return errors.New("signature does not verify with the issuer's key")
		}
	default:
		return fmt.Errorf("algorithm %q does not fit the issuer's key", alg)
	}
	return nil
}

// ServicePolicies returns the service API's shared access policies, keys
// included (the generated DefaultServicePolicy when the config names none).
func (s *Server) ServicePolicies() []ServicePolicy {
	s.init()
	out := make([]ServicePolicy, 0, len(s.in.policies))
	for _, p := range s.in.policies {
		sp := p.spec
		sp.Rights = append([]string(nil), sp.Rights...)
		out = append(out, sp)
	}
	return out
}

// ServiceConnectionString returns "HostName=...;SharedAccessKeyName=...;
// SharedAccessKey=..." for a policy ("" means DefaultServicePolicy if there
// is one, else the first). hostName is what clients connect to and sign
// for: the simulator's host:port, or the configured ServiceHostName.
func (s *Server) ServiceConnectionString(hostName, policyName string) (string, error) {
	s.init()
	p, err := s.findPolicy(policyName)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", hostName, p.name, p.spec.PrimaryKey), nil
}

func (s *Server) findPolicy(name string) (*policy, error) {
	if name == "" {
		if p := s.in.policyByName[DefaultServicePolicy]; p != nil {
			return p, nil
		}
		return s.in.policies[0], nil
	}
	p := s.in.policyByName[strings.ToLower(name)]
	if p == nil {
		names := make([]string, 0, len(s.in.policies))
		for _, p := range s.in.policies {
			names = append(names, p.name)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("no shared access policy %q (have %s)", name, strings.Join(names, ", "))
	}
	return p, nil
}

// ServiceSAS returns a service API Authorization header value:
// "SharedAccessSignature sr={host}&sig={signature}&se={expiry}&skn={policy}",
// the signature being base64 HMAC-SHA256, keyed with the base64-decoded
// key, of the URL-encoded host, a newline and the expiry in Unix seconds.
func ServiceSAS(host, policyName, key string, expiry time.Time) (string, error) {
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return "", errors.New("service SAS: the key is not valid base64")
	}
	sr := url.QueryEscape(host)
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return fmt.Sprintf("SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s", sr, url.QueryEscape(sig), se, url.QueryEscape(policyName)), nil
}

// TestIssuer is a token issuer for tests: an ECDSA P-256 key that signs
// ES256 bearer tokens the simulator accepts once EntraIssuer() is in
// Config.EntraIssuers. It stands in for Microsoft Entra ID offline.
type TestIssuer struct {
	// Issuer is the iss claim (default "https://test-issuer.local").
	Issuer string
	// Audience is the aud claim (default DefaultEntraAudience).
	Audience string
	// Now returns the time tokens are issued at; nil means time.Now.
	Now func() time.Time

	key *ecdsa.PrivateKey
}

// DefaultTestIssuer is the iss of a TestIssuer.
const DefaultTestIssuer = "https://test-issuer.local"

// NewTestIssuer makes an issuer with a new key.
func NewTestIssuer() (*TestIssuer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &TestIssuer{Issuer: DefaultTestIssuer, Audience: DefaultEntraAudience, key: k}, nil
}

// EntraIssuer is the configuration entry that trusts this issuer.
func (ti *TestIssuer) EntraIssuer() EntraIssuer {
	der, err := x509.MarshalPKIXPublicKey(&ti.key.PublicKey)
	if err != nil {
		panic("dpssim: marshal a P-256 public key: " + err.Error())
	}
	return EntraIssuer{Issuer: ti.Issuer, Audience: ti.Audience,
		PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
}

// Token mints a bearer token (the JWT, without "Bearer ") with the given
// roles (RoleDataContributor, RoleDataReader) valid for ttl; a negative ttl
// makes an expired token.
func (ti *TestIssuer) Token(roles []string, ttl time.Duration) (string, error) {
	now := time.Now()
	if ti.Now != nil {
		now = ti.Now()
	}
	claims := map[string]any{
		"iss":   ti.Issuer,
		"aud":   ti.Audience,
		"iat":   now.Unix(),
		"nbf":   now.Add(-time.Minute).Unix(),
		"exp":   now.Add(ttl).Unix(),
		"sub":   "dpssim-test-principal",
		"oid":   "00000000-0000-0000-0000-000000000001",
		"roles": roles,
	}
	if ttl < 0 {
		claims["nbf"] = now.Add(ttl - time.Minute).Unix()
	}
	return ti.TokenWithClaims(claims)
}

// TokenWithClaims signs arbitrary claims, for tests of refused tokens
// (another audience or issuer, no roles).
func (ti *TestIssuer) TokenWithClaims(claims map[string]any) (string, error) {
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`))
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signed := hdr + "." + base64.RawURLEncoding.EncodeToString(body)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, ti.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

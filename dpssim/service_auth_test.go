package dpssim

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// TestServiceSASAuth: service SAS tokens are checked like DPS checks them
// (host, expiry, policy, signature) and each operation needs its right.
func TestServiceSASAuth(t *testing.T) {
	cfg := svcConfig()
	cfg.ServiceHostName = "mydps.azure-devices-provisioning.net"
	cfg.ServicePolicies[1].SecondaryKey = b64(keyA[:16])
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	owner := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	reader := newSvcClient(t, run, "enrollmentread", readerKey)
	regs := newSvcClient(t, run, "registrations", regKey)
	if r := owner.do("PUT", "/enrollments/a", symEnrollment("a", ""), nil); r.status != 200 {
		t.Fatalf("owner create = %s", r)
	}

	// A read-only policy reads but cannot write; the message names the right.
	if r := reader.do("GET", "/enrollments/a", nil, nil); r.status != 200 {
		t.Errorf("reader get = %s", r)
	}
	if r := reader.do("POST", "/enrollments/query", map[string]string{"query": "*"}, nil); r.status != 200 {
		t.Errorf("reader query = %s", r)
	}
	for _, w := range []struct{ method, path string }{{"PUT", "/enrollments/b"}, {"DELETE", "/enrollments/a"}, {"POST", "/enrollments"}, {"DELETE", "/registrations/a"}} {
		var body any
		if w.method != "DELETE" {
			body = map[string]any{"mode": "create", "enrollments": []any{symEnrollment("b", "")}, "registrationId": "b",
				"attestation": map[string]any{"type": "symmetricKey"}}
		}
		e := wantError(t, reader.do(w.method, w.path, body, nil), 401, dps.CodeInvalidCredentials)
		if !strings.Contains(e.Message, "does not grant") || !strings.Contains(e.Message, "enrollmentread") {
			t.Errorf("%s %s by the reader: %q", w.method, w.path, e.Message)
		}
	}
	if ei, _ := sim.Enrollment("b"); ei.Creates != 0 {
		t.Errorf("the reader created b: %+v", ei)
	}
	if r := owner.do("GET", "/enrollments/a", nil, nil); r.status != 200 {
		t.Errorf("a was deleted by the reader: %s", r)
	}
	// The registration policy has no enrollment rights.
	if e := wantError(t, regs.do("GET", "/enrollments/a", nil, nil), 401, dps.CodeInvalidCredentials); !strings.Contains(e.Message, RightEnrollmentRead) {
		t.Errorf("registrations policy reading an enrollment: %q", e.Message)
	}
	if r := regs.do("GET", "/registrations/a", nil, nil); r.status != 404 {
		t.Errorf("registrations policy reading a registration = %s, want 404 (allowed, none)", r)
	}

	sign := func(host, skn, key string, expiry time.Time) string {
		tok, err := ServiceSAS(host, skn, key, expiry)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hour := time.Now().Add(time.Hour)
	hostNoPort := strings.Split(owner.host, ":")[0]
	for _, tc := range []struct {
		name, auth, want string
	}{
		{"no credentials", "", "no credentials"},
		{"expired", sign(owner.host, DefaultServicePolicy, ownerKey, time.Now().Add(-time.Minute)), "expired"},
		{"wrong host", sign("otherdps.azure-devices-provisioning.net", DefaultServicePolicy, ownerKey, hour), "scoped to"},
		{"unknown policy", sign(owner.host, "iothubowner", ownerKey, hour), "names no shared access policy"},
		{"wrong key", sign(owner.host, DefaultServicePolicy, readerKey, hour), "does not match"},
		{"no skn", strings.Split(sign(owner.host, DefaultServicePolicy, ownerKey, hour), "&skn=")[0], "no skn"},
		{"device token", dps.SASToken(keyA, testScope, "a", hour), "scoped to"},
		{"garbage", "Basic dXNlcjpwYXNz", "not a SharedAccessSignature"},
	} {
		c := owner.withAuth(tc.auth)
		if tc.auth == "" {
			c.auth = nil
		}
		e := wantError(t, c.do("GET", "/enrollments/a", nil, nil), 401, dps.CodeInvalidCredentials)
		if !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s: message %q, want it to contain %q", tc.name, e.Message, tc.want)
		}
		if _, sig, ok := strings.Cut(tc.auth, "sig="); strings.Contains(e.Message, ownerKey) || ok && strings.Contains(e.Message, strings.Split(sig, "&")[0]) {
			t.Errorf("%s: the message shows key material: %q", tc.name, e.Message)
		}
	}
	// Accepted: the host without its port, the configured service host
	// name in any case, the secondary key.
	for name, auth := range map[string]string{
		"host without port":  sign(hostNoPort, DefaultServicePolicy, ownerKey, hour),
		"service host name":  sign("MyDPS.azure-devices-provisioning.net", DefaultServicePolicy, ownerKey, hour),
		"secondary key":      sign(owner.host, "enrollmentread", b64(keyA[:16]), hour),
		"policy name's case": sign(owner.host, "ProvisioningServiceOwner", ownerKey, hour),
	} {
		if r := owner.withAuth(auth).do("GET", "/enrollments/a", nil, nil); r.status != 200 {
			t.Errorf("%s: %s", name, r)
		}
	}
	if st := sim.Stats(); st.ServiceByStatus[401] == 0 || st.ServiceByStatus[200] == 0 || st.ByStatus[401] != 0 {
		t.Errorf("service answers by status %v, device %v", st.ServiceByStatus, st.ByStatus)
	}
}

// TestServiceBearerAuth: bearer tokens of a trusted issuer are accepted
// with the rights of their roles; others are refused.
func TestServiceBearerAuth(t *testing.T) {
	ti, err := NewTestIssuer()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewTestIssuer()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	hmacKey := []byte("a test-only shared HMAC key, 32b")
	cfg := svcConfig()
	cfg.EntraIssuers = []EntraIssuer{
		ti.EntraIssuer(),
		{Issuer: "https://rsa-issuer.local", PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
		{Issuer: "https://hmac-issuer.local", Audience: "https://azure-devices-provisioning.net/", HMACKey: base64.StdEncoding.EncodeToString(hmacKey)},
	}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newSvcClient(t, run, "", "")
	bearer := func(tok string, err error) *svcClient {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return c.withAuth("Bearer " + tok)
	}

	contributor := bearer(ti.Token([]string{RoleDataContributor}, time.Hour))
	if r := contributor.do("PUT", "/enrollments/e-1", symEnrollment("e-1", ""), nil); r.status != 200 {
		t.Fatalf("contributor create = %s", r)
	}
	reader := bearer(ti.Token([]string{RoleDataReader}, time.Hour))
	if r := reader.do("GET", "/enrollments/e-1", nil, nil); r.status != 200 {
		t.Errorf("reader get = %s", r)
	}
	if e := wantError(t, reader.do("DELETE", "/enrollments/e-1", nil, nil), 401, dps.CodeInvalidCredentials); !strings.Contains(e.Message, RightEnrollmentWrite) {
		t.Errorf("reader delete: %q", e.Message)
	}

	// Other algorithms with their own keys.
	jwt := func(alg string, claims map[string]any, sign func([]byte) []byte) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"` + alg + `","typ":"JWT"}`))
		b, _ := json.Marshal(claims)
		signed := h + "." + base64.RawURLEncoding.EncodeToString(b)
		return signed + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(signed)))
	}
	claims := func(iss, aud string) map[string]any {
		return map[string]any{"iss": iss, "aud": aud, "exp": time.Now().Add(time.Hour).Unix(), "roles": []string{RoleDataReader}}
	}
	rs256 := func(b []byte) []byte {
		sum := sha256.Sum256(b)
		sig, err := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	hs256 := func(b []byte) []byte {
		m := hmac.New(sha256.New, hmacKey)
		m.Write(b)
		return m.Sum(nil)
	}
	if r := c.withAuth("Bearer "+jwt("RS256", claims("https://rsa-issuer.local", DefaultEntraAudience), rs256)).do("GET", "/enrollments/e-1", nil, nil); r.status != 200 {
		t.Errorf("RS256 token = %s", r)
	}
	if r := c.withAuth("Bearer "+jwt("HS256", claims("https://hmac-issuer.local", DefaultEntraAudience), hs256)).do("GET", "/enrollments/e-1", nil, nil); r.status != 200 {
		t.Errorf("HS256 token = %s", r)
	}

	now := time.Now()
	for _, tc := range []struct {
		name string
		c    *svcClient
		want string
	}{
		{"expired", bearer(ti.Token([]string{RoleDataContributor}, -time.Minute)), "expired"},
		{"untrusted issuer", bearer(other.TokenWithClaims(map[string]any{"iss": "https://elsewhere", "aud": DefaultEntraAudience, "exp": now.Add(time.Hour).Unix(), "roles": []string{RoleDataReader}})), "not trusted"},
		{"same issuer name, other key", bearer(other.Token([]string{RoleDataReader}, time.Hour)), "does not verify"},
		{"wrong audience", bearer(ti.TokenWithClaims(map[string]any{"iss": ti.Issuer, "aud": "https://management.azure.com", "exp": now.Add(time.Hour).Unix(), "roles": []string{RoleDataReader}})), "audience"},
		{"no role", bearer(ti.Token(nil, time.Hour)), "no DPS data-plane role"},
		{"other role", bearer(ti.Token([]string{"IoT Hub Data Contributor"}, time.Hour)), "no DPS data-plane role"},
		{"no exp", bearer(ti.TokenWithClaims(map[string]any{"iss": ti.Issuer, "aud": DefaultEntraAudience, "roles": []string{RoleDataReader}})), "no exp"},
		{"not yet valid", bearer(ti.TokenWithClaims(map[string]any{"iss": ti.Issuer, "aud": DefaultEntraAudience, "exp": now.Add(2 * time.Hour).Unix(), "nbf": now.Add(time.Hour).Unix(), "roles": []string{RoleDataReader}})), "not valid before"},
		{"algorithm confusion", c.withAuth("Bearer " + jwt("HS256", claims(ti.Issuer, DefaultEntraAudience), hs256)), "does not fit"},
		{"not a JWT", c.withAuth("Bearer abc.def"), "not a JWT"},
	} {
		e := wantError(t, tc.c.do("GET", "/enrollments/e-1", nil, nil), 401, dps.CodeInvalidCredentials)
		if !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s: %q, want it to contain %q", tc.name, e.Message, tc.want)
		}
	}
	// A tampered token (claims changed, signature kept) is refused.
	tok, _ := ti.Token([]string{RoleDataReader}, time.Hour)
	parts := strings.Split(tok, ".")
	forged, _ := json.Marshal(map[string]any{"iss": ti.Issuer, "aud": DefaultEntraAudience, "exp": now.Add(time.Hour).Unix(), "roles": []string{RoleDataContributor}})
	parts[1] = base64.RawURLEncoding.EncodeToString(forged)
	wantError(t, c.withAuth("Bearer "+strings.Join(parts, ".")).do("DELETE", "/enrollments/e-1", nil, nil), 401, dps.CodeInvalidCredentials)

	// Without trusted issuers bearer tokens are refused.
	plain := mustStart(t, mustNew(t, svcConfig()))
	pc := newSvcClient(t, plain, "", "").withAuth("Bearer " + tok)
	if e := wantError(t, pc.do("GET", "/enrollments/e-1", nil, nil), 401, dps.CodeInvalidCredentials); !strings.Contains(e.Message, "trusts no token issuer") {
		t.Errorf("no issuers: %q", e.Message)
	}
}

// TestServiceQuota: the service operations quota answers 429 with
// Retry-After; a bulk call is one operation; refused credentials and
// device requests do not use it.
func TestServiceQuota(t *testing.T) {
	cfg := svcConfig()
	cfg.Quotas.ServiceOperationsPerMinute = 3
	cfg.Individual = []IndividualEnrollment{{RegistrationID: "dev-q", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	var ten []any
	for i := range 10 {
		ten = append(ten, symEnrollment("bulk-"+strconv.Itoa(i), ""))
	}
	if r := c.do("POST", "/enrollments", map[string]any{"mode": "create", "enrollments": ten}, nil); r.status != 200 {
		t.Fatalf("bulk = %s", r)
	}
	// Refused credentials do not count.
	c.withAuth("SharedAccessSignature sr=x&sig=eA%3D%3D&se=1&skn=x").do("GET", "/enrollments/bulk-1", nil, nil)
	// Device requests have their own quota.
	dev := newRawDevice(t, run, "dev-q", nil, keyA)
	if r := dev.registerAndWait(); r.status != 200 {
		t.Fatalf("device = %d %s", r.status, r.body)
	}
	for i := range 2 {
		if r := c.do("GET", "/enrollments/bulk-1", nil, nil); r.status != 200 {
			t.Fatalf("request %d = %s", i+2, r)
		}
	}
	r := c.do("GET", "/enrollments/bulk-1", nil, nil)
	wantError(t, r, 429, dps.CodeThrottled)
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q, want 1 to 60 seconds", r.header.Get("Retry-After"))
	}
	st := sim.Stats()
	if st.ServiceThrottled != 1 || st.Throttled != 0 || st.EnrollmentCreates != 10 {
		t.Errorf("stats %+v: want 1 service 429, no device 429, 10 creates", st)
	}
	// The quota is a knob.
	q := sim.Knobs().Quotas
	q.ServiceOperationsPerMinute = -1
	if err := sim.SetQuotas(q); err != nil {
		t.Fatal(err)
	}
	if r := c.do("GET", "/enrollments/bulk-1", nil, nil); r.status != 200 {
		t.Errorf("after lifting the quota: %s", r)
	}
}

// TestServiceFaults: injected service errors have no effect; a lost answer
// after the effect leaves the enrollment created exactly once, which a
// second create then reports as a conflict.
func TestServiceFaults(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	if err := sim.SetFaults(Faults{Seed: 3, ServiceErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		r := c.do("PUT", "/enrollments/f-1", symEnrollment("f-1", ""), nil)
		if r.status != 500 && r.status != 503 {
			t.Fatalf("attempt %d = %s, want 500 or 503", i, r)
		}
	}
	if _, ok := sim.Enrollment("f-1"); ok {
		t.Error("an injected error created the enrollment")
	}
	if err := sim.SetFaults(Faults{Seed: 3, DropResponseRate: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.try("PUT", "/enrollments/f-1", symEnrollment("f-1", ""), nil); err == nil {
		t.Fatal("the answer was not dropped")
	}
	if err := sim.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	wantError(t, c.do("PUT", "/enrollments/f-1", symEnrollment("f-1", ""), nil), 409, codeEnrollmentExists)
	if ei, _ := sim.Enrollment("f-1"); ei.Creates != 1 || !ei.Exists {
		t.Errorf("f-1 = %+v, want created exactly once", ei)
	}
	st := sim.Stats()
	if st.ServiceFaults != 5 || st.ServiceDropped != 1 || st.Faults != 0 {
		t.Errorf("stats %+v: want 5 service faults (1 dropped), no device faults", st)
	}
}

// TestServiceAuthNeverShowsSecrets: no answer echoes a key or a token.
func TestServiceAuthNeverShowsSecrets(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, readerKey)
	r := c.do("GET", "/enrollments/a", nil, nil)
	tok := c.auth()
	if strings.Contains(string(r.body), readerKey) || strings.Contains(string(r.body), strings.SplitN(strings.SplitN(tok, "sig=", 2)[1], "&", 2)[0]) {
		t.Errorf("answer shows key material: %s", r.body)
	}
	if r.status != http.StatusUnauthorized {
		t.Errorf("status %d", r.status)
	}
}

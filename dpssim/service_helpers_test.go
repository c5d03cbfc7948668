package dpssim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// Service API test policies: an owner with every right, a read-only one
// and one that may only read and delete registration states.
var (
	ownerKey  = b64(keyA)
	readerKey = b64(keyB)
	regKey    = b64(groupKey[:32])
)

func servicePolicies() []ServicePolicy {
	return []ServicePolicy{
		{Name: DefaultServicePolicy, PrimaryKey: ownerKey, Rights: []string{RightServiceConfig, RightEnrollmentRead, RightEnrollmentWrite, RightRegistrationStatusRead, RightRegistrationStatusWrite}},
		{Name: "enrollmentread", PrimaryKey: readerKey, Rights: []string{RightEnrollmentRead, RightRegistrationStatusRead}},
		{Name: "registrations", PrimaryKey: regKey, Rights: []string{RightRegistrationStatusRead, RightRegistrationStatusWrite}},
	}
}

// svcConfig is a configuration with the test policies, no enrollments,
// assignment at the first poll and no quota in the way.
func svcConfig() Config {
	return Config{
		IDScope:           testScope,
		RetryAfterSeconds: new(int),
		ServicePolicies:   servicePolicies(),
		Quotas:            Quotas{ServiceOperationsPerMinute: -1, RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	}
}

// svcClient calls the service API over HTTPS with one credential.
type svcClient struct {
	tb     testing.TB
	base   string
	host   string // what SAS tokens are scoped to
	client *http.Client
	auth   func() string // Authorization header value; nil = none
}

type svcResp struct {
	status int
	header http.Header
	body   []byte
}

func (r svcResp) errBody(tb testing.TB) dps.ErrorBody {
	tb.Helper()
	var v dps.ErrorBody
	if err := json.Unmarshal(r.body, &v); err != nil {
		tb.Fatalf("decode error body %q: %v", r.body, err)
	}
	return v
}

func (r svcResp) doc(tb testing.TB) enrollmentDoc {
	tb.Helper()
	var d enrollmentDoc
	if err := json.Unmarshal(r.body, &d); err != nil {
		tb.Fatalf("decode enrollment %q: %v", r.body, err)
	}
	return d
}

func (r svcResp) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// newSvcClient signs with policy/key (a fresh token per request).
func newSvcClient(tb testing.TB, run *Running, policyName, key string) *svcClient {
	tb.Helper()
	tr := &http.Transport{TLSClientConfig: run.ClientTLSConfig()}
	tb.Cleanup(tr.CloseIdleConnections)
	u, _ := url.Parse(run.URL)
	c := &svcClient{tb: tb, base: run.URL, host: u.Host, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	if key != "" {
		c.auth = func() string {
			tok, err := ServiceSAS(c.host, policyName, key, time.Now().Add(time.Hour))
			if err != nil {
				tb.Fatal(err)
			}
			return tok
		}
	}
	return c
}

// withAuth is a copy of c with another Authorization header.
func (c *svcClient) withAuth(h string) *svcClient {
	c2 := *c
	c2.auth = func() string { return h }
	return &c2
}

func (c *svcClient) do(method, path string, body any, hdr map[string]string) svcResp {
	c.tb.Helper()
	r, err := c.try(method, path, body, hdr)
	if err != nil {
		c.tb.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func (c *svcClient) try(method, path string, body any, hdr map[string]string) (svcResp, error) {
	var rd io.Reader
	if body != nil {
		s, ok := body.(string)
		if !ok {
			b, err := json.Marshal(body)
			if err != nil {
				return svcResp{}, err
			}
			s = string(b)
		}
		rd = strings.NewReader(s)
	}
	if !strings.Contains(path, "api-version=") {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "api-version=2021-10-01"
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return svcResp{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if c.auth != nil {
		req.Header.Set("Authorization", c.auth())
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return svcResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return svcResp{}, err
	}
	return svcResp{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// wantError checks a DPS error answer: status, errorCode, x-ms-error-code,
// trackingId = x-ms-request-id.
func wantError(tb testing.TB, r svcResp, status, code int) dps.ErrorBody {
	tb.Helper()
	if r.status != status {
		tb.Fatalf("status = %s, want %d", r, status)
	}
	e := r.errBody(tb)
	if e.ErrorCode != code || r.header.Get("x-ms-error-code") != fmt.Sprint(code) {
		tb.Errorf("errorCode %d, x-ms-error-code %q, want %d (%s)", e.ErrorCode, r.header.Get("x-ms-error-code"), code, r.body)
	}
	if e.TrackingID == "" || e.TrackingID != r.header.Get("x-ms-request-id") || e.TimestampUTC == "" || e.Message == "" {
		tb.Errorf("error body %+v, x-ms-request-id %q: want trackingId = request id, a message and a timestamp", e, r.header.Get("x-ms-request-id"))
	}
	return e
}

// symEnrollment is an individual symmetric key enrollment body; empty keys
// let DPS generate them.
func symEnrollment(id, primary string) map[string]any {
	sk := map[string]any{}
	if primary != "" {
		sk["primaryKey"] = primary
	}
	return map[string]any{"registrationId": id, "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": sk}}
}

// x509Enrollment is an individual X.509 enrollment body with the
// certificate as the SDKs send it.
func x509Enrollment(id, cert string) map[string]any {
	return map[string]any{"registrationId": id, "attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]any{"certificate": cert}}}}}
}

func b64s(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

package dpssim

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// TestClientQuirksAccepted sends what real clients send (dps-protocol.md
// §2.1, §10.1): each request must be accepted.
func TestClientQuirksAccepted(t *testing.T) {
	sim := mustNew(t, Config{IDScope: testScope, Individual: []IndividualEnrollment{
		{RegistrationID: "dev-q", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}},
		{RegistrationID: "dev:colon", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}},
	}})
	run := mustStart(t, sim)
	dev := newRawDevice(t, run, "dev-q", nil, keyA)
	colon := newRawDevice(t, run, "dev:colon", nil, keyA)

	// forceRegistration (Node) is accepted and ignored.
	r := colon.do("PUT", "/"+testScope+"/registrations/dev%3Acolon/register?api-version=2019-03-31&forceRegistration=true", `{"registrationId":"dev:colon"}`, nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("register with forceRegistration = %d %s, want 202", r.status, r.body)
	}
	reg := dev.register("")
	if reg.status != http.StatusAccepted {
		t.Fatalf("register = %d %s", reg.status, reg.body)
	}
	opID := reg.op(t).OperationID
	body := `{"registrationId":"dev-q"}`
	tests := []struct {
		name   string
		dev    *rawDevice
		method string
		path   string
		body   string
		hdr    map[string]string
		want   int
	}{
		{"Node: poll GET with a {} body", dev, "GET", "/" + testScope + "/registrations/dev-q/operations/" + opID + "?api-version=2019-03-31", "{}", nil, 200},
		{"C: UserAgent header without hyphen", dev, "POST", "/" + testScope + "/registrations/dev-q?api-version=2021-06-01", body,
			map[string]string{"UserAgent": "prov_device_client/1.0", "User-Agent": ""}, 200},
		{"docs curl: Content-Encoding utf-8", dev, "POST", "/" + testScope + "/registrations/dev-q?api-version=2019-03-31", body,
			map[string]string{"Content-Encoding": "utf-8", "Content-Type": "application/json"}, 200},
		{"content type without charset", dev, "POST", "/" + testScope + "/registrations/dev-q?api-version=2021-10-01", body,
			map[string]string{"Content-Type": "application/json"}, 200},
		{"content type with upper-case charset", dev, "POST", "/" + testScope + "/registrations/dev-q?api-version=2021-10-01", body,
			map[string]string{"Content-Type": "application/json; charset=UTF-8"}, 200},
		{"empty lookup body", dev, "POST", "/" + testScope + "/registrations/dev-q?api-version=2021-10-01", "", nil, 200},
		{"upper-case percent escape in the path", dev, "POST", "/" + testScope + "/registrations/dev%2Dq?api-version=2021-10-01", body, nil, 200},
		{"lower-case percent escape in the path", dev, "POST", "/" + testScope + "/registrations/dev%2dq?api-version=2021-10-01", body, nil, 200},
		{"escaped colon, upper case", colon, "POST", "/" + testScope + "/registrations/dev%3Acolon?api-version=2021-10-01", `{"registrationId":"dev:colon"}`, nil, 200},
		{"escaped colon, lower case", colon, "POST", "/" + testScope + "/registrations/dev%3acolon?api-version=2021-10-01", "", nil, 200},
		{"registration id in another case", dev, "POST", "/" + testScope + "/registrations/DEV-Q?api-version=2021-10-01", `{"registrationId":"DEV-Q"}`, map[string]string{"Authorization": dps.SASToken(keyA, testScope, "DEV-Q", time.Now().Add(time.Hour))}, 200},
		{"preview api-version", dev, "POST", "/" + testScope + "/registrations/dev-q?api-version=2025-07-01-preview", body, nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.dev.do(tt.method, tt.path, tt.body, tt.hdr)
			if r.status != tt.want {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, r.status, r.body, tt.want)
			}
		})
	}
}

// TestRequestErrors checks the answers to malformed requests.
func TestRequestErrors(t *testing.T) {
	sim := mustNew(t, Config{IDScope: testScope, Individual: []IndividualEnrollment{
		{RegistrationID: "dev-e", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}})
	run := mustStart(t, sim)
	dev := newRawDevice(t, run, "dev-e", nil, keyA)
	reg := "/" + testScope + "/registrations/dev-e/register?api-version=2021-10-01"
	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		hdr      map[string]string
		want     int
		wantCode int
		wantMsg  string
	}{
		{"malformed JSON", "PUT", reg, `{"registrationId": "dev-e"`, nil, 400, dps.CodeBadRequest, "malformed JSON"},
		{"body is not an object", "PUT", reg, `["dev-e"]`, nil, 400, dps.CodeBadRequest, "malformed JSON"},
		{"payload is not an object", "PUT", reg, `{"registrationId":"dev-e","payload":"x"}`, nil, 400, dps.CodeBadRequest, "payload must be a JSON object"},
		{"body id differs from path id", "PUT", reg, `{"registrationId":"dev-f"}`, nil, 400, dps.CodeBadRequest, "does not match"},
		{"form content type", "PUT", reg, `{"registrationId":"dev-e"}`, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, dps.CodeUnsupportedMediaType, "application/json"},
		{"no content type", "PUT", reg, `{"registrationId":"dev-e"}`, map[string]string{"Content-Type": ""}, 415, dps.CodeUnsupportedMediaType, "application/json"},
		{"body over 96 KB", "PUT", reg, `{"registrationId":"dev-e","payload":{"x":"` + strings.Repeat("a", 100<<10) + `"}}`, nil, 400, dps.CodeBadRequest, "96 KB"},
		{"no api-version", "PUT", "/" + testScope + "/registrations/dev-e/register", `{}`, nil, 400, dps.CodeBadRequest, "api-version"},
		{"unknown api-version", "PUT", "/" + testScope + "/registrations/dev-e/register?api-version=2099-01-01", `{}`, nil, 400, dps.CodeBadRequest, "not supported"},
		{"wrong ID scope", "PUT", "/0ne99999999/registrations/dev-e/register?api-version=2021-10-01", `{}`, nil, 404, dps.CodeNotFound, "not served here"},
		{"register with POST", "POST", "/" + testScope + "/registrations/dev-e/register?api-version=2021-10-01", `{}`, nil, 405, dps.CodeMethodNotAllowed, "PUT"},
		{"poll with PUT", "PUT", "/" + testScope + "/registrations/dev-e/operations/x?api-version=2021-10-01", `{}`, nil, 405, dps.CodeMethodNotAllowed, "GET"},
		{"unknown path", "GET", "/" + testScope + "/devices/dev-e?api-version=2021-10-01", "", nil, 404, codeRouteNotFound, "not a DPS device operation"},
		{"invalid registration id", "PUT", "/" + testScope + "/registrations/dev%20e/register?api-version=2021-10-01", `{}`, nil, 400, dps.CodeBadRequest, "registration id"},
		{"unknown operation id", "GET", "/" + testScope + "/registrations/dev-e/operations/4.0.nope?api-version=2021-10-01", "", nil, 404, dps.CodeNotFound, "operation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dev.do(tt.method, tt.path, tt.body, tt.hdr)
			if r.status != tt.want {
				t.Fatalf("%s = %d %s, want %d", tt.name, r.status, r.body, tt.want)
			}
			eb := r.errBody(t)
			if eb.ErrorCode != tt.wantCode || !strings.Contains(eb.Message, tt.wantMsg) {
				t.Errorf("error body = %s, want errorCode %d and a message mentioning %q", r.body, tt.wantCode, tt.wantMsg)
			}
			if eb.TrackingID != r.header.Get(dps.HeaderRequestID) {
				t.Errorf("trackingId %q != x-ms-request-id %q", eb.TrackingID, r.header.Get(dps.HeaderRequestID))
			}
		})
	}
	if ri, _ := sim.Registration("dev-e"); ri.Registers != 0 {
		t.Errorf("registers after only bad requests = %d, want 0", ri.Registers)
	}
}

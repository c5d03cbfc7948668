package dps_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestWireFormat checks method, path, query, headers and body of the three
// operations for each credential type, and the parsed responses.
func TestWireFormat(t *testing.T) {
	p := mustPKI(t)
	sasKey := []byte("secret-device-key-0123456789abcdef")
	tests := []struct {
		name      string
		device    func(t *testing.T) *dps.Device
		wantCerts int // client certificates presented in the handshake
		wantAuth  string
	}{
		{
			name:      "x509 leaf only",
			device:    func(t *testing.T) *dps.Device { return mustDevice(t, p.root, "dev-001", certs.Options{}) },
			wantCerts: 1,
		},
		{
			name:      "x509 leaf and intermediate",
			device:    func(t *testing.T) *dps.Device { return mustDevice(t, p.inter, "dev-001", certs.Options{}) },
			wantCerts: 2,
		},
		{
			name:   "symmetric key",
			device: func(*testing.T) *dps.Device { return dps.NewSymmetricKeyDevice("dev-001", sasKey) },
			// Fixed clock + default 10 min TTL; the token text itself is
			// pinned to an openssl-computed value in TestSASTokenOnWire.
			wantAuth: dps.SASToken(sasKey, testScope, "dev-001", testNow.Add(10*time.Minute)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, dpsReplies)
			c := mustClient(t, f.URL)
			d := tt.device(t)
			ctx := context.Background()

			reg, err := c.Register(ctx, d, json.RawMessage(` {"modelId": "dtmi:x;1"} `))
			if err != nil {
				t.Fatalf("Register: %v", err)
			}
			poll, err := c.OperationStatus(ctx, d, reg.Operation.OperationID)
			if err != nil {
				t.Fatalf("OperationStatus: %v", err)
			}
			look, err := c.RegistrationStatus(ctx, d)
			if err != nil {
				t.Fatalf("RegistrationStatus: %v", err)
			}
			if _, err := c.Register(ctx, d, nil); err != nil {
				t.Fatalf("Register without payload: %v", err)
			}

			want := []struct{ method, uri, body string }{
				{"PUT", "/0ne00ABCDEF/registrations/dev-001/register?api-version=2021-10-01", `{"registrationId":"dev-001","payload":{"modelId":"dtmi:x;1"}}`},
				{"GET", "/0ne00ABCDEF/registrations/dev-001/operations/4.d0a671905ea5b2c8.e7173b7b?api-version=2021-10-01", ""},
				{"POST", "/0ne00ABCDEF/registrations/dev-001?api-version=2021-10-01", `{"registrationId":"dev-001"}`},
				{"PUT", "/0ne00ABCDEF/registrations/dev-001/register?api-version=2021-10-01", `{"registrationId":"dev-001"}`},
			}
			seen := f.seen()
			if len(seen) != len(want) {
				t.Fatalf("server saw %d requests, want %d", len(seen), len(want))
			}
			ids := map[string]bool{}
			for i, w := range want {
				got := seen[i]
				if got.Method != w.method || got.RequestURI != w.uri {
					t.Errorf("request %d: got %s %s, want %s %s", i, got.Method, got.RequestURI, w.method, w.uri)
				}
				if got.Body != w.body {
					t.Errorf("request %d body: got %q, want %q", i, got.Body, w.body)
				}
				wantCT := "application/json; charset=utf-8"
				if w.body == "" {
					wantCT = "" // no body, no Content-Type
				}
				for _, h := range []struct{ name, want string }{
					{"Content-Type", wantCT},
					{"Accept", "application/json"},
					{"User-Agent", testUA},
					{"Authorization", tt.wantAuth},
				} {
					if g := got.Header.Get(h.name); g != h.want {
						t.Errorf("request %d header %s: got %q, want %q", i, h.name, g, h.want)
					}
				}
				id := got.Header.Get("X-Ms-Client-Request-Id")
				if !uuidV4.MatchString(id) || ids[id] {
					t.Errorf("request %d x-ms-client-request-id %q: want a fresh UUIDv4", i, id)
				}
				ids[id] = true
				if len(got.PeerCerts) != tt.wantCerts {
					t.Errorf("request %d: client presented %d certificates, want %d", i, len(got.PeerCerts), tt.wantCerts)
				}
				if tt.wantCerts > 0 && (!got.Verified || got.PeerCerts[0].Subject.CommonName != "dev-001") {
					t.Errorf("request %d: client chain verified=%v CN=%q, want verified chain for dev-001",
						i, got.Verified, got.PeerCerts[0].Subject.CommonName)
				}
			}

			if reg.HTTPStatus != 202 || reg.RetryAfter != 3*time.Second || reg.RequestID != "req-register" ||
				reg.Operation.Status != dps.StatusAssigning || reg.Operation.OperationID != "4.d0a671905ea5b2c8.e7173b7b" {
				t.Errorf("register response: got %+v op %+v", reg, reg.Operation)
			}
			if reg.ClientRequestID != seen[0].Header.Get("X-Ms-Client-Request-Id") {
				t.Errorf("register ClientRequestID %q does not match the header sent", reg.ClientRequestID)
			}
			rs := poll.Operation.RegistrationState
			if poll.HTTPStatus != 200 || poll.RetryAfter != 0 || poll.Operation.Status != dps.StatusAssigned || rs == nil ||
				rs.AssignedHub != "hub.azure-devices.net" || rs.DeviceID != "dev-001" || rs.Substatus != dps.SubstatusInitialAssignment {
				t.Errorf("poll response: got %+v state %+v", poll, rs)
			}
			if look.Registration == nil || look.Registration.Status != dps.StatusAssigned || look.Operation != nil || look.RequestID != "req-lookup" {
				t.Errorf("lookup response: got %+v registration %+v", look, look.Registration)
			}
			if reg.Latency <= 0 {
				t.Errorf("register latency: got %v, want > 0", reg.Latency)
			}
		})
	}
}

// TestSASTokenOnWire pins the Authorization header to an independently
// computed token, and checks that each request is signed afresh.
func TestSASTokenOnWire(t *testing.T) {
	f := startFake(t, dpsReplies)
	now := time.Unix(1699999400, 0) // + 10 min TTL = 1700000000
	c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.Now = func() time.Time { return now } })
	d := dps.NewSymmetricKeyDevice("dev-001", []byte("secret-device-key-0123456789abcdef"))
	mustRegister(t, c, d)
	now = now.Add(2 * time.Second) // only read by the client goroutine between requests
	mustRegister(t, c, d)

	want := []string{
		// openssl: printf '0ne00ABCDEF%%2fregistrations%%2fdev-001\n1700000000' | openssl sha256 -mac HMAC -macopt hexkey:<key hex> -binary | base64
		"SharedAccessSignature sr=0ne00ABCDEF%2fregistrations%2fdev-001&sig=UuZrcFeftmUUcpqqvEG4imTWqcepE3Hbmw2NlneuiUM%3D&se=1700000000&skn=registration",
		"SharedAccessSignature sr=0ne00ABCDEF%2fregistrations%2fdev-001&sig=F0dAjNh2%2B8b0RQbp5OiPPPWbSIdX%2BVvN%2B4Vcd%2FdISJA%3D&se=1700000002&skn=registration",
	}
	for i, r := range f.seen() {
		if got := r.Header.Get("Authorization"); got != want[i] {
			t.Errorf("request %d Authorization:\n got %s\nwant %s", i, got, want[i])
		}
	}
}

// TestPathEscaping checks that registration and operation ids are escaped
// as single path segments and the api-version is configurable.
func TestPathEscaping(t *testing.T) {
	f := startFake(t, dpsReplies)
	c := mustClient(t, f.URL, func(cfg *dps.Config) { cfg.APIVersion = "2019-03-31" })
	d := dps.NewSymmetricKeyDevice("dev 1/ü?#%", []byte("k"))
	ctx := context.Background()
	if _, err := c.Register(ctx, d, nil); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if _, err := c.OperationStatus(ctx, d, "4.a/b#c d?e"); err != nil {
		t.Fatalf("OperationStatus: %v", err)
	}
	want := []string{
		"/0ne00ABCDEF/registrations/dev%201%2F%C3%BC%3F%23%25/register?api-version=2019-03-31",
		"/0ne00ABCDEF/registrations/dev%201%2F%C3%BC%3F%23%25/operations/4.a%2Fb%23c%20d%3Fe?api-version=2019-03-31",
	}
	seen := f.seen()
	for i, w := range want {
		if seen[i].RequestURI != w {
			t.Errorf("request %d: got %s, want %s", i, seen[i].RequestURI, w)
		}
	}
	if got, want := seen[0].Body, `{"registrationId":"dev 1/ü?#%"}`; got != want {
		t.Errorf("body: got %s, want %s", got, want)
	}
}

// TestResponses checks how 2xx bodies and headers are interpreted.
func TestResponses(t *testing.T) {
	const opID = "4.aaaa.bbbb"
	retryDate := testNow.Add(10 * time.Second).Format(http.TimeFormat)
	tests := []struct {
		name      string
		op        string // "register", "poll" or "lookup"
		status    int
		body      string
		headers   []string
		check     func(t *testing.T, r *dps.Response)
		wantErrIs error
	}{
		{
			name: "register answered 200", op: "register", status: 200,
			body: `{"operationId":"` + opID + `","status":"assigning"}`,
			check: func(t *testing.T, r *dps.Response) {
				if r.HTTPStatus != 200 || r.Operation.OperationID != opID {
					t.Errorf("got status %d op %q, want 200 %q", r.HTTPStatus, r.Operation.OperationID, opID)
				}
			},
		},
		{
			name: "retry-after as HTTP date", op: "register", status: 202,
			body:    `{"operationId":"` + opID + `","status":"assigning"}`,
			headers: []string{"Retry-After", retryDate},
			check: func(t *testing.T, r *dps.Response) {
				if r.RetryAfter != 10*time.Second {
					t.Errorf("RetryAfter: got %v, want 10s", r.RetryAfter)
				}
			},
		},
		{
			name: "poll without operationId keeps the asked one", op: "poll", status: 202,
			body:    `{"status":"assigning","registrationState":{"registrationId":"dev-001","status":"assigning"}}`,
			headers: []string{"retry-after", "2"},
			check: func(t *testing.T, r *dps.Response) {
				if r.Operation.OperationID != opID || r.ReportedOperationID != "" || r.RetryAfter != 2*time.Second {
					t.Errorf("got op %q reported %q retry %v, want %q, \"\", 2s", r.Operation.OperationID, r.ReportedOperationID, r.RetryAfter, opID)
				}
			},
		},
		{
			name: "poll with another operationId reports it", op: "poll", status: 200,
			body: `{"operationId":"4.other","status":"assigned"}`,
			check: func(t *testing.T, r *dps.Response) {
				if r.Operation.OperationID != opID || r.ReportedOperationID != "4.other" {
					t.Errorf("got op %q reported %q, want %q and 4.other", r.Operation.OperationID, r.ReportedOperationID, opID)
				}
			},
		},
		{
			name: "unknown status is returned as is", op: "poll", status: 200,
			body: `{"operationId":"` + opID + `","status":"blacklisted","futureField":{"x":1}}`,
			check: func(t *testing.T, r *dps.Response) {
				if r.Operation.Status != "blacklisted" || r.Operation.Status.Final() {
					t.Errorf("got status %q final %v, want blacklisted, not final", r.Operation.Status, r.Operation.Status.Final())
				}
			},
		},
		{
			name: "failed registration is a response, not an error", op: "poll", status: 200,
			body: `{"operationId":"` + opID + `","status":"failed","registrationState":{"registrationId":"dev-001","status":"failed","errorCode":400208,"errorMessage":"no hub"}}`,
			check: func(t *testing.T, r *dps.Response) {
				rs := r.Operation.RegistrationState
				if r.Operation.Status != dps.StatusFailed || rs.ErrorCode != 400208 || dps.HintForStatus(rs.Status, rs.ErrorCode) == "" {
					t.Errorf("got %+v, want failed with 400208 and a hint", rs)
				}
			},
		},
		{name: "register without operationId", op: "register", status: 202, body: `{"status":"assigning"}`, wantErrIs: dps.ErrProtocol},
		{name: "register without status", op: "register", status: 202, body: `{"operationId":"x"}`, wantErrIs: dps.ErrProtocol},
		{name: "poll without status", op: "poll", status: 200, body: `{"operationId":"x"}`, wantErrIs: dps.ErrProtocol},
		{name: "empty 202", op: "register", status: 202, body: ``, wantErrIs: dps.ErrMalformedResponse},
		{name: "lookup without status", op: "lookup", status: 200, body: `{"registrationId":"dev-001"}`, wantErrIs: dps.ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, func(w http.ResponseWriter, r *http.Request) {
				replyJSON(w, tt.status, tt.body, tt.headers...)
			})
			c := mustClient(t, f.URL)
			d := dps.NewSymmetricKeyDevice("dev-001", []byte("k"))
			var (
				r   *dps.Response
				err error
			)
			switch tt.op {
			case "register":
				r, err = c.Register(context.Background(), d, nil)
			case "poll":
				r, err = c.OperationStatus(context.Background(), d, opID)
			case "lookup":
				r, err = c.RegistrationStatus(context.Background(), d)
			}
			if tt.wantErrIs != nil {
				var de *dps.Error
				if !errors.Is(err, tt.wantErrIs) || !errors.As(err, &de) || de.HTTPStatus != tt.status {
					t.Fatalf("got %v, want *dps.Error with HTTP %d matching %v", err, tt.status, tt.wantErrIs)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			tt.check(t, r)
		})
	}
}

// TestNewClient checks configuration validation and defaults.
func TestNewClient(t *testing.T) {
	tests := []struct {
		name    string
		cfg     dps.Config
		wantErr string // substring; "" means success
	}{
		{name: "defaults", cfg: dps.Config{IDScope: testScope}},
		{name: "trailing slash", cfg: dps.Config{Endpoint: "https://127.0.0.1:8443/", IDScope: testScope}},
		{name: "http", cfg: dps.Config{Endpoint: "http://127.0.0.1:8080", IDScope: testScope}, wantErr: "scheme must be https"},
		{name: "no host", cfg: dps.Config{Endpoint: "https://", IDScope: testScope}, wantErr: "no host"},
		{name: "path", cfg: dps.Config{Endpoint: "https://example.net/dps", IDScope: testScope}, wantErr: "without path"},
		{name: "query", cfg: dps.Config{Endpoint: "https://example.net?x=1", IDScope: testScope}, wantErr: "without path"},
		{name: "user info", cfg: dps.Config{Endpoint: "https://u:secret@example.net", IDScope: testScope}, wantErr: "user information"},
		{name: "no scope", cfg: dps.Config{}, wantErr: "ID scope"},
		{name: "spaced scope", cfg: dps.Config{IDScope: " 0ne1"}, wantErr: "ID scope"},
		{name: "negative timeout", cfg: dps.Config{IDScope: testScope, Timeout: -1}, wantErr: "negative"},
		{name: "negative ttl", cfg: dps.Config{IDScope: testScope, SASTTL: -1}, wantErr: "negative"},
		{name: "negative max bytes", cfg: dps.Config{IDScope: testScope, MaxResponseBytes: -1}, wantErr: "negative"},
		{name: "X.509 TLS 1.3", cfg: dps.Config{IDScope: testScope, X509MaxTLSVersion: tls.VersionTLS13}},
		{name: "X.509 TLS 1.1", cfg: dps.Config{IDScope: testScope, X509MaxTLSVersion: tls.VersionTLS11}, wantErr: "want TLS 1.2 or 1.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := dps.NewClient(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				c.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, dps.ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q leaks the endpoint password", err)
			}
			if got := dps.Classify(err); got != dps.Fatal {
				t.Errorf("Classify: got %v, want fatal", got)
			}
		})
	}
}

package dpssim

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// admin calls a /_sim/ endpoint without a client certificate.
func admin(t *testing.T, run *Running, method, path, body string) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: run.ClientTLSConfig()}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(method, run.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestProofOfPossession rehearses the CA verification flow of the seed
// article: a group on an unverified root refuses devices until a
// certificate whose CN is the verification code, signed by the root's key,
// is posted.
func TestProofOfPossession(t *testing.T) {
	p := pki()
	sim := mustNew(t, Config{IDScope: testScope,
		Certificates: []CACertificate{{Name: "my-root", PEM: caPEM(p.root)}},
		Groups:       []EnrollmentGroup{{EnrollmentGroupID: "g", Attestation: Attestation{X509: &X509Attestation{CACertificate: "my-root"}}}}})
	run := mustStart(t, sim)
	dev := newRawDevice(t, run, "pop-1", mustDevice(t, p.inter, "pop-1"), nil)
	if r := dev.register(""); r.status != http.StatusUnauthorized {
		t.Fatalf("register before verification = %d, want 401", r.status)
	}

	status, body := admin(t, run, "POST", "/_sim/certificates/my-root/verificationCode", "")
	var vc struct{ VerificationCode string }
	if status != 200 || json.Unmarshal(body, &vc) != nil || len(vc.VerificationCode) != 48 {
		t.Fatalf("verificationCode = %d %s, want 200 with a 48-digit code", status, body)
	}
	if vc.VerificationCode != VerificationCode(p.root.Cert) {
		t.Errorf("served code %s differs from VerificationCode() %s", vc.VerificationCode, VerificationCode(p.root.Cert))
	}

	wrongCN, _ := p.root.NewVerification("not-the-code", certs.Options{})
	wrongKey, _ := p.otherRoot.NewVerification(vc.VerificationCode, certs.Options{})
	good, _ := p.root.NewVerification(vc.VerificationCode, certs.Options{})
	tests := []struct {
		name    string
		body    string
		want    int
		wantMsg string
	}{
		{"CN is not the code", string(certs.CertPEM(wrongCN.Cert)), 400, "want the verification code"},
		{"signed by another key", string(certs.CertPEM(wrongKey.Cert)), 400, "not signed by the key"},
		{"garbage", "hello", 400, "neither PEM nor base64"},
		{"ARM shape, base64 DER", `{"certificate":"` + base64.StdEncoding.EncodeToString(good.Cert.Raw) + `"}`, 200, `"verified": true`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := admin(t, run, "POST", "/_sim/certificates/my-root/verify", tt.body)
			if status != tt.want || !strings.Contains(string(body), tt.wantMsg) {
				t.Errorf("verify = %d %s, want %d mentioning %q", status, body, tt.want, tt.wantMsg)
			}
		})
	}
	if r := dev.register(""); r.status != http.StatusAccepted {
		t.Fatalf("register after verification = %d %s, want 202", r.status, r.body)
	}
	if status, _ := admin(t, run, "POST", "/_sim/certificates/nope/verify", string(certs.CertPEM(good.Cert))); status != 404 {
		t.Errorf("verify unknown certificate = %d, want 404", status)
	}
	// The PEM form works too (a second CA, through the Go API).
	if err := sim.VerifyCertificate("my-root", good.Cert); err != nil {
		t.Errorf("VerifyCertificate with a good certificate: %v", err)
	}
}

func TestAdminEndpoints(t *testing.T) {
	sim := mustNew(t, symConfig())
	run := mustStart(t, sim)
	groupDevice(t, run, "adm-1").registerAndWait()
	bad := newRawDevice(t, run, "adm-2", nil, keyB)
	bad.register("")

	tests := []struct {
		method, path, body string
		want               int
		wantSub            []string
	}{
		{"GET", "/_sim/", "", 200, []string{"/_sim/registrations", "/_sim/stats"}},
		{"GET", "/_sim/registrations", "", 200, []string{`"registrationId": "adm-1"`, `"registers": 1`, `"polls": 1`, `"status": "assigned"`}},
		{"GET", "/_sim/registrations/ADM-1", "", 200, []string{`"enrollment": "group:sas-group"`}},
		{"GET", "/_sim/registrations/adm-2", "", 404, []string{"no registration"}},
		{"GET", "/_sim/stats", "", 200, []string{`"registers": 1`, `"202": 1`, `"401": 1`, `"assigned": 1`}},
		{"GET", "/_sim/knobs", "", 200, []string{`"retryAfterSeconds": 3`, `"assignmentDelay": "0s"`}},
		{"PUT", "/_sim/knobs", `{"faults":{"pollErrorRate":0.5},"assignmentDelay":"1.5s"}`, 200, []string{`"pollErrorRate": 0.5`, `"assignmentDelay": "1.5s"`, `"retryAfterSeconds": 3`}},
		{"PUT", "/_sim/knobs", `{"faults":{"pollErrorRate":2}}`, 400, []string{"pollErrorRate"}},
		{"PUT", "/_sim/knobs", `{"nope":1}`, 400, []string{"unknown field"}},
		{"POST", "/_sim/hold", "", 200, []string{`"holding": true`}},
		{"POST", "/_sim/release", "", 200, []string{`"holding": false`}},
		{"GET", "/_sim/certificates", "", 200, []string{"[]"}},
		{"DELETE", "/_sim/stats", "", 404, []string{"GET /_sim/ lists them"}},
	}
	for _, tt := range tests {
		status, body := admin(t, run, tt.method, tt.path, tt.body)
		if status != tt.want {
			t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, status, body, tt.want)
			continue
		}
		for _, sub := range tt.wantSub {
			if !strings.Contains(string(body), sub) {
				t.Errorf("%s %s body lacks %q:\n%s", tt.method, tt.path, sub, body)
			}
		}
	}
	if k := sim.Knobs(); k.Faults.PollErrorRate != 0.5 || time.Duration(k.AssignmentDelay) != 1500*time.Millisecond {
		t.Errorf("knobs after PUT = %+v", k)
	}
}

// TestZeroValueServer: an unconfigured Server works in-process through
// httptest, the way unit tests of other packages use it.
func TestZeroValueServer(t *testing.T) {
	var sim Server
	ts := httptest.NewUnstartedServer(&sim)
	ts.TLS = sim.TLSConfig(tls.Certificate{})
	ts.StartTLS()
	defer ts.Close()
	req, _ := http.NewRequest("PUT", ts.URL+"/"+DefaultIDScope+"/registrations/dev-1/register?api-version=2021-10-01", strings.NewReader(`{"registrationId":"dev-1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", dps.SASToken(keyA, DefaultIDScope, "dev-1", time.Now().Add(time.Hour)))
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(string(body), "401002") {
		t.Errorf("zero-value server answered %d %s, want 401 401002 (no enrollments)", resp.StatusCode, body)
	}
	if st := sim.Stats(); st.RegisterRequests != 1 || st.ByStatus[401] != 1 {
		t.Errorf("stats = %+v", st)
	}
	if sim.IDScope() != DefaultIDScope || len(sim.Hubs()) != 2 {
		t.Errorf("zero value: scope %q hubs %v", sim.IDScope(), sim.Hubs())
	}
}

func TestStartListenAddresses(t *testing.T) {
	sim := mustNew(t, symConfig())
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "example.com:0"} {
		if run, err := StartTLS(sim, addr); err == nil {
			run.Close()
			t.Errorf("StartTLS(%q) succeeded, want a refusal of non-loopback addresses", addr)
		} else if !strings.Contains(err.Error(), "loopback") {
			t.Errorf("StartTLS(%q) error = %v, want it to explain loopback", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0"} {
		run, err := StartTLS(sim, addr)
		if err != nil {
			if addr == "[::1]:0" {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Errorf("StartTLS(%q): %v", addr, err)
			continue
		}
		if !strings.HasPrefix(run.URL, "https://") || strings.HasSuffix(run.URL, ":0") {
			t.Errorf("URL = %q, want the actual port", run.URL)
		}
		groupDevice(t, run, "addr-1").register("")
		run.Close()
	}
}

// TestLogNeverHoldsSecrets: the request log names devices and statuses,
// never the SAS token or its signature.
func TestLogNeverHoldsSecrets(t *testing.T) {
	var buf bytes.Buffer
	sim := mustNew(t, symConfig())
	sim.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	run := mustStart(t, sim)
	dev := groupDevice(t, run, "log-1")
	token := dps.SASToken(dev.key, testScope, "log-1", time.Now().Add(time.Hour))
	dev.do("PUT", dev.registerPath(), `{}`, map[string]string{"Authorization": token})
	dev.do("PUT", dev.registerPath(), `{}`, map[string]string{"Authorization": strings.Replace(token, "sig=", "sig=A", 1)})
	out := buf.String()
	sig := token[strings.Index(token, "sig=")+4 : strings.Index(token, "&se=")]
	for _, secret := range []string{"SharedAccessSignature", sig, base64.StdEncoding.EncodeToString(dev.key)} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains secret material %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"device=log-1", "status=202", "status=401", "error_code=401002", "request_id="} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

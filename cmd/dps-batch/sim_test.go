package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// simFleet is a CA, one device and a simulator config written by
// writeFleetSimConfig, as "certs fleet" would leave them.
type simFleet struct {
	dir, config string
	ca          *certs.CA
	device      *certs.Leaf
}

func newSimFleet(t *testing.T) simFleet {
	t.Helper()
	root, err := certs.NewRoot("sim test root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("sim test intermediate", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := inter.NewDevice("dev-00001", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path, err := writeFleetSimConfig(dir, "0ne0000test", certs.CertPEM(inter.Cert), false)
	if err != nil {
		t.Fatalf("writeFleetSimConfig: %v", err)
	}
	return simFleet{dir: dir, config: path, ca: inter, device: dev}
}

// startSimCmd runs "dps-batch sim args..." until the returned stop is
// called; it returns the URL the command printed.
func startSimCmd(t *testing.T, args ...string) (url string, stdout *syncBuffer, stop func() (int, string)) {
	t.Helper()
	out, errb := &syncBuffer{}, &syncBuffer{}
	drain := make(chan struct{})
	done := make(chan int, 1)
	go func() {
		done <- run(context.Background(), append([]string{"sim"}, args...), &env{stdin: strings.NewReader(""), stdout: out, stderr: errb, drain: drain})
	}()
	urlRE := regexp.MustCompile(`serving (https://\S+)`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := urlRE.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
			break
		}
		select {
		case code := <-done:
			t.Fatalf("sim exited with %d before serving; stdout:\n%s\nstderr:\n%s", code, out, errb)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sim printed no URL within 10s; stdout:\n%s\nstderr:\n%s", out, errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var once sync.Once
	var code int
	stop = func() (int, string) {
		once.Do(func() {
			close(drain)
			select {
			case code = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("sim did not stop within 10s of the drain signal")
			}
		})
		return code, errb.String()
	}
	t.Cleanup(func() { stop() })
	return url, out, stop
}

// x509Client trusts the CA PEM file and presents cert.
func x509Client(t *testing.T, caFile string, cert tls.Certificate) *http.Client {
	t.Helper()
	pemData, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatalf("server CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatalf("no certificate in %s", caFile)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func call(t *testing.T, c *http.Client, method, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestSimServesFleetAndStops: certs fleet's sim.json + dps-batch sim accept
// the fleet's devices; the first interrupt stops the simulator cleanly; a
// restart reuses the server CA so clients keep trusting it.
func TestSimServesFleetAndStops(t *testing.T) {
	f := newSimFleet(t)
	caFile := filepath.Join(f.dir, "out", "server-ca.pem")
	if err := os.MkdirAll(filepath.Dir(caFile), 0o755); err != nil {
		t.Fatal(err)
	}
	url, out, stop := startSimCmd(t, "--config", f.config, "--listen", "127.0.0.1:0", "--ca-out", caFile)
	if !strings.Contains(out.String(), caFile+" (new;") {
		t.Errorf("start-up output does not report a new server CA at %s:\n%s", caFile, out)
	}
	client := x509Client(t, caFile, f.device.TLSCertificate())
	base := url + "/0ne0000test/registrations/dev-00001"
	status, body := call(t, client, "PUT", base+"/register?api-version=2021-10-01", `{"registrationId":"dev-00001"}`)
	if status != http.StatusAccepted {
		t.Fatalf("register = %d %s, want 202", status, body)
	}
	var op dps.RegistrationOperationStatus
	if err := json.Unmarshal(body, &op); err != nil {
		t.Fatal(err)
	}
	status, body = call(t, client, "GET", base+"/operations/"+op.OperationID+"?api-version=2021-10-01", "")
	if status != http.StatusOK || !strings.Contains(string(body), `"status":"assigned"`) {
		t.Fatalf("poll = %d %s, want 200 assigned", status, body)
	}
	status, body = call(t, client, "GET", url+"/_sim/stats", "")
	if status != http.StatusOK || !strings.Contains(string(body), `"registers": 1`) {
		t.Errorf("/_sim/stats = %d %s", status, body)
	}
	code, stderr := stop()
	if code != exitOK {
		t.Fatalf("exit code after the interrupt = %d, want 0; stderr %s", code, stderr)
	}
	if !strings.Contains(out.String(), "stopped: 1 register requests (1 operations), 1 polls") {
		t.Errorf("final summary missing from stdout:\n%s", out)
	}
	if _, err := os.Stat(strings.TrimSuffix(caFile, ".pem") + ".key"); err != nil {
		t.Errorf("server CA key not written next to the certificate: %v", err)
	}

	// Restart on a free port given with --port: the same CA file still works.
	url2, out2, stop2 := startSimCmd(t, "--config", f.config, "--port", "0", "--ca-out", caFile)
	if !strings.Contains(out2.String(), "reused") {
		t.Errorf("restart did not reuse the server CA:\n%s", out2)
	}
	client2 := x509Client(t, caFile, f.device.TLSCertificate())
	if status, body := call(t, client2, "POST", url2+"/0ne0000test/registrations/dev-00001?api-version=2021-10-01", `{"registrationId":"dev-00001"}`); status != http.StatusNotFound {
		t.Errorf("lookup on a fresh simulator = %d %s, want 404 (state is in memory)", status, body)
	}
	if code, _ := stop2(); code != exitOK {
		t.Errorf("second stop exit = %d", code)
	}
}

func TestSimUsageErrors(t *testing.T) {
	f := newSimFleet(t)
	badConfig := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(badConfig, []byte(`{"allocationPolicy": "random"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"no config", []string{"sim"}, []string{"--config is required", "Try: dps-batch sim --config"}},
		{"non-loopback listen", []string{"sim", "--config", f.config, "--listen", "0.0.0.0:0"}, []string{"not a loopback address", "--allow-non-loopback"}},
		{"listen on all interfaces", []string{"sim", "--config", f.config, "--listen", ":0"}, []string{"not a loopback address"}},
		{"bad listen", []string{"sim", "--config", f.config, "--listen", "nowhere"}, []string{"--listen"}},
		{"ca-out not pem", []string{"sim", "--config", f.config, "--ca-out", filepath.Join(f.dir, "ca.crt")}, []string{"must end in .pem"}},
		{"bad config", []string{"sim", "--config", badConfig}, []string{"bad.json", "allocationPolicy"}},
		{"missing config", []string{"sim", "--config", filepath.Join(f.dir, "absent.json")}, []string{"absent.json"}},
		{"bad knob", []string{"sim", "--config", f.config, "--register-error-rate", "2"}, []string{"registerErrorRate"}},
		{"bad late rate", []string{"sim", "--config", f.config, "--late-effect-rate", "1.5"}, []string{"faults.lateEffectRate", "0 to 1"}},
		{"negative late first puts", []string{"sim", "--config", f.config, "--late-effect-first-puts", "-1"}, []string{"faults.lateEffectFirstPuts"}},
		{"negative late delay", []string{"sim", "--config", f.config, "--late-effect-delay", "-1s"}, []string{"faults.lateEffectDelay"}},
		{"negative answer delay", []string{"sim", "--config", f.config, "--late-answer-delay", "-1s"}, []string{"faults.lateAnswerDelay"}},
		{"bad lookup mode", []string{"sim", "--config", f.config, "--lookup-while-assigning", "maybe"}, []string{"lookupWhileAssigning", `"assigning"`, `"notFound"`, `"previous"`}},
		{"bad bare 404 rate", []string{"sim", "--config", f.config, "--lookup-bare-404-rate", "-1"}, []string{"faults.lookupBare404Rate"}},
		{"bad bad-body rate", []string{"sim", "--config", f.config, "--register-bad-body-rate", "3"}, []string{"faults.registerBadBodyRate"}},
		{"bad bad-body kind", []string{"sim", "--config", f.config, "--register-bad-body", "half"}, []string{"registerBadBody", `"truncated"`, `"noOperationId"`, `"syncAssigned"`}},
		{"verification-code without ca", []string{"sim", "verification-code", "--config", f.config}, []string{"--ca is required"}},
		{"verification-code unknown ca", []string{"sim", "verification-code", "--config", f.config, "--ca", "nope"}, []string{`"nope"`}},
		{"verify without cert", []string{"sim", "verify", "--config", f.config, "--ca", "fleet-ca"}, []string{"--cert is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := runCmd(t, tt.args...)
			if code != exitUsage {
				t.Errorf("exit code = %d, want %d; stderr %q", code, exitUsage, errs)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not mention %q", errs, w)
				}
			}
		})
	}
}

func TestSimHelp(t *testing.T) {
	for _, args := range [][]string{{"sim", "--help"}, {"sim", "verification-code", "--help"}, {"sim", "verify", "--help"}} {
		code, out, _ := runCmd(t, args...)
		if code != exitOK || !strings.Contains(out, "Examples:") {
			t.Errorf("%v: exit %d, output lacks examples:\n%s", args, code, out)
		}
	}
	_, out, _ := runCmd(t, "sim", "--help")
	for _, want := range []string{"curl -i -X PUT --cacert", "/_sim/registrations", "verification-code", "--listen", "127.0.0.1:0"} {
		if !strings.Contains(out, want) {
			t.Errorf("sim --help lacks %q", want)
		}
	}
}

// TestSimProofOfPossession rehearses verification offline: print the
// code, make the certificate with the certs package, mark the CA verified.
func TestSimProofOfPossession(t *testing.T) {
	root, err := certs.NewRoot("pop root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := dpssim.FleetConfig("0ne0000test", certs.CertPEM(root.Cert))
	cfg.Certificates[0].Verified = false
	cfgPath := filepath.Join(dir, "sim.json")
	if err := dpssim.WriteConfig(cfgPath, cfg, false); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "sim", "verification-code", "--config", cfgPath, "--ca", dpssim.FleetCAName)
	vcode := strings.TrimSpace(out)
	if code != exitOK || vcode != dpssim.VerificationCode(root.Cert) {
		t.Fatalf("verification-code: exit %d, out %q, stderr %q; want %s", code, out, errs, dpssim.VerificationCode(root.Cert))
	}
	wrong, _ := root.NewVerification("WRONG", certs.Options{})
	good, _ := root.NewVerification(vcode, certs.Options{})
	for _, tt := range []struct {
		name     string
		leaf     *certs.Leaf
		wantCode int
		want     string
	}{
		{"wrong CN", wrong, exitUsage, "want the verification code"},
		{"good", good, exitOK, "is verified"},
	} {
		path := filepath.Join(dir, tt.name+".pem")
		if err := os.WriteFile(path, certs.CertPEM(tt.leaf.Cert), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, errs := runCmd(t, "sim", "verify", "--config", cfgPath, "--ca", dpssim.FleetCAName, "--cert", path)
		if code != tt.wantCode || !strings.Contains(out+errs, tt.want) {
			t.Errorf("%s: exit %d, out %q, stderr %q; want %d mentioning %q", tt.name, code, out, errs, tt.wantCode, tt.want)
		}
	}
	loaded, err := dpssim.LoadConfig(cfgPath)
	if err != nil {
		t.Fatalf("config after verify: %v", err)
	}
	if !loaded.Certificates[0].Verified || len(loaded.Groups) != 1 {
		t.Errorf("config after verify: %+v, want the CA verified and the group kept", loaded.Certificates[0])
	}
}

func TestWriteFleetSimConfig(t *testing.T) {
	f := newSimFleet(t)
	if _, err := writeFleetSimConfig(f.dir, "0ne0000test", certs.CertPEM(f.ca.Cert), false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second write without force: err = %v, want a refusal mentioning --force", err)
	}
	if _, err := writeFleetSimConfig(f.dir, "0ne0000other", certs.CertPEM(f.ca.Cert), true); err != nil {
		t.Fatalf("write with force: %v", err)
	}
	cfg, err := dpssim.LoadConfig(f.config)
	if err != nil {
		t.Fatalf("LoadConfig(%s): %v", f.config, err)
	}
	if cfg.IDScope != "0ne0000other" || len(cfg.Certificates) != 1 || !cfg.Certificates[0].Verified || len(cfg.Groups) != 1 {
		t.Fatalf("fleet config = %+v, want the new scope and one verified CA with one group", cfg)
	}
	if _, err := writeFleetSimConfig(f.dir, "0ne0000test", []byte("not a certificate"), true); err == nil {
		t.Errorf("writing a config with a bad CA succeeded")
	}
	// Every fleet device is accepted by a simulator on that config.
	sim, err := dpssim.New(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dpssim.StartTLS(sim, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: srv.ClientTLSConfig(f.device.TLSCertificate())}}
	defer c.CloseIdleConnections()
	status, body := call(t, c, "PUT", srv.URL+"/0ne0000other/registrations/dev-00001/register?api-version=2021-10-01", `{}`)
	if status != http.StatusAccepted {
		t.Errorf("fleet device register = %d %s, want 202", status, body)
	}
}

// TestSimAmbiguityFlags: the flags for what DPS leaves ambiguous reach the
// knobs, and a config file's pre-existing registrations are served.
func TestSimAmbiguityFlags(t *testing.T) {
	f := newSimFleet(t)
	data, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	doc["registrations"] = []any{map[string]any{"registrationId": "dev-00001", "status": "assigned", "assignedHub": "hub-2.azure-devices.net",
		"createdDateTimeUtc": "2026-03-01T10:00:00Z", "etag": "IjEi"}}
	if data, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.config, data, 0o644); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(f.dir, "server-ca.pem")
	url, out, stop := startSimCmd(t, "--config", f.config, "--listen", "127.0.0.1:0", "--ca-out", caFile, "--fault-seed", "3",
		"--late-effect-rate", "1", "--late-effect-first-puts", "1", "--late-effect-delay", "100ms", "--late-answer-delay", "10ms",
		"--lookup-while-assigning", "previous", "--lookup-bare-404-rate", "0.25",
		"--register-bad-body-rate", "1", "--register-bad-body", "syncAssigned")
	if !strings.Contains(out.String(), "registered:  1 device") {
		t.Errorf("start-up output does not report the pre-existing registration:\n%s", out)
	}
	client := x509Client(t, caFile, f.device.TLSCertificate())

	status, body := call(t, client, "GET", url+"/_sim/knobs", "")
	var k dpssim.Knobs
	if status != http.StatusOK || json.Unmarshal(body, &k) != nil {
		t.Fatalf("GET /_sim/knobs = %d %s", status, body)
	}
	want := dpssim.Faults{Seed: 3, LateEffectRate: 1, LateEffectFirstPuts: 1, LateEffectDelay: dpssim.Duration(100 * time.Millisecond),
		LateAnswerDelay: dpssim.Duration(10 * time.Millisecond), LookupBare404Rate: 0.25, RegisterBadBodyRate: 1, RegisterBadBody: dpssim.BadBodySyncAssigned}
	if k.Faults != want || k.LookupWhileAssigning != dpssim.LookupPrevious {
		t.Errorf("knobs = %+v, want faults %+v and lookupWhileAssigning previous", k, want)
	}
	if status, body := call(t, client, "PUT", url+"/_sim/knobs", `{"faults":{"lookupBare404Rate":0}}`); status != http.StatusOK {
		t.Fatalf("PUT /_sim/knobs = %d %s", status, body)
	}

	// The device registered "yesterday": the lookup shows its record, and
	// it is not counted as registered here.
	base := url + "/0ne0000test/registrations/dev-00001"
	status, body = call(t, client, "POST", base+"?api-version=2021-10-01", `{"registrationId":"dev-00001"}`)
	var rs dps.DeviceRegistrationResult
	if status != http.StatusOK || json.Unmarshal(body, &rs) != nil || rs.AssignedHub != "hub-2.azure-devices.net" || rs.ETag != "IjEi" ||
		rs.CreatedDateTimeUTC != "2026-03-01T10:00:00.0000000Z" || rs.Status != dps.StatusAssigned {
		t.Errorf("lookup of a pre-existing registration = %d %s", status, body)
	}
	status, body = call(t, client, "GET", url+"/_sim/registrations/dev-00001", "")
	var ri dpssim.RegistrationInfo
	if status != http.StatusOK || json.Unmarshal(body, &ri) != nil || !ri.FromConfig || ri.Registers != 0 {
		t.Errorf("/_sim/registrations/dev-00001 = %d %s, want fromConfig and 0 registers", status, body)
	}

	// The register PUT is late (first PUT) and answers 200 assigned with no
	// operation id (syncAssigned).
	start := time.Now()
	status, body = call(t, client, "PUT", base+"/register?api-version=2021-10-01", `{"registrationId":"dev-00001"}`)
	if status != http.StatusOK || strings.Contains(string(body), "operationId") || !strings.Contains(string(body), `"status":"assigned"`) {
		t.Errorf("register = %d %s, want 200 assigned without operationId", status, body)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("register answered after %s, want at least the 100ms late effect delay", took)
	}
	status, body = call(t, client, "GET", url+"/_sim/stats", "")
	var st dpssim.Stats
	if status != http.StatusOK || json.Unmarshal(body, &st) != nil || st.Registers != 1 || st.LateEffects != 1 || st.Conflicts != 0 {
		t.Errorf("/_sim/stats = %d %s, want 1 register, 1 late effect", status, body)
	}
	if code, stderr := stop(); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
	if !strings.Contains(out.String(), "(1 operations), 0 polls, 1 lookups, 0 throttled, 0 conflicts, 1 late effects, 1 faults") {
		t.Errorf("final summary lacks the late effect and conflict counts:\n%s", out)
	}
}

// serviceConn reads a connection string file and signs a service SAS with it.
func serviceConn(t *testing.T, path string) (host, policy, key, auth string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("connection string file: %v", err)
	}
	fields := map[string]string{}
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ";") {
		k, v, _ := strings.Cut(part, "=")
		fields[k] = v
	}
	host, policy, key = fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"]
	auth, err = dpssim.ServiceSAS(host, policy, key, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return host, policy, key, auth
}

// TestSimServiceAPI: a fleet config without policies gets a
// provisioningserviceowner policy whose connection string is written 0600
// and reused on restart; an enrollment created through the service API
// admits a device at once; the service quota flag throttles.
func TestSimServiceAPI(t *testing.T) {
	f := newSimFleet(t)
	caFile := filepath.Join(f.dir, "sim-ca.pem")
	url, out, stop := startSimCmd(t, "--config", f.config, "--listen", "127.0.0.1:0", "--service-operations-per-minute", "4", "--service-operation-burst", "4")
	connFile := filepath.Join(f.dir, "sim-service.conn")
	if !strings.Contains(out.String(), "service API: "+url+" (policies: provisioningserviceowner)") || !strings.Contains(out.String(), connFile+" (new key; 0600") {
		t.Errorf("start-up output does not describe the service API:\n%s", out)
	}
	fi, err := os.Stat(connFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("connection string file %v %v, want mode 0600", fi, err)
	}
	host, policy, key, auth := serviceConn(t, connFile)
	if !strings.HasPrefix(url, "https://"+host) || policy != dpssim.DefaultServicePolicy {
		t.Errorf("connection string host %q policy %q for %s", host, policy, url)
	}
	if strings.Contains(out.String(), key) {
		t.Error("the start-up output shows the service key")
	}

	// An individual symmetric key enrollment created through the service API.
	svc := x509Client(t, caFile, tls.Certificate{})
	devKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	req, _ := http.NewRequest("PUT", url+"/enrollments/sym-dev?api-version=2021-10-01",
		strings.NewReader(`{"registrationId":"sym-dev","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"`+devKey+`"}}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	resp, err := svc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"etag"`) {
		t.Fatalf("create enrollment = %d %s", resp.StatusCode, body)
	}
	dev := dps.NewSymmetricKeyDevice("sym-dev", bytes.Repeat([]byte{7}, 32))
	pool, err := dps.SystemPoolWithCAFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	client, err := dps.NewClient(dps.Config{Endpoint: url, IDScope: "0ne0000test", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := client.Register(ctx, dev, nil)
	if err != nil || r.HTTPStatus != http.StatusAccepted {
		t.Fatalf("register the enrolled device: %+v %v", r, err)
	}
	status, body := call(t, svc, "GET", url+"/_sim/enrollments/sym-dev", "")
	if status != http.StatusOK || !strings.Contains(string(body), `"creates": 1`) {
		t.Errorf("/_sim/enrollments/sym-dev = %d %s", status, body)
	}
	// The quota of 4: three more service requests pass, the fifth is 429.
	codes := []int{}
	for range 4 {
		req, _ := http.NewRequest("GET", url+"/enrollments/sym-dev?api-version=2021-10-01", nil)
		req.Header.Set("Authorization", auth)
		resp, err := svc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 200 200 429]" {
		t.Errorf("service requests under a quota of 4: %v, want [200 200 200 429]", codes)
	}
	if code, stderr := stop(); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
	if !strings.Contains(out.String(), "service API: 5 requests, 1 throttled, 0 faults; enrollments 1 created, 0 updated, 0 deleted (1 now)") {
		t.Errorf("final summary lacks the service API line:\n%s", out)
	}

	// A restart reuses the key: the old connection string still works.
	url2, out2, stop2 := startSimCmd(t, "--config", f.config, "--port", "0")
	if !strings.Contains(out2.String(), "key reused") {
		t.Errorf("restart did not reuse the service key:\n%s", out2)
	}
	_, _, key2, auth2 := serviceConn(t, connFile)
	if key2 != key {
		t.Error("the service key changed across a restart")
	}
	req, _ = http.NewRequest("GET", url2+"/enrollments/sym-dev?api-version=2021-10-01", nil)
	req.Header.Set("Authorization", auth2)
	if resp, err := svc.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("after restart: %v %v, want 404 (authenticated; enrollments are in memory)", resp, err)
	} else {
		resp.Body.Close()
	}
	stop2()
}

// TestSimServicePoliciesFromConfig: a config with servicePolicies writes
// no connection string unless asked, and then for the policy named.
func TestSimServicePoliciesFromConfig(t *testing.T) {
	f := newSimFleet(t)
	data, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	readKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	doc["servicePolicies"] = []any{map[string]any{"name": "reader", "primaryKey": readKey, "rights": []string{"EnrollmentRead"}}}
	data, _ = json.Marshal(doc)
	if err := os.WriteFile(f.config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, out, stop := startSimCmd(t, "--config", f.config, "--listen", "127.0.0.1:0")
	if strings.Contains(out.String(), "connection:") || !strings.Contains(out.String(), "(policies: reader)") {
		t.Errorf("start-up output:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "sim-service.conn")); err == nil {
		t.Error("a connection string file was written for a config with policies")
	}
	stop()
	connFile := filepath.Join(f.dir, "reader.conn")
	_, _, stop2 := startSimCmd(t, "--config", f.config, "--listen", "127.0.0.1:0", "--service-connection-string-out", connFile, "--service-policy", "reader")
	if _, policy, key, _ := serviceConn(t, connFile); policy != "reader" || key != readKey {
		t.Errorf("connection string for %q with key %q", policy, key)
	}
	stop2()
	code, _, errs := runCmd(t, "sim", "--config", f.config, "--listen", "127.0.0.1:0", "--service-connection-string-out", connFile, "--service-policy", "nope")
	if code != exitUsage || !strings.Contains(errs, `no shared access policy "nope"`) {
		t.Errorf("unknown --service-policy: exit %d, %s", code, errs)
	}
}

package dpssim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLoadConfigExample loads a configuration like the documented example,
// with file references relative to the configuration's directory, and
// registers a device of each kind through it.
func TestLoadConfigExample(t *testing.T) {
	p := pki()
	dir := t.TempDir()
	ind := mustDevice(t, p.otherRoot, "dev-1")
	writeFile(t, filepath.Join(dir, "ca", "intermediate.pem"), caPEM(p.inter))
	writeFile(t, filepath.Join(dir, "dev-1.pem"), leafPEM(ind))
	cfgPath := filepath.Join(dir, "sim.json")
	writeFile(t, cfgPath, `{
  "idScope": "`+testScope+`",
  "hubs": ["hub-1.azure-devices.net", "hub-2.azure-devices.net"],
  "allocationPolicy": "hashed",
  "certificates": [
    {"name": "fleet-ca", "file": "ca/intermediate.pem", "verified": true}
  ],
  "enrollmentGroups": [
    {"enrollmentGroupId": "fleet", "attestation": {"x509": {"caCertificate": "fleet-ca"}}},
    {"enrollmentGroupId": "sensors", "attestation": {"symmetricKey": {"primaryKey": "`+b64(groupKey)+`"}}}
  ],
  "individualEnrollments": [
    {"registrationId": "dev-1", "attestation": {"x509": {"certificateFile": "dev-1.pem"}}, "deviceId": "boiler-1"},
    {"registrationId": "dev-2", "attestation": {"symmetricKey": {"primaryKey": "`+b64(keyA)+`", "secondaryKey": "`+b64(keyB)+`"}},
     "provisioningStatus": "disabled"}
  ],
  "retryAfterSeconds": 0,
  "assignmentDelay": "500ms",
  "quotas": {"registrationsPerMinute": 1000, "pollsPer10sPerDevice": 5},
  "faults": {"seed": 1, "registerErrorRate": 0, "latency": "0s"}
}`)
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if cfg.Certificates[0].File != "" || !strings.Contains(cfg.Certificates[0].PEM, "BEGIN CERTIFICATE") {
		t.Errorf("certificate file was not read into pem: %+v", cfg.Certificates[0])
	}
	if time.Duration(cfg.AssignmentDelay) != 500*time.Millisecond || cfg.RetryAfterSeconds == nil || *cfg.RetryAfterSeconds != 0 {
		t.Errorf("assignmentDelay %v, retryAfterSeconds %v", cfg.AssignmentDelay, cfg.RetryAfterSeconds)
	}
	sim := mustNew(t, *cfg)
	if err := sim.SetAssignmentDelay(0); err != nil {
		t.Fatal(err)
	}
	run := mustStart(t, sim)
	for _, tt := range []struct {
		dev  *rawDevice
		want string
	}{
		{newRawDevice(t, run, "dev-1", leafOnly(ind), nil), "assigned"},
		{newRawDevice(t, run, "fleet-7", mustDevice(t, p.inter, "fleet-7"), nil), "assigned"},
		{groupDevice(t, run, "sensor-3"), "assigned"},
		{newRawDevice(t, run, "dev-2", nil, keyB), "disabled"},
	} {
		final := tt.dev.registerAndWait()
		if got := final.op(t).Status; string(got) != tt.want {
			t.Errorf("%s: %s, want %s", tt.dev.id, final.body, tt.want)
		}
		if r := tt.dev.register(""); r.header.Get("Retry-After") != "0" {
			t.Errorf("Retry-After = %q, want the configured 0", r.header.Get("Retry-After"))
		}
	}
	if ri, _ := sim.Registration("dev-1"); ri.DeviceID != "boiler-1" {
		t.Errorf("dev-1 device id = %q, want boiler-1", ri.DeviceID)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	p := pki()
	devPEM := leafPEM(mustDevice(t, p.inter, "dev-1"))
	jsonStr := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	secretKey := b64([]byte("this-is-not-16-bytes-base64!!"))[:10] + "*"
	tests := []struct {
		name    string
		json    string
		wantErr []string
	}{
		{"syntax error", "{\n  \"idScope\": \"x\",\n  \"hubs\": [\n}", []string{"sim.json", "line 4"}},
		{"unknown field", `{"hub": ["a"]}`, []string{"sim.json", `unknown field "hub"`}},
		{"wrong type", `{"hubs": "a"}`, []string{"line 1", "hubs"}},
		{"trailing data", `{} {}`, []string{"after the JSON object"}},
		{"bad allocation", `{"allocationPolicy": "random"}`, []string{"allocationPolicy", `"random"`}},
		{"duplicate hub", `{"hubs": ["a", "a"]}`, []string{"hubs[1]", "twice"}},
		{"missing certificate file", `{"certificates": [{"name": "ca", "file": "nope.pem"}]}`, []string{"certificates[0] (ca).file", "nope.pem"}},
		{"certificate without name", `{"certificates": [{"pem": ` + jsonStr(caPEM(p.root)) + `}]}`, []string{"certificates[0]", "name is required"}},
		{"certificate is not PEM", `{"certificates": [{"name": "ca", "pem": "hello"}]}`, []string{"certificates[0] (ca).pem"}},
		{"CN mismatch", `{"individualEnrollments": [{"registrationId": "dev-2", "attestation": {"x509": {"certificate": ` + jsonStr(devPEM) + `}}}]}`,
			[]string{"individualEnrollments[0] (dev-2)", `CN "dev-1"`}},
		{"duplicate registration id", `{"individualEnrollments": [
			{"registrationId": "Dev-1", "attestation": {"symmetricKey": {"primaryKey": "` + b64(keyA) + `"}}},
			{"registrationId": "dev-1", "attestation": {"symmetricKey": {"primaryKey": "` + b64(keyA) + `"}}}]}`, []string{"individualEnrollments[1] (dev-1)", "twice"}},
		{"bad registration id", `{"individualEnrollments": [{"registrationId": "dev 1", "attestation": {"symmetricKey": {"primaryKey": "` + b64(keyA) + `"}}}]}`,
			[]string{"individualEnrollments[0] (dev 1)", "registrationId"}},
		{"no attestation", `{"individualEnrollments": [{"registrationId": "d"}]}`, []string{"individualEnrollments[0] (d)", "attestation"}},
		{"two attestations", `{"enrollmentGroups": [{"enrollmentGroupId": "g", "attestation": {"x509": {"caCertificate": "c"}, "symmetricKey": {"primaryKey": "` + b64(keyA) + `"}}}]}`,
			[]string{"enrollmentGroups[0] (g)", "not both"}},
		{"unknown CA reference", `{"enrollmentGroups": [{"enrollmentGroupId": "g", "attestation": {"x509": {"caCertificate": "missing"}}}]}`,
			[]string{"enrollmentGroups[0] (g)", `"missing"`}},
		{"key is not base64", `{"enrollmentGroups": [{"enrollmentGroupId": "g", "attestation": {"symmetricKey": {"primaryKey": "` + secretKey + `"}}}]}`,
			[]string{"enrollmentGroups[0] (g)", "primaryKey is not valid base64"}},
		{"key too short", `{"enrollmentGroups": [{"enrollmentGroupId": "g", "attestation": {"symmetricKey": {"primaryKey": "` + b64([]byte("short")) + `"}}}]}`,
			[]string{"5 bytes"}},
		{"unlinked hub", `{"individualEnrollments": [{"registrationId": "d", "iotHub": "x.azure-devices.net", "attestation": {"symmetricKey": {"primaryKey": "` + b64(keyA) + `"}}}]}`,
			[]string{"individualEnrollments[0] (d)", "not one of the linked hubs"}},
		{"bad provisioning status", `{"enrollmentGroups": [{"enrollmentGroupId": "g", "provisioningStatus": "off", "attestation": {"symmetricKey": {"primaryKey": "` + b64(keyA) + `"}}}]}`,
			[]string{"provisioningStatus"}},
		{"individual with a CA", `{"individualEnrollments": [{"registrationId": "d", "attestation": {"x509": {"caCertificate": "c"}}}]}`, []string{"for enrollment groups"}},
		{"retryAfter out of range", `{"retryAfterSeconds": 301}`, []string{"retryAfterSeconds"}},
		{"fault rate above 1", `{"faults": {"registerErrorRate": 1.5}}`, []string{"faults.registerErrorRate"}},
		{"bad duration", `{"assignmentDelay": "soon"}`, []string{"sim.json", `"soon"`}},
		{"negative duration", `{"assignmentDelay": "-1s"}`, []string{"assignmentDelay"}},
		{"bad scope", `{"idScope": "a/b"}`, []string{"idScope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sim.json")
			writeFile(t, path, tt.json)
			_, err := LoadConfig(path)
			if err == nil {
				t.Fatalf("LoadConfig succeeded, want an error mentioning %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), secretKey) {
				t.Errorf("error %q repeats a key", err)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "absent.json")); err == nil || !strings.Contains(err.Error(), "absent.json") {
		t.Errorf("missing file error = %v, want it to name the file", err)
	}
}

func TestDurationJSON(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{`"1.5s"`, 1500 * time.Millisecond},
		{`"250ms"`, 250 * time.Millisecond},
		{`2`, 2 * time.Second},
		{`0.1`, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		var d Duration
		if err := json.Unmarshal([]byte(tt.in), &d); err != nil || time.Duration(d) != tt.want {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v", tt.in, time.Duration(d), err, tt.want)
		}
	}
	b, _ := json.Marshal(Duration(1500 * time.Millisecond))
	if string(b) != `"1.5s"` {
		t.Errorf("Marshal(1.5s) = %s", b)
	}
}

// TestNewDoesNotChangeTheCallersConfig: reading files works on copies.
func TestNewDoesNotChangeTheCallersConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.pem")
	writeFile(t, path, string(certs.CertPEM(pki().root.Cert)))
	cfg := Config{Certificates: []CACertificate{{Name: "ca", File: path}}}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Certificates[0].File != path || cfg.Certificates[0].PEM != "" {
		t.Errorf("New changed the caller's config: %+v", cfg.Certificates[0])
	}
}

package dpssim

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// nodeRegister registers each device listed in the JSON file argv[2] with
// the official Node.js device SDK over its HTTP transport, and prints one
// JSON line per device. The SDK always connects to port 443, so an agent
// redirects its connections to the simulator's port.
const nodeRegister = `
const fs = require('fs');
const https = require('https');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const HttpBase = require('azure-iot-http-base').Http;
const { X509Security } = require('azure-iot-security-x509');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
class PortAgent extends https.Agent {
  createConnection(options, cb) { return super.createConnection(Object.assign({}, options, { port: job.port }), cb); }
}

function registerOne(d) {
  return new Promise((resolve) => {
    const base = new HttpBase();
    base.setOptions({ ca: job.ca, http: { agent: new PortAgent({ ca: job.ca }) } });
    const transport = new Http(base);
    const security = d.cert
      ? new X509Security(d.id, { cert: d.cert, key: d.key })
      : new SymmetricKeySecurityClient(d.id, d.symmetricKey);
    const client = ProvisioningDeviceClient.create('127.0.0.1', job.idScope, transport, security);
    if (d.payload) client.setProvisioningPayload(d.payload);
    client.register((err, result) => {
      resolve(err ? { id: d.id, error: String(err && err.message || err), status: err.response && err.response.statusCode }
                  : { id: d.id, result: result });
    });
  });
}

(async () => {
  for (const d of job.devices) console.log(JSON.stringify(await registerOne(d)));
})();
`

// TestNodeSDK registers devices with the official Node.js device SDK's HTTP
// transport (packages from the npm registry). It is opt-in, because it
// downloads packages: DPSSIM_NODE_SDK=1 go test ./dpssim -run NodeSDK.
// The packages are kept in the user cache directory between runs.
func TestNodeSDK(t *testing.T) {
	if os.Getenv("DPSSIM_NODE_SDK") != "1" {
		t.Skip("set DPSSIM_NODE_SDK=1 to run the Node.js device SDK against the simulator (needs node, npm and the npm registry)")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = t.TempDir()
	}
	dir := filepath.Join(cache, "dps-batch", "node-sdk")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "azure-iot-provisioning-device-http")); err != nil {
		writeFile(t, filepath.Join(dir, "package.json"), `{"name":"dpssim-node-sdk-check","private":true}`)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
			"azure-iot-provisioning-device@1", "azure-iot-provisioning-device-http@1",
			"azure-iot-security-x509@1", "azure-iot-security-symmetric-key@1", "azure-iot-http-base@1")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("npm install failed (no registry access?): %v\n%s", err, out)
		}
	}

	p := pki()
	indLeaf := mustDevice(t, p.otherRoot, "node-x509-ind")
	groupLeaf := mustDevice(t, p.inter, "node-x509-group")
	sim := mustNew(t, Config{
		IDScope:           testScope,
		RetryAfterSeconds: func() *int { n := 1; return &n }(),
		Allocation:        AllocationCustom,
		CustomAllocation:  CustomAllocation{EchoPayload: true},
		Certificates:      []CACertificate{{Name: "inter", PEM: caPEM(p.inter), Verified: true}},
		Individual: []IndividualEnrollment{
			{RegistrationID: "node-x509-ind", Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(indLeaf)}}},
			{RegistrationID: "node-sas-ind", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}},
			{RegistrationID: "node-disabled", ProvisioningStatus: ProvisioningDisabled, Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}},
		},
		Groups: []EnrollmentGroup{
			{EnrollmentGroupID: "fleet", Attestation: Attestation{X509: &X509Attestation{CACertificate: "inter"}}},
			{EnrollmentGroupID: "sas-group", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}},
		},
	})
	run := mustStart(t, sim)
	_, port, _ := strings.Cut(strings.TrimPrefix(run.URL, "https://127.0.0.1"), ":")
	portN, _ := strconv.Atoi(port)
	keyPEM := func(l *certs.Leaf) string {
		b, err := certs.KeyPEM(l.Key)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	type device struct {
		ID           string          `json:"id"`
		Cert         string          `json:"cert,omitempty"`
		Key          string          `json:"key,omitempty"`
		SymmetricKey string          `json:"symmetricKey,omitempty"`
		Payload      json.RawMessage `json:"payload,omitempty"`
	}
	job := map[string]any{
		"port": portN, "idScope": testScope, "ca": string(run.CAPEM),
		"devices": []device{
			{ID: "node-x509-ind", Cert: leafPEM(indLeaf), Key: keyPEM(indLeaf)},
			{ID: "node-x509-group", Cert: string(certs.CertPEM(append([]*x509.Certificate{groupLeaf.Cert}, groupLeaf.Chain...)...)), Key: keyPEM(groupLeaf)},
			{ID: "node-sas-ind", SymmetricKey: b64(keyA), Payload: json.RawMessage(`{"iotHub":"hub-2.azure-devices.net"}`)},
			{ID: "node-sas-member", SymmetricKey: b64(dps.DeriveDeviceKeyBytes(groupKey, "node-sas-member"))},
			{ID: "node-disabled", SymmetricKey: b64(keyA)},
			{ID: "node-unknown", SymmetricKey: b64(keyB)},
		},
	}
	jobPath := filepath.Join(t.TempDir(), "job.json")
	jb, _ := json.Marshal(job)
	writeFile(t, jobPath, string(jb))
	scriptPath := filepath.Join(dir, "register.js")
	writeFile(t, scriptPath, nodeRegister)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", scriptPath, jobPath)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	type line struct {
		ID     string `json:"id"`
		Error  string `json:"error"`
		Status int    `json:"status"`
		Result struct {
			AssignedHub string          `json:"assignedHub"`
			DeviceID    string          `json:"deviceId"`
			Status      string          `json:"status"`
			Payload     json.RawMessage `json:"payload"`
		} `json:"result"`
	}
	got := map[string]line{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var l line
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.ID != "" {
			got[l.ID] = l
		}
	}
	t.Logf("node output:\n%s", out)
	for _, id := range []string{"node-x509-ind", "node-x509-group", "node-sas-ind", "node-sas-member"} {
		l := got[id]
		if l.Error != "" || l.Result.Status != "assigned" || l.Result.AssignedHub == "" || l.Result.DeviceID != id {
			t.Errorf("%s: %+v, want assigned", id, l)
		}
	}
	if l := got["node-sas-ind"]; l.Result.AssignedHub != "hub-2.azure-devices.net" || !jsonEqual(t, l.Result.Payload, `{"iotHub":"hub-2.azure-devices.net"}`) {
		t.Errorf("node-sas-ind: hub %s payload %s, want hub-2 chosen by the payload and the payload echoed", l.Result.AssignedHub, l.Result.Payload)
	}
	if l := got["node-disabled"]; l.Error == "" {
		t.Errorf("node-disabled: %+v, want the SDK to report the disabled registration as an error", l)
	}
	if l := got["node-unknown"]; l.Error == "" || l.Status != 401 {
		t.Errorf("node-unknown: %+v, want a 401 error", l)
	}
	// The SDK polled with a {} body, and every device registered once.
	for _, id := range []string{"node-x509-ind", "node-x509-group", "node-sas-ind", "node-sas-member"} {
		if ri, _ := sim.Registration(id); ri.Registers != 1 || ri.Polls < 1 {
			t.Errorf("%s: %+v, want one register and at least one poll", id, ri)
		}
	}
}

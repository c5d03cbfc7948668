package dpssim

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// nodeService drives the official Node.js service SDK
// (azure-iot-provisioning-service) against the simulator and prints one JSON
// line per step. The SDK connects to its host on port 443; an agent sends
// its connections to the simulator's port and checks the simulator's
// certificate for localhost, while the SDK keeps using the realistic host
// name (Host header, SAS sr).
const nodeService = `
const fs = require('fs');
const https = require('https');
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { RestApiClient } = require('azure-iot-http-base');
const { SharedAccessSignature, anHourFromNow } = require('azure-iot-common');

const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
class PortAgent extends https.Agent {
  createConnection(options, cb) {
    return super.createConnection(Object.assign({}, options, { host: '127.0.0.1', port: job.port, servername: 'localhost' }), cb);
  }
}
const agent = new PortAgent({ ca: job.ca });
function client(config) {
  const rest = new RestApiClient(config, 'dpssim-test');
  rest.setOptions({ ca: job.ca, http: { agent } });
  return new ProvisioningServiceClient(config, rest);
}
const sas = (key, expiry) => SharedAccessSignature.create(job.host, 'provisioningserviceowner', key, expiry);
const owner = client({ host: job.host, sharedAccessSignature: sas(job.ownerKey, anHourFromNow()) });

function out(step, v) { console.log(JSON.stringify(Object.assign({ step }, v))); }
async function run(step, fn) {
  try {
    out(step, { ok: true, result: await fn() });
  } catch (err) {
    out(step, { ok: false, error: err.constructor.name, status: err.response && err.response.statusCode, message: err.message });
  }
}

(async () => {
  await run('createSymmetric', async () => (await owner.createOrUpdateIndividualEnrollment(
    { registrationId: 'node-sym', attestation: { type: 'symmetricKey', symmetricKey: {} } })).responseBody);
  await run('createX509', async () => (await owner.createOrUpdateIndividualEnrollment(
    { registrationId: 'node-x509', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: job.cert } } } },
      deviceId: 'node-x509-device', capabilities: { iotEdge: true }, initialTwin: { tags: { line: 'a' } } })).responseBody);
  await run('createAgain', async () => (await owner.createOrUpdateIndividualEnrollment(
    { registrationId: 'node-sym', attestation: { type: 'symmetricKey', symmetricKey: {} } })).responseBody);
  let current;
  await run('get', async () => { current = (await owner.getIndividualEnrollment('node-sym')).responseBody; return current; });
  await run('updateWithEtag', async () => {
    current.provisioningStatus = 'disabled';
    return (await owner.createOrUpdateIndividualEnrollment(current)).responseBody;
  });
  await run('updateStaleEtag', async () => (await owner.createOrUpdateIndividualEnrollment(current)).responseBody);
  // runBulkEnrollmentOperation answers only through a callback (its
  // promise form never settles).
  await run('bulk', () => new Promise((resolve, reject) => owner.runBulkEnrollmentOperation({ mode: 'create', enrollments: [
    { registrationId: 'node-b1', attestation: { type: 'symmetricKey' } },
    { registrationId: 'node-b2', attestation: { type: 'symmetricKey' } },
    { registrationId: 'node-sym', attestation: { type: 'symmetricKey' } },
  ] }, (err, result) => err ? reject(err) : resolve(result))));
  await run('query', async () => {
    const q = owner.createIndividualEnrollmentQuery({ query: '*' }, 2);
    const ids = []; let pages = 0;
    while (q.hasMoreResults && pages < 10) {
      // Without an argument the promise form of next() drops the stored
      // continuation token; pass it.
      const r = await q.next(q.continuationToken);
      pages++;
      for (const e of r.responseBody) ids.push(e.registrationId);
    }
    return { ids, pages };
  });
  await run('group', async () => (await owner.createOrUpdateEnrollmentGroup(
    { enrollmentGroupId: 'node-group', attestation: { type: 'symmetricKey', symmetricKey: {} } })).responseBody);
  await run('groupAttestation', async () => (await owner.getEnrollmentGroupAttestationMechanism('node-group')).responseBody);
  await run('groupQuery', async () => (await owner.createEnrollmentGroupQuery({ query: '*' }).next()).responseBody);
  await run('registrationState', async () => (await owner.getDeviceRegistrationState('node-reg')).responseBody);
  await run('registrationQuery', async () => (await owner.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, 'node-group').next()).responseBody);
  await run('deleteRegistration', async () => { await owner.deleteDeviceRegistrationState('node-reg'); return 'deleted'; });
  await run('registrationGone', async () => (await owner.getDeviceRegistrationState('node-reg')).responseBody);
  await run('deleteStale', async () => { await owner.deleteIndividualEnrollment('node-b1', 'stale-etag'); return 'deleted'; });
  await run('delete', async () => { await owner.deleteIndividualEnrollment('node-b1'); return 'deleted'; });
  await run('expiredSAS', async () => {
    const expired = client({ host: job.host, sharedAccessSignature: sas(job.ownerKey, Math.floor(Date.now() / 1000) - 60).toString() });
    return (await expired.getIndividualEnrollment('node-sym')).responseBody;
  });
  await run('bearer', async () => {
    const tokenCredential = { getToken: async () => ({ token: job.token, expiresOnTimestamp: Date.now() + 3600 * 1000 }) };
    const entra = client({ host: job.host, tokenCredential, tokenScope: 'https://azure-devices-provisioning.net/.default' });
    return (await entra.getIndividualEnrollment('node-x509')).responseBody;
  });
})();
`

// TestNodeServiceSDK runs the official Node.js service SDK against the
// simulator's service API: create (keys generated), conflict, update with
// the etag, stale etag, bulk with a per-item error, paged query, groups,
// registration states, delete, an expired SAS and a bearer token; then the
// enrollments it created let devices register through the device API. It
// needs node and npm (the packages come from the npm registry once and are
// kept in the user cache directory); DPSSIM_NODE_SDK=0 skips it.
func TestNodeServiceSDK(t *testing.T) {
	if os.Getenv("DPSSIM_NODE_SDK") == "0" {
		t.Skip("DPSSIM_NODE_SDK=0: not running the Node.js service SDK against the simulator")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: cannot run the Node.js service SDK (azure-iot-provisioning-service) against the simulator", tool)
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = t.TempDir()
	}
	dir := filepath.Join(cache, "dps-batch", "node-service-sdk")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "azure-iot-provisioning-service")); err != nil {
		writeFile(t, filepath.Join(dir, "package.json"), `{"name":"dpssim-node-service-sdk-check","private":true}`)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline",
			"azure-iot-provisioning-service@1", "azure-iot-http-base@1", "azure-iot-common@1")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("npm install of azure-iot-provisioning-service failed (no registry access?): %v\n%s", err, out)
		}
	}

	p := pki()
	leaf := mustDevice(t, p.otherRoot, "node-x509")
	issuer, err := NewTestIssuer()
	if err != nil {
		t.Fatal(err)
	}
	const host = "mydps.azure-devices-provisioning.net"
	cfg := svcConfig()
	cfg.ServiceHostName = host
	cfg.EntraIssuers = []EntraIssuer{issuer.EntraIssuer()}
	cfg.Groups = []EnrollmentGroup{{EnrollmentGroupID: "legacy", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}}
	cfg.Individual = []IndividualEnrollment{{RegistrationID: "node-reg", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	if fin := newRawDevice(t, run, "node-reg", nil, keyA).registerAndWait(); fin.op(t).Status != dps.StatusAssigned {
		t.Fatalf("node-reg: %s", fin.body)
	}
	_, port, _ := strings.Cut(strings.TrimPrefix(run.URL, "https://127.0.0.1"), ":")
	portN, _ := strconv.Atoi(port)
	token, err := issuer.Token([]string{RoleDataReader}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	job := map[string]any{"port": portN, "host": host, "ca": string(run.CAPEM), "ownerKey": ownerKey, "cert": leafPEM(leaf), "token": token}
	jobPath := filepath.Join(t.TempDir(), "job.json")
	jb, _ := json.Marshal(job)
	writeFile(t, jobPath, string(jb))
	scriptPath := filepath.Join(dir, "service.js")
	writeFile(t, scriptPath, nodeService)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", scriptPath, jobPath)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	t.Logf("node output:\n%s", out)
	type line struct {
		Step    string          `json:"step"`
		OK      bool            `json:"ok"`
		Result  json.RawMessage `json:"result"`
		Error   string          `json:"error"`
		Status  int             `json:"status"`
		Message string          `json:"message"`
	}
	got := map[string]line{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l line
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Step != "" {
			got[l.Step] = l
		}
	}
	okStep := func(step string, v any) {
		t.Helper()
		l, found := got[step]
		if !found || !l.OK {
			t.Errorf("%s: %+v, want success", step, l)
			return
		}
		if v != nil {
			if err := json.Unmarshal(l.Result, v); err != nil {
				t.Errorf("%s: result %s: %v", step, l.Result, err)
			}
		}
	}
	failStep := func(step, errName string, status int) {
		t.Helper()
		if l := got[step]; l.OK || l.Error != errName || l.Status != status {
			t.Errorf("%s: %+v, want %s (HTTP %d)", step, l, errName, status)
		}
	}

	var sym, x, upd enrollmentDoc
	okStep("createSymmetric", &sym)
	if sym.Attestation == nil || sym.Attestation.SymmetricKey == nil || sym.Attestation.SymmetricKey.PrimaryKey == "" || sym.ETag == "" {
		t.Errorf("createSymmetric: %+v, want generated keys and an etag", sym)
	}
	okStep("createX509", &x)
	if x.DeviceID != "node-x509-device" || string(x.Capabilities) != `{"iotEdge":true}` || !strings.Contains(string(x.InitialTwin), `"line":"a"`) {
		t.Errorf("createX509: %+v", x)
	}
	failStep("createAgain", "DeviceAlreadyExistsError", 409)
	okStep("get", nil)
	okStep("updateWithEtag", &upd)
	if upd.ProvisioningStatus != "disabled" || upd.ETag == sym.ETag {
		t.Errorf("updateWithEtag: %+v", upd)
	}
	failStep("updateStaleEtag", "InvalidEtagError", 412)
	var bulk struct {
		IsSuccessful bool `json:"isSuccessful"`
		Errors       []struct {
			RegistrationID string `json:"registrationId"`
			ErrorCode      int    `json:"errorCode"`
		} `json:"errors"`
	}
	okStep("bulk", &bulk)
	if bulk.IsSuccessful || len(bulk.Errors) != 1 || bulk.Errors[0].RegistrationID != "node-sym" || bulk.Errors[0].ErrorCode != codeEnrollmentExists {
		t.Errorf("bulk: %+v", bulk)
	}
	var q struct {
		IDs   []string `json:"ids"`
		Pages int      `json:"pages"`
	}
	okStep("query", &q)
	if len(q.IDs) != 5 || q.Pages != 3 {
		t.Errorf("query: %+v, want 5 enrollments (node-reg, node-sym, node-x509, node-b1, node-b2) on 3 pages of 2", q)
	}
	okStep("group", nil)
	var att attestationDoc
	okStep("groupAttestation", &att)
	if att.Type != "symmetricKey" || att.SymmetricKey == nil || att.SymmetricKey.PrimaryKey == "" {
		t.Errorf("groupAttestation: %+v", att)
	}
	var groups []enrollmentDoc
	okStep("groupQuery", &groups)
	if len(groups) != 2 {
		t.Errorf("groupQuery: %d groups, want legacy and node-group", len(groups))
	}
	var rs registrationStateDoc
	okStep("registrationState", &rs)
	if rs.RegistrationID != "node-reg" || rs.Status != dps.StatusAssigned {
		t.Errorf("registrationState: %+v", rs)
	}
	okStep("registrationQuery", nil)
	okStep("deleteRegistration", nil)
	failStep("registrationGone", "Error", 404)
	failStep("deleteStale", "InvalidEtagError", 412)
	okStep("delete", nil)
	failStep("expiredSAS", "UnauthorizedError", 401)
	okStep("bearer", nil)

	// What the SDK created is what devices attest against.
	if op := newRawDevice(t, run, "node-x509", leafOnly(leaf), nil).registerAndWait().op(t); op.Status != dps.StatusAssigned || op.RegistrationState.DeviceID != "node-x509-device" {
		t.Errorf("device of the SDK's X.509 enrollment: %+v", op)
	}
	if op := newRawDevice(t, run, "node-sym", nil, decodeKey(t, sym.Attestation.SymmetricKey.PrimaryKey)).registerAndWait().op(t); op.Status != dps.StatusDisabled {
		t.Errorf("device of the SDK's symmetric enrollment (disabled by the update): %+v", op)
	}
	var b2 enrollmentDoc
	if r := newSvcClient(t, run, DefaultServicePolicy, ownerKey).do("GET", "/enrollments/node-b2", nil, nil); r.status == 200 {
		b2 = r.doc(t)
	}
	if op := newRawDevice(t, run, "node-b2", nil, decodeKey(t, b2.Attestation.SymmetricKey.PrimaryKey)).registerAndWait().op(t); op.Status != dps.StatusAssigned {
		t.Errorf("device of a bulk-created enrollment: %+v", op)
	}
	for id, want := range map[string]int{"node-sym": 1, "node-x509": 1, "node-b1": 1, "node-b2": 1} {
		if ei, _ := sim.Enrollment(id); ei.Creates != want {
			t.Errorf("%s created %d times, want %d", id, ei.Creates, want)
		}
	}
}

func decodeKey(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("key %q: %v", s, err)
	}
	return b
}

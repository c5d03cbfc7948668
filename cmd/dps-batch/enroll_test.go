package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
)

// serviceSim is a simulator with no enrollments, serving the service API
// with an owner policy and a read-only one.
type serviceSim struct {
	sim      *dpssim.Server
	run      *dpssim.Running
	caFile   string
	conn     string // owner connection string
	readonly string // read-only policy's connection string
	host     string
	dir      string
}

const svcScope = "0ne0000e2e0"

func newServiceSim(t testing.TB, tweak func(*dpssim.Config)) *serviceSim {
	t.Helper()
	owner := base64.StdEncoding.EncodeToString([]byte("owner key for the cmd tests 0001"))
	reader := base64.StdEncoding.EncodeToString([]byte("reader key for the cmd tests 002"))
	zero := 0
	cfg := dpssim.Config{
		IDScope:           svcScope,
		RetryAfterSeconds: &zero,
		ServicePolicies: []dpssim.ServicePolicy{
			{Name: dpssim.DefaultServicePolicy, PrimaryKey: owner, Rights: []string{dpssim.RightEnrollmentRead, dpssim.RightEnrollmentWrite, dpssim.RightRegistrationStatusRead, dpssim.RightRegistrationStatusWrite}},
			{Name: "readonly", PrimaryKey: reader, Rights: []string{dpssim.RightEnrollmentRead, dpssim.RightRegistrationStatusRead}},
		},
		Quotas: dpssim.Quotas{ServiceOperationsPerMinute: -1, RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	sim, err := dpssim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, err := dpssim.StartTLS(sim, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Close() })
	s := &serviceSim{sim: sim, run: run, dir: t.TempDir()}
	u, _ := url.Parse(run.URL)
	s.host = u.Host
	s.caFile = filepath.Join(s.dir, "sim-ca.pem")
	if err := os.WriteFile(s.caFile, run.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if s.conn, err = sim.ServiceConnectionString(s.host, ""); err != nil {
		t.Fatal(err)
	}
	if s.readonly, err = sim.ServiceConnectionString(s.host, "readonly"); err != nil {
		t.Fatal(err)
	}
	return s
}

// runCmdEnv runs the CLI in-process with environment variables.
func runCmdEnv(t testing.TB, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb,
		getenv: func(k string) string { return vars[k] }})
	return code, out.String(), errb.String()
}

// writeMixedManifest writes nX509 X.509 devices issued by a root (no chain:
// an individual enrollment matches the device certificate alone) and nSym
// symmetric-key devices, and returns the manifest path and the ids.
func writeMixedManifest(t testing.TB, dir string, nX509, nSym int) (string, []string) {
	t.Helper()
	var ids, rows []string
	if nX509 > 0 {
		fleet, err := certs.GenerateFleet(context.Background(), certs.FleetOptions{Dir: dir, Count: nX509, Prefix: "cert-", Chain: certs.ChainRoot})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(fleet.ManifestPath)
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
			rows = append(rows, strings.TrimSpace(line)+",")
		}
		ids = append(ids, fleet.RegistrationIDs...)
	}
	for i := range nSym {
		id := fmt.Sprintf("sym-%05d", i+1)
		ids = append(ids, id)
		rows = append(rows, id+",,,,"+base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("key of %s, 32 bytes long..", id))[:32]))
	}
	path := filepath.Join(dir, "enroll.csv")
	if err := os.WriteFile(path, []byte("registration_id,cert_path,key_path,chain_path,symmetric_key\n"+strings.Join(rows, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, ids
}

// policyKey returns the SharedAccessKey of a connection string.
func (s *serviceSim) policyKey(conn string) string {
	_, k, _ := strings.Cut(conn, "SharedAccessKey=")
	return k
}

func (s *serviceSim) wantCreatedOnce(t testing.TB, ids []string) {
	t.Helper()
	for _, id := range ids {
		e, ok := s.sim.Enrollment(id)
		if !ok || e.Creates != 1 || !e.Exists {
			t.Errorf("enrollment %s at the simulator: %+v; want created exactly once", id, e)
		}
	}
}

func TestEnrollThenProvision(t *testing.T) {
	s := newServiceSim(t, func(c *dpssim.Config) { c.Hubs = []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net"} })
	manifest, ids := writeMixedManifest(t, s.dir, 6, 9)
	vars := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	ledgerPath := filepath.Join(s.dir, "fleet.ledger")
	code, out, errs := runCmdEnv(t, vars, "enroll", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--iot-hub", "hub-b.azure-devices.net", "--quiet")
	if code != exitOK {
		t.Fatalf("enroll exit %d\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(out, "created 15") || !strings.Contains(out, "Next: dps-batch provision") {
		t.Errorf("summary:\n%s", out)
	}
	s.wantCreatedOnce(t, ids)
	code, out, errs = runCmd(t, "provision", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile,
		"--id-scope", svcScope, "--endpoint", s.run.URL, "--quiet")
	if code != exitOK {
		t.Fatalf("provision exit %d\n%s\n%s", code, out, errs)
	}
	for _, id := range ids {
		r, ok := s.sim.Registration(id)
		if !ok || r.AssignedHub != "hub-b.azure-devices.net" {
			t.Errorf("registration of %s: %+v, want assigned to hub-b (the enrollment's hub)", id, r)
		}
	}
	// The same enroll again sends nothing and exits 0.
	code, out, _ = runCmdEnv(t, vars, "enroll", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--iot-hub", "hub-b.azure-devices.net", "--json")
	var sum enrollSummaryJSON
	if err := json.Unmarshal([]byte(out), &sum); err != nil || code != exitOK || sum.Requests != 0 || sum.Outcomes["skipped"] != 15 {
		t.Errorf("re-run: exit %d, %+v (%v)", code, sum, err)
	}
}

func TestEnrollExitCodesAndMessages(t *testing.T) {
	s := newServiceSim(t, nil)
	manifest, _ := writeMixedManifest(t, s.dir, 0, 12)
	owner := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	lp := func(name string) string { return filepath.Join(s.dir, name+".ledger") }

	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	wrongHost := strings.Replace(s.conn, s.host, closed, 1)

	connFile := filepath.Join(s.dir, "conn.txt")
	os.WriteFile(connFile, []byte(s.conn+"\n"), 0o600)
	tests := []struct {
		name       string
		vars       map[string]string
		args       []string
		code       int
		wantStderr []string
	}{
		{"no manifest", owner, []string{"enroll"}, exitUsage, []string{"--manifest is required", "Try:"}},
		{"no connection string", nil, []string{"enroll", "--manifest", manifest}, exitUsage, []string{"no service connection string in environment variable DPS_SERVICE_CONNECTION_STRING", "Shared access policies"}},
		{"bad connection string", map[string]string{"DPS_SERVICE_CONNECTION_STRING": "HostName=x;SharedAccessKey=abc"}, []string{"enroll", "--manifest", manifest}, exitUsage, []string{"lacks SharedAccessKeyName"}},
		{"entra needs host", owner, []string{"enroll", "--manifest", manifest, "--auth", "entra"}, exitUsage, []string{"--auth entra needs --service-host"}},
		{"bad mode", owner, []string{"enroll", "--manifest", manifest, "--mode", "upsert"}, exitUsage, []string{"--mode must be"}},
		{"batch too big", owner, []string{"enroll", "--manifest", manifest, "--batch", "11"}, exitUsage, []string{"--batch must be 1 to 10"}},
		{"generate keys needs out", owner, []string{"enroll", "--manifest", manifest, "--generate-keys"}, exitUsage, []string{"--generate-keys and --out-manifest go together"}},
		{"read-only policy", map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.readonly}, []string{"enroll", "--manifest", manifest, "--ledger", lp("ro"), "--ca-file", s.caFile, "--quiet"}, exitSystemic,
			[]string{"HTTP 40", "hint:", "EnrollmentWrite"}},
		{"wrong host", map[string]string{"DPS_SERVICE_CONNECTION_STRING": wrongHost}, []string{"enroll", "--manifest", manifest, "--ledger", lp("wrong"), "--ca-file", s.caFile, "--quiet", "--request-timeout", "3s"}, exitSystemic,
			[]string{"hint: nothing answered at the service host"}},
		{"untrusted server", owner, []string{"enroll", "--manifest", manifest, "--ledger", lp("trust"), "--quiet"}, exitSystemic, []string{"--ca-file"}},
		{"connection string from a file", nil, []string{"enroll", "--manifest", manifest, "--ledger", lp("file"), "--ca-file", s.caFile, "--service-connection-string-file", connFile, "--quiet"}, exitOK, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmdEnv(t, tt.vars, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errs)
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
			for _, secret := range []string{s.policyKey(s.conn), s.policyKey(s.readonly), "sig="} {
				if strings.Contains(out+errs, secret) {
					t.Errorf("output shows %q:\n%s\n%s", secret, out, errs)
				}
			}
		})
	}

	t.Run("ledger busy", func(t *testing.T) {
		l, err := ledger.Open(context.Background(), lp("busy"), ledger.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Lock(); err != nil {
			t.Fatal(err)
		}
		code, _, errs := runCmdEnv(t, owner, "enroll", "--manifest", manifest, "--ledger", lp("busy"), "--ca-file", s.caFile, "--quiet")
		if code != exitBusy || !strings.Contains(errs, "in use by another dps-batch run") {
			t.Errorf("exit %d, stderr %q; want %d", code, errs, exitBusy)
		}
	})
	t.Run("rows without credentials", func(t *testing.T) {
		ids := filepath.Join(s.dir, "ids.csv")
		os.WriteFile(ids, []byte("registration_id\ndev-a\ndev-b\n"), 0o644)
		code, _, errs := runCmdEnv(t, owner, "enroll", "--manifest", ids, "--ledger", lp("ids"), "--ca-file", s.caFile)
		if code != exitUsage || !strings.Contains(errs, "--generate-keys --out-manifest FILE") {
			t.Errorf("exit %d, stderr:\n%s", code, errs)
		}
	})
	t.Run("exists with another attestation", func(t *testing.T) {
		other := filepath.Join(s.dir, "other.csv")
		b, _ := os.ReadFile(manifest)
		// The same ids with other keys.
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for i := 1; i < len(lines); i++ {
			f := strings.Split(lines[i], ",")
			f[4] = base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("another key %02d, 32 bytes long...", i))[:32])
			lines[i] = strings.Join(f, ",")
		}
		os.WriteFile(other, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
		code, out, errs := runCmdEnv(t, owner, "enroll", "--manifest", other, "--ledger", lp("other"), "--ca-file", s.caFile, "--quiet")
		if code != exitDeviceFails || !strings.Contains(out, "exists-different 12") || !strings.Contains(out, "--mode update replaces it") {
			t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
		}
		code, out, _ = runCmdEnv(t, owner, "enroll", "--manifest", other, "--ledger", lp("other"), "--ca-file", s.caFile, "--quiet", "--mode", "update")
		if code != exitOK || !strings.Contains(out, "updated 12") {
			t.Errorf("update: exit %d\n%s", code, out)
		}
	})
}

func TestEnrollGenerateKeys(t *testing.T) {
	s := newServiceSim(t, nil)
	vars := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	in := filepath.Join(s.dir, "in", "ids.csv")
	os.MkdirAll(filepath.Dir(in), 0o755)
	os.WriteFile(in, []byte("serial,notes\nline3-0001,a\nline3-0002,b\nline3-0003,\n"), 0o644)
	out := filepath.Join(s.dir, "keys", "devices.csv")
	os.MkdirAll(filepath.Dir(out), 0o755)
	ledgerPath := filepath.Join(s.dir, "keys.ledger")
	args := []string{"enroll", "--manifest", in, "--column", "registration_id=serial", "--generate-keys", "--out-manifest", out,
		"--ledger", ledgerPath, "--ca-file", s.caFile, "--quiet"}
	code, stdout, errs := runCmdEnv(t, vars, args...)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, errs)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("out manifest %v, %v: want mode 0600", fi, err)
	}
	first, _ := os.ReadFile(out)
	if !strings.Contains(string(first), "serial,notes,symmetric_key") || strings.Count(string(first), "\n") != 4 {
		t.Errorf("out manifest:\n%s", first)
	}
	if strings.Contains(stdout+errs, strings.Split(strings.Split(string(first), "\n")[1], ",")[2]) {
		t.Error("a generated key was printed")
	}
	// Run again: the keys are kept and nothing is sent.
	code, stdout, errs = runCmdEnv(t, vars, args...)
	second, _ := os.ReadFile(out)
	if code != exitOK || string(first) != string(second) || !strings.Contains(errs, "0 generated, 3 kept") || !strings.Contains(stdout, "skipped 3") {
		t.Errorf("second run: exit %d, keys kept %v\n%s\n%s", code, string(first) == string(second), stdout, errs)
	}
	s.wantCreatedOnce(t, []string{"line3-0001", "line3-0002", "line3-0003"})
	// The devices provision with the new manifest.
	code, stdout, errs = runCmd(t, "provision", "--manifest", out, "--column", "registration_id=serial", "--ledger", ledgerPath, "--ca-file", s.caFile,
		"--id-scope", svcScope, "--endpoint", s.run.URL, "--quiet")
	if code != exitOK {
		t.Errorf("provision from the generated manifest: exit %d\n%s\n%s", code, stdout, errs)
	}
}

func TestDeregisterCommand(t *testing.T) {
	s := newServiceSim(t, nil)
	manifest, ids := writeMixedManifest(t, s.dir, 0, 8)
	vars := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	ledgerPath := filepath.Join(s.dir, "d.ledger")
	if code, out, errs := runCmdEnv(t, vars, "enroll", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--quiet"); code != exitOK {
		t.Fatalf("enroll: %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs := runCmd(t, "provision", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--id-scope", svcScope, "--endpoint", s.run.URL, "--quiet"); code != exitOK {
		t.Fatalf("provision: %d\n%s\n%s", code, out, errs)
	}
	base := []string{"deregister", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--enrollments", "--quiet"}

	code, out, _ := runCmdEnv(t, vars, append(base, "--dry-run")...)
	if code != exitOK || !strings.Contains(out, "would delete the registration states and individual enrollments of 8 device(s)") {
		t.Errorf("dry run: exit %d\n%s", code, out)
	}
	code, _, errs := runCmdEnv(t, vars, base...)
	if code != exitUsage || !strings.Contains(errs, "no terminal to confirm it on: add --yes") {
		t.Errorf("without --yes and no terminal: exit %d\n%s", code, errs)
	}
	for _, id := range ids {
		if e, _ := s.sim.Enrollment(id); !e.Exists {
			t.Fatalf("%s deleted without confirmation", id)
		}
	}
	code, out, errs = runCmdEnv(t, vars, append(base, "--yes")...)
	if code != exitOK || !strings.Contains(out, "registration states: 8 deleted, 0 had none") {
		t.Errorf("deregister: exit %d\n%s\n%s", code, out, errs)
	}
	for _, id := range ids {
		if e, _ := s.sim.Enrollment(id); e.Exists || e.Deletes != 1 {
			t.Errorf("%s: %+v, want deleted once", id, e)
		}
	}
	code, out, _ = runCmdEnv(t, vars, append(base, "--yes")...)
	if code != exitOK || !strings.Contains(out, "skipped 8") {
		t.Errorf("second deregister: exit %d\n%s", code, out)
	}
}

func TestAskYes(t *testing.T) {
	for in, ok := range map[string]bool{"yes\n": true, "y\n": true, "YES\n": true, "no\n": false, "\n": false, "": false} {
		err := askYes(strings.NewReader(in), &bytes.Buffer{}, "Delete?")
		if (err == nil) != ok {
			t.Errorf("answer %q: err %v", in, err)
		}
	}
}

func TestEnrollmentsExport(t *testing.T) {
	s := newServiceSim(t, nil)
	manifest, ids := writeMixedManifest(t, s.dir, 3, 250)
	vars := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	if code, out, errs := runCmdEnv(t, vars, "enroll", "--manifest", manifest, "--ca-file", s.caFile, "--quiet"); code != exitOK {
		t.Fatalf("enroll: %d\n%s\n%s", code, out, errs)
	}
	csvOut := filepath.Join(s.dir, "enrollments.csv")
	code, _, errs := runCmdEnv(t, vars, "enrollments", "export", "--ca-file", s.caFile, "--out", csvOut, "--page-size", "40")
	if code != exitOK || !strings.Contains(errs, "Exported 253 enrollments (7 pages") {
		t.Fatalf("export: exit %d\n%s", code, errs)
	}
	b, _ := os.ReadFile(csvOut)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 254 || lines[0] != strings.Join(exportColumns, ",") {
		t.Fatalf("csv has %d lines, header %q", len(lines), lines[0])
	}
	x509Row := ""
	for _, l := range lines {
		if strings.HasPrefix(l, ids[0]+",") {
			x509Row = l
		}
	}
	if !strings.Contains(x509Row, ",x509,") || len(strings.Split(x509Row, ",")[2]) != 64 {
		t.Errorf("X.509 row %q: want the certificate thumbprint", x509Row)
	}
	code, out, _ := runCmdEnv(t, vars, "enrollments", "export", "--ca-file", s.caFile, "--format", "jsonl")
	if code != exitOK || strings.Count(out, "\n") != 253 {
		t.Errorf("jsonl: exit %d, %d lines", code, strings.Count(out, "\n"))
	}
	if strings.Contains(out, "primaryKey") || strings.Contains(string(b), "=,") && strings.Contains(string(b), "symmetricKey") && strings.Contains(string(b), "key of") {
		t.Error("export shows symmetric keys")
	}
	for _, id := range ids[3:6] {
		k := base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("key of %s, 32 bytes long..", id))[:32])
		if strings.Contains(out, k) || strings.Contains(string(b), k) {
			t.Errorf("export shows the key of %s", id)
		}
	}
	code, _, errs = runCmdEnv(t, map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.readonly}, "enrollments", "export", "--ca-file", s.caFile, "--out", filepath.Join(s.dir, "ro.csv"))
	if code != exitOK {
		t.Errorf("a read-only policy may export: exit %d\n%s", code, errs)
	}
}

func TestEnrollGroupCommand(t *testing.T) {
	s := newServiceSim(t, nil)
	vars := map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}
	fleet, err := certs.GenerateFleet(context.Background(), certs.FleetOptions{Dir: filepath.Join(s.dir, "fleet"), Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"enroll", "group", "--id", "line3", "--ca-cert", fleet.IntermediateCertPath, "--ca-file", s.caFile}
	if code, out, errs := runCmdEnv(t, vars, args...); code != exitOK || !strings.Contains(out, "created") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, _ := runCmdEnv(t, vars, args...); code != exitOK || !strings.Contains(out, "same attestation") {
		t.Errorf("again: exit %d\n%s", code, out)
	}
	other := []string{"enroll", "group", "--id", "line3", "--ca-cert", fleet.RootCertPath, "--ca-file", s.caFile}
	if code, out, _ := runCmdEnv(t, vars, other...); code != exitDeviceFails || !strings.Contains(out, "another attestation") {
		t.Errorf("different: exit %d\n%s", code, out)
	}
	if code, out, _ := runCmdEnv(t, vars, append(other, "--update")...); code != exitOK || !strings.Contains(out, "replaced") {
		t.Errorf("update: exit %d\n%s", code, out)
	}
	// The fleet provisions through the group (its CA is uploaded to it).
	if code, out, errs := runCmd(t, "provision", "--manifest", fleet.ManifestPath, "--ca-file", s.caFile, "--id-scope", svcScope, "--endpoint", s.run.URL, "--quiet"); code != exitOK {
		t.Errorf("provision through the group: exit %d\n%s\n%s", code, out, errs)
	}
	keyOut := filepath.Join(s.dir, "sensors.key")
	sym := []string{"enroll", "group", "--id", "sensors", "--symmetric", "--key-out", keyOut, "--ca-file", s.caFile}
	if code, out, errs := runCmdEnv(t, vars, sym...); code != exitOK {
		t.Fatalf("symmetric: exit %d\n%s\n%s", code, out, errs)
	}
	fi, err := os.Stat(keyOut)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", fi, err)
	}
	key, _ := os.ReadFile(keyOut)
	if code, out, _ := runCmdEnv(t, vars, sym...); code != exitOK || !strings.Contains(out, "same attestation") || strings.Contains(out, strings.TrimSpace(string(key))) {
		t.Errorf("symmetric again: exit %d\n%s", code, out)
	}
	if code, _, errs := runCmdEnv(t, vars, "enroll", "group", "--id", "x", "--symmetric"); code != exitUsage || !strings.Contains(errs, "--key-out") {
		t.Errorf("symmetric without --key-out: %d %s", code, errs)
	}
}

// TestEnrollKilledAndResumedCreatesOnce kills enroll processes (SIGKILL)
// at random moments while bulk requests are in flight, then runs the same
// command to the end: every enrollment is created exactly once, counted at
// the simulator.
func TestEnrollKilledAndResumedCreatesOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("kills processes")
	}
	s := newServiceSim(t, func(c *dpssim.Config) {
		c.Faults = dpssim.Faults{Seed: 3, Latency: dpssim.Duration(80 * time.Millisecond), LatencyJitter: dpssim.Duration(80 * time.Millisecond)}
	})
	manifest, ids := writeMixedManifest(t, s.dir, 10, 290)
	ledgerPath := filepath.Join(s.dir, "kill.ledger")
	args := []string{"enroll", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--quiet", "--workers", "4", "--rate", "-1"}
	rng := mrand.New(mrand.NewPCG(1, 2))
	kills := 0
	for range 6 {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), cliEnv+"=1", "DPS_SERVICE_CONNECTION_STRING="+s.conn)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-time.After(time.Duration(300+rng.IntN(900)) * time.Millisecond):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			kills++
		case <-done:
		}
	}
	code, out, errs := runCmdEnv(t, map[string]string{"DPS_SERVICE_CONNECTION_STRING": s.conn}, args...)
	if code != exitOK {
		t.Fatalf("final run: exit %d\n%s\n%s", code, out, errs)
	}
	s.wantCreatedOnce(t, ids)
	l, err := ledger.Open(context.Background(), ledgerPath, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, _ := l.EnrollmentCounts(context.Background())
	if c.ByState[ledger.EnrollCreated] != len(ids) {
		t.Errorf("ledger states %v, want %d created", c.ByState, len(ids))
	}
	t.Logf("%d kills; ledger: %v, %d reads after lost answers", kills, c.ByState, c.Reads)
}

// TestEnrollWithBearerToken signs with bearer tokens of a test issuer the
// simulator trusts, standing in for Microsoft Entra ID: a Data Contributor
// token enrols, a Data Reader token stops the run with exit 6, an expired
// one too.
func TestEnrollWithBearerToken(t *testing.T) {
	iss, err := dpssim.NewTestIssuer()
	if err != nil {
		t.Fatal(err)
	}
	s := newServiceSim(t, func(c *dpssim.Config) { c.EntraIssuers = []dpssim.EntraIssuer{iss.EntraIssuer()} })
	manifest, ids := writeMixedManifest(t, s.dir, 0, 5)
	token := func(roles []string, ttl time.Duration) map[string]string {
		tok, err := iss.Token(roles, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{"DPS_SERVICE_TOKEN": tok}
	}
	args := func(name string) []string {
		return []string{"enroll", "--manifest", manifest, "--ledger", filepath.Join(s.dir, name+".ledger"), "--ca-file", s.caFile,
			"--auth", "token", "--service-host", s.host, "--quiet"}
	}
	code, out, errs := runCmdEnv(t, token([]string{dpssim.RoleDataReader}, time.Hour), args("reader")...)
	if code != exitSystemic || !strings.Contains(errs, "hint:") {
		t.Errorf("reader token: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runCmdEnv(t, token([]string{dpssim.RoleDataContributor}, -time.Hour), args("expired")...)
	if code != exitSystemic {
		t.Errorf("expired token: exit %d\n%s\n%s", code, out, errs)
	}
	vars := token([]string{dpssim.RoleDataContributor}, time.Hour)
	code, out, errs = runCmdEnv(t, vars, args("contributor")...)
	if code != exitOK {
		t.Fatalf("contributor token: exit %d\n%s\n%s", code, out, errs)
	}
	if strings.Contains(out+errs, vars["DPS_SERVICE_TOKEN"]) {
		t.Error("the token was printed")
	}
	s.wantCreatedOnce(t, ids)
}

// TestEnrollLocalThenProvision is what demo --individual does: a fleet with
// individual enrollments, a simulator without enrollments, enroll with the
// simulator's connection string in memory, then provision.
func TestEnrollLocalThenProvision(t *testing.T) {
	s := newServiceSim(t, nil)
	manifest, ids := writeMixedManifest(t, s.dir, 4, 6)
	ledgerPath := filepath.Join(s.dir, "demo.ledger")
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	res, err := enrollLocal(context.Background(), e, manifest, ledgerPath, s.caFile, s.conn, -1, "dps-batch demo --individual --dir X")
	if err != nil || res.Snapshot.Outcomes[batch.EnOutCreated] != 10 {
		t.Fatalf("enrollLocal: %v\n%s\n%s", err, out.String(), errb.String())
	}
	if strings.Contains(out.String()+errb.String(), s.policyKey(s.conn)) {
		t.Error("the policy key was printed")
	}
	code, o, errs := runCmd(t, "provision", "--manifest", manifest, "--ledger", ledgerPath, "--ca-file", s.caFile, "--id-scope", svcScope, "--endpoint", s.run.URL, "--quiet")
	if code != exitOK {
		t.Fatalf("provision: %d\n%s\n%s", code, o, errs)
	}
	s.wantCreatedOnce(t, ids)
}

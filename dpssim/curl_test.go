package dpssim

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// curlResult is one "curl -i" transcript: the last status line and the body.
type curlResult struct {
	status string
	header map[string]string
	body   string
}

// runCurl runs the real curl binary in dir and splits its -i output.
func runCurl(t *testing.T, dir string, args ...string) curlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
	}
	res := curlResult{header: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	inBody := false
	var body []string
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case inBody:
			body = append(body, line)
		case strings.HasPrefix(line, "HTTP/"):
			res.status = line
			res.header = map[string]string{}
		case line == "":
			inBody = true
		default:
			if k, v, ok := strings.Cut(line, ":"); ok {
				res.header[strings.ToLower(k)] = strings.TrimSpace(v)
			}
		}
	}
	res.body = strings.Join(body, "\n")
	return res
}

// writePEMFiles writes a device's certificate (optionally with its chain)
// and key with the file names of the seed article.
func writePEMFiles(t *testing.T, dir string, leaf *certs.Leaf, withChain bool) {
	t.Helper()
	chain := []*x509.Certificate{leaf.Cert}
	if withChain {
		chain = append(chain, leaf.Chain...)
	}
	key, err := certs.KeyPEM(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "dpsTestDevice01_cert.pem"), string(certs.CertPEM(chain...)))
	if err := os.WriteFile(filepath.Join(dir, "dpsTestDevice01_key.pem"), key, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCurlSeedArticle runs the seed article's two curl commands, verbatim
// except for --cacert and the host, against the simulator, for the
// article's three setups: an individual enrollment, a group on an uploaded
// intermediate certificate, and a group on a root CA verified by proof of
// possession (done with curl too).
func TestCurlSeedArticle(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed; this test runs the seed article's curl commands")
	}
	root, err := certs.NewRoot("dps-test-root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("dps-test-intermediate", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const regID = "dps-test-device-01"
	rootDevice := mustDevice(t, root, regID)
	interDevice := mustDevice(t, inter, regID)

	tests := []struct {
		name      string
		cfg       Config
		device    *certs.Leaf
		withChain bool
		verify    string // CA certificate to verify by proof of possession first
	}{
		{
			name:   "individual enrollment",
			cfg:    Config{Individual: []IndividualEnrollment{{RegistrationID: regID, Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(rootDevice)}}}}},
			device: rootDevice,
		},
		{
			name:   "group on an intermediate certificate",
			cfg:    Config{Groups: []EnrollmentGroup{{EnrollmentGroupID: "dps-test-group", Attestation: Attestation{X509: &X509Attestation{SigningCertificate: caPEM(inter)}}}}},
			device: interDevice,
		},
		{
			name: "group on a verified root CA",
			cfg: Config{Certificates: []CACertificate{{Name: "dps-test-root", PEM: caPEM(root)}},
				Groups: []EnrollmentGroup{{EnrollmentGroupID: "dps-test-group", Attestation: Attestation{X509: &X509Attestation{CACertificate: "dps-test-root"}}}}},
			device: interDevice, withChain: true, verify: "dps-test-root",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.IDScope = testScope
			sim := mustNew(t, tt.cfg)
			run := mustStart(t, sim)
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "sim-ca.pem"), string(run.CAPEM))
			writePEMFiles(t, dir, tt.device, tt.withChain)

			if tt.verify != "" {
				code := runCurl(t, dir, "-s", "-i", "-X", "POST", "--cacert", "sim-ca.pem", run.URL+"/_sim/certificates/"+tt.verify+"/verificationCode")
				var v struct{ VerificationCode string }
				if err := json.Unmarshal([]byte(code.body), &v); err != nil || v.VerificationCode == "" {
					t.Fatalf("verification code: %s %s", code.status, code.body)
				}
				vc, err := root.NewVerification(v.VerificationCode, certs.Options{})
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(dir, "verification_cert.pem"), string(certs.CertPEM(vc.Cert)))
				res := runCurl(t, dir, "-s", "-i", "-X", "POST", "--cacert", "sim-ca.pem", "--data-binary", "@verification_cert.pem", run.URL+"/_sim/certificates/"+tt.verify+"/verify")
				if !strings.Contains(res.status, " 200") {
					t.Fatalf("verify: %s %s", res.status, res.body)
				}
			}

			// The article's register command (plus --cacert for the simulator's CA).
			reg := runCurl(t, dir, "-L", "-i", "-X", "PUT", "--cacert", "sim-ca.pem",
				"--cert", "./dpsTestDevice01_cert.pem", "--key", "./dpsTestDevice01_key.pem",
				"-H", "Content-Type: application/json", "-H", "Content-Encoding:  utf-8",
				"-d", `{"registrationId": "`+regID+`"}`,
				run.URL+"/"+testScope+"/registrations/"+regID+"/register?api-version=2019-03-31")
			if !strings.Contains(reg.status, " 202") || reg.header["retry-after"] != "3" || reg.header["x-ms-request-id"] == "" {
				t.Fatalf("register: %s %v %s, want 202 with Retry-After and x-ms-request-id", reg.status, reg.header, reg.body)
			}
			var op dps.RegistrationOperationStatus
			if err := json.Unmarshal([]byte(reg.body), &op); err != nil || op.Status != dps.StatusAssigning || op.OperationID == "" {
				t.Fatalf("register body %q: want operationId and status assigning", reg.body)
			}

			// The article's status command.
			st := runCurl(t, dir, "-L", "-i", "-X", "GET", "--cacert", "sim-ca.pem",
				"--cert", "./dpsTestDevice01_cert.pem", "--key", "./dpsTestDevice01_key.pem",
				"-H", "Content-Type: application/json", "-H", "Content-Encoding:  utf-8",
				run.URL+"/"+testScope+"/registrations/"+regID+"/operations/"+op.OperationID+"?api-version=2019-03-31")
			if !strings.Contains(st.status, " 200") {
				t.Fatalf("status: %s %s, want 200", st.status, st.body)
			}
			var final dps.RegistrationOperationStatus
			if err := json.Unmarshal([]byte(st.body), &final); err != nil {
				t.Fatalf("status body %q: %v", st.body, err)
			}
			if rs := final.RegistrationState; final.Status != dps.StatusAssigned || rs == nil || rs.AssignedHub == "" || rs.DeviceID != regID {
				t.Errorf("status body = %s, want assigned with a hub and device id %s", st.body, regID)
			}
		})
	}
}

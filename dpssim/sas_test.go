package dpssim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// sasToken builds a token the way a given SDK does: sr is signed and sent
// exactly as given, the fields come in the given order, skn is omitted when
// nil.
func handToken(key []byte, sr string, expiry time.Time, order []string, skn *string, escapeSig bool) string {
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if escapeSig {
		sig = url.QueryEscape(sig)
	}
	vals := map[string]string{"sr": sr, "sig": sig, "se": se}
	if skn != nil {
		vals["skn"] = *skn
	}
	var parts []string
	for _, k := range order {
		if v, ok := vals[k]; ok {
			parts = append(parts, k+"="+v)
		}
	}
	return "SharedAccessSignature " + strings.Join(parts, "&")
}

func strp(s string) *string { return &s }

// TestSASVariants sends the SAS shapes the SDKs produce (dps-protocol.md
// §5.2) and some that DPS must refuse.
func TestSASVariants(t *testing.T) {
	sim := mustNew(t, Config{IDScope: testScope, Individual: []IndividualEnrollment{{RegistrationID: "sas-1",
		Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}})
	run := mustStart(t, sim)
	dev := newRawDevice(t, run, "sas-1", nil, nil)
	raw := testScope + "/registrations/sas-1"
	lower := strings.ReplaceAll(url.QueryEscape(raw), "%2F", "%2f")
	upper := url.QueryEscape(raw)
	later := time.Now().Add(time.Hour)
	cOrder := []string{"sr", "sig", "se", "skn"}
	nodeOrder := []string{"sr", "sig", "skn", "se"}
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"C: lower-case %2f, sr sig se skn", handToken(keyA, lower, later, cOrder, strp("registration"), true), http.StatusAccepted},
		{"C#/Python: upper-case %2F", handToken(keyA, upper, later, cOrder, strp("registration"), true), http.StatusAccepted},
		{"Node: raw sr, sr sig skn se", handToken(keyA, raw, later, nodeOrder, strp("registration"), true), http.StatusAccepted},
		{"Java: raw sr, empty skn", handToken(keyA, raw, later, cOrder, strp(""), true), http.StatusAccepted},
		{"Python MQTT style: no skn", handToken(keyA, upper, later, cOrder, nil, true), http.StatusAccepted},
		{"IoT Edge: lower-cased audience", handToken(keyA, strings.ToLower(lower), later, cOrder, strp("registration"), true), http.StatusAccepted},
		{"sig not URL-encoded", handToken(keyA, lower, later, cOrder, strp("registration"), false), http.StatusAccepted},
		{"prefix in lower case", strings.Replace(handToken(keyA, lower, later, cOrder, strp("registration"), true), "SharedAccessSignature", "sharedaccesssignature", 1), http.StatusAccepted},
		{"dps.SASToken", dps.SASToken(keyA, testScope, "sas-1", later), http.StatusAccepted},
		{"wrong key", handToken(keyB, lower, later, cOrder, strp("registration"), true), http.StatusUnauthorized},
		{"expired", handToken(keyA, lower, time.Now().Add(-time.Second), cOrder, strp("registration"), true), http.StatusUnauthorized},
		{"service policy skn", handToken(keyA, lower, later, cOrder, strp("provisioningserviceowner"), true), http.StatusUnauthorized},
		{"sr with host", handToken(keyA, url.QueryEscape("global.azure-devices-provisioning.net/"+raw), later, cOrder, strp("registration"), true), http.StatusUnauthorized},
		{"sr signed but se changed", strings.Replace(handToken(keyA, lower, later, cOrder, nil, true), "se="+strconv.FormatInt(later.Unix(), 10), "se="+strconv.FormatInt(later.Unix()+1, 10), 1), http.StatusUnauthorized},
		{"missing sig", "SharedAccessSignature sr=" + lower + "&se=" + strconv.FormatInt(later.Unix(), 10), http.StatusUnauthorized},
		{"not a SAS token", "Bearer abc", http.StatusUnauthorized},
		{"se not a number", "SharedAccessSignature sr=" + lower + "&sig=abc&se=tomorrow", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dev.do(http.MethodPut, dev.registerPath(), `{"registrationId":"sas-1"}`, map[string]string{"Authorization": tt.token})
			if r.status != tt.want {
				t.Fatalf("register = %d %s, want %d", r.status, r.body, tt.want)
			}
			if r.status == http.StatusUnauthorized {
				if code := r.errBody(t).ErrorCode; code != dps.CodeInvalidCredentials {
					t.Errorf("errorCode = %d, want 401002", code)
				}
				if strings.Contains(string(r.body), "sig=") {
					t.Errorf("error body repeats the token: %s", r.body)
				}
			}
			// Let the next case register again (no 409).
			if r.status == http.StatusAccepted {
				dev.key = keyA
				dev.poll(r.op(t).OperationID)
				dev.key = nil
			}
		})
	}
}

func TestParseSASNeverEchoesSecrets(t *testing.T) {
	secret := "c2VjcmV0LXNpZ25hdHVyZS12YWx1ZQ=="
	for _, h := range []string{
		"SharedAccessSignature sr=a&sig=" + secret + "&se=1&sig=" + secret,
		"SharedAccessSignature sr=a&" + secret + "&se=1",
		"SharedAccessSignature sr=a&sig=%zz" + secret + "&se=1",
	} {
		_, err := parseSAS(h)
		if err == nil {
			t.Errorf("parseSAS(%q) = nil error, want one", h)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), secret[:10]) {
			t.Errorf("parseSAS error %q contains the signature", err)
		}
	}
}

// TestDerivedKeyVector is the DPS documentation's worked example
// (concepts-symmetric-key-attestation.md): the simulator must accept a
// device that signs with exactly this derived key.
func TestDerivedKeyVector(t *testing.T) {
	// The group key here is our own; the derivation is checked against
	// HMAC-SHA256 computed independently.
	id := "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
	mac := hmac.New(sha256.New, groupKey)
	mac.Write([]byte(id))
	want := mac.Sum(nil)
	if got := dps.DeriveDeviceKeyBytes(groupKey, id); !hmac.Equal(got, want) {
		t.Fatalf("derived key differs from HMAC-SHA256(groupKey, id)")
	}
	sim := mustNew(t, Config{IDScope: testScope, Groups: []EnrollmentGroup{{EnrollmentGroupID: "g",
		Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(bytes32()), SecondaryKey: b64(groupKey)}}}}})
	run := mustStart(t, sim)
	final := newRawDevice(t, run, id, nil, want).registerAndWait()
	if op := final.op(t); op.Status != dps.StatusAssigned || op.RegistrationState.SymmetricKey == nil || op.RegistrationState.SymmetricKey.EnrollmentGroupID != "g" {
		t.Errorf("derived-key device (group secondary key) = %s, want assigned through group g", final.body)
	}
}

func bytes32() []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

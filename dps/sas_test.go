package dps_test

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// TestSASTokenKnownAnswer pins SASToken to values computed independently
// with openssl:
//
//	printf '<sr>\n<se>' | openssl sha256 -mac HMAC -macopt hexkey:<hex of key> -binary | base64
func TestSASTokenKnownAnswer(t *testing.T) {
	key := []byte("secret-device-key-0123456789abcdef")
	tests := []struct {
		name      string
		scope, id string
		expiry    int64
		want      string
	}{
		{
			name: "plain signature", scope: "0ne00ABCDEF", id: "dev-001", expiry: 1700000000,
			want: "SharedAccessSignature sr=0ne00ABCDEF%2fregistrations%2fdev-001&sig=UuZrcFeftmUUcpqqvEG4imTWqcepE3Hbmw2NlneuiUM%3D&se=1700000000&skn=registration",
		},
		{
			name: "signature with + and /", scope: "0ne00ABCDEF", id: "dev-001", expiry: 1700000002,
			want: "SharedAccessSignature sr=0ne00ABCDEF%2fregistrations%2fdev-001&sig=F0dAjNh2%2B8b0RQbp5OiPPPWbSIdX%2BVvN%2B4Vcd%2FdISJA%3D&se=1700000002&skn=registration",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := dps.SASToken(key, tt.scope, tt.id, time.Unix(tt.expiry, 0))
			if got != tt.want {
				t.Errorf("SASToken:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestSASResourceEncoding checks the sr field: lower-case hex escapes.
func TestSASResourceEncoding(t *testing.T) {
	tests := []struct{ id, wantSR string }{
		{"dev-001", "sr=0ne1%2fregistrations%2fdev-001&"},
		{"a:b", "sr=0ne1%2fregistrations%2fa%3ab&"},
		{"a.b_c", "sr=0ne1%2fregistrations%2fa.b_c&"},
	}
	for _, tt := range tests {
		if got := dps.SASToken([]byte("k"), "0ne1", tt.id, time.Unix(1, 0)); !strings.Contains(got, tt.wantSR) {
			t.Errorf("SASToken for %q: got %s, want it to contain %s", tt.id, got, tt.wantSR)
		}
	}
	if got, want := dps.SASResource("0ne1", "dev-001"), "0ne1/registrations/dev-001"; got != want {
		t.Errorf("SASResource: got %q, want %q", got, want)
	}
}

// TestDeriveDeviceKey uses the worked example from the DPS documentation
// (MicrosoftDocs/azure-docs, articles/iot-dps/concepts-symmetric-key-attestation.md
// and how-to-legacy-device-symm-key.md; also `az iot dps enrollment-group
// compute-device-key`), checked with openssl.
func TestDeriveDeviceKey(t *testing.T) {
	const (
		groupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
		regID    = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
		want     = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
	)
	got, err := dps.DeriveDeviceKey(groupKey, regID)
	if err != nil || got != want {
		t.Fatalf("DeriveDeviceKey: got %q, %v, want %q", got, err, want)
	}
	raw, _ := base64.StdEncoding.DecodeString(groupKey)
	if got := base64.StdEncoding.EncodeToString(dps.DeriveDeviceKeyBytes(raw, regID)); got != want {
		t.Errorf("DeriveDeviceKeyBytes: got %q, want %q", got, want)
	}
	if _, err := dps.DeriveDeviceKey("not base64!", regID); err == nil || strings.Contains(err.Error(), "not base64!") {
		t.Errorf("DeriveDeviceKey with a bad key: got %v, want an error that does not echo the key", err)
	}
}

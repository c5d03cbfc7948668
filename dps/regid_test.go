package dps_test

import (
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/dps"
)

func TestValidateRegistrationID(t *testing.T) {
	tests := []struct {
		id      string
		x509    bool
		wantErr string // substring; "" means valid
	}{
		{id: "dev-001"},
		{id: "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"},
		{id: "a.b_c:d-"},
		{id: "0"},
		{id: strings.Repeat("a", 128)},
		{id: strings.Repeat("a", 129), wantErr: "limit is 128"},
		{id: strings.Repeat("a", 64), x509: true},
		{id: strings.Repeat("a", 65), x509: true, wantErr: "limited to 64"},
		{id: "", wantErr: "empty"},
		{id: "Dev-001", wantErr: "upper-case"},
		{id: "dev 001", wantErr: "position 4"},
		{id: "dev/001", wantErr: "position 4"},
		{id: "dev.", wantErr: "must end"},
		{id: "dev_", wantErr: "must end"},
		{id: "dev:", wantErr: "must end"},
	}
	for _, tt := range tests {
		err := dps.ValidateRegistrationID(tt.id, tt.x509)
		if tt.wantErr == "" && err != nil {
			t.Errorf("ValidateRegistrationID(%q, %v): got %v, want nil", tt.id, tt.x509, err)
		}
		if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ValidateRegistrationID(%q, %v): got %v, want error containing %q", tt.id, tt.x509, err, tt.wantErr)
		}
	}
}

func TestValidateIDScope(t *testing.T) {
	for scope, ok := range map[string]bool{
		"0ne00012345": true, "0ne0012ABCD": true, "0ne0012abcd": true,
		"": false, "0ne0001234": false, "0ne000123456": false, "1ne00012345": false,
		"0ne0001234g": false, "mydps.azure-devices-provisioning.net": false,
	} {
		if err := dps.ValidateIDScope(scope); (err == nil) != ok {
			t.Errorf("ValidateIDScope(%q) = %v, want ok=%v", scope, err, ok)
		}
	}
}

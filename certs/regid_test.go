package certs

import (
	"strings"
	"testing"
)

func TestValidateRegistrationID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr string // "" means valid
	}{
		{"dev-00001", ""},
		{"a", ""},
		{"0", ""},
		{"sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", ""},
		{"site:1.room_2-", ""},
		{strings.Repeat("a", 64), ""},
		{"", "empty"},
		{strings.Repeat("a", 65), "limited to 64"},
		{"Dev-1", "upper-case"},
		{"dev 1", `' ' at position 4`},
		{"dev/1", `'/' at position 4`},
		{"dév", "position 2"},
		{"dev.", "must end with"},
		{"dev_", "must end with"},
		{"dev:", "must end with"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			err := ValidateRegistrationID(tt.id)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("ValidateRegistrationID(%q) = %v, want nil", tt.id, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("ValidateRegistrationID(%q) = %v, want an error containing %q", tt.id, err, tt.wantErr)
			}
		})
	}
}

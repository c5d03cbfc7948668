package dps

import (
	"net/http"
	"testing"
	"time"
)

// Microbenchmarks of the per-request work that does not touch the network:
// signing a SAS token (every symmetric-key request), deriving a group
// device key (once per device), and decoding the bodies DPS sends back.

func BenchmarkSASToken(b *testing.B) {
	key := DeriveDeviceKeyBytes([]byte("0123456789abcdef0123456789abcdef"), "sensor-0000001")
	expiry := time.Unix(1_900_000_000, 0)
	b.ReportAllocs()
	for b.Loop() {
		if tok := SASToken(key, "0ne00000000", "sensor-0000001", expiry); len(tok) == 0 {
			b.Fatal("empty token")
		}
	}
}

func BenchmarkDeriveDeviceKey(b *testing.B) {
	group := []byte("0123456789abcdef0123456789abcdef")
	b.ReportAllocs()
	for b.Loop() {
		if k := DeriveDeviceKeyBytes(group, "sensor-0000001"); len(k) != 32 {
			b.Fatalf("derived key has %d bytes, want 32", len(k))
		}
	}
}

func BenchmarkDecodeOperation(b *testing.B) {
	bodies := []struct {
		name string
		body string
		want Status
	}{
		{"assigning", `{"operationId":"5.316aab8ac7f8e5a1.b0c0a3e4-7b1c-4f9e-9d43-3c1f0c6a2f11","status":"assigning"}`, StatusAssigning},
		{"assigned", `{"operationId":"5.316aab8ac7f8e5a1.b0c0a3e4-7b1c-4f9e-9d43-3c1f0c6a2f11","status":"assigned","registrationState":` +
			`{"registrationId":"sensor-0000001","createdDateTimeUtc":"2024-05-01T10:00:00.1234567Z","assignedHub":"hub-1.azure-devices.net",` +
			`"deviceId":"sensor-0000001","status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2024-05-01T10:00:01.7654321Z",` +
			`"etag":"IjA1MDA2ZjM0LTAwMDAtMDcwMC0wMDAwLTY2MzIxYjQyMDAwMCI="}}`, StatusAssigned},
	}
	for _, tt := range bodies {
		data := []byte(tt.body)
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				st, err := decodeOperation(data)
				if err != nil {
					b.Fatal(err)
				}
				if st.Status != tt.want {
					b.Fatalf("status: got %q, want %q", st.Status, tt.want)
				}
			}
		})
	}
	b.Run("error", func(b *testing.B) {
		body := []byte(`{"errorCode":429001,"trackingId":"b0c0a3e4-7b1c-4f9e-9d43-3c1f0c6a2f11","message":"Operations are being throttled for this tenant.","timestampUtc":"2024-05-01T10:00:00.123Z"}`)
		h := http.Header{"Retry-After": {"3"}}
		b.ReportAllocs()
		for b.Loop() {
			e := &Error{HTTPStatus: http.StatusTooManyRequests}
			fillErrorDetails(e, h, body, false)
			if e.Code != 429001 {
				b.Fatalf("code: got %d, want 429001", e.Code)
			}
		}
	})
}

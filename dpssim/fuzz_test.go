package dpssim

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// FuzzParseSAS feeds arbitrary Authorization headers to the simulator's SAS
// parser. It must never panic; a token it accepts has sr, sig and se; and
// its errors, which go back to the client and into logs, never quote a
// signature.
func FuzzParseSAS(f *testing.F) {
	key := []byte("fuzz-device-key-0123456789abcdef")
	good := dps.SASToken(key, DefaultIDScope, "dev-1", time.Unix(1900000000, 0))
	for _, s := range []string{
		good,
		strings.ToLower(good),
		"SharedAccessSignature sig=abc&se=1&sr=x&skn=",
		"SharedAccessSignature sr=a%2Fb&sig=Zm9v+YmFy%3D&se=9&sr=again",
		"SharedAccessSignature sr=%zz&sig=&se=",
		"SharedAccessSignature sigZm9vYmFyYmF6cXV4",
		"SharedAccessSignature ",
		"Bearer abc",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		tok, err := parseSAS(h)
		if err != nil {
			msg := err.Error()
			// Whatever followed sig= must not come back in the message.
			for _, field := range strings.Split(h, "&") {
				k, v, ok := strings.Cut(field, "=")
				if !ok || !strings.EqualFold(strings.TrimSpace(strings.TrimPrefix(strings.ToLower(k), "sharedaccesssignature ")), "sig") || len(v) < 8 {
					continue
				}
				if strings.Contains(msg, v) {
					t.Fatalf("parseSAS(%q) error %q quotes the signature", h, msg)
				}
			}
			return
		}
		low := strings.ToLower(h)
		for _, field := range []string{"sr=", "sig=", "se="} {
			if !strings.Contains(low, field) {
				t.Fatalf("parseSAS(%q) accepted a token without %s", h, field)
			}
		}
		if n, err := strconv.ParseInt(tok.seRaw, 10, 64); err != nil || n != tok.expiry {
			t.Fatalf("parseSAS(%q): se %q read as %d", h, tok.seRaw, tok.expiry)
		}
	})
}

// FuzzSASRoundTrip signs tokens the way devices do (dps.SASToken) for
// arbitrary keys, registration ids and expiry times: the simulator must
// accept each with its key, reject it with any other key, and reject any
// change to the signed text (sr or se) that keeps the signature.
func FuzzSASRoundTrip(f *testing.F) {
	f.Add([]byte("fuzz-device-key-0123456789abcdef"), "dev-1", int64(1900000000), 0, byte('x'))
	f.Add([]byte{0}, "Dev_1 with spaces/and%2Fslashes", int64(-1), 40, byte('%'))
	f.Add([]byte("k"), "", int64(0), 70, byte('&'))
	f.Fuzz(func(t *testing.T, key []byte, regID string, expiry int64, pos int, b byte) {
		if len(key) == 0 {
			return
		}
		h := dps.SASToken(key, DefaultIDScope, regID, time.Unix(expiry, 0))
		tok, err := parseSAS(h)
		if err != nil {
			t.Fatalf("parseSAS rejected a token made by dps.SASToken(%q, %q): %v\n%s", key, regID, err, h)
		}
		if !tok.signedBy(key) {
			t.Fatalf("token for %q does not verify with its own key: %s", regID, h)
		}
		// (Not key plus a zero byte: HMAC pads short keys with zeros.)
		other := append([]byte{}, key...)
		other[0] ^= 1
		if tok.signedBy(other) {
			t.Fatalf("token for %q verifies with another key", regID)
		}
		want := dps.SASResource(DefaultIDScope, regID)
		if dec, err := url.QueryUnescape(tok.srRaw); err != nil || !strings.EqualFold(dec, want) && !strings.EqualFold(tok.sr, want) {
			t.Fatalf("sr %q decodes to %q, want %q", tok.srRaw, tok.sr, want)
		}
		// Change one byte of the header: if the result still parses and
		// verifies with the key, the signed text must be unchanged.
		if pos < 0 {
			pos = -pos
		}
		i := pos % len(h)
		mut := h[:i] + string([]byte{b}) + h[i+1:]
		if mut == h {
			return
		}
		mt, err := parseSAS(mut)
		if err == nil && mt.signedBy(key) && (mt.srRaw != tok.srRaw || mt.seRaw != tok.seRaw) {
			t.Fatalf("changed token still verifies: sr %q se %q (was %q %q)", mt.srRaw, mt.seRaw, tok.srRaw, tok.seRaw)
		}
	})
}

package dps

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SASKeyName is the skn value devices send for DPS registration tokens.
const SASKeyName = "registration"

// SASResource returns the resource URI a device's SAS token is scoped to:
// "{idScope}/registrations/{registrationId}" (no host).
func SASResource(idScope, registrationID string) string {
	return idScope + "/registrations/" + registrationID
}

// SASToken builds the Authorization header value for a symmetric-key device:
//
//	SharedAccessSignature sr={url-encoded resource}&sig={url-encoded signature}&se={expiry}&skn=registration
//
// The signature is HMAC-SHA256, keyed with the raw (base64-decoded) device
// key, over the sr value exactly as placed in the token, a newline and the
// expiry in Unix seconds. sr is encoded with lower-case hex ("%2f") like the C
// SDK and the DPS documentation.
func SASToken(key []byte, idScope, registrationID string, expiry time.Time) string {
	sr := lowerHexEscape(SASResource(idScope, registrationID))
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return fmt.Sprintf("SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s", sr, url.QueryEscape(sig), se, SASKeyName)
}

// lowerHexEscape query-escapes s and lower-cases the hex digits of every
// percent escape, as DPS documents the sr field.
func lowerHexEscape(s string) string {
	e := url.QueryEscape(s)
	if !strings.Contains(e, "%") {
		return e
	}
	b := []byte(e)
	for i := 0; i < len(b); i++ {
		if b[i] == '%' && i+2 < len(b) {
			b[i+1] = toLowerHex(b[i+1])
			b[i+2] = toLowerHex(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func toLowerHex(c byte) byte {
	if c >= 'A' && c <= 'F' {
		return c + ('a' - 'A')
	}
	return c
}

// DeriveDeviceKey computes a group-enrollment device key:
// base64(HMAC-SHA256(base64decode(groupKey), registrationID)).
// The result is the base64 text the device uses as its symmetric key.
func DeriveDeviceKey(groupKey, registrationID string) (string, error) {
	k, err := base64.StdEncoding.DecodeString(groupKey)
	if err != nil {
		return "", fmt.Errorf("group key is not valid base64: %w", err)
	}
	return base64.StdEncoding.EncodeToString(DeriveDeviceKeyBytes(k, registrationID)), nil
}

// DeriveDeviceKeyBytes is DeriveDeviceKey on raw key bytes: it returns the raw
// derived key, ready to sign SAS tokens with.
func DeriveDeviceKeyBytes(groupKey []byte, registrationID string) []byte {
	mac := hmac.New(sha256.New, groupKey)
	mac.Write([]byte(registrationID))
	return mac.Sum(nil)
}

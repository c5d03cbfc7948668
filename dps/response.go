package dps

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxRetryAfter caps a parsed Retry-After so absurd values cannot overflow
// a time.Duration; the caller applies its own, smaller cap.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads a Retry-After header: delta-seconds (what DPS
// sends) or an HTTP-date relative to now. Missing, invalid or past values
// give 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return maxRetryAfter
			}
			return 0
		}
		if n > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0
	case d > maxRetryAfter:
		return maxRetryAfter
	}
	// HTTP dates have whole seconds; round up so the wait is never short.
	return (d + time.Second - 1).Truncate(time.Second)
}

// maxMessageLen bounds the server message kept in an Error.
const maxMessageLen = 300

// errorBody is ErrorBody decoded leniently: some proxies and older service
// versions send errorCode as a string.
type errorBody struct {
	ErrorCode  json.RawMessage `json:"errorCode"`
	TrackingID string          `json:"trackingId"`
	Message    string          `json:"message"`
}

// fillErrorDetails sets e.Code, e.Message and e.TrackingID from an error
// response's body and headers. A body that is not DPS JSON contributes its
// first line as the message.
func fillErrorDetails(e *Error, h http.Header, body []byte, truncated bool) {
	var eb errorBody
	if !truncated && len(body) > 0 && json.Unmarshal(body, &eb) == nil {
		e.Code = parseCode(eb.ErrorCode)
		e.TrackingID = cleanText(eb.TrackingID, maxIDLen)
		e.Message = cleanText(eb.Message, maxMessageLen)
	} else if t := bytes.TrimSpace(body); len(t) > 0 {
		line := t
		if i := bytes.IndexAny(t, "\r\n"); i >= 0 {
			line = t[:i]
		}
		e.Message = cleanText(string(line), maxMessageLen)
		if truncated || len(line) < len(t) || len(line) > maxMessageLen {
			e.Message += " [truncated]"
		}
	}
	if e.Code == 0 {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Get(HeaderErrorCode))); err == nil {
			e.Code = n
		}
	}
}

// parseCode reads an errorCode sent as a number or a numeric string.
func parseCode(raw json.RawMessage) int {
	s := strings.Trim(string(bytes.TrimSpace(raw)), `"`)
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0
	}
	return n
}

// cleanText makes server-supplied text safe for a one-line error: control
// characters become spaces, anything that looks like a SAS signature is
// redacted, and the result is cut to max bytes on a rune boundary.
func cleanText(s string, max int) string {
	s = redactSAS(s)
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// redactSAS replaces the value of every "sig=" parameter and anything after
// "SharedAccessSignature " up to white space, in case a server or proxy
// echoes the Authorization header in an error message.
func redactSAS(s string) string {
	const redacted = "[redacted]"
	if !strings.Contains(s, "sig=") && !strings.Contains(s, "SharedAccessSignature") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "SharedAccessSignature ")
		j := strings.Index(s, "sig=")
		switch {
		case i < 0 && j < 0:
			b.WriteString(s)
			return b.String()
		case i >= 0 && (j < 0 || i < j):
			i += len("SharedAccessSignature ")
			b.WriteString(s[:i])
			b.WriteString(redacted)
			s = s[i+tokenEnd(s[i:], " \t\r\n\"',;"):]
		default:
			j += len("sig=")
			b.WriteString(s[:j])
			b.WriteString(redacted)
			s = s[j+tokenEnd(s[j:], "& \t\r\n\"',;"):]
		}
	}
}

// tokenEnd returns the index of the first byte of s in stop, or len(s).
func tokenEnd(s, stop string) int {
	if k := strings.IndexAny(s, stop); k >= 0 {
		return k
	}
	return len(s)
}

// Caps on server text kept from a 2xx body. Values longer than DPS ever
// sends are cut (and control characters replaced) so that a hostile or broken
// server cannot flood the ledger, the logs or a report.
const (
	maxOperationIDLen = 256 // DPS ids are about 60 characters
	maxHubLen         = 255 // a DNS host name
	maxDeviceIDLen    = 128 // IoT Hub device ids
	maxShortLen       = 100 // status, substatus, etag, timestamps
)

// checkOperationID rejects an operation id that cannot be what DPS sent: it
// is sent back in a URL path, so it is refused rather than altered.
func checkOperationID(id string) error {
	if len(id) > maxOperationIDLen {
		return fmt.Errorf("%w: operationId is %d bytes long", ErrProtocol, len(id))
	}
	if cleanText(id, maxOperationIDLen) != id {
		return fmt.Errorf("%w: operationId has control characters or spaces", ErrProtocol)
	}
	return nil
}

// clean makes the server-supplied text of a registration result safe to
// store and print, like error bodies are.
func (r *DeviceRegistrationResult) clean() {
	if r == nil {
		return
	}
	r.RegistrationID = cleanText(r.RegistrationID, maxDeviceIDLen)
	r.Status = Status(cleanText(string(r.Status), maxShortLen))
	r.AssignedHub = cleanText(r.AssignedHub, maxHubLen)
	r.DeviceID = cleanText(r.DeviceID, maxDeviceIDLen)
	r.Substatus = cleanText(r.Substatus, maxShortLen)
	r.ErrorMessage = cleanText(r.ErrorMessage, maxMessageLen)
	r.ETag = cleanText(r.ETag, maxShortLen)
	r.CreatedDateTimeUTC = cleanText(r.CreatedDateTimeUTC, maxShortLen)
	r.LastUpdatedDateTimeUTC = cleanText(r.LastUpdatedDateTimeUTC, maxShortLen)
}

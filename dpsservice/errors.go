package dpsservice

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Sentinel causes carried in Error.Err. Test for them with errors.Is.
var (
	// ErrInvalidConfig marks a Config that NewClient rejects.
	ErrInvalidConfig = errors.New("invalid dps service client configuration")
	// ErrInvalidRequest marks a request this package refuses to send: an
	// empty id, more than MaxBulkItems items, an unknown mode.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrRedirectRefused marks a redirect; the service API never redirects,
	// and following one could send the credential elsewhere.
	ErrRedirectRefused = errors.New("redirect refused")
	// ErrResponseTooLarge marks a response body above Config.MaxResponseBytes.
	ErrResponseTooLarge = errors.New("response body too large")
	// ErrMalformedResponse marks a 2xx body that is not the JSON expected
	// (cut short by a proxy or a dropped connection, or not DPS at all).
	ErrMalformedResponse = errors.New("malformed response body")
)

// Error is the error every Client method returns: an HTTP error response
// (HTTPStatus >= 300, with the DPS error details), a bad 2xx response
// (HTTPStatus 2xx, Err set) or a failure without a response (HTTPStatus 0,
// Err set). Its text never contains keys, SAS tokens or bearer tokens.
type Error struct {
	HTTPStatus      int           // HTTP status; 0 when no response arrived
	Code            int           // DPS errorCode (6 digits, e.g. 401002); 0 if none was sent
	Message         string        // DPS error message, or the start of a non-JSON error body
	TrackingID      string        // trackingId from the error body
	RequestID       string        // x-ms-request-id response header
	ClientRequestID string        // the x-ms-client-request-id this client sent
	RetryAfter      time.Duration // Retry-After response header; 0 if absent
	Op              string        // e.g. "get enrollment", "bulk create enrollments"
	ID              string        // the enrollment, group or registration id; "" for bulk and query
	Err             error         // the cause for non-HTTP errors (transport, timeout, bad body)
}

// Error returns a one-line description, e.g. "get enrollment dev-001: HTTP
// 401 Unauthorized: DPS error 401002: … (request id 5b1c…)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.ID != "" {
		b.WriteString(" " + e.ID)
	}
	b.WriteString(": ")
	switch {
	case e.HTTPStatus != 0 && !isSuccess(e.HTTPStatus):
		fmt.Fprintf(&b, "HTTP %d", e.HTTPStatus)
		if t := http.StatusText(e.HTTPStatus); t != "" {
			b.WriteString(" " + t)
		}
		if e.Code != 0 {
			fmt.Fprintf(&b, ": DPS error %d", e.Code)
		}
		if e.Message != "" {
			b.WriteString(": " + e.Message)
		}
	case e.HTTPStatus != 0:
		fmt.Fprintf(&b, "HTTP %d", e.HTTPStatus)
	}
	if e.Err != nil {
		if e.HTTPStatus != 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	var details []string
	if e.RequestID != "" {
		details = append(details, "request id "+e.RequestID)
	}
	if e.TrackingID != "" && e.TrackingID != e.RequestID {
		details = append(details, "tracking id "+e.TrackingID)
	}
	if e.RetryAfter > 0 {
		details = append(details, "retry after "+e.RetryAfter.String())
	}
	if len(details) > 0 {
		b.WriteString(" (" + strings.Join(details, ", ") + ")")
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func isSuccess(status int) bool { return status >= 200 && status < 300 }

// Class tells the caller what to do with a failed request.
type Class int

// The classes Classify returns.
const (
	// Retryable failures may succeed later: network errors, timeouts, 408,
	// 429, 5xx except 501, cut-short bodies.
	Retryable Class = iota + 1
	// Permanent failures are about this request's data: 400, 404, 409,
	// 412 and other 4xx, 501.
	Permanent
	// Fatal failures will hit every request: credentials refused (401),
	// a policy without the right (403), a server this client does not
	// trust, a host that does not resolve or does not speak TLS, a
	// redirect, a bad configuration. Stop the run.
	Fatal
)

// String returns "retryable", "permanent" or "fatal".
func (c Class) String() string {
	switch c {
	case Retryable:
		return "retryable"
	case Permanent:
		return "permanent"
	case Fatal:
		return "fatal"
	case 0:
		return "none"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Classify returns the class of err: 0 for nil, otherwise Retryable,
// Permanent or Fatal. Cancellation and deadlines are Retryable (the work is
// left for the next run); unknown transport errors are Retryable.
func Classify(err error) Class {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) && e.HTTPStatus != 0 && !isSuccess(e.HTTPStatus) {
		switch s := e.HTTPStatus; {
		case s == http.StatusUnauthorized, s == http.StatusForbidden:
			return Fatal
		case s == http.StatusRequestTimeout, s == http.StatusTooManyRequests:
			return Retryable
		case s == http.StatusNotImplemented:
			return Permanent
		case s >= 500:
			return Retryable
		}
		return Permanent
	}
	var (
		verr   *tls.CertificateVerificationError
		unkCA  x509.UnknownAuthorityError
		host   x509.HostnameError
		inval  x509.CertificateInvalidError
		record tls.RecordHeaderError
		dns    *net.DNSError
	)
	switch {
	case errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrRedirectRefused), errors.Is(err, ErrCredential):
		return Fatal
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrResponseTooLarge):
		return Permanent
	case errors.Is(err, ErrMalformedResponse):
		return Retryable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Retryable
	case errors.As(err, &verr), errors.As(err, &unkCA), errors.As(err, &host), errors.As(err, &inval):
		return Fatal
	case errors.As(err, &record), errors.Is(err, http.ErrSchemeMismatch):
		return Fatal
	case errors.As(err, &dns) && dns.IsNotFound:
		return Fatal
	}
	return Retryable
}

// Status returns the HTTP status of an error response, or 0.
func Status(err error) int {
	var e *Error
	if errors.As(err, &e) && !isSuccess(e.HTTPStatus) {
		return e.HTTPStatus
	}
	return 0
}

// IsNotFound reports whether err is a 404 answer (no such enrollment,
// group or registration).
func IsNotFound(err error) bool { return Status(err) == http.StatusNotFound }

// IsConflict reports whether err is a 409 answer (the record exists).
func IsConflict(err error) bool { return Status(err) == http.StatusConflict }

// IsPreconditionFailed reports whether err is a 412 answer (etag mismatch).
func IsPreconditionFailed(err error) bool { return Status(err) == http.StatusPreconditionFailed }

// RetryAfter returns the Retry-After the server sent with err, or 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// MayHaveTakenEffect reports whether the request that failed with err may
// have changed something at the service: true when no answer arrived (a
// timeout, a reset, a cut-short body) or the answer was a 5xx; false when
// the service answered 4xx or the request never left (a refused
// connection, a name that does not resolve, a TLS handshake failure).
func MayHaveTakenEffect(err error) bool {
	var e *Error
	if errors.As(err, &e) && e.HTTPStatus != 0 {
		if isSuccess(e.HTTPStatus) {
			return true // a 2xx whose body was unusable
		}
		return e.HTTPStatus >= 500
	}
	var (
		op  *net.OpError
		dns *net.DNSError
	)
	switch {
	case errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrCredential):
		return false
	case errors.As(err, &dns):
		return false
	case errors.As(err, &op) && op.Op == "dial":
		return false
	case Classify(err) == Fatal:
		// TLS trust and record errors happen in the handshake, before the request.
		return false
	}
	return true
}

// Hints for common failures; they name dps-batch flags where one is the fix.
const (
	hintUnauthorized = "the service refused the credentials: check the connection string (HostName, SharedAccessKeyName and SharedAccessKey of a shared access policy of this DPS instance), that the clock is right (SAS tokens expire), or for --auth entra the signed-in identity"
	hintForbidden    = "the credentials lack a right: creating or deleting enrollments needs EnrollmentWrite (and EnrollmentRead), deregistering needs RegistrationStatusWrite; with Entra ID the role Device Provisioning Service Data Contributor"
	hintNotFound     = "DPS has no such record"
	hintConflict     = "an enrollment with this id already exists"
	hintPrecondition = "the record changed at DPS since it was read (etag mismatch): read it again before changing it"
	hintThrottled    = "DPS is throttling service requests: lower --rate; DPS allows about 1,000 service operations per minute per instance"
	hintServer       = "DPS reported a server error; retry later"
	hintBadRequest   = "DPS refused the request's content: check the enrollment fields (attestation, iot hubs, allocation policy, initial twin)"
	hintServerTrust  = "the service's TLS certificate is not trusted: for the simulator pass its CA bundle (--ca-file); otherwise check the host and the system roots"
	hintNotTLS       = "the host does not speak TLS on that port: check the service host"
	hintNoHost       = "the service host name does not resolve: check HostName in the connection string or --service-host (NAME.azure-devices-provisioning.net)"
	hintRedirect     = "the host redirected the request: check the service host"
	hintTimeout      = "the request timed out: check connectivity, or raise --request-timeout"
	hintTooLarge     = "the server sent an unexpectedly large response: check the service host"
	hintCredential   = "check the service credentials (connection string, token)"
	hintNotDPS       = "the answer is not what the DPS service API sends: check the service host"
)

// Hint returns a short fix hint for common failures, or "".
func Hint(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e.HTTPStatus != 0 && !isSuccess(e.HTTPStatus) {
		switch s := e.HTTPStatus; {
		case s == http.StatusUnauthorized:
			return hintUnauthorized
		case s == http.StatusForbidden:
			return hintForbidden
		case s == http.StatusNotFound:
			return hintNotFound
		case s == http.StatusConflict:
			return hintConflict
		case s == http.StatusPreconditionFailed:
			return hintPrecondition
		case s == http.StatusTooManyRequests:
			return hintThrottled
		case s == http.StatusBadRequest:
			return hintBadRequest
		case s >= 500 && s != http.StatusNotImplemented:
			return hintServer
		}
		return ""
	}
	var (
		verr   *tls.CertificateVerificationError
		unkCA  x509.UnknownAuthorityError
		host   x509.HostnameError
		inval  x509.CertificateInvalidError
		record tls.RecordHeaderError
		dns    *net.DNSError
	)
	switch {
	case errors.Is(err, ErrCredential):
		return hintCredential
	case errors.Is(err, ErrRedirectRefused):
		return hintRedirect
	case errors.Is(err, ErrResponseTooLarge):
		return hintTooLarge
	case errors.Is(err, ErrMalformedResponse):
		return hintNotDPS
	case errors.Is(err, errRequestTimeout):
		return hintTimeout
	case errors.As(err, &verr), errors.As(err, &unkCA), errors.As(err, &host), errors.As(err, &inval):
		return hintServerTrust
	case errors.As(err, &record), errors.Is(err, http.ErrSchemeMismatch):
		return hintNotTLS
	case errors.As(err, &dns) && dns.IsNotFound:
		return hintNoHost
	}
	return ""
}

// HintForCode returns a hint for a bulk item's error code, or "".
func HintForCode(code int) string {
	return Hint(&Error{HTTPStatus: statusOfCode(code), Code: code})
}

// timeoutError is the cause of a request that ran past Config.Timeout.
type timeoutError struct{ after time.Duration }

func (t *timeoutError) Error() string { return "request timed out after " + t.after.String() }

func (t *timeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded || target == errRequestTimeout
}

// Timeout reports true, like net.Error timeouts.
func (t *timeoutError) Timeout() bool { return true }

var errRequestTimeout = errors.New("per-request timeout")

// maxMessageLen and maxIDLen bound server text kept in an Error.
const (
	maxMessageLen = 300
	maxIDLen      = 100
)

// cleanText makes server-supplied text safe for a one-line error: secrets
// redacted, control characters replaced, cut to max bytes.
func cleanText(s string, max int) string {
	s = redactText(s)
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

// redactText hides anything that looks like a credential, in case a server,
// proxy or token source echoes one: the value of "sig=", everything after
// "SharedAccessSignature " or "Bearer " up to white space, and the value
// of "SharedAccessKey=".
func redactText(s string) string {
	for _, m := range []struct{ marker, stop string }{
		{"SharedAccessSignature ", " \t\r\n\"',;"},
		{"Bearer ", " \t\r\n\"',;"},
		{"sig=", "& \t\r\n\"',;"},
		{"SharedAccessKey=", "; \t\r\n\"',"},
	} {
		s = redactAfter(s, m.marker, m.stop)
	}
	return s
}

// redactAfter replaces, after every (case-insensitive) marker, the text up
// to the first byte of stop with "[redacted]".
func redactAfter(s, marker, stop string) string {
	const redacted = "[redacted]"
	lower := asciiLower(s) // same length as s, so indexes carry over
	lm := asciiLower(marker)
	if !strings.Contains(lower, lm) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(lower, lm)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		i += len(lm)
		end := strings.IndexAny(s[i:], stop)
		if end < 0 {
			end = len(s) - i
		}
		b.WriteString(s[:i])
		if strings.HasPrefix(s[i:i+end], redacted) {
			b.WriteString(s[i : i+end])
		} else {
			b.WriteString(redacted)
		}
		s, lower = s[i+end:], lower[i+end:]
	}
}

// asciiLower lower-cases ASCII letters only, keeping every byte offset.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

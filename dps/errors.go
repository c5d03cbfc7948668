package dps

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
)

// Sentinel causes carried in Error.Err. Test for them with errors.Is.
var (
	// ErrInvalidConfig marks a Config that NewClient rejects.
	ErrInvalidConfig = errors.New("invalid dps client configuration")
	// ErrInvalidRequest marks a request this package refuses to send: an
	// empty registration id, a payload that is not a JSON object, a device
	// without credentials.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrRedirectRefused marks a redirect that was not followed: to another
	// host or scheme, changing the method, or one too many.
	ErrRedirectRefused = errors.New("redirect refused")
	// ErrResponseTooLarge marks a response body above Config.MaxResponseBytes.
	ErrResponseTooLarge = errors.New("response body too large")
	// ErrMalformedResponse marks a 2xx body that is not valid JSON (for
	// example cut short by a proxy or a dropped connection).
	ErrMalformedResponse = errors.New("malformed response body")
	// ErrProtocol marks a 2xx body that is valid JSON but breaks the DPS
	// contract, such as a register response without operationId or status.
	ErrProtocol = errors.New("response violates the DPS protocol")
)

// Error is the error every Client method returns: an HTTP error response
// (HTTPStatus >= 300, with the DPS error details), a bad 2xx response
// (HTTPStatus 2xx, Err set) or a transport failure (HTTPStatus 0, Err set).
// Its text never contains key material or SAS signatures.
type Error struct {
	HTTPStatus      int           // HTTP status code; 0 when no response arrived
	Code            int           // DPS errorCode (6 digits, e.g. 401002); 0 if none was sent
	Message         string        // DPS error message, or the start of a non-JSON error body
	TrackingID      string        // trackingId from the error body
	RequestID       string        // x-ms-request-id response header
	ClientRequestID string        // the x-ms-client-request-id this client sent
	RetryAfter      time.Duration // Retry-After response header; 0 if absent
	Op              string        // "register", "poll" or "lookup"
	RegistrationID  string        // the device the request was for
	Err             error         // the cause for non-HTTP errors (transport, timeout, bad body)

	cred credKind // which attestation the device used, to pick a hint
}

// Error returns a one-line description naming the operation and device, e.g.
// "register device dev-001: HTTP 401 Unauthorized: DPS error 401002: Invalid certificate (request id 5b1c…)".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(" ")
	}
	b.WriteString("device ")
	b.WriteString(e.RegistrationID)
	b.WriteString(": ")
	switch {
	case e.HTTPStatus != 0 && !isSuccess(e.HTTPStatus):
		// An error response: status, DPS code and message.
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
		// A 2xx response whose body could not be used; Err says why.
		fmt.Fprintf(&b, "HTTP %d", e.HTTPStatus)
	}
	if e.Err != nil {
		if e.HTTPStatus != 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	var details []string
	switch {
	case e.RequestID != "":
		details = append(details, "request id "+e.RequestID)
		if e.TrackingID != "" && e.TrackingID != e.RequestID {
			details = append(details, "tracking id "+e.TrackingID)
		}
	case e.TrackingID != "":
		details = append(details, "tracking id "+e.TrackingID)
	}
	if e.RetryAfter > 0 {
		details = append(details, "retry after "+e.RetryAfter.String())
	}
	if len(details) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(details, ", "))
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the cause, so errors.Is(err, context.Canceled) and
// errors.As(err, *tls.CertificateVerificationError) work through an Error.
func (e *Error) Unwrap() error { return e.Err }

func isSuccess(status int) bool { return status >= 200 && status < 300 }

// Class tells the caller what to do with a failed request.
type Class int

// The classes Classify returns.
const (
	// Retryable failures may succeed later: network errors, timeouts, 408,
	// 429, 5xx except 501, 409203 (a concurrent registration), cut-short bodies.
	Retryable Class = iota + 1
	// Permanent failures need a change to this device's enrollment, credential
	// or data: other 4xx, 501, device certificates rejected in the handshake.
	Permanent
	// Fatal failures will hit every device: the server certificate is not
	// trusted, the endpoint redirects elsewhere or is not a TLS server, the
	// host does not exist, the configuration is invalid. Stop the run.
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
// Permanent or Fatal (see their docs). Errors that are not an *Error are
// classified by their cause: context cancellation and deadlines (whether the
// caller's or the per-request timeout) are Retryable, so a drained run leaves
// the device to be resumed. Unknown transport errors are Retryable.
func Classify(err error) Class {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) {
		if e.HTTPStatus != 0 && !isSuccess(e.HTTPStatus) {
			return classifyStatus(e.HTTPStatus, e.Code)
		}
	}
	return classifyCause(err)
}

// classifyStatus applies the retry policy to an HTTP error response.
func classifyStatus(status, code int) Class {
	switch {
	case code == CodePreconditionFailed:
		// Another client is registering the same id right now.
		return Retryable
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return Retryable
	case status == http.StatusNotImplemented:
		return Permanent
	case status >= 500:
		return Retryable
	}
	return Permanent
}

// TLS alerts a server sends when it rejects the client certificate. Go
// exposes received alerts as tls.AlertError (RFC 8446 §6.2 numbering).
const (
	alertHandshakeFailure       = 40
	alertBadCertificate         = 42
	alertUnsupportedCertificate = 43
	alertCertificateRevoked     = 44
	alertCertificateExpired     = 45
	alertCertificateUnknown     = 46
	alertUnknownCA              = 48
	alertAccessDenied           = 49
	alertProtocolVersion        = 70
	alertInsufficientSecurity   = 71
	alertCertificateRequired    = 116
)

// isRemoteAlert reports whether err is a TLS alert received from the
// server and stores its code in a. crypto/tls reports received alerts as a
// *net.OpError with Op "remote error" around an unexported alert type whose
// text equals tls.AlertError's; QUIC-style callers get tls.AlertError itself.
func isRemoteAlert(err error, a *tls.AlertError) bool {
	if errors.As(err, a) {
		return true
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return false
	}
	msg := op.Err.Error()
	for _, code := range knownAlerts {
		if tls.AlertError(code).Error() == msg {
			*a = tls.AlertError(code)
			return true
		}
	}
	*a = 0 // some other alert
	return true
}

// knownAlerts are the alerts classifyCause distinguishes.
var knownAlerts = []uint8{
	alertHandshakeFailure, alertBadCertificate, alertUnsupportedCertificate, alertCertificateRevoked,
	alertCertificateExpired, alertCertificateUnknown, alertUnknownCA, alertAccessDenied,
	alertProtocolVersion, alertInsufficientSecurity, alertCertificateRequired,
}

// classifyCause classifies an error by what caused it.
func classifyCause(err error) Class {
	var (
		verr   *tls.CertificateVerificationError
		unkCA  x509.UnknownAuthorityError
		host   x509.HostnameError
		inval  x509.CertificateInvalidError
		alert  tls.AlertError
		record tls.RecordHeaderError
		dns    *net.DNSError
	)
	switch {
	case errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrRedirectRefused):
		return Fatal
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrResponseTooLarge), errors.Is(err, ErrProtocol):
		return Permanent
	case errors.Is(err, ErrMalformedResponse):
		return Retryable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Retryable
	case errors.As(err, &verr), errors.As(err, &unkCA), errors.As(err, &host), errors.As(err, &inval):
		// This client could not verify the server: every device will fail the same way.
		return Fatal
	case errors.As(err, &record):
		// The endpoint does not speak TLS (plain HTTP on the port, or not a web server).
		return Fatal
	case errors.Is(err, http.ErrSchemeMismatch):
		return Fatal
	case isRemoteAlert(err, &alert):
		switch alert {
		case alertHandshakeFailure, alertBadCertificate, alertUnsupportedCertificate, alertCertificateRevoked,
			alertCertificateExpired, alertCertificateUnknown, alertUnknownCA, alertAccessDenied, alertCertificateRequired:
			// The server rejected this device's certificate.
			return Permanent
		case alertProtocolVersion, alertInsufficientSecurity:
			return Fatal
		}
		return Retryable
	case errors.As(err, &dns) && dns.IsNotFound:
		return Fatal
	}
	return Retryable
}

// RetryAfter returns the Retry-After the server sent with err, or 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// Hints for common failures. They name dps-batch flags where one is the fix.
const (
	hintX509Rejected = "certificate chain not accepted: present the full chain up to a verified CA; CN must equal the registration id"
	hintSASRejected  = "SAS token not accepted: check the device key (for group enrollments derive it from the group key) and the local clock"
	hintNotFound     = "no enrollment matches this registration id: create an individual enrollment or an enrollment group for it, and check the ID scope"
	hintThrottled    = "DPS is throttling requests: lower the registration rate (--rate); DPS allows about 1,000 registrations per minute per instance"
	hintConflict     = "another client is registering the same id at the same time; retry later"
	hintServer       = "DPS reported a server error; retry later"
	hintDisabled     = "the enrollment is disabled in DPS: enable it, then re-run with --retry-failed"
	hintNoHub        = "DPS could not allocate an IoT hub: link a hub to the DPS instance and to the enrollment"
	hintCustomAlloc  = "the custom allocation webhook failed: check its logs and its response"
	hintApproval     = "the device is awaiting approval or blocked (IoT Central)"
	hintServerTrust  = "the DPS server certificate is not trusted: for the simulator pass its CA bundle (--ca-file); otherwise check the endpoint and the system roots"
	hintDeviceCert   = "the server rejected the device certificate during the TLS handshake: check it is not expired and chains to a CA the server trusts"
	hintNotTLS       = "the endpoint does not speak TLS: check the endpoint URL and port"
	hintNoHost       = "the endpoint host name does not resolve: check the endpoint URL"
	hintRedirect     = "the endpoint redirects to another host: check the endpoint URL"
	hintTimeout      = "the request timed out: check connectivity, or raise the request timeout"
	hintTooLarge     = "the server sent an unexpectedly large response: check the endpoint URL"
)

// Hint returns a short fix hint for common failures, or "" if there is none.
func Hint(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e.HTTPStatus != 0 && !isSuccess(e.HTTPStatus) {
		switch {
		case e.Code == CodeInvalidCredentials, e.Code == CodeUnauthorized, e.Code == 0 && e.HTTPStatus == http.StatusUnauthorized:
			if e.cred == credSAS {
				return hintSASRejected
			}
			return hintX509Rejected
		case e.Code == CodeNotFound, e.Code == 0 && e.HTTPStatus == http.StatusNotFound:
			return hintNotFound
		case e.Code == CodePreconditionFailed:
			return hintConflict
		case e.HTTPStatus == http.StatusTooManyRequests:
			return hintThrottled
		case e.HTTPStatus >= 500 && e.HTTPStatus != http.StatusNotImplemented:
			return hintServer
		}
		return ""
	}
	var (
		verr   *tls.CertificateVerificationError
		unkCA  x509.UnknownAuthorityError
		host   x509.HostnameError
		inval  x509.CertificateInvalidError
		alert  tls.AlertError
		record tls.RecordHeaderError
		dns    *net.DNSError
	)
	switch {
	case errors.Is(err, ErrRedirectRefused):
		return hintRedirect
	case errors.Is(err, ErrResponseTooLarge):
		return hintTooLarge
	case errors.Is(err, errRequestTimeout):
		return hintTimeout
	case errors.As(err, &verr), errors.As(err, &unkCA), errors.As(err, &host), errors.As(err, &inval):
		return hintServerTrust
	case errors.As(err, &record), errors.Is(err, http.ErrSchemeMismatch):
		return hintNotTLS
	case isRemoteAlert(err, &alert) && Classify(err) == Permanent:
		return hintDeviceCert
	case errors.As(err, &dns) && dns.IsNotFound:
		return hintNoHost
	}
	return ""
}

// HintForStatus returns a fix hint for a registration that ended with status
// s (failed or disabled) and registrationState.errorCode code, or "".
func HintForStatus(s Status, code int) string {
	switch s {
	case StatusDisabled:
		return hintDisabled
	case StatusFailed:
		switch code {
		case CodeNoHub:
			return hintNoHub
		case CodeCustomAllocation:
			return hintCustomAlloc
		case codeAwaitingApproval:
			return hintApproval
		case CodeInvalidCredentials:
			return hintX509Rejected
		case CodeNotFound:
			return hintNotFound
		}
	}
	return ""
}

// codeAwaitingApproval is the failed-registration code IoT Central uses for a
// device that is blocked or not yet approved.
const codeAwaitingApproval = 400209

// timeoutError is the cause of a request that ran past Config.Timeout. It
// matches context.DeadlineExceeded and errRequestTimeout with errors.Is.
type timeoutError struct{ after time.Duration }

func (t *timeoutError) Error() string {
	return "request timed out after " + t.after.String()
}

func (t *timeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded || target == errRequestTimeout
}

// Timeout reports true, like net.Error timeouts.
func (t *timeoutError) Timeout() bool { return true }

// errRequestTimeout is the context cause of the per-request deadline.
var errRequestTimeout = errors.New("per-request timeout")

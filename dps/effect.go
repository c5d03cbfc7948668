package dps

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
)

// Effect says what a failed request may have done at DPS. It matters for the
// register PUT, which is billable: a PUT that may have taken effect must be
// followed by a lookup, never directly by another PUT.
type Effect int

// The effects MayHaveTakenEffect distinguishes.
const (
	// NoEffect: DPS (or the network before it) refused the request; no
	// operation was started. Another PUT wastes nothing.
	NoEffect Effect = iota + 1
	// InProgress: DPS answered 409203: an operation for this registration
	// id is running (ours, whose answer was lost, or another client's).
	// Another PUT cannot succeed until it ends, and would be a second
	// registration once it has.
	InProgress
	// Unknown: the request may have reached DPS and taken effect: no answer
	// (timeout, reset, dropped connection), a 5xx, or a 2xx whose body was
	// cut short or broke the protocol.
	Unknown
)

// String returns "no-effect", "in-progress" or "unknown".
func (e Effect) String() string {
	switch e {
	case NoEffect:
		return "no-effect"
	case InProgress:
		return "in-progress"
	case Unknown:
		return "unknown"
	}
	return "none"
}

// MayHaveTakenEffect classifies a failed request by what it may have done
// at DPS. It answers NoEffect only on evidence: an HTTP 4xx or 501 answer
// (other than 409203), or a failure before any byte of the request could
// reach DPS (the request was refused by this package, the connection could
// not be made, the TLS handshake failed or the server refused the device's
// certificate). Everything else is Unknown. nil gives 0.
func MayHaveTakenEffect(err error) Effect {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) && e.HTTPStatus != 0 {
		switch {
		case e.Code == CodePreconditionFailed:
			return InProgress
		case isSuccess(e.HTTPStatus):
			// DPS accepted the request; only its answer is unusable.
			return Unknown
		case e.HTTPStatus == http.StatusNotImplemented:
			return NoEffect
		case e.HTTPStatus >= 400 && e.HTTPStatus < 500:
			return NoEffect
		case e.HTTPStatus >= 300 && e.HTTPStatus < 400:
			// A redirect that was not followed: the request was answered,
			// not processed.
			return NoEffect
		}
		return Unknown
	}
	if notSent(err) {
		return NoEffect
	}
	return Unknown
}

// notSent reports whether err proves the request never reached DPS.
func notSent(err error) bool {
	var (
		op    *net.OpError
		verr  *tls.CertificateVerificationError
		unkCA x509.UnknownAuthorityError
		host  x509.HostnameError
		inval x509.CertificateInvalidError
		dns   *net.DNSError
		alert tls.AlertError
	)
	switch {
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrRedirectRefused):
		return true
	case errors.As(err, &dns):
		return true
	case errors.As(err, &op) && (op.Op == "dial" || op.Op == "proxyconnect"):
		return true
	case errors.As(err, &verr), errors.As(err, &unkCA), errors.As(err, &host), errors.As(err, &inval):
		// This client refused the server during the handshake, before
		// sending the request.
		return true
	// A TLS record error (or a plain-HTTP answer) may come after the
	// request was written: not proof of anything.
	case isRemoteAlert(err, &alert) && Classify(err) == Permanent:
		// The server refused the device's certificate: DPS never saw an
		// authenticated request.
		return true
	}
	return false
}

package batch

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/dps-batch/dps-batch/dps"
)

// DefaultFuseDevices is how many devices must fail the same way, with no
// answer from DPS accepting anything, before a run stops as systemic.
const DefaultFuseDevices = 10

// SystemicError means the first devices of a run all failed the same way
// and nothing succeeded: a wrong endpoint, ID scope, CA bundle or group key,
// not bad luck. The run stopped dispatching; the devices that failed this
// way are left retryable, so the same command works once the cause is fixed.
type SystemicError struct {
	Devices   int    // devices that failed this way
	Signature string // what they failed with, e.g. "HTTP 401, DPS error 401002"
	Example   error  // one of the errors
	Hint      string // what to fix, when known
	Refused   bool   // DPS (or the network) refused every request: nothing billable was accepted
}

func (e *SystemicError) Error() string {
	return fmt.Sprintf("stopped early: the first %d devices all failed the same way (%s) and none succeeded; e.g. %v",
		e.Devices, e.Signature, e.Example)
}

// fuse watches answers for a failure every device shares. It trips when
// Devices distinct devices failed with one signature before any request got
// a 2xx answer; any success disarms it for the rest of the run, so devices
// with a bad credential among good ones are recorded one by one as usual.
type fuse struct {
	need int // distinct devices; 0 = disarmed

	mu      sync.Mutex
	ok      bool
	seen    map[string]map[string]bool // signature -> devices
	example map[string]error
	tripped *SystemicError
	failed  map[string]bool // devices recorded failed with the tripping signature
}

func newFuse(need int) *fuse {
	return &fuse{need: need, seen: map[string]map[string]bool{}, example: map[string]error{}, failed: map[string]bool{}}
}

// succeeded disarms the fuse: DPS accepted something.
func (f *fuse) succeeded() {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.ok = true
	f.mu.Unlock()
}

// failure records that device failed with err (recordedFailed: the device
// was recorded failed because of it). It returns the SystemicError once,
// when the fuse trips.
func (f *fuse) failure(device string, err error, recordedFailed bool) *SystemicError {
	if f == nil || f.need <= 0 {
		return nil
	}
	sig, ok := systemicSignature(err)
	if !ok {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if recordedFailed {
		f.failed[device+"\x00"+sig] = true
	}
	if f.ok || f.tripped != nil {
		return nil
	}
	devs := f.seen[sig]
	if devs == nil {
		devs = map[string]bool{}
		f.seen[sig] = devs
		f.example[sig] = err
	}
	devs[device] = true
	if len(devs) < f.need {
		return nil
	}
	f.tripped = &SystemicError{
		Devices:   len(devs),
		Signature: sig,
		Example:   f.example[sig],
		Hint:      systemicHint(err),
		Refused:   dps.MayHaveTakenEffect(err) == dps.NoEffect,
	}
	return f.tripped
}

// failedWith reports whether device was recorded failed with the signature
// that tripped the fuse.
func (f *fuse) failedWith(device string) bool {
	if f == nil || f.tripped == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed[device+"\x00"+f.tripped.Signature]
}

// systemicSignature names an error that would hit every device of a
// misconfigured run: an HTTP 4xx from DPS (other than 408, 429 and 409203,
// which are about timing), or a connection that could not be made. Errors
// that come and go (timeouts, resets, 5xx) are not systemic evidence.
func systemicSignature(err error) (string, bool) {
	if de := dpsError(err); de != nil && de.HTTPStatus != 0 {
		s := de.HTTPStatus
		if s < 400 || s >= 500 || s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || de.Code == dps.CodePreconditionFailed {
			return "", false
		}
		if de.Code != 0 {
			return fmt.Sprintf("HTTP %d, DPS error %d", s, de.Code), true
		}
		return fmt.Sprintf("HTTP %d", s), true
	}
	var (
		dns *net.DNSError
		op  *net.OpError
	)
	switch {
	case errors.As(err, &dns):
		return "the endpoint host name does not resolve", true
	case errors.As(err, &op) && op.Op == "dial":
		cause := op.Err.Error()
		if i := strings.LastIndex(cause, ": "); i >= 0 {
			cause = cause[i+2:]
		}
		return "cannot connect to the endpoint: " + cause, true
	case dps.Classify(err) == dps.Permanent && dps.Hint(err) != "" && dps.MayHaveTakenEffect(err) == dps.NoEffect:
		// The server refused the device certificate in the TLS handshake.
		return "TLS: " + dps.Hint(err), true
	}
	return "", false
}

// systemicHint says what to check for a systemic failure.
func systemicHint(err error) string {
	de := dpsError(err)
	switch {
	case de != nil && (de.HTTPStatus == http.StatusUnauthorized || de.HTTPStatus == http.StatusForbidden):
		return dps.Hint(err) + "; if every device is refused, check the ID scope, the group key (--group-key-file / DPS_GROUP_KEY) or that the group's CA is verified in DPS"
	case de != nil && de.HTTPStatus == http.StatusNotFound:
		return "DPS knows no enrollment for these devices: check --id-scope (DPS overview page) and that the enrollments exist"
	case de != nil && de.HTTPStatus != 0:
		if h := dps.Hint(err); h != "" {
			return h
		}
		return "check --endpoint, --id-scope and --api-version"
	}
	if h := dps.Hint(err); h != "" {
		return h
	}
	return "check --endpoint (host and port) and the network: nothing answered"
}

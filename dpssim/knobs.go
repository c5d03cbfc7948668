package dpssim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// Knobs are the tunables that may change while the server runs: through
// SetKnobs and friends in Go, or PUT /_sim/knobs over HTTP.
type Knobs struct {
	// RetryAfterSeconds is sent with every 202 (0..300; 0 = poll at once).
	RetryAfterSeconds int `json:"retryAfterSeconds"`
	// AssignmentDelay is how long a new operation stays assigning.
	AssignmentDelay Duration `json:"assignmentDelay"`
	// Quotas are the throttling limits (0 = DPS default, negative = none).
	Quotas Quotas `json:"quotas"`
	// Faults are the injected failures.
	Faults Faults `json:"faults"`
	// LookupWhileAssigning is what the registration status lookup shows
	// while the device's current operation is still running, which DPS
	// does not document: LookupAssigning (status assigning; "" means this),
	// LookupNotFound (404 + 404201, whatever earlier record exists) or
	// LookupPrevious (the last completed record unchanged; 404201 if none).
	LookupWhileAssigning string `json:"lookupWhileAssigning"`
	// IssuedChainEveryPoll returns an issued certificate chain
	// (registrationState.issuedCertificateChain) in every final answer of
	// its operation. false (the default) hands it over once, as DPS does:
	// in the first final answer, and later polls of the same operation show
	// the assigned state without it.
	IssuedChainEveryPoll bool `json:"issuedChainEveryPoll"`
}

// Values of Knobs.LookupWhileAssigning.
const (
	// LookupAssigning shows the record with status assigning while its
	// operation runs (the default).
	LookupAssigning = "assigning"
	// LookupNotFound answers 404 + 404201 while an operation runs, even for
	// a device registered before.
	LookupNotFound = "notFound"
	// LookupPrevious shows the last completed registration record (status,
	// hub, timestamps and etag as they were) while a new operation runs, and
	// 404 + 404201 when there is none.
	LookupPrevious = "previous"
)

// Values of Faults.RegisterBadBody.
const (
	// BadBodyTruncated sends half of the 202 JSON body, then closes the
	// connection. The default when RegisterBadBodyRate is set.
	BadBodyTruncated = "truncated"
	// BadBodyNoOperationID sends a 202 whose JSON has status assigning but
	// no operationId.
	BadBodyNoOperationID = "noOperationId"
	// BadBodySyncAssigned completes the operation at once and sends a 200
	// with the final status and registrationState but no operationId.
	BadBodySyncAssigned = "syncAssigned"
)

// normalize spells out the defaults of enumerated knobs, so that GET
// /_sim/knobs shows the behaviour in effect.
func (k *Knobs) normalize() {
	if k.LookupWhileAssigning == "" {
		k.LookupWhileAssigning = LookupAssigning
	}
}

func (k Knobs) validate() error {
	if k.RetryAfterSeconds < 0 || k.RetryAfterSeconds > 300 {
		return fmt.Errorf("retryAfterSeconds %d: want 0 to 300", k.RetryAfterSeconds)
	}
	if k.AssignmentDelay < 0 {
		return fmt.Errorf("assignmentDelay %s: must not be negative", time.Duration(k.AssignmentDelay))
	}
	f := k.Faults
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"registerErrorRate", f.RegisterErrorRate},
		{"pollErrorRate", f.PollErrorRate},
		{"lookupErrorRate", f.LookupErrorRate},
		{"serviceErrorRate", f.ServiceErrorRate},
		{"dropConnectionRate", f.DropConnectionRate},
		{"dropResponseRate", f.DropResponseRate},
		{"lateEffectRate", f.LateEffectRate},
		{"lookupBare404Rate", f.LookupBare404Rate},
		{"registerBadBodyRate", f.RegisterBadBodyRate},
		{"loseIssuedAnswerRate", f.LoseIssuedAnswerRate},
	} {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			return fmt.Errorf("faults.%s %v: want a probability from 0 to 1", r.name, r.v)
		}
	}
	if f.Latency < 0 || f.LatencyJitter < 0 {
		return errors.New("faults.latency and faults.latencyJitter must not be negative")
	}
	if f.StayAssigningPolls < 0 {
		return fmt.Errorf("faults.stayAssigningPolls %d: must not be negative", f.StayAssigningPolls)
	}
	if f.LateEffectFirstPuts < 0 {
		return fmt.Errorf("faults.lateEffectFirstPuts %d: want 0 (no limit) or a positive number of register requests", f.LateEffectFirstPuts)
	}
	if f.LateEffectDelay < 0 {
		return fmt.Errorf("faults.lateEffectDelay %s: must not be negative", time.Duration(f.LateEffectDelay))
	}
	if f.LateAnswerDelay < 0 {
		return fmt.Errorf("faults.lateAnswerDelay %s: must not be negative", time.Duration(f.LateAnswerDelay))
	}
	switch f.RegisterBadBody {
	case "", BadBodyTruncated, BadBodyNoOperationID, BadBodySyncAssigned:
	default:
		return fmt.Errorf("faults.registerBadBody %q: want %q, %q or %q (\"\" means %q)", f.RegisterBadBody,
			BadBodyTruncated, BadBodyNoOperationID, BadBodySyncAssigned, BadBodyTruncated)
	}
	switch k.LookupWhileAssigning {
	case "", LookupAssigning, LookupNotFound, LookupPrevious:
	default:
		return fmt.Errorf("lookupWhileAssigning %q: want %q, %q or %q (\"\" means %q)", k.LookupWhileAssigning,
			LookupAssigning, LookupNotFound, LookupPrevious, LookupAssigning)
	}
	return nil
}

// badBodyMode resolves the "" = truncated rule.
func (f *Faults) badBodyMode() string {
	if f.RegisterBadBody == "" {
		return BadBodyTruncated
	}
	return f.RegisterBadBody
}

// registrationsPerMinute resolves the 0 = default, negative = unlimited rule;
// it returns 0 for unlimited.
func (q Quotas) registrationsPerMinute() int {
	switch {
	case q.RegistrationsPerMinute == 0:
		return DefaultRegistrationsPerMinute
	case q.RegistrationsPerMinute < 0:
		return 0
	}
	return q.RegistrationsPerMinute
}

// serviceOperationsPerMinute resolves the 0 = default, negative = unlimited
// rule; it returns 0 for unlimited.
func (q Quotas) serviceOperationsPerMinute() int {
	switch {
	case q.ServiceOperationsPerMinute == 0:
		return DefaultServiceOperationsPerMinute
	case q.ServiceOperationsPerMinute < 0:
		return 0
	}
	return q.ServiceOperationsPerMinute
}

// pollsPer10s resolves the 0 = default, negative = unlimited rule; it returns
// 0 for unlimited.
func (q Quotas) pollsPer10s() int {
	switch {
	case q.PollsPer10sPerDevice == 0:
		return DefaultPollsPer10sPerDevice
	case q.PollsPer10sPerDevice < 0:
		return 0
	}
	return q.PollsPer10sPerDevice
}

// pollWindow is the window of the per-device polling quota.
const pollWindow = 10 * time.Second

// newRegLimiter returns a full token bucket allowing perMinute registrations
// a minute with a burst of burst (0: one minute's worth); perMinute 0 means unlimited.
func newRegLimiter(perMinute, burst int) *rate.Limiter {
	if perMinute == 0 {
		return rate.NewLimiter(rate.Inf, 1)
	}
	if burst <= 0 || burst > perMinute {
		burst = perMinute
	}
	return rate.NewLimiter(rate.Limit(float64(perMinute)/60), burst)
}

// retryAfterSeconds rounds a wait up to whole seconds, at least 1, as the
// Retry-After header carries integer seconds.
func retryAfterSeconds(d time.Duration) int {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}

// Fault draw kinds: each decision has its own stream.
const (
	drawDropRequest  = "drop-request"
	drawDropResponse = "drop-response"
	drawError        = "error"
	drawErrorStatus  = "error-status"
	drawJitter       = "jitter"
	drawLateEffect   = "late-effect"
	drawBare404      = "bare-404"
	drawBadBody      = "bad-body"
	drawLoseIssued   = "lose-issued"
)

// draw returns a number in [0, 1) that depends only on the seed, the request
// kind, the decision, the registration id and the per-id request sequence
// number, so fault injection is reproducible under any interleaving.
func draw(seed int64, kind, decision, id string, seq int) float64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seed))
	h.Write(b[:])
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(decision))
	h.Write([]byte{0})
	h.Write([]byte(strings.ToLower(id)))
	binary.LittleEndian.PutUint64(b[:], uint64(seq))
	h.Write(b[:])
	// splitmix64 finaliser: FNV's low bits are weak on similar inputs.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// hashIndex maps a registration id onto n hubs, the same way every time.
func hashIndex(id string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(strings.ToLower(id)))
	return int(h.Sum32() % uint32(n))
}

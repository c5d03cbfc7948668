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
		{"dropConnectionRate", f.DropConnectionRate},
		{"dropResponseRate", f.DropResponseRate},
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
	return nil
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

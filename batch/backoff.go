package batch

import (
	"math/rand/v2"
	"time"
)

// Backoff is the retry delay policy: exponential with jitter, capped,
// and never shorter than what the server asked for with Retry-After (itself
// capped, because a hostile or broken server may ask for hours).
type Backoff struct {
	Base          time.Duration // first delay before jitter; 0 = 1s
	Max           time.Duration // cap on the exponential delay; 0 = 60s
	MaxRetryAfter time.Duration // cap on a server's Retry-After; 0 = 5m
	// Rand returns a number in [0,1); nil means math/rand/v2.
	Rand func() float64
}

// Delay returns how long to wait before retry number attempt (1 = the first
// retry), given the server's Retry-After (0 if none).
func (b Backoff) Delay(attempt int, retryAfter time.Duration) time.Duration {
	base, max, maxRA := b.Base, b.Max, b.MaxRetryAfter
	if base <= 0 {
		base = time.Second
	}
	if max <= 0 {
		max = 60 * time.Second
	}
	if maxRA <= 0 {
		maxRA = 5 * time.Minute
	}
	if attempt < 1 {
		attempt = 1
	}
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	rnd := rand.Float64
	if b.Rand != nil {
		rnd = b.Rand
	}
	// Equal jitter: anywhere in [d/2, d) keeps some spacing yet spreads a herd.
	d = d/2 + time.Duration(rnd()*float64(d/2))
	if retryAfter > maxRA {
		retryAfter = maxRA
	}
	if retryAfter > d {
		d = retryAfter
	}
	return d
}

// CapRetryAfter bounds a server-supplied Retry-After to [0, max].
func CapRetryAfter(ra, max time.Duration) time.Duration {
	if ra < 0 {
		return 0
	}
	if max > 0 && ra > max {
		return max
	}
	return ra
}

package batch

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Pacer spaces one kind of request (register PUTs, or polls) across the whole
// fleet. Every worker calls Wait before every request, first attempts and
// retries alike. When any worker sees a 429, Throttled pauses the whole fleet
// for the server's Retry-After and cuts the rate (multiplicative decrease);
// successes then add it back (additive increase): quickly up to 90% of the
// rate at which the server last throttled (the ceiling), then slowly, so the
// fleet settles just under a quota it was never told about. One worker's 429
// slows everyone down.
type Pacer struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Recover is the fraction of the ceiling that successes restore
	// quickly after a cut (above it the rate probes slowly); 0 means 0.9.
	// A lower one finds an unknown quota in fewer 429s, at some speed: it
	// suits runs of few requests, such as bulk enrollments.
	Recover float64

	turn        chan struct{} // one waiter at a time
	mu          sync.Mutex
	lim         *rate.Limiter
	target      rate.Limit // the configured rate, events per second
	floor       rate.Limit // never go below this
	ceiling     rate.Limit // rate at the last throttle; target until then
	current     rate.Limit
	pausedUntil time.Time
	lastCut     time.Time
	throttles   int
	busy        time.Duration // time a request waited its turn's token or pause
}

// decrease is the factor applied to the rate on a throttle.
const decrease = 0.5

// NewPacer returns a pacer allowing perMinute requests a minute with a burst
// of one (smooth spacing; DPS quotas are per minute and bursts only earn 429s).
// perMinute <= 0 means unlimited.
func NewPacer(perMinute float64) *Pacer {
	if perMinute <= 0 {
		return &Pacer{turn: make(chan struct{}, 1), lim: rate.NewLimiter(rate.Inf, 1), target: rate.Inf, current: rate.Inf, ceiling: rate.Inf}
	}
	r := rate.Limit(perMinute / 60)
	floor := r / 20
	if min := rate.Limit(1.0 / 60); floor < min {
		floor = min
	}
	return &Pacer{turn: make(chan struct{}, 1), lim: rate.NewLimiter(r, 1), target: r, floor: floor, current: r, ceiling: r}
}

func (p *Pacer) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Wait blocks until the fleet may send one more request: after any global
// pause, then one token from the rate limiter. Waiters take turns, so only
// one reservation is outstanding and a rate cut applies to the very next
// request, not after a queue of reservations made at the old rate.
func (p *Pacer) Wait(ctx context.Context) error {
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.turn }()
	start := p.now()
	defer func() {
		p.mu.Lock()
		p.busy += p.now().Sub(start)
		p.mu.Unlock()
	}()
	for {
		p.mu.Lock()
		pause := p.pausedUntil.Sub(p.now())
		p.mu.Unlock()
		if pause > 0 {
			if err := sleep(ctx, pause); err != nil {
				return err
			}
			continue
		}
		if err := p.lim.Wait(ctx); err != nil {
			return err
		}
		// A throttle may have started while we waited for the token.
		p.mu.Lock()
		paused := p.pausedUntil.After(p.now())
		p.mu.Unlock()
		if !paused {
			return nil
		}
	}
}

// Throttled records a 429 (or 503 with Retry-After): pause everyone for
// retryAfter (1 s if the server gave none) and cut the rate, at most once
// per pause, so that a burst of 429s seen by many workers counts once.
func (p *Pacer) Throttled(retryAfter time.Duration) {
	if retryAfter <= 0 {
		retryAfter = time.Second
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.throttles++
	now := p.now()
	if until := now.Add(retryAfter); until.After(p.pausedUntil) {
		p.pausedUntil = until
	}
	if p.target == rate.Inf {
		return
	}
	if !p.lastCut.IsZero() && now.Sub(p.lastCut) < retryAfter {
		return
	}
	p.lastCut = now
	p.ceiling = p.current
	p.current *= decrease
	if p.current < p.floor {
		p.current = p.floor
	}
	p.lim.SetLimit(p.current)
}

// Succeeded records an accepted request and recovers the rate: by 1/50 of
// the ceiling per success below Recover (90%) of it, by 1/5000 above (probing), so
// that a fleet at its quota is throttled about once in thousands of requests.
func (p *Pacer) Succeeded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.target == rate.Inf || p.current >= p.target {
		return
	}
	step := p.ceiling / 5000
	fast := rate.Limit(0.9)
	if p.Recover > 0 && p.Recover < 1 {
		fast = rate.Limit(p.Recover)
	}
	if p.current < fast*p.ceiling {
		step = p.ceiling / 50
	}
	p.current += step
	if p.current > p.target {
		p.current = p.target
	}
	if p.current > p.ceiling {
		p.ceiling = p.current
	}
	p.lim.SetLimit(p.current)
}

// Rate returns the current rate in requests per minute (0 = unlimited).
func (p *Pacer) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.current == rate.Inf {
		return 0
	}
	return float64(p.current) * 60
}

// Busy returns how long requests have waited for this pacer (its tokens or
// a throttle pause), one waiter at a time: close to the run's duration when
// the pacer's rate is what limits the run.
func (p *Pacer) Busy() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.busy
}

// Throttles returns how many 429s the pacer was told about.
func (p *Pacer) Throttles() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.throttles
}

// sleep waits d or until ctx is done, with a timer that is always released.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

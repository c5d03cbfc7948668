package batch

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Outcome is how one device ended in this run.
type Outcome int

// The outcomes a run counts.
const (
	OutcomeAssigned   Outcome = iota // assigned in this run
	OutcomeDisabled                  // DPS said disabled in this run
	OutcomeFailed                    // permanent failure in this run
	OutcomeUnfinished                // gave up for now (attempts, deadline, stop); a re-run continues it
	OutcomeSkipped                   // nothing to do: already final in the ledger
	OutcomeChanged                   // assigned, but the manifest credentials changed: reported, not touched
	OutcomeIssuedLost                // assigned in this run, but the certificate DPS issued was not kept (see ledger.StateIssuedLost)
	numOutcomes
)

func (o Outcome) String() string {
	return [...]string{"assigned", "disabled", "failed", "unfinished", "skipped", "changed", "issued-lost"}[o]
}

// Stats are the live counters of a run, safe for concurrent use. The
// progress display reads them with Snapshot.
type Stats struct {
	started          atomic.Int64 // Unix nanoseconds when dispatch began; 0 = not yet
	total            atomic.Int64 // devices planned to be touched
	outcomes         [numOutcomes]atomic.Int64
	inFlight         atomic.Int64
	registers        atomic.Int64 // register PUTs DPS accepted (billable)
	registerRequests atomic.Int64 // register PUTs sent
	unanswered       atomic.Int64 // register PUTs with no usable answer: may be billable
	conflicts        atomic.Int64 // register PUTs answered 409203
	polls            atomic.Int64
	lookups          atomic.Int64
	retries          atomic.Int64
	throttled        atomic.Int64
	skipFailed       atomic.Int64              // skipped devices whose ledger state is failed or disabled
	skipIssuedLost   atomic.Int64              // skipped devices whose ledger state is issued-lost
	skipNoCert       atomic.Int64              // skipped assigned devices with no issued certificate, in a run that issues them
	certsWritten     atomic.Int64              // issued certificate chains written durably (or recovered from their file)
	certsLost        atomic.Int64              // devices assigned whose issued certificate was not kept
	stopping         atomic.Bool               // the run was asked to stop (drain): no estimate of the end
	pacers           atomic.Pointer[[2]*Pacer] // register and poll pacers, for Rates
	observer         Observer                  // Options.Observer, set before dispatch; nil = none

	mu        sync.Mutex
	latencies []time.Duration // per finished device: first request to final answer
	byHub     map[string]int
}

// Snapshot is a consistent-enough copy of the counters for display.
type Snapshot struct {
	Elapsed  time.Duration
	Total    int // devices this run has to work on (excludes skips)
	Outcomes [numOutcomes]int
	InFlight int
	// Registers counts register PUTs DPS accepted (2xx): the billable ones.
	Registers int
	// RegisterRequests counts every register PUT sent, refused ones included.
	RegisterRequests int
	// Unanswered counts register PUTs with no usable answer: DPS may have
	// accepted them (each was followed by a lookup, never by another PUT).
	Unanswered int
	// Conflicts counts register PUTs answered 409203 (an operation was running).
	Conflicts int
	Polls     int
	Lookups   int
	Retries   int
	Throttled int // 429 answers
	// SkippedFailures counts skipped devices that are failed or disabled in the ledger.
	SkippedFailures int
	// CertsWritten counts issued certificate chains written durably this
	// run (--issue-certs); CertsLost counts assigned devices whose issued
	// certificate was not kept (issued-lost).
	CertsWritten, CertsLost int
	// SkippedIssuedLost counts skipped devices that are issued-lost in the
	// ledger (--reissue registers them again).
	SkippedIssuedLost int
	// SkippedWithoutCert counts skipped devices that were assigned
	// without an issued certificate, in a run that issues certificates:
	// only --reprovision registers them again with their CSR.
	SkippedWithoutCert int
	// Stopping is true once the run was asked to stop: in-flight devices
	// finish, no new one starts, and there is no time left to estimate.
	Stopping bool
}

// Done is the number of devices this run has finished working on.
func (s Snapshot) Done() int {
	return s.Outcomes[OutcomeAssigned] + s.Outcomes[OutcomeIssuedLost] + s.Outcomes[OutcomeDisabled] + s.Outcomes[OutcomeFailed] + s.Outcomes[OutcomeUnfinished]
}

// Rate is devices finished per second so far.
func (s Snapshot) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Done()) / s.Elapsed.Seconds()
}

// ETA estimates the time left at the rate so far; 0 when unknown or when
// the run is stopping.
func (s Snapshot) ETA() time.Duration {
	if s.Stopping {
		return 0
	}
	r := s.Rate()
	left := s.Total - s.Done()
	if r <= 0 || left <= 0 {
		return 0
	}
	return time.Duration(float64(left) / r * float64(time.Second))
}

// Snapshot copies the counters.
func (st *Stats) Snapshot() Snapshot {
	s := Snapshot{
		Total:              int(st.total.Load()),
		InFlight:           int(st.inFlight.Load()),
		Registers:          int(st.registers.Load()),
		RegisterRequests:   int(st.registerRequests.Load()),
		Unanswered:         int(st.unanswered.Load()),
		Conflicts:          int(st.conflicts.Load()),
		Polls:              int(st.polls.Load()),
		Lookups:            int(st.lookups.Load()),
		Retries:            int(st.retries.Load()),
		Throttled:          int(st.throttled.Load()),
		SkippedFailures:    int(st.skipFailed.Load()),
		SkippedIssuedLost:  int(st.skipIssuedLost.Load()),
		SkippedWithoutCert: int(st.skipNoCert.Load()),
		CertsWritten:       int(st.certsWritten.Load()),
		CertsLost:          int(st.certsLost.Load()),
		Stopping:           st.stopping.Load(),
	}
	if ns := st.started.Load(); ns != 0 {
		s.Elapsed = time.Since(time.Unix(0, ns))
	}
	for i := range s.Outcomes {
		s.Outcomes[i] = int(st.outcomes[i].Load())
	}
	return s
}

func (st *Stats) finish(o Outcome, latency time.Duration, hub string) {
	st.outcomes[o].Add(1)
	if o == OutcomeSkipped || o == OutcomeChanged || o == OutcomeUnfinished {
		return // latency percentiles describe devices that got an answer
	}
	if st.observer != nil {
		st.observer.Device(o, latency)
	}
	st.mu.Lock()
	st.latencies = append(st.latencies, latency)
	if hub != "" {
		if st.byHub == nil {
			st.byHub = map[string]int{}
		}
		st.byHub[hub]++
	}
	st.mu.Unlock()
}

// Percentile returns the q-th (0..1) latency of finished devices.
func (st *Stats) Percentile(q float64) time.Duration {
	st.mu.Lock()
	l := slices.Clone(st.latencies)
	st.mu.Unlock()
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	i := int(q*float64(len(l)-1) + 0.5)
	return l[i]
}

// ByHub returns devices assigned in this run per hub.
func (st *Stats) ByHub() map[string]int {
	st.mu.Lock()
	defer st.mu.Unlock()
	m := make(map[string]int, len(st.byHub))
	for k, v := range st.byHub {
		m[k] = v
	}
	return m
}

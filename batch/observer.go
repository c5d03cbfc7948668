package batch

import "time"

// Observer is told of a run's requests and finished devices as they happen,
// beside the counters of Stats and EnrollStats: a metrics exporter
// implements it. Calls come from many goroutines at once and must not block.
type Observer interface {
	// Request: a request to DPS ended. kind is register, poll or lookup for
	// a provisioning run; bulk, get or delete for an enrollment run. status
	// is the HTTP status of the answer, 0 when none arrived; latency is the
	// request's duration, 0 when it was not measured.
	Request(kind string, status int, latency time.Duration)
	// Device: a device got a final answer in this run (assigned, disabled or
	// failed), latency after its first request in this run.
	Device(o Outcome, latency time.Duration)
}

// Rates are the current rates of a run's pacers in requests per minute;
// 0 means unlimited (or the run has not started).
type Rates struct {
	Register, Poll float64
}

// Rates returns the run's pacer rates now.
func (st *Stats) Rates() Rates {
	p := st.pacers.Load()
	if p == nil {
		return Rates{}
	}
	return Rates{Register: p[0].Rate(), Poll: p[1].Rate()}
}

// Rate returns the enrollment run's pacer rate now in requests per minute;
// 0 means unlimited (or the run has not started).
func (st *EnrollStats) Rate() float64 {
	p := st.pacer.Load()
	if p == nil {
		return 0
	}
	return p.Rate()
}

package batch

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// ServiceClient is what the enrollment runner needs of a DPS service
// client; *dpsservice.Client implements it. Tests wrap the real client to
// count calls or inject faults.
type ServiceClient interface {
	BulkEnrollments(ctx context.Context, mode dpsservice.BulkMode, items []dpsservice.IndividualEnrollment) (*dpsservice.BulkResult, error)
	GetEnrollment(ctx context.Context, id string) (*dpsservice.IndividualEnrollment, error)
	DeleteEnrollment(ctx context.Context, id, ifMatch string) error
	DeleteRegistrationState(ctx context.Context, id, ifMatch string) error
}

var _ ServiceClient = (*dpsservice.Client)(nil)

// EnrollMode is what an enrollment run does to each manifest device.
type EnrollMode string

// The enrollment modes.
const (
	// EnrollModeCreate creates each enrollment that does not exist; an
	// existing one is compared, never changed.
	EnrollModeCreate EnrollMode = "create"
	// EnrollModeUpdate creates or replaces each enrollment (an enrollment
	// dps-batch read before is replaced only if unchanged since: etag).
	EnrollModeUpdate EnrollMode = "update"
	// EnrollModeDelete deletes each enrollment.
	EnrollModeDelete EnrollMode = "delete"
	// EnrollModeDeregister deletes each device's registration state, and
	// its enrollment with EnrollOptions.DeleteEnrollments.
	EnrollModeDeregister EnrollMode = "deregister"
)

// Defaults for EnrollOptions fields left zero.
const (
	// DefaultServiceRate is service requests per minute: below DPS's
	// documented 1,000 service operations per minute per instance.
	DefaultServiceRate    = 900
	DefaultEnrollWorkers  = 8
	DefaultEnrollBatch    = dpsservice.MaxBulkItems
	DefaultBatchTimeout   = 5 * time.Minute
	DefaultEnrollAttempts = DefaultMaxAttempts
)

// EnrollOptions configure an enrollment run. Zero values take the defaults.
type EnrollOptions struct {
	ManifestPath string
	// Manifest reads the manifest (Strict, Columns). GroupKey must be nil:
	// devices of an enrollment group have no individual enrollment.
	Manifest manifests.Options
	Mode     EnrollMode
	// Template holds the fields every enrollment gets besides its
	// registration id and attestation: provisioningStatus, iotHubs,
	// allocationPolicy, initialTwin, capabilities, reprovisionPolicy,
	// customAllocationDefinition.
	Template dpsservice.IndividualEnrollment
	// DeviceIDFrom names a manifest column (an extra one) whose value is
	// the device's IoT Hub device id; "" sends none (DPS uses the
	// registration id).
	DeviceIDFrom string
	// DeleteEnrollments, with EnrollModeDeregister, deletes each device's
	// individual enrollment after its registration state.
	DeleteEnrollments bool
	// RetryFailed sends again devices whose enrollment failed (and reads
	// again exists-different ones) in an earlier run.
	RetryFailed bool

	Workers       int           // bulk batches in flight at once
	Rate          float64       // service requests per minute for the whole run; <0 = unlimited
	BatchSize     int           // items per bulk request, 1 to 10
	MaxAttempts   int           // failed requests per item per run before leaving it for the next run
	BatchTimeout  time.Duration // per batch per run, from its first request
	MaxRetryAfter time.Duration // cap on any server Retry-After
	Backoff       Backoff
	MaxProblems   int // validation problems to collect; 0 = 200
	// Observer, if set, is told of every request (for metrics); the
	// counters it does not see are in Stats.
	Observer Observer
}

func (o *EnrollOptions) setDefaults() {
	if o.Mode == "" {
		o.Mode = EnrollModeCreate
	}
	if o.Workers <= 0 {
		o.Workers = DefaultEnrollWorkers
	}
	if o.Rate == 0 {
		o.Rate = DefaultServiceRate
	}
	if o.BatchSize <= 0 || o.BatchSize > dpsservice.MaxBulkItems {
		o.BatchSize = DefaultEnrollBatch
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultEnrollAttempts
	}
	if o.BatchTimeout <= 0 {
		o.BatchTimeout = DefaultBatchTimeout
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if o.Backoff.MaxRetryAfter <= 0 {
		o.Backoff.MaxRetryAfter = o.MaxRetryAfter
	}
	if o.MaxProblems <= 0 {
		o.MaxProblems = 200
	}
}

// EnrollAction is what a run does with one device, decided from its
// ledger row.
type EnrollAction int

// The enrollment actions, in the order a plan lists them.
const (
	EnActSkip       EnrollAction = iota // nothing to do
	EnActCreate                         // send a create
	EnActUpdate                         // send an update (create or replace)
	EnActCheck                          // read it first: a create's answer was lost
	EnActDelete                         // delete the enrollment
	EnActDeregister                     // delete the registration state (and the enrollment)
	EnActChanged                        // enrolled with other credentials than the manifest's: recorded exists-different
	numEnrollActions
)

func (a EnrollAction) String() string {
	return [...]string{"skip", "create", "update", "check", "delete", "deregister", "changed"}[a]
}

// EnrollPlan counts what a run would do.
type EnrollPlan struct {
	Devices  int // rows in the manifest
	ByAction [numEnrollActions]int
}

// Work is the number of devices the run would send requests for.
func (p *EnrollPlan) Work() int {
	return p.ByAction[EnActCreate] + p.ByAction[EnActUpdate] + p.ByAction[EnActCheck] + p.ByAction[EnActDelete] + p.ByAction[EnActDeregister]
}

// Requests estimates the requests the run sends if nothing fails: one bulk
// request per BatchSize creates, updates or deletes, one read per check,
// one or two deletes per deregistered device.
func (p *EnrollPlan) Requests(o EnrollOptions) int {
	o.setDefaults()
	bulk := p.ByAction[EnActCreate] + p.ByAction[EnActUpdate] + p.ByAction[EnActDelete]
	n := (bulk+o.BatchSize-1)/o.BatchSize + p.ByAction[EnActCheck]
	per := 1
	if o.DeleteEnrollments {
		per = 2
	}
	return n + per*p.ByAction[EnActDeregister]
}

// DecideEnroll returns what to do with a device given its ledger row
// (found=false when the ledger has none), the fingerprint and spec hash of
// the enrollment the manifest and flags ask for.
func DecideEnroll(rec ledger.Enrollment, found bool, fingerprint, specHash string, o EnrollOptions) EnrollAction {
	if o.Mode == EnrollModeDeregister {
		if found && rec.Registration.Done() && (!o.DeleteEnrollments || rec.State == ledger.EnrollDeleted) {
			return EnActSkip
		}
		if found && rec.Registration == ledger.RegFailed && !o.RetryFailed && (!o.DeleteEnrollments || rec.State.Final()) {
			return EnActSkip
		}
		return EnActDeregister
	}
	if o.Mode == EnrollModeDelete {
		if found && (rec.State == ledger.EnrollDeleted || rec.State == ledger.EnrollFailed && rec.Op == string(dpsservice.BulkDelete) && !o.RetryFailed) {
			return EnActSkip
		}
		return EnActDelete
	}
	if !found {
		return EnActCreate
	}
	send := EnActCreate
	if o.Mode == EnrollModeUpdate {
		send = EnActUpdate
	}
	switch rec.State {
	case ledger.EnrollPending, ledger.EnrollRetryable, ledger.EnrollDeleted, ledger.EnrollDeleting:
		return send
	case ledger.EnrollCreating:
		if rec.Op == string(dpsservice.BulkCreate) && o.Mode == EnrollModeCreate {
			return EnActCheck
		}
		return send
	case ledger.EnrollCreated, ledger.EnrollExistsSame, ledger.EnrollUpdated:
		if o.Mode == EnrollModeUpdate {
			if rec.SpecHash == specHash && rec.SpecHash != "" {
				return EnActSkip
			}
			return EnActUpdate
		}
		if rec.Fingerprint != "" && fingerprint != "" && rec.Fingerprint != fingerprint {
			return EnActChanged
		}
		return EnActSkip
	case ledger.EnrollExistsDifferent:
		switch {
		case o.Mode == EnrollModeUpdate:
			return EnActUpdate
		case o.RetryFailed:
			return EnActCreate // answered 409, then read again
		}
		return EnActSkip
	case ledger.EnrollFailed:
		if o.RetryFailed {
			return send
		}
		return EnActSkip
	}
	return EnActCheck
}

// EnrollOutcome is how one device ended in this run.
type EnrollOutcome int

// The outcomes an enrollment run counts.
const (
	EnOutCreated         EnrollOutcome = iota // created in this run
	EnOutUpdated                              // created or replaced by --mode update
	EnOutExistsSame                           // existed with the same attestation: done
	EnOutExistsDifferent                      // exists with another attestation: a failure unless --mode update
	EnOutDeleted                              // enrollment deleted (or none to delete)
	EnOutDeregistered                         // deregister: registration state (and enrollment) gone
	EnOutFailed                               // DPS refused it
	EnOutUnfinished                           // left for the next run
	EnOutSkipped                              // nothing to do
	numEnrollOutcomes
)

func (o EnrollOutcome) String() string {
	return [...]string{"created", "updated", "exists-same", "exists-different", "deleted", "deregistered", "failed", "unfinished", "skipped"}[o]
}

// EnrollStats are the live counters of an enrollment run, safe for
// concurrent use.
type EnrollStats struct {
	started    atomic.Int64 // Unix nanoseconds; 0 = not yet
	total      atomic.Int64
	outcomes   [numEnrollOutcomes]atomic.Int64
	bulk       atomic.Int64 // bulk requests sent
	items      atomic.Int64 // items carried by them
	reads      atomic.Int64 // enrollment reads
	deletes    atomic.Int64 // single deletes (enrollments, registration states)
	regDeleted atomic.Int64 // registration states deleted
	regNone    atomic.Int64 // registration states there was none of
	throttled  atomic.Int64 // 429 answers
	retries    atomic.Int64
	stopping   atomic.Bool
	pacer      atomic.Pointer[Pacer] // for Rate
}

// EnrollSnapshot is a copy of the counters.
type EnrollSnapshot struct {
	Elapsed    time.Duration
	Total      int // devices this run works on
	Outcomes   [numEnrollOutcomes]int
	Bulk       int // bulk requests sent
	Items      int // enrollments carried by them
	Reads      int // enrollment reads (GET)
	Deletes    int // single DELETE requests
	RegDeleted int // registration states deleted
	RegNone    int // registration states there was none of
	Throttled  int
	Retries    int
	Stopping   bool
}

// Requests is every request the run sent.
func (s EnrollSnapshot) Requests() int { return s.Bulk + s.Reads + s.Deletes }

// Done is the number of devices this run finished working on.
func (s EnrollSnapshot) Done() int {
	n := 0
	for o, c := range s.Outcomes {
		if EnrollOutcome(o) != EnOutSkipped {
			n += c
		}
	}
	return n
}

// Rate is devices finished per second so far.
func (s EnrollSnapshot) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Done()) / s.Elapsed.Seconds()
}

// Snapshot copies the counters.
func (st *EnrollStats) Snapshot() EnrollSnapshot {
	s := EnrollSnapshot{
		Total: int(st.total.Load()), Bulk: int(st.bulk.Load()), Items: int(st.items.Load()), Reads: int(st.reads.Load()),
		Deletes: int(st.deletes.Load()), RegDeleted: int(st.regDeleted.Load()), RegNone: int(st.regNone.Load()),
		Throttled: int(st.throttled.Load()), Retries: int(st.retries.Load()), Stopping: st.stopping.Load(),
	}
	if ns := st.started.Load(); ns != 0 {
		s.Elapsed = time.Since(time.Unix(0, ns))
	}
	for i := range s.Outcomes {
		s.Outcomes[i] = int(st.outcomes[i].Load())
	}
	return s
}

// EnrollResult is what an enrollment run did.
type EnrollResult struct {
	Plan     *EnrollPlan
	Snapshot EnrollSnapshot
	// Stopped: the run stopped dispatching early (drain, halt) with work left.
	Stopped bool
	RunID   int64
	// Counts are the ledger's enrollment rows when the run ended.
	Counts ledger.EnrollmentCounts
	// Rate is the pacer's rate at the end, requests per minute (0 =
	// unlimited): below the configured rate after throttling.
	Rate float64
}

// Failures is the number of devices that ended failed or exists-different
// in this run, or were skipped as such.
func (r *EnrollResult) Failures() int {
	s := r.Snapshot
	return s.Outcomes[EnOutFailed] + s.Outcomes[EnOutExistsDifferent]
}

// Left is the number of devices the next run has work for: those this run
// had work for and did not finish.
func (r *EnrollResult) Left() int {
	s := r.Snapshot
	return r.Plan.Work() - (s.Done() - s.Outcomes[EnOutUnfinished])
}

// Resumable reports whether running the same command again has work to do.
func (r *EnrollResult) Resumable() bool {
	return r.Stopped || r.Snapshot.Outcomes[EnOutUnfinished] > 0
}

// EnrollStopError means the run stopped on a failure every request would
// hit: credentials refused, a policy without the right, an untrusted or
// unknown host, a host that does not answer. Items in flight were recorded;
// the same command continues once the cause is fixed.
type EnrollStopError struct {
	Err  error
	Hint string
}

func (e *EnrollStopError) Error() string { return "stopped: " + e.Err.Error() }
func (e *EnrollStopError) Unwrap() error { return e.Err }

// RowsError reports manifest rows an enrollment run refuses, beyond what
// manifests.Validate checks (--device-id-from values that are not IoT Hub
// device ids; for deregister, bad or repeated registration ids); nothing
// was sent.
type RowsError struct {
	Problems []manifests.Problem
	// More counts problems left out of Problems.
	More int
}

func (e *RowsError) Error() string {
	return fmt.Sprintf("manifest has %d problem(s); nothing was sent", len(e.Problems)+e.More)
}

package dpssim

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dps-batch/dps-batch/dps"
	"golang.org/x/time/rate"
)

// Server is a simulated DPS instance: an http.Handler serving the device API
// (register, operation status, registration status lookup) and the /_sim/
// inspection and admin API. Serve it over TLS with client certificates
// requested (see TLSConfig and Start). State lives in memory.
//
// The zero value is a working, empty instance: ID scope DefaultIDScope, the
// default hubs and quotas, no enrollments (so every device gets 401002).
// Use New to serve a Config.
type Server struct {
	// Now returns the current time; nil means time.Now. Tests set it to
	// step through assignment delays, quotas and expiry. Set before serving.
	Now func() time.Time
	// Logger receives one line per device request (method, path,
	// registration id, status, duration; never credentials); nil means no
	// log. Set before serving.
	Logger *slog.Logger

	initOnce sync.Once
	in       *instance
	opPrefix string // "4.<16 hex>." like DPS operation ids

	knobsMu sync.Mutex // serialises knob writers
	knobs   atomic.Pointer[Knobs]
	regLim  atomic.Pointer[rate.Limiter]
	svcLim  atomic.Pointer[rate.Limiter] // service operations quota

	svcSeqMu sync.Mutex
	svcSeq   map[string]int // service requests per operation and target, for fault draws

	mu      sync.Mutex
	regs    map[string]*registration // by lower-case registration id
	hubLoad map[string]int           // devices currently counted per hub

	holdMu sync.Mutex
	hold   chan struct{} // non-nil while holding register requests
	held   atomic.Int64

	stats counters
	auths authCache
}

// New validates cfg and returns a server for it. File references in cfg are
// read relative to the working directory (LoadConfig has already resolved
// and read them).
func New(cfg Config) (*Server, error) {
	if err := cfg.readFiles(""); err != nil {
		return nil, fmt.Errorf("simulator config: %w", err)
	}
	in, err := compile(cfg)
	if err != nil {
		return nil, fmt.Errorf("simulator config: %w", err)
	}
	s := &Server{}
	s.initOnce.Do(func() { s.setup(in) })
	return s, nil
}

// init makes the zero value usable.
func (s *Server) init() {
	s.initOnce.Do(func() {
		in, err := compile(Config{})
		if err != nil {
			panic("dpssim: the empty config does not compile: " + err.Error())
		}
		s.setup(in)
	})
}

func (s *Server) setup(in *instance) {
	s.in = in
	s.regs = map[string]*registration{}
	s.hubLoad = map[string]int{}
	h := fnv.New64a()
	h.Write([]byte(in.idScope))
	s.opPrefix = fmt.Sprintf("4.%016x.", h.Sum64())
	k := in.knobs
	s.knobs.Store(&k)
	s.regLim.Store(newRegLimiter(k.Quotas.registrationsPerMinute(), k.Quotas.RegistrationBurst))
	s.svcLim.Store(newRegLimiter(k.Quotas.serviceOperationsPerMinute(), k.Quotas.ServiceOperationBurst))
	s.svcSeq = map[string]int{}
	s.loadExisting(in.existing, time.Now())
}

// loadExisting creates the registration records of Config.Registrations,
// as of start (the default created and updated time). They count in the
// hub load but not in Registers.
func (s *Server) loadExisting(list []ExistingRegistration, start time.Time) {
	for _, r := range list {
		rec := s.record(r.RegistrationID)
		rec.fromConfig = true
		rec.status = dps.Status(r.Status)
		rec.enrollment = r.Enrollment
		rec.created, rec.updated = r.CreatedDateTimeUTC, r.LastUpdatedDateTimeUTC
		// Defaults keep created <= updated.
		if rec.created.IsZero() {
			rec.created = start
			if !rec.updated.IsZero() && rec.updated.Before(start) {
				rec.created = rec.updated
			}
		}
		if rec.updated.IsZero() {
			rec.updated = start
			if rec.created.After(start) {
				rec.updated = rec.created
			}
		}
		rec.etag = r.ETag
		if rec.etag == "" {
			rec.etag = newETag()
		}
		if rec.status == dps.StatusAssigned {
			rec.hub, rec.lastHub, rec.deviceID, rec.substatus = r.AssignedHub, r.AssignedHub, r.DeviceID, r.Substatus
			rec.countedHub = r.AssignedHub
			s.hubLoad[r.AssignedHub]++
		} else {
			rec.errCode, rec.errMsg = r.ErrorCode, r.ErrorMessage
		}
	}
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// IDScope returns the ID scope the server answers for.
func (s *Server) IDScope() string { s.init(); return s.in.idScope }

// Hubs returns the linked hub host names.
func (s *Server) Hubs() []string { s.init(); return append([]string(nil), s.in.hubs...) }

// Knobs returns the current run-time tunables.
func (s *Server) Knobs() Knobs { s.init(); return *s.knobs.Load() }

// SetKnobs replaces all run-time tunables at once.
func (s *Server) SetKnobs(k Knobs) error {
	return s.updateKnobs(func(cur *Knobs) { *cur = k })
}

// SetFaults replaces the fault knobs.
func (s *Server) SetFaults(f Faults) error {
	return s.updateKnobs(func(k *Knobs) { k.Faults = f })
}

// SetQuotas replaces the throttling quotas. A changed registration or
// service operations quota starts with a full bucket.
func (s *Server) SetQuotas(q Quotas) error {
	return s.updateKnobs(func(k *Knobs) { k.Quotas = q })
}

// SetAssignmentDelay sets how long new operations stay assigning.
func (s *Server) SetAssignmentDelay(d time.Duration) error {
	return s.updateKnobs(func(k *Knobs) { k.AssignmentDelay = Duration(d) })
}

func (s *Server) updateKnobs(change func(*Knobs)) error {
	s.init()
	s.knobsMu.Lock()
	defer s.knobsMu.Unlock()
	k := *s.knobs.Load()
	change(&k)
	if err := k.validate(); err != nil {
		return err
	}
	k.normalize()
	old := s.knobs.Swap(&k)
	if old.Quotas.registrationsPerMinute() != k.Quotas.registrationsPerMinute() || old.Quotas.RegistrationBurst != k.Quotas.RegistrationBurst {
		s.regLim.Store(newRegLimiter(k.Quotas.registrationsPerMinute(), k.Quotas.RegistrationBurst))
	}
	if old.Quotas.serviceOperationsPerMinute() != k.Quotas.serviceOperationsPerMinute() || old.Quotas.ServiceOperationBurst != k.Quotas.ServiceOperationBurst {
		s.svcLim.Store(newRegLimiter(k.Quotas.serviceOperationsPerMinute(), k.Quotas.ServiceOperationBurst))
	}
	return nil
}

// Hold makes register requests wait, after authentication and before they
// take effect, until Release is called (or the client goes away, in which
// case the request has no effect). Tests use it to force orderings.
func (s *Server) Hold() {
	s.holdMu.Lock()
	defer s.holdMu.Unlock()
	if s.hold == nil {
		s.hold = make(chan struct{})
	}
}

// Release lets every held register request proceed and stops holding.
func (s *Server) Release() {
	s.holdMu.Lock()
	defer s.holdMu.Unlock()
	if s.hold != nil {
		close(s.hold)
		s.hold = nil
	}
}

// Held returns how many register requests are waiting for Release.
func (s *Server) Held() int { return int(s.held.Load()) }

func (s *Server) holdChan() chan struct{} {
	s.holdMu.Lock()
	defer s.holdMu.Unlock()
	return s.hold
}

// registration is the state DPS keeps per registration id.
type registration struct {
	id         string // as first seen in a path
	enrollment string // "individual:<id>" or "group:<id>"
	status     dps.Status
	substatus  string
	hub        string
	lastHub    string // last hub assigned, kept across re-registrations
	deviceID   string
	errCode    int
	errMsg     string
	payload    json.RawMessage
	x509       *dps.X509RegistrationResult
	symKey     *dps.SymmetricKeyRegistrationResult
	created    time.Time
	updated    time.Time
	etag       string
	countedHub string // hub whose hubLoad counts this device
	fromConfig bool   // loaded from Config.Registrations

	// prev is the last completed record, kept while a new operation runs
	// (LookupPrevious); nil when there was none.
	prev *dps.DeviceRegistrationResult

	ops []*operation // most recent last, at most maxOpsKept

	registers, registerRequests, polls, lookups int
	deletes                                     int         // registration state deletes (service API)
	lateEffects                                 int         // late register PUTs processed
	registerTimes                               []time.Time // when each counted registration took effect
	pollLog                                     []time.Time // accepted poll times, oldest first

	// Certificate issuance oracle: certificates issued from CSRs, answers
	// carrying a chain written and lost, and the last leaf issued.
	certsIssued, chainsDelivered, chainsLost int
	lastIssued                               *x509.Certificate
}

// maxOpsKept bounds the superseded operations a device may still poll.
const maxOpsKept = 4

// operation is one register PUT's asynchronous operation. Its outcome is
// decided when it starts and becomes visible lazily, once readyAt has passed
// and someone looks: no goroutine or timer per operation.
type operation struct {
	id         string
	apiVersion string
	readyAt    time.Time
	polls      int
	done       bool
	out        outcome
	final      *dps.DeviceRegistrationResult // snapshot when done

	// csr is the checked CSR of the register PUT (nil: none) and cn the
	// registration id the issued certificate names.
	csr *x509.CertificateRequest
	cn  string
	// issued is the chain issued when the operation was assigned (leaf
	// first, base64 DER); handedOver says an answer carried it.
	issued     []string
	handedOver bool
}

type outcome struct {
	status     dps.Status
	hub        string
	deviceID   string
	errCode    int
	errMsg     string
	payload    json.RawMessage
	enrollment string
	x509       *dps.X509RegistrationResult
	symKey     *dps.SymmetricKeyRegistrationResult
	// policy issues a certificate from the operation's CSR on assignment.
	policy *credPolicy
}

func (rec *registration) current() *operation {
	if len(rec.ops) == 0 {
		return nil
	}
	return rec.ops[len(rec.ops)-1]
}

func (rec *registration) findOp(id string) *operation {
	for _, op := range rec.ops {
		if op.id == id {
			return op
		}
	}
	return nil
}

// record returns the registration for id, creating an empty one. s.mu held.
func (s *Server) record(id string) *registration {
	key := strings.ToLower(id)
	rec := s.regs[key]
	if rec == nil {
		rec = &registration{id: id}
		s.regs[key] = rec
	}
	return rec
}

// settle completes rec's current operation if its time has come. s.mu held.
func (s *Server) settle(rec *registration, now time.Time) {
	op := rec.current()
	if op == nil || op.done || now.Before(op.readyAt) {
		return
	}
	op.done = true
	if op.out.status == dps.StatusAssigned && op.csr != nil && op.out.policy != nil && !s.issueFor(rec, op) {
		op.out.status = dps.StatusFailed
		op.out.errCode = dps.CodeInternalServerError
		op.out.errMsg = "certificate issuance failed"
		if rec.countedHub != "" {
			s.hubLoad[rec.countedHub]--
			rec.countedHub = ""
		}
	}
	o := op.out
	rec.status = o.status
	rec.enrollment = o.enrollment
	rec.x509, rec.symKey = o.x509, o.symKey
	rec.payload = o.payload
	rec.updated = op.readyAt
	rec.etag = newETag()
	rec.errCode, rec.errMsg = o.errCode, o.errMsg
	rec.substatus = ""
	rec.hub, rec.deviceID = "", ""
	if o.status == dps.StatusAssigned {
		switch {
		case rec.lastHub == "":
			rec.substatus = dps.SubstatusInitialAssignment
		case rec.lastHub != o.hub:
			// Default reprovision policy: update the hub, migrate the data.
			rec.substatus = dps.SubstatusDeviceDataMigrated
		case apiVersionAtLeast(op.apiVersion, "2019-04-15"):
			// Same hub again. DPS documents this value as "re-provisioned
			// to a previously assigned IoT hub" (api-version 2019-04-15+).
			rec.substatus = dps.SubstatusReprovisionedToInitialAssignment
		default:
			rec.substatus = dps.SubstatusInitialAssignment
		}
		rec.hub, rec.deviceID, rec.lastHub = o.hub, o.deviceID, o.hub
	}
	op.final = rec.result()
}

// result is the DeviceRegistrationResult for rec's current state. s.mu held.
func (rec *registration) result() *dps.DeviceRegistrationResult {
	r := &dps.DeviceRegistrationResult{
		RegistrationID:         rec.id,
		CreatedDateTimeUTC:     formatTime(rec.created),
		Status:                 rec.status,
		LastUpdatedDateTimeUTC: formatTime(rec.updated),
		ETag:                   rec.etag,
	}
	switch rec.status {
	case dps.StatusAssigned:
		r.AssignedHub, r.DeviceID, r.Substatus = rec.hub, rec.deviceID, rec.substatus
		r.Payload = rec.payload
		r.X509, r.SymmetricKey = rec.x509, rec.symKey
	case dps.StatusFailed, dps.StatusDisabled:
		r.ErrorCode, r.ErrorMessage = rec.errCode, rec.errMsg
		r.X509, r.SymmetricKey = rec.x509, rec.symKey
	}
	return r
}

// RegistrationInfo is what the simulator knows about one registration id:
// its state and how many requests of each kind it received. A record exists
// once a device authenticated, or from the start for Config.Registrations;
// Status is "" until its first operation.
type RegistrationInfo struct {
	// RegistrationID is the id as the device first sent it.
	RegistrationID string `json:"registrationId"`
	// Status is the registration's status now: assigning, assigned,
	// failed, disabled, or "" before the first operation.
	Status dps.Status `json:"status"`
	// Substatus, AssignedHub and DeviceID describe an assignment.
	Substatus   string `json:"substatus,omitempty"`
	AssignedHub string `json:"assignedHub,omitempty"`
	DeviceID    string `json:"deviceId,omitempty"`
	// ErrorCode is set for failed and disabled registrations.
	ErrorCode int `json:"errorCode,omitempty"`
	// Enrollment is "individual:<registrationId>" or "group:<groupId>".
	Enrollment  string `json:"enrollment,omitempty"`
	OperationID string `json:"operationId,omitempty"`
	// Registers counts register PUTs that took effect at this server (started
	// an operation), whatever the client saw: on time or late, answered,
	// dropped, or answered with an unusable body. Not counted: refused PUTs
	// (401, 409203, 429, injected 5xx, dropped before taking effect) and
	// records loaded from Config.Registrations. The number that matters for
	// "registered twice".
	Registers int `json:"registers"`
	// RegisterTimes are the times (Server.Now) at which each counted
	// registration took effect, oldest first: len(RegisterTimes) ==
	// Registers. Tests count registrations per campaign window with it.
	RegisterTimes []time.Time `json:"registerTimes,omitempty"`
	// RegisterRequests counts every authenticated register PUT, including
	// throttled, conflicting, faulted and malformed ones.
	RegisterRequests int `json:"registerRequests"`
	// LateEffects counts this device's late register PUTs
	// (Faults.LateEffectRate) processed at their effect time, whatever the
	// outcome and whether or not the client was still connected; 0 when
	// none was late.
	LateEffects int `json:"lateEffects,omitempty"`
	// Polls counts authenticated operation-status GETs.
	Polls int `json:"polls"`
	// Lookups counts authenticated registration status lookups.
	Lookups int `json:"lookups"`
	// Deletes counts deletions of the registration state through the
	// service API (DELETE /registrations/{id}); the device registers as new
	// afterwards.
	Deletes int `json:"deletes,omitempty"`
	// CreatedUTC is when the first operation started; UpdatedUTC when the
	// registration last changed.
	CreatedUTC time.Time `json:"createdDateTimeUtc,omitzero"`
	UpdatedUTC time.Time `json:"lastUpdatedDateTimeUtc,omitzero"`
	// FromConfig says the record was loaded from Config.Registrations (the
	// device registered before this server started); false for devices
	// first seen by this server.
	FromConfig bool `json:"fromConfig,omitempty"`

	// CertificatesIssued counts certificates issued to this device from
	// the CSRs of its register PUTs (api-version 2025-07-01-preview), one
	// per operation assigned with a CSR, whatever the client saw.
	CertificatesIssued int `json:"certificatesIssued,omitempty"`
	// ChainsDelivered counts answers carrying an issued chain
	// (registrationState.issuedCertificateChain) that were written to the
	// client: at most one per issued certificate unless
	// Knobs.IssuedChainEveryPoll. ChainsLost counts such answers lost
	// instead (Faults.LoseIssuedAnswerRate or DropResponseRate). An issued
	// certificate with no delivered chain is lost for the client.
	ChainsDelivered int `json:"chainsDelivered,omitempty"`
	ChainsLost      int `json:"chainsLost,omitempty"`
	// LastIssuedSerial (upper-case hex, as DPS writes serial numbers),
	// LastIssuedSHA256 (upper-case hex SHA-256 of the DER) and
	// LastIssuedNotAfter describe the last certificate issued.
	LastIssuedSerial   string    `json:"lastIssuedSerial,omitempty"`
	LastIssuedSHA256   string    `json:"lastIssuedSha256Thumbprint,omitempty"`
	LastIssuedNotAfter time.Time `json:"lastIssuedNotAfter,omitzero"`
}

// Registrations returns every registration the simulator knows, sorted by
// registration id, with operations settled as of now.
func (s *Server) Registrations() []RegistrationInfo {
	s.init()
	now := s.now()
	s.mu.Lock()
	out := make([]RegistrationInfo, 0, len(s.regs))
	for _, rec := range s.regs {
		s.settle(rec, now)
		out = append(out, rec.info())
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].RegistrationID < out[j].RegistrationID })
	return out
}

// Registration returns one registration's info (ids are case-insensitive).
func (s *Server) Registration(id string) (RegistrationInfo, bool) {
	s.init()
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.regs[strings.ToLower(id)]
	if rec == nil {
		return RegistrationInfo{}, false
	}
	s.settle(rec, now)
	return rec.info(), true
}

func (rec *registration) info() RegistrationInfo {
	ri := RegistrationInfo{
		RegistrationID:   rec.id,
		Status:           rec.status,
		Substatus:        rec.substatus,
		AssignedHub:      rec.hub,
		DeviceID:         rec.deviceID,
		ErrorCode:        rec.errCode,
		Enrollment:       rec.enrollment,
		Registers:        rec.registers,
		RegisterRequests: rec.registerRequests,
		LateEffects:      rec.lateEffects,
		Polls:            rec.polls,
		Lookups:          rec.lookups,
		Deletes:          rec.deletes,
		CreatedUTC:       rec.created,
		UpdatedUTC:       rec.updated,
		FromConfig:       rec.fromConfig,
	}
	if len(rec.registerTimes) > 0 {
		ri.RegisterTimes = append([]time.Time(nil), rec.registerTimes...)
	}
	if op := rec.current(); op != nil {
		ri.OperationID = op.id
	}
	rec.issuedInfo(&ri)
	return ri
}

// Stats are totals over all requests since the server started: device API
// requests first, then the service API's.
type Stats struct {
	// Requests counts device API requests (not the service API, not
	// /_sim/), answered or dropped.
	Requests int64 `json:"requests"`
	// RegisterRequests, Polls and Lookups count requests of each kind,
	// whatever their answer.
	RegisterRequests int64 `json:"registerRequests"`
	Polls            int64 `json:"polls"`
	Lookups          int64 `json:"lookups"`
	// Registers counts register PUTs that took effect (started an
	// operation), on time or late, whatever the client saw; records from
	// Config.Registrations are not counted.
	Registers int64 `json:"registers"`
	// Conflicts counts register PUTs refused with 409 + 409203 because the
	// device's current operation was still running (counted when refused,
	// also for late PUTs whose client had gone).
	Conflicts int64 `json:"conflicts"`
	// LateEffects counts late register PUTs (Faults.LateEffectRate) that
	// reached their effect time and were processed, whatever the outcome
	// (an operation, 409203 or 429) and whether or not the client was still
	// connected.
	LateEffects int64 `json:"lateEffects"`
	// Throttled counts 429 answers.
	Throttled int64 `json:"throttled"`
	// Faults counts injected failures: 5xx answers, dropped connections,
	// bare 404 lookups and unusable register bodies.
	Faults int64 `json:"faults"`
	// Dropped counts connections closed without an answer.
	Dropped int64 `json:"dropped"`
	// ByStatus counts answers by HTTP status.
	ByStatus map[int]int64 `json:"byStatus"`
	// Registrations is how many registration ids have state (records from
	// Config.Registrations included); Assigned how many of them are
	// assigned now.
	Registrations int `json:"registrations"`
	Assigned      int `json:"assigned"`

	// ServiceRequests counts service API requests (enrollments, enrollment
	// groups, registration states), answered or dropped; the device
	// counters above do not include them.
	ServiceRequests int64 `json:"serviceRequests"`
	// ServiceThrottled counts service API 429 answers (the service
	// operations quota); ServiceFaults injected 5xx answers and dropped
	// connections (Faults.ServiceErrorRate, DropConnectionRate,
	// DropResponseRate); ServiceDropped the dropped connections alone.
	ServiceThrottled int64 `json:"serviceThrottled"`
	ServiceFaults    int64 `json:"serviceFaults"`
	ServiceDropped   int64 `json:"serviceDropped"`
	// EnrollmentCreates, EnrollmentUpdates and EnrollmentDeletes count
	// individual enrollment changes that took effect through the service
	// API (bulk items one by one), whatever the client saw; Group* the same
	// for enrollment groups.
	EnrollmentCreates int64 `json:"enrollmentCreates"`
	EnrollmentUpdates int64 `json:"enrollmentUpdates"`
	EnrollmentDeletes int64 `json:"enrollmentDeletes"`
	GroupCreates      int64 `json:"groupCreates"`
	GroupUpdates      int64 `json:"groupUpdates"`
	GroupDeletes      int64 `json:"groupDeletes"`
	// RegistrationDeletes counts registration states deleted through the
	// service API.
	RegistrationDeletes int64 `json:"registrationDeletes"`
	// ServiceByStatus counts service API answers by HTTP status.
	ServiceByStatus map[int]int64 `json:"serviceByStatus"`
	// IndividualEnrollments and EnrollmentGroups are how many exist now.
	IndividualEnrollments int `json:"individualEnrollments"`
	EnrollmentGroups      int `json:"enrollmentGroups"`

	// CertificatesIssued counts certificates issued from CSRs;
	// ChainsDelivered answers carrying an issued chain that were written;
	// ChainsLost such answers lost (Faults.LoseIssuedAnswerRate,
	// DropResponseRate).
	CertificatesIssued int64 `json:"certificatesIssued"`
	ChainsDelivered    int64 `json:"chainsDelivered"`
	ChainsLost         int64 `json:"chainsLost"`
}

type counters struct {
	requests, registerRequests, polls, lookups, registers atomic.Int64
	conflicts, lateEffects                                atomic.Int64
	throttled, faults, dropped                            atomic.Int64
	byStatus                                              [600]atomic.Int64

	serviceRequests, serviceThrottled, serviceFaults, serviceDropped atomic.Int64
	enrollmentCreates, enrollmentUpdates, enrollmentDeletes          atomic.Int64
	groupCreates, groupUpdates, groupDeletes, registrationDeletes    atomic.Int64
	serviceByStatus                                                  [600]atomic.Int64

	certsIssued, chainsDelivered, chainsLost atomic.Int64
}

// Stats returns the totals so far.
func (s *Server) Stats() Stats {
	s.init()
	c := &s.stats
	st := Stats{
		Requests:         c.requests.Load(),
		RegisterRequests: c.registerRequests.Load(),
		Polls:            c.polls.Load(),
		Lookups:          c.lookups.Load(),
		Registers:        c.registers.Load(),
		Conflicts:        c.conflicts.Load(),
		LateEffects:      c.lateEffects.Load(),
		Throttled:        c.throttled.Load(),
		Faults:           c.faults.Load(),
		Dropped:          c.dropped.Load(),
		ByStatus:         map[int]int64{},
	}
	for code := range c.byStatus {
		if n := c.byStatus[code].Load(); n > 0 {
			st.ByStatus[code] = n
		}
	}
	st.ServiceRequests = c.serviceRequests.Load()
	st.ServiceThrottled = c.serviceThrottled.Load()
	st.ServiceFaults = c.serviceFaults.Load()
	st.ServiceDropped = c.serviceDropped.Load()
	st.EnrollmentCreates = c.enrollmentCreates.Load()
	st.EnrollmentUpdates = c.enrollmentUpdates.Load()
	st.EnrollmentDeletes = c.enrollmentDeletes.Load()
	st.GroupCreates = c.groupCreates.Load()
	st.GroupUpdates = c.groupUpdates.Load()
	st.GroupDeletes = c.groupDeletes.Load()
	st.RegistrationDeletes = c.registrationDeletes.Load()
	st.ServiceByStatus = map[int]int64{}
	for code := range c.serviceByStatus {
		if n := c.serviceByStatus[code].Load(); n > 0 {
			st.ServiceByStatus[code] = n
		}
	}
	st.IndividualEnrollments, st.EnrollmentGroups = s.in.enrollmentCount()
	st.CertificatesIssued = c.certsIssued.Load()
	st.ChainsDelivered = c.chainsDelivered.Load()
	st.ChainsLost = c.chainsLost.Load()
	now := s.now()
	s.mu.Lock()
	for _, rec := range s.regs {
		s.settle(rec, now)
		if rec.status != "" {
			st.Registrations++
		}
		if rec.status == dps.StatusAssigned {
			st.Assigned++
		}
	}
	s.mu.Unlock()
	return st
}

// formatTime renders times like DPS: UTC with 7 fractional digits.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.0000000Z")
}

// newUUID returns a random version-4 UUID, as DPS request ids look.
func newUUID() string { return dps.NewRequestID() }

// newETag is base64 of a quoted GUID, the shape DPS etags have.
func newETag() string {
	return base64.StdEncoding.EncodeToString([]byte(`"` + newUUID() + `"`))
}

// apiVersions are the device api-versions DPS clients are known to send
// (dps-protocol.md §1.4); the simulator accepts all of them.
var apiVersions = map[string]bool{
	"2017-08-31-preview": true,
	"2017-11-15":         true,
	"2018-04-01":         true,
	"2018-09-01-preview": true,
	"2018-11-01":         true,
	"2019-03-31":         true,
	"2019-04-15":         true,
	"2021-06-01":         true,
	"2021-10-01":         true,
	"2021-11-01-preview": true,
	"2025-07-01-preview": true,
	"2026-04-01":         true,
	"2026-07-01-preview": true,
	"2026-11-01":         true,
	"2026-11-02-preview": true,
	"2026-11-15-preview": true,
}

// apiVersionAtLeast compares the date parts of two api-versions.
func apiVersionAtLeast(v, min string) bool {
	if len(v) < 10 {
		return false
	}
	return v[:10] >= min
}

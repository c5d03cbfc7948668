package dpssim

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// Error codes the dps package does not name.
const (
	// codeRouteNotFound answers a path that is no DPS device operation.
	codeRouteNotFound = 404000
	// codeEnrollmentDisabled goes in the registrationState of a disabled
	// operation. DPS's code for this is undocumented; 400209 is what IoT
	// Central (which blocks devices by disabling their enrollment) reports
	// for a blocked device (dps-protocol.md §4.2).
	codeEnrollmentDisabled = 400209
)

// maxBody is DPS's maximum message size (dps-protocol.md §7).
const maxBody = 96 << 10

// apiError is an error answer: HTTP status, DPS error code and message.
type apiError struct {
	status     int
	code       int
	msg        string
	retryAfter int // seconds; 0 = no header
}

// Request kinds, used in stats, logs and fault draws.
const (
	kindRegister = "register"
	kindPoll     = "poll"
	kindLookup   = "lookup"
)

// ServeHTTP serves the DPS device API (paths that start with the ID scope),
// the service API (paths that start with enrollments, enrollmentGroups or
// registrations) and, under /_sim/, the simulator's inspection and admin API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	if p := r.URL.Path; p == "/_sim" || strings.HasPrefix(p, "/_sim/") {
		s.serveAdmin(w, r)
		return
	}
	if isServicePath(r.URL.EscapedPath()) {
		s.serveService(w, r)
		return
	}
	s.serveDevice(w, r)
}

// call is one device request in flight.
type call struct {
	s          *Server
	w          http.ResponseWriter
	r          *http.Request
	reqID      string
	start      time.Time
	kind       string
	regID      string // the device; for service requests the target, e.g. "enrollments/dev-1"
	apiVersion string
	svc        bool // a service API request: counted in the service totals
}

func (s *Server) serveDevice(w http.ResponseWriter, r *http.Request) {
	s.stats.requests.Add(1)
	c := &call{s: s, w: w, r: r, reqID: newUUID(), start: time.Now()}
	kind, scope, id, opID, aerr := route(r)
	c.kind, c.regID = kind, id
	switch kind {
	case kindRegister:
		s.stats.registerRequests.Add(1)
	case kindPoll:
		s.stats.polls.Add(1)
	case kindLookup:
		s.stats.lookups.Add(1)
	}
	if aerr != nil {
		c.fail(aerr)
		return
	}
	c.apiVersion = r.URL.Query().Get("api-version")
	switch {
	case c.apiVersion == "":
		c.fail(&apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "the api-version query parameter is required (e.g. api-version=2021-10-01)"})
		return
	case !apiVersions[c.apiVersion]:
		c.fail(&apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: fmt.Sprintf("api-version %q is not supported (use 2021-10-01 or 2019-03-31)", c.apiVersion)})
		return
	}
	if !strings.EqualFold(scope, s.in.idScope) {
		c.fail(&apiError{status: http.StatusNotFound, code: dps.CodeNotFound, msg: fmt.Sprintf("ID scope %q is not served here (this instance is %q)", scope, s.in.idScope)})
		return
	}
	// Node sends "{}" with its GETs; the body of a poll means nothing.
	var body deviceRegistration
	if kind == kindPoll {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, maxBody))
	} else {
		if body, aerr = readDeviceRegistration(r, id); aerr != nil {
			c.fail(aerr)
			return
		}
		// Other api-versions do not know the field: it is ignored.
		if supportsCSR(c.apiVersion) && present(body.csrRaw) {
			body.hasCSR = true
			if kind == kindRegister && json.Unmarshal(body.csrRaw, &body.csr) != nil {
				c.fail(csrError("it must be a JSON string holding the base64 DER of a PKCS#10 certificate signing request"))
				return
			}
		}
		if kind == kindLookup && body.hasCSR {
			c.fail(&apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest,
				msg: "csr is not allowed in the registration status lookup: send it with the register PUT (the lookup never returns an issued certificate)"})
			return
		}
	}
	now := s.now()
	att, aerr := s.authenticate(r, id, body.tpm, now)
	if aerr != nil {
		c.fail(aerr)
		return
	}
	switch kind {
	case kindRegister:
		s.register(c, att, body, scope)
	case kindPoll:
		s.poll(c, opID)
	case kindLookup:
		s.lookup(c)
	}
}

// route splits the path into the operation and its decoded segments. Path
// segments may use either hex case, and '+' for a space (WebUtility.UrlEncode).
func route(r *http.Request) (kind, scope, id, opID string, aerr *apiError) {
	raw := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
	segs := make([]string, len(raw))
	for i, s := range raw {
		d, err := url.QueryUnescape(s)
		if err != nil {
			return "", "", "", "", &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: fmt.Sprintf("path segment %q is not valid URL encoding", s)}
		}
		segs[i] = d
	}
	var method string
	switch {
	case len(segs) == 4 && strings.EqualFold(segs[1], "registrations") && strings.EqualFold(segs[3], "register"):
		kind, method = kindRegister, http.MethodPut
	case len(segs) == 5 && strings.EqualFold(segs[1], "registrations") && strings.EqualFold(segs[3], "operations"):
		kind, method, opID = kindPoll, http.MethodGet, segs[4]
	case len(segs) == 3 && strings.EqualFold(segs[1], "registrations"):
		kind, method = kindLookup, http.MethodPost
	default:
		return "", "", "", "", &apiError{status: http.StatusNotFound, code: codeRouteNotFound,
			msg: fmt.Sprintf("%s is not a DPS device operation: use PUT /{idScope}/registrations/{id}/register, GET /{idScope}/registrations/{id}/operations/{operationId} or POST /{idScope}/registrations/{id}", r.URL.Path)}
	}
	scope, id = segs[0], segs[2]
	if r.Method != method {
		return kind, scope, id, opID, &apiError{status: http.StatusMethodNotAllowed, code: dps.CodeMethodNotAllowed,
			msg: fmt.Sprintf("%s is not allowed here; the %s operation is %s", r.Method, kind, method)}
	}
	if err := checkRegistrationID(id); err != nil {
		return kind, scope, id, opID, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "registration id " + err.Error()}
	}
	return kind, scope, id, opID, nil
}

// deviceRegistration is the parsed register / lookup body.
type deviceRegistration struct {
	payload json.RawMessage
	tpm     bool
	// csrRaw is the csr member as sent; csr its string value and hasCSR
	// whether one was sent (not null), both set only for api-versions
	// that know the field.
	csrRaw json.RawMessage
	csr    string
	hasCSR bool
	// checkedCSR is csr once checked (register PUTs of
	// 2025-07-01-preview); nil when none was sent.
	checkedCSR *x509.CertificateRequest
}

// readDeviceRegistration reads a DeviceRegistration body: JSON (any
// charset parameter; Content-Encoding is ignored as DPS does with the
// documented "utf-8"), at most 96 KB, registrationId equal to the path's if
// present, payload a JSON object. An empty body is accepted.
func readDeviceRegistration(r *http.Request, pathID string) (deviceRegistration, *apiError) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return deviceRegistration{}, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "reading the request body: " + err.Error()}
	}
	if len(b) > maxBody {
		return deviceRegistration{}, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "the request body is larger than the 96 KB DPS accepts"}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return deviceRegistration{}, nil
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return deviceRegistration{}, &apiError{status: http.StatusUnsupportedMediaType, code: dps.CodeUnsupportedMediaType,
			msg: fmt.Sprintf("Content-Type %q is not supported: send application/json", r.Header.Get("Content-Type"))}
	}
	var v struct {
		RegistrationID *string         `json:"registrationId"`
		Payload        json.RawMessage `json:"payload"`
		TPM            json.RawMessage `json:"tpm"`
		CSR            json.RawMessage `json:"csr"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return deviceRegistration{}, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "malformed JSON body: " + err.Error()}
	}
	if v.RegistrationID != nil && *v.RegistrationID != "" && !strings.EqualFold(*v.RegistrationID, pathID) {
		return deviceRegistration{}, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest,
			msg: fmt.Sprintf("registrationId %q in the body does not match %q in the path", *v.RegistrationID, pathID)}
	}
	var dr deviceRegistration
	if p := bytes.TrimSpace(v.Payload); len(p) > 0 && !bytes.Equal(p, []byte("null")) {
		if p[0] != '{' {
			return deviceRegistration{}, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "payload must be a JSON object"}
		}
		dr.payload = json.RawMessage(p)
	}
	dr.tpm = len(v.TPM) > 0 && !bytes.Equal(bytes.TrimSpace(v.TPM), []byte("null"))
	dr.csrRaw = v.CSR
	return dr, nil
}

func (s *Server) register(c *call, att attested, body deviceRegistration, scope string) {
	k := s.knobs.Load()
	s.mu.Lock()
	rec := s.record(c.regID)
	rec.registerRequests++
	seq := rec.registerRequests
	s.mu.Unlock()
	// A CSR is checked before the request can take effect: a bad one
	// registers nothing.
	if body.hasCSR {
		if att.enr.credPolicy == nil {
			c.fail(csrError("enrollment %s names no credential policy (credentialPolicyName), so no certificate can be issued; register without a csr, or link a credential policy to the enrollment", att.enr.name()))
			return
		}
		csr, aerr := checkCSR(body.csr, c.regID)
		if aerr != nil {
			c.fail(aerr)
			return
		}
		body.checkedCSR = csr
	}
	if !c.inject(k, seq, k.Faults.RegisterErrorRate) {
		return
	}
	if ch := s.holdChan(); ch != nil {
		s.held.Add(1)
		select {
		case <-ch:
			s.held.Add(-1)
		case <-c.r.Context().Done():
			// The client gave up while held: the request has no effect.
			s.held.Add(-1)
			return
		}
	}
	k = s.knobs.Load()
	f := &k.Faults
	badBody := ""
	if f.RegisterBadBodyRate > 0 && draw(f.Seed, kindRegister, drawBadBody, c.regID, seq) < f.RegisterBadBodyRate {
		badBody = f.badBodyMode()
	}
	eff := effectArgs{rec: rec, att: att, body: body, regID: c.regID, apiVersion: c.apiVersion, sync: badBody == BadBodySyncAssigned}
	if f.LateEffectRate > 0 && (f.LateEffectFirstPuts == 0 || seq <= f.LateEffectFirstPuts) &&
		draw(f.Seed, kindRegister, drawLateEffect, c.regID, seq) < f.LateEffectRate {
		s.registerLate(c, eff, k, seq, badBody, scope)
		return
	}
	res := s.takeEffect(eff)
	if res.aerr != nil {
		c.fail(res.aerr)
		return
	}
	c.answerRegister(res, seq, badBody, scope)
}

// effectArgs is what a register PUT needs to take effect. It holds nothing
// of the client's connection, so a late PUT can take effect after its
// client has gone.
type effectArgs struct {
	rec        *registration
	att        attested
	body       deviceRegistration
	regID      string
	apiVersion string
	sync       bool // complete the operation at once (BadBodySyncAssigned)
	late       bool // a late effect (Faults.LateEffectRate)
}

// effectResult is a register PUT's outcome: an operation (with its final
// state when sync), or the refusal to answer with; k are the knobs it was
// decided under.
type effectResult struct {
	op    *operation
	final *dps.DeviceRegistrationResult
	aerr  *apiError
	k     *Knobs
	// chain is set when final carries an issued chain.
	chain *chainAnswer
}

// takeEffect is the moment a register PUT takes effect: 409203 while the
// device's current operation runs, 429 over the registration quota, else a
// new operation, counted in Registers.
func (s *Server) takeEffect(a effectArgs) effectResult {
	k := s.knobs.Load()
	now := s.now()
	rec := a.rec
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.late {
		rec.lateEffects++
		s.stats.lateEffects.Add(1)
	}
	s.settle(rec, now)
	if op := rec.current(); op != nil && !op.done {
		s.stats.conflicts.Add(1)
		return effectResult{k: k, aerr: &apiError{status: http.StatusConflict, code: dps.CodePreconditionFailed,
			msg: fmt.Sprintf("Precondition failed: registration %q already has operation %s in progress", a.regID, op.id)}}
	}
	if res := s.regLim.Load().ReserveN(now, 1); !res.OK() || res.DelayFrom(now) > 0 {
		wait := res.DelayFrom(now)
		res.CancelAt(now)
		return effectResult{k: k, aerr: &apiError{status: http.StatusTooManyRequests, code: dps.CodeThrottled, retryAfter: retryAfterSeconds(wait),
			msg: fmt.Sprintf("registration rate exceeded: at most %d registrations per minute", k.Quotas.registrationsPerMinute())}}
	}
	op := &operation{id: s.opPrefix + newUUID(), apiVersion: a.apiVersion, readyAt: now.Add(time.Duration(k.AssignmentDelay)),
		csr: a.body.checkedCSR, cn: a.regID}
	if a.sync {
		op.readyAt = now
	}
	op.out = s.decide(rec, a.att, a.regID, a.body.payload)
	// The record as it was, for LookupPrevious while the new operation runs.
	rec.prev = nil
	if rec.status != "" && rec.status != dps.StatusAssigning {
		rec.prev = rec.result()
	}
	if rec.created.IsZero() {
		rec.created = now
	}
	rec.status = dps.StatusAssigning
	rec.substatus, rec.hub, rec.deviceID, rec.errCode, rec.errMsg = "", "", "", 0, ""
	rec.updated = now
	rec.etag = newETag()
	rec.ops = append(rec.ops, op)
	if len(rec.ops) > maxOpsKept {
		rec.ops = append(rec.ops[:0], rec.ops[len(rec.ops)-maxOpsKept:]...)
	}
	rec.registers++
	rec.registerTimes = append(rec.registerTimes, now)
	s.stats.registers.Add(1)
	r := effectResult{op: op, k: k}
	if a.sync {
		s.settle(rec, now)
		var carries bool
		r.final, carries = withChain(op, k)
		if carries {
			r.chain = &chainAnswer{rec: rec, op: op}
		}
	}
	return r
}

// registerLate makes a register PUT take effect LateEffectDelay from now,
// whether or not its client is still connected then, and answers
// LateAnswerDelay after that if the client is still there. The effect is
// abandoned only when the server is closed or shut down first.
func (s *Server) registerLate(c *call, eff effectArgs, k *Knobs, seq int, badBody, scope string) {
	effectDelay, answerDelay := time.Duration(k.Faults.LateEffectDelay), time.Duration(k.Faults.LateAnswerDelay)
	life := lifeContext(c.r)
	done := make(chan *effectResult, 1) // nil: abandoned
	go func() {
		t := time.NewTimer(effectDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-life.Done():
			done <- nil
			return
		}
		eff.late = true
		res := s.takeEffect(eff)
		done <- &res
	}()
	// Giving up without an answer aborts the response, so that no empty
	// 200 is written to a connection that is still open (server closing).
	var res *effectResult
	select {
	case res = <-done:
	case <-c.r.Context().Done():
		// The client hung up or timed out (or the server is closing): the
		// effect still happens unless the server closes first.
		panic(http.ErrAbortHandler)
	}
	if res == nil {
		// The server is closing: no effect, no answer.
		panic(http.ErrAbortHandler)
	}
	if answerDelay > 0 {
		t := time.NewTimer(answerDelay)
		select {
		case <-t.C:
		case <-c.r.Context().Done():
			t.Stop()
			panic(http.ErrAbortHandler)
		}
	}
	if res.aerr != nil {
		c.fail(res.aerr)
		return
	}
	c.answerRegister(*res, seq, badBody, scope)
}

// answerRegister answers a register PUT that took effect: normally 202 with
// the operation id, or the unusable answer badBody names.
func (c *call) answerRegister(res effectResult, seq int, badBody, scope string) {
	k := res.k
	loc := "https://" + c.r.Host + "/" + url.PathEscape(scope) + "/registrations/" + url.PathEscape(c.regID) + "/register"
	accepted := dps.RegistrationOperationStatus{OperationID: res.op.id, Status: dps.StatusAssigning}
	type syncAnswer struct {
		Status            dps.Status                    `json:"status"`
		RegistrationState *dps.DeviceRegistrationResult `json:"registrationState"`
	}
	if res.chain != nil {
		c.handOverChain(k, seq, *res.chain, http.StatusOK, syncAnswer{res.final.Status, res.final}, loc)
	} else {
		c.maybeDropResponse(k, seq)
	}
	switch badBody {
	case BadBodyTruncated:
		c.s.stats.faults.Add(1)
		b, _ := json.Marshal(accepted)
		c.w.Header().Set("Location", loc)
		// Announce the whole body, send half, and close: the client sees
		// a short body it cannot parse.
		c.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		c.write(http.StatusAccepted, b[:len(b)/2], k.RetryAfterSeconds)
		_ = http.NewResponseController(c.w).Flush()
		c.log(http.StatusAccepted, 0)
		panic(http.ErrAbortHandler)
	case BadBodyNoOperationID:
		c.s.stats.faults.Add(1)
		c.reply(http.StatusAccepted, struct {
			Status dps.Status `json:"status"`
		}{dps.StatusAssigning}, k.RetryAfterSeconds, loc)
	case BadBodySyncAssigned:
		c.s.stats.faults.Add(1)
		c.reply(http.StatusOK, syncAnswer{res.final.Status, res.final}, -1, loc)
		if res.chain != nil {
			c.chainDelivered(*res.chain)
		}
	default:
		c.reply(http.StatusAccepted, accepted, k.RetryAfterSeconds, loc)
	}
}

// decide computes a new operation's outcome from the enrollment, the
// allocation policy and the payload. s.mu held.
func (s *Server) decide(rec *registration, att attested, id string, payload json.RawMessage) outcome {
	e := att.enr
	o := outcome{enrollment: e.name(), x509: att.x509, symKey: att.symKey, policy: e.credPolicy}
	if s.in.echoPayload {
		o.payload = payload
	}
	if e.disabled {
		o.status = dps.StatusDisabled
		o.errCode = codeEnrollmentDisabled
		o.errMsg = fmt.Sprintf("enrollment %s is disabled", e.name())
		return o
	}
	hub, failure := s.allocate(rec, e, id, payload)
	if failure != "" {
		o.status = dps.StatusFailed
		o.errCode = dps.CodeCustomAllocation
		o.errMsg = failure
		return o
	}
	o.status = dps.StatusAssigned
	o.hub = hub
	o.deviceID = id
	if e.deviceID != "" {
		o.deviceID = e.deviceID
	}
	if rec.countedHub != "" {
		s.hubLoad[rec.countedHub]--
	}
	s.hubLoad[hub]++
	rec.countedHub = hub
	return o
}

// allocate picks the hub, or returns why custom allocation failed. s.mu held.
func (s *Server) allocate(rec *registration, e *enrollment, id string, payload json.RawMessage) (hub, failure string) {
	hubs := s.in.hubs
	if e.hub != "" {
		return e.hub, ""
	}
	if len(e.hubs) > 0 {
		hubs = e.hubs
	}
	policy := s.in.allocation
	if e.policy != "" {
		policy = e.policy
	}
	switch policy {
	case AllocationStatic:
		return hubs[0], ""
	case AllocationEvenlyWeighted:
		best, bestLoad := "", 0
		for _, h := range hubs {
			load := s.hubLoad[h]
			if h == rec.countedHub {
				load-- // re-evaluating: do not count the device against its own hub
			}
			if best == "" || load < bestLoad {
				best, bestLoad = h, load
			}
		}
		return best, ""
	case AllocationCustom:
		if len(payload) > 0 {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(payload, &fields); err == nil {
				if raw, ok := fields[s.in.hubField]; ok {
					var h string
					if err := json.Unmarshal(raw, &h); err != nil {
						return "", fmt.Sprintf("Custom allocation failed: payload field %q must be a string naming a linked IoT hub", s.in.hubField)
					}
					if !s.in.hubSet[h] {
						return "", fmt.Sprintf("Custom allocation failed: payload field %q names %q, which is not a linked IoT hub", s.in.hubField, h)
					}
					if !contains(hubs, h) {
						return "", fmt.Sprintf("Custom allocation failed: payload field %q names %q, which is not one of the enrollment's iotHubs %v", s.in.hubField, h, hubs)
					}
					return h, ""
				}
			}
		}
	}
	return hubs[hashIndex(id, len(hubs))], ""
}

func (s *Server) poll(c *call, opID string) {
	k := s.knobs.Load()
	s.mu.Lock()
	rec := s.record(c.regID)
	rec.polls++
	seq := rec.polls
	s.mu.Unlock()
	if !c.inject(k, seq, k.Faults.PollErrorRate) {
		return
	}
	now := s.now()
	s.mu.Lock()
	if limit := k.Quotas.pollsPer10s(); limit > 0 {
		cut := 0
		for cut < len(rec.pollLog) && !rec.pollLog[cut].After(now.Add(-pollWindow)) {
			cut++
		}
		rec.pollLog = rec.pollLog[cut:]
		if len(rec.pollLog) >= limit {
			wait := rec.pollLog[0].Add(pollWindow).Sub(now)
			s.mu.Unlock()
			c.fail(&apiError{status: http.StatusTooManyRequests, code: dps.CodeThrottled, retryAfter: retryAfterSeconds(wait),
				msg: fmt.Sprintf("polling rate exceeded: at most %d operation status requests per device per 10 seconds", limit)})
			return
		}
		rec.pollLog = append(rec.pollLog, now)
	}
	s.settle(rec, now)
	op := rec.findOp(opID)
	if op == nil {
		s.mu.Unlock()
		c.fail(&apiError{status: http.StatusNotFound, code: dps.CodeNotFound,
			msg: fmt.Sprintf("operation %q not found for registration %q", opID, c.regID)})
		return
	}
	op.polls++
	status := http.StatusOK
	body := dps.RegistrationOperationStatus{OperationID: op.id}
	var chain *chainAnswer
	if !op.done || op.polls <= k.Faults.StayAssigningPolls {
		status = http.StatusAccepted
		body.Status = dps.StatusAssigning
		body.RegistrationState = &dps.DeviceRegistrationResult{RegistrationID: rec.id, Status: dps.StatusAssigning}
	} else {
		var carries bool
		body.Status = op.final.Status
		body.RegistrationState = op.final
		if supportsCSR(c.apiVersion) {
			// Only the api-version that knows issuedCertificateChain
			// carries it; an older poll neither gets nor spends it.
			body.RegistrationState, carries = withChain(op, k)
		}
		if carries {
			chain = &chainAnswer{rec: rec, op: op}
		}
	}
	s.mu.Unlock()
	if chain != nil {
		c.handOverChain(k, seq, *chain, status, body, "")
	} else {
		c.maybeDropResponse(k, seq)
	}
	retry := -1
	if status == http.StatusAccepted {
		retry = k.RetryAfterSeconds
	}
	c.reply(status, body, retry, "")
	if chain != nil {
		c.chainDelivered(*chain)
	}
}

// lookup answers the registration status POST with the current state. A
// device that authenticates but never registered gets 404 + 404201: DPS has
// no registration record for it yet (the service API answers 404 for an
// unknown registration, and 404201 is the code DPS uses for "registration
// not found"). Callers use this to tell "never registered, safe to register"
// from "already assigned, do not register again" without a billable PUT.
//
// While the device's current operation runs, what the lookup shows is not
// documented; Knobs.LookupWhileAssigning picks one of the possibilities.
// Faults.LookupBare404Rate answers like a proxy instead.
func (s *Server) lookup(c *call) {
	k := s.knobs.Load()
	s.mu.Lock()
	rec := s.record(c.regID)
	rec.lookups++
	seq := rec.lookups
	s.mu.Unlock()
	if !c.inject(k, seq, k.Faults.LookupErrorRate) {
		return
	}
	if f := &k.Faults; f.LookupBare404Rate > 0 && draw(f.Seed, kindLookup, drawBare404, c.regID, seq) < f.LookupBare404Rate {
		c.bare404()
		return
	}
	now := s.now()
	s.mu.Lock()
	s.settle(rec, now)
	var res *dps.DeviceRegistrationResult
	msg := fmt.Sprintf("registration %q not found: the device has not registered yet", c.regID)
	if op := rec.current(); op != nil && !op.done {
		switch k.LookupWhileAssigning {
		case LookupNotFound:
			msg = fmt.Sprintf("registration %q not found", c.regID)
		case LookupPrevious:
			res = rec.prev
			msg = fmt.Sprintf("registration %q not found", c.regID)
		default:
			res = rec.result()
		}
	} else if rec.status != "" {
		res = rec.result()
	}
	s.mu.Unlock()
	if res == nil {
		c.fail(&apiError{status: http.StatusNotFound, code: dps.CodeNotFound, msg: msg})
		return
	}
	c.maybeDropResponse(k, seq)
	c.reply(http.StatusOK, res, -1, "")
}

// bare404 answers 404 the way a proxy or gateway in front of DPS would:
// text/plain, none of DPS's headers, no DPS error body.
func (c *call) bare404() {
	c.s.stats.faults.Add(1)
	c.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	c.w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(c.w, "Not Found\n")
	c.s.stats.byStatus[http.StatusNotFound].Add(1)
	c.log(http.StatusNotFound, 0)
}

// inject applies latency, dropped connections and 5xx errors to an
// authenticated request, the seq-th of its kind for the registration id. It
// returns false when the request was answered (or dropped) here.
func (c *call) inject(k *Knobs, seq int, errRate float64) bool {
	f := &k.Faults
	d := time.Duration(f.Latency)
	if f.LatencyJitter > 0 {
		d += time.Duration(draw(f.Seed, c.kind, drawJitter, c.regID, seq) * float64(f.LatencyJitter))
	}
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.r.Context().Done():
			t.Stop()
			return false
		}
	}
	if f.DropConnectionRate > 0 && draw(f.Seed, c.kind, drawDropRequest, c.regID, seq) < f.DropConnectionRate {
		c.drop()
	}
	if errRate > 0 && draw(f.Seed, c.kind, drawError, c.regID, seq) < errRate {
		c.countFault()
		e := &apiError{status: http.StatusInternalServerError, code: dps.CodeInternalServerError, msg: "injected fault: internal server error"}
		if draw(f.Seed, c.kind, drawErrorStatus, c.regID, seq) < 0.5 {
			e = &apiError{status: http.StatusServiceUnavailable, code: dps.CodeServiceUnavailable, msg: "injected fault: service unavailable", retryAfter: k.RetryAfterSeconds}
		}
		c.fail(e)
		return false
	}
	return true
}

// maybeDropResponse closes the connection instead of answering a request
// that has already taken effect.
func (c *call) maybeDropResponse(k *Knobs, seq int) {
	if f := &k.Faults; f.DropResponseRate > 0 && draw(f.Seed, c.kind, drawDropResponse, c.regID, seq) < f.DropResponseRate {
		c.drop()
	}
}

// drop closes the connection without an answer. It does not return: the
// http.ErrAbortHandler panic is how net/http aborts a response silently.
func (c *call) drop() {
	c.countFault()
	if c.svc {
		c.s.stats.serviceDropped.Add(1)
	} else {
		c.s.stats.dropped.Add(1)
	}
	c.log(0, 0)
	panic(http.ErrAbortHandler)
}

// countFault counts an injected failure in the device or service totals.
func (c *call) countFault() {
	if c.svc {
		c.s.stats.serviceFaults.Add(1)
	} else {
		c.s.stats.faults.Add(1)
	}
}

// reply writes a JSON answer with the headers DPS sends. retryAfter < 0
// means no Retry-After header.
func (c *call) reply(status int, v any, retryAfter int, location string) {
	b, err := json.Marshal(v)
	if err != nil {
		c.fail(&apiError{status: http.StatusInternalServerError, code: dps.CodeInternalServerError, msg: "encoding the response failed: " + err.Error()})
		return
	}
	if location != "" {
		c.w.Header().Set("Location", location)
	}
	c.write(status, b, retryAfter)
	c.log(status, 0)
}

// fail writes a DPS error body whose trackingId is the x-ms-request-id, and
// the error code in x-ms-error-code.
func (c *call) fail(e *apiError) {
	if e.status == http.StatusTooManyRequests {
		if c.svc {
			c.s.stats.serviceThrottled.Add(1)
		} else {
			c.s.stats.throttled.Add(1)
		}
	}
	b, _ := json.Marshal(dps.ErrorBody{ErrorCode: e.code, TrackingID: c.reqID, Message: e.msg, TimestampUTC: formatTime(time.Now())})
	c.w.Header().Set(dps.HeaderErrorCode, strconv.Itoa(e.code))
	retry := -1
	if e.retryAfter > 0 {
		retry = e.retryAfter
	}
	c.write(e.status, b, retry)
	c.log(e.status, e.code)
}

func (c *call) write(status int, body []byte, retryAfter int) {
	h := c.w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set(dps.HeaderRequestID, c.reqID)
	h.Set("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
	if retryAfter >= 0 {
		h.Set(dps.HeaderRetryAfter, strconv.Itoa(retryAfter))
	}
	c.w.WriteHeader(status)
	_, _ = c.w.Write(body)
	c.countStatus(status)
}

// countStatus counts an answer by HTTP status.
func (c *call) countStatus(status int) {
	byStatus := &c.s.stats.byStatus
	if c.svc {
		byStatus = &c.s.stats.serviceByStatus
	}
	if status > 0 && status < len(byStatus) {
		byStatus[status].Add(1)
	}
}

// log writes one line per device request; status 0 means dropped. It never
// logs headers, so no SAS token can leak.
func (c *call) log(status, code int) {
	l := c.s.Logger
	if l == nil {
		return
	}
	who := "device"
	if c.svc {
		who = "target"
	}
	attrs := []any{"method", c.r.Method, "path", c.r.URL.Path, who, c.regID, "status", status, "request_id", c.reqID, "duration", time.Since(c.start).Round(time.Microsecond)}
	if code != 0 {
		attrs = append(attrs, "error_code", code)
	}
	if status == 0 {
		attrs = append(attrs, "dropped", true)
	}
	msg := c.kind
	if msg == "" {
		msg = "request"
	}
	l.Info(msg, attrs...)
}

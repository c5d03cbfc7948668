package dpssim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// The DPS service API (api-version 2021-10-01, service.json of the REST
// specification): individual enrollments and enrollment groups (CRUD, bulk
// operations of at most 10, paged queries, attestation mechanism), and
// device registration states (read, delete, query by group). It is served on
// the device API's port; it needs no client certificate but a service SAS
// token or a bearer token (service_auth.go), and it has its own quota.

// kindService is the request kind of service API requests in fault draws.
const kindService = "service"

// defaultPageSize is the page size of a query without x-ms-max-item-count.
const defaultPageSize = 100

// serviceAPIVersions are the service api-versions: those of the REST
// specification and the older ones SDKs still send.
var serviceAPIVersions = map[string]bool{
	"2017-08-31-preview": true,
	"2017-11-15":         true,
	"2018-04-01":         true,
	"2018-09-01-preview": true,
	"2019-03-31":         true,
	"2021-10-01":         true,
	"2021-11-01-preview": true,
	"2025-07-01-preview": true,
	"2026-07-01-preview": true,
	"2026-11-01":         true,
}

// Query item types (the x-ms-item-type header).
const (
	itemEnrollment         = "Enrollment"
	itemEnrollmentGroup    = "EnrollmentGroup"
	itemDeviceRegistration = "DeviceRegistration"
)

// Service operations.
const (
	opGet          = "get"
	opPut          = "put"
	opDelete       = "delete"
	opAttestation  = "attestationmechanism"
	opBulk         = "bulk"
	opQuery        = "query"
	opRegGet       = "registration.get"
	opRegDelete    = "registration.delete"
	opRegQuery     = "registration.query"
	collEnrollment = "enrollments"
	collGroup      = "enrollmentGroups"
	collReg        = "registrations"
)

// isServicePath reports whether an (escaped) path belongs to the service
// API: its first segment is enrollments, enrollmentGroups or registrations.
// Device paths start with the ID scope.
func isServicePath(escaped string) bool {
	first, _, _ := strings.Cut(strings.TrimPrefix(escaped, "/"), "/")
	return strings.EqualFold(first, collEnrollment) || strings.EqualFold(first, collGroup) || strings.EqualFold(first, collReg)
}

// svcRoute is a parsed service request path.
type svcRoute struct {
	coll  string // collEnrollment, collGroup or collReg
	op    string
	id    string // enrollment, group or registration id ("" for bulk and query)
	right string
}

func (rt svcRoute) group() bool { return rt.coll == collGroup }

// target names what the request is about, for logs and fault draws.
func (rt svcRoute) target() string {
	t := rt.coll
	if rt.id != "" {
		t += "/" + strings.ToLower(rt.id)
	}
	switch rt.op {
	case opQuery, opRegQuery, opAttestation:
		t += "/" + rt.op
	}
	return t
}

// serviceRoute parses the path and checks the method. Collection names are
// case-insensitive (the Node SDK writes /enrollmentgroups/ for one call).
func serviceRoute(r *http.Request) (svcRoute, *apiError) {
	raw := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
	segs := make([]string, len(raw))
	for i, s := range raw {
		d, err := url.QueryUnescape(s)
		if err != nil {
			return svcRoute{}, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: fmt.Sprintf("path segment %q is not valid URL encoding", s)}
		}
		segs[i] = d
	}
	var rt svcRoute
	var methods map[string]string // method → operation
	switch strings.ToLower(segs[0]) {
	case "registrations":
		rt.coll = collReg
		switch {
		case len(segs) == 2:
			methods = map[string]string{http.MethodGet: opRegGet, http.MethodDelete: opRegDelete}
		case len(segs) == 3 && strings.EqualFold(segs[2], "query"):
			methods = map[string]string{http.MethodPost: opRegQuery}
		}
	default:
		rt.coll = collEnrollment
		if strings.EqualFold(segs[0], collGroup) {
			rt.coll = collGroup
		}
		switch {
		case len(segs) == 1:
			methods = map[string]string{http.MethodPost: opBulk}
		case len(segs) == 2 && strings.EqualFold(segs[1], "query") && r.Method == http.MethodPost:
			methods = map[string]string{http.MethodPost: opQuery}
		case len(segs) == 2:
			methods = map[string]string{http.MethodGet: opGet, http.MethodPut: opPut, http.MethodDelete: opDelete}
		case len(segs) == 3 && strings.EqualFold(segs[2], "attestationmechanism"):
			methods = map[string]string{http.MethodPost: opAttestation}
		}
	}
	if methods == nil {
		return rt, &apiError{status: http.StatusNotFound, code: codeRouteNotFound,
			msg: fmt.Sprintf("%s is not a DPS service operation: use /enrollments[/{id}[/attestationmechanism]|/query], /enrollmentGroups[/{id}[/attestationmechanism]|/query] or /registrations/{id}[/query]", r.URL.Path)}
	}
	rt.op = methods[r.Method]
	if rt.op == "" {
		allowed := make([]string, 0, len(methods))
		for m := range methods {
			allowed = append(allowed, m)
		}
		sort.Strings(allowed)
		return rt, &apiError{status: http.StatusMethodNotAllowed, code: dps.CodeMethodNotAllowed,
			msg: fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allowed, " or "))}
	}
	if rt.op != opBulk && rt.op != opQuery {
		rt.id = segs[1]
	}
	switch rt.op {
	case opGet, opQuery, opAttestation:
		rt.right = RightEnrollmentRead
	case opPut, opDelete, opBulk:
		rt.right = RightEnrollmentWrite
	case opRegGet, opRegQuery:
		rt.right = RightRegistrationStatusRead
	case opRegDelete:
		rt.right = RightRegistrationStatusWrite
	}
	if rt.id != "" {
		if err := checkRegistrationID(rt.id); err != nil {
			return rt, &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: "id in the path " + err.Error()}
		}
	}
	return rt, nil
}

// svcAnswer is a service operation's successful answer.
type svcAnswer struct {
	status  int
	body    any // nil: no body (204)
	headers map[string]string
}

func ok(v any) svcAnswer { return svcAnswer{status: http.StatusOK, body: v} }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: dps.CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

// serveService serves one service API request: route, api-version,
// credentials and rights, faults, the service operations quota, then the
// operation. Faults and the quota apply to authenticated requests only.
func (s *Server) serveService(w http.ResponseWriter, r *http.Request) {
	s.stats.serviceRequests.Add(1)
	c := &call{s: s, w: w, r: r, reqID: newUUID(), start: time.Now(), kind: kindService, svc: true}
	rt, aerr := serviceRoute(r)
	c.regID = rt.target()
	if aerr != nil {
		c.fail(aerr)
		return
	}
	c.apiVersion = r.URL.Query().Get("api-version")
	switch {
	case c.apiVersion == "":
		c.fail(badRequest("the api-version query parameter is required (e.g. api-version=2021-10-01)"))
		return
	case !serviceAPIVersions[c.apiVersion]:
		c.fail(badRequest("api-version %q is not supported by the service API (use 2021-10-01)", c.apiVersion))
		return
	}
	now := s.now()
	p, aerr := s.authService(r, now)
	if aerr != nil {
		c.fail(aerr)
		return
	}
	if !p.rights[rt.right] {
		c.fail(unauthorized("%s does not grant %s, which %s %s needs", p.name, rt.right, r.Method, r.URL.Path))
		return
	}
	k := s.knobs.Load()
	seq := s.nextServiceSeq(rt.op + " " + c.regID)
	if !c.inject(k, seq, k.Faults.ServiceErrorRate) {
		return
	}
	if res := s.svcLim.Load().ReserveN(now, 1); !res.OK() || res.DelayFrom(now) > 0 {
		wait := res.DelayFrom(now)
		res.CancelAt(now)
		c.fail(&apiError{status: http.StatusTooManyRequests, code: dps.CodeThrottled, retryAfter: retryAfterSeconds(wait),
			msg: fmt.Sprintf("service operations rate exceeded: at most %d service operations per minute (a bulk call is one)", k.Quotas.serviceOperationsPerMinute())})
		return
	}
	body, aerr := readServiceBody(r)
	if aerr != nil {
		c.fail(aerr)
		return
	}
	var ans svcAnswer
	switch rt.op {
	case opGet:
		ans, aerr = s.svcGet(rt)
	case opPut:
		ans, aerr = s.svcPut(rt, body, r.Header.Get("If-Match"))
	case opDelete:
		aerr = s.deleteEnrollment(rt.group(), rt.id, r.Header.Get("If-Match"))
		ans = svcAnswer{status: http.StatusNoContent}
	case opAttestation:
		ans, aerr = s.svcAttestation(rt)
	case opBulk:
		ans, aerr = s.svcBulk(rt, body)
	case opQuery:
		ans, aerr = s.svcQuery(r, rt, body)
	case opRegGet:
		if st := s.registrationState(rt.id); st != nil {
			ans = ok(st)
		} else {
			aerr = &apiError{status: http.StatusNotFound, code: dps.CodeNotFound, msg: fmt.Sprintf("registration %q not found: the device has not registered (or its registration state was deleted)", rt.id)}
		}
	case opRegDelete:
		aerr = s.deleteRegistration(rt.id, r.Header.Get("If-Match"))
		ans = svcAnswer{status: http.StatusNoContent}
	case opRegQuery:
		ans, aerr = s.svcRegistrationQuery(r, rt, body)
	}
	if aerr != nil {
		c.fail(aerr)
		return
	}
	c.maybeDropResponse(k, seq)
	for h, v := range ans.headers {
		c.w.Header().Set(h, v)
	}
	if ans.body == nil {
		h := c.w.Header()
		h.Set(dps.HeaderRequestID, c.reqID)
		h.Set("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
		c.w.WriteHeader(ans.status)
		c.countStatus(ans.status)
		c.log(ans.status, 0)
		return
	}
	c.reply(ans.status, ans.body, -1, "")
}

// nextServiceSeq numbers service requests per operation and target, for
// reproducible fault draws.
func (s *Server) nextServiceSeq(key string) int {
	s.svcSeqMu.Lock()
	defer s.svcSeqMu.Unlock()
	s.svcSeq[key]++
	return s.svcSeq[key]
}

// readServiceBody reads a request body of at most 96 KB; a non-empty one
// must be JSON.
func readServiceBody(r *http.Request) ([]byte, *apiError) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, badRequest("reading the request body: %v", err)
	}
	if len(b) > maxBody {
		return nil, badRequest("the request body is larger than the 96 KB DPS accepts")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, nil
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, &apiError{status: http.StatusUnsupportedMediaType, code: dps.CodeUnsupportedMediaType,
			msg: fmt.Sprintf("Content-Type %q is not supported: send application/json", r.Header.Get("Content-Type"))}
	}
	return b, nil
}

// answerDoc is an enrollment as the service API answers it: its document
// and, for an individual enrollment whose device registered, its
// registration state.
func (s *Server) answerDoc(e *enrollment) *enrollmentDoc {
	d := *e.doc
	if !e.group {
		d.RegistrationState = s.registrationState(e.id)
	}
	return &d
}

func (s *Server) lookupEnrollment(rt svcRoute) (*enrollment, *apiError) {
	var e *enrollment
	if rt.group() {
		e = s.in.group(rt.id)
	} else {
		e = s.in.individual(rt.id)
	}
	if e == nil {
		return nil, notFoundError(rt.group(), rt.id)
	}
	return e, nil
}

func (s *Server) svcGet(rt svcRoute) (svcAnswer, *apiError) {
	e, aerr := s.lookupEnrollment(rt)
	if aerr != nil {
		return svcAnswer{}, aerr
	}
	return ok(s.answerDoc(e)), nil
}

func (s *Server) svcAttestation(rt svcRoute) (svcAnswer, *apiError) {
	e, aerr := s.lookupEnrollment(rt)
	if aerr != nil {
		return svcAnswer{}, aerr
	}
	return ok(e.doc.Attestation), nil
}

func decodeDoc(b []byte) (*enrollmentDoc, error) {
	var d enrollmentDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("malformed JSON: %v", err)
	}
	return &d, nil
}

func (s *Server) svcPut(rt svcRoute, body []byte, ifMatch string) (svcAnswer, *apiError) {
	if body == nil {
		return svcAnswer{}, badRequest("the request body is required: the enrollment")
	}
	d, err := decodeDoc(body)
	if err != nil {
		return svcAnswer{}, badRequest("%v", err)
	}
	e, err := s.in.compileDoc(rt.group(), rt.id, d)
	if err != nil {
		return svcAnswer{}, badRequest("invalid enrollment: %v", err)
	}
	if _, aerr := s.storeEnrollment(e, putIfMatch, ifMatch); aerr != nil {
		return svcAnswer{}, aerr
	}
	return ok(s.answerDoc(e)), nil
}

// svcBulk runs a bulk operation: items one by one, each with its own
// outcome; the answer is 200 with the per-item errors.
func (s *Server) svcBulk(rt svcRoute, body []byte) (svcAnswer, *apiError) {
	group := rt.group()
	itemsName := "enrollments"
	if group {
		itemsName = "enrollmentGroups"
	}
	if body == nil {
		return svcAnswer{}, badRequest("the request body is required: {\"mode\": ..., %q: [...]}", itemsName)
	}
	var op bulkOperationDoc
	if err := json.Unmarshal(body, &op); err != nil {
		return svcAnswer{}, badRequest("malformed JSON: %v", err)
	}
	items := op.Enrollments
	if group {
		items = op.EnrollmentGroups
	}
	var mode putMode
	switch op.Mode {
	case bulkCreate:
		mode = putCreate
	case bulkUpdate:
		mode = putUpdate
	case bulkUpdateIfMatchETag:
		mode = putUpdateIfMatch
	case bulkDelete:
	case "":
		return svcAnswer{}, badRequest("mode is required: create, update, updateIfMatchETag or delete")
	default:
		return svcAnswer{}, badRequest("mode %q: want create, update, updateIfMatchETag or delete", op.Mode)
	}
	switch {
	case len(items) == 0:
		return svcAnswer{}, badRequest("%s is empty or missing: a bulk operation takes 1 to %d items", itemsName, maxBulkItems)
	case len(items) > maxBulkItems:
		return svcAnswer{}, badRequest("%d %s in one bulk operation: at most %d are allowed", len(items), itemsName, maxBulkItems)
	}
	res := bulkResultDoc{IsSuccessful: true, Errors: []bulkErrorDoc{}}
	for i, raw := range items {
		id, aerr := s.bulkItem(group, op.Mode, mode, i, raw)
		if aerr == nil {
			continue
		}
		res.IsSuccessful = false
		be := bulkErrorDoc{ErrorCode: aerr.code, ErrorStatus: aerr.msg}
		if group {
			be.EnrollmentGroupID = id
		} else {
			be.RegistrationID = id
		}
		res.Errors = append(res.Errors, be)
	}
	return ok(res), nil
}

// bulkItem applies one item of a bulk operation and returns its id.
func (s *Server) bulkItem(group bool, modeName string, mode putMode, i int, raw json.RawMessage) (string, *apiError) {
	d, err := decodeDoc(raw)
	if err != nil {
		return "", badRequest("item %d: %v", i, err)
	}
	id := d.RegistrationID
	if group {
		id = d.EnrollmentGroupID
	}
	if modeName == bulkDelete {
		if err := checkRegistrationID(id); err != nil {
			return id, badRequest("item %d: id %v", i, err)
		}
		return id, s.deleteEnrollment(group, id, "")
	}
	e, err := s.in.compileDoc(group, "", d)
	if err != nil {
		return id, badRequest("invalid enrollment: %v", err)
	}
	_, aerr := s.storeEnrollment(e, mode, d.ETag)
	return e.id, aerr
}

// queryRE matches the queries the simulator answers: every record.
var queryRE = regexp.MustCompile(`(?i)^\s*(\*|select\s+\*\s+from\s+\w+)\s*$`)

// readQuery checks a QuerySpecification body; required says the operation
// needs one (the registration state query takes none).
func readQuery(body []byte, required bool) *apiError {
	if body == nil {
		if required {
			return badRequest(`the request body is required: {"query": "*"}`)
		}
		return nil
	}
	var q struct {
		Query *string `json:"query"`
	}
	if err := json.Unmarshal(body, &q); err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	if q.Query == nil {
		if required {
			return badRequest(`query is required: {"query": "*"}`)
		}
		return nil
	}
	if !queryRE.MatchString(*q.Query) {
		return badRequest("query %q: this simulator answers only \"*\" or \"SELECT * FROM ...\" (every record)", *q.Query)
	}
	return nil
}

// page reads x-ms-max-item-count and x-ms-continuation: the page size and
// the key after which the page starts.
func page(r *http.Request) (size int, after string, aerr *apiError) {
	size = defaultPageSize
	if v := r.Header.Get("x-ms-max-item-count"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return 0, "", badRequest("x-ms-max-item-count %q: want a positive number of items", v)
		}
		size = n
	}
	if v := r.Header.Get("x-ms-continuation"); v != "" {
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || !bytes.HasPrefix(b, []byte("after:")) {
			return 0, "", badRequest("x-ms-continuation %q is not a continuation token of this simulator", v)
		}
		after = string(b[len("after:"):])
	}
	return size, after, nil
}

// paginate returns the page of sorted keys after `after`, and the
// continuation token for the rest ("" when there is none).
func paginate(keys []string, size int, after string) ([]string, string) {
	sort.Strings(keys)
	start := sort.SearchStrings(keys, after)
	if start < len(keys) && keys[start] == after {
		start++
	}
	end := min(start+size, len(keys))
	pg := keys[start:end]
	if end < len(keys) && len(pg) > 0 {
		return pg, base64.RawURLEncoding.EncodeToString([]byte("after:" + pg[len(pg)-1]))
	}
	return pg, ""
}

func pageHeaders(itemType string, size int, next string) map[string]string {
	h := map[string]string{"x-ms-item-type": itemType, "x-ms-max-item-count": strconv.Itoa(size)}
	if next != "" {
		h["x-ms-continuation"] = next
	}
	return h
}

func (s *Server) svcQuery(r *http.Request, rt svcRoute, body []byte) (svcAnswer, *apiError) {
	if aerr := readQuery(body, true); aerr != nil {
		return svcAnswer{}, aerr
	}
	size, after, aerr := page(r)
	if aerr != nil {
		return svcAnswer{}, aerr
	}
	in := s.in
	in.mu.RLock()
	m := in.individuals
	if rt.group() {
		m = in.groups
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	pg, next := paginate(keys, size, after)
	list := make([]*enrollment, 0, len(pg))
	for _, k := range pg {
		list = append(list, m[k])
	}
	in.mu.RUnlock()
	docs := make([]*enrollmentDoc, 0, len(list))
	for _, e := range list {
		docs = append(docs, s.answerDoc(e))
	}
	itemType := itemEnrollment
	if rt.group() {
		itemType = itemEnrollmentGroup
	}
	return svcAnswer{status: http.StatusOK, body: docs, headers: pageHeaders(itemType, size, next)}, nil
}

// svcRegistrationQuery lists the registration states of an enrollment
// group's devices.
func (s *Server) svcRegistrationQuery(r *http.Request, rt svcRoute, body []byte) (svcAnswer, *apiError) {
	if aerr := readQuery(body, false); aerr != nil {
		return svcAnswer{}, aerr
	}
	size, after, aerr := page(r)
	if aerr != nil {
		return svcAnswer{}, aerr
	}
	want := "group:" + strings.ToLower(rt.id)
	now := s.now()
	s.mu.Lock()
	byKey := map[string]*registration{}
	keys := []string{}
	for k, rec := range s.regs {
		s.settle(rec, now)
		if rec.status != "" && strings.ToLower(rec.enrollment) == want {
			byKey[k] = rec
			keys = append(keys, k)
		}
	}
	pg, next := paginate(keys, size, after)
	docs := make([]*registrationStateDoc, 0, len(pg))
	for _, k := range pg {
		docs = append(docs, stateDoc(byKey[k].result()))
	}
	s.mu.Unlock()
	if len(keys) == 0 && s.in.group(rt.id) == nil {
		return svcAnswer{}, notFoundError(true, rt.id)
	}
	return svcAnswer{status: http.StatusOK, body: docs, headers: pageHeaders(itemDeviceRegistration, size, next)}, nil
}

// registrationState is a device's registration state as the service API
// shows it, or nil when it has none.
func (s *Server) registrationState(id string) *registrationStateDoc {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.regs[strings.ToLower(id)]
	if rec == nil {
		return nil
	}
	s.settle(rec, now)
	if rec.status == "" {
		return nil
	}
	return stateDoc(rec.result())
}

// deleteRegistration deletes a device's registration state: the device
// registers as new afterwards (substatus initialAssignment). Its request
// counts are kept, so the oracle still sees earlier registrations.
func (s *Server) deleteRegistration(id, ifMatch string) *apiError {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.regs[strings.ToLower(id)]
	if rec != nil {
		s.settle(rec, now)
	}
	if rec == nil || rec.status == "" {
		return &apiError{status: http.StatusNotFound, code: dps.CodeNotFound, msg: fmt.Sprintf("registration %q not found", id)}
	}
	if ifMatch != "" && !etagMatch(ifMatch, rec.etag) {
		return &apiError{status: http.StatusPreconditionFailed, code: codeEnrollmentETagMismatch,
			msg: fmt.Sprintf("precondition failed for registration %q: If-Match %q is not the current etag %q", id, ifMatch, rec.etag)}
	}
	if rec.countedHub != "" {
		s.hubLoad[rec.countedHub]--
	}
	rec.status, rec.substatus, rec.hub, rec.lastHub, rec.deviceID = "", "", "", "", ""
	rec.errCode, rec.errMsg, rec.payload, rec.x509, rec.symKey = 0, "", nil, nil, nil
	rec.created, rec.updated, rec.etag, rec.countedHub, rec.enrollment = time.Time{}, time.Time{}, "", "", ""
	rec.prev, rec.ops, rec.fromConfig = nil, nil, false
	rec.deletes++
	s.stats.registrationDeletes.Add(1)
	return nil
}

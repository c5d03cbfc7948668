package dpssim

import (
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/dps-batch/dps-batch/dps"
)

// The enrollments: those of the configuration file, then whatever the
// service API creates, updates and deletes. The device API reads them on
// every request (individual, groupLists); the service API changes them
// (storeEnrollment, deleteEnrollment). A change takes effect for every
// request that authenticates after it.

// Error codes of the service API the dps package does not name. DPS
// documents none of them; they follow its six-digit rule (the first three
// digits are the HTTP status) and its 404201 (enrollment) / 404204
// (enrollment group) pair.
const (
	codeEnrollmentExists       = 409201
	codeGroupExists            = 409204
	codeEnrollmentETagMismatch = 412201
	codeGroupETagMismatch      = 412204
)

// individual returns the individual enrollment for a registration id, or nil.
func (in *instance) individual(id string) *enrollment {
	in.mu.RLock()
	e := in.individuals[strings.ToLower(id)]
	in.mu.RUnlock()
	return e
}

// group returns the enrollment group with this id, or nil.
func (in *instance) group(id string) *enrollment {
	in.mu.RLock()
	e := in.groups[strings.ToLower(id)]
	in.mu.RUnlock()
	return e
}

// groupLists returns the X.509 and symmetric key groups in the order they
// are tried. The slices are never changed in place.
func (in *instance) groupLists() (x509Groups, symKeyGroups []*enrollment) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return in.x509Groups, in.symKeyGroups
}

// enrollmentCounts is the oracle of one enrollment id: how many creates,
// updates and deletes took effect, whatever the client saw.
type enrollmentCounts struct {
	id                        string // as last written
	group, fromConfig         bool
	creates, updates, deletes int
}

func kindKey(group bool, id string) string {
	if group {
		return "group:" + strings.ToLower(id)
	}
	return "individual:" + strings.ToLower(id)
}

// count returns the counters of e's id, creating them. in.mu held for
// writing (or the instance not yet published).
func (in *instance) count(e *enrollment) *enrollmentCounts {
	key := kindKey(e.group, e.id)
	c := in.counts[key]
	if c == nil {
		c = &enrollmentCounts{id: e.id, group: e.group}
		in.counts[key] = c
	}
	return c
}

// putMode says when a create or update may take effect.
type putMode int

const (
	// putIfMatch is PUT /enrollments/{id}: without If-Match only a create,
	// with If-Match "*" anything, with an etag an update of that version.
	putIfMatch putMode = iota
	// putCreate is bulk "create": only a create.
	putCreate
	// putUpdate is bulk "update": create or replace, whatever the etag.
	putUpdate
	// putUpdateIfMatch is bulk "updateIfMatchETag": replace the version
	// the item's etag names.
	putUpdateIfMatch
)

func notFoundError(group bool, id string) *apiError {
	if group {
		return &apiError{status: http.StatusNotFound, code: dps.CodeEnrollmentNotFound, msg: fmt.Sprintf("enrollment group %q not found", id)}
	}
	return &apiError{status: http.StatusNotFound, code: dps.CodeNotFound, msg: fmt.Sprintf("individual enrollment %q not found", id)}
}

func existsError(group bool, id string) *apiError {
	if group {
		return &apiError{status: http.StatusConflict, code: codeGroupExists,
			msg: fmt.Sprintf("enrollment group %q already exists; to replace it send If-Match with its etag (or *)", id)}
	}
	return &apiError{status: http.StatusConflict, code: codeEnrollmentExists,
		msg: fmt.Sprintf("individual enrollment %q already exists; to replace it send If-Match with its etag (or *)", id)}
}

func etagError(group bool, id, why string) *apiError {
	code, what := codeEnrollmentETagMismatch, "individual enrollment"
	if group {
		code, what = codeGroupETagMismatch, "enrollment group"
	}
	return &apiError{status: http.StatusPreconditionFailed, code: code, msg: fmt.Sprintf("precondition failed for %s %q: %s", what, id, why)}
}

// etagMatch compares an If-Match value with an etag: "*" matches any;
// quotes and a weak W/ prefix are ignored.
func etagMatch(ifMatch, etag string) bool {
	norm := func(s string) string {
		s = strings.TrimSpace(s)
		s = strings.TrimPrefix(s, "W/")
		if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
			s = s[1 : len(s)-1]
		}
		return s
	}
	if strings.TrimSpace(ifMatch) == "*" {
		return true
	}
	return norm(ifMatch) == norm(etag)
}

// storeEnrollment makes a compiled enrollment current if mode and ifMatch
// allow it, with a new etag and times. It reports whether it was a create.
func (s *Server) storeEnrollment(e *enrollment, mode putMode, ifMatch string) (bool, *apiError) {
	in := s.in
	now := s.now()
	in.mu.Lock()
	defer in.mu.Unlock()
	m := in.individuals
	if e.group {
		m = in.groups
	}
	key := strings.ToLower(e.id)
	cur := m[key]
	switch mode {
	case putIfMatch:
		switch {
		case ifMatch == "" && cur != nil:
			return false, existsError(e.group, e.id)
		case ifMatch == "" || strings.TrimSpace(ifMatch) == "*":
		case cur == nil:
			return false, etagError(e.group, e.id, fmt.Sprintf("If-Match %q names a version, but there is none", ifMatch))
		case !etagMatch(ifMatch, cur.doc.ETag):
			return false, etagError(e.group, e.id, fmt.Sprintf("If-Match %q is not the current etag %q", ifMatch, cur.doc.ETag))
		}
	case putCreate:
		if cur != nil {
			return false, existsError(e.group, e.id)
		}
	case putUpdateIfMatch:
		switch {
		case cur == nil:
			return false, notFoundError(e.group, e.id)
		case ifMatch == "":
			return false, etagError(e.group, e.id, "mode updateIfMatchETag needs the item's etag")
		case !etagMatch(ifMatch, cur.doc.ETag):
			return false, etagError(e.group, e.id, fmt.Sprintf("etag %q is not the current etag %q", ifMatch, cur.doc.ETag))
		}
	}
	e.doc.ETag = newETag()
	e.doc.CreatedDateTimeUTC = formatTime(now)
	if cur != nil {
		e.doc.CreatedDateTimeUTC = cur.doc.CreatedDateTimeUTC
	}
	e.doc.LastUpdatedDateTimeUTC = formatTime(now)
	m[key] = e
	if e.group {
		in.x509Groups, in.symKeyGroups = withGroup(in.x509Groups, cur, e, e.isX509()), withGroup(in.symKeyGroups, cur, e, !e.isX509())
	}
	c := in.count(e)
	c.id = e.id
	created := cur == nil
	switch {
	case created && e.group:
		c.creates++
		s.stats.groupCreates.Add(1)
	case created:
		c.creates++
		s.stats.enrollmentCreates.Add(1)
	case e.group:
		c.updates++
		s.stats.groupUpdates.Add(1)
	default:
		c.updates++
		s.stats.enrollmentUpdates.Add(1)
	}
	in.gen.Add(1)
	return created, nil
}

// withGroup returns a copy of list with old replaced by e (in place, when
// old is in list and keep), old removed, or e appended.
func withGroup(list []*enrollment, old, e *enrollment, keep bool) []*enrollment {
	out := make([]*enrollment, 0, len(list)+1)
	placed := false
	for _, g := range list {
		if old != nil && g == old {
			if keep {
				out = append(out, e)
				placed = true
			}
			continue
		}
		out = append(out, g)
	}
	if keep && !placed {
		out = append(out, e)
	}
	return out
}

// deleteEnrollment removes an enrollment if ifMatch allows it ("" or "*"
// always does).
func (s *Server) deleteEnrollment(group bool, id, ifMatch string) *apiError {
	in := s.in
	in.mu.Lock()
	defer in.mu.Unlock()
	m := in.individuals
	if group {
		m = in.groups
	}
	key := strings.ToLower(id)
	cur := m[key]
	if cur == nil {
		return notFoundError(group, id)
	}
	if ifMatch != "" && !etagMatch(ifMatch, cur.doc.ETag) {
		return etagError(group, cur.id, fmt.Sprintf("If-Match %q is not the current etag %q", ifMatch, cur.doc.ETag))
	}
	delete(m, key)
	if group {
		in.x509Groups, in.symKeyGroups = withGroup(in.x509Groups, cur, nil, false), withGroup(in.symKeyGroups, cur, nil, false)
		s.stats.groupDeletes.Add(1)
	} else {
		s.stats.enrollmentDeletes.Add(1)
	}
	in.count(cur).deletes++
	in.gen.Add(1)
	return nil
}

// EnrollmentInfo is what the simulator knows about one enrollment id (an
// individual enrollment's registration id or an enrollment group id): whether
// it exists now and how many creates, updates and deletes of it took effect
// through the service API, whatever the client saw (a create whose answer
// was lost counts). Ids are case-insensitive; the listing keeps the last
// spelling written.
type EnrollmentInfo struct {
	// RegistrationID is set for individual enrollments, EnrollmentGroupID
	// for groups.
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	// Exists says the enrollment exists now.
	Exists bool `json:"exists"`
	// FromConfig says it was in the configuration file at start.
	FromConfig bool `json:"fromConfig,omitempty"`
	// Attestation is "x509" or "symmetricKey" while it exists.
	Attestation string `json:"attestation,omitempty"`
	// ProvisioningStatus is "enabled" or "disabled" while it exists.
	ProvisioningStatus string `json:"provisioningStatus,omitempty"`
	// ETag is the current etag while it exists.
	ETag string `json:"etag,omitempty"`
	// CredentialPolicyName is the credential policy it names while it
	// exists; "" for none.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
	// Creates counts creates that took effect (PUT without an existing
	// enrollment, bulk create, bulk update of a missing one); Updates
	// replacements; Deletes deletions.
	Creates int `json:"creates"`
	Updates int `json:"updates"`
	Deletes int `json:"deletes"`
}

// Enrollments lists every individual enrollment id the simulator has known
// (from the configuration, or created through the service API, deleted
// ones included), sorted by id.
func (s *Server) Enrollments() []EnrollmentInfo { return s.enrollmentInfos(false) }

// EnrollmentGroups is Enrollments for enrollment groups.
func (s *Server) EnrollmentGroups() []EnrollmentInfo { return s.enrollmentInfos(true) }

// Enrollment returns one individual enrollment id's info.
func (s *Server) Enrollment(registrationID string) (EnrollmentInfo, bool) {
	s.init()
	in := s.in
	in.mu.RLock()
	defer in.mu.RUnlock()
	c := in.counts[kindKey(false, registrationID)]
	if c == nil {
		return EnrollmentInfo{}, false
	}
	return in.info(c), true
}

// EnrollmentGroup returns one enrollment group id's info.
func (s *Server) EnrollmentGroup(groupID string) (EnrollmentInfo, bool) {
	s.init()
	in := s.in
	in.mu.RLock()
	defer in.mu.RUnlock()
	c := in.counts[kindKey(true, groupID)]
	if c == nil {
		return EnrollmentInfo{}, false
	}
	return in.info(c), true
}

func (s *Server) enrollmentInfos(group bool) []EnrollmentInfo {
	s.init()
	in := s.in
	in.mu.RLock()
	out := make([]EnrollmentInfo, 0, len(in.counts))
	for _, c := range in.counts {
		if c.group == group {
			out = append(out, in.info(c))
		}
	}
	in.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		return strings.ToLower(out[i].RegistrationID+out[i].EnrollmentGroupID) < strings.ToLower(out[j].RegistrationID+out[j].EnrollmentGroupID)
	})
	return out
}

// info reads one id's counters and current state. in.mu held.
func (in *instance) info(c *enrollmentCounts) EnrollmentInfo {
	ei := EnrollmentInfo{FromConfig: c.fromConfig, Creates: c.creates, Updates: c.updates, Deletes: c.deletes}
	m := in.individuals
	if c.group {
		m = in.groups
		ei.EnrollmentGroupID = c.id
	} else {
		ei.RegistrationID = c.id
	}
	if e := m[strings.ToLower(c.id)]; e != nil {
		ei.Exists = true
		ei.Attestation = e.doc.Attestation.Type
		ei.ProvisioningStatus = e.doc.ProvisioningStatus
		ei.ETag = e.doc.ETag
		ei.CredentialPolicyName = e.doc.CredentialPolicyName
	}
	return ei
}

// enrollmentCount returns how many individual enrollments and groups exist.
func (in *instance) enrollmentCount() (individuals, groups int) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return len(in.individuals), len(in.groups)
}

package dpssim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// TestServiceEnrollmentCRUD walks an individual enrollment through create,
// read, conditional update and delete, checking the answers' shapes, status
// codes and headers against the REST specification.
func TestServiceEnrollmentCRUD(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)

	// Create without keys: DPS generates both.
	r := c.do("PUT", "/enrollments/Sym-1", symEnrollment("Sym-1", ""), nil)
	if r.status != http.StatusOK {
		t.Fatalf("create = %s, want 200", r)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") || r.header.Get("x-ms-request-id") == "" {
		t.Errorf("headers %v: want application/json and x-ms-request-id", r.header)
	}
	d := r.doc(t)
	if d.RegistrationID != "Sym-1" || d.ETag == "" || d.CreatedDateTimeUTC == "" || d.LastUpdatedDateTimeUTC == "" ||
		d.ProvisioningStatus != "enabled" || d.AllocationPolicy != "hashed" || d.ReprovisionPolicy == nil || string(d.Capabilities) != `{"iotEdge":false}` {
		t.Errorf("created enrollment %s", r.body)
	}
	sk := d.Attestation.SymmetricKey
	if d.Attestation.Type != "symmetricKey" || sk == nil || len(sk.PrimaryKey) != 88 || len(sk.SecondaryKey) != 88 || sk.PrimaryKey == sk.SecondaryKey {
		t.Errorf("attestation %s: want two generated 64-byte keys", r.body)
	}
	if d.RegistrationState != nil {
		t.Errorf("registrationState of a device that never registered: %s", r.body)
	}

	// Read it back (ids are case-insensitive).
	g := c.do("GET", "/enrollments/sym-1", nil, nil)
	if g.status != 200 || g.doc(t).ETag != d.ETag || g.doc(t).Attestation.SymmetricKey.PrimaryKey != sk.PrimaryKey {
		t.Errorf("get = %s, want the created enrollment", g)
	}
	am := c.do("POST", "/enrollments/sym-1/attestationmechanism", nil, nil)
	if am.status != 200 || !strings.Contains(string(am.body), `"type":"symmetricKey"`) || !strings.Contains(string(am.body), sk.PrimaryKey) {
		t.Errorf("attestation mechanism = %s", am)
	}

	// Creating it again without If-Match conflicts.
	wantError(t, c.do("PUT", "/enrollments/Sym-1", symEnrollment("Sym-1", ""), nil), 409, codeEnrollmentExists)
	// A stale etag is refused, the current one updates.
	upd := symEnrollment("Sym-1", b64(keyA))
	upd["provisioningStatus"] = "disabled"
	wantError(t, c.do("PUT", "/enrollments/Sym-1", upd, map[string]string{"If-Match": `"not-the-etag"`}), 412, codeEnrollmentETagMismatch)
	time.Sleep(2 * time.Millisecond)
	u := c.do("PUT", "/enrollments/Sym-1", upd, map[string]string{"If-Match": d.ETag})
	if u.status != 200 {
		t.Fatalf("update with the current etag = %s", u)
	}
	ud := u.doc(t)
	if ud.ETag == d.ETag || ud.CreatedDateTimeUTC != d.CreatedDateTimeUTC || ud.LastUpdatedDateTimeUTC == d.LastUpdatedDateTimeUTC ||
		ud.ProvisioningStatus != "disabled" || ud.Attestation.SymmetricKey.PrimaryKey != b64(keyA) {
		t.Errorf("updated enrollment %s: want a new etag and update time, the same creation time, the new status and key", u.body)
	}
	// The etag may be quoted; * matches any.
	if r := c.do("PUT", "/enrollments/Sym-1", upd, map[string]string{"If-Match": `"` + ud.ETag + `"`}); r.status != 200 {
		t.Errorf("update with a quoted etag = %s", r)
	}
	if r := c.do("PUT", "/enrollments/Sym-1", upd, map[string]string{"If-Match": "*"}); r.status != 200 {
		t.Errorf("update with If-Match * = %s", r)
	}
	// A body id that differs from the path is refused.
	wantError(t, c.do("PUT", "/enrollments/other", upd, map[string]string{"If-Match": "*"}), 400, dps.CodeBadRequest)

	// Delete: a stale etag is refused; then 204 without a body; then 404.
	wantError(t, c.do("DELETE", "/enrollments/Sym-1", nil, map[string]string{"If-Match": d.ETag}), 412, codeEnrollmentETagMismatch)
	del := c.do("DELETE", "/enrollments/Sym-1", nil, nil)
	if del.status != http.StatusNoContent || len(del.body) != 0 || del.header.Get("x-ms-request-id") == "" {
		t.Errorf("delete = %s, want 204 without a body", del)
	}
	wantError(t, c.do("GET", "/enrollments/Sym-1", nil, nil), 404, dps.CodeNotFound)
	wantError(t, c.do("DELETE", "/enrollments/Sym-1", nil, nil), 404, dps.CodeNotFound)
	wantError(t, c.do("POST", "/enrollments/Sym-1/attestationmechanism", nil, nil), 404, dps.CodeNotFound)
	// A create with an etag for something that does not exist is refused.
	wantError(t, c.do("PUT", "/enrollments/Sym-1", upd, map[string]string{"If-Match": d.ETag}), 412, codeEnrollmentETagMismatch)

	ei, ok := sim.Enrollment("SYM-1")
	if !ok || ei.Creates != 1 || ei.Updates != 3 || ei.Deletes != 1 || ei.Exists {
		t.Errorf("oracle = %+v, want 1 create, 3 updates, 1 delete, gone", ei)
	}
	st := sim.Stats()
	if st.EnrollmentCreates != 1 || st.EnrollmentUpdates != 3 || st.EnrollmentDeletes != 1 || st.IndividualEnrollments != 0 || st.ServiceRequests == 0 {
		t.Errorf("stats = %+v", st)
	}
	if st.Requests != 0 {
		t.Errorf("device requests = %d, want 0: service requests are counted apart", st.Requests)
	}
}

// TestServiceEnrollmentGroupCRUD: the same under /enrollmentGroups, with
// the group's own not-found code.
func TestServiceEnrollmentGroupCRUD(t *testing.T) {
	p := pki()
	cfg := svcConfig()
	cfg.Certificates = []CACertificate{{Name: "inter", PEM: caPEM(p.inter), Verified: true}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)

	grp := map[string]any{"enrollmentGroupId": "line-1", "attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"caReferences": map[string]any{"primary": "inter"}}}, "iotHubs": []string{"hub-2.azure-devices.net"}}
	r := c.do("PUT", "/enrollmentGroups/line-1", grp, nil)
	if r.status != 200 {
		t.Fatalf("create group = %s", r)
	}
	d := r.doc(t)
	if d.EnrollmentGroupID != "line-1" || d.RegistrationID != "" || d.Attestation.X509 == nil || d.Attestation.X509.CAReferences == nil ||
		d.Attestation.X509.CAReferences.Primary != "inter" || len(d.IoTHubs) != 1 || d.ETag == "" {
		t.Errorf("group = %s", r.body)
	}
	// Signing certificate groups answer with the certificate's info only.
	sg := map[string]any{"enrollmentGroupId": "line-2", "attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": caPEM(p.otherInter)}}}}}
	r = c.do("PUT", "/enrollmentGroups/line-2", sg, nil)
	if r.status != 200 || strings.Contains(string(r.body), "BEGIN CERTIFICATE") || !strings.Contains(string(r.body), `"sha256Thumbprint"`) {
		t.Errorf("signing certificate group = %s: want the certificate info, not the certificate", r)
	}
	// The Node SDK spells the collection in lower case for one call.
	if r := c.do("POST", "/enrollmentgroups/line-1/attestationmechanism", nil, nil); r.status != 200 || !strings.Contains(string(r.body), `"caReferences"`) {
		t.Errorf("attestation mechanism = %s", r)
	}
	wantError(t, c.do("PUT", "/enrollmentGroups/line-1", grp, nil), 409, codeGroupExists)
	wantError(t, c.do("GET", "/enrollmentGroups/nope", nil, nil), 404, dps.CodeEnrollmentNotFound)
	wantError(t, c.do("DELETE", "/enrollmentGroups/line-1", nil, map[string]string{"If-Match": "stale"}), 412, codeGroupETagMismatch)
	if r := c.do("DELETE", "/enrollmentGroups/line-1", nil, map[string]string{"If-Match": d.ETag}); r.status != 204 {
		t.Errorf("delete group = %s", r)
	}
	// Unknown CA names, CAs on individual enrollments and bad hubs are 400.
	bad := []map[string]any{
		{"enrollmentGroupId": "g", "attestation": map[string]any{"type": "x509", "x509": map[string]any{"caReferences": map[string]any{"primary": "nope"}}}},
		{"enrollmentGroupId": "g", "attestation": map[string]any{"type": "x509", "x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]any{"certificate": caPEM(p.inter)}}}}},
		{"enrollmentGroupId": "g", "attestation": map[string]any{"type": "symmetricKey"}, "iotHubs": []string{"nowhere.azure-devices.net"}},
		{"enrollmentGroupId": "g", "attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": "AAAA"}}},
		{"enrollmentGroupId": "g"},
	}
	for i, b := range bad {
		if e := wantError(t, c.do("PUT", "/enrollmentGroups/g", b, nil), 400, dps.CodeBadRequest); e.Message == "" {
			t.Errorf("bad group %d: no message", i)
		}
	}
	if gi, _ := sim.EnrollmentGroup("line-1"); gi.Creates != 1 || gi.Deletes != 1 || gi.Exists {
		t.Errorf("group oracle = %+v", gi)
	}
}

// TestServiceBulk: bulk operations of up to 10 items with per-item errors.
func TestServiceBulk(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	c.do("PUT", "/enrollments/exists", symEnrollment("exists", ""), nil)

	type result struct {
		IsSuccessful bool `json:"isSuccessful"`
		Errors       []struct {
			RegistrationID    string `json:"registrationId"`
			EnrollmentGroupID string `json:"enrollmentGroupId"`
			ErrorCode         int    `json:"errorCode"`
			ErrorStatus       string `json:"errorStatus"`
		} `json:"errors"`
	}
	bulk := func(path, mode string, key string, items ...any) (svcResp, result) {
		t.Helper()
		r := c.do("POST", path, map[string]any{"mode": mode, key: items}, nil)
		var res result
		if r.status == 200 {
			if err := json.Unmarshal(r.body, &res); err != nil {
				t.Fatalf("bulk answer %s: %v", r.body, err)
			}
		}
		return r, res
	}

	// Mixed: two new, one existing, one with a broken certificate.
	r, res := bulk("/enrollments", "create", "enrollments",
		symEnrollment("new-1", ""), symEnrollment("exists", ""), x509Enrollment("broken", "not a certificate"), symEnrollment("new-2", b64(keyB)))
	if r.status != 200 || res.IsSuccessful || len(res.Errors) != 2 {
		t.Fatalf("mixed bulk = %s, want 200, isSuccessful false, 2 errors", r)
	}
	byID := map[string]int{}
	for _, e := range res.Errors {
		byID[e.RegistrationID] = e.ErrorCode
		if e.ErrorStatus == "" {
			t.Errorf("error %+v has no errorStatus", e)
		}
	}
	if byID["exists"] != codeEnrollmentExists || byID["broken"] != dps.CodeBadRequest {
		t.Errorf("per-item errors %+v, want exists 409201 and broken 400000", byID)
	}
	for _, id := range []string{"new-1", "new-2"} {
		if ei, _ := sim.Enrollment(id); !ei.Exists || ei.Creates != 1 {
			t.Errorf("%s: %+v, want created once", id, ei)
		}
	}
	if ei, _ := sim.Enrollment("exists"); ei.Creates != 1 || ei.Updates != 0 {
		t.Errorf("exists: %+v, want the one create, no update", ei)
	}

	// A fully successful call answers isSuccessful true and no errors.
	r, res = bulk("/enrollments", "create", "enrollments", symEnrollment("new-3", ""))
	if r.status != 200 || !res.IsSuccessful || len(res.Errors) != 0 || !strings.Contains(string(r.body), `"errors":[]`) {
		t.Errorf("successful bulk = %s", r)
	}

	// 11 items, none, no mode, an unknown mode: 400 for the whole call.
	var eleven []any
	for i := range 11 {
		eleven = append(eleven, symEnrollment(fmt.Sprintf("many-%d", i), ""))
	}
	r, _ = bulk("/enrollments", "create", "enrollments", eleven...)
	if e := wantError(t, r, 400, dps.CodeBadRequest); !strings.Contains(e.Message, "at most 10") {
		t.Errorf("11 items: %q", e.Message)
	}
	if n := len(sim.Enrollments()); n != 4 {
		t.Errorf("%d enrollment ids after the refused call, want 4 (nothing of it created)", n)
	}
	r, _ = bulk("/enrollments", "create", "enrollments")
	wantError(t, r, 400, dps.CodeBadRequest)
	r, _ = bulk("/enrollments", "upsert", "enrollments", symEnrollment("x", ""))
	wantError(t, r, 400, dps.CodeBadRequest)
	r, _ = bulk("/enrollments", "create", "enrollmentGroups", symEnrollment("x", ""))
	wantError(t, r, 400, dps.CodeBadRequest)

	// update creates or replaces whatever the etag; updateIfMatchETag needs
	// the current etag; delete reports missing items.
	cur := c.do("GET", "/enrollments/new-1", nil, nil).doc(t)
	stale := symEnrollment("new-1", b64(keyA))
	stale["etag"] = "stale"
	fresh := symEnrollment("new-2", b64(keyA))
	fresh["etag"] = c.do("GET", "/enrollments/new-2", nil, nil).doc(t).ETag
	r, res = bulk("/enrollments", "updateIfMatchETag", "enrollments", stale, fresh, symEnrollment("missing", ""))
	if r.status != 200 || res.IsSuccessful || len(res.Errors) != 2 {
		t.Fatalf("updateIfMatchETag = %s", r)
	}
	for _, e := range res.Errors {
		want := map[string]int{"new-1": codeEnrollmentETagMismatch, "missing": dps.CodeNotFound}[e.RegistrationID]
		if e.ErrorCode != want {
			t.Errorf("updateIfMatchETag error %+v, want code %d", e, want)
		}
	}
	r, res = bulk("/enrollments", "update", "enrollments", stale, symEnrollment("upserted", ""))
	if !res.IsSuccessful {
		t.Errorf("update = %s", r)
	}
	if d := c.do("GET", "/enrollments/new-1", nil, nil).doc(t); d.ETag == cur.ETag || d.Attestation.SymmetricKey.PrimaryKey != b64(keyA) {
		t.Errorf("bulk update did not replace new-1: %+v", d)
	}
	r, res = bulk("/enrollments", "delete", "enrollments", map[string]any{"registrationId": "new-1"}, map[string]any{"registrationId": "never"})
	if r.status != 200 || len(res.Errors) != 1 || res.Errors[0].RegistrationID != "never" || res.Errors[0].ErrorCode != dps.CodeNotFound {
		t.Errorf("bulk delete = %s", r)
	}
	if ei, _ := sim.Enrollment("upserted"); ei.Creates != 1 {
		t.Errorf("upserted = %+v, want created by update mode", ei)
	}

	// Groups: the items are enrollmentGroups and errors name enrollmentGroupId.
	grp := func(id string) map[string]any {
		return map[string]any{"enrollmentGroupId": id, "attestation": map[string]any{"type": "symmetricKey"}}
	}
	r, res = bulk("/enrollmentGroups", "create", "enrollmentGroups", grp("g1"), grp("g1"))
	if r.status != 200 || len(res.Errors) != 1 || res.Errors[0].EnrollmentGroupID != "g1" || res.Errors[0].ErrorCode != codeGroupExists {
		t.Errorf("group bulk = %s", r)
	}
	st := sim.Stats()
	if st.GroupCreates != 1 || st.EnrollmentCreates != 5 || st.EnrollmentUpdates != 2 || st.EnrollmentDeletes != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestServiceQueryPaging: queries page with x-ms-max-item-count and
// x-ms-continuation; the last page carries no continuation.
func TestServiceQueryPaging(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	for b := range 3 {
		var items []any
		for i := range 9 {
			items = append(items, symEnrollment(fmt.Sprintf("q-%02d", b*9+i), ""))
		}
		if r := c.do("POST", "/enrollments", map[string]any{"mode": "create", "enrollments": items}, nil); !strings.Contains(string(r.body), `"isSuccessful":true`) {
			t.Fatalf("bulk = %s", r)
		}
	}
	seen := map[string]bool{}
	token := ""
	var sizes []int
	for range 10 {
		hdr := map[string]string{"x-ms-max-item-count": "10", "x-ms-continuation": token}
		r := c.do("POST", "/enrollments/query", map[string]string{"query": "*"}, hdr)
		if r.status != 200 || r.header.Get("x-ms-item-type") != "Enrollment" || r.header.Get("x-ms-max-item-count") != "10" {
			t.Fatalf("query = %s %v", r, r.header)
		}
		var docs []enrollmentDoc
		if err := json.Unmarshal(r.body, &docs); err != nil {
			t.Fatalf("query answer is not an array: %s", r.body)
		}
		sizes = append(sizes, len(docs))
		for _, d := range docs {
			if seen[d.RegistrationID] {
				t.Errorf("%s on two pages", d.RegistrationID)
			}
			seen[d.RegistrationID] = true
		}
		token = r.header.Get("x-ms-continuation")
		if token == "" {
			break
		}
	}
	if len(seen) != 27 || fmt.Sprint(sizes) != "[10 10 7]" {
		t.Errorf("pages %v, %d ids, want [10 10 7] and 27", sizes, len(seen))
	}
	// Without a page size: the default page (100) holds all 27.
	if r := c.do("POST", "/enrollments/query", map[string]string{"query": "SELECT * FROM enrollments"}, nil); r.status != 200 || r.header.Get("x-ms-continuation") != "" || strings.Count(string(r.body), `"registrationId"`) != 27 {
		t.Errorf("unpaged query = %d, continuation %q", r.status, r.header.Get("x-ms-continuation"))
	}
	wantError(t, c.do("POST", "/enrollments/query", map[string]string{"query": "*"}, map[string]string{"x-ms-continuation": "garbage!"}), 400, dps.CodeBadRequest)
	wantError(t, c.do("POST", "/enrollments/query", map[string]string{"query": "*"}, map[string]string{"x-ms-max-item-count": "0"}), 400, dps.CodeBadRequest)
	wantError(t, c.do("POST", "/enrollments/query", map[string]string{"query": "SELECT * FROM enrollments WHERE x = 1"}, nil), 400, dps.CodeBadRequest)
	wantError(t, c.do("POST", "/enrollments/query", nil, nil), 400, dps.CodeBadRequest)
	// Group queries answer EnrollmentGroup items (none here: an empty array).
	if r := c.do("POST", "/enrollmentGroups/query", map[string]string{"query": "*"}, nil); r.status != 200 || string(r.body) != "[]" || r.header.Get("x-ms-item-type") != "EnrollmentGroup" {
		t.Errorf("group query = %s", r)
	}
	// An enrollment named "query" is still reachable with GET.
	c.do("PUT", "/enrollments/query", symEnrollment("query", ""), nil)
	if r := c.do("GET", "/enrollments/query", nil, nil); r.status != 200 || r.doc(t).RegistrationID != "query" {
		t.Errorf("GET /enrollments/query = %s", r)
	}
}

// TestServiceRouting: device and service paths share the port; the
// service API's route, method, api-version and content type errors.
func TestServiceRouting(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	wantError(t, c.do("GET", "/enrollments/a/b/c", nil, nil), 404, codeRouteNotFound)
	wantError(t, c.do("PATCH", "/enrollments/a", nil, nil), 405, dps.CodeMethodNotAllowed)
	wantError(t, c.do("GET", "/enrollments", nil, nil), 405, dps.CodeMethodNotAllowed)
	wantError(t, c.do("GET", "/enrollments/a?api-version=", nil, nil), 400, dps.CodeBadRequest)
	wantError(t, c.do("GET", "/enrollments/a?api-version=1999-01-01", nil, nil), 400, dps.CodeBadRequest)
	wantError(t, c.do("PUT", "/enrollments/bad%20id", symEnrollment("bad id", ""), nil), 400, dps.CodeBadRequest)
	wantError(t, c.do("PUT", "/enrollments/a", `{"registrationId":"a"}`, map[string]string{"Content-Type": "text/plain"}), 415, dps.CodeUnsupportedMediaType)
	wantError(t, c.do("PUT", "/enrollments/a", `{"registrationId":`, nil), 400, dps.CodeBadRequest)
	for _, v := range []string{"2019-03-31", "2021-10-01", "2025-07-01-preview"} {
		if r := c.do("GET", "/enrollments/none?api-version="+v, nil, nil); r.status != 404 {
			t.Errorf("api-version %s = %s, want 404 (accepted, not found)", v, r)
		}
	}
	// The device API's /{scope}/registrations/{id} is not the service
	// API's /registrations/{id}: the scope segment tells them apart.
	dev := newRawDevice(t, run, "dev-x", nil, keyA)
	if r := dev.lookup(); r.status != 401 || r.errBody(t).ErrorCode != dps.CodeInvalidCredentials {
		t.Errorf("device lookup = %d %s, want the device API's 401 (no enrollment)", r.status, r.body)
	}
	wantError(t, c.do("GET", "/registrations/dev-x", nil, nil), 404, dps.CodeNotFound)
	if st := sim.Stats(); st.Requests != 1 || st.ServiceRequests != 12 {
		t.Errorf("requests: device %d, service %d, want 1 and 12", st.Requests, st.ServiceRequests)
	}
}

// TestServiceAdmin: the inspection endpoints list the enrollments with
// their counts, the policies without keys, and the index names them.
func TestServiceAdmin(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	c.do("PUT", "/enrollments/a-1", symEnrollment("a-1", ""), nil)
	admin := newSvcClient(t, run, "", "")
	r := admin.do("GET", "/_sim/enrollments", nil, nil)
	var list []EnrollmentInfo
	if err := json.Unmarshal(r.body, &list); err != nil || len(list) != 1 || list[0].RegistrationID != "a-1" || list[0].Creates != 1 || !list[0].Exists || list[0].Attestation != "symmetricKey" {
		t.Errorf("/_sim/enrollments = %s", r)
	}
	if r := admin.do("GET", "/_sim/enrollments/A-1", nil, nil); r.status != 200 || !strings.Contains(string(r.body), `"creates": 1`) {
		t.Errorf("/_sim/enrollments/A-1 = %s", r)
	}
	if r := admin.do("GET", "/_sim/enrollments/zz", nil, nil); r.status != 404 {
		t.Errorf("/_sim/enrollments/zz = %s", r)
	}
	if r := admin.do("GET", "/_sim/enrollmentGroups", nil, nil); r.status != 200 || strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("/_sim/enrollmentGroups = %s", r)
	}
	if r := admin.do("GET", "/_sim/servicePolicies", nil, nil); r.status != 200 || !strings.Contains(string(r.body), "enrollmentread") || strings.Contains(string(r.body), ownerKey) {
		t.Errorf("/_sim/servicePolicies = %s: want names and rights, no keys", r)
	}
	if r := admin.do("GET", "/_sim/stats", nil, nil); !strings.Contains(string(r.body), `"enrollmentCreates": 1`) || !strings.Contains(string(r.body), `"serviceRequests": 1`) {
		t.Errorf("/_sim/stats = %s", r)
	}
	idx := admin.do("GET", "/_sim/", nil, nil)
	for _, want := range []string{"/_sim/enrollments", "/_sim/enrollmentGroups", "/_sim/servicePolicies"} {
		if !strings.Contains(string(idx.body), want) {
			t.Errorf("/_sim/ index does not list %s", want)
		}
	}
}

// TestServiceKnobValidation: the new knobs are validated like the others.
func TestServiceKnobValidation(t *testing.T) {
	var sim Server
	if err := sim.SetFaults(Faults{ServiceErrorRate: 1.5}); err == nil || !strings.Contains(err.Error(), "serviceErrorRate") {
		t.Errorf("serviceErrorRate 1.5: %v", err)
	}
	for _, cfg := range []Config{
		{ServicePolicies: []ServicePolicy{{Name: "p", PrimaryKey: "not base64!", Rights: []string{RightEnrollmentRead}}}},
		{ServicePolicies: []ServicePolicy{{Name: "p", PrimaryKey: ownerKey}}},
		{ServicePolicies: []ServicePolicy{{Name: "p", PrimaryKey: ownerKey, Rights: []string{"RegistryWrite"}}}},
		{ServicePolicies: []ServicePolicy{{Name: "p", PrimaryKey: ownerKey, Rights: []string{RightEnrollmentRead}}, {Name: "P", PrimaryKey: ownerKey, Rights: []string{RightEnrollmentRead}}}},
		{ServicePolicies: []ServicePolicy{{Name: "", PrimaryKey: ownerKey, Rights: []string{RightEnrollmentRead}}}},
		{EntraIssuers: []EntraIssuer{{Issuer: "https://x"}}},
		{EntraIssuers: []EntraIssuer{{Issuer: "https://x", PublicKeyPEM: "nope"}}},
		{EntraIssuers: []EntraIssuer{{PublicKeyPEM: "nope"}}},
		{ServiceHostName: "a/b"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	// The zero value has a generated owner policy with every right.
	ps := sim.ServicePolicies()
	if len(ps) != 1 || ps[0].Name != DefaultServicePolicy || len(ps[0].Rights) != 5 {
		t.Errorf("default policies %+v", ps)
	}
	if k, err := base64.StdEncoding.DecodeString(ps[0].PrimaryKey); err != nil || len(k) != 32 {
		t.Errorf("generated key %q", ps[0].PrimaryKey)
	}
	cs, err := sim.ServiceConnectionString("127.0.0.1:8443", "")
	if err != nil || cs != "HostName=127.0.0.1:8443;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="+ps[0].PrimaryKey {
		t.Errorf("connection string %q, %v", cs, err)
	}
	if _, err := sim.ServiceConnectionString("h", "nope"); err == nil {
		t.Error("connection string of an unknown policy")
	}
}

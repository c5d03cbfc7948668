package dpssim

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

var (
	uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	opIDRE = regexp.MustCompile(`^4\.[0-9a-f]{16}\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	timeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$`)
)

// TestRegisterPollLookupWireFormat checks every header and field DPS clients
// depend on (dps-protocol.md §3 and §10.1), for an X.509 group device.
func TestRegisterPollLookupWireFormat(t *testing.T) {
	p := pki()
	sim := mustNew(t, Config{
		IDScope:      testScope,
		Certificates: []CACertificate{{Name: "inter", PEM: caPEM(p.inter), Verified: true}},
		Groups:       []EnrollmentGroup{{EnrollmentGroupID: "fleet", Attestation: Attestation{X509: &X509Attestation{CACertificate: "inter"}}}},
	})
	run := mustStart(t, sim)
	dev := newRawDevice(t, run, "wire-1", mustDevice(t, p.inter, "wire-1"), nil)

	// Lookup before registering: 404 + 404201.
	lk := dev.lookup()
	if lk.status != http.StatusNotFound || lk.errBody(t).ErrorCode != dps.CodeNotFound {
		t.Fatalf("lookup before register = %d %s, want 404 with errorCode %d", lk.status, lk.body, dps.CodeNotFound)
	}

	reg := dev.register("")
	if reg.status != http.StatusAccepted {
		t.Fatalf("register status = %d (%s), want 202", reg.status, reg.body)
	}
	headers := []struct{ name, want string }{
		{"Content-Type", "application/json; charset=utf-8"},
		{"Retry-After", "3"},
		{"Location", run.URL + "/" + testScope + "/registrations/wire-1/register"},
		{"Strict-Transport-Security", "max-age=31536000; includeSubDomains"},
	}
	for _, h := range headers {
		if got := reg.header.Get(h.name); got != h.want {
			t.Errorf("register header %s = %q, want %q", h.name, got, h.want)
		}
	}
	if got := reg.header.Get(dps.HeaderRequestID); !uuidRE.MatchString(got) {
		t.Errorf("x-ms-request-id = %q, want a GUID", got)
	}
	if reg.header.Get("Date") == "" {
		t.Errorf("register response has no Date header")
	}
	var raw map[string]any
	if err := json.Unmarshal(reg.body, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 2 || raw["status"] != "assigning" || !opIDRE.MatchString(raw["operationId"].(string)) {
		t.Errorf("register body = %s, want exactly operationId (DPS shape) and status assigning", reg.body)
	}
	opID := raw["operationId"].(string)

	pl := dev.poll(opID)
	if pl.status != http.StatusOK {
		t.Fatalf("poll status = %d (%s), want 200", pl.status, pl.body)
	}
	if got := pl.header.Get("Content-Type"); got != "application/json; charset=utf-8" {
		t.Errorf("poll Content-Type = %q", got)
	}
	op := pl.op(t)
	rs := op.RegistrationState
	if op.OperationID != opID || op.Status != dps.StatusAssigned || rs == nil {
		t.Fatalf("poll body = %s, want operation %s assigned with a registrationState", pl.body, opID)
	}
	checks := []struct {
		field string
		ok    bool
	}{
		{"registrationId", rs.RegistrationID == "wire-1"},
		{"status", rs.Status == dps.StatusAssigned},
		{"substatus", rs.Substatus == dps.SubstatusInitialAssignment},
		{"assignedHub", slices.Contains(DefaultHubs, rs.AssignedHub)},
		{"deviceId", rs.DeviceID == "wire-1"},
		{"createdDateTimeUtc", timeRE.MatchString(rs.CreatedDateTimeUTC)},
		{"lastUpdatedDateTimeUtc", timeRE.MatchString(rs.LastUpdatedDateTimeUTC)},
		{"etag", isQuotedGUIDBase64(rs.ETag)},
		{"x509.enrollmentGroupId", rs.X509 != nil && rs.X509.EnrollmentGroupID == "fleet"},
		{"x509.certificateInfo", rs.X509 != nil && rs.X509.CertificateInfo != nil && rs.X509.CertificateInfo.SubjectName == "CN=wire-1"},
		{"no payload", rs.Payload == nil},
		{"no errorCode", rs.ErrorCode == 0},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("registrationState.%s wrong in %s", c.field, pl.body)
		}
	}
	if pl.header.Get("Retry-After") != "" {
		t.Errorf("final poll has Retry-After %q; DPS sends none on 200", pl.header.Get("Retry-After"))
	}

	lk = dev.lookup()
	if lk.status != http.StatusOK {
		t.Fatalf("lookup status = %d (%s), want 200", lk.status, lk.body)
	}
	var res map[string]any
	if err := json.Unmarshal(lk.body, &res); err != nil {
		t.Fatal(err)
	}
	if _, wrapped := res["operationId"]; wrapped || res["status"] != "assigned" || res["assignedHub"] != rs.AssignedHub {
		t.Errorf("lookup body = %s, want a bare DeviceRegistrationResult, assigned to %s", lk.body, rs.AssignedHub)
	}

	ri, ok := sim.Registration("wire-1")
	if !ok || ri.Registers != 1 || ri.Polls != 1 || ri.Lookups != 2 || ri.Enrollment != "group:fleet" {
		t.Errorf("Registration(wire-1) = %+v, want 1 register, 1 poll, 2 lookups via group:fleet", ri)
	}
}

func isQuotedGUIDBase64(s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(b) == 38 && b[0] == '"' && b[37] == '"' && uuidRE.MatchString(string(b[1:37]))
}

// TestAttestation registers devices of every attestation type, and the
// cases DPS refuses, each through a fresh simulator.
func TestAttestation(t *testing.T) {
	p := pki()
	interDev := mustDevice(t, p.inter, "inter-dev")   // presents leaf + intermediate
	rootDev := mustDevice(t, p.root, "root-dev")      // issued by the root itself
	strangerDev := mustDevice(t, p.otherInter, "str") // another PKI entirely
	indDev := mustDevice(t, p.otherRoot, "ind-x509")  // individual enrollment certificate
	otherCN := mustDevice(t, p.inter, "somebody-else")

	interCA := CACertificate{Name: "inter", PEM: caPEM(p.inter), Verified: true}
	rootCA := CACertificate{Name: "root", PEM: caPEM(p.root), Verified: true}
	unverifiedRoot := CACertificate{Name: "root", PEM: caPEM(p.root)}
	group := func(id string, x *X509Attestation) EnrollmentGroup {
		return EnrollmentGroup{EnrollmentGroupID: id, Attestation: Attestation{X509: x}}
	}
	symInd := func(id string, keys ...[]byte) IndividualEnrollment {
		sk := &SymmetricKeyAttestation{PrimaryKey: b64(keys[0])}
		if len(keys) > 1 {
			sk.SecondaryKey = b64(keys[1])
		}
		return IndividualEnrollment{RegistrationID: id, Attestation: Attestation{SymmetricKey: sk}}
	}
	symGroup := EnrollmentGroup{EnrollmentGroupID: "sas-group", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}

	tests := []struct {
		name      string
		cfg       Config
		id        string
		cert      *certs.Leaf
		key       []byte
		header    map[string]string // extra headers, e.g. a hand-made Authorization
		wantFinal dps.Status        // "" = want 401 + 401002 on register
		wantEnr   string
		wantMsg   string // substring of the 401 message
	}{
		{
			name: "x509 individual",
			cfg:  Config{Individual: []IndividualEnrollment{{RegistrationID: "ind-x509", Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(indDev)}}}}},
			id:   "ind-x509", cert: leafOnly(indDev), wantFinal: dps.StatusAssigned, wantEnr: "individual:ind-x509",
		},
		{
			name: "x509 group via intermediate",
			cfg:  Config{Certificates: []CACertificate{interCA}, Groups: []EnrollmentGroup{group("g-inter", &X509Attestation{CACertificate: "inter"})}},
			id:   "inter-dev", cert: interDev, wantFinal: dps.StatusAssigned, wantEnr: "group:g-inter",
		},
		{
			name: "x509 group via intermediate, leaf only",
			cfg:  Config{Certificates: []CACertificate{interCA}, Groups: []EnrollmentGroup{group("g-inter", &X509Attestation{CACertificate: "inter"})}},
			id:   "inter-dev", cert: leafOnly(interDev), wantFinal: dps.StatusAssigned, wantEnr: "group:g-inter",
		},
		{
			name: "x509 group via verified root, chain presented",
			cfg:  Config{Certificates: []CACertificate{rootCA}, Groups: []EnrollmentGroup{group("g-root", &X509Attestation{CACertificate: "root"})}},
			id:   "inter-dev", cert: interDev, wantFinal: dps.StatusAssigned, wantEnr: "group:g-root",
		},
		{
			name: "x509 group via verified root, device issued by root",
			cfg:  Config{Certificates: []CACertificate{rootCA}, Groups: []EnrollmentGroup{group("g-root", &X509Attestation{CACertificate: "root"})}},
			id:   "root-dev", cert: rootDev, wantFinal: dps.StatusAssigned, wantEnr: "group:g-root",
		},
		{
			name: "x509 group with uploaded signing certificate",
			cfg:  Config{Groups: []EnrollmentGroup{group("g-signing", &X509Attestation{SigningCertificate: caPEM(p.inter)})}},
			id:   "inter-dev", cert: interDev, wantFinal: dps.StatusAssigned, wantEnr: "group:g-signing",
		},
		{
			name: "x509 intermediate group wins over root group (nearest CA first)",
			cfg: Config{Certificates: []CACertificate{rootCA, interCA}, Groups: []EnrollmentGroup{
				group("g-root", &X509Attestation{CACertificate: "root"}), group("g-inter", &X509Attestation{CACertificate: "inter"})}},
			id: "inter-dev", cert: interDev, wantFinal: dps.StatusAssigned, wantEnr: "group:g-inter",
		},
		{
			name: "symmetric individual, primary key",
			cfg:  Config{Individual: []IndividualEnrollment{symInd("sas-1", keyA, keyB)}},
			id:   "sas-1", key: keyA, wantFinal: dps.StatusAssigned, wantEnr: "individual:sas-1",
		},
		{
			name: "symmetric individual, secondary key",
			cfg:  Config{Individual: []IndividualEnrollment{symInd("sas-1", keyA, keyB)}},
			id:   "sas-1", key: keyB, wantFinal: dps.StatusAssigned, wantEnr: "individual:sas-1",
		},
		{
			name: "symmetric group, derived key",
			cfg:  Config{Groups: []EnrollmentGroup{symGroup}},
			id:   "sas-member-7", key: dps.DeriveDeviceKeyBytes(groupKey, "sas-member-7"), wantFinal: dps.StatusAssigned, wantEnr: "group:sas-group",
		},
		{
			name: "disabled individual enrollment",
			cfg: Config{Individual: []IndividualEnrollment{func() IndividualEnrollment {
				e := symInd("sas-off", keyA)
				e.ProvisioningStatus = ProvisioningDisabled
				return e
			}()}},
			id: "sas-off", key: keyA, wantFinal: dps.StatusDisabled, wantEnr: "individual:sas-off",
		},
		{
			name: "disabled group",
			cfg: Config{Certificates: []CACertificate{interCA}, Groups: []EnrollmentGroup{{EnrollmentGroupID: "g-off", ProvisioningStatus: ProvisioningDisabled,
				Attestation: Attestation{X509: &X509Attestation{CACertificate: "inter"}}}}},
			id: "inter-dev", cert: interDev, wantFinal: dps.StatusDisabled, wantEnr: "group:g-off",
		},
		{
			name: "disabled individual blocks one device of an enabled group",
			cfg: Config{Certificates: []CACertificate{interCA},
				Individual: []IndividualEnrollment{{RegistrationID: "inter-dev", ProvisioningStatus: ProvisioningDisabled, Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(interDev)}}}},
				Groups:     []EnrollmentGroup{group("g-inter", &X509Attestation{CACertificate: "inter"})}},
			id: "inter-dev", cert: leafOnly(interDev), wantFinal: dps.StatusDisabled, wantEnr: "individual:inter-dev",
		},
		// Refusals: 401 + 401002.
		{
			name: "CN mismatch",
			cfg:  Config{Certificates: []CACertificate{interCA}, Groups: []EnrollmentGroup{group("g-inter", &X509Attestation{CACertificate: "inter"})}},
			id:   "inter-dev", cert: otherCN, wantMsg: "does not match the registration id",
		},
		{
			name: "unverified root",
			cfg:  Config{Certificates: []CACertificate{unverifiedRoot}, Groups: []EnrollmentGroup{group("g-root", &X509Attestation{CACertificate: "root"})}},
			id:   "inter-dev", cert: interDev, wantMsg: "is not verified",
		},
		{
			name: "chain does not reach the group CA (intermediate not presented)",
			cfg:  Config{Certificates: []CACertificate{rootCA}, Groups: []EnrollmentGroup{group("g-root", &X509Attestation{CACertificate: "root"})}},
			id:   "inter-dev", cert: leafOnly(interDev), wantMsg: "no enrollment group's CA",
		},
		{
			name: "certificate from another PKI",
			cfg:  Config{Certificates: []CACertificate{rootCA}, Groups: []EnrollmentGroup{group("g-root", &X509Attestation{CACertificate: "root"})}},
			id:   "str", cert: strangerDev, wantMsg: "no enrollment group's CA",
		},
		{
			name: "individual X.509 enrollment, different certificate with the same CN",
			cfg:  Config{Individual: []IndividualEnrollment{{RegistrationID: "inter-dev", Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(mustDevice(t, p.otherRoot, "inter-dev"))}}}}},
			id:   "inter-dev", cert: leafOnly(interDev), wantMsg: "not the one in the individual enrollment",
		},
		{
			name: "individual X.509 enrollment, chain presented without a verified CA",
			cfg:  Config{Individual: []IndividualEnrollment{{RegistrationID: "inter-dev", Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(interDev)}}}}},
			id:   "inter-dev", cert: interDev, wantMsg: "must be uploaded and verified",
		},
		{
			name: "X.509 device against a symmetric key enrollment",
			cfg:  Config{Individual: []IndividualEnrollment{symInd("inter-dev", keyA)}},
			id:   "inter-dev", cert: interDev, wantMsg: "uses symmetric key attestation",
		},
		{
			name: "wrong SAS key",
			cfg:  Config{Individual: []IndividualEnrollment{symInd("sas-1", keyA, keyB)}},
			id:   "sas-1", key: groupKey, wantMsg: "does not match",
		},
		{
			name:    "expired SAS token",
			cfg:     Config{Individual: []IndividualEnrollment{symInd("sas-1", keyA)}},
			id:      "sas-1",
			header:  map[string]string{"Authorization": dps.SASToken(keyA, testScope, "sas-1", time.Now().Add(-time.Minute))},
			wantMsg: "expired",
		},
		{
			name:    "SAS token for another registration id",
			cfg:     Config{Individual: []IndividualEnrollment{symInd("sas-1", keyA)}},
			id:      "sas-1",
			header:  map[string]string{"Authorization": dps.SASToken(keyA, testScope, "sas-2", time.Now().Add(time.Hour))},
			wantMsg: "is scoped to",
		},
		{
			name: "SAS device against an X.509 enrollment",
			cfg:  Config{Individual: []IndividualEnrollment{{RegistrationID: "ind-x509", Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(indDev)}}}}},
			id:   "ind-x509", key: keyA, wantMsg: "uses X.509 attestation",
		},
		{
			name: "unknown device, symmetric key",
			cfg:  Config{Individual: []IndividualEnrollment{symInd("sas-1", keyA)}, Groups: []EnrollmentGroup{symGroup}},
			id:   "nobody", key: keyA, wantMsg: "no enrollment for",
		},
		{
			name: "unknown device, X.509",
			cfg:  Config{},
			id:   "inter-dev", cert: interDev, wantMsg: "no enrollment group's CA",
		},
		{
			name: "no credentials at all",
			cfg:  Config{Groups: []EnrollmentGroup{symGroup}},
			id:   "sas-member-7", wantMsg: "no credentials",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.IDScope = testScope
			sim := mustNew(t, tt.cfg)
			run := mustStart(t, sim)
			dev := newRawDevice(t, run, tt.id, tt.cert, tt.key)
			var reg rawResp
			if tt.header != nil {
				reg = dev.do(http.MethodPut, dev.registerPath(), `{"registrationId":"`+tt.id+`"}`, tt.header)
			} else {
				reg = dev.register("")
			}
			if tt.wantFinal == "" {
				eb := reg.errBody(t)
				if reg.status != http.StatusUnauthorized || eb.ErrorCode != dps.CodeInvalidCredentials {
					t.Fatalf("register = %d %s, want 401 with errorCode 401002", reg.status, reg.body)
				}
				if !strings.Contains(eb.Message, tt.wantMsg) {
					t.Errorf("message = %q, want it to mention %q", eb.Message, tt.wantMsg)
				}
				if eb.TrackingID == "" || eb.TrackingID != reg.header.Get(dps.HeaderRequestID) {
					t.Errorf("trackingId %q != x-ms-request-id %q", eb.TrackingID, reg.header.Get(dps.HeaderRequestID))
				}
				if got := reg.header.Get(dps.HeaderErrorCode); got != "401002" {
					t.Errorf("x-ms-error-code = %q, want 401002", got)
				}
				if !timeRE.MatchString(eb.TimestampUTC) {
					t.Errorf("timestampUtc = %q, want DPS's format", eb.TimestampUTC)
				}
				if _, ok := sim.Registration(tt.id); ok {
					t.Errorf("a refused device has a registration record")
				}
				return
			}
			if reg.status != http.StatusAccepted {
				t.Fatalf("register = %d %s, want 202", reg.status, reg.body)
			}
			pl := dev.poll(reg.op(t).OperationID)
			op := pl.op(t)
			if pl.status != http.StatusOK || op.Status != tt.wantFinal {
				t.Fatalf("poll = %d %s, want 200 with status %s", pl.status, pl.body, tt.wantFinal)
			}
			rs := op.RegistrationState
			if rs == nil || rs.RegistrationID != tt.id || rs.Status != tt.wantFinal || rs.LastUpdatedDateTimeUTC == "" {
				t.Fatalf("registrationState = %s, want registrationId, status and lastUpdatedDateTimeUtc", pl.body)
			}
			if tt.wantFinal == dps.StatusDisabled {
				if rs.ErrorCode != codeEnrollmentDisabled || rs.ErrorMessage == "" || rs.AssignedHub != "" {
					t.Errorf("disabled registrationState = %s, want errorCode %d, a message and no hub", pl.body, codeEnrollmentDisabled)
				}
			}
			if ri, _ := sim.Registration(tt.id); ri.Enrollment != tt.wantEnr {
				t.Errorf("enrollment = %q, want %q", ri.Enrollment, tt.wantEnr)
			}
		})
	}
}

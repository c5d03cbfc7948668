package dpssim

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// TestServiceEnrollThenRegisterX509: an individual X.509 enrollment created
// through the service API, with the certificate in each form SDKs send,
// lets the device register through the device API at once.
func TestServiceEnrollThenRegisterX509(t *testing.T) {
	p := pki()
	sim := mustNew(t, svcConfig()) // no enrollments in the config
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	forms := map[string]func(*x509.Certificate) string{
		"pem":        func(x *x509.Certificate) string { return string(certs.CertPEM(x)) },
		"base64-pem": func(x *x509.Certificate) string { return b64s(string(certs.CertPEM(x))) },
		"base64-der": func(x *x509.Certificate) string { return base64.StdEncoding.EncodeToString(x.Raw) },
		"one-line-pem": func(x *x509.Certificate) string {
			return "-----BEGIN CERTIFICATE-----" + base64.StdEncoding.EncodeToString(x.Raw) + "-----END CERTIFICATE-----"
		},
	}
	for form, encode := range forms {
		id := "x509-" + form
		leaf := mustDevice(t, p.otherRoot, id)
		dev := newRawDevice(t, run, id, leafOnly(leaf), nil)
		if r := dev.register(""); r.status != 401 {
			t.Fatalf("%s before enrollment: %d %s, want 401", form, r.status, r.body)
		}
		r := c.do("PUT", "/enrollments/"+id, x509Enrollment(id, encode(leaf.Cert)), nil)
		if r.status != 200 {
			t.Fatalf("%s: create = %s", form, r)
		}
		d := r.doc(t)
		info := d.Attestation.X509.ClientCertificates.Primary
		if info.Certificate != "" || info.Info == nil || info.Info.SHA1Thumbprint != certInfo(leaf.Cert).SHA1Thumbprint {
			t.Errorf("%s: answered certificate %+v, want its info only", form, info)
		}
		fin := dev.registerAndWait()
		op := fin.op(t)
		if fin.status != 200 || op.Status != dps.StatusAssigned || op.RegistrationState.Substatus != dps.SubstatusInitialAssignment {
			t.Fatalf("%s: register = %d %s, want assigned", form, fin.status, fin.body)
		}
		// The enrollment now shows the device's registration state.
		g := c.do("GET", "/enrollments/"+id, nil, nil).doc(t)
		if g.RegistrationState == nil || g.RegistrationState.Status != dps.StatusAssigned || g.RegistrationState.AssignedHub != op.RegistrationState.AssignedHub {
			t.Errorf("%s: registrationState %+v", form, g.RegistrationState)
		}
	}

	// Deleting the enrollment takes effect for the next registration, even
	// though the device's certificate chain was verified (and cached) before.
	dev := newRawDevice(t, run, "x509-pem", leafOnly(mustDevice(t, p.otherRoot, "x509-pem")), nil)
	if r := c.do("DELETE", "/enrollments/x509-pem", nil, nil); r.status != 204 {
		t.Fatalf("delete = %s", r)
	}
	if r := dev.register(""); r.status != 401 {
		t.Errorf("after delete: %d %s, want 401", r.status, r.body)
	}

	// Secondary certificates are accepted too; a CN that is not the
	// registration id is refused at creation.
	prim, sec := mustDevice(t, p.otherRoot, "two-certs"), mustDevice(t, p.otherRoot, "two-certs")
	body := x509Enrollment("two-certs", string(certs.CertPEM(prim.Cert)))
	body["attestation"].(map[string]any)["x509"].(map[string]any)["clientCertificates"].(map[string]any)["secondary"] = map[string]any{"certificate": string(certs.CertPEM(sec.Cert))}
	if r := c.do("PUT", "/enrollments/two-certs", body, nil); r.status != 200 || !strings.Contains(string(r.body), `"secondary"`) {
		t.Fatalf("two certificates = %s", r)
	}
	if fin := newRawDevice(t, run, "two-certs", leafOnly(sec), nil).registerAndWait(); fin.op(t).Status != dps.StatusAssigned {
		t.Errorf("secondary certificate: %s", fin.body)
	}
	wantError(t, c.do("PUT", "/enrollments/not-the-cn", x509Enrollment("not-the-cn", leafPEM(prim)), nil), 400, dps.CodeBadRequest)
}

// TestServiceEnrollThenRegisterSymmetric: symmetric key enrollments created
// through the service API (keys generated or given), updated and disabled,
// take effect for the device API at once.
func TestServiceEnrollThenRegisterSymmetric(t *testing.T) {
	sim := mustNew(t, svcConfig())
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)

	r := c.do("PUT", "/enrollments/sym-gen", symEnrollment("sym-gen", ""), nil)
	key, err := base64.StdEncoding.DecodeString(r.doc(t).Attestation.SymmetricKey.PrimaryKey)
	if err != nil || len(key) != 64 {
		t.Fatalf("generated key: %v (%d bytes)", err, len(key))
	}
	fin := newRawDevice(t, run, "sym-gen", nil, key).registerAndWait()
	if op := fin.op(t); op.Status != dps.StatusAssigned || op.RegistrationState.DeviceID != "sym-gen" {
		t.Fatalf("register with the generated key: %s", fin.body)
	}
	sec, _ := base64.StdEncoding.DecodeString(r.doc(t).Attestation.SymmetricKey.SecondaryKey)
	if fin := newRawDevice(t, run, "sym-gen", nil, sec).registerAndWait(); fin.op(t).Status != dps.StatusAssigned {
		t.Errorf("register with the generated secondary key: %s", fin.body)
	}

	// deviceId and iotHubs of the enrollment decide the assignment.
	body := symEnrollment("sym-hub", b64(keyA))
	body["deviceId"] = "boiler-7"
	body["iotHubs"] = []string{"hub-2.azure-devices.net"}
	body["allocationPolicy"] = "static"
	c.do("PUT", "/enrollments/sym-hub", body, nil)
	op := newRawDevice(t, run, "sym-hub", nil, keyA).registerAndWait().op(t)
	if op.RegistrationState.AssignedHub != "hub-2.azure-devices.net" || op.RegistrationState.DeviceID != "boiler-7" {
		t.Errorf("assignment %+v, want hub-2 and device id boiler-7", op.RegistrationState)
	}

	// A key change: the old key is refused, the new one accepted.
	cur := c.do("GET", "/enrollments/sym-hub", nil, nil).doc(t)
	body["attestation"] = map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": b64(keyB), "secondaryKey": b64(keyB)}}
	if r := c.do("PUT", "/enrollments/sym-hub", body, map[string]string{"If-Match": cur.ETag}); r.status != 200 {
		t.Fatalf("update = %s", r)
	}
	if r := newRawDevice(t, run, "sym-hub", nil, keyA).register(""); r.status != 401 {
		t.Errorf("old key after the update: %d %s", r.status, r.body)
	}
	if op := newRawDevice(t, run, "sym-hub", nil, keyB).registerAndWait().op(t); op.Status != dps.StatusAssigned {
		t.Errorf("new key after the update: %+v", op)
	}

	// Disabled through the service API: the operation ends disabled.
	dis := symEnrollment("sym-off", b64(keyA))
	dis["provisioningStatus"] = "disabled"
	c.do("PUT", "/enrollments/sym-off", dis, nil)
	if op := newRawDevice(t, run, "sym-off", nil, keyA).registerAndWait().op(t); op.Status != dps.StatusDisabled {
		t.Errorf("disabled enrollment: %+v", op)
	}
}

// TestServiceEnrollmentGroupsThenRegister: groups created through the
// service API (signing certificate, CA reference, symmetric key) admit
// their devices at once; a CA reference still needs a verified CA.
func TestServiceEnrollmentGroupsThenRegister(t *testing.T) {
	p := pki()
	cfg := svcConfig()
	cfg.Certificates = []CACertificate{{Name: "root", PEM: caPEM(p.otherRoot), Verified: false}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)

	signing := map[string]any{"enrollmentGroupId": "line-1", "attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": b64s(caPEM(p.inter))}}}}}
	if r := c.do("PUT", "/enrollmentGroups/line-1", signing, nil); r.status != 200 {
		t.Fatalf("signing group = %s", r)
	}
	if op := newRawDevice(t, run, "g-dev-1", mustDevice(t, p.inter, "g-dev-1"), nil).registerAndWait().op(t); op.Status != dps.StatusAssigned || op.RegistrationState.X509.EnrollmentGroupID != "line-1" {
		t.Errorf("device of the signing group: %+v", op)
	}

	caRef := map[string]any{"enrollmentGroupId": "line-2", "attestation": map[string]any{"type": "x509",
		"x509": map[string]any{"caReferences": map[string]any{"primary": "root"}}}}
	c.do("PUT", "/enrollmentGroups/line-2", caRef, nil)
	dev2 := newRawDevice(t, run, "g-dev-2", mustDevice(t, p.otherInter, "g-dev-2"), nil)
	if r := dev2.register(""); r.status != 401 || !strings.Contains(r.errBody(t).Message, "not verified") {
		t.Errorf("device of a group on an unverified CA: %d %s", r.status, r.body)
	}
	vc, err := p.otherRoot.NewVerification(sim.Certificates()[0].VerificationCode, certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.VerifyCertificate("root", vc.Cert); err != nil {
		t.Fatal(err)
	}
	if op := dev2.registerAndWait().op(t); op.Status != dps.StatusAssigned {
		t.Errorf("after proof of possession: %+v", op)
	}

	sym := map[string]any{"enrollmentGroupId": "sensors", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": b64(groupKey)}}}
	c.do("PUT", "/enrollmentGroups/sensors", sym, nil)
	if op := newRawDevice(t, run, "s-1", nil, dps.DeriveDeviceKeyBytes(groupKey, "s-1")).registerAndWait().op(t); op.Status != dps.StatusAssigned {
		t.Errorf("device of the symmetric key group: %+v", op)
	}
	// Groups list their devices' registration states.
	r := c.do("POST", "/registrations/sensors/query", nil, map[string]string{"x-ms-max-item-count": "5"})
	if r.status != 200 || r.header.Get("x-ms-item-type") != "DeviceRegistration" || !strings.Contains(string(r.body), `"registrationId":"s-1"`) {
		t.Errorf("registration query = %s", r)
	}
	wantError(t, c.do("POST", "/registrations/no-such-group/query", nil, nil), 404, dps.CodeEnrollmentNotFound)
	// Deleting the group stops its devices.
	c.do("DELETE", "/enrollmentGroups/line-1", nil, nil)
	if r := newRawDevice(t, run, "g-dev-1", mustDevice(t, p.inter, "g-dev-1"), nil).register(""); r.status != 401 {
		t.Errorf("device of a deleted group: %d %s", r.status, r.body)
	}
}

// TestServiceRegistrationStates: the service API reads and deletes a
// device's registration state; after a delete the device registers as new.
func TestServiceRegistrationStates(t *testing.T) {
	cfg := svcConfig()
	cfg.Individual = []IndividualEnrollment{{RegistrationID: "rs-1", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA)}}}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	dev := newRawDevice(t, run, "rs-1", nil, keyA)

	wantError(t, c.do("GET", "/registrations/rs-1", nil, nil), 404, dps.CodeNotFound)
	first := dev.registerAndWait().op(t).RegistrationState
	r := c.do("GET", "/registrations/rs-1", nil, nil)
	var st map[string]any
	if err := json.Unmarshal(r.body, &st); err != nil || r.status != 200 {
		t.Fatalf("get = %s", r)
	}
	for _, f := range []string{"registrationId", "createdDateTimeUtc", "assignedHub", "deviceId", "status", "substatus", "lastUpdatedDateTimeUtc", "etag"} {
		if st[f] == nil || st[f] == "" {
			t.Errorf("registration state has no %s: %s", f, r.body)
		}
	}
	if _, has := st["symmetricKey"]; has || st["etag"] != first.ETag {
		t.Errorf("registration state %s: want the device's etag and no attestation details", r.body)
	}
	// The config's enrollment is visible through the service API too.
	if g := c.do("GET", "/enrollments/rs-1", nil, nil); g.status != 200 || g.doc(t).RegistrationState == nil || g.doc(t).Attestation.SymmetricKey.PrimaryKey != b64(keyA) {
		t.Errorf("config enrollment via the service API = %s", g)
	}

	wantError(t, c.do("DELETE", "/registrations/rs-1", nil, map[string]string{"If-Match": "stale"}), 412, codeEnrollmentETagMismatch)
	reader := newSvcClient(t, run, "enrollmentread", readerKey)
	wantError(t, reader.do("DELETE", "/registrations/rs-1", nil, nil), 401, dps.CodeInvalidCredentials)
	if r := c.do("DELETE", "/registrations/rs-1", nil, map[string]string{"If-Match": first.ETag}); r.status != 204 {
		t.Fatalf("delete = %s", r)
	}
	wantError(t, c.do("GET", "/registrations/rs-1", nil, nil), 404, dps.CodeNotFound)
	wantError(t, c.do("DELETE", "/registrations/rs-1", nil, nil), 404, dps.CodeNotFound)
	if r := dev.lookup(); r.status != 404 {
		t.Errorf("device lookup after delete: %d %s, want 404", r.status, r.body)
	}
	again := dev.registerAndWait().op(t).RegistrationState
	if again.Substatus != dps.SubstatusInitialAssignment || again.CreatedDateTimeUTC == first.CreatedDateTimeUTC {
		t.Errorf("after delete: %+v, want a new registration (initialAssignment, new creation time)", again)
	}
	ri, _ := sim.Registration("rs-1")
	if ri.Registers != 2 || ri.Deletes != 1 {
		t.Errorf("oracle %+v, want 2 registers and 1 delete", ri)
	}
	if st := sim.Stats(); st.RegistrationDeletes != 1 || st.Registrations != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestServiceConcurrentWithDevices: devices register while the service API
// creates, updates and deletes enrollments (run with -race).
func TestServiceConcurrentWithDevices(t *testing.T) {
	cfg := svcConfig()
	cfg.Groups = []EnrollmentGroup{{EnrollmentGroupID: "base", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}}}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	c := newSvcClient(t, run, DefaultServicePolicy, ownerKey)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for w := range 4 {
		wg.Go(func() {
			for i := range 15 {
				id := fmt.Sprintf("cc-%d-%d", w, i)
				if ctx.Err() != nil {
					return
				}
				items := []any{symEnrollment(id, b64(keyA))}
				if r, err := c.try("POST", "/enrollments", map[string]any{"mode": "create", "enrollments": items}, nil); err != nil || r.status != 200 {
					t.Errorf("bulk %s: %v %v", id, r, err)
					return
				}
				grp := map[string]any{"enrollmentGroupId": fmt.Sprintf("g-%d", w), "attestation": map[string]any{"type": "symmetricKey"}}
				_, _ = c.try("PUT", "/enrollmentGroups/g-"+fmt.Sprint(w), grp, map[string]string{"If-Match": "*"})
			}
		})
		wg.Go(func() {
			for i := range 15 {
				id := fmt.Sprintf("gd-%d-%d", w, i)
				d := newRawDevice(t, run, id, nil, dps.DeriveDeviceKeyBytes(groupKey, id))
				if fin := d.registerAndWait(); fin.op(t).Status != dps.StatusAssigned {
					t.Errorf("%s: %s", id, fin.body)
				}
			}
		})
	}
	wg.Wait()
	for w := range 4 {
		for i := range 15 {
			id := fmt.Sprintf("cc-%d-%d", w, i)
			if op := newRawDevice(t, run, id, nil, keyA).registerAndWait().op(t); op.Status != dps.StatusAssigned {
				t.Errorf("%s: %+v", id, op)
			}
		}
	}
	if st := sim.Stats(); st.EnrollmentCreates != 60 || st.Registers != 120 {
		t.Errorf("stats: %d creates, %d registers, want 60 and 120", st.EnrollmentCreates, st.Registers)
	}
}

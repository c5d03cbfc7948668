package dpssim

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// newDPSClient is the project's DPS client pointed at the simulator.
func newDPSClient(t *testing.T, run *Running, apiVersion string) *dps.Client {
	t.Helper()
	c, err := dps.NewClient(dps.Config{Endpoint: run.URL, IDScope: testScope, RootCAs: run.CAPool, APIVersion: apiVersion})
	if err != nil {
		t.Fatalf("dps.NewClient: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// provision registers d and polls until the operation is final, like the
// batch runner does.
func provision(t *testing.T, c *dps.Client, d *dps.Device, payload json.RawMessage) (*dps.RegistrationOperationStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Register(ctx, d, payload)
	if err != nil {
		return nil, err
	}
	if resp.HTTPStatus != 202 || resp.Operation.Status != dps.StatusAssigning || resp.RequestID == "" {
		t.Errorf("register response = %d %+v (request id %q), want 202 assigning with a request id", resp.HTTPStatus, resp.Operation, resp.RequestID)
	}
	op := resp.Operation
	for !op.Status.Final() {
		if resp, err = c.OperationStatus(ctx, d, op.OperationID); err != nil {
			return nil, err
		}
		op = resp.Operation
	}
	return op, nil
}

// TestDPSClientEveryAttestation is the acceptance test of the issue: the
// dps client registers against the simulator for every attestation type.
func TestDPSClientEveryAttestation(t *testing.T) {
	p := pki()
	indLeaf := mustDevice(t, p.otherRoot, "c-x509-ind")
	cfg := Config{
		IDScope:           testScope,
		RetryAfterSeconds: new(int),
		Certificates: []CACertificate{
			{Name: "inter", PEM: caPEM(p.inter), Verified: true},
			{Name: "root", PEM: caPEM(p.root), Verified: true},
		},
		Individual: []IndividualEnrollment{
			{RegistrationID: "c-x509-ind", Attestation: Attestation{X509: &X509Attestation{Certificate: leafPEM(indLeaf)}}},
			{RegistrationID: "c-sas-ind", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(keyA), SecondaryKey: b64(keyB)}}},
		},
		Groups: []EnrollmentGroup{
			{EnrollmentGroupID: "by-inter", Attestation: Attestation{X509: &X509Attestation{CACertificate: "inter"}}},
			{EnrollmentGroupID: "by-root", Attestation: Attestation{X509: &X509Attestation{CACertificate: "root"}}},
			{EnrollmentGroupID: "sas-group", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}},
		},
	}
	sim := mustNew(t, cfg)
	run := mustStart(t, sim)
	rootOnly := mustStart(t, mustNew(t, Config{IDScope: testScope, RetryAfterSeconds: new(int),
		Certificates: cfg.Certificates[1:], Groups: cfg.Groups[1:2]}))

	tests := []struct {
		name      string
		run       *Running
		device    *dps.Device
		wantGroup string
	}{
		{"X.509 individual", run, dps.NewX509Device("c-x509-ind", leafOnly(indLeaf).TLSCertificate()), ""},
		{"X.509 group via intermediate", run, dps.NewX509Device("c-inter", mustDevice(t, p.inter, "c-inter").TLSCertificate()), "by-inter"},
		{"X.509 group via verified root, chain presented", rootOnly, dps.NewX509Device("c-root", mustDevice(t, p.inter, "c-root").TLSCertificate()), "by-root"},
		{"symmetric key individual", run, dps.NewSymmetricKeyDevice("c-sas-ind", keyB), ""},
		{"symmetric key group", run, dps.NewSymmetricKeyDevice("c-sas-7", dps.DeriveDeviceKeyBytes(groupKey, "c-sas-7")), "sas-group"},
	}
	for _, apiVersion := range []string{"", "2019-03-31"} {
		for _, tt := range tests {
			t.Run(tt.name+" "+apiVersion, func(t *testing.T) {
				c := newDPSClient(t, tt.run, apiVersion)
				defer tt.device.Close()
				op, err := provision(t, c, tt.device, json.RawMessage(`{"model":"x1"}`))
				if err != nil {
					t.Fatalf("provision %s: %v", tt.device, err)
				}
				rs := op.RegistrationState
				if op.Status != dps.StatusAssigned || rs == nil || rs.AssignedHub == "" || rs.DeviceID != tt.device.RegistrationID {
					t.Fatalf("final = %+v, want assigned with hub and device id", op)
				}
				var gotGroup string
				switch {
				case rs.X509 != nil:
					gotGroup = rs.X509.EnrollmentGroupID
				case rs.SymmetricKey != nil:
					gotGroup = rs.SymmetricKey.EnrollmentGroupID
				}
				if gotGroup != tt.wantGroup {
					t.Errorf("enrollment group = %q, want %q", gotGroup, tt.wantGroup)
				}
				lk, err := c.RegistrationStatus(context.Background(), tt.device)
				if err != nil || lk.Registration.Status != dps.StatusAssigned || lk.Registration.AssignedHub != rs.AssignedHub {
					t.Errorf("RegistrationStatus = %+v, %v; want assigned to %s", lk, err, rs.AssignedHub)
				}
			})
		}
	}
}

// TestDPSClientErrors: the simulator's refusals reach the dps client as
// typed errors with DPS's codes and the right classification.
func TestDPSClientErrors(t *testing.T) {
	p := pki()
	clk := newFakeClock()
	sim := mustNew(t, Config{IDScope: testScope,
		Certificates: []CACertificate{{Name: "root", PEM: caPEM(p.root)}}, // not verified
		Groups: []EnrollmentGroup{
			{EnrollmentGroupID: "by-root", Attestation: Attestation{X509: &X509Attestation{CACertificate: "root"}}},
			{EnrollmentGroupID: "sas-group", Attestation: Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: b64(groupKey)}}},
		},
		Quotas: Quotas{RegistrationsPerMinute: 1},
	})
	sim.Now = clk.Now
	run := mustStart(t, sim)
	c := newDPSClient(t, run, "")
	ctx := context.Background()
	member := func(id string) *dps.Device {
		return dps.NewSymmetricKeyDevice(id, dps.DeriveDeviceKeyBytes(groupKey, id))
	}

	// Lookup before registering: 404201, permanent.
	_, err := c.RegistrationStatus(ctx, member("e-1"))
	var de *dps.Error
	if !errors.As(err, &de) || de.HTTPStatus != 404 || de.Code != dps.CodeNotFound || dps.Classify(err) != dps.Permanent {
		t.Errorf("lookup before register: %v, want a permanent 404201 *dps.Error", err)
	}
	if _, err := provision(t, c, member("e-1"), nil); err != nil {
		t.Fatalf("first registration: %v", err)
	}
	// Over quota: 429, retryable, with Retry-After.
	_, err = c.Register(ctx, member("e-2"), nil)
	if !errors.As(err, &de) || de.HTTPStatus != 429 || dps.Classify(err) != dps.Retryable || dps.RetryAfter(err) != time.Minute {
		t.Errorf("register over quota: %v (retry after %s), want a retryable 429 with Retry-After 60s", err, dps.RetryAfter(err))
	}
	// Unverified root: 401002, permanent, and the request id travels.
	dev := dps.NewX509Device("e-3", mustDevice(t, p.inter, "e-3").TLSCertificate())
	defer dev.Close()
	_, err = c.Register(ctx, dev, nil)
	if !errors.As(err, &de) || de.HTTPStatus != 401 || de.Code != dps.CodeInvalidCredentials || dps.Classify(err) != dps.Permanent || de.TrackingID == "" {
		t.Errorf("unverified root: %v, want a permanent 401002 with a tracking id", err)
	}
	// Wrong key.
	_, err = c.Register(ctx, dps.NewSymmetricKeyDevice("e-4", keyA), nil)
	if !errors.As(err, &de) || de.Code != dps.CodeInvalidCredentials {
		t.Errorf("wrong key: %v, want 401002", err)
	}
	if ri, _ := sim.Registration("e-1"); ri.Registers != 1 {
		t.Errorf("e-1 registered %d times, want 1", ri.Registers)
	}
}

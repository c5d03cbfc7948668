package main

import (
	"fmt"
	"path/filepath"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
)

// writeFleetSimConfig writes DIR/sim.json: a simulator configuration for a
// fleet made by "certs fleet" — the given ID scope and one X.509 enrollment
// group whose CA (caCertPEM, the fleet's root or intermediate) is uploaded
// and verified, so "dps-batch sim --config DIR/sim.json" accepts every
// device of the fleet. An existing file is replaced only when force is set.
// It returns the path written.
func writeFleetSimConfig(dir, idScope string, caCertPEM []byte, force bool) (string, error) {
	return writeIssuingFleetSimConfig(dir, idScope, caCertPEM, nil, force)
}

// writeIssuingFleetSimConfig is writeFleetSimConfig for a fleet made with
// --issue: with issuance not nil, the configuration also has the fleet's
// credential policy, and the enrollment group names it.
func writeIssuingFleetSimConfig(dir, idScope string, caCertPEM []byte, issuance *fleetIssuance, force bool) (string, error) {
	path := filepath.Join(dir, "sim.json")
	cfg := dpssim.FleetConfig(idScope, caCertPEM)
	if issuance != nil {
		if err := dpssim.WriteConfig(path, issuance.apply(cfg), force); err != nil {
			return "", err
		}
		return path, nil
	}
	if err := dpssim.WriteConfig(path, cfg, force); err != nil {
		return "", err
	}
	return path, nil
}

// Defaults of the credential policy "certs fleet --issue" configures.
const (
	defaultFleetCredentialPolicy = "fleet-policy"
	fleetIssuedValidityDays      = 30 // within the preview's 7 to 90 days
)

// fleetIssuance is what "certs fleet --issue" adds to a fleet's simulator
// configuration: a credential policy issuing from the fleet's P-384 CA,
// named by every enrollment of the fleet.
type fleetIssuance struct {
	policy       string // the credential policy's name
	certFile     string // the issuing CA then its chain (PEM), relative to the configuration's folder
	keyFile      string // the issuing CA's key, relative to the configuration's folder
	validityDays int
}

// newFleetIssuance describes fleet's issuing CA as a credential policy
// named policy, or returns nil for a fleet made without --issue.
func newFleetIssuance(fleet *certs.Fleet, policy string) (*fleetIssuance, error) {
	if fleet.IssuingCA == nil {
		return nil, nil
	}
	rel := func(path string) (string, error) {
		r, err := filepath.Rel(fleet.Dir, path)
		if err != nil {
			return "", fmt.Errorf("simulator config: %w", err)
		}
		return filepath.ToSlash(r), nil
	}
	certFile, err := rel(fleet.IssuingChainPath)
	if err != nil {
		return nil, err
	}
	keyFile, err := rel(fleet.IssuingCAKeyPath)
	if err != nil {
		return nil, err
	}
	return &fleetIssuance{policy: policy, certFile: certFile, keyFile: keyFile, validityDays: fleetIssuedValidityDays}, nil
}

// apply returns cfg with the credential policy added and named by every
// enrollment group and individual enrollment. cfg's slices are copied, not
// changed.
func (is *fleetIssuance) apply(cfg dpssim.Config) dpssim.Config {
	cfg.CredentialPolicies = append(append([]dpssim.CredentialPolicy(nil), cfg.CredentialPolicies...), dpssim.CredentialPolicy{
		Name:            is.policy,
		CertificateFile: is.certFile,
		KeyFile:         is.keyFile,
		ValidityDays:    is.validityDays,
	})
	cfg.Groups = append([]dpssim.EnrollmentGroup(nil), cfg.Groups...)
	for i := range cfg.Groups {
		cfg.Groups[i].CredentialPolicyName = is.policy
	}
	cfg.Individual = append([]dpssim.IndividualEnrollment(nil), cfg.Individual...)
	for i := range cfg.Individual {
		cfg.Individual[i].CredentialPolicyName = is.policy
	}
	return cfg
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
		if err := writeCheckedSimConfig(path, issuance.apply(cfg), false, force); err != nil {
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

// writeCheckedSimConfig writes cfg to path as dpssim.WriteConfig does, for
// a configuration with file references (a credential policy's CA files,
// relative to path's folder), which only dpssim.LoadConfig resolves: the
// JSON goes to a temporary file in the same folder, is loaded from there
// exactly as "dps-batch sim --config" will load it, and only then renamed
// into place. secret makes it owner-only (0600), for configurations that
// hold keys; otherwise it is 0644. An existing file is replaced only when
// force is set.
func writeCheckedSimConfig(path string, cfg dpssim.Config, secret, force bool) (err error) {
	if !force {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s %w (use --force to overwrite)", path, certs.ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("simulator config: %w", err)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(cfg); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	mode := fs.FileMode(0o644)
	if secret {
		mode = 0o600
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".sim.json.tmp*")
	if err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	if _, err := dpssim.LoadConfig(tmp.Name()); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	return nil
}

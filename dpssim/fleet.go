package dpssim

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Names FleetConfig gives the CA certificate and the enrollment group.
const (
	FleetCAName  = "fleet-ca"
	FleetGroupID = "fleet"
)

// FleetConfig returns a configuration that accepts every device whose
// certificate chains to caPEM (a fleet's intermediate or root): the ID
// scope, the default hubs, caPEM uploaded and verified, and one X.509
// enrollment group on it. Quotas and the retry interval are spelled out
// (at DPS's values) so the written file shows the knobs.
func FleetConfig(idScope string, caPEM []byte) Config {
	retry := DefaultRetryAfterSeconds
	return Config{
		IDScope:           idScope,
		Hubs:              append([]string(nil), DefaultHubs...),
		Allocation:        AllocationHashed,
		Certificates:      []CACertificate{{Name: FleetCAName, PEM: string(caPEM), Verified: true}},
		Individual:        []IndividualEnrollment{},
		Groups:            []EnrollmentGroup{{EnrollmentGroupID: FleetGroupID, Attestation: Attestation{X509: &X509Attestation{CACertificate: FleetCAName}}}},
		RetryAfterSeconds: &retry,
		Quotas:            Quotas{RegistrationsPerMinute: DefaultRegistrationsPerMinute, PollsPer10sPerDevice: DefaultPollsPer10sPerDevice},
	}
}

// MarkCertificateVerified completes proof of possession offline: it checks
// that vc (the verification certificate) has the simulator's verification
// code for the CA certificate named name as its CN and is signed by that
// CA's key, then rewrites the configuration file at path with the
// certificate's "verified" set to true. Other content is kept; keys are
// rewritten in sorted order.
func MarkCertificateVerified(path, name string, vc *x509.Certificate, now time.Time) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	in, err := compile(*cfg)
	if err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	ca := in.caByName[name]
	if ca == nil {
		return fmt.Errorf("simulator config %s: no certificate named %q in certificates", path, name)
	}
	if err := verifyPossession(ca, vc, now); err != nil {
		return fmt.Errorf("verify CA certificate %q: %w", name, err)
	}
	// Edit the file's own JSON, so file references stay references.
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(doc["certificates"], &list); err != nil {
		return fmt.Errorf("simulator config %s: certificates: %w", path, err)
	}
	for _, c := range list {
		var n string
		if json.Unmarshal(c["name"], &n) == nil && n == name {
			c["verified"] = json.RawMessage("true")
		}
	}
	if doc["certificates"], err = json.Marshal(list); err != nil {
		return err
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(out, '\n'), false) // keeps the file's mode
}

// writeFileAtomic replaces path with data through a temporary file in the
// same directory, keeping the file's mode.
func writeFileAtomic(path string, data []byte, secret bool) error {
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	if secret {
		// Symmetric keys: readable by the owner only, whatever it was.
		mode = 0o600
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteConfig writes cfg as indented JSON to path, atomically, after
// checking it as "dps-batch sim --config path" will load it: file
// references (certificateFile, keyFile, ...) are read relative to path's
// folder. A configuration that holds keys is written owner-only (0600). An
// existing file is replaced only when force is set.
func WriteConfig(path string, cfg Config, force bool) error {
	if !force {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("%s already exists: use --force to overwrite it", path)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(cfg); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	// Check a copy decoded from the JSON, so that reading the files it
	// names changes nothing of cfg.
	var check Config
	if err := json.Unmarshal(buf.Bytes(), &check); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	if err := check.readFiles(filepath.Dir(path)); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	if _, err := compile(check); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("simulator config: %w", err)
	}
	return writeFileAtomic(path, buf.Bytes(), hasKeys(cfg))
}

// hasKeys reports whether cfg holds symmetric keys or a credential
// policy's CA key.
func hasKeys(cfg Config) bool {
	for _, cp := range cfg.CredentialPolicies {
		if cp.Key != "" {
			return true
		}
	}
	for _, e := range cfg.Individual {
		if e.Attestation.SymmetricKey != nil {
			return true
		}
	}
	for _, g := range cfg.Groups {
		if g.Attestation.SymmetricKey != nil {
			return true
		}
	}
	return false
}

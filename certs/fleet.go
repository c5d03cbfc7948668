package certs

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Chain layouts for a fleet.
const (
	ChainRoot         = "root"         // devices are issued by the root
	ChainIntermediate = "intermediate" // devices are issued by an intermediate under the root; the default
)

// How a fleet's devices attest (FleetOptions.Attestation), as DPS names
// the enrollment kinds.
const (
	// AttestationX509 devices hold a certificate issued by the fleet's CA,
	// for an X.509 enrollment group on that CA; the default.
	AttestationX509 = "x509"
	// AttestationSymmetricGroup devices belong to a symmetric-key
	// enrollment group: the fleet has one random group key, and each
	// device's key is derived from it and its registration id.
	AttestationSymmetricGroup = "symmetric-group"
	// AttestationSymmetricIndividual devices each have an individual
	// enrollment with their own random key.
	AttestationSymmetricIndividual = "symmetric-individual"
)

// Attestations lists the fleet attestation kinds, default first.
var Attestations = []string{AttestationX509, AttestationSymmetricGroup, AttestationSymmetricIndividual}

// SymmetricKeySize is the length of the random keys a symmetric fleet
// gets, in bytes: 32, what DPS generates.
const SymmetricKeySize = 32

// Manifest headers of the fleet kinds.
var (
	manifestHeader           = []string{"registration_id", "cert_path", "key_path", "chain_path"}
	groupManifestHeader      = []string{"registration_id"}
	individualManifestHeader = []string{"registration_id", "symmetric_key"}
	// issueManifestColumns follow the columns of the kind in a fleet made
	// with FleetOptions.Issue.
	issueManifestColumns = []string{"csr_key_path", "issued_cert_path"}
)

// Folders of a fleet made with FleetOptions.Issue, relative to its Dir.
const (
	FleetIssuingDir = "issuing"  // the P-384 CA that issues operational certificates
	FleetCSRKeyDir  = "csr-keys" // one P-384 operational key per device (folder 0700, keys 0600)
	FleetIssuedDir  = "issued"   // where the issued chains go, one per device; made empty
)

// CN of a fleet's issuing CAs (FleetOptions.Issue).
const (
	fleetIssuingRootCN = "dps-batch Test Issuing Root CA (P-384)"
	fleetIssuingCACN   = "dps-batch Test Issuing CA (P-384)"
)

// FleetOptions describes a fleet of test devices to generate.
type FleetOptions struct {
	// Dir is the output directory; it is created if needed.
	Dir string
	// Count is the number of devices; it must be positive.
	Count int
	// Prefix starts every registration id; "" means "dev-". Ids are the
	// prefix followed by the 1-based index zero-padded to the width of
	// Count, at least 5 digits: dev-00001.
	Prefix string
	// Attestation is AttestationX509, AttestationSymmetricGroup or
	// AttestationSymmetricIndividual; "" means AttestationX509. Chain,
	// KeyType and Validity apply to X.509 fleets only; Workers and
	// Progress to X.509 fleets and to fleets with Issue.
	Attestation string
	// Issue prepares the fleet for certificates issued by DPS at
	// registration (device API 2025-07-01-preview), with any attestation:
	// a P-384 operational key per device (the key its CSR is made with), a
	// P-384 issuing CA (root and intermediate) for a simulator credential
	// policy, and the manifest columns csr_key_path and issued_cert_path.
	Issue bool
	// Chain is ChainRoot or ChainIntermediate; "" means ChainIntermediate.
	Chain string
	// KeyType is used for every key in the fleet; "" means ECDSAP256.
	KeyType KeyType
	// Validity applies to every certificate; zero means the defaults
	// (DefaultCAValidity for CAs, DefaultLeafValidity for devices).
	Validity time.Duration
	// Force allows overwriting existing files. Without it, any existing
	// output file stops the run before anything is written.
	Force bool
	// Workers bounds how many devices are generated at once; 0 means
	// runtime.GOMAXPROCS(0).
	Workers int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Progress, if set, is called after each device's files are written
	// with the number of devices done so far. It is called from several
	// goroutines at once and must be quick.
	Progress func(done int)
}

// Fleet describes a generated fleet. Paths include Dir. It holds keys:
// never print, log or encode it.
type Fleet struct {
	Dir                  string // the output directory
	Attestation          string // the FleetOptions.Attestation kind, default filled in
	ManifestPath         string // DIR/manifest.csv
	RootCertPath         string // DIR/ca/root.pem; "" for symmetric fleets
	RootKeyPath          string // DIR/ca/root.key; "" for symmetric fleets
	IntermediateCertPath string // DIR/ca/intermediate.pem; "" when Chain is ChainRoot, and for symmetric fleets
	IntermediateKeyPath  string // DIR/ca/intermediate.key; "" when Chain is ChainRoot, and for symmetric fleets
	GroupKeyPath         string // DIR/group.key (mode 0600): the base64 group key; symmetric-group fleets only

	// With FleetOptions.Issue only ("" and nil otherwise):
	IssuingRootCertPath string // DIR/issuing/root.pem: the root the issued chains verify to
	IssuingRootKeyPath  string // DIR/issuing/root.key
	IssuingCACertPath   string // DIR/issuing/intermediate.pem: the CA that issues device certificates
	IssuingCAKeyPath    string // DIR/issuing/intermediate.key: its key (EC P-384), a credential policy's keyFile
	IssuingChainPath    string // DIR/issuing/chain.pem: intermediate then root, a credential policy's certificateFile
	CSRKeyDir           string // DIR/csr-keys: the devices' operational keys, <id>.key
	IssuedDir           string // DIR/issued: where provisioning writes each issued chain, <id>.pem
	IssuingCA           *CA    // the issuing intermediate, with its key
	// Root is the fleet's root CA; nil for symmetric fleets.
	Root *CA
	// GroupCA is the CA an enrollment group should reference: the
	// intermediate, or the root when Chain is ChainRoot; nil for symmetric
	// fleets.
	GroupCA *CA
	// GroupKey is the raw group key of a symmetric-group fleet (the
	// enrollment group's primary key, base64-decoded); nil otherwise.
	GroupKey []byte `json:"-"`
	// DeviceKeys are the raw keys of a symmetric-individual fleet, in the
	// order of RegistrationIDs; nil otherwise.
	DeviceKeys [][]byte `json:"-"`
	// RegistrationIDs lists the devices in manifest order. It is held in
	// memory (about 40 bytes a device) because callers such as the demo
	// and tests want it; the manifest holds the same list.
	RegistrationIDs []string
}

// fleetPlan is a validated FleetOptions.
type fleetPlan struct {
	FleetOptions
	width int
}

func (p *fleetPlan) id(i int) string {
	s := strconv.Itoa(i + 1)
	for len(s) < p.width {
		s = "0" + s
	}
	return p.Prefix + s
}

// GenerateFleet creates a root CA, optionally an intermediate, and Count
// device certificates, and writes them with a manifest:
//
//	DIR/ca/root.pem, DIR/ca/root.key
//	DIR/ca/intermediate.pem, DIR/ca/intermediate.key   (chain "intermediate")
//	DIR/devices/<id>.pem, DIR/devices/<id>.key         (the leaf alone; key PKCS#8, mode 0600)
//	DIR/manifest.csv   registration_id,cert_path,key_path,chain_path
//
// Manifest paths are relative to DIR, with forward slashes; chain_path is
// ca/intermediate.pem for chain "intermediate" and empty for chain "root".
// Devices are generated by a bounded pool of workers. The manifest is
// written last (an existing one is removed first when forcing), so a fleet
// with a manifest is complete. Cancelling ctx stops the run with ctx's error.
//
// Symmetric-key fleets have no certificates. A symmetric-group fleet is
//
//	DIR/group.key      the random group key, base64 on one line (mode 0600)
//	DIR/manifest.csv   registration_id (rows without credentials: group devices)
//
// and a symmetric-individual fleet is one file, holding every device's
// random key (mode 0600, as it holds keys):
//
//	DIR/manifest.csv   registration_id,symmetric_key
//
// The keys are in the returned Fleet too, for a simulator configuration.
//
// With Issue, any kind of fleet also gets what certificate issuance at
// registration needs:
//
//	DIR/issuing/root.pem, root.key                  a P-384 root CA
//	DIR/issuing/intermediate.pem, intermediate.key  the P-384 CA that issues (a credential policy's key)
//	DIR/issuing/chain.pem                           intermediate then root (a credential policy's certificate)
//	DIR/csr-keys/<id>.key                           each device's P-384 operational key (mode 0600, folder 0700)
//	DIR/issued/                                     an empty folder for the issued chains
//
// and two more manifest columns: csr_key_path (csr-keys/<id>.key) and
// issued_cert_path (issued/<id>.pem).
func GenerateFleet(ctx context.Context, opts FleetOptions) (*Fleet, error) {
	p, err := planFleet(opts)
	if err != nil {
		return nil, err
	}
	if p.Attestation != AttestationX509 {
		return generateSymmetricFleet(ctx, p)
	}
	fl := &Fleet{
		Attestation:  p.Attestation,
		Dir:          p.Dir,
		ManifestPath: filepath.Join(p.Dir, "manifest.csv"),
		RootCertPath: filepath.Join(p.Dir, "ca", "root.pem"),
		RootKeyPath:  filepath.Join(p.Dir, "ca", "root.key"),
	}
	if p.Chain == ChainIntermediate {
		fl.IntermediateCertPath = filepath.Join(p.Dir, "ca", "intermediate.pem")
		fl.IntermediateKeyPath = filepath.Join(p.Dir, "ca", "intermediate.key")
	}
	devDir := filepath.Join(p.Dir, "devices")
	p.issuePaths(fl)

	// Refuse before writing anything, so a refused run leaves no trace.
	if !p.Force {
		for _, path := range []string{fl.ManifestPath, fl.RootCertPath, fl.RootKeyPath, fl.IntermediateCertPath, fl.IntermediateKeyPath} {
			if path == "" {
				continue
			}
			if err := checkAbsent(path); err != nil {
				return nil, err
			}
		}
		if err := p.checkIssueAbsent(fl); err != nil {
			return nil, err
		}
		for i := range p.Count {
			id := p.id(i)
			for _, path := range []string{filepath.Join(devDir, id+".pem"), filepath.Join(devDir, id+".key")} {
				if err := checkAbsent(path); err != nil {
					return nil, err
				}
			}
		}
	} else if err := os.Remove(fl.ManifestPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove old manifest: %w", err)
	}

	caOpts := Options{KeyType: p.KeyType, Validity: p.Validity, Now: p.Now}
	fl.Root, err = NewRoot("dps-batch Test Root CA", caOpts)
	if err != nil {
		return nil, err
	}
	if _, err := WriteCA(filepath.Join(p.Dir, "ca"), fl.Root, "root", p.Force); err != nil {
		return nil, err
	}
	fl.GroupCA = fl.Root
	chainPath := ""
	if p.Chain == ChainIntermediate {
		fl.GroupCA, err = fl.Root.NewIntermediate("dps-batch Test Intermediate CA", caOpts)
		if err != nil {
			return nil, err
		}
		if _, err := WriteCA(filepath.Join(p.Dir, "ca"), fl.GroupCA, "intermediate", p.Force); err != nil {
			return nil, err
		}
		chainPath = "ca/intermediate.pem"
	}

	if err := p.writeIssuingCA(fl); err != nil {
		return nil, err
	}

	fl.RegistrationIDs = make([]string, p.Count)
	for i := range fl.RegistrationIDs {
		fl.RegistrationIDs[i] = p.id(i)
	}
	if err := os.MkdirAll(devDir, dirMode); err != nil {
		return nil, fmt.Errorf("create %s: %w", devDir, err)
	}
	devOpts := Options{KeyType: p.KeyType, Validity: p.Validity, Now: p.Now}
	err = p.forEachDevice(ctx, fl, func(id string) error {
		leaf, err := fl.GroupCA.NewDevice(id, devOpts)
		if err != nil {
			return err
		}
		if _, err := WriteLeaf(devDir, leaf, id, false, p.Force); err != nil {
			return fmt.Errorf("device %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	header := manifestHeader
	if p.Issue {
		header = slices.Concat(header, issueManifestColumns)
	}
	err = writeStream(fl.ManifestPath, certFileMode, p.Force, func(w io.Writer) error {
		cw := csv.NewWriter(w)
		if err := cw.Write(header); err != nil {
			return err
		}
		row := make([]string, 0, len(header))
		for _, id := range fl.RegistrationIDs {
			row = append(row[:0], id, "devices/"+id+".pem", "devices/"+id+".key", chainPath)
			if p.Issue {
				row = append(row, issueColumns(id)...)
			}
			if err := cw.Write(row); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	})
	if err != nil {
		return nil, err
	}
	return fl, nil
}

// planFleet validates opts and fills in defaults.
func planFleet(opts FleetOptions) (*fleetPlan, error) {
	p := &fleetPlan{FleetOptions: opts}
	if p.Dir == "" {
		return nil, errors.New("fleet: output directory is empty")
	}
	if p.Count <= 0 {
		return nil, fmt.Errorf("fleet: device count %d must be positive", p.Count)
	}
	if p.Prefix == "" {
		p.Prefix = "dev-"
	}
	switch p.Attestation {
	case "":
		p.Attestation = AttestationX509
	case AttestationX509, AttestationSymmetricGroup, AttestationSymmetricIndividual:
	default:
		return nil, fmt.Errorf("fleet: unknown attestation %q (want %s)", p.Attestation, strings.Join(Attestations, ", "))
	}
	switch p.Chain {
	case "":
		p.Chain = ChainIntermediate
	case ChainRoot, ChainIntermediate:
	default:
		return nil, fmt.Errorf("fleet: unknown chain %q (want %s or %s)", p.Chain, ChainRoot, ChainIntermediate)
	}
	kt, err := ParseKeyType(string(p.KeyType))
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	p.KeyType = kt
	if p.Validity < 0 {
		return nil, fmt.Errorf("fleet: validity %v is negative", p.Validity)
	}
	if p.Workers <= 0 {
		p.Workers = runtime.GOMAXPROCS(0)
	}
	p.width = max(5, len(strconv.Itoa(p.Count)))
	// Every id has the same length and differs only in digits, so checking
	// the first one checks the prefix for all.
	if err := ValidateRegistrationID(p.id(0)); err != nil {
		return nil, fmt.Errorf("fleet: prefix %q: %w", p.Prefix, err)
	}
	return p, nil
}

// generateSymmetricFleet writes a symmetric-key fleet: random keys, the
// group key file for a group, and the manifest last.
func generateSymmetricFleet(ctx context.Context, p *fleetPlan) (*Fleet, error) {
	fl := &Fleet{
		Attestation:  p.Attestation,
		Dir:          p.Dir,
		ManifestPath: filepath.Join(p.Dir, "manifest.csv"),
	}
	if p.Attestation == AttestationSymmetricGroup {
		fl.GroupKeyPath = filepath.Join(p.Dir, "group.key")
	}
	p.issuePaths(fl)
	if !p.Force {
		for _, path := range []string{fl.ManifestPath, fl.GroupKeyPath} {
			if path == "" {
				continue
			}
			if err := checkAbsent(path); err != nil {
				return nil, err
			}
		}
		if err := p.checkIssueAbsent(fl); err != nil {
			return nil, err
		}
	} else if err := os.Remove(fl.ManifestPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove old manifest: %w", err)
	}
	if err := os.MkdirAll(p.Dir, dirMode); err != nil {
		return nil, fmt.Errorf("create %s: %w", p.Dir, err)
	}

	fl.RegistrationIDs = make([]string, p.Count)
	for i := range fl.RegistrationIDs {
		fl.RegistrationIDs[i] = p.id(i)
	}
	header, mode := groupManifestHeader, certFileMode // no key in a group manifest
	if p.Attestation == AttestationSymmetricGroup {
		fl.GroupKey = make([]byte, SymmetricKeySize)
		if _, err := rand.Read(fl.GroupKey); err != nil {
			return nil, fmt.Errorf("fleet: group key: %w", err)
		}
		line := base64.StdEncoding.EncodeToString(fl.GroupKey) + "\n"
		if err := writeFiles(p.Force, file{fl.GroupKeyPath, []byte(line), keyFileMode}); err != nil {
			return nil, err
		}
	} else {
		header, mode = individualManifestHeader, keyFileMode
		fl.DeviceKeys = make([][]byte, p.Count)
		keys := make([]byte, p.Count*SymmetricKeySize) // one allocation for the fleet
		if _, err := rand.Read(keys); err != nil {
			return nil, fmt.Errorf("fleet: device keys: %w", err)
		}
		for i := range fl.DeviceKeys {
			fl.DeviceKeys[i] = keys[i*SymmetricKeySize : (i+1)*SymmetricKeySize : (i+1)*SymmetricKeySize]
		}
	}
	if err := p.writeIssuingCA(fl); err != nil {
		return nil, err
	}
	if p.Issue {
		// Only the operational keys are made per device.
		if err := p.forEachDevice(ctx, fl, nil); err != nil {
			return nil, err
		}
		header = slices.Concat(header, issueManifestColumns)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fleet stopped before its manifest: %w", err)
	}
	err := writeStream(fl.ManifestPath, mode, p.Force, func(w io.Writer) error {
		cw := csv.NewWriter(w)
		if err := cw.Write(header); err != nil {
			return err
		}
		row := make([]string, len(header))
		for i, id := range fl.RegistrationIDs {
			row[0] = id
			if fl.DeviceKeys != nil {
				row[1] = base64.StdEncoding.EncodeToString(fl.DeviceKeys[i])
			}
			if p.Issue {
				copy(row[len(row)-len(issueManifestColumns):], issueColumns(id))
			}
			if err := cw.Write(row); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	})
	if err != nil {
		return nil, err
	}
	return fl, nil
}

// forEachDevice runs device for every registration id of fl with a
// bounded pool of workers, and with Issue also writes each device's
// operational key (then syncs the key folder once, rather than once a key).
// device may be nil. The first error cancels the rest.
func (p *fleetPlan) forEachDevice(ctx context.Context, fl *Fleet, device func(id string) error) error {
	ids := fl.RegistrationIDs
	if p.Issue {
		if err := mkdirDurable(fl.CSRKeyDir, csrDirMode); err != nil {
			return err
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	var next, done atomic.Int64
	for range min(p.Workers, len(ids)) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return nil
				}
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("fleet stopped after %d of %d devices: %w", done.Load(), len(ids), err)
				}
				if device != nil {
					if err := device(ids[i]); err != nil {
						return err
					}
				}
				if p.Issue {
					if err := p.writeCSRKey(fl, ids[i]); err != nil {
						return err
					}
				}
				n := done.Add(1)
				if p.Progress != nil {
					p.Progress(int(n))
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if p.Issue {
		return syncDir(fl.CSRKeyDir)
	}
	return nil
}

// writeCSRKey writes a new P-384 operational key for id. Like every fleet
// file it refuses to replace an existing key unless forcing.
func (p *fleetPlan) writeCSRKey(fl *Fleet, id string) error {
	key, err := GenerateCSRKey()
	if err != nil {
		return fmt.Errorf("device %s: %w", id, err)
	}
	data, err := KeyPEM(key)
	if err != nil {
		return fmt.Errorf("device %s: %w", id, err)
	}
	if err := writeFiles(p.Force, file{filepath.Join(fl.CSRKeyDir, id+".key"), data, keyFileMode}); err != nil {
		return fmt.Errorf("device %s: %w", id, err)
	}
	return nil
}

// issueColumns are the values of issueManifestColumns for id.
func issueColumns(id string) []string {
	return []string{FleetCSRKeyDir + "/" + id + ".key", FleetIssuedDir + "/" + id + ".pem"}
}

// issuePaths fills in fl's paths for Issue; it does nothing without.
func (p *fleetPlan) issuePaths(fl *Fleet) {
	if !p.Issue {
		return
	}
	dir := filepath.Join(p.Dir, FleetIssuingDir)
	fl.IssuingRootCertPath = filepath.Join(dir, "root.pem")
	fl.IssuingRootKeyPath = filepath.Join(dir, "root.key")
	fl.IssuingCACertPath = filepath.Join(dir, "intermediate.pem")
	fl.IssuingCAKeyPath = filepath.Join(dir, "intermediate.key")
	fl.IssuingChainPath = filepath.Join(dir, "chain.pem")
	fl.CSRKeyDir = filepath.Join(p.Dir, FleetCSRKeyDir)
	fl.IssuedDir = filepath.Join(p.Dir, FleetIssuedDir)
}

// checkIssueAbsent refuses when a file Issue would write exists.
func (p *fleetPlan) checkIssueAbsent(fl *Fleet) error {
	if !p.Issue {
		return nil
	}
	for _, path := range []string{fl.IssuingRootCertPath, fl.IssuingRootKeyPath, fl.IssuingCACertPath, fl.IssuingCAKeyPath, fl.IssuingChainPath} {
		if err := checkAbsent(path); err != nil {
			return err
		}
	}
	for i := range p.Count {
		if err := checkAbsent(filepath.Join(fl.CSRKeyDir, p.id(i)+".key")); err != nil {
			return err
		}
	}
	return nil
}

// writeIssuingCA makes and writes the P-384 issuing root and intermediate
// and the chain file, and the empty folder for issued chains; it does
// nothing without Issue. The CAs get the default CA validity whatever the
// fleet's Validity: they must outlive every certificate issued from them.
func (p *fleetPlan) writeIssuingCA(fl *Fleet) error {
	if !p.Issue {
		return nil
	}
	opts := Options{KeyType: ECDSAP384, Now: p.Now}
	root, err := NewRoot(fleetIssuingRootCN, opts)
	if err != nil {
		return err
	}
	ca, err := root.NewIntermediate(fleetIssuingCACN, opts)
	if err != nil {
		return err
	}
	dir := filepath.Dir(fl.IssuingChainPath)
	if _, err := WriteCA(dir, root, "root", p.Force); err != nil {
		return err
	}
	if _, err := WriteCA(dir, ca, "intermediate", p.Force); err != nil {
		return err
	}
	if err := WriteCertFile(fl.IssuingChainPath, p.Force, ca.Cert, root.Cert); err != nil {
		return err
	}
	if err := os.MkdirAll(fl.IssuedDir, dirMode); err != nil {
		return fmt.Errorf("create %s: %w", fl.IssuedDir, err)
	}
	fl.IssuingCA = ca
	return nil
}

// writeStream writes path atomically from fill, refusing to replace an
// existing file unless force is set.
func writeStream(path string, mode os.FileMode, force bool, fill func(io.Writer) error) (err error) {
	if !force {
		if err := checkAbsent(path); err != nil {
			return err
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
)

// certsVerb is one "dps-batch certs" subcommand.
type certsVerb struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

func certsVerbs() []certsVerb {
	return []certsVerb{
		{"root", "Create a self-signed root CA", runCertsRoot},
		{"intermediate", "Create an intermediate CA signed by a CA", runCertsIntermediate},
		{"device", "Create a device certificate whose CN is the registration id", runCertsDevice},
		{"verification", "Create a proof-of-possession certificate for a DPS verification code", runCertsVerification},
		{"csr", "Create a P-384 key and a CSR for a certificate DPS issues at registration (preview)", runCertsCSR},
		{"fleet", "Create a test fleet of N devices (X.509 or symmetric keys), its manifest and a simulator config", runCertsFleet},
	}
}

// testCertsWarning goes to stderr after anything is generated.
const testCertsWarning = "warning: these are TEST certificates for development and the local simulator; do not use them in production"

// testKeysWarning goes to stderr after a symmetric-key fleet is generated.
const testKeysWarning = "warning: these are TEST keys for development and the local simulator; do not use them in production"

// runCerts dispatches "dps-batch certs <verb>".
func runCerts(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("dps-batch certs --help", "a subcommand is required: root, intermediate, device, verification, csr or fleet")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		printCertsUsage(e.stdout)
		return errHelpShown
	}
	for _, v := range certsVerbs() {
		if v.name == args[0] {
			return v.run(ctx, e, args[1:])
		}
	}
	return usagef("dps-batch certs --help", "unknown certs subcommand %q (want root, intermediate, device, verification, csr or fleet)", args[0])
}

func printCertsUsage(w io.Writer) {
	fmt.Fprintf(w, `Generate a test PKI for DPS X.509 attestation: CAs, device certificates,
proof-of-possession certificates and whole fleets with a manifest; fleets may
also be of symmetric-key devices (an enrollment group, or individual
enrollments). For certificates DPS issues at registration (preview), "csr"
makes a device's P-384 key and CSR and "fleet --issue" a fleet ready for it.
Keys are written as unencrypted PKCS#8 PEM (or base64) with mode 0600. These
certificates and keys are for tests, demos and the local simulator, not for
production.

Usage:
  dps-batch certs <subcommand> [flags]

Subcommands:
`)
	for _, v := range certsVerbs() {
		fmt.Fprintf(w, "  %-13s %s\n", v.name, v.summary)
	}
	fmt.Fprintf(w, `
Run "dps-batch certs <subcommand> --help" for its flags.

Examples:
  # a fleet of 1000 devices for the local simulator
  dps-batch certs fleet --count 1000 --out ./fleet

  # 200 devices of a symmetric-key enrollment group (group key in ./sensors/group.key)
  dps-batch certs fleet --attestation symmetric-group --count 200 --prefix sensor- --out ./sensors

  # the same, with certificates issued by DPS at registration (P-384 keys, issuing CA)
  dps-batch certs fleet --attestation symmetric-group --count 200 --out ./sensors --issue

  # one device's P-384 operational key and CSR (./csr/dev-0001.key, ./csr/dev-0001.csr)
  dps-batch certs csr --id dev-0001 --out ./csr

  # a root, an intermediate and one device, step by step
  dps-batch certs root --cn "My Test Root" --out ./pki
  dps-batch certs intermediate --cn "My Test Intermediate" --ca ./pki/root.pem --ca-key ./pki/root.key --out ./pki
  dps-batch certs device --id dev-0001 --ca ./pki/intermediate.pem --ca-key ./pki/intermediate.key --out ./pki/devices
`)
}

// keyFlags are the flags shared by every subcommand that makes a key.
type keyFlags struct {
	keyType  string
	validity time.Duration
	force    bool
}

func addKeyFlags(fs *flag.FlagSet, defaultValidity time.Duration, validityHelp string) *keyFlags {
	var k keyFlags
	fs.StringVar(&k.keyType, "key-type", string(certs.ECDSAP256), "key `type`: ecdsa-p256, ecdsa-p384, rsa2048 or ed25519")
	fs.DurationVar(&k.validity, "validity", defaultValidity, validityHelp)
	fs.BoolVar(&k.force, "force", false, "overwrite existing output files")
	return &k
}

// options validates the shared flags.
func (k *keyFlags) options(verb string) (certs.Options, error) {
	kt, err := certs.ParseKeyType(k.keyType)
	if err != nil {
		return certs.Options{}, usagef("dps-batch certs "+verb+" --help", "--key-type: %s", err)
	}
	if k.validity < 0 {
		return certs.Options{}, usagef("dps-batch certs "+verb+" --help", "--validity %v is negative", k.validity)
	}
	return certs.Options{KeyType: kt, Validity: k.validity}, nil
}

// caFlags are --ca and --ca-key.
type caFlags struct{ cert, key string }

func addCAFlags(fs *flag.FlagSet) *caFlags {
	var c caFlags
	fs.StringVar(&c.cert, "ca", "", "issuing CA certificate `file` (PEM; may be followed by its own chain); required")
	fs.StringVar(&c.key, "ca-key", "", "issuing CA private key `file` (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted); required")
	return &c
}

// load checks the flags and loads the CA. Problems with the files the user
// named are usage errors: nothing was written and a different flag fixes it.
func (c *caFlags) load(fs *flag.FlagSet, example string) (*certs.CA, error) {
	if err := requireFlag(fs, "ca", c.cert, example); err != nil {
		return nil, err
	}
	if err := requireFlag(fs, "ca-key", c.key, example); err != nil {
		return nil, err
	}
	ca, err := certs.LoadCA(c.cert, c.key)
	if err != nil {
		return nil, usagef("point --ca at the CA certificate (PEM) and --ca-key at its private key", "%s", err)
	}
	return ca, nil
}

// writeErr turns "file exists" into a usage error with the --force hint and
// passes other write errors through.
func writeErr(err error) error {
	if errors.Is(err, certs.ErrExists) {
		return usagef("add --force to replace the existing files, or choose another --out", "%s", err)
	}
	return err
}

const (
	caValidityHelp   = "validity `duration` (Go syntax: h, m, s); 43800h is 5 years"
	leafValidityHelp = "validity `duration` (Go syntax: h, m, s); 8760h is 1 year; capped at the CA's expiry"
)

func runCertsRoot(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs root", "Create a self-signed root CA: DIR/root.pem and DIR/root.key (mode 0600).",
		`dps-batch certs root --cn "My Test Root" --out ./pki`,
		`dps-batch certs root --cn "RSA Test Root" --key-type rsa2048 --validity 8760h --out ./pki-rsa`)
	cn := fs.String("cn", "", "subject common `name` of the root; required")
	out := fs.String("out", "", "output `directory` (created if needed); required")
	kf := addKeyFlags(fs, certs.DefaultCAValidity, caValidityHelp)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := `dps-batch certs root --cn "My Test Root" --out ./pki`
	if err := requireFlag(fs, "cn", *cn, example); err != nil {
		return err
	}
	if err := requireFlag(fs, "out", *out, example); err != nil {
		return err
	}
	opts, err := kf.options("root")
	if err != nil {
		return err
	}
	ca, err := certs.NewRoot(*cn, opts)
	if err != nil {
		return err
	}
	p, err := certs.WriteCA(*out, ca, "root", kf.force)
	if err != nil {
		return writeErr(err)
	}
	fmt.Fprintf(e.stdout, "root CA %q (expires %s)\n  certificate: %s\n  key:         %s\n",
		*cn, ca.Cert.NotAfter.UTC().Format(time.DateOnly), p.Cert, p.Key)
	fmt.Fprintln(e.stderr, testCertsWarning)
	return nil
}

func runCertsIntermediate(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs intermediate",
		"Create an intermediate CA signed by --ca: DIR/intermediate.pem and DIR/intermediate.key (mode 0600).\n"+
			"The intermediate may issue device certificates but not further CAs.",
		`dps-batch certs intermediate --cn "My Test Intermediate" --ca ./pki/root.pem --ca-key ./pki/root.key --out ./pki`)
	cn := fs.String("cn", "", "subject common `name` of the intermediate; required")
	out := fs.String("out", "", "output `directory` (created if needed); required")
	name := fs.String("name", "intermediate", "base `name` of the output files: NAME.pem and NAME.key")
	cf := addCAFlags(fs)
	kf := addKeyFlags(fs, certs.DefaultCAValidity, caValidityHelp+"; capped at the CA's expiry")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := `dps-batch certs intermediate --cn "My Test Intermediate" --ca ./pki/root.pem --ca-key ./pki/root.key --out ./pki`
	if err := requireFlag(fs, "cn", *cn, example); err != nil {
		return err
	}
	if err := requireFlag(fs, "out", *out, example); err != nil {
		return err
	}
	if err := checkBaseName("name", *name); err != nil {
		return err
	}
	opts, err := kf.options("intermediate")
	if err != nil {
		return err
	}
	parent, err := cf.load(fs, example)
	if err != nil {
		return err
	}
	ca, err := parent.NewIntermediate(*cn, opts)
	if err != nil {
		return usagef("use a root CA (or an intermediate without a path length limit) as --ca", "%s", err)
	}
	p, err := certs.WriteCA(*out, ca, *name, kf.force)
	if err != nil {
		return writeErr(err)
	}
	fmt.Fprintf(e.stdout, "intermediate CA %q issued by %q (expires %s)\n  certificate: %s\n  key:         %s\n",
		*cn, parent.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.DateOnly), p.Cert, p.Key)
	fmt.Fprintln(e.stderr, testCertsWarning)
	return nil
}

func runCertsDevice(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs device",
		"Create a device (TLS client) certificate whose subject CN is the registration id:\n"+
			"DIR/ID.pem (the certificate), DIR/ID.key (mode 0600) and DIR/ID-fullchain.pem\n"+
			"(the certificate followed by the intermediates up to, not including, the root:\n"+
			"what the device presents to DPS).",
		`dps-batch certs device --id dev-0001 --ca ./pki/intermediate.pem --ca-key ./pki/intermediate.key --out ./pki/devices`,
		`dps-batch certs device --id dev-0002 --ca ./fleet/ca/intermediate.pem --ca-key ./fleet/ca/intermediate.key --out ./fleet/devices`)
	id := fs.String("id", "", "registration `id`: 1-64 of a-z 0-9 - . _ :, ending in a letter, digit or '-'; required")
	out := fs.String("out", "", "output `directory` (created if needed); required")
	cf := addCAFlags(fs)
	kf := addKeyFlags(fs, certs.DefaultLeafValidity, leafValidityHelp)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := `dps-batch certs device --id dev-0001 --ca ./pki/intermediate.pem --ca-key ./pki/intermediate.key --out ./pki/devices`
	if err := requireFlag(fs, "id", *id, example); err != nil {
		return err
	}
	if err := certs.ValidateRegistrationID(*id); err != nil {
		return usagef("dps-batch certs device --help", "--id: %s", err)
	}
	if err := requireFlag(fs, "out", *out, example); err != nil {
		return err
	}
	opts, err := kf.options("device")
	if err != nil {
		return err
	}
	ca, err := cf.load(fs, example)
	if err != nil {
		return err
	}
	leaf, err := ca.NewDevice(*id, opts)
	if err != nil {
		return err
	}
	p, err := certs.WriteLeaf(*out, leaf, *id, true, kf.force)
	if err != nil {
		return writeErr(err)
	}
	fmt.Fprintf(e.stdout, "device %s issued by %q (expires %s)\n  certificate: %s\n  key:         %s\n  full chain:  %s (%d certificate(s): leaf + intermediates)\n",
		*id, ca.Cert.Subject.CommonName, leaf.Cert.NotAfter.UTC().Format(time.DateOnly), p.Cert, p.Key, p.FullChain, 1+len(leaf.Chain))
	fmt.Fprintln(e.stderr, testCertsWarning)
	return nil
}

func runCertsVerification(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs verification",
		"Create a proof-of-possession certificate: subject CN = the verification code DPS\n"+
			"shows for an uploaded CA certificate, signed with that CA's key. Upload FILE to DPS\n"+
			"to mark the CA verified. Only the certificate is written: DPS needs nothing else.",
		`dps-batch certs verification --ca ./pki/root.pem --ca-key ./pki/root.key --code 1A2B3C4D5E6F --out ./pki/verification.pem`)
	code := fs.String("code", "", "verification `code` from DPS (1-64 printable characters); required")
	out := fs.String("out", "", "output certificate `file`; required")
	cf := addCAFlags(fs)
	kf := addKeyFlags(fs, certs.DefaultLeafValidity, leafValidityHelp)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := `dps-batch certs verification --ca ./pki/root.pem --ca-key ./pki/root.key --code CODE --out ./pki/verification.pem`
	if err := requireFlag(fs, "code", *code, example); err != nil {
		return err
	}
	if err := requireFlag(fs, "out", *out, example); err != nil {
		return err
	}
	opts, err := kf.options("verification")
	if err != nil {
		return err
	}
	ca, err := cf.load(fs, example)
	if err != nil {
		return err
	}
	leaf, err := ca.NewVerification(*code, opts)
	if err != nil {
		return usagef("dps-batch certs verification --help", "--code: %s", err)
	}
	if err := certs.WriteCertFile(*out, kf.force, leaf.Cert); err != nil {
		return writeErr(err)
	}
	fmt.Fprintf(e.stdout, "verification certificate for %q (CN %s)\n  certificate: %s\nUpload it to DPS to complete proof of possession.\n",
		ca.Cert.Subject.CommonName, *code, *out)
	fmt.Fprintln(e.stderr, testCertsWarning)
	return nil
}

const certsCSRPurpose = `Create a device's certificate signing request (CSR) for a certificate DPS issues
at registration (DPS device API 2025-07-01-preview):
  DIR/ID.csr   the CSR: PKCS#10, PEM; subject CN = the registration id, nothing else
  DIR/ID.key   a new operational key: EC P-384, PKCS#8 PEM, mode 0600 (never printed);
               not written when --key names an existing key

Preview limits: EC keys on NIST P-384 (secp384r1) only, signed with ECDSA-SHA384
(no RSA, P-256, P-521 or Ed25519 keys), and the subject CN must equal the
registration id. The device still attests its registration as usual (symmetric key
or onboarding certificate); its enrollment must name a credential policy
(credentialPolicyName), which issues the certificate.

Next: put the key in the manifest column csr_key_path (provision makes the CSR
from it when it registers) or this CSR in csr_path, say where the issued chain
goes in issued_cert_path, and run "dps-batch provision --issue-certs". DPS
returns the chain once, in the registration's answer only.`

func runCertsCSR(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs csr", certsCSRPurpose,
		`dps-batch certs csr --id dev-0001 --out ./csr`,
		`dps-batch certs csr --id dev-0002 --key ./station/dev-0002.key --out ./csr`,
		"# check it with openssl\n"+
			"openssl req -in ./csr/dev-0001.csr -noout -verify -subject")
	id := fs.String("id", "", "registration `id`, the CSR's subject CN: 1-64 of a-z 0-9 - . _ :, ending in a letter, digit or '-'; required")
	out := fs.String("out", "", "output `directory` (created if needed); required")
	keyFile := fs.String("key", "", "sign with this existing EC P-384 key `file` (PEM: PKCS#8 or SEC1, unencrypted) instead of making a new key; it is read, not changed")
	force := fs.Bool("force", false, "overwrite existing output files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := `dps-batch certs csr --id dev-0001 --out ./csr`
	if err := requireFlag(fs, "id", *id, example); err != nil {
		return err
	}
	if err := certs.ValidateRegistrationID(*id); err != nil {
		return usagef("dps-batch certs csr --help", "--id: %s", err)
	}
	if err := requireFlag(fs, "out", *out, example); err != nil {
		return err
	}
	var key crypto.Signer
	if *keyFile != "" {
		k, err := certs.LoadCSRKey(*keyFile)
		if err != nil {
			return usagef("point --key at an EC P-384 key (openssl ecparam -name secp384r1 -genkey -noout -out KEY), or leave --key out to make one", "--key: %s", err)
		}
		key = k
	} else {
		k, err := certs.GenerateCSRKey()
		if err != nil {
			return err
		}
		key = k
	}
	der, err := certs.NewCSR(*id, key)
	if err != nil {
		return err
	}
	var newKey crypto.Signer
	if *keyFile == "" {
		newKey = key
	}
	p, err := certs.WriteCSR(*out, *id, der, newKey, *force)
	if err != nil {
		return writeErr(err)
	}
	keyPath, keyNote := p.Key, "new, mode 0600"
	if *keyFile != "" {
		keyPath, keyNote = *keyFile, "given, unchanged"
	}
	w := e.stdout
	fmt.Fprintf(w, "CSR for %s (subject CN %s; EC P-384, ECDSA-SHA384)\n  CSR: %s\n  key: %s (%s)\n", *id, *id, p.CSR, keyPath, keyNote)
	fmt.Fprintf(w, "Next: in the manifest row of %s, set csr_key_path to %s (or csr_path to %s)\n"+
		"and issued_cert_path to where the issued chain goes, then run dps-batch provision --issue-certs;\n"+
		"the device's enrollment must name a credential policy.\n", *id, shellQuote(keyPath), shellQuote(p.CSR))
	return nil
}

// defaultIDScope is the placeholder ID scope for simulator configurations.
const defaultIDScope = "0ne00000000"

const certsFleetPurpose = `Create a fleet of test devices, its manifest and a simulator configuration.

--attestation x509 (the default): devices for an X.509 enrollment group
  DIR/ca/root.pem, root.key                 the root CA
  DIR/ca/intermediate.pem, intermediate.key the CA devices are issued by (--chain intermediate)
  DIR/devices/ID.pem, ID.key                one certificate (leaf only) and key per device
  DIR/manifest.csv                          registration_id,cert_path,key_path,chain_path (paths relative to DIR)
  DIR/sim.json                              a simulator configuration with one enrollment group for the fleet's CA

--attestation symmetric-group: devices of a symmetric-key enrollment group
  DIR/group.key                             a random 32-byte group key, base64 on one line (mode 0600)
  DIR/manifest.csv                          registration_id (rows without credentials: keys derive from the group key)
  DIR/sim.json                              the enrollment group with that key (mode 0600)
  Provision with --group-key-file DIR/group.key; "dps-batch keys derive" writes the
  per-device keys to flash.

--attestation symmetric-individual: devices with individual enrollments
  DIR/manifest.csv                          registration_id,symmetric_key: a random 32-byte key per device (mode 0600)
  DIR/sim.json                              one individual enrollment per device, with its key (mode 0600)

--issue, with any --attestation: ready for certificates DPS issues at registration
  (device API 2025-07-01-preview; P-384 keys only, CN = registration id)
  DIR/csr-keys/ID.key                       each device's operational key, EC P-384 (mode 0600, folder 0700)
  DIR/issuing/root.pem, root.key            a P-384 root CA: openssl verify -CAfile DIR/issuing/root.pem
  DIR/issuing/intermediate.pem, .key        the P-384 CA that issues the certificates
  DIR/issuing/chain.pem                     intermediate then root
  DIR/issued/                               empty: provision --issue-certs writes each issued chain here
  DIR/manifest.csv                          gains csr_key_path (csr-keys/ID.key) and issued_cert_path (issued/ID.pem)
  DIR/sim.json                              gains a credential policy (--credential-policy, 30-day certificates,
                                            issuing from DIR/issuing) that the fleet's enrollments name

Registration ids are PREFIX + index zero-padded to at least 5 digits (dev-00001).
The manifest is written last: a fleet directory with a manifest is complete.
Keys are never printed.`

func runCertsFleet(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs fleet", certsFleetPurpose,
		`dps-batch certs fleet --count 1000 --out ./fleet`,
		`dps-batch certs fleet --count 100000 --prefix sensor- --chain root --out ./big-fleet --force`,
		`dps-batch certs fleet --attestation symmetric-group --count 200 --prefix sensor- --out ./sensors`,
		"# then serve it with the local simulator and provision it\n"+
			"dps-batch certs fleet --attestation symmetric-group --count 100 --out ./sensors --id-scope 0ne00000000\n"+
			"dps-batch sim --config ./sensors/sim.json --listen 127.0.0.1:8443 --ca-out ./sensors/sim-ca.pem &\n"+
			"dps-batch provision --manifest ./sensors/manifest.csv --id-scope 0ne00000000 --group-key-file ./sensors/group.key \\\n"+
			"    --endpoint https://127.0.0.1:8443 --ca-file ./sensors/sim-ca.pem",
		"# with certificates issued at registration (the command prints the rest)\n"+
			"dps-batch certs fleet --attestation symmetric-group --count 100 --out ./sensors --issue")
	count := fs.Int("count", 0, "`number` of devices; required, at least 1")
	out := fs.String("out", "", "output `directory` (created if needed); required")
	prefix := fs.String("prefix", "dev-", "registration id `prefix`")
	attestation := fs.String("attestation", certs.AttestationX509, "how the devices attest (`kind`): x509 (certificates under a test CA), symmetric-group (keys derived from one enrollment group key) or symmetric-individual (a random key per device)")
	chain := fs.String("chain", certs.ChainIntermediate, "x509: `issuer` of the devices: intermediate (root > intermediate > device) or root (root > device)")
	idScope := fs.String("id-scope", defaultIDScope, "DPS ID `scope` written to the simulator configuration")
	workers := fs.Int("workers", 0, "x509 or --issue: `number` of devices generated at once; 0 means one per CPU")
	issue := fs.Bool("issue", false, "prepare the fleet for certificates DPS issues at registration (preview): a P-384 operational key per device, a P-384 issuing CA, the manifest columns csr_key_path and issued_cert_path, and a credential policy in sim.json; with any --attestation")
	policy := fs.String("credential-policy", defaultFleetCredentialPolicy, "with --issue: `name` of the credential policy in sim.json that the fleet's enrollments name")
	kf := addKeyFlags(fs, 0, "x509: validity `duration` of every certificate (Go syntax: h, m, s); 0 means 43800h for CAs and 8760h for devices")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := `dps-batch certs fleet --count 1000 --out ./fleet`
	if err := requireFlag(fs, "out", *out, example); err != nil {
		return err
	}
	if *count <= 0 {
		return usagef(example, "--count must be at least 1 (got %d)", *count)
	}
	if *workers < 0 {
		return usagef("dps-batch certs fleet --help", "--workers must not be negative (got %d)", *workers)
	}
	if *prefix == "" {
		return usagef("dps-batch certs fleet --help", "--prefix must not be empty")
	}
	if err := certs.ValidateRegistrationID(*prefix + "00001"); err != nil {
		return usagef("dps-batch certs fleet --help", "--prefix %q makes invalid registration ids: %s", *prefix, err)
	}
	if !slices.Contains(certs.Attestations, *attestation) {
		return usagef("dps-batch certs fleet --attestation symmetric-group --count 100 --out ./sensors",
			"--attestation %q: want %s", *attestation, strings.Join(certs.Attestations, ", "))
	}
	symmetric := *attestation != certs.AttestationX509
	if symmetric {
		// Flags that shape certificates mean nothing here: say so rather
		// than ignore them.
		var certFlags []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "chain", "key-type", "validity":
				certFlags = append(certFlags, "--"+f.Name)
			case "workers":
				if !*issue {
					certFlags = append(certFlags, "--"+f.Name)
				}
			}
		})
		if len(certFlags) > 0 {
			return usagef("leave out "+strings.Join(certFlags, " ")+", or use --attestation x509",
				"%s: only for --attestation x509 (a %s fleet has no certificates)", strings.Join(certFlags, ", "), *attestation)
		}
	}
	if *chain != certs.ChainRoot && *chain != certs.ChainIntermediate {
		return usagef("dps-batch certs fleet --help", "--chain %q: want intermediate or root", *chain)
	}
	if err := requireFlag(fs, "id-scope", *idScope, example); err != nil {
		return err
	}
	policySet := false
	fs.Visit(func(f *flag.Flag) { policySet = policySet || f.Name == "credential-policy" })
	if policySet && !*issue {
		return usagef("add --issue, or leave out --credential-policy", "--credential-policy: only with --issue")
	}
	if *issue && strings.TrimSpace(*policy) == "" {
		return usagef("dps-batch certs fleet --help", "--credential-policy must not be empty")
	}
	opts, err := kf.options("fleet")
	if err != nil {
		return err
	}
	simPath := filepath.Join(*out, "sim.json")
	if symmetric && !kf.force {
		// The configuration holds the fleet's keys: without it the fleet
		// cannot be served, so refuse before anything is written.
		if _, err := os.Lstat(simPath); err == nil {
			return usagef("add --force to replace the existing files, or choose another --out", "%s already exists (use --force to overwrite)", simPath)
		}
	}

	// The first interrupt stops generation: device files are written whole,
	// so there is nothing to drain, and the manifest is not written.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-e.drain:
			cancel()
		case <-ctx.Done():
		}
	}()

	start := time.Now()
	fleet, err := certs.GenerateFleet(ctx, certs.FleetOptions{
		Dir:         *out,
		Count:       *count,
		Prefix:      *prefix,
		Attestation: *attestation,
		Chain:       *chain,
		KeyType:     opts.KeyType,
		Validity:    opts.Validity,
		Force:       kf.force,
		Workers:     *workers,
		Issue:       *issue,
		Progress:    fleetProgress(e.stderr, *count),
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("%w; no manifest was written: run the same command with --force to start again", err)
		}
		return writeErr(err)
	}
	elapsed := time.Since(start)
	issuance, err := newFleetIssuance(fleet, *policy)
	if err != nil {
		return err
	}
	if symmetric {
		return printSymmetricFleet(e, fleet, *idScope, simPath, issuance, kf.force, elapsed)
	}

	w := e.stdout
	fmt.Fprintf(w, "fleet of %d devices in %s (%s, %.0f devices/s)\n", len(fleet.RegistrationIDs), fleet.Dir,
		elapsed.Round(time.Millisecond), float64(len(fleet.RegistrationIDs))/elapsed.Seconds())
	fmt.Fprintf(w, "  root CA:         %s\n", fleet.RootCertPath)
	if fleet.IntermediateCertPath != "" {
		fmt.Fprintf(w, "  intermediate CA: %s\n", fleet.IntermediateCertPath)
	}
	fmt.Fprintf(w, "  group CA:        %q (reference it in the enrollment group)\n", fleet.GroupCA.Cert.Subject.CommonName)
	fmt.Fprintf(w, "  devices:         %s (%s ... %s)\n", filepath.Join(fleet.Dir, "devices"),
		fleet.RegistrationIDs[0], fleet.RegistrationIDs[len(fleet.RegistrationIDs)-1])
	fmt.Fprintf(w, "  manifest:        %s\n", fleet.ManifestPath)
	printIssuing(w, fleet)
	simPath, err = writeIssuingFleetSimConfig(fleet.Dir, *idScope, certs.CertPEM(fleet.GroupCA.Cert), issuance, kf.force)
	if err != nil {
		// The certificates are complete and usable without it.
		fmt.Fprintf(e.stderr, "warning: simulator configuration not written: %s\n", err)
	} else {
		fmt.Fprintf(w, "  simulator:       %s (ID scope %s%s)\n", simPath, *idScope, issuance.describe())
		if issuance != nil {
			printIssueNextSteps(w, fleet, simPath, *idScope)
		}
	}
	warnStaleIssued(e.stderr, fleet)
	fmt.Fprintln(e.stderr, testCertsWarning)
	return nil
}

// printIssuing lists what --issue made; it prints nothing for a fleet
// made without it.
func printIssuing(w io.Writer, fleet *certs.Fleet) {
	if fleet.IssuingCA == nil {
		return
	}
	fmt.Fprintf(w, "  issuing CA:      %s (P-384; key %s, chain %s)\n", fleet.IssuingCACertPath, fleet.IssuingCAKeyPath, fleet.IssuingChainPath)
	fmt.Fprintf(w, "  issuing root:    %s\n", fleet.IssuingRootCertPath)
	fmt.Fprintf(w, "  CSR keys:        %s (P-384, mode 0600: manifest column csr_key_path)\n", fleet.CSRKeyDir)
	fmt.Fprintf(w, "  issued chains:   %s (manifest column issued_cert_path; written by provision --issue-certs)\n", fleet.IssuedDir)
}

// describe is the simulator line's note on the credential policy.
func (is *fleetIssuance) describe() string {
	if is == nil {
		return ""
	}
	return fmt.Sprintf("; credential policy %q, %d-day certificates", is.policy, is.validityDays)
}

// printIssueNextSteps prints the commands that serve a fleet made with
// --issue, provision it with issued certificates and check one.
func printIssueNextSteps(w io.Writer, fleet *certs.Fleet, simPath, idScope string) {
	caFile := filepath.Join(fleet.Dir, "sim-ca.pem")
	groupKey := ""
	if fleet.GroupKeyPath != "" {
		groupKey = " --group-key-file " + shellQuote(fleet.GroupKeyPath)
	}
	first := fleet.RegistrationIDs[0]
	fmt.Fprintf(w, "Serve it, provision it with certificates issued at registration, and check one:\n"+
		"  dps-batch sim --config %s --listen 127.0.0.1:8443 --ca-out %s &\n"+
		"  dps-batch provision --manifest %s --id-scope %s%s --endpoint https://127.0.0.1:8443 --ca-file %s --issue-certs\n"+
		"  openssl verify -CAfile %s -untrusted %s %s\n",
		shellQuote(simPath), shellQuote(caFile),
		shellQuote(fleet.ManifestPath), idScope, groupKey, shellQuote(caFile),
		shellQuote(fleet.IssuingRootCertPath), shellQuote(fleet.IssuingCACertPath), shellQuote(filepath.Join(fleet.IssuedDir, first+".pem")))
}

// warnStaleIssued warns when a fleet made with --issue (and --force) finds
// chains in its issued folder: they are from an earlier fleet, issued by a
// CA this run replaced, for keys it replaced.
func warnStaleIssued(w io.Writer, fleet *certs.Fleet) {
	if fleet.IssuedDir == "" {
		return
	}
	entries, err := os.ReadDir(fleet.IssuedDir)
	if err != nil || len(entries) == 0 {
		return
	}
	fmt.Fprintf(w, "warning: %s holds %d file(s) from an earlier fleet: they were issued by the replaced CA for replaced keys\n", fleet.IssuedDir, len(entries))
}

// printSymmetricFleet writes the simulator configuration of a symmetric-key
// fleet (it holds the keys: mode 0600) and says what was made and how to
// use it. No key is printed.
func printSymmetricFleet(e *env, fleet *certs.Fleet, idScope, simPath string, issuance *fleetIssuance, force bool, elapsed time.Duration) error {
	cfg := symmetricFleetSimConfig(idScope, fleet)
	var err error
	if issuance != nil {
		err = dpssim.WriteConfig(simPath, issuance.apply(cfg), force)
	} else {
		err = writeSymmetricSimConfig(simPath, cfg, force)
	}
	if err != nil {
		return writeErr(fmt.Errorf("the fleet is written but not its simulator configuration: %w", err))
	}
	ids := fleet.RegistrationIDs
	w := e.stdout
	kind := "an enrollment group"
	if fleet.Attestation == certs.AttestationSymmetricIndividual {
		kind = "individual enrollments"
	}
	fmt.Fprintf(w, "fleet of %d symmetric-key devices (%s) in %s (%s)\n", len(ids), kind, fleet.Dir, elapsed.Round(time.Millisecond))
	if fleet.GroupKeyPath != "" {
		fmt.Fprintf(w, "  group key:       %s (base64, mode 0600: the enrollment group's primary key)\n", fleet.GroupKeyPath)
		fmt.Fprintf(w, "  devices:         %s ... %s (keys derived from the group key: dps-batch keys derive)\n", ids[0], ids[len(ids)-1])
		fmt.Fprintf(w, "  manifest:        %s\n", fleet.ManifestPath)
	} else {
		fmt.Fprintf(w, "  devices:         %s ... %s (a random key each)\n", ids[0], ids[len(ids)-1])
		fmt.Fprintf(w, "  manifest:        %s (with the keys: mode 0600)\n", fleet.ManifestPath)
	}
	printIssuing(w, fleet)
	fmt.Fprintf(w, "  simulator:       %s (ID scope %s%s; with the keys: mode 0600)\n", simPath, idScope, issuance.describe())
	if issuance != nil {
		printIssueNextSteps(w, fleet, simPath, idScope)
		warnStaleIssued(e.stderr, fleet)
		fmt.Fprintln(e.stderr, testKeysWarning)
		fmt.Fprintln(e.stderr, testCertsWarning)
		return nil
	}
	caFile := filepath.Join(fleet.Dir, "sim-ca.pem")
	groupKey := ""
	if fleet.GroupKeyPath != "" {
		groupKey = " --group-key-file " + shellQuote(fleet.GroupKeyPath)
	}
	fmt.Fprintf(w, "Serve and provision it:\n  dps-batch sim --config %s --listen 127.0.0.1:8443 --ca-out %s &\n"+
		"  dps-batch provision --manifest %s --id-scope %s%s --endpoint https://127.0.0.1:8443 --ca-file %s\n",
		shellQuote(simPath), shellQuote(caFile), shellQuote(fleet.ManifestPath), idScope, groupKey, shellQuote(caFile))
	fmt.Fprintln(e.stderr, testKeysWarning)
	return nil
}

// symmetricFleetSimConfig is the simulator configuration of a symmetric-key
// fleet: the ID scope, the default hubs and quotas (spelled out, as for an
// X.509 fleet), and one enrollment group with the fleet's group key or one
// individual enrollment per device with its key.
func symmetricFleetSimConfig(idScope string, fleet *certs.Fleet) dpssim.Config {
	retry := dpssim.DefaultRetryAfterSeconds
	cfg := dpssim.Config{
		IDScope:           idScope,
		Hubs:              append([]string(nil), dpssim.DefaultHubs...),
		Allocation:        dpssim.AllocationHashed,
		Certificates:      []dpssim.CACertificate{},
		Individual:        []dpssim.IndividualEnrollment{},
		Groups:            []dpssim.EnrollmentGroup{},
		RetryAfterSeconds: &retry,
		Quotas:            dpssim.Quotas{RegistrationsPerMinute: dpssim.DefaultRegistrationsPerMinute, PollsPer10sPerDevice: dpssim.DefaultPollsPer10sPerDevice},
	}
	if fleet.GroupKey != nil {
		cfg.Groups = append(cfg.Groups, dpssim.EnrollmentGroup{
			EnrollmentGroupID: dpssim.FleetGroupID,
			Attestation:       dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(fleet.GroupKey)}},
		})
	}
	for i, key := range fleet.DeviceKeys {
		cfg.Individual = append(cfg.Individual, dpssim.IndividualEnrollment{
			RegistrationID: fleet.RegistrationIDs[i],
			Attestation:    dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}},
		})
	}
	return cfg
}

// writeSymmetricSimConfig checks cfg as the simulator will and writes it
// as dpssim.WriteConfig does, but owner-only: it holds keys.
func writeSymmetricSimConfig(path string, cfg dpssim.Config, force bool) error {
	if _, err := dpssim.New(cfg); err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(cfg); err != nil {
		return fmt.Errorf("simulator config %s: %w", path, err)
	}
	return certs.WriteSecretFile(path, buf.Bytes(), force)
}

// fleetProgress returns a Progress callback that prints a line to w at
// every tenth of a large fleet, or nil for small fleets that finish quickly.
func fleetProgress(w io.Writer, count int) func(int) {
	if count < 10000 {
		return nil
	}
	var mu sync.Mutex // Progress is called from several workers at once
	step := count / 10
	return func(done int) {
		if done%step != 0 || done == count {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "generated %d/%d devices\n", done, count)
	}
}

// checkBaseName refuses a file base name that would escape the output
// directory or be empty.
func checkBaseName(flagName, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return usagef("dps-batch certs --help", "--%s %q must be a plain file name without directories", flagName, name)
	}
	return nil
}

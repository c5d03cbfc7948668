package manifests

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// Kind is how a device authenticates to DPS.
type Kind string

const (
	// KindX509 devices authenticate with a client certificate.
	KindX509 Kind = "x509"
	// KindSymmetricKey devices sign SAS tokens with their own key
	// (individual enrollment).
	KindSymmetricKey Kind = "symmetric-key"
	// KindGroupKey devices sign SAS tokens with a key derived from the
	// enrollment group key and their registration id.
	KindGroupKey Kind = "group-symmetric-key"
)

// MaxFileSize is the largest certificate, key or chain file read, in bytes.
// Real ones are a few kilobytes; a larger file is the wrong file.
const MaxFileSize = 1 << 20

// Symmetric key length limits in bytes (decoded), as DPS accepts them.
const (
	MinSymmetricKeyLength = 16
	MaxSymmetricKeyLength = 64
)

// Options controls how rows are loaded.
type Options struct {
	// GroupKey is the raw (base64-decoded) symmetric enrollment group key.
	// Rows without credentials derive their key from it. Nil means group
	// devices are not allowed: such rows are errors.
	GroupKey []byte
	// Now returns the current time for certificate validity checks; nil
	// means time.Now. Validate calls it from several goroutines at once.
	Now func() time.Time
	// SkipSignatureChecks skips verifying each chain certificate's
	// signature by the next one (issuer names are still compared). It is
	// for a second pass over a manifest that Validate has just passed: the
	// runner loads every device again to register it, and the signature
	// checks were most of that cost. Every other check still runs.
	SkipSignatureChecks bool
	// Strict refuses columns the manifest format does not define: each
	// is a header problem. When false (the default), they are extra
	// columns: ignored, named in one warning of Validate's Summary, their
	// values kept in Row.Extra. Used by OpenWith and Validate.
	Strict bool
	// Columns maps columns of other names onto the format's, ours to the
	// header's: {"registration_id": "serial_number"} reads the column
	// serial_number as registration_id. Nil maps none. Used by OpenWith
	// and Validate.
	Columns ColumnMap
	// KeepX509 is how many usable X.509 devices Validate keeps, loaded, in
	// Summary.X509 (the first ones of the file), for a caller that
	// registers them right after and would otherwise load each one again:
	// reading, parsing and checking a certificate and its key cost as much
	// as its TLS handshake. About 4 KB each with ECDSA P-256 keys, 8 KB
	// with RSA 2048; 0 keeps none.
	KeepX509 int
	// IssueCerts requests DPS certificate issuance (device API
	// dps.CertificateIssuanceAPIVersion): every row must then yield a CSR,
	// from its csr_key_path (an EC P-384 private key: Load makes the CSR,
	// subject CN = registration id, signed ECDSA-SHA384), its csr_path (a
	// ready PKCS#10 CSR, checked the same way) or CSRKeyDir, and each
	// device gets Device.CSR, CSRPublicKey and IssuedCertPath. When false,
	// a header with csr_key_path, csr_path or issued_cert_path is an error
	// (the devices would be registered without certificates), unless
	// IgnoreCSRColumns. Used by OpenWith, Validate and Load.
	IssueCerts bool
	// CSRKeyDir, with IssueCerts, is the folder of the keys for rows that
	// have neither csr_key_path nor csr_path: such a row's csr_key_path is
	// CSRKeyDir/<registration id>.key. A relative CSRKeyDir is relative
	// to the current directory, not the manifest's folder. The files are
	// only read here; whoever sets it makes them first.
	CSRKeyDir string
	// IgnoreCSRColumns is for callers that read a manifest without
	// registering its devices (enrollments, reports, deregistration):
	// with IssueCerts off, csr_key_path, csr_path and issued_cert_path are
	// read into Row and not checked, instead of being a header error.
	IgnoreCSRColumns bool
	// CSRKeysPlanned, with CSRKeyDir, accepts a missing key in CSRKeyDir:
	// the run makes it before it registers (a dry run of
	// --generate-csr-keys). Such a device has no CSR.
	CSRKeysPlanned bool
}

// Device is a loaded, validated manifest row, ready to register.
type Device struct {
	// Line is the row's physical line in the manifest.
	Line int
	// RegistrationID is the DPS registration id.
	RegistrationID string
	// Kind says which credential fields are set.
	Kind Kind
	// Certificate is set for X.509 devices: Certificate holds the leaf and
	// then its chain (DER), PrivateKey and Leaf are set.
	Certificate *tls.Certificate `json:"-"`
	// SymmetricKey is the raw key for symmetric-key devices (individual, or
	// derived from the group key).
	SymmetricKey []byte `json:"-"`
	// Payload is the custom allocation payload; nil when the row has none.
	Payload json.RawMessage
	// Fingerprint identifies the credential without revealing it, so that a
	// ledger can notice a changed credential: "sha256:"+hex(SHA-256 of the
	// leaf DER) for X.509, "key:"+the first 16 hex digits of
	// SHA-256("dps-batch/v1\x00"+key) for symmetric keys.
	Fingerprint string
	// CSR is the PKCS#10 certificate signing request (DER) to send with
	// the registration when Options.IssueCerts is set; nil otherwise. A
	// CSR made from csr_key_path is made anew by each Load (ECDSA
	// signatures are randomised); the private key is not kept.
	CSR []byte `json:"-"`
	// CSRPublicKey is the CSR's public key (an *ecdsa.PublicKey on P-384),
	// for matching the issued leaf certificate; nil when not issuing.
	CSRPublicKey crypto.PublicKey `json:"-"`
	// IssuedCertPath is where the issued certificate chain is to be
	// written, resolved against the manifest's folder; "" when not
	// issuing. Its folder may not exist yet (its nearest existing
	// ancestor was writable at load time): the writer creates it.
	IssuedCertPath string
}

// String describes the device without its credentials, so that printing a
// Device (with %v, %+v or %s) never shows a key.
func (d Device) String() string {
	return fmt.Sprintf("device %s (%s, line %d, %s)", safeID(d.RegistrationID), d.Kind, d.Line, d.Fingerprint)
}

// GoString is String, for %#v.
func (d Device) GoString() string { return d.String() }

// Load reads the files a row names and runs every per-row check: the
// registration id, the credential columns, certificates (parsing, CN,
// validity, clientAuth, chain order), the private key (parsing, match with
// the certificate, file mode), symmetric keys and the payload. It returns
// the device and any warnings when the row is usable, or nil and all the
// problems found (errors and warnings) when it is not. Load is safe for
// concurrent use. It does not detect duplicate ids across rows; Validate
// does.
func (r *Reader) Load(row Row, opts Options) (*Device, []Problem) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	l := &loader{r: r, row: row, id: safeID(row.RegistrationID), now: now(), skipSigs: opts.SkipSignatureChecks, planKeys: opts.CSRKeysPlanned}
	dev := &Device{Line: row.Line, RegistrationID: row.RegistrationID}

	hasX509 := row.CertPath != "" || row.KeyPath != "" || row.ChainPath != ""
	// An issued certificate's CN is the registration id: X.509's limit.
	cnLimit := hasX509 || opts.IssueCerts
	if err := dps.ValidateRegistrationID(row.RegistrationID, cnLimit); err != nil {
		l.idBad = true
		limit := dps.MaxRegistrationIDLength
		if cnLimit {
			limit = dps.MaxX509RegistrationIDLength
		}
		msg := err.Error()
		if l.id != row.RegistrationID {
			msg = "registration id looks like a base64 key (not shown), not an id"
		}
		l.add(colRegistrationID, "", msg, fmt.Sprintf(
			"use 1-%d characters: lower-case letters, digits and - . _ : ending in a letter, a digit or -; check that the fields follow the header's column order", limit))
	}

	if row.Payload != "" {
		dev.Payload = l.payload(row.Payload)
	}

	hasKey := row.SymmetricKey != ""
	switch {
	case hasX509 && hasKey:
		l.add(colSymmetricKey, "", "row has both X.509 (cert_path, key_path) and symmetric_key credentials",
			"keep one: clear symmetric_key for an X.509 device, or cert_path and key_path for a symmetric-key device")
		l.x509()
		l.symmetricKey()
	case hasX509:
		dev.Kind = KindX509
		dev.Certificate, dev.Fingerprint = l.x509()
	case hasKey:
		dev.Kind = KindSymmetricKey
		dev.SymmetricKey = l.symmetricKey()
	case opts.GroupKey != nil:
		dev.Kind = KindGroupKey
		dev.SymmetricKey = dps.DeriveDeviceKeyBytes(opts.GroupKey, row.RegistrationID)
	default:
		l.add("", "", "row has no credentials", noCredentialsHint)
	}
	if dev.SymmetricKey != nil {
		dev.Fingerprint = keyFingerprint(dev.SymmetricKey)
	}
	if opts.IssueCerts {
		dev.CSR, dev.CSRPublicKey = l.csr(opts.CSRKeyDir)
		dev.IssuedCertPath = l.issuedCertPath()
	}
	if l.errors > 0 {
		return nil, l.problems
	}
	return dev, l.problems
}

// noCredentialsHint is the fix for a row with no credentials and no group
// key. Such rows are usually all the rows of a group fleet, so the group
// key comes first.
const noCredentialsHint = "for devices of a symmetric-key enrollment group, give the group key: " +
	"dps-batch provision --group-key-file FILE, or the environment variable DPS_GROUP_KEY; " +
	"otherwise give the row cert_path and key_path (X.509) or symmetric_key"

// keyFingerprint identifies a symmetric key without revealing it: a
// domain-separated SHA-256 truncated to 64 bits, enough to tell keys apart
// and, for keys of 128 bits or more, no help in recovering one.
func keyFingerprint(key []byte) string {
	const domain = "dps-batch/v1\x00"
	buf := make([]byte, 0, len(domain)+MaxSymmetricKeyLength) // on the stack for keys up to 64 bytes
	buf = append(append(buf, domain...), key...)
	sum := sha256.Sum256(buf)
	clear(buf[len(domain):]) // do not leave key bytes behind
	var out [len("key:") + 16]byte
	copy(out[:], "key:")
	hex.Encode(out[4:], sum[:8])
	return string(out[:])
}

// loader collects the problems of one row.
type loader struct {
	r        *Reader
	row      Row
	id       string // registration id for problems: safeID(row.RegistrationID)
	now      time.Time
	problems []Problem
	errors   int
	skipSigs bool // Options.SkipSignatureChecks
	idBad    bool // the registration id is not valid
	planKeys bool // Options.CSRKeysPlanned
}

func (l *loader) add(col, path, msg, hint string) {
	l.problems = append(l.problems, Problem{
		Line: l.row.Line, RegistrationID: l.id,
		Column: col, Path: path, Message: msg, Hint: hint,
	})
	l.errors++
}

func (l *loader) warn(col, path, msg, hint string) {
	l.problems = append(l.problems, Problem{
		Line: l.row.Line, RegistrationID: l.id,
		Column: col, Path: path, Message: msg, Hint: hint, Severity: SeverityWarning,
	})
}

const payloadHint = `payload must be a JSON object such as {"site":"berlin"}; in CSV, quote the field and double the inner quotes: "{""site"":""berlin""}"`

// payload checks that s is a JSON object and returns it.
func (l *loader) payload(s string) json.RawMessage {
	if !json.Valid([]byte(s)) {
		var v any
		err := json.Unmarshal([]byte(s), &v)
		l.add(colPayload, "", fmt.Sprintf("payload is not valid JSON: %v", err), payloadHint)
		return nil
	}
	if s[0] != '{' { // fields are trimmed, and valid JSON starts with its value
		l.add(colPayload, "", "payload is a JSON "+jsonKind(s[0])+", not an object", payloadHint)
		return nil
	}
	return json.RawMessage(s)
}

func jsonKind(c byte) string {
	switch c {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// symmetricKey decodes and checks the row's individual key. Messages never
// quote the key.
func (l *loader) symmetricKey() []byte {
	key, err := DecodeKey(l.row.SymmetricKey)
	if err != nil {
		hint := "copy the primary key of the individual enrollment exactly: standard base64 (A-Z a-z 0-9 + /, with = padding)"
		if _, ok := err.(keyLengthError); ok {
			hint = "use the enrollment's key as DPS shows it, or generate one with: openssl rand -base64 32"
		}
		l.add(colSymmetricKey, "", "symmetric "+err.Error(), hint)
		return nil
	}
	return key
}

// keyLengthError reports a decoded key of the wrong size.
type keyLengthError struct{ n int }

func (e keyLengthError) Error() string {
	return fmt.Sprintf("key is %d bytes; DPS keys are %d to %d bytes", e.n, MinSymmetricKeyLength, MaxSymmetricKeyLength)
}

// DecodeKey decodes a symmetric key (an individual enrollment key or an
// enrollment group key) as DPS shows it: standard base64, surrounding space
// ignored, 16 to 64 bytes once decoded. Its errors never contain the key.
func DecodeKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("key is not valid base64 (bad data at character %d)", int64(ce)+1)
		}
		return nil, errors.New("key is not valid base64")
	}
	if len(key) < MinSymmetricKeyLength || len(key) > MaxSymmetricKeyLength {
		return nil, keyLengthError{len(key)}
	}
	return key, nil
}

// chainCert is a certificate with where it came from, for messages.
type chainCert struct {
	cert   *x509.Certificate
	column string // cert_path or chain_path
	path   string // as written in the manifest
	index  int    // 1-based position in its file
	shared bool   // from the chain cache: pointer identity is stable
}

func (c *chainCert) describe() string {
	if c.column == colCertPath && c.index == 1 {
		return fmt.Sprintf("the device certificate (CN %q)", c.cert.Subject.CommonName)
	}
	return fmt.Sprintf("certificate %d of %s (CN %q)", c.index, c.column, c.cert.Subject.CommonName)
}

// x509 loads and checks the row's certificate, chain and key.
func (l *loader) x509() (*tls.Certificate, string) {
	row := l.row
	certFile, keyFile := l.r.resolve(row.CertPath), l.r.resolve(row.KeyPath)
	combined := row.CertPath != "" && certFile == keyFile // one PEM with cert and key

	var chain []*chainCert
	if row.CertPath == "" {
		l.add(colCertPath, "", "cert_path is empty",
			"X.509 devices need cert_path (the device certificate) and key_path (its private key)")
	} else if data, _, ok := l.readFile(colCertPath, row.CertPath, certFile); ok {
		certs, iss := parseCerts(data, combined)
		if iss != nil {
			l.add(colCertPath, row.CertPath, iss.msg, iss.hint(row.CertPath))
		} else {
			for i, c := range certs {
				chain = append(chain, &chainCert{cert: c, column: colCertPath, path: row.CertPath, index: i + 1})
			}
		}
	}

	var key crypto.Signer
	if row.KeyPath == "" {
		l.add(colKeyPath, "", "key_path is empty",
			"X.509 devices need key_path: the device certificate's private key (PEM)")
	} else if data, mode, ok := l.readFile(colKeyPath, row.KeyPath, keyFile); ok {
		l.checkKeyMode(colKeyPath, row.KeyPath, mode)
		var iss *issue
		key, iss = parseKey(data, combined)
		if iss != nil {
			l.add(colKeyPath, row.KeyPath, iss.msg, iss.hint(row.KeyPath))
		}
	}

	if row.ChainPath != "" && len(chain) > 0 {
		chain = l.appendChainFile(chain)
	} else if row.ChainPath != "" {
		l.chainFile() // still report problems with the chain file itself
	}

	if len(chain) == 0 {
		return nil, ""
	}
	leaf := chain[0].cert
	l.checkLeaf(leaf)
	for _, c := range chain {
		l.checkValidity(c)
	}
	if key != nil && !publicKeyEqual(leaf.PublicKey, key.Public()) {
		l.add(colKeyPath, row.KeyPath, "private key does not match the certificate in cert_path",
			"point key_path at the key the certificate was issued for (check for swapped rows)")
	}
	l.checkOrder(chain)
	if l.errors > 0 || key == nil {
		return nil, ""
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.cert.Raw)
	}
	sum := sha256.Sum256(leaf.Raw)
	return tc, "sha256:" + hex.EncodeToString(sum[:])
}

// checkKeyMode warns when a private key file (written as in the manifest)
// is open to other users.
func (l *loader) checkKeyMode(column, written string, mode fs.FileMode) {
	if mode.Perm()&0o077 != 0 && runtime.GOOS != "windows" {
		l.warn(column, written, fmt.Sprintf("private key file is open to other users (mode %04o, want 0600)", mode.Perm()),
			"restrict it: chmod 600 "+shellQuote(written))
	}
}

// checkLeaf checks what DPS requires of the device certificate itself.
func (l *loader) checkLeaf(leaf *x509.Certificate) {
	row := l.row
	if id := l.id; id != "" && leaf.Subject.CommonName != id {
		l.add(colCertPath, row.CertPath, fmt.Sprintf("certificate CN is %q, want %q", leaf.Subject.CommonName, id),
			"DPS requires the registration id to equal the certificate subject CN; fix registration_id or issue a certificate for this id")
	}
	if !hasClientAuth(leaf) {
		msg := "certificate has no extended key usage; DPS requires clientAuth"
		if len(leaf.ExtKeyUsage) > 0 || len(leaf.UnknownExtKeyUsage) > 0 {
			msg = "certificate's extended key usage does not include clientAuth"
		}
		l.add(colCertPath, row.CertPath, msg,
			"issue the device certificate with extendedKeyUsage = clientAuth (openssl: -addext extendedKeyUsage=clientAuth)")
	}
}

func hasClientAuth(c *x509.Certificate) bool {
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

func (l *loader) checkValidity(c *chainCert) {
	const layout = "2006-01-02 15:04:05Z07:00"
	switch {
	case l.now.Before(c.cert.NotBefore):
		l.add(c.column, c.path, fmt.Sprintf("%s is not valid until %s (now %s)", c.describe(),
			c.cert.NotBefore.UTC().Format(layout), l.now.UTC().Format(layout)),
			"check this machine's clock, or issue the certificate with a NotBefore in the past")
	case l.now.After(c.cert.NotAfter):
		l.add(c.column, c.path, fmt.Sprintf("%s expired on %s", c.describe(), c.cert.NotAfter.UTC().Format(layout)),
			"issue a new certificate (and update the enrollment if it holds this one)")
	}
}

// checkOrder checks that each certificate is issued (named and signed) by
// the next one. It reports the first break only; later ones usually follow
// from it.
func (l *loader) checkOrder(chain []*chainCert) {
	const hint = "list the device certificate first, then each issuer in order (leaf, intermediate, ..., root), and drop certificates that do not belong to this device"
	for i := 0; i+1 < len(chain); i++ {
		child, parent := chain[i], chain[i+1]
		if l.skipSigs && bytes.Equal(child.cert.RawIssuer, parent.cert.RawSubject) {
			continue // Validate verified the signature in this run's first pass
		}
		if l.r.cache.signedBy(child, parent) == nil {
			continue
		}
		for j := 1; j < len(chain); j++ {
			if j != i && j != i+1 && l.r.cache.signedBy(child, chain[j]) == nil {
				l.add(parent.column, parent.path, fmt.Sprintf("certificate chain is out of order: %s is issued by %s, which should come right after it",
					child.describe(), chain[j].describe()), hint)
				return
			}
		}
		l.add(parent.column, parent.path, fmt.Sprintf("certificate chain is broken: %s is not issued by the next certificate, %s",
			child.describe(), parent.describe()), hint)
		return
	}
}

// signedBy reports whether parent issued child: by name and by signature.
// Results for two shared chain certificates are cached.
func (c *loadCache) signedBy(child, parent *chainCert) error {
	check := func() error {
		if !bytes.Equal(child.cert.RawIssuer, parent.cert.RawSubject) {
			return errors.New("issuer name does not match")
		}
		return child.cert.CheckSignatureFrom(parent.cert)
	}
	if !child.shared || !parent.shared {
		return check()
	}
	k := [2]*chainCert{child, parent}
	c.mu.Lock()
	err, ok := c.sigs[k]
	c.mu.Unlock()
	if ok {
		return err
	}
	err = check()
	c.mu.Lock()
	if c.sigs == nil {
		c.sigs = make(map[[2]*chainCert]error)
	}
	if len(c.sigs) < 4*maxCachedChains {
		c.sigs[k] = err
	}
	c.mu.Unlock()
	return err
}

// chainFile is a parsed chain_path file, shared by the rows naming it.
type chainFile struct {
	certs    []*chainCert
	problems []Problem // about the file itself; Line and id are set per row
}

// chainFile returns the parsed chain file of the row, from the cache when
// possible, and reports its problems against this row.
func (l *loader) chainFile() *chainFile {
	path := l.r.resolve(l.row.ChainPath)
	c := &l.r.cache
	c.mu.Lock()
	cf, ok := c.chains[path]
	c.mu.Unlock()
	if !ok {
		// Parse with a throwaway loader to capture row-independent problems.
		sub := &loader{r: l.r, row: Row{ChainPath: l.row.ChainPath}}
		cf = &chainFile{}
		if data, _, ok := sub.readFile(colChainPath, l.row.ChainPath, path); ok {
			certs, iss := parseCerts(data, false)
			if iss != nil {
				sub.add(colChainPath, l.row.ChainPath, iss.msg, iss.hint(l.row.ChainPath))
			}
			for i, cert := range certs {
				cf.certs = append(cf.certs, &chainCert{cert: cert, column: colChainPath, path: l.row.ChainPath, index: i + 1})
			}
		}
		cf.problems = sub.problems
		c.mu.Lock()
		if prev, ok := c.chains[path]; ok {
			cf = prev // another goroutine won; keep pointers stable
		} else if len(c.chains) < maxCachedChains {
			for _, cc := range cf.certs {
				cc.shared = true
			}
			if c.chains == nil {
				c.chains = make(map[string]*chainFile)
			}
			c.chains[path] = cf
		}
		c.mu.Unlock()
	}
	for _, p := range cf.problems {
		p.Line, p.RegistrationID = l.row.Line, l.id
		l.problems = append(l.problems, p)
		if p.Severity == SeverityError {
			l.errors++
		}
	}
	return cf
}

// appendChainFile appends the chain file's certificates to chain, skipping
// any already present (a full-chain cert_path plus a shared chain_path often
// repeat the intermediate).
func (l *loader) appendChainFile(chain []*chainCert) []*chainCert {
	cf := l.chainFile()
next:
	for _, c := range cf.certs {
		for _, have := range chain {
			if bytes.Equal(have.cert.Raw, c.cert.Raw) {
				continue next
			}
		}
		chain = append(chain, c)
	}
	return chain
}

// readFile reads a credential file of at most MaxFileSize bytes, reporting
// a missing, unreadable, special or oversized file against column.
func (l *loader) readFile(column, written, path string) ([]byte, fs.FileMode, bool) {
	fail := func(msg, hint string) ([]byte, fs.FileMode, bool) {
		l.add(column, written, msg, hint)
		return nil, 0, false
	}
	if looksLikeKey(written) {
		if _, err := os.Stat(path); err != nil {
			// Probably a key in the wrong column: never echo it.
			l.add(column, "", "value looks like a base64 key (not shown), not a file path",
				"check that the fields follow the header's column order")
			return nil, 0, false
		}
	}
	where := ""
	if path != written {
		where = " (looked for " + path + ")"
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail("file not found"+where, "check the path; relative paths resolve against the manifest's folder")
	case errors.Is(err, fs.ErrPermission):
		return fail("permission denied"+where, "make the file readable by the user running dps-batch")
	case err != nil:
		return fail(fmt.Sprintf("cannot read file: %v", unwrapPathError(err)), "check the path")
	case fi.IsDir():
		return fail("is a directory, not a file"+where, "point "+column+" at a PEM file")
	case !fi.Mode().IsRegular():
		return fail(fmt.Sprintf("is not a regular file (%s)%s", fi.Mode().Type(), where), "point "+column+" at a PEM file")
	case fi.Size() > MaxFileSize:
		return fail(fmt.Sprintf("file is %d bytes; the limit is %d (1 MiB)", fi.Size(), MaxFileSize),
			"certificate and key files are a few kilobytes; check that "+column+" names the right file")
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fail("permission denied"+where, "make the file readable by the user running dps-batch")
		}
		return fail(fmt.Sprintf("cannot open file: %v", unwrapPathError(err)), "check the path")
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fail(fmt.Sprintf("cannot read file: %v", unwrapPathError(err)), "check the file")
	}
	if len(data) > MaxFileSize {
		return fail(fmt.Sprintf("file is over the %d-byte (1 MiB) limit", MaxFileSize),
			"certificate and key files are a few kilobytes; check that "+column+" names the right file")
	}
	return data, fi.Mode(), true
}

// unwrapPathError drops the path from an *fs.PathError: the problem names
// the file already.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// issue is a file-content problem before it is tied to a row; the hint may
// mention the file.
type issue struct {
	msg      string
	hintText string // may contain one %s for the file path
}

func (i *issue) hint(path string) string {
	if strings.Contains(i.hintText, "%s") {
		return strings.ReplaceAll(i.hintText, "%s", shellQuote(path))
	}
	return i.hintText
}

func isKeyBlock(t string) bool {
	return t == "PRIVATE KEY" || t == "EC PRIVATE KEY" || t == "RSA PRIVATE KEY" ||
		t == "ENCRYPTED PRIVATE KEY" || t == "OPENSSH PRIVATE KEY"
}

// parseCerts parses the PEM certificates in data, in order. Key blocks are
// skipped when keysAllowed (the cert and key share one file) and are an
// error otherwise.
func parseCerts(data []byte, keysAllowed bool) ([]*x509.Certificate, *issue) {
	var certs []*x509.Certificate
	rest := data
	blocks := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		switch {
		case b.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, &issue{msg: fmt.Sprintf("certificate %d in the file cannot be parsed: %v", len(certs)+1, err),
					hintText: "check the file with: openssl x509 -noout -text -in %s"}
			}
			certs = append(certs, c)
		case isKeyBlock(b.Type) && keysAllowed:
		case isKeyBlock(b.Type):
			return nil, &issue{msg: fmt.Sprintf("file holds a private key (PEM %q), not a certificate", b.Type),
				hintText: "point cert_path at the certificate and key_path at the private key (are they swapped?)"}
		case b.Type == "CERTIFICATE REQUEST" || b.Type == "NEW CERTIFICATE REQUEST":
			return nil, &issue{msg: "file holds a certificate request (CSR), not a certificate",
				hintText: "have the CA sign the request and point the row at the issued certificate"}
		case b.Type == "EC PARAMETERS":
		default:
			return nil, &issue{msg: fmt.Sprintf("file holds a PEM %q block, want CERTIFICATE", b.Type),
				hintText: "use a PEM file of CERTIFICATE blocks, the device certificate first"}
		}
	}
	if len(certs) > 0 {
		return certs, nil
	}
	if blocks == 0 && len(data) > 0 && data[0] == 0x30 {
		return nil, &issue{msg: "file is DER (binary), not PEM",
			hintText: "convert it: openssl x509 -inform der -in %s -out cert.pem"}
	}
	return nil, &issue{msg: "no PEM certificate found in the file",
		hintText: `certificates are PEM text starting with "-----BEGIN CERTIFICATE-----"`}
}

// parseKey parses the one PEM private key in data. Certificates are skipped
// when certsAllowed (the cert and key share one file). Issues describe the
// key; they never include its bytes or the parser's error text.
func parseKey(data []byte, certsAllowed bool) (crypto.Signer, *issue) {
	var (
		key     crypto.Signer
		nKeys   int
		sawCert bool
		rest    = data
	)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED"):
			return nil, &issue{msg: "private key is encrypted",
				hintText: "dps-batch needs a plain key file (keep it mode 0600); decrypt it with: openssl pkey -in %s -out %s.plain"}
		case b.Type == "OPENSSH PRIVATE KEY":
			return nil, &issue{msg: "file holds an OpenSSH private key",
				hintText: "use the PEM private key the certificate was issued for (PKCS#8, SEC1 or PKCS#1)"}
		case isKeyBlock(b.Type):
			nKeys++
			k, err := parsePrivateKey(b.Bytes)
			if err != nil {
				return nil, &issue{msg: fmt.Sprintf("the PEM %q block is not a usable private key: %s", b.Type, err),
					hintText: "check the key with: openssl pkey -noout -in %s"}
			}
			key = k
		case b.Type == "CERTIFICATE":
			sawCert = true
		case b.Type == "EC PARAMETERS":
		default:
			return nil, &issue{msg: fmt.Sprintf("file holds a PEM %q block, want PRIVATE KEY", b.Type),
				hintText: "point key_path at the device's PEM private key"}
		}
	}
	switch {
	case nKeys > 1:
		return nil, &issue{msg: fmt.Sprintf("file holds %d private keys, want one", nKeys),
			hintText: "keep only the device certificate's private key in the file"}
	case key != nil:
		return key, nil
	case sawCert && certsAllowed:
		return nil, &issue{msg: "file holds a certificate but no private key",
			hintText: "key_path names the same file as cert_path; point key_path at the certificate's private key"}
	case sawCert:
		return nil, &issue{msg: "file holds a certificate, not a private key",
			hintText: "point key_path at the private key and cert_path at the certificate (are they swapped?)"}
	case len(data) > 0 && data[0] == 0x30:
		return nil, &issue{msg: "file is DER (binary), not PEM",
			hintText: "convert it: openssl pkey -inform der -in %s -out key.pem"}
	default:
		return nil, &issue{msg: "no PEM private key found in the file",
			hintText: `keys are PEM text starting with "-----BEGIN PRIVATE KEY-----" (or EC/RSA PRIVATE KEY)`}
	}
}

// parsePrivateKey tries PKCS#8, SEC1 and PKCS#1 in turn, whatever the PEM
// label says. Its errors are our own words: parser errors are not passed on,
// so no part of the key can reach a message.
func parsePrivateKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		switch k := k.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported key type %T; use ECDSA, RSA or Ed25519", k)
		}
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("not PKCS#8, SEC1 (EC) or PKCS#1 (RSA) DER")
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// shellQuote quotes p for a POSIX shell when it needs quoting, so hints
// can be pasted as they are.
func shellQuote(p string) string {
	safe := p != ""
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./+:@%,=", c)) {
			safe = false
			break
		}
	}
	if safe {
		return p
	}
	return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
}

// looksLikeKey reports whether s could be a base64 symmetric key: standard
// base64 of 16 to 64 bytes with both letter cases. Problems never echo such
// values, since a key in the wrong column must not reach a log.
func looksLikeKey(s string) bool {
	if len(s) < 24 || len(s) > 88 || len(s)%4 != 0 {
		return false
	}
	upper, lower := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		upper = upper || c >= 'A' && c <= 'Z'
		lower = lower || c >= 'a' && c <= 'z'
	}
	if !upper || !lower {
		return false
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(b, []byte(s))
	return err == nil && n >= MinSymmetricKeyLength && n <= MaxSymmetricKeyLength
}

// safeID returns id for use in problems, or "" when id is not a valid
// registration id and looks like a key.
func safeID(id string) string {
	if looksLikeKey(id) && dps.ValidateRegistrationID(id, false) != nil {
		return ""
	}
	return id
}

// Package manifests reads and validates dps-batch device manifests and loads
// each device's credentials, so that every problem is found, with its row
// number and a fix hint, before any network call.
//
// # Format
//
// A manifest is a CSV file (RFC 4180, comma-separated) whose first line is a
// header naming the columns, in any order:
//
//	registration_id  required; the DPS registration id (for X.509, the certificate CN)
//	cert_path        X.509: PEM certificate, the leaf first, optionally followed by its chain
//	key_path         X.509: PEM private key (PKCS#8, SEC1 or PKCS#1, not encrypted)
//	chain_path       X.509, optional: more chain certificates, e.g. a shared ca/intermediate.pem
//	symmetric_key    individual-enrollment symmetric key, base64 (16 to 64 bytes decoded)
//	payload          optional JSON object sent to custom allocation policies
//	csr_key_path     certificate issuance: the device's operational private key (PEM, EC P-384)
//	csr_path         certificate issuance: a ready PKCS#10 CSR (PEM), instead of csr_key_path
//	issued_cert_path certificate issuance, optional: where the issued chain is written
//	                 (default issued/<registration id>.pem)
//
// Other columns (an MES export's hub, batch or notes) are ignored, with
// one warning in Validate's Summary, and their values are kept with each row
// in [Row.Extra]; [Options.Strict] refuses them instead. [Options.Columns]
// maps columns of other names onto these (serial_number as
// registration_id).
//
// A row carries either X.509 credentials (cert_path and key_path) or a
// symmetric_key. A row with neither belongs to a symmetric-key enrollment
// group: its key is derived from the group key given in [Options.GroupKey].
// Relative paths resolve against the manifest's folder.
//
// The csr_ columns and issued_cert_path are for DPS certificate issuance
// (device API 2025-07-01-preview), requested with [Options.IssueCerts]:
// DPS issues each device an operational certificate for a PKCS#10 request
// sent with its registration. Every row then needs a CSR: csr_key_path (the
// loader makes the CSR, subject CN = registration id, ECDSA with SHA-384),
// csr_path, or a key in [Options.CSRKeyDir]. The preview accepts EC P-384
// keys only. Without IssueCerts these columns are a header error, since the
// devices would be registered without certificates, unless
// [Options.IgnoreCSRColumns] says the caller does not register devices.
//
// Reading rules: a UTF-8 byte order mark before the header is ignored; header
// names are matched case-insensitively after trimming spaces; every field is
// trimmed of surrounding spaces; lines starting with '#' are comments (to
// start a field with '#', quote it); empty lines, and lines whose fields are
// all empty (",,,"), are skipped. Row numbers in problems are physical line
// numbers, as an editor shows them.
//
// # Use
//
// [Validate] checks a whole manifest and returns a [Summary]. A runner reads
// rows with [Reader.Next] and turns each into a ready-to-register [Device]
// with [Reader.Load]. Reading streams: memory does not grow with the number
// of rows (only duplicate detection in Validate keeps 8 bytes per id).
package manifests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/jszwec/csvutil"
)

// Column names, as written in a manifest header.
const (
	colRegistrationID = "registration_id"
	colCertPath       = "cert_path"
	colKeyPath        = "key_path"
	colChainPath      = "chain_path"
	colSymmetricKey   = "symmetric_key"
	colPayload        = "payload"
	colCSRKeyPath     = "csr_key_path"
	colCSRPath        = "csr_path"
	colIssuedCertPath = "issued_cert_path"
)

// knownColumns lists the manifest columns in their documented order.
var knownColumns = []string{colRegistrationID, colCertPath, colKeyPath, colChainPath, colSymmetricKey, colPayload,
	colCSRKeyPath, colCSRPath, colIssuedCertPath}

// csrColumns are the columns of certificate issuance (Options.IssueCerts).
var csrColumns = []string{colCSRKeyPath, colCSRPath, colIssuedCertPath}

// MaxLineLength is the longest physical manifest line accepted, in bytes.
// It keeps a wrong file (a binary, a huge one-line blob) from being read
// into memory whole.
const MaxLineLength = 1 << 20

// Row is one manifest record as written, before any file is read. Fields are
// trimmed of surrounding spaces; absent columns are empty.
type Row struct {
	// Line is the 1-based physical line number of the record in the file
	// (the header is line 1).
	Line int `csv:"-"`
	// RegistrationID is the DPS registration id, unchecked.
	RegistrationID string `csv:"registration_id"`
	// CertPath, KeyPath and ChainPath are file paths as written: relative
	// ones resolve against the manifest's folder when loaded.
	CertPath  string `csv:"cert_path"`
	KeyPath   string `csv:"key_path"`
	ChainPath string `csv:"chain_path"`
	// SymmetricKey is the base64 individual enrollment key; empty for X.509
	// and group devices.
	SymmetricKey string `csv:"symmetric_key"`
	// Payload is the custom allocation payload text; empty for none.
	Payload string `csv:"payload"`
	// CSRKeyPath, CSRPath and IssuedCertPath are the certificate issuance
	// paths as written (see Options.IssueCerts); empty when absent.
	CSRKeyPath     string `csv:"csr_key_path"`
	CSRPath        string `csv:"csr_path"`
	IssuedCertPath string `csv:"issued_cert_path"`
	// Extra holds the values of the row's extra columns: those the
	// manifest format does not define, kept when Options.Strict is off.
	// Empty when the header has none.
	Extra Extra `csv:"-"`
}

// Reader streams the rows of a manifest. Next must be called from one
// goroutine; Load is safe for concurrent use.
type Reader struct {
	path    string // manifest path for messages; empty for NewReader
	baseDir string // relative paths resolve against this
	closer  io.Closer
	src     *recordSource
	dec     *csvutil.Decoder
	err     error // sticky fatal error from Next
	row     Row   // decoding target, reused

	extra      []int     // indexes of the extra columns in a record
	extraNames string    // their names, packed for Extra
	extraList  []string  // their names
	warnings   []Problem // about the header, for Validate's Summary
	packBuf    []byte    // reused to pack a row's extra values

	cache loadCache
}

// Open opens the manifest at path and checks its header, with the default
// header options: unknown columns are extra columns, no column is mapped.
// It is OpenWith(path, Options{}).
func Open(path string) (*Reader, error) { return OpenWith(path, Options{}) }

// OpenWith opens the manifest at path and checks its header, with
// opts.Strict and opts.Columns (other options apply to Load). Relative
// paths in the manifest resolve against the manifest's folder. Header
// problems are returned, all of them, as a *HeaderError.
func OpenWith(path string, opts Options) (*Reader, error) {
	if err := opts.Columns.check(); err != nil {
		return nil, fmt.Errorf("open manifest %s: column mapping: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open manifest: %w", err)
	}
	if fi, err := f.Stat(); err != nil {
		f.Close()
		return nil, fmt.Errorf("open manifest: %w", err)
	} else if fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("open manifest %s: is a directory, want a CSV file", path)
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	r, err := newReader(f, dir, path, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.closer = f
	return r, nil
}

// NewReader reads a manifest from rd and checks its header; header problems
// are returned as a *HeaderError. Relative paths in the manifest resolve
// against baseDir ("" means the current directory). It is
// NewReaderWith(rd, baseDir, Options{}).
func NewReader(rd io.Reader, baseDir string) (*Reader, error) {
	return newReader(rd, baseDir, "", Options{})
}

// NewReaderWith is NewReader with the header options opts.Strict and
// opts.Columns.
func NewReaderWith(rd io.Reader, baseDir string, opts Options) (*Reader, error) {
	if err := opts.Columns.check(); err != nil {
		return nil, fmt.Errorf("read manifest: column mapping: %w", err)
	}
	return newReader(rd, baseDir, "", opts)
}

func newReader(rd io.Reader, baseDir, path string, opts Options) (*Reader, error) {
	br := bufio.NewReaderSize(&lineLimitReader{r: rd, max: MaxLineLength}, 64<<10)
	// A BOM is common in files saved by spreadsheet programs.
	if b, _ := br.Peek(3); bytes.Equal(b, []byte("\uFEFF")) {
		br.Discard(3)
	}
	cr := csv.NewReader(br)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1 // counted per row, so the problem gets a line number
	cr.ReuseRecord = true

	r := &Reader{path: path, baseDir: baseDir}
	header, err := cr.Read()
	switch {
	case err == io.EOF:
		return nil, &HeaderError{Path: path, Problems: []Problem{{
			Line:    1,
			Message: "the manifest is empty",
			Hint:    "the first line must be a header, e.g. registration_id,cert_path,key_path",
		}}}
	case err != nil:
		if p, ok := csvProblem(err, 1); ok {
			return nil, &HeaderError{Path: path, Problems: []Problem{p}}
		}
		return nil, r.wrap(err)
	}
	line, _ := cr.FieldPos(0)
	h := checkHeader(header, line, opts)
	if len(h.problems) > 0 {
		return nil, &HeaderError{Path: path, Problems: h.problems}
	}
	columns := h.columns
	r.extra, r.warnings = h.extra, h.warnings
	for _, i := range h.extra {
		r.extraList = append(r.extraList, columns[i])
	}
	r.extraNames = packStrings(nil, r.extraList)
	r.src = &recordSource{csv: cr, width: len(columns), idColumn: indexOf(columns, colRegistrationID)}
	r.dec, err = csvutil.NewDecoder(r.src, columns...)
	if err != nil {
		return nil, r.wrap(err)
	}
	return r, nil
}

// Next returns the next row. It returns io.EOF after the last row. A
// malformed record (bad quoting, wrong number of fields) is returned as a
// *Problem carrying the line number, with Row.Line set; reading may continue
// with the next call. Any other error is fatal and is returned again by
// later calls.
func (r *Reader) Next() (Row, error) {
	if r.err != nil {
		return Row{}, r.err
	}
	r.row = Row{}
	err := r.dec.Decode(&r.row) // into the Reader: no allocation per row
	if err == nil {
		r.row.Line = r.src.line
		if len(r.extra) > 0 {
			r.row.Extra = r.extraValues(r.dec.Record())
		}
		return r.row, nil
	}
	var p *Problem
	if errors.As(err, &p) {
		return Row{Line: p.Line, RegistrationID: p.RegistrationID}, p
	}
	if err != io.EOF {
		err = r.wrap(err)
	}
	r.err = err
	return Row{}, err
}

// ExtraColumns returns the names of the header's extra columns (those the
// manifest format does not define), in header order; nil when there are
// none. Each Row carries their values in Row.Extra.
func (r *Reader) ExtraColumns() []string { return slices.Clone(r.extraList) }

// extraValues packs the record's values of the extra columns.
func (r *Reader) extraValues(rec []string) Extra {
	buf := r.packBuf[:0]
	for _, i := range r.extra {
		v := ""
		if i < len(rec) {
			v = rec[i]
		}
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		buf = append(buf, v...)
	}
	r.packBuf = buf
	return Extra{names: r.extraNames, values: string(buf)}
}

// Close closes the manifest file opened by Open. It does nothing for a
// Reader made by NewReader.
func (r *Reader) Close() error {
	if r.closer == nil {
		return nil
	}
	c := r.closer
	r.closer = nil
	if err := c.Close(); err != nil {
		return r.wrap(err)
	}
	return nil
}

// resolve returns p resolved against the manifest's folder.
func (r *Reader) resolve(p string) string {
	if filepath.IsAbs(p) || r.baseDir == "" {
		return filepath.Clean(p)
	}
	return filepath.Join(r.baseDir, p)
}

func (r *Reader) wrap(err error) error {
	if r.path == "" {
		return fmt.Errorf("read manifest: %w", err)
	}
	return fmt.Errorf("read manifest %s: %w", r.path, err)
}

// headerInfo is what checkHeader makes of a header line.
type headerInfo struct {
	columns  []string  // the column names as the decoder sees them: trimmed, lower case, mapped
	extra    []int     // indexes of the columns the format does not define
	problems []Problem // errors: the manifest cannot be read
	warnings []Problem // worth telling, not stopping
}

// checkHeader normalises the header names (trimmed, lower case, mapped by
// opts.Columns) and reports every problem with them: empty, duplicate or
// (with opts.Strict) unknown names, mappings whose column is absent or
// clashes with one of ours, a missing registration_id, and column sets
// that cannot describe a device. Without opts.Strict, unknown columns are
// extra columns, named in one warning.
func checkHeader(names []string, line int, opts Options) headerInfo {
	h := headerInfo{columns: make([]string, len(names))}
	add := func(col, msg, hint string) {
		h.problems = append(h.problems, Problem{Line: line, Column: col, Message: msg, Hint: hint})
	}
	ours := make(map[string]string, len(opts.Columns)) // the header's name → ours
	for o, t := range opts.Columns {
		ours[t] = o
	}
	present := make(map[string]bool, len(names))
	for _, n := range headerNames(names) {
		present[n] = true
	}
	mapped := make(map[string]bool, len(opts.Columns)) // mapped names found in the header
	known := 0
	seen := make(map[string]int, len(names))
	for i, raw := range names {
		name := strings.ToLower(strings.TrimSpace(raw))
		if o, ok := ours[name]; ok && name != "" {
			mapped[name] = true
			name = o
		} else if t, ok := opts.Columns[name]; ok && t != name && present[t] {
			add(name, fmt.Sprintf("column is in the header, and --column %s=%s maps %s to it too", name, t, t),
				fmt.Sprintf("drop --column %s=%s, or remove or rename one of the two columns", name, t))
			h.columns[i] = name
			continue
		}
		h.columns[i] = name
		switch {
		case name == "":
			add("", fmt.Sprintf("column %d has no name", i+1),
				"name every column, or remove the stray comma; columns: "+strings.Join(knownColumns, ","))
			continue
		case indexOf(knownColumns, name) >= 0:
			known++
		case opts.Strict:
			hint := "known columns: " + strings.Join(knownColumns, ", ") +
				"; map it with --column OURS=" + name + ", or leave out --strict to ignore it"
			if s := suggest(name); s != "" {
				hint = fmt.Sprintf("did you mean %q? ", s) + hint
			}
			add(name, "unknown column", hint)
		default:
			h.extra = append(h.extra, i)
		}
		if first, ok := seen[name]; ok {
			add(name, fmt.Sprintf("column appears twice (columns %d and %d)", first+1, i+1), "keep one of them")
		} else {
			seen[name] = i
		}
	}
	for _, o := range slices.Sorted(maps.Keys(opts.Columns)) {
		if t := opts.Columns[o]; !mapped[t] && t != o {
			add("", fmt.Sprintf("--column %s=%s: the header has no column %s", o, t, t),
				"the header's columns are: "+strings.Join(headerNames(names), ", "))
		}
	}
	if known == 0 && len(names) > 0 {
		// Probably a data row where the header should be.
		add("", "the first line is not a header",
			"add a header line naming the columns, e.g. registration_id,cert_path,key_path")
		h.extra = nil
		return h
	}
	var extraNames []string
	for _, i := range h.extra {
		extraNames = append(extraNames, h.columns[i])
	}
	has := func(c string) bool { _, ok := seen[c]; return ok }
	if !has(colRegistrationID) {
		hint := "add a registration_id column"
		if len(extraNames) > 0 {
			name := "NAME"
			for _, e := range extraNames {
				if suggest(e) == colRegistrationID {
					name = e
				}
			}
			hint += fmt.Sprintf(", or map one of yours to it: --column registration_id=%s (columns not used: %s)", name, strings.Join(extraNames, ", "))
		}
		add(colRegistrationID, "required column is missing", hint)
	}
	if has(colCertPath) != has(colKeyPath) {
		missing, present := colKeyPath, colCertPath
		if has(colKeyPath) {
			missing, present = colCertPath, colKeyPath
		}
		add(missing, "column is missing", fmt.Sprintf("X.509 devices need both cert_path and key_path; add %s next to %s", missing, present))
	}
	if has(colChainPath) && !has(colCertPath) {
		add(colCertPath, "column is missing", "chain_path only makes sense with cert_path and key_path")
	}
	switch {
	case opts.IssueCerts:
		if !has(colCSRKeyPath) && !has(colCSRPath) && opts.CSRKeyDir == "" {
			add(colCSRKeyPath, "column is missing: certificate issuance needs a CSR for every device",
				"add a csr_key_path column (the device's EC P-384 key) or a csr_path column (its PKCS#10 CSR), or make a key per device with --generate-csr-keys DIR")
		}
	case !opts.IgnoreCSRColumns:
		for _, c := range csrColumns {
			if has(c) {
				add(c, "column is for certificate issuance, which is off: it would be ignored and the devices registered without certificates",
					"add --issue-certs (api-version "+dps.CertificateIssuanceAPIVersion+") or remove the columns")
			}
		}
	}
	if len(extraNames) > 0 {
		hint := "--strict refuses unknown columns; --column OURS=YOURS maps one of yours to ours (" + strings.Join(knownColumns, ", ") + ")"
		for _, e := range extraNames {
			if s := suggest(e); s != "" && !has(s) {
				hint = fmt.Sprintf("did you mean %q for %s? ", s, e) + hint
				break
			}
		}
		word := "column"
		if len(extraNames) > 1 {
			word = "columns"
		}
		h.warnings = append(h.warnings, Problem{Line: line, Severity: SeverityWarning,
			Message: fmt.Sprintf("unknown %s ignored: %s", word, strings.Join(extraNames, ", ")), Hint: hint})
	}
	return h
}

// headerNames returns the header's non-empty names, trimmed and in lower
// case.
func headerNames(names []string) []string {
	var out []string
	for _, s := range names {
		if s = strings.ToLower(strings.TrimSpace(s)); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// suggest returns the known column closest to name, if it is close.
func suggest(name string) string {
	best, bestDist := "", 3
	norm := strings.NewReplacer("-", "_", " ", "_").Replace(name)
	for _, c := range knownColumns {
		if d := editDistance(norm, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// recordSource feeds csvutil with trimmed records of the header's width. It
// skips blank records and turns malformed ones into *Problem errors that
// carry the line number.
type recordSource struct {
	csv      *csv.Reader
	width    int // number of header columns
	idColumn int // index of registration_id, or -1
	line     int // line of the record last returned
}

// Read implements csvutil.Reader.
func (s *recordSource) Read() ([]string, error) {
	for {
		rec, err := s.csv.Read()
		if err != nil {
			if p, ok := csvProblem(err, 0); ok {
				return nil, &p
			}
			return nil, err
		}
		s.line, _ = s.csv.FieldPos(0)
		blank := true
		for i, f := range rec {
			rec[i] = strings.TrimSpace(f)
			blank = blank && rec[i] == ""
		}
		if blank {
			continue
		}
		if len(rec) != s.width {
			p := &Problem{
				Line:    s.line,
				Message: fmt.Sprintf("row has %d fields, the header has %d", len(rec), s.width),
				Hint:    `quote fields that contain commas ("a,b") and check for a stray or missing comma`,
			}
			if s.idColumn >= 0 && s.idColumn < len(rec) {
				p.RegistrationID = safeID(rec[s.idColumn])
			}
			return nil, p
		}
		return rec, nil
	}
}

// csvProblem turns a CSV syntax error into a Problem; line overrides the
// error's line when non-zero.
func csvProblem(err error, line int) (Problem, bool) {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return Problem{}, false
	}
	if line == 0 {
		line = pe.StartLine
	}
	msg := fmt.Sprintf("malformed CSV at line %d, column %d: %v", pe.Line, pe.Column, pe.Err)
	hint := `enclose fields that contain quotes or commas in double quotes and double the inner quotes ("{""site"":""a""}")`
	if pe.Line != pe.StartLine {
		hint = "a quoted field is not closed; " + hint
	}
	return Problem{Line: line, Message: msg, Hint: hint}, true
}

// errLineTooLong is returned (wrapped) when a manifest line exceeds
// MaxLineLength.
var errLineTooLong = errors.New("line too long")

// lineLimitReader fails once a physical line grows beyond max bytes, so a
// file that is not a manifest cannot make the CSV reader buffer it whole.
type lineLimitReader struct {
	r    io.Reader
	max  int
	cur  int // bytes in the current line so far
	line int // 1-based number of the current line, minus one
	err  error
}

func (l *lineLimitReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	for start := 0; start < n; {
		i := bytes.IndexByte(p[start:n], '\n')
		seg := n - start
		if i >= 0 {
			seg = i
		}
		if l.cur+seg > l.max {
			// Hand over data up to just past the limit and no newline, so
			// the over-long line can never be returned as a record.
			l.err = fmt.Errorf("line %d is longer than %d bytes; is this a CSV manifest? %w", l.line+1, l.max, errLineTooLong)
			return start + l.max - l.cur + 1, l.err
		}
		if i < 0 {
			l.cur += seg
			break
		}
		l.cur = 0
		l.line++
		start += i + 1
	}
	return n, err
}

// loadCache holds parsed shared chain files and checked signatures, so that
// thousands of rows naming the same ca/intermediate.pem parse it once.
type loadCache struct {
	mu     sync.Mutex
	chains map[string]*chainFile // by resolved path
	sigs   map[[2]*chainCert]error

	folders map[string]*folderCheck // output folders checked, by resolved path
}

// maxCachedChains bounds the chain cache; beyond it chain files are parsed
// per row (a manifest with a distinct chain file per device gains nothing
// from caching).
const maxCachedChains = 256

package manifests

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
)

// Summary is the outcome of validating a whole manifest.
type Summary struct {
	// Rows counts the data rows read, good and bad (not comments or blank
	// lines).
	Rows int
	// ByKind counts the usable rows (no errors, duplicates excluded) by
	// credential kind.
	ByKind map[Kind]int
	// Errors lists row problems that make rows unusable, sorted by line, at
	// most maxProblems of them.
	Errors []Problem
	// Warnings lists problems that do not stop a device, sorted by line, at
	// most maxProblems of them.
	Warnings []Problem
	// TruncatedErrors counts the errors left out of Errors.
	TruncatedErrors int
	// TruncatedWarnings counts the warnings left out of Warnings.
	TruncatedWarnings int
	// ErrorGroups lists every error once, with all the rows it was found
	// on (see Group), sorted by first line: what to show a user. It holds
	// at most maxProblems distinct errors; OtherErrors counts the errors
	// of further distinct kinds.
	ErrorGroups []Group
	OtherErrors int
	// WarningGroups and OtherWarnings are the same for warnings.
	WarningGroups []Group
	OtherWarnings int
	// ExtraColumns names the header's columns that the manifest format
	// does not define, in header order (Options.Strict off): they were
	// ignored, and each Row carries their values in Row.Extra. A warning
	// on line 1 names them.
	ExtraColumns []string
	// X509 holds, by line, the first usable X.509 devices (at most
	// Options.KeepX509 of them, fewer when rows repeat an id), with the
	// rows they were loaded from: a snapshot of their files at validation.
	// It is filled whether or not the manifest has errors. It holds private
	// keys: never print, log or encode it.
	X509 map[int]Kept `json:"-"`

	errs, warns grouper // build ErrorGroups and WarningGroups
}

// Kept is a device Validate loaded and kept, with the row it came from.
type Kept struct {
	Row    Row
	Device *Device
}

// OK reports whether the manifest has no errors (warnings are allowed).
func (s *Summary) OK() bool { return len(s.Errors) == 0 && s.TruncatedErrors == 0 }

// Validate reads the whole manifest at path, loads every row (reading and
// parsing its files) and detects duplicate registration ids. Row problems go
// into the Summary, at most maxProblems errors and maxProblems warnings (0 or
// less: no limit), the rest counted; grouped (ErrorGroups, WarningGroups),
// every occurrence of at most maxProblems distinct problems is counted. The
// header is read with opts.Strict and opts.Columns. The error is non-nil
// only when the manifest cannot be read, its header is bad (*HeaderError),
// or ctx ends.
//
// Memory stays flat in the number of rows except for duplicate detection,
// which keeps one 64-bit seeded hash per id (8 bytes per row, in fixed-size
// chunks). After the first pass the chunks are sorted and merged to find
// repeated hashes; only if there are any, a second pass over the file keeps
// the exact ids with those hashes and reports each row that repeats an
// earlier id, so a hash collision never yields a false duplicate.
func Validate(ctx context.Context, path string, opts Options, maxProblems int) (*Summary, error) {
	r, err := OpenWith(path, opts)
	if err != nil {
		return nil, err
	}
	defer r.Close()

	s := &Summary{ByKind: make(map[Kind]int), ExtraColumns: r.ExtraColumns()}
	s.errs.max, s.warns.max = maxProblems, maxProblems
	for _, p := range r.warnings {
		s.add(p, maxProblems)
	}
	ids := idHashes{seed: maphash.MakeSeed()}
	paths := idHashes{seed: ids.seed} // issued_cert_path files, with IssueCerts
	loads := newParallelLoader(r, opts)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("validate manifest %s: %w", path, err)
		}
		chunk, readErr := loads.next()
		for _, res := range chunk {
			s.Rows++
			if res.row.RegistrationID != "" {
				ids.add(res.row.RegistrationID)
			}
			if opts.IssueCerts {
				if p := r.issuedPath(res.row, checkIssuanceID(res.row.RegistrationID)); p != "" {
					paths.add(p)
				}
			}
			for _, p := range res.problems {
				s.add(p, maxProblems)
			}
			if res.dev != nil {
				s.ByKind[res.dev.Kind]++
				if res.dev.Kind == KindX509 && len(s.X509) < opts.KeepX509 {
					if s.X509 == nil {
						s.X509 = make(map[int]Kept)
					}
					s.X509[res.dev.Line] = Kept{Row: res.row, Device: res.dev}
				}
			}
		}
		if readErr == io.EOF {
			break
		}
		if readErr != nil {
			return nil, readErr
		}
	}
	if err := r.Close(); err != nil {
		return nil, err
	}

	repeatedIDs, repeatedPaths := ids.repeated(), paths.repeated()
	if len(repeatedIDs) > 0 || len(repeatedPaths) > 0 {
		ids.chunks, paths.chunks = nil, nil // free the hashes before the second pass
		if err := s.addDuplicates(ctx, path, opts, ids.seed, repeatedIDs, repeatedPaths, maxProblems); err != nil {
			return nil, err
		}
	}
	byLine := func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) }
	slices.SortStableFunc(s.Errors, byLine)
	slices.SortStableFunc(s.Warnings, byLine)
	s.ErrorGroups, s.OtherErrors = s.errs.sorted(), s.errs.other
	s.WarningGroups, s.OtherWarnings = s.warns.sorted(), s.warns.other
	return s, nil
}

func (s *Summary) add(p Problem, max int) {
	if p.Severity == SeverityWarning {
		s.warns.add(p)
		if max > 0 && len(s.Warnings) >= max {
			s.TruncatedWarnings++
			return
		}
		s.Warnings = append(s.Warnings, p)
		return
	}
	s.errs.add(p)
	if max > 0 && len(s.Errors) >= max {
		s.TruncatedErrors++
		return
	}
	s.Errors = append(s.Errors, p)
}

// addDuplicates re-reads the manifest, keeping the exact ids of the rows
// whose hash is in repeatedIDs and the exact issued_cert_path files of
// those whose file's hash is in repeatedPaths, and reports every row that
// repeats an earlier id or, with another id, an earlier row's
// issued_cert_path. Such rows no longer count in ByKind.
func (s *Summary) addDuplicates(ctx context.Context, path string, opts Options, seed maphash.Seed, repeatedIDs, repeatedPaths map[uint64]struct{}, maxProblems int) error {
	r, err := OpenWith(path, opts)
	if err != nil {
		return err
	}
	defer r.Close()
	firstLine := make(map[string]int)
	firstPath := make(map[string]int)
	for n := 0; ; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("validate manifest %s: %w", path, err)
			}
		}
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			var p *Problem
			if errors.As(err, &p) {
				continue // reported in the first pass
			}
			return err
		}
		dup := false
		if _, ok := repeatedIDs[maphash.String(seed, row.RegistrationID)]; ok && row.RegistrationID != "" {
			if first, ok := firstLine[row.RegistrationID]; !ok {
				firstLine[row.RegistrationID] = row.Line
			} else {
				s.add(Problem{
					Line: row.Line, RegistrationID: safeID(row.RegistrationID), Column: colRegistrationID,
					Message: fmt.Sprintf("duplicate registration id (first on row %d)", first),
					Hint:    "registration ids must be unique; remove the repeated row or give it its own id",
				}, maxProblems)
				dup = true
			}
		}
		if len(repeatedPaths) > 0 {
			if p := r.issuedPath(row, checkIssuanceID(row.RegistrationID)); p != "" {
				if _, ok := repeatedPaths[maphash.String(seed, p)]; ok {
					if first, ok := firstPath[p]; !ok {
						firstPath[p] = row.Line
					} else if !dup { // a repeated id repeats its default file: said already
						written := row.IssuedCertPath
						if written == "" {
							written = filepath.Join(DefaultIssuedCertDir, row.RegistrationID+".pem")
						}
						s.add(Problem{
							Line: row.Line, RegistrationID: safeID(row.RegistrationID), Column: colIssuedCertPath, Path: written,
							Message: fmt.Sprintf("another device's issued certificate is written to the same file (first on row %d)", first),
							Hint:    "give each row its own issued_cert_path, or leave it empty for the default " + DefaultIssuedCertDir + "/<registration id>.pem",
						}, maxProblems)
						dup = true
					}
				}
			}
		}
		if !dup {
			continue
		}
		// Duplicates are rare: loading the row again to learn whether it
		// was counted is cheaper than remembering every row's kind.
		delete(s.X509, row.Line)
		if dev, _ := r.Load(row, opts); dev != nil {
			if s.ByKind[dev.Kind]--; s.ByKind[dev.Kind] == 0 {
				delete(s.ByKind, dev.Kind)
			}
		}
	}
	return r.Close()
}

// idHashes collects seeded 64-bit hashes of registration ids in fixed-size
// chunks: 8 bytes per id, and no copying as the collection grows.
type idHashes struct {
	seed   maphash.Seed
	chunks [][]uint64
}

const idHashChunk = 1 << 16

func (h *idHashes) add(id string) {
	n := len(h.chunks)
	if n == 0 || len(h.chunks[n-1]) == idHashChunk {
		h.chunks = append(h.chunks, make([]uint64, 0, idHashChunk))
		n++
	}
	h.chunks[n-1] = append(h.chunks[n-1], maphash.String(h.seed, id))
}

// repeated returns the hashes added more than once. It sorts each chunk and
// merges them, comparing neighbours in the merged order.
func (h *idHashes) repeated() map[uint64]struct{} {
	var rep map[uint64]struct{}
	for _, c := range h.chunks {
		slices.Sort(c)
	}
	// A min-heap of chunk cursors, ordered by their current value.
	type cursor struct{ chunk, pos int }
	val := func(c cursor) uint64 { return h.chunks[c.chunk][c.pos] }
	heap := make([]cursor, 0, len(h.chunks))
	less := func(i, j int) bool { return val(heap[i]) < val(heap[j]) }
	down := func(i int) {
		for {
			m := i
			if l := 2*i + 1; l < len(heap) && less(l, m) {
				m = l
			}
			if r := 2*i + 2; r < len(heap) && less(r, m) {
				m = r
			}
			if m == i {
				return
			}
			heap[i], heap[m] = heap[m], heap[i]
			i = m
		}
	}
	for i, c := range h.chunks {
		if len(c) > 0 {
			heap = append(heap, cursor{chunk: i})
		}
	}
	for i := len(heap)/2 - 1; i >= 0; i-- {
		down(i)
	}
	prev, started := uint64(0), false
	for len(heap) > 0 {
		v := val(heap[0])
		if started && v == prev {
			if rep == nil {
				rep = make(map[uint64]struct{})
			}
			rep[v] = struct{}{}
		}
		prev, started = v, true
		if heap[0].pos++; heap[0].pos == len(h.chunks[heap[0].chunk]) {
			heap[0] = heap[len(heap)-1]
			heap = heap[:len(heap)-1]
		}
		down(0)
	}
	return rep
}

// loadChunk is how many rows Validate reads before loading them in
// parallel: enough to keep every processor busy, few enough that memory
// stays flat.
const loadChunk = 256

// loaded is one row of a chunk: the row, or the problem that stopped it
// being read, and what Load made of it.
type loaded struct {
	row      Row
	dev      *Device
	problems []Problem
}

// parallelLoader reads rows in order and loads each chunk of them on all
// processors. Loading an X.509 row (reading two files, parsing, checking
// signatures) costs a hundred times more than reading it, and Validate
// runs before any request, with the processors otherwise idle. Results
// keep the file's order, so what Validate reports does not depend on
// scheduling.
type parallelLoader struct {
	r       *Reader
	opts    Options
	workers int
	buf     []loaded
}

func newParallelLoader(r *Reader, opts Options) *parallelLoader {
	return &parallelLoader{r: r, opts: opts, workers: runtime.GOMAXPROCS(0), buf: make([]loaded, 0, loadChunk)}
}

// next returns the next chunk, loaded, valid until the following call, and
// the read error that ended it (io.EOF at the end of the file).
func (pl *parallelLoader) next() ([]loaded, error) {
	chunk := pl.buf[:0]
	var readErr error
	for len(chunk) < loadChunk {
		row, err := pl.r.Next()
		if err == nil {
			chunk = append(chunk, loaded{row: row})
			continue
		}
		var p *Problem
		if errors.As(err, &p) {
			// A row that cannot be read counts as a row with that problem.
			chunk = append(chunk, loaded{row: Row{Line: p.Line}, problems: []Problem{*p}})
			continue
		}
		readErr = err
		break
	}
	pl.buf = chunk
	load := func(i int) {
		if c := &chunk[i]; c.problems == nil {
			c.dev, c.problems = pl.r.Load(c.row, pl.opts)
		}
	}
	workers := min(pl.workers, len(chunk))
	if workers <= 1 {
		for i := range chunk {
			load(i)
		}
		return chunk, readErr
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(chunk); i = int(next.Add(1)) - 1 {
				load(i)
			}
		})
	}
	wg.Wait()
	return chunk, readErr
}

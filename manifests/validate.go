package manifests

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"slices"
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
}

// OK reports whether the manifest has no errors (warnings are allowed).
func (s *Summary) OK() bool { return len(s.Errors) == 0 && s.TruncatedErrors == 0 }

// Validate reads the whole manifest at path, loads every row (reading and
// parsing its files) and detects duplicate registration ids. Row problems go
// into the Summary, at most maxProblems errors and maxProblems warnings (0 or
// less: no limit), the rest counted. The error is non-nil only when the
// manifest cannot be read, its header is bad (*HeaderError), or ctx ends.
//
// Memory stays flat in the number of rows except for duplicate detection,
// which keeps a set of 64-bit seeded hashes of the ids (about 16 bytes per
// row). Ids whose hash repeats are confirmed exactly in a second pass over
// the file that keeps only those ids, so a hash collision never reports a
// false duplicate; the second pass runs only when some hash repeated.
func Validate(ctx context.Context, path string, opts Options, maxProblems int) (*Summary, error) {
	r, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()

	s := &Summary{ByKind: make(map[Kind]int)}
	ids := idSet{seed: maphash.MakeSeed(), seen: make(map[uint64]struct{})}
	// Kinds of usable rows whose id hash was already seen: if confirmed as
	// duplicates they are taken out of ByKind.
	suspectKinds := make(map[int]Kind)
	for {
		if s.Rows%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("validate manifest %s: %w", path, err)
			}
		}
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		var p *Problem
		if errors.As(err, &p) {
			s.Rows++
			s.add(*p, maxProblems)
			continue
		}
		if err != nil {
			return nil, err
		}
		s.Rows++
		repeated := row.RegistrationID != "" && ids.add(row.RegistrationID)
		dev, problems := r.Load(row, opts)
		for _, p := range problems {
			s.add(p, maxProblems)
		}
		if dev != nil {
			s.ByKind[dev.Kind]++
			if repeated {
				suspectKinds[row.Line] = dev.Kind
			}
		}
	}
	if err := r.Close(); err != nil {
		return nil, err
	}

	if len(ids.repeated) > 0 {
		dups, err := confirmDuplicates(ctx, path, &ids)
		if err != nil {
			return nil, err
		}
		for _, d := range dups {
			s.add(Problem{
				Line: d.line, RegistrationID: safeID(d.id), Column: colRegistrationID,
				Message: fmt.Sprintf("duplicate registration id (first on row %d)", d.first),
				Hint:    "registration ids must be unique; remove the repeated row or give it its own id",
			}, maxProblems)
			if k, ok := suspectKinds[d.line]; ok {
				if s.ByKind[k]--; s.ByKind[k] == 0 {
					delete(s.ByKind, k)
				}
			}
		}
	}
	byLine := func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) }
	slices.SortStableFunc(s.Errors, byLine)
	slices.SortStableFunc(s.Warnings, byLine)
	return s, nil
}

func (s *Summary) add(p Problem, max int) {
	if p.Severity == SeverityWarning {
		if max > 0 && len(s.Warnings) >= max {
			s.TruncatedWarnings++
			return
		}
		s.Warnings = append(s.Warnings, p)
		return
	}
	if max > 0 && len(s.Errors) >= max {
		s.TruncatedErrors++
		return
	}
	s.Errors = append(s.Errors, p)
}

// idSet remembers hashes of the registration ids seen so far.
type idSet struct {
	seed     maphash.Seed
	seen     map[uint64]struct{}
	repeated map[uint64]struct{} // hashes seen more than once
}

// add records id and reports whether its hash was seen before (a probable,
// not yet confirmed, duplicate).
func (s *idSet) add(id string) bool {
	h := maphash.String(s.seed, id)
	if _, ok := s.seen[h]; !ok {
		s.seen[h] = struct{}{}
		return false
	}
	if s.repeated == nil {
		s.repeated = make(map[uint64]struct{})
	}
	s.repeated[h] = struct{}{}
	return true
}

type duplicate struct {
	id          string
	first, line int
}

// confirmDuplicates re-reads the manifest, keeps the exact ids of the rows
// whose hash repeated, and returns every row that repeats an earlier id.
func confirmDuplicates(ctx context.Context, path string, ids *idSet) ([]duplicate, error) {
	r, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	firstLine := make(map[string]int)
	var dups []duplicate
	for n := 0; ; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("validate manifest %s: %w", path, err)
			}
		}
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		var p *Problem
		if errors.As(err, &p) {
			continue // reported in the first pass
		}
		if err != nil {
			return nil, err
		}
		if row.RegistrationID == "" {
			continue
		}
		if _, ok := ids.repeated[maphash.String(ids.seed, row.RegistrationID)]; !ok {
			continue
		}
		if first, ok := firstLine[row.RegistrationID]; ok {
			dups = append(dups, duplicate{id: row.RegistrationID, first: first, line: row.Line})
		} else {
			firstLine[row.RegistrationID] = row.Line
		}
	}
	return dups, r.Close()
}

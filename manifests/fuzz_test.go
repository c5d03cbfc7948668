package manifests

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReader feeds arbitrary bytes through NewReader, Next and Load. It must
// never panic, and its results must keep their invariants: rows and row
// problems carry a line after the header, Load returns a device exactly when
// it found no error, and problems name the row they came from.
func FuzzReader(f *testing.F) {
	seeds := []string{
		header + "\ndev-1,devices/dev-1.pem,devices/dev-1.key,ca/intermediate.pem,,\n",
		"\uFEFFregistration_id,symmetric_key,payload\r\nd-1,MDEyMzQ1Njc4OWFiY2RlZg==,\"{\"\"a\"\":1}\"\r\n# c\r\n,,\r\n",
		"registration_id\nd-1\nd-1\n\"d-2\nd-3\n",
		"registration_id,symmetric_key\nd-1,k,extra\nd-2\n\"unterminated",
		"regstration_id,,registration_id\n",
		"registration_id,payload\nd-1,[1]\nd-2,{\nd-3,\"\"\"\"\n",
		"",
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, group bool) {
		r, err := NewReader(bytes.NewReader(data), dir)
		if err != nil {
			var he *HeaderError
			if errors.As(err, &he) {
				if len(he.Problems) == 0 {
					t.Fatal("HeaderError without problems")
				}
				_ = he.Error()
			}
			return
		}
		opts := testOptions()
		if group {
			opts.GroupKey = []byte("fuzz-group-key-0123456789abcdef")
		}
		last := 1
		for range 1000 {
			row, err := r.Next()
			if err == io.EOF {
				return
			}
			var p *Problem
			if errors.As(err, &p) {
				if p.Line <= last || row.Line != p.Line {
					t.Fatalf("row problem on line %d (row.Line %d) after line %d", p.Line, row.Line, last)
				}
				last = p.Line
				_ = p.Error()
				continue
			}
			if err != nil {
				return // fatal: the reader stops
			}
			if row.Line <= last {
				t.Fatalf("row on line %d after line %d", row.Line, last)
			}
			last = row.Line
			// Only files inside the fuzz folder: no reading of arbitrary paths.
			for _, p := range []*string{&row.CertPath, &row.KeyPath, &row.ChainPath} {
				if filepath.IsAbs(*p) || strings.Contains(*p, "..") {
					*p = "x"
				}
			}
			dev, problems := r.Load(row, opts)
			errs := 0
			for _, p := range problems {
				if p.Line != row.Line {
					t.Fatalf("problem line %d, want %d", p.Line, row.Line)
				}
				if p.Severity == SeverityError {
					errs++
				}
				if p.Error() == "" {
					t.Fatal("empty problem text")
				}
			}
			if (dev == nil) != (errs > 0) {
				t.Fatalf("device %v with %d errors", dev, errs)
			}
		}
	})
}

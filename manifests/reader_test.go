package manifests

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHeader(t *testing.T) {
	type want struct{ column, substr string }
	tests := []struct {
		name     string
		input    string
		opts     Options
		want     []want // every header problem, in order; nil: header is fine
		wantHint string // hint substring of the first problem, if set
	}{
		{name: "all columns", input: header + "\n"},
		{name: "symmetric only", input: "registration_id,symmetric_key\n"},
		{name: "group devices only", input: "registration_id\n"},
		{name: "any order, case and spaces", input: " Key_Path , REGISTRATION_ID,cert_path \n"},
		{name: "BOM", input: "\uFEFFregistration_id,cert_path,key_path\n"},
		{name: "comment before header", input: "# fleet line 3\nregistration_id\n"},
		{name: "empty file", input: "", want: []want{{"", "the manifest is empty"}}},
		{name: "only blank lines", input: "\n\n", want: []want{{"", "the manifest is empty"}}},
		{name: "missing key_path", input: "registration_id,cert_path\n",
			want: []want{{colKeyPath, "column is missing"}}},
		{name: "missing cert_path", input: "registration_id,key_path,chain_path\n",
			want: []want{{colCertPath, "column is missing"}, {colCertPath, "column is missing"}}},
		{name: "missing registration_id", input: "symmetric_key\n",
			want: []want{{colRegistrationID, "required column is missing"}}},
		{name: "unknown and misspelt columns, strict", input: "regstration_id,cert_path,key_path,notes\n", opts: Options{Strict: true},
			want:     []want{{"regstration_id", "unknown column"}, {"notes", "unknown column"}, {colRegistrationID, "required column is missing"}},
			wantHint: `did you mean "registration_id"?`},
		{name: "unknown and misspelt columns", input: "regstration_id,cert_path,key_path,notes\n",
			want:     []want{{colRegistrationID, "required column is missing"}},
			wantHint: "--column registration_id=regstration_id (columns not used: regstration_id, notes)"},
		{name: "unknown columns ignored", input: "registration_id,symmetric_key,hub\n"},
		{name: "unknown column, strict", input: "registration_id,symmetric_key,hub\n", opts: Options{Strict: true},
			want: []want{{"hub", "unknown column"}}, wantHint: "leave out --strict"},
		{name: "mapped column", input: "serial_number,symmetric_key,hub\n",
			opts: Options{Columns: ColumnMap{colRegistrationID: "serial_number"}}},
		{name: "mapped column, strict", input: "Serial_Number,Key\n",
			opts: Options{Strict: true, Columns: ColumnMap{colRegistrationID: "serial_number", colSymmetricKey: "key"}}},
		{name: "mapped column absent", input: "registration_id,symmetric_key\n",
			opts: Options{Columns: ColumnMap{colPayload: "config"}},
			want: []want{{"", "the header has no column config"}}, wantHint: "registration_id, symmetric_key"},
		{name: "mapped column absent, ours present", input: "registration_id,symmetric_key\n",
			opts: Options{Columns: ColumnMap{colRegistrationID: "serial"}},
			want: []want{{"", "--column registration_id=serial: the header has no column serial"}}},
		{name: "mapped onto a column the header has", input: "registration_id,serial_number\n",
			opts: Options{Columns: ColumnMap{colRegistrationID: "serial_number"}},
			want: []want{{colRegistrationID, "--column registration_id=serial_number maps serial_number to it too"}}},
		{name: "duplicate unknown column", input: "registration_id,note,note\n",
			want: []want{{"note", "column appears twice (columns 2 and 3)"}}},
		{name: "duplicate column", input: "registration_id,symmetric_key,Registration_ID\n",
			want: []want{{colRegistrationID, "column appears twice (columns 1 and 3)"}}},
		{name: "empty column name", input: "registration_id,,symmetric_key\n",
			want: []want{{"", "column 2 has no name"}}},
		{name: "data instead of header, strict", input: "dev-1,devices/dev-1.pem,devices/dev-1.key\n", opts: Options{Strict: true},
			want: []want{{"dev-1", "unknown column"}, {"devices/dev-1.pem", "unknown column"}, {"devices/dev-1.key", "unknown column"}, {"", "the first line is not a header"}}},
		{name: "data instead of header", input: "dev-1,devices/dev-1.pem,devices/dev-1.key\n",
			want: []want{{"", "the first line is not a header"}}},
		{name: "bad quoting", input: "registration_id,\"cert_path\n",
			want: []want{{"", "malformed CSV"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewReaderWith(strings.NewReader(tt.input), "", tt.opts)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("NewReader: %v", err)
				}
				if _, err := r.Next(); err != io.EOF {
					t.Errorf("Next = %v, want io.EOF", err)
				}
				return
			}
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("NewReader error = %v, want *HeaderError", err)
			}
			if len(he.Problems) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:%s", len(he.Problems), len(tt.want), problemStrings(he.Problems))
			}
			for i, w := range tt.want {
				p := he.Problems[i]
				if p.Line != 1 || p.Column != w.column || !strings.Contains(p.Message, w.substr) || p.Hint == "" {
					t.Errorf("problem %d = line %d, column %q, %q (hint %q); want line 1, column %q, message containing %q and a hint",
						i, p.Line, p.Column, p.Message, p.Hint, w.column, w.substr)
				}
			}
			if tt.wantHint != "" && !strings.Contains(he.Problems[0].Hint, tt.wantHint) {
				t.Errorf("hint = %q, want it to contain %q", he.Problems[0].Hint, tt.wantHint)
			}
			if msg := he.Error(); !strings.Contains(msg, he.Problems[len(he.Problems)-1].Message) {
				t.Errorf("HeaderError.Error() = %q, want it to list every problem", msg)
			}
		})
	}
}

// TestReaderRows checks line numbers and field handling: BOM, CRLF,
// comments, blank and all-empty lines, a quoted multi-line field and
// trimming.
func TestReaderRows(t *testing.T) {
	input := "\uFEFFregistration_id, payload ,symmetric_key\r\n" + // 1
		"# comment\r\n" + // 2
		"d-1,,k1\r\n" + // 3
		"\r\n" + // 4
		",,\r\n" + // 5: all empty
		`d-2,"{""a"":` + "\r\n" + // 6: quoted field spans lines 6-7
		`1}", k2 ` + "\r\n" +
		`"#d-3",,` + "\r\n" + // 8: quoted '#' is data
		"  d-4  ,  {} ,\n" + // 9
		"\n\n\n" // trailing blank lines
	r, err := NewReader(strings.NewReader(input), "")
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{
		{Line: 3, RegistrationID: "d-1", SymmetricKey: "k1"},
		{Line: 6, RegistrationID: "d-2", Payload: "{\"a\":\n1}", SymmetricKey: "k2"},
		{Line: 8, RegistrationID: "#d-3"},
		{Line: 9, RegistrationID: "d-4", Payload: "{}"},
	}
	for i, w := range want {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("row %d: Next: %v", i, err)
		}
		if got != w {
			t.Errorf("row %d = %+v, want %+v", i, got, w)
		}
	}
	for range 2 {
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("Next at end = %v, want io.EOF", err)
		}
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestReaderContinues checks that malformed records are reported with their
// line and that reading goes on after them.
func TestReaderContinues(t *testing.T) {
	input := "registration_id,symmetric_key\n" +
		"d-1,k\n" + // 2
		"d-2,k,extra\n" + // 3: too many fields
		"d-3,k\"x\n" + // 4: bare quote
		"d-4\n" + // 5: too few fields
		"d-5,k\n" // 6
	r, err := NewReader(strings.NewReader(input), "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		line   int
		id     string
		substr string // problem message; empty: a good row
	}{
		{2, "d-1", ""},
		{3, "d-2", "row has 3 fields, the header has 2"},
		{4, "", "bare \""},
		{5, "d-4", "row has 1 fields, the header has 2"},
		{6, "d-5", ""},
	}
	for _, tt := range tests {
		row, err := r.Next()
		if row.Line != tt.line || row.RegistrationID != tt.id {
			t.Errorf("row = line %d id %q, want line %d id %q", row.Line, row.RegistrationID, tt.line, tt.id)
		}
		var p *Problem
		switch {
		case tt.substr == "" && err != nil:
			t.Errorf("line %d: Next error %v, want a row", tt.line, err)
		case tt.substr != "" && (!errors.As(err, &p) || p.Line != tt.line || !strings.Contains(p.Message, tt.substr)):
			t.Errorf("line %d: Next error %v, want a *Problem on line %d containing %q", tt.line, err, tt.line, tt.substr)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("Next at end = %v, want io.EOF", err)
	}
}

func TestReaderLineTooLong(t *testing.T) {
	input := "registration_id,payload\nd-1,{}\nd-2," + strings.Repeat("x", MaxLineLength) + "\nd-3,{}\n"
	r, err := NewReader(strings.NewReader(input), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); err != nil {
		t.Fatalf("first row: %v", err)
	}
	_, err = r.Next()
	var p *Problem
	if err == nil || errors.As(err, &p) || !errors.Is(err, errLineTooLong) || !strings.Contains(err.Error(), "line 3 is longer than") {
		t.Fatalf("Next = %v, want a fatal line-too-long error naming line 3", err)
	}
	if _, again := r.Next(); again != err {
		t.Errorf("Next after a fatal error = %v, want the same error", again)
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	path := writeManifest(t, dir, "m.csv", "registration_id", "d-1")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.resolve("a/b.pem"), filepath.Join(dir, "a/b.pem"); got != want {
		t.Errorf("resolve = %q, want %q", got, want)
	}
	if got := r.resolve("/abs/c.pem"); got != "/abs/c.pem" {
		t.Errorf("resolve(abs) = %q, want it unchanged", got)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "nope.csv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want ErrNotExist", err)
	}
}

func TestProblemError(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{Line: 12, RegistrationID: "dev-0003", Column: "cert_path", Path: "devices/x.pem", Message: `certificate CN is "dev-0004", want "dev-0003"`, Hint: "fix it"},
			`row 12 (dev-0003): cert_path devices/x.pem: certificate CN is "dev-0004", want "dev-0003" — fix it`},
		{Problem{Line: 4, Message: "row has no credentials", Hint: "add some"}, "row 4: row has no credentials — add some"},
		{Problem{Line: 1, Column: "notes", Message: "unknown column"}, "header: notes: unknown column"},
		{Problem{Line: 5, RegistrationID: "dev 5", Column: "registration_id", Message: "bad"}, `row 5 ("dev 5"): registration_id: bad`},
		{Problem{Message: "bare"}, "bare"},
	}
	for _, tt := range tests {
		if got := tt.p.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

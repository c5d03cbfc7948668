package manifests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestColumnMapSet(t *testing.T) {
	tests := []struct {
		name    string
		sets    []string
		want    string // String() after the sets; "" when wantErr
		wantErr string // substring of the last Set's error
	}{
		{name: "one", sets: []string{"registration_id=serial_number"}, want: "registration_id=serial_number"},
		{name: "case and spaces", sets: []string{" Registration_ID = Serial_Number "}, want: "registration_id=serial_number"},
		{name: "several, sorted", sets: []string{"symmetric_key=key", "registration_id=sn"}, want: "registration_id=sn,symmetric_key=key"},
		{name: "same mapping twice", sets: []string{"registration_id=sn", "registration_id=sn"}, want: "registration_id=sn"},
		{name: "identity", sets: []string{"payload=payload"}, want: "payload=payload"},
		{name: "no equals sign", sets: []string{"registration_id"}, wantErr: "want OURS=YOURS"},
		{name: "empty side", sets: []string{"registration_id="}, wantErr: "want OURS=YOURS"},
		{name: "unknown target", sets: []string{"device=serial_number"}, wantErr: "device is not a column of ours; write OURS=YOURS with OURS one of registration_id"},
		{name: "misspelt target", sets: []string{"registraton_id=sn"}, wantErr: "did you mean registration_id?"},
		{name: "sides swapped", sets: []string{"serial_number=registration_id"}, wantErr: "ours comes first: registration_id=serial_number"},
		{name: "target twice", sets: []string{"registration_id=sn", "registration_id=serial"}, wantErr: "registration_id is mapped twice (registration_id=sn and registration_id=serial)"},
		{name: "source twice", sets: []string{"registration_id=sn", "symmetric_key=sn"}, wantErr: "column sn is mapped twice"},
		{name: "source is one of ours", sets: []string{"registration_id=symmetric_key"}, wantErr: "symmetric_key is a column of ours already"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m ColumnMap
			var err error
			for _, s := range tt.sets {
				if err = m.Set(s); err != nil {
					break
				}
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set: %v", err)
			}
			if got := m.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
	var nilMap *ColumnMap
	if got := nilMap.String(); got != "" {
		t.Errorf("nil String() = %q", got)
	}
}

// TestOpenWithBadColumnMap checks a map built in code is checked like the
// flag's.
func TestOpenWithBadColumnMap(t *testing.T) {
	path := writeManifest(t, t.TempDir(), "m.csv", "registration_id")
	_, err := OpenWith(path, Options{Columns: ColumnMap{"device": "sn"}})
	if err == nil || !strings.Contains(err.Error(), "column mapping: device is not a column of ours") {
		t.Errorf("OpenWith = %v, want a column mapping error", err)
	}
	var he *HeaderError
	if errors.As(err, &he) {
		t.Errorf("a bad mapping is not a header problem: %v", err)
	}
}

// TestReaderExtraColumns: unknown columns are kept, per row, in header
// order, by value; mapped columns are read as ours; rows stay comparable.
func TestReaderExtraColumns(t *testing.T) {
	input := "Serial_Number,hub, symmetric_key ,Notes\n" +
		"d-1,hub-a,k1,\"first, with a comma\"\n" +
		"d-2,,k2,\n" +
		"d-3,hub-\u00e9,k3,x\n"
	opts := Options{Columns: ColumnMap{colRegistrationID: "serial_number"}}
	read := func() []Row {
		r, err := NewReaderWith(strings.NewReader(input), "", opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.ExtraColumns(); !slices.Equal(got, []string{"hub", "notes"}) {
			t.Errorf("ExtraColumns = %q, want [hub notes]", got)
		}
		var rows []Row
		for {
			row, err := r.Next()
			if err == io.EOF {
				return rows
			}
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, row)
		}
	}
	rows := read()
	want := []struct {
		id, key, hub, notes string
	}{
		{"d-1", "k1", "hub-a", "first, with a comma"},
		{"d-2", "k2", "", ""},
		{"d-3", "k3", "hub-\u00e9", "x"},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows, want %d", len(rows), len(want))
	}
	for i, w := range want {
		row := rows[i]
		if row.RegistrationID != w.id || row.SymmetricKey != w.key {
			t.Errorf("row %d = %q %q, want %q %q", i, row.RegistrationID, row.SymmetricKey, w.id, w.key)
		}
		hub, ok := row.Extra.Get("hub")
		notes, ok2 := row.Extra.Get("notes")
		if !ok || !ok2 || hub != w.hub || notes != w.notes {
			t.Errorf("row %d extra hub %q (%v) notes %q (%v), want %q %q", i, hub, ok, notes, ok2, w.hub, w.notes)
		}
		if _, ok := row.Extra.Get("serial_number"); ok {
			t.Errorf("row %d: the mapped column is in Extra", i)
		}
		var pairs []string
		for n, v := range row.Extra.All() {
			pairs = append(pairs, n+"="+v)
		}
		if got := strings.Join(pairs, ";"); got != "hub="+w.hub+";notes="+w.notes {
			t.Errorf("row %d All = %q", i, got)
		}
		if n := row.Extra.Len(); n != 2 {
			t.Errorf("row %d Extra.Len = %d, want 2", i, n)
		}
	}
	// Values never show when a row is printed.
	if s := fmt.Sprintf("%v %+v", rows[0], rows[0]); strings.Contains(s, "hub-a") || !strings.Contains(s, "{hub notes}") {
		t.Errorf("printed row = %s; want the extra column names without their values", s)
	}
	// Two readers of the same file give equal rows (the runner matches
	// rows Validate kept with ==).
	again := read()
	for i := range rows {
		if rows[i] != again[i] {
			t.Errorf("row %d differs between two readers", i)
		}
	}
	if rows[0] == rows[1] {
		t.Errorf("rows 0 and 1 compare equal")
	}
	// Without extra columns, Extra is empty.
	r, err := NewReader(strings.NewReader("registration_id\nd-1\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	row, err := r.Next()
	if err != nil || row.Extra != (Extra{}) || row.Extra.Len() != 0 || r.ExtraColumns() != nil {
		t.Errorf("row %+v, %v; want no extra values", row, err)
	}
}

// TestValidateExtraColumns: an MES export with more columns validates with
// one warning naming them; --strict refuses them; --column maps one.
func TestValidateExtraColumns(t *testing.T) {
	dir := t.TempDir()
	lines := []string{"registration_id,symmetric_key,hub,line"}
	for i := range 50 {
		lines = append(lines, fmt.Sprintf("d-%d,MDEyMzQ1Njc4OWFiY2RlZg==,hub-%d,3", i, i%2))
	}
	path := writeManifest(t, dir, "mes.csv", lines...)

	s, err := Validate(context.Background(), path, testOptions(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if !s.OK() || s.ByKind[KindSymmetricKey] != 50 {
		t.Errorf("OK %v, ByKind %v; want 50 usable devices:%s", s.OK(), s.ByKind, problemStrings(s.Errors))
	}
	if len(s.WarningGroups) != 1 || s.WarningGroups[0].Count != 1 {
		t.Fatalf("warnings:%s\nwant one", problemStrings(s.Warnings))
	}
	w := s.WarningGroups[0].String()
	for _, want := range []string{"header: unknown columns ignored: hub, line", "--strict refuses", "--column OURS=YOURS"} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q lacks %q", w, want)
		}
	}
	if !slices.Equal(s.ExtraColumns, []string{"hub", "line"}) {
		t.Errorf("ExtraColumns = %q", s.ExtraColumns)
	}

	strict := testOptions()
	strict.Strict = true
	_, err = Validate(context.Background(), path, strict, 10)
	var he *HeaderError
	if !errors.As(err, &he) || len(he.Problems) != 2 || he.Problems[0].Column != "hub" || he.Problems[1].Column != "line" {
		t.Errorf("strict: err = %v, want header problems for hub and line", err)
	}

	// A mapped id column: duplicates are found through the mapping too
	// (Validate's second pass reads the header again).
	mapped := writeManifest(t, dir, "sn.csv", "SN,symmetric_key", "a-1,MDEyMzQ1Njc4OWFiY2RlZg==", "a-2,MDEyMzQ1Njc4OWFiY2RlZg==", "a-1,MDEyMzQ1Njc4OWFiY2RlZg==")
	opts := testOptions()
	opts.Columns = ColumnMap{colRegistrationID: "sn"}
	s, err = Validate(context.Background(), mapped, opts, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Errors) != 1 || !strings.Contains(s.Errors[0].Error(), "row 4 (a-1): registration_id: duplicate registration id (first on row 2)") {
		t.Errorf("errors:%s\nwant the duplicate on row 4", problemStrings(s.Errors))
	}
	if len(s.Warnings) != 0 {
		t.Errorf("warnings:%s\nwant none: every column is used", problemStrings(s.Warnings))
	}
}

// TestValidateGroupsRepeatedProblems: the same problem on every row is one
// group counting every row, past the cap on listed problems; distinct
// problems keep their own rows.
func TestValidateGroupsRepeatedProblems(t *testing.T) {
	dir := t.TempDir()
	lines := []string{"registration_id,symmetric_key"}
	for i := range 200 {
		lines = append(lines, fmt.Sprintf("sensor-%03d,", i))
	}
	lines = append(lines, "BAD ID,MDEyMzQ1Njc4OWFiY2RlZg==", "ok-1,%%%")
	path := writeManifest(t, dir, "group.csv", lines...)
	s, err := Validate(context.Background(), path, testOptions(), 50)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s.Errors) + s.TruncatedErrors; n != 202 {
		t.Errorf("%d errors, want 202", n)
	}
	if len(s.ErrorGroups) != 3 || s.OtherErrors != 0 {
		var got []string
		for _, g := range s.ErrorGroups {
			got = append(got, g.String())
		}
		t.Fatalf("groups:\n%s\nwant 3", strings.Join(got, "\n"))
	}
	g := s.ErrorGroups[0]
	if g.Count != 200 || !slices.Equal(g.Lines, []LineRange{{2, 201}}) {
		t.Errorf("group 0: count %d, lines %v; want 200, [2-201]", g.Count, g.Lines)
	}
	got := g.String()
	for _, want := range []string{"rows 2-201 (200 rows): row has no credentials — ", "dps-batch provision --group-key-file FILE", "DPS_GROUP_KEY"} {
		if !strings.Contains(got, want) {
			t.Errorf("group 0 = %q, want it to contain %q", got, want)
		}
	}
	if strings.Contains(got, "sensor-") {
		t.Errorf("group 0 = %q names one row's id", got)
	}
	if got := s.ErrorGroups[1].String(); !strings.HasPrefix(got, "row 202 (\"BAD ID\"): registration_id: ") {
		t.Errorf("group 1 = %q, want row 202's own problem", got)
	}
	if got := s.ErrorGroups[2].String(); !strings.HasPrefix(got, "row 203 (ok-1): symmetric_key: ") {
		t.Errorf("group 2 = %q, want row 203's own problem", got)
	}

	// More distinct problems than the cap: the rest are counted.
	s, err = Validate(context.Background(), path, testOptions(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ErrorGroups) != 2 || s.ErrorGroups[0].Count != 200 || s.OtherErrors != 1 {
		t.Errorf("cap 2: %d groups (first counts %d), %d other; want 2 (200), 1", len(s.ErrorGroups), s.ErrorGroups[0].Count, s.OtherErrors)
	}
}

func TestGroupLines(t *testing.T) {
	p := Problem{Column: colChainPath, Path: "ca/int.pem", Message: "expired", Hint: "renew it"}
	at := func(line int) Problem { q := p; q.Line, q.RegistrationID = line, fmt.Sprint("d-", line); return q }
	tests := []struct {
		name  string
		lines []int
		want  string
	}{
		{"one row", []int{7}, "row 7 (d-7): chain_path ca/int.pem: expired — renew it"},
		{"a run", []int{2, 3, 4}, "rows 2-4 (3 rows): chain_path ca/int.pem: expired — renew it"},
		{"runs and singles", []int{3, 5, 6, 7, 12}, "rows 3, 5-7, 12 (5 rows): chain_path ca/int.pem: expired — renew it"},
		{"same row twice", []int{3, 3, 4}, "rows 3-4 (2 rows): chain_path ca/int.pem: expired — renew it"},
		{"out of order, joining runs", []int{5, 3, 4, 9, 7, 8}, "rows 3-5, 7-9 (6 rows): chain_path ca/int.pem: expired — renew it"},
		{"more ranges than kept", []int{2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 23, 24, 26},
			"rows 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, ... (14 rows): chain_path ca/int.pem: expired — renew it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gr grouper
			for _, l := range tt.lines {
				gr.add(at(l))
			}
			groups := gr.sorted()
			if len(groups) != 1 {
				t.Fatalf("%d groups, want 1", len(groups))
			}
			if got := groups[0].String(); got != tt.want {
				t.Errorf("String() = %q\nwant       %q", got, tt.want)
			}
		})
	}
	// Problems that differ in more than their row are apart.
	var gr grouper
	gr.add(at(2))
	other := at(3)
	other.Path = "ca/other.pem"
	gr.add(other)
	warn := at(4)
	warn.Severity = SeverityWarning
	gr.add(warn)
	if n := len(gr.sorted()); n != 3 {
		t.Errorf("%d groups, want 3", n)
	}
}

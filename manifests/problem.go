package manifests

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Severity says whether a Problem stops a device from being registered.
type Severity int

const (
	// SeverityError marks a problem that makes the row unusable.
	SeverityError Severity = iota
	// SeverityWarning marks a problem worth fixing that does not stop the
	// device from registering, such as a private key readable by others.
	SeverityWarning
)

// String returns "error" or "warning".
func (s Severity) String() string {
	switch s {
	case SeverityError:
		return "error"
	case SeverityWarning:
		return "warning"
	default:
		return "severity(" + strconv.Itoa(int(s)) + ")"
	}
}

// Problem is one finding about a manifest row (or its header), with enough
// context for the user to find and fix it. Its text never contains key
// material: messages describe keys, they never quote them.
type Problem struct {
	// Line is the 1-based physical line of the row in the manifest, as an
	// editor shows it (the header is line 1). Zero when not tied to a line.
	Line int
	// RegistrationID is the row's registration id as written; may be empty.
	RegistrationID string
	// Column is the manifest column at fault ("cert_path", ...); empty when
	// the problem concerns the whole row.
	Column string
	// Path is the file named by the row (as written in the manifest) that
	// the problem is about; empty when no file is involved.
	Path string
	// Message says what is wrong.
	Message string
	// Hint says how to fix it.
	Hint string
	// Severity is SeverityError (the zero value) or SeverityWarning.
	Severity Severity
}

// Error formats the problem on one line, for example:
//
//	row 12 (dev-0003): cert_path devices/x.pem: certificate CN is "dev-0004", want "dev-0003" — <hint>
//
// Header problems start with "header" instead of a row number.
func (p Problem) Error() string {
	var b strings.Builder
	switch {
	case p.Line == 1:
		b.WriteString("header")
	case p.Line > 1:
		b.WriteString("row ")
		b.WriteString(strconv.Itoa(p.Line))
	}
	if p.RegistrationID != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('(')
		b.WriteString(displayID(p.RegistrationID))
		b.WriteByte(')')
	}
	if p.Column != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(p.Column)
		if p.Path != "" {
			b.WriteByte(' ')
			b.WriteString(p.Path)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	if p.Hint != "" {
		b.WriteString(" — ")
		b.WriteString(p.Hint)
	}
	return b.String()
}

// displayID returns id as is when it is plain printable text, quoted
// otherwise, so that a stray space or control character shows up.
func displayID(id string) string {
	const maxShown = 80
	if len(id) > maxShown {
		id = id[:maxShown] + "..."
	}
	for _, c := range id {
		if c <= ' ' || c == 0x7f || c == '(' || c == ')' || c >= 0x80 {
			return strconv.Quote(id)
		}
	}
	return id
}

// HeaderError reports everything wrong with a manifest's header line. A
// manifest with a bad header is not read further.
type HeaderError struct {
	// Path is the manifest file; empty when reading from an io.Reader.
	Path string
	// Problems lists every header problem found, in column order.
	Problems []Problem
}

// Error lists all header problems, one per line after the first.
func (e *HeaderError) Error() string {
	var b strings.Builder
	if e.Path != "" {
		b.WriteString("manifest ")
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	switch len(e.Problems) {
	case 0:
		b.WriteString("bad header")
	case 1:
		b.WriteString(e.Problems[0].Error())
	default:
		fmt.Fprintf(&b, "%d header problems:", len(e.Problems))
		for _, p := range e.Problems {
			b.WriteString("\n  ")
			b.WriteString(p.Error())
		}
	}
	return b.String()
}

// LineRange is a run of consecutive manifest lines, First to Last
// inclusive.
type LineRange struct{ First, Last int }

// maxGroupRanges is how many line ranges a Group keeps; rows past them are
// only counted, so a problem on every other row of a million does not
// hold half a million ranges.
const maxGroupRanges = 10

// Group is one problem found on one or more rows. Problems that differ only
// in their row (line and registration id) are one group, so that a mistake
// repeated on every row (a missing group key, a shared chain file that
// expired) reads as one line, while problems that name their row's own
// file or value stay apart.
type Group struct {
	// Problem is the first occurrence: the one on the lowest line.
	Problem Problem
	// Lines are the rows with the problem, as ascending ranges of lines:
	// the first 10 ranges. Rows past them are counted in Count only.
	Lines []LineRange
	// Count is the number of rows with the problem, including rows past
	// Lines.
	Count int

	truncated bool // ranges were dropped from the end of Lines
}

// String formats the group on one line. A problem of one row reads as
// Problem.Error does; a repeated one names its rows and their number in
// place of the row and its registration id:
//
//	rows 2-201 (200 rows): row has no credentials — <hint>
//	rows 3, 7-9, 12 (5 rows): chain_path ca/int.pem: ... — <hint>
//	rows 2-4, 6, ..., 90-99 (310 rows): ...
func (g Group) String() string {
	if g.Count <= 1 {
		return g.Problem.Error()
	}
	var b strings.Builder
	b.WriteString("rows ")
	shown := 0
	for i, r := range g.Lines {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(r.First))
		if r.Last > r.First {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(r.Last))
		}
		shown += r.Last - r.First + 1
	}
	if shown < g.Count {
		b.WriteString(", ...")
	}
	fmt.Fprintf(&b, " (%d rows): ", g.Count)
	p := g.Problem
	p.Line, p.RegistrationID = 0, ""
	b.WriteString(p.Error())
	return b.String()
}

// add records one more row with the group's problem.
func (g *Group) add(p Problem) {
	if p.Line < g.Problem.Line {
		g.Problem = p
	}
	line := p.Line
	// i is the first range that starts after line.
	i := sort.Search(len(g.Lines), func(i int) bool { return g.Lines[i].First > line })
	if i > 0 && line <= g.Lines[i-1].Last {
		return // this row is counted already
	}
	g.Count++
	if g.truncated && i == len(g.Lines) {
		return // rows before it were dropped: it cannot join the last range
	}
	joinPrev := i > 0 && g.Lines[i-1].Last+1 == line
	joinNext := i < len(g.Lines) && line+1 == g.Lines[i].First
	switch {
	case joinPrev && joinNext:
		g.Lines[i-1].Last = g.Lines[i].Last
		g.Lines = slices.Delete(g.Lines, i, i+1)
	case joinPrev:
		g.Lines[i-1].Last = line
	case joinNext:
		g.Lines[i].First = line
	default:
		g.Lines = slices.Insert(g.Lines, i, LineRange{line, line})
		if len(g.Lines) > maxGroupRanges {
			g.Lines = g.Lines[:maxGroupRanges]
			g.truncated = true
		}
	}
}

// problemKey is what makes two problems the same problem: everything but
// the row.
type problemKey struct {
	column, path, message, hint string
	severity                    Severity
}

// grouper collects problems into groups: at most max of them (0 or less:
// no limit); problems of further distinct kinds are counted in other.
type grouper struct {
	max    int
	groups []Group
	index  map[problemKey]int
	other  int
}

func (gr *grouper) add(p Problem) {
	k := problemKey{p.Column, p.Path, p.Message, p.Hint, p.Severity}
	if i, ok := gr.index[k]; ok {
		gr.groups[i].add(p)
		return
	}
	if gr.max > 0 && len(gr.groups) >= gr.max {
		gr.other++
		return
	}
	if gr.index == nil {
		gr.index = make(map[problemKey]int)
	}
	gr.index[k] = len(gr.groups)
	gr.groups = append(gr.groups, Group{Problem: p, Lines: []LineRange{{p.Line, p.Line}}, Count: 1})
}

// sorted returns the groups ordered by their first line.
func (gr *grouper) sorted() []Group {
	slices.SortStableFunc(gr.groups, func(a, b Group) int { return cmp.Compare(a.Problem.Line, b.Problem.Line) })
	gr.index = nil // indexes are stale once sorted
	return gr.groups
}

package manifests

import (
	"fmt"
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

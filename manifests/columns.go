package manifests

import (
	"encoding/binary"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"
)

// ColumnMap maps columns of other names onto the manifest format's: ours
// to the header's, such as {"registration_id": "serial_number"} for an
// export whose ids are in a serial_number column. Names are trimmed and in
// lower case. A *ColumnMap is a flag.Value: Set adds one "OURS=YOURS"
// mapping (the --column flag), so the flag can be repeated.
type ColumnMap map[string]string

// Set parses one mapping, "OURS=YOURS", and adds it. It refuses a name that
// is not one of ours, a column of ours or of the header mapped twice, and a
// header name that is itself one of ours.
func (m *ColumnMap) Set(s string) error {
	o, t, ok := strings.Cut(s, "=")
	o, t = normColumn(o), normColumn(t)
	if !ok || o == "" || t == "" {
		return fmt.Errorf("want OURS=YOURS, e.g. registration_id=serial_number (ours: %s)", strings.Join(knownColumns, ", "))
	}
	if err := m.checkAdd(o, t); err != nil {
		return err
	}
	if *m == nil {
		*m = ColumnMap{}
	}
	(*m)[o] = t
	return nil
}

// String returns the mappings as "OURS=YOURS" pairs, sorted, separated by
// commas.
func (m *ColumnMap) String() string {
	if m == nil {
		return ""
	}
	var pairs []string
	for _, o := range slices.Sorted(maps.Keys(*m)) {
		pairs = append(pairs, o+"="+(*m)[o])
	}
	return strings.Join(pairs, ",")
}

// checkAdd reports why ours=theirs cannot join m.
func (m *ColumnMap) checkAdd(ours, theirs string) error {
	if indexOf(knownColumns, ours) < 0 {
		msg := fmt.Sprintf("%s is not a column of ours", ours)
		switch {
		case indexOf(knownColumns, theirs) >= 0:
			msg += fmt.Sprintf(" (ours comes first: %s=%s)", theirs, ours)
		case suggest(ours) != "":
			msg += fmt.Sprintf(" (did you mean %s?)", suggest(ours))
		}
		return fmt.Errorf("%s; write OURS=YOURS with OURS one of %s", msg, strings.Join(knownColumns, ", "))
	}
	if prev, ok := (*m)[ours]; ok && prev != theirs {
		return fmt.Errorf("%s is mapped twice (%s=%s and %s=%s); map each column once", ours, ours, prev, ours, theirs)
	}
	for o, t := range *m {
		if t == theirs && o != ours {
			return fmt.Errorf("column %s is mapped twice (%s=%s and %s=%s); a column can be only one of ours", theirs, o, t, ours, theirs)
		}
	}
	if theirs != ours && indexOf(knownColumns, theirs) >= 0 {
		return fmt.Errorf("%s is a column of ours already: it cannot be read as %s", theirs, ours)
	}
	return nil
}

// check validates a whole map, as Set would have built it.
func (m ColumnMap) check() error {
	var built ColumnMap
	for _, o := range slices.Sorted(maps.Keys(m)) {
		if err := built.Set(o + "=" + m[o]); err != nil {
			return err
		}
	}
	return nil
}

func normColumn(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// Extra holds a row's values of its manifest's extra columns: the columns
// the format does not define, kept when Options.Strict is off (an MES
// export's hub, batch or notes), in header order. It is a comparable
// value, so rows can still be compared with ==. The values are as written
// (trimmed): they may be anything, secrets included, so carry on only the
// columns a user asks for. Its String method shows the names only.
type Extra struct {
	names, values string // each a sequence of uvarint-length-prefixed strings
}

// Len returns the number of extra columns.
func (e Extra) Len() int {
	n := 0
	for range e.All() {
		n++
	}
	return n
}

// Get returns the value of the extra column name (lower case, as
// Reader.ExtraColumns spells it) and whether the row has that column.
func (e Extra) Get(name string) (string, bool) {
	for n, v := range e.All() {
		if n == name {
			return v, true
		}
	}
	return "", false
}

// All yields each extra column's name and the row's value, in header
// order.
func (e Extra) All() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		names, values := e.names, e.values
		for names != "" {
			var n, v string
			n, names = unpackString(names)
			v, values = unpackString(values)
			if !yield(n, v) {
				return
			}
		}
	}
}

// String lists the extra column names, not their values.
func (e Extra) String() string {
	var names []string
	for n := range e.All() {
		names = append(names, n)
	}
	return "{" + strings.Join(names, " ") + "}"
}

// packStrings appends list to buf, each string prefixed with its length.
func packStrings(buf []byte, list []string) string {
	for _, s := range list {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	return string(buf)
}

// unpackString returns the first string of a packed sequence and the rest.
func unpackString(packed string) (string, string) {
	n, w := binary.Uvarint([]byte(packed[:min(len(packed), binary.MaxVarintLen64)]))
	if w <= 0 || uint64(len(packed)-w) < n {
		return "", "" // cannot happen: the Reader packs them
	}
	return packed[w : w+int(n)], packed[w+int(n):]
}

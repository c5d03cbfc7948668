package report

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"strings"

	"github.com/jszwec/csvutil"

	"github.com/dps-batch/dps-batch/ledger"
)

// Source is one ledger of a merged report: a station (a line, a shard)
// and its ledger, opened for reading.
type Source struct {
	// Station labels the ledger's rows (the report's ledger column):
	// the ledger file's base name without its extension, or a name given
	// with --station NAME=PATH.
	Station string
	// Path is the ledger file, for messages.
	Path   string
	Ledger *ledger.Ledger
}

// Sources are the ledgers of a merged report, in the order given. Each
// walks their devices together, one registration id at a time; the CSV and
// JSON lines writers use it, and so can any other format.
type Sources []Source

// Entry is what one ledger holds of a device.
type Entry struct {
	Station       string
	Device        ledger.Device
	Enrollment    ledger.Enrollment
	HasEnrollment bool // the device has an enrollment record
}

// Row returns the entry's report row (without the station and extra columns).
func (e Entry) Row() Row {
	return withEnrollment(FromDevice(e.Device), e.Enrollment, e.HasEnrollment)
}

// Disagree reports whether two ledgers' rows of one device contradict each
// other: a different state, IoT hub or device id. Two stations that both
// record a device as assigned to the same hub, as the same device, agree.
func Disagree(a, b ledger.Device) bool {
	return a.State != b.State || a.AssignedHub != b.AssignedHub || a.DeviceID != b.DeviceID
}

// Conflicting reports whether any two of a device's entries disagree.
func Conflicting(entries []Entry) bool {
	for i := 1; i < len(entries); i++ {
		if Disagree(entries[0].Device, entries[i].Device) {
			return true
		}
	}
	return false
}

type pulled struct {
	next func() (Entry, error, bool)
	stop func()
	cur  Entry
	ok   bool
}

// Each calls fn once per registration id, in registration id order (as
// every ledger orders its devices), with that device's entries in the
// ledgers it is in (in the order of s; most often one). Only devices in
// the given states (nil = all) are walked. The ledgers are streamed
// together: memory does not grow with their size.
func (s Sources) Each(ctx context.Context, states []ledger.State, fn func(entries []Entry) error) error {
	return s.each(ctx, states, true, fn)
}

// each is Each, reading each device's enrollment row only when
// withEnrollment (the HTML report does not show it).
func (s Sources) each(ctx context.Context, states []ledger.State, withEnrollment bool, fn func(entries []Entry) error) error {
	if len(s) == 1 {
		// One ledger: its devices in order, without pulling them through
		// an iterator.
		entries := make([]Entry, 1)
		for e, err := range s[0].seq(ctx, states, withEnrollment) {
			if err != nil {
				return fmt.Errorf("ledger %s: %w", s[0].Path, err)
			}
			entries[0] = e
			if err := fn(entries); err != nil {
				return err
			}
		}
		return nil
	}
	ps := make([]*pulled, len(s))
	defer func() {
		for _, p := range ps {
			if p != nil {
				p.stop()
			}
		}
	}()
	for i, src := range s {
		next, stop := iter.Pull2(src.seq(ctx, states, withEnrollment))
		p := &pulled{next: next, stop: stop}
		ps[i] = p
		if err := p.advance(src); err != nil {
			return err
		}
	}
	entries := make([]Entry, 0, len(s))
	for {
		least := ""
		found := false
		for _, p := range ps {
			if p.ok && (!found || p.cur.Device.RegistrationID < least) {
				least, found = p.cur.Device.RegistrationID, true
			}
		}
		if !found {
			return nil
		}
		entries = entries[:0]
		for i, p := range ps {
			if p.ok && p.cur.Device.RegistrationID == least {
				entries = append(entries, p.cur)
				if err := p.advance(s[i]); err != nil {
					return err
				}
			}
		}
		if err := fn(entries); err != nil {
			return err
		}
	}
}

func (p *pulled) advance(src Source) error {
	e, err, ok := p.next()
	if err != nil {
		return fmt.Errorf("ledger %s: %w", src.Path, err)
	}
	p.cur, p.ok = e, ok
	return nil
}

// seq yields the ledger's devices in order (with their enrollment rows when
// withEnrollment), then its error if any.
func (src Source) seq(ctx context.Context, states []ledger.State, withEnrollment bool) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		stopped := errStopped{}
		var err error
		if withEnrollment {
			err = src.Ledger.EachWithEnrollment(ctx, states, func(d ledger.Device, en ledger.Enrollment, ok bool) error {
				if !yield(Entry{Station: src.Station, Device: d, Enrollment: en, HasEnrollment: ok}, nil) {
					return stopped
				}
				return nil
			})
		} else {
			err = src.Ledger.Each(ctx, states, func(d ledger.Device) error {
				if !yield(Entry{Station: src.Station, Device: d}, nil) {
					return stopped
				}
				return nil
			})
		}
		if err != nil && err != error(stopped) {
			yield(Entry{}, err)
		}
	}
}

type errStopped struct{}

func (errStopped) Error() string { return "stopped" }

// StationTotals are one station's devices in a merged report.
type StationTotals struct {
	Station, Path string
	Devices       int                  // rows of this station in the report
	ByState       map[ledger.State]int // of those rows
}

// Conflict is a device whose ledgers disagree: every ledger's entry.
type Conflict struct {
	RegistrationID string
	Entries        []Entry
}

// MergeResult is what a merged report held.
type MergeResult struct {
	Rows     int             // rows written: one per device per ledger holding it
	Devices  int             // distinct registration ids
	Stations []StationTotals // in the order of the sources
	// Shared counts devices in more than one ledger whose rows agree.
	Shared int
	// Conflicts counts devices whose ledgers disagree (every row of each
	// is in the report); Examples keeps the first few.
	Conflicts int
	Examples  []Conflict
}

// maxConflictExamples is how many conflicts a MergeResult keeps whole.
const maxConflictExamples = 10

// ConflictError is returned by WriteMerged when ledgers disagree about a
// device and conflicts were not allowed. The report was written in full,
// with every ledger's row of each such device.
type ConflictError struct {
	Result *MergeResult
}

func (e *ConflictError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d device(s) are recorded differently by two or more ledgers (every row of each is in the report, in registration id order):", e.Result.Conflicts)
	for _, c := range e.Result.Examples {
		fmt.Fprintf(&b, "\n  %s:", c.RegistrationID)
		for _, en := range c.Entries {
			fmt.Fprintf(&b, "\n    ledger %-20s %s", en.Station, DescribeEntry(en))
		}
	}
	if n := e.Result.Conflicts - len(e.Result.Examples); n > 0 {
		fmt.Fprintf(&b, "\n  and %d more", n)
	}
	return b.String()
}

// DescribeEntry is one line about a ledger's row of a device: its state,
// hub and device id, or its error, and when it finished.
func DescribeEntry(en Entry) string {
	d := en.Device
	s := string(d.State)
	if d.AssignedHub != "" {
		s += " to " + d.AssignedHub
	}
	if d.DeviceID != "" && d.DeviceID != d.RegistrationID {
		s += " as " + d.DeviceID
	}
	if d.ErrorCode != 0 {
		s += fmt.Sprintf(" (error %d)", d.ErrorCode)
	}
	if !d.FinishedAt.IsZero() {
		s += ", finished " + formatTime(d.FinishedAt)
	}
	return s
}

// MergeOptions control WriteMerged.
type MergeOptions struct {
	Options
	// AllowConflicts writes devices the ledgers disagree about without
	// failing (their rows are in the report either way).
	AllowConflicts bool
}

// mergedRow is a row of a merged report: the station first.
type mergedRow struct {
	Ledger string `csv:"ledger" json:"ledger"`
	Row
}

// MergedColumns returns the CSV column names of a merged report, before
// any extra column: ledger, then the columns of a one-ledger report.
func MergedColumns() []string {
	return append([]string{"ledger"}, Columns()...)
}

// WriteMerged writes the devices of several ledgers as one report: a row
// per device per ledger holding it, in registration id order, each with
// its station in the first column (ledger; in JSON lines the key
// "ledger"). A device two ledgers disagree about (Disagree) gets every
// ledger's row; unless opts.AllowConflicts the report is still written in
// full and a *ConflictError returned. The result has the totals of each
// station.
func WriteMerged(ctx context.Context, sources Sources, w io.Writer, f Format, opts MergeOptions) (*MergeResult, error) {
	if err := opts.Extra.check(f); err != nil {
		return nil, err
	}
	if f != JSONLines {
		for _, n := range opts.Extra.Names {
			if n == "ledger" {
				return nil, fmt.Errorf("extra column ledger: a merged report has a column of that name already")
			}
		}
	}
	res := &MergeResult{}
	index := map[string]int{}
	for _, s := range sources {
		if _, dup := index[s.Station]; dup {
			return nil, fmt.Errorf("two ledgers are both labelled station %q: give each its own name with --station NAME=PATH", s.Station)
		}
		index[s.Station] = len(res.Stations)
		res.Stations = append(res.Stations, StationTotals{Station: s.Station, Path: s.Path, ByState: map[ledger.State]int{}})
	}
	extra := len(opts.Extra.Names) > 0
	var encode func(mergedRow) error
	var finish func() error
	switch f {
	case JSONLines:
		enc := json.NewEncoder(w)
		encode = func(r mergedRow) error { return enc.Encode(r) }
		finish = func() error { return nil }
	case CSV, "":
		cw := csv.NewWriter(w)
		aw := &appendWriter{w: cw, extra: opts.Extra.Names}
		enc := csvutil.NewEncoder(aw)
		if err := enc.EncodeHeader(mergedRow{}); err != nil {
			return nil, err
		}
		values := make([]string, len(opts.Extra.Names))
		encode = func(r mergedRow) error {
			if extra {
				opts.Extra.fill(values, r.RegistrationID)
				aw.extra = values
			}
			r.Extra = nil
			return enc.Encode(r)
		}
		finish = func() error {
			cw.Flush()
			return cw.Error()
		}
	default:
		return nil, fmt.Errorf("unknown report format %q", f)
	}
	err := sources.Each(ctx, opts.States, func(entries []Entry) error {
		res.Devices++
		if len(entries) > 1 {
			if Conflicting(entries) {
				res.Conflicts++
				if len(res.Examples) < maxConflictExamples {
					res.Examples = append(res.Examples, Conflict{RegistrationID: entries[0].Device.RegistrationID, Entries: append([]Entry(nil), entries...)})
				}
			} else {
				res.Shared++
			}
		}
		for _, en := range entries {
			res.Rows++
			st := &res.Stations[index[en.Station]]
			st.Devices++
			st.ByState[en.Device.State]++
			r := mergedRow{Ledger: en.Station, Row: en.Row()}
			if extra && f == JSONLines {
				r.Extra = opts.Extra.row(en.Device.RegistrationID)
			}
			if err := encode(r); err != nil {
				return err
			}
		}
		return nil
	})
	if ferr := finish(); err == nil {
		err = ferr
	}
	if err != nil {
		return res, err
	}
	if res.Conflicts > 0 && !opts.AllowConflicts {
		return res, &ConflictError{Result: res}
	}
	return res, nil
}

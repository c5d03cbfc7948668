package ledger

import (
	"errors"
	"fmt"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

var (
	// ErrClosed is returned (wrapped) by methods called after Close.
	ErrClosed = errors.New("ledger is closed")
	// ErrReadOnly is returned (wrapped) by write methods of a ledger opened
	// with Options.ReadOnly.
	ErrReadOnly = errors.New("ledger is open read-only")
	// ErrLocked is returned (wrapped) by Lock when another process or another
	// Ledger holds the run lock.
	ErrLocked = errors.New("ledger is locked by another run")
	// ErrNotLedger is returned (wrapped) by Open for a file that is not a
	// dps-batch ledger: not SQLite at all, or an SQLite database of another
	// program.
	ErrNotLedger = errors.New("not a dps-batch ledger")
	// ErrCorrupt is returned (wrapped) when SQLite reports the file as
	// damaged, by any method, and by IntegrityCheck.
	ErrCorrupt = errors.New("ledger file is corrupted")
	// ErrUnknownRun is returned (wrapped) by Put and AddPending when a device
	// or attempt names a run id that StartRun never returned.
	ErrUnknownRun = errors.New("unknown run id")
)

// SchemaError reports a ledger written by a newer dps-batch, whose schema
// this binary does not know.
type SchemaError struct {
	Path  string // the ledger file
	Have  int    // schema version recorded in the file
	Known int    // highest schema version this binary knows
}

// Error implements error.
func (e *SchemaError) Error() string {
	return fmt.Sprintf("ledger %s has schema version %d; this dps-batch knows up to %d: upgrade dps-batch", e.Path, e.Have, e.Known)
}

// BindingError reports that a ledger was bound (see Ledger.Bind) to another
// DPS instance than the one the command names.
type BindingError struct {
	Path         string // the ledger file
	HaveScope    string // ID scope stored in the ledger
	HaveEndpoint string // endpoint stored in the ledger (normalised)
	WantScope    string // ID scope the command asked for
	WantEndpoint string // endpoint the command asked for (normalised)
}

// Error implements error.
func (e *BindingError) Error() string {
	return fmt.Sprintf("ledger %s belongs to ID scope %q at %s, not ID scope %q at %s: use another --ledger file for this DPS instance",
		e.Path, e.HaveScope, e.HaveEndpoint, e.WantScope, e.WantEndpoint)
}

// notLedgerError is a file Open refuses because it is not ours.
type notLedgerError struct {
	path   string
	reason string // e.g. "not an SQLite database"
	err    error  // SQLite's error, if any
}

func (e *notLedgerError) Error() string {
	return fmt.Sprintf("%s is not a dps-batch ledger (%s): name another --ledger file (a new one is created)", e.path, e.reason)
}

func (e *notLedgerError) Is(target error) bool { return target == ErrNotLedger }
func (e *notLedgerError) Unwrap() error        { return e.err }

// corruptError is a file SQLite reports as damaged.
type corruptError struct {
	path   string
	op     string
	detail string
	err    error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("ledger %s is corrupted (%s: %s): restore a copy or use another --ledger file", e.path, e.op, e.detail)
}

func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }
func (e *corruptError) Unwrap() error        { return e.err }

// sqliteCode returns the primary SQLite result code of err, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}

// classify wraps err with the file name and op, turning SQLite's "not a
// database" and "corrupt" codes into the package's errors.
func (l *Ledger) classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_NOTADB:
			return &notLedgerError{path: l.path, reason: "not an SQLite database", err: err}
		case sqlite3.SQLITE_CORRUPT:
			return &corruptError{path: l.path, op: op, detail: se.Error(), err: err}
		}
		if se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY {
			return fmt.Errorf("ledger %s: %s: %w (%w)", l.path, op, ErrUnknownRun, err)
		}
	}
	return fmt.Errorf("ledger %s: %s: %w", l.path, op, err)
}

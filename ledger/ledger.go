// Package ledger is the durable record of a provisioning run: one SQLite file
// (modernc.org/sqlite, no cgo) holding the state of every device, the DPS
// operation ids and results, per-run metadata and an append-only log of every
// HTTP transaction.
//
// The ledger is the source of truth for resume. A run may be killed at any
// moment, including with SIGKILL; every write that was acknowledged (Put or
// AddPending returned nil) is committed to the database file and survives. The
// file is refused when it belongs to a newer dps-batch, to another program, or
// to another DPS instance (see Bind), and only one run at a time may use it
// (see Lock).
//
// Writes from many workers are group-committed: a single writer goroutine
// commits all queued Puts in one short transaction and then wakes their
// callers, so the cost of a durable commit is shared by the whole batch.
package ledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// busyTimeout is how long a statement waits for a lock held by another
// connection (a reporting command reading the same file, or a checkpoint).
const busyTimeout = 5 * time.Second

// readConns is the size of the read pool; reads never block the writer in
// WAL mode, so a few connections are enough for lookups, Each and Counts.
const readConns = 4

// Options configures Open. The zero value opens a read-write ledger with
// synchronous=FULL and the wall clock.
type Options struct {
	// Now returns the current time; it stamps UpdatedAt, run times and lock
	// files. Nil means time.Now.
	Now func() time.Time
	// ReadOnly opens an existing ledger without writing to it: the file is not
	// created, migrations are not applied, and every write method returns
	// ErrReadOnly.
	ReadOnly bool
	// Synchronous is SQLite's synchronous setting: "FULL" (the default, also
	// for "") makes every commit survive power loss; "NORMAL" survives a crash
	// of the process but may lose the last commits on power loss.
	Synchronous string
}

// Ledger is an open ledger file. Its methods are safe for concurrent use.
type Ledger struct {
	path string // as given to Open, for messages
	abs  string // absolute path, for the lock file
	now  func() time.Time
	ro   bool

	wdb *sql.DB // one connection: the group-commit writer and the other write methods
	rdb *sql.DB // read pool

	upsertStmt  *sql.Stmt // on wdb
	attemptStmt *sql.Stmt // on wdb
	deviceStmt  *sql.Stmt // on rdb

	w *writer

	lockMu   sync.Mutex
	lockFile *os.File // non-nil while Lock is held

	closeOnce sync.Once
	closeErr  error
}

// Open opens the ledger at path, creating the file (and its directory) unless
// opts.ReadOnly is set, and brings its schema up to date.
//
// Open refuses, without modifying the file: a file that is not an SQLite
// database or is an SQLite database of another program (ErrNotLedger), a
// corrupted file (ErrCorrupt), and a ledger written by a newer dps-batch
// (*SchemaError). An empty file is a new ledger.
func Open(ctx context.Context, path string, opts Options) (*Ledger, error) {
	syncMode := strings.ToUpper(opts.Synchronous)
	switch syncMode {
	case "":
		syncMode = "FULL"
	case "FULL", "NORMAL":
	default:
		return nil, fmt.Errorf("open ledger %s: synchronous %q: want FULL or NORMAL", path, opts.Synchronous)
	}
	if path == "" {
		return nil, errors.New("open ledger: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	}
	l := &Ledger{path: path, abs: abs, now: opts.Now, ro: opts.ReadOnly}
	if l.now == nil {
		l.now = time.Now
	}

	version := 0
	switch fi, err := os.Stat(abs); {
	case errors.Is(err, os.ErrNotExist) && opts.ReadOnly:
		return nil, fmt.Errorf("open ledger %s: file does not exist", path)
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
			return nil, fmt.Errorf("open ledger %s: create directory: %w", path, err)
		}
	case err != nil:
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	case fi.IsDir():
		return nil, fmt.Errorf("open ledger %s: is a directory: name a file for --ledger, e.g. %s", path, filepath.Join(path, "fleet.ledger"))
	default:
		// Identify the file read-only first, so that a foreign or newer
		// database is refused before anything (even WAL mode) is written.
		if version, err = l.probe(ctx, abs); err != nil {
			return nil, err
		}
		if opts.ReadOnly && version > 0 && version < len(migrationList()) {
			// A ledger written by an older dps-batch: bring its schema up
			// to date first (additive changes, each in one transaction),
			// so that status and report can read it.
			if err := upgrade(ctx, path, opts); err != nil {
				return nil, fmt.Errorf("ledger %s has schema version %d, older than this dps-batch's %d, and could not be upgraded (%v): run provision on it once, where it is writable", path, version, len(migrationList()), err)
			}
			version = len(migrationList())
		}
	}

	if err := l.open(ctx, abs, syncMode, version); err != nil {
		l.closeDBs()
		return nil, err
	}
	l.w = newWriter(l)
	return l, nil
}

// upgrade opens the ledger at path for writing, which applies the
// migrations it lacks, and closes it again.
func upgrade(ctx context.Context, path string, opts Options) error {
	opts.ReadOnly = false
	l, err := Open(ctx, path, opts)
	if err != nil {
		return err
	}
	return l.Close()
}

// open opens the connection pools, checks their settings, migrates and
// prepares statements. version is the schema version found by probe.
func (l *Ledger) open(ctx context.Context, abs, sync string, version int) error {
	var err error
	if l.ro {
		err = l.openReadOnly(ctx, abs, version)
	} else {
		err = l.openReadWrite(ctx, abs, sync, version)
	}
	if err != nil {
		return err
	}
	if l.deviceStmt, err = l.rdb.PrepareContext(ctx, deviceSQL); err != nil {
		return l.classify("prepare", err)
	}
	return nil
}

// openReadOnly opens the read pool of a read-only ledger, which must have
// the current schema: it cannot be migrated.
func (l *Ledger) openReadOnly(ctx context.Context, abs string, version int) error {
	known := len(migrationList())
	if version == 0 {
		return &notLedgerError{path: l.path, reason: "an empty database"}
	}
	if version < known {
		return fmt.Errorf("ledger %s has schema version %d, older than this dps-batch's %d: run a writing command (provision) on it once to upgrade it", l.path, version, known)
	}
	var err error
	if l.rdb, err = openPool(abs, true, "", readConns); err != nil {
		return l.classify("open", err)
	}
	if err := checkPragmas(ctx, l.rdb, pragmaWant{busyTimeout: true, queryOnly: true}); err != nil {
		return l.classify("check read connection", err)
	}
	return nil
}

// openReadWrite opens the writer and the read pool and migrates.
func (l *Ledger) openReadWrite(ctx context.Context, abs, sync string, version int) error {
	var err error
	if l.wdb, err = openPool(abs, false, sync, 1); err != nil {
		return l.classify("open", err)
	}
	want := pragmaWant{busyTimeout: true, wal: true, foreignKeys: true, synchronous: sync}
	if err := checkPragmas(ctx, l.wdb, want); err != nil {
		return l.classify("check write connection", err)
	}
	if version < len(migrationList()) {
		if err := l.migrate(ctx); err != nil {
			return err
		}
	}
	// The read pool is opened after migration so that its connections see
	// WAL mode already set and never need to write.
	if l.rdb, err = openPool(abs, false, "", readConns); err != nil {
		return l.classify("open", err)
	}
	if err := checkPragmas(ctx, l.rdb, pragmaWant{busyTimeout: true, wal: true, queryOnly: true}); err != nil {
		return l.classify("check read connection", err)
	}
	if l.upsertStmt, err = l.wdb.PrepareContext(ctx, upsertSQL); err != nil {
		return l.classify("prepare", err)
	}
	if l.attemptStmt, err = l.wdb.PrepareContext(ctx, attemptSQL); err != nil {
		return l.classify("prepare", err)
	}
	return nil
}

// openPool opens a connection pool on the file. Every connection runs the
// pragmas in the DSN when it is created; checkPragmas verifies they took.
// sync is empty for read pools, which never write.
func openPool(abs string, readOnly bool, sync string, conns int) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	switch {
	case readOnly:
		// mode=ro is enforced by SQLite itself: no file is created and every
		// write fails, whatever a later statement does.
		q.Set("mode", "ro")
		q.Add("_pragma", "query_only(1)")
	case sync == "":
		q.Add("_pragma", "query_only(1)")
	default:
		q.Add("_pragma", "foreign_keys(1)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous("+sync+")")
		// Take the write lock at BEGIN, so a transaction never fails half-way
		// when it upgrades from reading to writing.
		q.Set("_txlock", "immediate")
	}
	db, err := sql.Open("sqlite", fileURI(abs, q))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns) // keep connections and their prepared statements
	return db, nil
}

// fileURI builds an SQLite URI filename; escaping the path keeps '?', '#' and
// '%' in directory names from being read as URI syntax.
func fileURI(abs string, q url.Values) string {
	p := filepath.ToSlash(abs)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // Windows: C:/x -> /C:/x
	}
	u := url.URL{Scheme: "file", Path: p, RawQuery: q.Encode()}
	return u.String()
}

// pragmaWant lists the settings checkPragmas verifies.
type pragmaWant struct {
	busyTimeout bool
	wal         bool
	foreignKeys bool
	queryOnly   bool
	synchronous string // "FULL", "NORMAL" or "" (not checked)
}

// checkPragmas reads back the settings the DSN asked for, because SQLite
// ignores some pragmas silently (journal_mode stays "delete" on some file
// systems, for example) and the ledger's guarantees depend on them.
func checkPragmas(ctx context.Context, db *sql.DB, want pragmaWant) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	check := func(pragma, wantVal string) error {
		var got string
		if err := conn.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
			return fmt.Errorf("read pragma %s: %w", pragma, err)
		}
		if !strings.EqualFold(got, wantVal) {
			return fmt.Errorf("pragma %s is %q, want %q", pragma, got, wantVal)
		}
		return nil
	}
	if want.busyTimeout {
		if err := check("busy_timeout", fmt.Sprint(busyTimeout.Milliseconds())); err != nil {
			return err
		}
	}
	if want.wal {
		if err := check("journal_mode", "wal"); err != nil {
			return err
		}
	}
	if want.foreignKeys {
		if err := check("foreign_keys", "1"); err != nil {
			return err
		}
	}
	if want.queryOnly {
		if err := check("query_only", "1"); err != nil {
			return err
		}
	}
	switch want.synchronous {
	case "FULL":
		return check("synchronous", "2")
	case "NORMAL":
		return check("synchronous", "1")
	}
	return nil
}

// Path returns the path the ledger was opened with.
func (l *Ledger) Path() string { return l.path }

// Close waits for queued Puts to be committed, closes the database and
// releases the run lock. It returns the first error met; later calls return
// nil. Methods called after Close return ErrClosed.
func (l *Ledger) Close() error {
	l.closeOnce.Do(func() {
		var errs []error
		if l.w != nil {
			l.w.close()
		}
		errs = append(errs, l.closeDBs())
		errs = append(errs, l.unlock())
		for _, err := range errs {
			if err != nil {
				l.closeErr = err
				break
			}
		}
	})
	return l.closeErr
}

// closeDBs closes statements and pools, returning the first error.
func (l *Ledger) closeDBs() error {
	var first error
	keep := func(err error, what string) {
		if err != nil && first == nil {
			first = fmt.Errorf("close ledger %s: %s: %w", l.path, what, err)
		}
	}
	for _, st := range []*sql.Stmt{l.upsertStmt, l.attemptStmt, l.deviceStmt} {
		if st != nil {
			keep(st.Close(), "statement")
		}
	}
	// The read pool first: the last connection to close checkpoints the WAL
	// into the main file, and that should be the writer's.
	if l.rdb != nil {
		keep(l.rdb.Close(), "read connections")
	}
	if l.wdb != nil {
		keep(l.wdb.Close(), "write connection")
	}
	return first
}

// writable reports ErrClosed or ErrReadOnly, wrapped with the file name, when
// the ledger cannot take writes.
func (l *Ledger) writable(op string) error {
	if l.ro {
		return fmt.Errorf("ledger %s: %s: %w", l.path, op, ErrReadOnly)
	}
	return l.notClosed(op)
}

// notClosed reports ErrClosed, wrapped with the file name, once Close has
// started.
func (l *Ledger) notClosed(op string) error {
	if l.w != nil && l.w.isClosed() {
		return fmt.Errorf("ledger %s: %s: %w", l.path, op, ErrClosed)
	}
	return nil
}

// readTx begins a read transaction on the read pool, so that multi-query
// reads see one snapshot.
func (l *Ledger) readTx(ctx context.Context) (*sql.Tx, error) {
	return l.rdb.BeginTx(ctx, nil)
}

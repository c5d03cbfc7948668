package ledger

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// applicationID marks an SQLite file as a dps-batch ledger ("DPSB" in ASCII);
// migrations/0001_init.sql sets it.
const applicationID = 0x44505342

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one numbered schema change.
type migration struct {
	version int    // the file name's numeric prefix, 1, 2, ...
	name    string // file name, e.g. "0001_init.sql"
}

// migrationList returns the embedded migrations in version order. Versions
// must be 1..N without gaps; a test checks that.
func migrationList() []migration {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		panic(err) // the pattern is constant
	}
	var list []migration
	for _, n := range names {
		base := strings.TrimPrefix(n, "migrations/")
		num, _, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			panic(fmt.Sprintf("ledger migration %s: name must start with a number", base))
		}
		list = append(list, migration{version: v, name: base})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].version < list[j].version })
	return list
}

// probe identifies an existing file without writing to it and returns its
// schema version: 0 for an empty database, which Open may initialise.
func (l *Ledger) probe(ctx context.Context, abs string) (int, error) {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Set("mode", "ro")
	db, err := sql.Open("sqlite", fileURI(abs, q))
	if err != nil {
		return 0, l.classify("open", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, l.classify("open", err)
	}
	defer tx.Rollback()

	var appID int64
	if err := tx.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return 0, l.classify("read header", err)
	}
	if appID != applicationID {
		tables, err := userTables(ctx, tx)
		if err != nil {
			return 0, l.classify("read schema", err)
		}
		switch {
		case appID != 0:
			return 0, &notLedgerError{path: l.path, reason: fmt.Sprintf("an SQLite database of another program, application_id %#x", appID)}
		case len(tables) > 0:
			if len(tables) > 5 {
				tables = append(tables[:5], "...")
			}
			return 0, &notLedgerError{path: l.path, reason: "an SQLite database with other tables: " + strings.Join(tables, ", ")}
		}
		return 0, nil
	}
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return 0, l.classify("read schema version", err)
	}
	if known := len(migrationList()); v > known {
		return 0, &SchemaError{Path: l.path, Have: v, Known: known}
	}
	return v, nil
}

// userTables lists the tables and other schema objects in the file.
func userTables(ctx context.Context, tx *sql.Tx) ([]string, error) {
	rows, err := tx.QueryContext(ctx, "SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}

// schemaVersion returns the highest applied migration, 0 when none.
func schemaVersion(ctx context.Context, tx *sql.Tx) (int, error) {
	var exists int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'migrations'").Scan(&exists); err != nil {
		return 0, err
	}
	if exists == 0 {
		return 0, nil
	}
	var v int
	err := tx.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM migrations").Scan(&v)
	return v, err
}

// migrate applies the migrations the file lacks, each in its own
// transaction together with its row in the migrations table.
func (l *Ledger) migrate(ctx context.Context) error {
	list := migrationList()
	for _, m := range list {
		if err := l.migrateOne(ctx, m, len(list)); err != nil {
			return err
		}
	}
	return nil
}

// migrateOne applies m unless it is already recorded. The version is read
// again inside the write transaction, so two processes opening a new file at
// once cannot both apply a migration.
func (l *Ledger) migrateOne(ctx context.Context, m migration, known int) error {
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify("migrate "+m.name, err)
	}
	defer tx.Rollback()

	// Created in the same transaction as the first migration, so a crash
	// cannot leave a file with a migrations table and no ledger id.
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	) STRICT`); err != nil {
		return l.classify("create migrations table", err)
	}
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return l.classify("read schema version", err)
	}
	if v > known {
		return &SchemaError{Path: l.path, Have: v, Known: known}
	}
	if v >= m.version {
		return nil
	}
	if v != m.version-1 {
		return fmt.Errorf("ledger %s: migrate %s: schema version is %d, want %d", l.path, m.name, v, m.version-1)
	}
	body, err := migrationFS.ReadFile("migrations/" + m.name)
	if err != nil {
		return fmt.Errorf("ledger %s: read migration %s: %w", l.path, m.name, err)
	}
	if _, err := tx.ExecContext(ctx, string(body)); err != nil {
		return l.classify("migrate "+m.name, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
		m.version, m.name, l.now().UnixMilli()); err != nil {
		return l.classify("record migration "+m.name, err)
	}
	if err := tx.Commit(); err != nil {
		return l.classify("commit migration "+m.name, err)
	}
	return nil
}

package ledger

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Bind ties the ledger to one DPS instance. The first call stores idScope
// and endpoint; later calls return a *BindingError when either differs, so
// that a ledger is never used to resume against another DPS instance.
// Endpoints are compared after normalising (lower-case scheme and host, no
// trailing slash); ID scopes are compared exactly. On a read-only ledger
// Bind only compares: an unbound read-only ledger accepts any binding.
func (l *Ledger) Bind(ctx context.Context, idScope, endpoint string) error {
	if err := l.notClosed("bind"); err != nil {
		return err
	}
	idScope = strings.TrimSpace(idScope)
	endpoint = normalizeEndpoint(endpoint)
	if idScope == "" || endpoint == "" {
		return fmt.Errorf("ledger %s: bind: ID scope and endpoint must not be empty", l.path)
	}
	if l.ro {
		haveScope, haveEndpoint, ok, err := l.Binding(ctx)
		if err != nil || !ok {
			return err
		}
		return l.compareBinding(haveScope, haveEndpoint, idScope, endpoint)
	}

	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify("bind", err)
	}
	defer tx.Rollback()
	var haveScope, haveEndpoint string
	err = tx.QueryRowContext(ctx, "SELECT id_scope, endpoint FROM binding WHERE id = 1").Scan(&haveScope, &haveEndpoint)
	switch {
	case err == sql.ErrNoRows:
		if _, err := tx.ExecContext(ctx, "INSERT INTO binding (id, id_scope, endpoint, bound_at) VALUES (1, ?, ?, ?)",
			idScope, endpoint, l.now().UnixMilli()); err != nil {
			return l.classify("bind", err)
		}
		if err := tx.Commit(); err != nil {
			return l.classify("bind: commit", err)
		}
		return nil
	case err != nil:
		return l.classify("bind", err)
	}
	return l.compareBinding(haveScope, haveEndpoint, idScope, endpoint)
}

// compareBinding returns a *BindingError unless the stored and wanted
// binding match.
func (l *Ledger) compareBinding(haveScope, haveEndpoint, wantScope, wantEndpoint string) error {
	if haveScope == wantScope && normalizeEndpoint(haveEndpoint) == wantEndpoint {
		return nil
	}
	return &BindingError{Path: l.path, HaveScope: haveScope, HaveEndpoint: haveEndpoint, WantScope: wantScope, WantEndpoint: wantEndpoint}
}

// Binding returns the DPS instance the ledger is bound to; ok is false when
// Bind was never called.
func (l *Ledger) Binding(ctx context.Context) (idScope, endpoint string, ok bool, err error) {
	if err := l.notClosed("read binding"); err != nil {
		return "", "", false, err
	}
	err = l.rdb.QueryRowContext(ctx, "SELECT id_scope, endpoint FROM binding WHERE id = 1").Scan(&idScope, &endpoint)
	switch {
	case err == sql.ErrNoRows:
		return "", "", false, nil
	case err != nil:
		return "", "", false, l.classify("read binding", err)
	}
	return idScope, endpoint, true, nil
}

// normalizeEndpoint lower-cases the scheme and host of a URL (or of a bare
// host name) and drops trailing slashes, so that spellings of the same
// endpoint compare equal.
func normalizeEndpoint(s string) string {
	s = strings.TrimRight(strings.TrimSpace(s), "/")
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.Host != "" {
		u.Scheme = strings.ToLower(u.Scheme)
		u.Host = strings.ToLower(u.Host)
		return strings.TrimRight(u.String(), "/")
	}
	host, rest, found := strings.Cut(s, "/")
	if !found {
		return strings.ToLower(host)
	}
	return strings.ToLower(host) + "/" + rest
}

// Run is one command run against the ledger.
type Run struct {
	ID         int64
	StartedAt  time.Time // UTC, to the millisecond
	FinishedAt time.Time // zero while running, or when the run was killed
	Command    string    // e.g. "provision"
	Outcome    string    // set by FinishRun, e.g. "completed", "interrupted"
	Options    map[string]string
	Counts     map[State]int // device counts recorded by FinishRun
}

// StartRun records the start of a run and returns its id, which Put and
// AddPending record as Device.RunID. options are the settings worth keeping
// for later diagnosis (never credentials).
func (l *Ledger) StartRun(ctx context.Context, command string, options map[string]string) (int64, error) {
	if err := l.writable("start run"); err != nil {
		return 0, err
	}
	if options == nil {
		options = map[string]string{}
	}
	opts, err := json.Marshal(options)
	if err != nil {
		return 0, fmt.Errorf("ledger %s: start run: encode options: %w", l.path, err)
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return 0, l.classify("start run", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "INSERT INTO runs (started_at, command, options) VALUES (?, ?, ?)",
		l.now().UnixMilli(), command, string(opts))
	if err != nil {
		return 0, l.classify("start run", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, l.classify("start run", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, l.classify("start run: commit", err)
	}
	return id, nil
}

// FinishRun records the end of run runID with its outcome and device counts.
// It wraps ErrUnknownRun when no such run exists.
func (l *Ledger) FinishRun(ctx context.Context, runID int64, outcome string, counts map[State]int) error {
	if err := l.writable(fmt.Sprintf("finish run %d", runID)); err != nil {
		return err
	}
	if counts == nil {
		counts = map[State]int{}
	}
	enc, err := json.Marshal(counts)
	if err != nil {
		return fmt.Errorf("ledger %s: finish run %d: encode counts: %w", l.path, runID, err)
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify(fmt.Sprintf("finish run %d", runID), err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "UPDATE runs SET finished_at = ?, outcome = ?, counts = ? WHERE id = ?",
		l.now().UnixMilli(), outcome, string(enc), runID)
	if err != nil {
		return l.classify(fmt.Sprintf("finish run %d", runID), err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return l.classify(fmt.Sprintf("finish run %d", runID), err)
	} else if n == 0 {
		return fmt.Errorf("ledger %s: finish run %d: %w", l.path, runID, ErrUnknownRun)
	}
	if err := tx.Commit(); err != nil {
		return l.classify(fmt.Sprintf("finish run %d: commit", runID), err)
	}
	return nil
}

// LastRun returns the most recently started run; ok is false when there is
// none.
func (l *Ledger) LastRun(ctx context.Context) (r Run, ok bool, err error) {
	if err := l.notClosed("read last run"); err != nil {
		return Run{}, false, err
	}
	runs, err := l.runs(ctx, "read last run", 1)
	if err != nil || len(runs) == 0 {
		return Run{}, false, err
	}
	return runs[0], true, nil
}

// Runs returns the most recently started runs, newest first: at most limit
// of them, or all when limit is 0 or less. A run that was killed (or is still
// running) has a zero FinishedAt and no outcome.
func (l *Ledger) Runs(ctx context.Context, limit int) ([]Run, error) {
	if err := l.notClosed("list runs"); err != nil {
		return nil, err
	}
	return l.runs(ctx, "list runs", limit)
}

// runs reads up to limit runs (all when limit <= 0), newest first.
func (l *Ledger) runs(ctx context.Context, op string, limit int) ([]Run, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := l.rdb.QueryContext(ctx, "SELECT id, started_at, finished_at, command, outcome, options, counts FROM runs ORDER BY id DESC LIMIT ?", limit)
	if err != nil {
		return nil, l.classify(op, err)
	}
	defer rows.Close()
	var out []Run
	for rows.Next() {
		var (
			r        Run
			started  int64
			finished sql.NullInt64
			opts     string
			counts   string
		)
		if err := rows.Scan(&r.ID, &started, &finished, &r.Command, &r.Outcome, &opts, &counts); err != nil {
			return nil, l.classify(op, err)
		}
		r.StartedAt = time.UnixMilli(started).UTC()
		r.FinishedAt = timeOf(finished)
		if err := json.Unmarshal([]byte(opts), &r.Options); err != nil {
			return nil, fmt.Errorf("ledger %s: run %d: decode options: %w", l.path, r.ID, err)
		}
		if err := json.Unmarshal([]byte(counts), &r.Counts); err != nil {
			return nil, fmt.Errorf("ledger %s: run %d: decode counts: %w", l.path, r.ID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, l.classify(op, err)
	}
	return out, nil
}

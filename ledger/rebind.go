package ledger

import (
	"context"
	"fmt"
)

// acceptedSQL counts the devices Accepted describes; its arguments are the
// codes of assigning, assigned and disabled.
const acceptedSQL = `SELECT count(*) FROM devices
	WHERE attempts > 0 OR operation_id != '' OR dps_etag != '' OR dps_updated != '' OR state IN (?, ?, ?)`

// Accepted counts the devices DPS accepted something for, or may have: a
// register request counted billable, an operation, a final answer from DPS
// or its record. Zero means DPS never accepted anything recorded in this
// ledger, so binding it to another DPS instance (a corrected endpoint or ID
// scope) loses nothing.
func (l *Ledger) Accepted(ctx context.Context) (int, error) {
	if err := l.notClosed("count accepted devices"); err != nil {
		return 0, err
	}
	var n int
	err := l.rdb.QueryRowContext(ctx, acceptedSQL,
		stateCodes[StateAssigning], stateCodes[StateAssigned], stateCodes[StateDisabled]).Scan(&n)
	if err != nil {
		return 0, l.classify("count accepted devices", err)
	}
	return n, nil
}

// RebindError refuses to bind a ledger to another DPS instance after DPS
// accepted something recorded in it.
type RebindError struct {
	Path     string
	Accepted int // devices DPS accepted something for
}

func (e *RebindError) Error() string {
	return fmt.Sprintf("ledger %s cannot be bound to another DPS instance: DPS accepted (or may have accepted) requests for %d of its devices; those records belong to the instance it is bound to",
		e.Path, e.Accepted)
}

// Rebind binds the ledger to another ID scope and endpoint, for a ledger
// made with a wrong one. It refuses with *RebindError unless DPS never
// accepted anything recorded in it (Accepted is zero). The check and the
// change are one transaction.
func (l *Ledger) Rebind(ctx context.Context, idScope, endpoint string) error {
	if err := l.writable("rebind"); err != nil {
		return err
	}
	endpoint = normalizeEndpoint(endpoint)
	if idScope == "" || endpoint == "" {
		return fmt.Errorf("ledger %s: rebind: ID scope and endpoint must not be empty", l.path)
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify("rebind", err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, acceptedSQL,
		stateCodes[StateAssigning], stateCodes[StateAssigned], stateCodes[StateDisabled]).Scan(&n); err != nil {
		return l.classify("rebind", err)
	}
	if n > 0 {
		return &RebindError{Path: l.path, Accepted: n}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO binding (id, id_scope, endpoint, bound_at) VALUES (1, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET id_scope = excluded.id_scope, endpoint = excluded.endpoint, bound_at = excluded.bound_at`,
		idScope, endpoint, l.now().UnixMilli()); err != nil {
		return l.classify("rebind", err)
	}
	if err := tx.Commit(); err != nil {
		return l.classify("rebind: commit", err)
	}
	return nil
}

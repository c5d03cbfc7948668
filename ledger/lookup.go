package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// LookupChunk is how many ids Briefs reads with one query. Callers that
// walk a manifest batch their lookups in chunks of this size.
const LookupChunk = 256

// Brief is the part of a device row that decides what a run does with the
// device (see batch.Decide): its state, the operation id DPS gave it, the
// fingerprint of the credentials it was registered with and when it last
// reached a final state.
type Brief struct {
	State       State
	OperationID string
	Fingerprint string
	FinishedAt  time.Time // zero = not finished
	CampaignID  int64     // campaign of the device's last registration, 0 = none
	HasIssued   bool      // an issued certificate is recorded (Device.Issued is not zero)
}

// briefsSQL selects up to LookupChunk devices by id; shorter lists are
// padded with their last id (a repeated IN value matches its row once).
var briefsSQL = `SELECT registration_id, state, cert_lost, operation_id, fingerprint, finished_at, campaign_id, issued_fingerprint != '' FROM devices WHERE registration_id IN (?` +
	strings.Repeat(", ?", LookupChunk-1) + `)`

// Briefs returns the Brief of every device in ids that the ledger knows,
// keyed by registration id; unknown ids are absent. All come from one
// snapshot. A run walking its manifest calls it once per chunk of
// LookupChunk rows instead of calling Device for each row, which was most
// of the cost of a re-run with nothing left to do; it reads the whole row
// with Device only for the devices it works on.
func (l *Ledger) Briefs(ctx context.Context, ids []string) (map[string]Brief, error) {
	out := make(map[string]Brief, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	op := fmt.Sprintf("read %d devices (%s, ...)", len(ids), ids[0])
	if err := l.notClosed(op); err != nil {
		return nil, err
	}
	tx, err := l.readTx(ctx)
	if err != nil {
		return nil, l.classify(op, err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, briefsSQL)
	if err != nil {
		return nil, l.classify(op, err)
	}
	defer st.Close()
	args := make([]any, LookupChunk)
	for start := 0; start < len(ids); start += LookupChunk {
		chunk := ids[start:min(start+LookupChunk, len(ids))]
		for i := range args {
			args[i] = chunk[min(i, len(chunk)-1)]
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return nil, l.classify(op, err)
		}
		for rows.Next() {
			var (
				id       string
				code     int
				lost     int
				finished sql.NullInt64
				b        Brief
			)
			if err := rows.Scan(&id, &code, &lost, &b.OperationID, &b.Fingerprint, &finished, &b.CampaignID, &b.HasIssued); err != nil {
				rows.Close()
				return nil, l.classify(op, err)
			}
			if b.State, err = stateOf(code, lost); err != nil {
				rows.Close()
				return nil, l.classify(op, fmt.Errorf("device %s: %w", id, err))
			}
			b.FinishedAt = timeOf(finished)
			out[id] = b
		}
		if err := closeRows(rows); err != nil {
			return nil, l.classify(op, err)
		}
	}
	return out, nil
}

package ledger

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Campaign is a deliberate re-registration of devices that already reached
// a final state (--reprovision, --retry-failed). It is recorded before its
// first device is registered, so that a run killed mid-campaign is continued
// by the same command instead of starting over: each device records the
// campaign it was registered in (Device.CampaignID) and a campaign registers
// a device at most once.
type Campaign struct {
	ID         int64
	Kind       string    // "reprovision", "retry-failed" or "reprovision+retry-failed"
	StartedAt  time.Time // UTC, to the millisecond
	FinishedAt time.Time // zero while open
	Outcome    string    // "" while open; "completed" or "abandoned"
	RunID      int64     // the run that started it
	Options    map[string]string
}

// Open reports whether the campaign has not finished.
func (c Campaign) Open() bool { return c.FinishedAt.IsZero() }

// Campaign outcomes.
const (
	CampaignCompleted = "completed"
	CampaignAbandoned = "abandoned"
)

// OpenCampaign returns the campaign that has not finished; ok is false when
// every campaign has finished (or there was none). At most one is open.
func (l *Ledger) OpenCampaign(ctx context.Context) (c Campaign, ok bool, err error) {
	if err := l.notClosed("read open campaign"); err != nil {
		return Campaign{}, false, err
	}
	return l.campaignWhere(ctx, "WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1")
}

// LastCampaign returns the most recent campaign, open or not.
func (l *Ledger) LastCampaign(ctx context.Context) (c Campaign, ok bool, err error) {
	if err := l.notClosed("read last campaign"); err != nil {
		return Campaign{}, false, err
	}
	return l.campaignWhere(ctx, "ORDER BY id DESC LIMIT 1")
}

// LastCampaignOfKind returns the most recent campaign of kind, open or not.
func (l *Ledger) LastCampaignOfKind(ctx context.Context, kind string) (c Campaign, ok bool, err error) {
	if err := l.notClosed("read last campaign"); err != nil {
		return Campaign{}, false, err
	}
	return l.campaignWhere(ctx, "WHERE kind = ? ORDER BY id DESC LIMIT 1", kind)
}

func (l *Ledger) campaignWhere(ctx context.Context, where string, args ...any) (c Campaign, ok bool, err error) {
	var (
		started  int64
		finished sql.NullInt64
		run      sql.NullInt64
		opts     string
	)
	err = l.rdb.QueryRowContext(ctx, "SELECT id, kind, started_at, finished_at, outcome, run_id, options FROM campaigns "+where, args...).
		Scan(&c.ID, &c.Kind, &started, &finished, &c.Outcome, &run, &opts)
	switch {
	case err == sql.ErrNoRows:
		return Campaign{}, false, nil
	case err != nil:
		return Campaign{}, false, l.classify("read campaign", err)
	}
	c.StartedAt = time.UnixMilli(started).UTC()
	c.FinishedAt = timeOf(finished)
	c.RunID = run.Int64
	if err := json.Unmarshal([]byte(opts), &c.Options); err != nil {
		return Campaign{}, false, fmt.Errorf("ledger %s: campaign %d: decode options: %w", l.path, c.ID, err)
	}
	return c, true, nil
}

// StartCampaign records a new campaign of kind, started by run runID, and
// returns it. Any campaign still open is closed as abandoned in the same
// transaction: at most one campaign is ever open.
func (l *Ledger) StartCampaign(ctx context.Context, kind string, runID int64, options map[string]string) (Campaign, error) {
	if err := l.writable("start campaign"); err != nil {
		return Campaign{}, err
	}
	if options == nil {
		options = map[string]string{}
	}
	opts, err := json.Marshal(options)
	if err != nil {
		return Campaign{}, fmt.Errorf("ledger %s: start campaign: encode options: %w", l.path, err)
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return Campaign{}, l.classify("start campaign", err)
	}
	defer tx.Rollback()
	now := l.now()
	if _, err := tx.ExecContext(ctx, "UPDATE campaigns SET finished_at = ?, outcome = ? WHERE finished_at IS NULL",
		now.UnixMilli(), CampaignAbandoned); err != nil {
		return Campaign{}, l.classify("start campaign", err)
	}
	res, err := tx.ExecContext(ctx, "INSERT INTO campaigns (kind, started_at, run_id, options) VALUES (?, ?, ?, ?)",
		kind, now.UnixMilli(), idOrNull(runID), string(opts))
	if err != nil {
		return Campaign{}, l.classify("start campaign", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return Campaign{}, l.classify("start campaign", err)
	}
	if err := tx.Commit(); err != nil {
		return Campaign{}, l.classify("start campaign: commit", err)
	}
	return Campaign{ID: id, Kind: kind, StartedAt: time.UnixMilli(now.UnixMilli()).UTC(), RunID: runID, Options: options}, nil
}

// FinishCampaign closes campaign id with outcome (CampaignCompleted or
// CampaignAbandoned). Closing a closed campaign changes nothing.
func (l *Ledger) FinishCampaign(ctx context.Context, id int64, outcome string) error {
	op := fmt.Sprintf("finish campaign %d", id)
	if err := l.writable(op); err != nil {
		return err
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify(op, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "UPDATE campaigns SET finished_at = ?, outcome = ? WHERE id = ? AND finished_at IS NULL",
		l.now().UnixMilli(), outcome, id); err != nil {
		return l.classify(op, err)
	}
	if err := tx.Commit(); err != nil {
		return l.classify(op+": commit", err)
	}
	return nil
}

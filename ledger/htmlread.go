package ledger

import (
	"context"
	"database/sql"
	"time"
)

// Span is the time a ledger's devices and attempt log cover.
type Span struct {
	First time.Time // earliest first attempt or logged request; zero = none
	Last  time.Time // latest finish or logged request; zero = none
}

// TimeSpan returns the span of the device rows' first_attempt_at and
// finished_at and of the attempt log's request times, from one snapshot.
func (l *Ledger) TimeSpan(ctx context.Context) (Span, error) {
	if err := l.notClosed("read time span"); err != nil {
		return Span{}, err
	}
	var dmin, dmax, amin, amax sql.NullInt64
	tx, err := l.readTx(ctx)
	if err != nil {
		return Span{}, l.classify("read time span", err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, "SELECT min(first_attempt_at), max(finished_at) FROM devices").Scan(&dmin, &dmax); err != nil {
		return Span{}, l.classify("read time span", err)
	}
	if err := tx.QueryRowContext(ctx, "SELECT min(at), max(at) FROM attempts").Scan(&amin, &amax); err != nil {
		return Span{}, l.classify("read time span", err)
	}
	var s Span
	for _, v := range []sql.NullInt64{dmin, amin} {
		if t := timeOf(v); !t.IsZero() && (s.First.IsZero() || t.Before(s.First)) {
			s.First = t
		}
	}
	for _, v := range []sql.NullInt64{dmax, amax} {
		if t := timeOf(v); !t.IsZero() && t.After(s.Last) {
			s.Last = t
		}
	}
	return s, nil
}

// StatusBucket counts the logged requests of one HTTP status in one
// interval of a time series.
type StatusBucket struct {
	Index int // interval number: (at - start) / step
	N     int // requests in it
}

// AttemptsWithStatus counts the attempt log's requests answered with
// httpStatus (e.g. 429), in total and per interval of step from start,
// aggregated by SQLite: nothing per request is held in memory.
func (l *Ledger) AttemptsWithStatus(ctx context.Context, httpStatus int, start time.Time, step time.Duration) (total int, buckets []StatusBucket, err error) {
	const op = "count attempts by status"
	if err := l.notClosed(op); err != nil {
		return 0, nil, err
	}
	ms := step.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	rows, err := l.rdb.QueryContext(ctx, "SELECT (at - ?) / ?, count(*) FROM attempts WHERE http_status = ? GROUP BY 1 ORDER BY 1",
		start.UnixMilli(), ms, httpStatus)
	if err != nil {
		return 0, nil, l.classify(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		var b StatusBucket
		if err := rows.Scan(&b.Index, &b.N); err != nil {
			return 0, nil, l.classify(op, err)
		}
		total += b.N
		buckets = append(buckets, b)
	}
	if err := rows.Err(); err != nil {
		return 0, nil, l.classify(op, err)
	}
	return total, buckets, nil
}

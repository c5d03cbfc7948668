package ledger

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	sqlite3 "modernc.org/sqlite/lib"
)

// maxBatch bounds one group commit, so a transaction (and the time every
// caller in it waits) stays short even when thousands of writes queue up.
const maxBatch = 256

// busyYields is how many times the writer yields the processor before
// taking the next batch when writes arrived during its last commit, for as
// long as each yield brings more. Goroutines about to write (a runner's
// workers handling responses) then join the batch, so fewer, larger
// transactions share the fixed cost of a commit, fsync included. A yield
// costs microseconds, and a lone caller never yields: nothing arrives
// during its commit.
const busyYields = 4

// putReq is one queued Put.
type putReq struct {
	regID    string
	dev      []any   // upsert arguments
	attempts [][]any // attempt arguments
	state    reqState
	done     chan error // buffered; receives exactly one result once taken
}

// reqState is where a putReq is; guarded by writer.mu.
type reqState int

const (
	reqQueued    reqState = iota // waiting in the queue
	reqTaken                     // in a batch: its result will be sent on done
	reqCancelled                 // its caller gave up before it was taken; never written
)

// writer is the group-commit loop: one goroutine that owns all Put
// transactions.
type writer struct {
	l *Ledger

	mu     sync.Mutex
	cond   *sync.Cond // signalled when the queue grows or the writer closes
	queue  []*putReq
	closed bool
	taken  int // writes in the batch being committed
	busy   int // yields left before taking the next batch (see busyYields)

	stopped chan struct{} // closed when the loop has exited

	commits atomic.Int64 // transactions committed
	writes  atomic.Int64 // Puts committed
}

// newWriter starts the loop.
func newWriter(l *Ledger) *writer {
	w := &writer{l: l, stopped: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.run()
	return w
}

// isClosed reports whether close has started.
func (w *writer) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// close stops taking new writes, commits what is queued and waits for the
// loop to exit.
func (w *writer) close() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.stopped
}

// enqueue adds r to the queue unless the writer is closed.
func (w *writer) enqueue(r *putReq) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.queue = append(w.queue, r)
	w.cond.Signal()
	return true
}

// cancel withdraws r if the writer has not taken it yet, and reports whether
// it did.
func (w *writer) cancel(r *putReq) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r.state != reqQueued {
		return false
	}
	r.state = reqCancelled
	return true
}

// next waits for queued writes and takes up to maxBatch of them. It returns
// nil once the writer is closed and the queue is empty.
func (w *writer) next() []*putReq {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.queue) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.queue) == 0 {
			return nil
		}
		if w.busy > 0 && !w.closed && len(w.queue) < maxBatch {
			// Let writers that are about to enqueue do so; the queue may
			// also lose cancelled writes meanwhile, hence the loop.
			n := len(w.queue)
			w.busy--
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
			if len(w.queue) == n {
				w.busy = 0
			}
			continue
		}
		batch := make([]*putReq, 0, min(len(w.queue), maxBatch))
		i := 0
		for ; i < len(w.queue) && len(batch) < maxBatch; i++ {
			r := w.queue[i]
			if r.state == reqCancelled {
				continue
			}
			r.state = reqTaken
			batch = append(batch, r)
		}
		n := copy(w.queue, w.queue[i:])
		clear(w.queue[n:]) // let taken requests be collected
		w.queue = w.queue[:n]
		if len(batch) > 0 {
			w.taken = len(batch)
			return batch
		}
	}
}

// run is the loop: take a batch, commit it, tell its callers.
func (w *writer) run() {
	defer close(w.stopped)
	for {
		batch := w.next()
		if batch == nil {
			return
		}
		results := make([]error, len(batch))
		if err := w.commit(batch); err != nil {
			if len(batch) > 1 && sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT {
				// One bad write must not fail the others: retry each
				// alone, so every caller gets its own result. Other errors
				// (busy, I/O, disk full) would fail each alone too.
				for i, r := range batch {
					results[i] = w.commit([]*putReq{r})
				}
			} else {
				for i := range results {
					results[i] = err
				}
			}
		}
		w.mu.Lock()
		w.taken = 0
		if len(w.queue) > 0 {
			w.busy = busyYields
		}
		w.mu.Unlock()
		for i, r := range batch {
			r.done <- results[i]
		}
	}
}

// commit writes batch in one transaction. It uses a background context: a
// batch serves many callers, so no single caller's context may abort it.
func (w *writer) commit(batch []*putReq) (err error) {
	l := w.l
	ctx := context.Background()
	op := "write device " + batch[0].regID
	if len(batch) > 1 {
		op = fmt.Sprintf("write %d devices (%s, ...)", len(batch), batch[0].regID)
	}
	tx, err := l.wdb.BeginTx(ctx, nil)
	if err != nil {
		return l.classify(op, err)
	}
	defer tx.Rollback()
	up := tx.StmtContext(ctx, l.upsertStmt)
	att := tx.StmtContext(ctx, l.attemptStmt)

	now := l.now().UnixMilli()
	for _, r := range batch {
		r.dev[updatedAtArg] = now
		var id int64
		if err := up.QueryRowContext(ctx, r.dev...).Scan(&id); err != nil {
			return l.classify("write device "+r.regID, err)
		}
		for _, a := range r.attempts {
			a[0] = id
			if a[attemptAtArg] == nil {
				a[attemptAtArg] = now
			}
			if _, err := att.ExecContext(ctx, a...); err != nil {
				return l.classify("log attempt of device "+r.regID, err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return l.classify(op+": commit", err)
	}
	w.commits.Add(1)
	w.writes.Add(int64(len(batch)))
	return nil
}

// Put writes the whole row of d (insert or replace) and appends log to the
// attempt log, in one transaction. UpdatedAt is set to Options.Now at commit.
//
// Put is group-committed with concurrent Puts and returns once its write is
// committed:
//   - nil: the write is durable (with synchronous FULL, also across power
//     loss).
//   - an error wrapping ctx.Err(): ctx ended before the writer took the write,
//     and it is guaranteed never to be written. If ctx ends after the writer
//     took it, Put waits for that commit (milliseconds) and reports its real
//     outcome instead, so a nil error always means written.
//   - ErrClosed or ErrReadOnly (wrapped): nothing was written.
//   - any other error: the transaction holding the write was rolled back.
//
// A write that is invalid (empty registration id, unknown state or attempt
// kind, an attempt for another device) is refused before it is queued.
func (l *Ledger) Put(ctx context.Context, d Device, log ...Attempt) error {
	if err := l.writable("write device " + d.RegistrationID); err != nil {
		return err
	}
	dev, err := deviceArgs(d)
	if err != nil {
		return fmt.Errorf("ledger %s: write: %w", l.path, err)
	}
	r := &putReq{regID: d.RegistrationID, dev: dev, done: make(chan error, 1)}
	for _, a := range log {
		args, err := attemptArgs(d, a)
		if err != nil {
			return fmt.Errorf("ledger %s: write: %w", l.path, err)
		}
		r.attempts = append(r.attempts, args)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ledger %s: write device %s: %w", l.path, d.RegistrationID, err)
	}
	if !l.w.enqueue(r) {
		return fmt.Errorf("ledger %s: write device %s: %w", l.path, d.RegistrationID, ErrClosed)
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if l.w.cancel(r) {
			return fmt.Errorf("ledger %s: write device %s: %w", l.path, d.RegistrationID, ctx.Err())
		}
		return <-r.done
	}
}

// Stats describes the work of the group-commit writer so far.
type Stats struct {
	Commits int64 // transactions committed by Put
	Writes  int64 // Puts committed; Writes/Commits is the mean batch size
	Queued  int   // Puts waiting for the writer right now
	Taken   int   // Puts in the transaction the writer is committing right now
}

// Stats returns the writer's counters; cheap enough for a progress display.
func (l *Ledger) Stats() Stats {
	l.w.mu.Lock()
	queued := 0
	for _, r := range l.w.queue {
		if r.state == reqQueued {
			queued++
		}
	}
	taken := l.w.taken
	l.w.mu.Unlock()
	return Stats{Commits: l.w.commits.Load(), Writes: l.w.writes.Load(), Queued: queued, Taken: taken}
}

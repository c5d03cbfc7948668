package ledger_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
	"golang.org/x/sync/errgroup"
)

func TestPut_Concurrent(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	run := MustStartRun(t, l)
	const workers, each = 32, 500

	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			for i := range each {
				d := ledger.Device{
					RegistrationID: fmt.Sprintf("w%02d-d%03d", w, i), State: ledger.StateAssigned, RunID: run,
					AssignedHub: "hub.example", Attempts: 1, Polls: 1,
				}
				if err := l.Put(ctx, d, ledger.Attempt{Kind: "register", HTTPStatus: 202}, ledger.Attempt{Kind: "poll", HTTPStatus: 200}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	t.Logf("%d writes in %d commits (%.1f per commit)", st.Writes, st.Commits, float64(st.Writes)/float64(st.Commits))
	if got, want := st.Writes, int64(workers*each); got != want {
		t.Errorf("Stats().Writes=%d, want %d", got, want)
	}
	// With 32 writers waiting on each commit, batches form by themselves.
	if st.Commits > st.Writes/2 {
		t.Errorf("Stats().Commits=%d for %d writes: group commit is not batching", st.Commits, st.Writes)
	}
	MustClose(t, l)

	// Everything acknowledged is in the file, read by a fresh Ledger.
	l = MustOpen(t, path, ledger.Options{ReadOnly: true})
	c, err := l.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Total != workers*each || c.ByState[ledger.StateAssigned] != workers*each || c.Attempts != workers*each || c.Polls != workers*each {
		t.Errorf("Counts()=%+v, want %d assigned devices with one attempt and one poll each", c, workers*each)
	}
	if d, ok, err := l.Device(ctx, "w31-d499"); err != nil || !ok || d.RunID != run {
		t.Errorf("Device(w31-d499)=%+v ok=%v err=%v", d, ok, err)
	}
	if got, err := l.Attempts(ctx, "w07-d123"); err != nil || len(got) != 2 {
		t.Errorf("Attempts(w07-d123)=%v err=%v, want 2", got, err)
	}
}

// holdWriteLock takes SQLite's write lock on path from another connection,
// so the ledger's writer blocks in BEGIN until release is called.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	db := rawDB(t, path)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
				t.Error(err)
			}
			conn.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// waitFor polls cond until it holds or a few seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(4 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPut_GroupCommit(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	release := holdWriteLock(t, path)

	// The first write is taken alone and blocks in BEGIN; the next 300
	// queue behind it and must go out in two batches (256 + 44).
	const n = 301
	errs := make(chan error, n)
	put := func(i int) {
		errs <- l.Put(ctx, ledger.Device{RegistrationID: fmt.Sprintf("d-%03d", i), State: ledger.StatePending})
	}
	go put(0)
	waitFor(t, "the first write to be taken", func() bool { return l.Stats().Taken == 1 })
	for i := 1; i < n; i++ {
		go put(i)
	}
	waitFor(t, "300 queued writes", func() bool { return l.Stats().Queued == n-1 })
	release()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st := l.Stats()
	if got, want := st, (ledger.Stats{Commits: 3, Writes: n}); got != want {
		t.Errorf("Stats()=%+v, want %+v (1 + 256 + 44)", got, want)
	}
	if c, err := l.Counts(ctx); err != nil || c.Total != n {
		t.Errorf("Counts().Total=%d err=%v, want %d", c.Total, err, n)
	}
}

func TestPut_BadWriteDoesNotFailBatch(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	release := holdWriteLock(t, path)

	// Batch three writes, one naming a run that does not exist: only that
	// one may fail.
	errs := make(map[string]chan error)
	for _, d := range []ledger.Device{
		{RegistrationID: "d-0", State: ledger.StatePending},
		{RegistrationID: "d-1", State: ledger.StatePending},
		{RegistrationID: "d-bad", State: ledger.StatePending, RunID: 77},
		{RegistrationID: "d-2", State: ledger.StatePending},
	} {
		ch := make(chan error, 1)
		errs[d.RegistrationID] = ch
		go func() { ch <- l.Put(ctx, d) }()
		if d.RegistrationID == "d-0" {
			waitFor(t, "the first write to be taken", func() bool { return l.Stats().Taken == 1 })
		}
	}
	waitFor(t, "3 queued writes", func() bool { return l.Stats().Queued == 3 })
	release()
	for id, ch := range errs {
		err := <-ch
		if id == "d-bad" {
			if !errors.Is(err, ledger.ErrUnknownRun) {
				t.Errorf("Put(%s) err=%v, want ErrUnknownRun", id, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Put(%s) err=%v, want nil", id, err)
		}
		if _, ok, err := l.Device(ctx, id); !ok || err != nil {
			t.Errorf("Device(%s) ok=%v err=%v, want written", id, ok, err)
		}
	}
}

func TestPut_Cancel(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	release := holdWriteLock(t, path)

	// "taken" is in the writer's transaction when its context ends: Put
	// waits for the commit and reports success. "queued" is still waiting
	// when its context ends: Put returns at once and it is never written.
	takenCtx, cancelTaken := context.WithCancel(ctx)
	takenErr := make(chan error, 1)
	go func() {
		takenErr <- l.Put(takenCtx, ledger.Device{RegistrationID: "taken", State: ledger.StatePending})
	}()
	waitFor(t, "the first write to be taken", func() bool { return l.Stats().Taken == 1 })

	queuedCtx, cancelQueued := context.WithCancel(ctx)
	queuedErr := make(chan error, 1)
	go func() {
		queuedErr <- l.Put(queuedCtx, ledger.Device{RegistrationID: "queued", State: ledger.StatePending})
	}()
	waitFor(t, "the second write to queue", func() bool { return l.Stats().Queued == 1 })

	cancelQueued()
	if err := <-queuedErr; !errors.Is(err, context.Canceled) {
		t.Errorf("Put(queued) err=%v, want context.Canceled", err)
	}
	cancelTaken()
	select {
	case err := <-takenErr:
		t.Fatalf("Put(taken) returned %v before its transaction could commit", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-takenErr; err != nil {
		t.Errorf("Put(taken) err=%v, want nil: it was committed", err)
	}
	MustClose(t, l)

	l = MustOpen(t, path, ledger.Options{ReadOnly: true})
	for _, tt := range []struct {
		id   string
		want bool
	}{{"taken", true}, {"queued", false}} {
		if _, ok, err := l.Device(ctx, tt.id); err != nil || ok != tt.want {
			t.Errorf("Device(%s) found=%v err=%v, want found=%v", tt.id, ok, err, tt.want)
		}
	}

	t.Run("AlreadyCancelled", func(t *testing.T) {
		l := MustOpen(t, tempPath(t), ledger.Options{})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := l.Put(cctx, ledger.Device{RegistrationID: "x", State: ledger.StatePending}); !errors.Is(err, context.Canceled) {
			t.Errorf("Put with cancelled ctx err=%v, want context.Canceled", err)
		}
		if _, ok, _ := l.Device(ctx, "x"); ok {
			t.Errorf("Put with cancelled ctx was written")
		}
	})
}

func TestClose_FlushesQueuedWrites(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	release := holdWriteLock(t, path)

	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- l.Put(ctx, ledger.Device{RegistrationID: fmt.Sprintf("d-%02d", i), State: ledger.StatePending})
		}()
	}
	waitFor(t, "20 writes waiting", func() bool { st := l.Stats(); return st.Queued+st.Taken == n })
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	// A cancelled context keeps the probing Put from queueing before Close
	// has started; once it has, Put reports ErrClosed first.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	waitFor(t, "Close to refuse new writes", func() bool {
		return errors.Is(l.Put(cancelled, ledger.Device{RegistrationID: "late", State: ledger.StatePending}), ledger.ErrClosed)
	})
	release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Put queued before Close: %v", err)
		}
	}
	l = MustOpen(t, path, ledger.Options{ReadOnly: true})
	if c, err := l.Counts(ctx); err != nil || c.Total != n {
		t.Errorf("Counts().Total=%d err=%v, want %d", c.Total, err, n)
	}
}

func TestPut_DurableCopy(t *testing.T) {
	// Power-loss style: once Put returns, the files on disk (database plus
	// WAL, no shared memory) hold the write, whatever the process does next.
	ctx := context.Background()
	for _, sync := range []string{"FULL", "NORMAL"} {
		t.Run(sync, func(t *testing.T) {
			path := tempPath(t)
			l := MustOpen(t, path, ledger.Options{Synchronous: sync})
			run := MustStartRun(t, l)
			for i := range 50 {
				MustPut(t, l, ledger.Device{RegistrationID: fmt.Sprintf("d-%02d", i), State: ledger.StateAssigning, RunID: run, OperationID: "op"},
					ledger.Attempt{Kind: "register", HTTPStatus: 202})
			}
			want := ledger.Device{RegistrationID: "d-last", State: ledger.StateAssigned, AssignedHub: "hub", RunID: run, UpdatedAt: fixedNow}
			MustPut(t, l, want, ledger.Attempt{Kind: "poll", HTTPStatus: 200})

			copyPath := filepath.Join(t.TempDir(), "copy.db")
			copyFile(t, path, copyPath)
			copyFile(t, path+"-wal", copyPath+"-wal")

			c := MustOpen(t, copyPath, ledger.Options{})
			got, ok, err := c.Device(ctx, "d-last")
			if err != nil || !ok || got != want {
				t.Errorf("copy: Device(d-last)=%+v ok=%v err=%v, want %+v", got, ok, err, want)
			}
			if n, err := c.Counts(ctx); err != nil || n.Total != 51 || n.Attempts != 0 {
				t.Errorf("copy: Counts()=%+v err=%v, want 51 devices", n, err)
			}
			if err := c.IntegrityCheck(ctx); err != nil {
				t.Errorf("copy: IntegrityCheck: %v", err)
			}
		})
	}
}

// copyFile copies src to dst, as a backup tool or a power cut would see it.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHelperPutter is not a test: TestPut_SurvivesSIGKILL runs the test
// binary with it as a child that writes devices from 8 goroutines and prints
// the registration id of each acknowledged Put, until it is killed.
func TestHelperPutter(t *testing.T) {
	path := os.Getenv("LEDGER_TEST_PUTTER")
	if path == "" {
		t.Skip("helper process for TestPut_SurvivesSIGKILL")
	}
	ctx := context.Background()
	l, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := l.Lock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var g errgroup.Group
	for w := range 8 {
		g.Go(func() error {
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%06d", w, i)
				d := ledger.Device{RegistrationID: id, State: ledger.StateAssigned, AssignedHub: "hub", OperationID: "op-" + id}
				if err := l.Put(ctx, d, ledger.Attempt{Kind: "register", HTTPStatus: 202}); err != nil {
					return err
				}
				mu.Lock()
				fmt.Fprintln(out, id)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	fmt.Fprintln(os.Stderr, g.Wait())
	os.Exit(2)
}

func TestPut_SurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	ctx := context.Background()
	path := tempPath(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPutter$")
	cmd.Env = append(os.Environ(), "LEDGER_TEST_PUTTER="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	var acked []string
	sc := bufio.NewScanner(stdout)
	for len(acked) < 2000 && sc.Scan() {
		acked = append(acked, sc.Text())
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL on Unix
		t.Fatal(err)
	}
	for sc.Scan() { // acknowledged just before the kill
		acked = append(acked, sc.Text())
	}
	cmd.Wait()
	if len(acked) < 2000 {
		t.Fatalf("child acknowledged only %d writes", len(acked))
	}

	// The kernel dropped the run lock with the process, and every
	// acknowledged write survived.
	l := MustOpen(t, path, ledger.Options{})
	if err := l.Lock(); err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	if err := l.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range acked {
		d, ok, err := l.Device(ctx, id)
		if err != nil || !ok || d.State != ledger.StateAssigned || d.OperationID != "op-"+id {
			t.Fatalf("acknowledged device %s after SIGKILL: %+v ok=%v err=%v", id, d, ok, err)
		}
	}
	c, err := l.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged writes, %d in the ledger after SIGKILL", len(acked), c.Total)
	if c.Total < len(acked) {
		t.Errorf("Counts().Total=%d < %d acknowledged", c.Total, len(acked))
	}
}

package ledger_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
	_ "modernc.org/sqlite"
)

// dump keeps the ledgers tests create and prints where they are, for
// inspection with the sqlite3 shell.
var dump = flag.Bool("dump", false, "keep test ledgers and print their paths")

// fixedNow is the clock of most tests: one fixed instant, so times can be
// compared exactly.
var fixedNow = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// tempPath returns a ledger path in a fresh temporary directory (or a kept
// one with -dump).
func tempPath(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	if *dump {
		var err error
		if dir, err = os.MkdirTemp("", "ledger-test-"); err != nil {
			tb.Fatal(err)
		}
		tb.Logf("ledger kept in %s", dir)
	}
	return filepath.Join(dir, "ledger.db")
}

// MustOpen opens the ledger at path with a fixed clock and closes it when
// the test ends.
func MustOpen(tb testing.TB, path string, opts ledger.Options) *ledger.Ledger {
	tb.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return fixedNow }
	}
	l, err := ledger.Open(context.Background(), path, opts)
	if err != nil {
		tb.Fatalf("Open(%s): %v", path, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// MustClose closes l and fails the test on error.
func MustClose(tb testing.TB, l *ledger.Ledger) {
	tb.Helper()
	if err := l.Close(); err != nil {
		tb.Fatalf("Close(): %v", err)
	}
}

// rawDB opens path with the plain driver, to inspect or tamper with a
// ledger behind the package's back.
func rawDB(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func TestOpen_Migrations(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)

	l := MustOpen(t, path, ledger.Options{})
	if got, want := l.Path(), path; got != want {
		t.Errorf("Path()=%q, want %q", got, want)
	}
	if _, err := l.StartRun(ctx, "provision", nil); err != nil {
		t.Fatalf("StartRun: %v", err)
	}
	MustClose(t, l)

	db := rawDB(t, path)
	var appID int64
	if err := db.QueryRow("PRAGMA application_id").Scan(&appID); err != nil {
		t.Fatal(err)
	}
	if got, want := appID, int64(0x44505342); got != want {
		t.Errorf("application_id=%#x, want %#x", got, want)
	}
	var versions, maxVersion int
	if err := db.QueryRow("SELECT count(*), max(version) FROM migrations").Scan(&versions, &maxVersion); err != nil {
		t.Fatal(err)
	}
	if versions < 1 || versions != maxVersion {
		t.Errorf("migrations: %d rows, max version %d; want versions 1..N without gaps", versions, maxVersion)
	}
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if got, want := mode, "wal"; got != want {
		t.Errorf("journal_mode=%q, want %q", got, want)
	}
	db.Close()

	// Reopening applies nothing again and keeps the data.
	l = MustOpen(t, path, ledger.Options{})
	run, ok, err := l.LastRun(ctx)
	if err != nil || !ok {
		t.Fatalf("LastRun after reopen: ok=%v err=%v", ok, err)
	}
	if got, want := run.Command, "provision"; got != want {
		t.Errorf("LastRun().Command=%q, want %q", got, want)
	}
	MustClose(t, l)
	db = rawDB(t, path)
	var again int
	if err := db.QueryRow("SELECT count(*) FROM migrations").Scan(&again); err != nil {
		t.Fatal(err)
	}
	if again != versions {
		t.Errorf("migrations after reopen: %d rows, want %d", again, versions)
	}
}

func TestOpen_Options(t *testing.T) {
	for _, tt := range []struct {
		name    string
		sync    string
		wantErr bool
	}{
		{"Default", "", false},
		{"Full", "FULL", false},
		{"NormalLowerCase", "normal", false},
		{"Off", "OFF", true},
		{"Nonsense", "fast", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, err := ledger.Open(context.Background(), tempPath(t), ledger.Options{Synchronous: tt.sync})
			if err == nil {
				l.Close()
			}
			if got := err != nil; got != tt.wantErr {
				t.Errorf("Open(Synchronous=%q) err=%v, want error %v", tt.sync, err, tt.wantErr)
			}
		})
	}
}

func TestOpen_PathNeedsEscaping(t *testing.T) {
	// '?', '#', '%' and spaces in directory names must not be read as URI
	// syntax by SQLite.
	dir := filepath.Join(t.TempDir(), "a dir?x=1#frag%20")
	path := filepath.Join(dir, "sub", "led ger.db")
	l := MustOpen(t, path, ledger.Options{})
	MustPut(t, l, ledger.Device{RegistrationID: "d-1", State: ledger.StatePending})
	MustClose(t, l)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("ledger not created at %s: %v", path, err)
	}
	l = MustOpen(t, path, ledger.Options{ReadOnly: true})
	if _, ok, err := l.Device(context.Background(), "d-1"); err != nil || !ok {
		t.Errorf("Device(d-1) after reopen: ok=%v err=%v", ok, err)
	}
}

func TestOpen_SchemaTooNew(t *testing.T) {
	path := tempPath(t)
	MustClose(t, MustOpen(t, path, ledger.Options{}))

	db := rawDB(t, path)
	var known int
	if err := db.QueryRow("SELECT max(version) FROM migrations").Scan(&known); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO migrations (version, name, applied_at) VALUES (?, 'future.sql', 0)", known+7); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before := fileBytes(t, path)

	for _, ro := range []bool{false, true} {
		l, err := ledger.Open(context.Background(), path, ledger.Options{ReadOnly: ro})
		if err == nil {
			l.Close()
			t.Fatalf("Open(ReadOnly=%v) of a newer ledger succeeded", ro)
		}
		var se *ledger.SchemaError
		if !errors.As(err, &se) {
			t.Fatalf("Open(ReadOnly=%v) err=%v, want *SchemaError", ro, err)
		}
		if se.Have != known+7 || se.Known != known || se.Path != path {
			t.Errorf("SchemaError=%+v, want Have=%d Known=%d Path=%s", se, known+7, known, path)
		}
		want := "ledger " + path + " has schema version " + itoa(known+7) + "; this dps-batch knows up to " + itoa(known) + ": upgrade dps-batch"
		if got := err.Error(); got != want {
			t.Errorf("error=%q, want %q", got, want)
		}
	}
	if !bytes.Equal(fileBytes(t, path), before) {
		t.Errorf("refused Open modified the file")
	}
}

func TestOpen_NotALedger(t *testing.T) {
	random := make([]byte, 8192)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, tt := range []struct {
		name    string
		setup   func(t *testing.T, path string)
		ro      bool
		wantMsg string
		wantIs  error
	}{
		{
			name:    "RandomBytes",
			setup:   func(t *testing.T, path string) { writeFile(t, path, random) },
			wantMsg: "is not a dps-batch ledger (not an SQLite database)",
			wantIs:  ledger.ErrNotLedger,
		},
		{
			name: "TextFile",
			setup: func(t *testing.T, path string) {
				writeFile(t, path, []byte(strings.Repeat("registration_id,symmetric_key\nd-1,abc\n", 20)))
			},
			wantMsg: "is not a dps-batch ledger (not an SQLite database)",
			wantIs:  ledger.ErrNotLedger,
		},
		{
			name:    "ShortTextFile",
			setup:   func(t *testing.T, path string) { writeFile(t, path, []byte("hello\n")) },
			wantMsg: "is not a dps-batch ledger (not an SQLite database)",
			wantIs:  ledger.ErrNotLedger,
		},
		{
			name: "OtherSQLiteDatabase",
			setup: func(t *testing.T, path string) {
				db := rawDB(t, path)
				if _, err := db.Exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"); err != nil {
					t.Fatal(err)
				}
				db.Close()
			},
			wantMsg: "is not a dps-batch ledger (an SQLite database with other tables: users)",
			wantIs:  ledger.ErrNotLedger,
		},
		{
			name: "OtherApplicationID",
			setup: func(t *testing.T, path string) {
				db := rawDB(t, path)
				if _, err := db.Exec("PRAGMA application_id = 1234"); err != nil {
					t.Fatal(err)
				}
				db.Close()
			},
			wantMsg: "an SQLite database of another program, application_id 0x4d2",
			wantIs:  ledger.ErrNotLedger,
		},
		{
			name:    "EmptyFileReadOnly",
			setup:   func(t *testing.T, path string) { writeFile(t, path, nil) },
			ro:      true,
			wantMsg: "is not a dps-batch ledger (an empty database)",
			wantIs:  ledger.ErrNotLedger,
		},
		{
			name:    "MissingFileReadOnly",
			setup:   func(t *testing.T, path string) {},
			ro:      true,
			wantMsg: "file does not exist",
		},
		{
			name:    "Directory",
			setup:   func(t *testing.T, path string) { os.Mkdir(path, 0o755) },
			wantMsg: "is a directory",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := tempPath(t)
			tt.setup(t, path)
			before := fileBytes(t, path)
			l, err := ledger.Open(context.Background(), path, ledger.Options{ReadOnly: tt.ro})
			if err == nil {
				l.Close()
				t.Fatalf("Open succeeded, want error containing %q", tt.wantMsg)
			}
			t.Logf("Open: %v", err)
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open err=%q, want it to name %s and contain %q", err, path, tt.wantMsg)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Open err=%v, want errors.Is %v", err, tt.wantIs)
			}
			if !bytes.Equal(fileBytes(t, path), before) {
				t.Errorf("refused Open modified the file")
			}
			if _, err := os.Stat(path + "-wal"); err == nil {
				t.Errorf("refused Open left a -wal file")
			}
		})
	}
}

func TestOpen_EmptyFileIsNewLedger(t *testing.T) {
	// An empty file (touch, mktemp) is an empty SQLite database: a new ledger.
	path := tempPath(t)
	writeFile(t, path, nil)
	l := MustOpen(t, path, ledger.Options{})
	MustPut(t, l, ledger.Device{RegistrationID: "d-1", State: ledger.StatePending})
	if _, ok, err := l.Device(context.Background(), "d-1"); err != nil || !ok {
		t.Errorf("Device(d-1): ok=%v err=%v, want found", ok, err)
	}
}

func TestOpen_Corrupted(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	var devs []ledger.Device
	for i := range 3000 {
		devs = append(devs, ledger.Device{RegistrationID: "device-" + itoa(i), Fingerprint: strings.Repeat("f", 64)})
	}
	if _, err := l.AddPending(ctx, devs); err != nil {
		t.Fatal(err)
	}
	MustClose(t, l) // checkpoints the WAL into the file

	// Scribble over pages in the middle of the file, sparing page 1 (the
	// header and schema), as a bad disk block would.
	data := fileBytes(t, path)
	const page = 4096
	if len(data) < 20*page {
		t.Fatalf("ledger is %d bytes, too small to corrupt in the middle", len(data))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := len(data)/2 - 2*page; i < len(data)/2+2*page; i++ {
		data[i] = byte(rng.Uint32())
	}
	writeFile(t, path, data)

	l, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		// Acceptable when the damage hits a page Open reads, but then it
		// must say so.
		t.Logf("Open: %v", err)
		if !errors.Is(err, ledger.ErrCorrupt) || !strings.Contains(err.Error(), path) {
			t.Fatalf("Open err=%v, want ErrCorrupt naming %s", err, path)
		}
		return
	}
	defer l.Close()
	err = l.QuickCheck(ctx)
	t.Logf("QuickCheck: %v", err)
	if !errors.Is(err, ledger.ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Errorf("QuickCheck err=%v, want ErrCorrupt naming %s", err, path)
	}
	err = l.IntegrityCheck(ctx)
	t.Logf("IntegrityCheck: %v", err)
	if err == nil {
		t.Fatal("IntegrityCheck()=nil on a corrupted file, want error")
	}
	if !errors.Is(err, ledger.ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Errorf("IntegrityCheck err=%v, want ErrCorrupt naming %s", err, path)
	}
	// Reading the damaged pages reports ErrCorrupt too.
	err = l.Each(ctx, nil, func(ledger.Device) error { return nil })
	if err != nil && !errors.Is(err, ledger.ErrCorrupt) {
		t.Errorf("Each err=%v, want nil or ErrCorrupt", err)
	}
}

func TestOpen_ReadOnly(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	w := MustOpen(t, path, ledger.Options{})
	MustPut(t, w, ledger.Device{RegistrationID: "d-1", State: ledger.StateAssigned, AssignedHub: "hub-a"})

	// A read-only ledger can be opened while a writer has it open, as a
	// status command would.
	r := MustOpen(t, path, ledger.Options{ReadOnly: true})
	if d, ok, err := r.Device(ctx, "d-1"); err != nil || !ok || d.AssignedHub != "hub-a" {
		t.Errorf("Device(d-1)=%+v ok=%v err=%v, want hub-a", d, ok, err)
	}
	for _, tt := range []struct {
		name string
		fn   func() error
	}{
		{"Put", func() error { return r.Put(ctx, ledger.Device{RegistrationID: "d-2", State: ledger.StatePending}) }},
		{"AddPending", func() error { _, err := r.AddPending(ctx, []ledger.Device{{RegistrationID: "d-2"}}); return err }},
		{"StartRun", func() error { _, err := r.StartRun(ctx, "provision", nil); return err }},
		{"FinishRun", func() error { return r.FinishRun(ctx, 1, "done", nil) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.fn(); !errors.Is(err, ledger.ErrReadOnly) {
				t.Errorf("%s err=%v, want ErrReadOnly", tt.name, err)
			}
		})
	}
	// Bind on a read-only ledger compares, and never stores.
	if err := r.Bind(ctx, "0ne001", "https://x.example"); err != nil {
		t.Errorf("Bind on unbound read-only ledger: %v", err)
	}
	if _, _, ok, _ := r.Binding(ctx); ok {
		t.Errorf("read-only Bind stored a binding")
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	MustClose(t, l)
	if err := l.Close(); err != nil {
		t.Errorf("second Close()=%v, want nil", err)
	}
	for _, tt := range []struct {
		name string
		fn   func() error
	}{
		{"Put", func() error { return l.Put(ctx, ledger.Device{RegistrationID: "d", State: ledger.StatePending}) }},
		{"Device", func() error { _, _, err := l.Device(ctx, "d"); return err }},
		{"AddPending", func() error { _, err := l.AddPending(ctx, []ledger.Device{{RegistrationID: "d"}}); return err }},
		{"Counts", func() error { _, err := l.Counts(ctx); return err }},
		{"Each", func() error { return l.Each(ctx, nil, func(ledger.Device) error { return nil }) }},
		{"Lock", l.Lock},
		{"Bind", func() error { return l.Bind(ctx, "s", "e") }},
		{"StartRun", func() error { _, err := l.StartRun(ctx, "x", nil); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.fn(); !errors.Is(err, ledger.ErrClosed) {
				t.Errorf("%s after Close err=%v, want ErrClosed", tt.name, err)
			}
		})
	}
}

// writeFile writes data to path or fails the test.
func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// fileBytes returns the content of path, nil if it does not exist or is not
// a regular file.
func fileBytes(tb testing.TB, path string) []byte {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	b, err := io.ReadAll(f)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// itoa is strconv.Itoa, short for building messages.
func itoa(i int) string { return strconv.Itoa(i) }

// TestOpen_UpgradeFromSchema2: a ledger written before the returned payload
// was kept (schema 2) is upgraded by the first open, even a read-only one
// (status, report), keeping every device, each with no returned payload; a
// read-only open of a file it cannot write explains what to do.
func TestOpen_UpgradeFromSchema2(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	run := MustStartRun(t, l)
	MustPut(t, l, ledger.Device{RegistrationID: "d-1", State: ledger.StateAssigned, AssignedHub: "hub-a", DeviceID: "d-1", RunID: run,
		Record: ledger.Record{ETag: "e1", Updated: "u1", Created: "c1"}})
	MustClose(t, l)

	// Make the file what dps-batch wrote before migration 0003.
	db := rawDB(t, path)
	for _, q := range []string{"DROP TABLE enrollments", "DROP TABLE service_binding", "ALTER TABLE devices DROP COLUMN returned_payload",
		"ALTER TABLE devices DROP COLUMN issued_fingerprint", "ALTER TABLE devices DROP COLUMN issued_serial",
		"ALTER TABLE devices DROP COLUMN issued_not_after", "ALTER TABLE devices DROP COLUMN cert_lost",
		"ALTER TABLE devices DROP COLUMN csr_sent", "ALTER TABLE devices DROP COLUMN issued_chain",
		"DELETE FROM migrations WHERE version >= 3"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	if os.Getuid() != 0 { // root writes through file modes
		if err := os.Chmod(path, 0o444); err != nil {
			t.Fatal(err)
		}
		_, err := ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
		if err == nil || !strings.Contains(err.Error(), "schema version 2") || !strings.Contains(err.Error(), "run provision on it once") {
			t.Errorf("read-only Open of a read-only schema-2 file err=%v, want the upgrade hint", err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r0, err := ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of a schema-2 ledger: %v, want it upgraded and opened", err)
	}
	MustClose(t, r0)

	l = MustOpen(t, path, ledger.Options{})
	d, ok, err := l.Device(ctx, "d-1")
	if err != nil || !ok || d.AssignedHub != "hub-a" || d.Record.ETag != "e1" || d.ReturnedPayload != "" {
		t.Fatalf("Device(d-1) after upgrade=%+v ok=%v err=%v, want the old row with no payload", d, ok, err)
	}
	d.ReturnedPayload = `{"line":3}`
	MustPut(t, l, d)
	MustClose(t, l)

	r := MustOpen(t, path, ledger.Options{ReadOnly: true})
	if d, _, err := r.Device(ctx, "d-1"); err != nil || d.ReturnedPayload != `{"line":3}` {
		t.Errorf("Device(d-1) after upgrade and Put=%+v err=%v, want the payload", d, err)
	}
	db = rawDB(t, path)
	var v int
	if err := db.QueryRow("SELECT max(version) FROM migrations").Scan(&v); err != nil || v != 5 {
		t.Errorf("schema version after upgrade=%d err=%v, want 5", v, err)
	}
}

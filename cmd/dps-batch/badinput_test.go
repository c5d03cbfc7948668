package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/ledger"
)

// badCase is one bad input given to a working setup: a fleet whose ledger
// already records a finished run. setup breaks something in a copy of the
// fleet and returns the provision arguments; the command must refuse with
// the exit code and a message naming the problem and the way out, without
// sending anything to DPS or changing what the ledger holds.
type badCase struct {
	name     string
	setup    func(t *testing.T, c *badFleet) []string
	code     int
	msg      string // in stderr: what is wrong
	fix      string // in stderr: what to do about it
	ledgerIs string // "same" (rows unchanged, the default) or "bytes" (file untouched)
}

// badFleet is a copy of the base fleet for one case.
type badFleet struct {
	*chaosFleet
	dir string
}

// path returns a path in the copy.
func (c *badFleet) path(rel string) string { return filepath.Join(c.dir, filepath.FromSlash(rel)) }

// args returns the working provision command for the copy, with extra flags.
func (c *badFleet) args(extra ...string) []string {
	args := c.chaosFleet.provisionArgs(extra...)
	for i, a := range args {
		args[i] = strings.Replace(a, c.chaosFleet.dir, c.dir, 1)
	}
	return args
}

// rewrite replaces the manifest's row for id (or appends a row, for "").
func (c *badFleet) rewrite(t *testing.T, id, row string) {
	t.Helper()
	b, err := os.ReadFile(c.path("manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	found := id == ""
	for i, l := range lines {
		if id != "" && strings.HasPrefix(l, id+",") {
			lines[i], found = row, true
		}
	}
	if id == "" {
		lines = append(lines, row)
	}
	if !found {
		t.Fatalf("manifest has no row for %s", id)
	}
	if err := os.WriteFile(c.path("manifest.csv"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c *badFleet) write(t *testing.T, rel string, data []byte) {
	t.Helper()
	if err := os.WriteFile(c.path(rel), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (c *badFleet) read(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(c.path(rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dev3 is an X.509 device of the base fleet (group enrollment).
const dev3 = "dev-00003"

// x509Row is the manifest row of an X.509 device of the base fleet.
func x509Row(id, cert, key string) string {
	return fmt.Sprintf("%s,%s,%s,pki/ca/intermediate.pem,", id, cert, key)
}

func badCases() []badCase {
	return []badCase{
		// Manifest rows.
		{name: "header without registration_id", code: exitUsage, msg: "registration_id", fix: "add a registration_id column",
			setup: func(t *testing.T, c *badFleet) []string {
				b := c.read(t, "manifest.csv")
				c.write(t, "manifest.csv", bytes.Replace(b, []byte("registration_id,"), []byte("device,"), 1))
				return c.args()
			}},
		{name: "duplicate registration id", code: exitUsage, msg: "duplicate", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, "", x509Row(dev3, "pki/devices/dev-00003.pem", "pki/devices/dev-00003.key"))
				return c.args()
			}},
		{name: "registration id with spaces", code: exitUsage, msg: "Bad Id", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, "", "Bad Id,,,,"+base64Key(t))
				return c.args()
			}},
		{name: "certificate file missing", code: exitUsage, msg: "gone.pem", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/gone.pem", "pki/devices/dev-00003.key"))
				return c.args()
			}},
		{name: "payload not a JSON object", code: exitUsage, msg: "payload", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				// Add a payload column to every row.
				lines := strings.Split(strings.TrimRight(string(c.read(t, "manifest.csv")), "\n"), "\n")
				lines[0] += ",payload"
				for i := 1; i < len(lines); i++ {
					lines[i] += ","
				}
				c.write(t, "manifest.csv", []byte(strings.Join(lines, "\n")+"\n"))
				c.rewrite(t, "symkey-00001", "symkey-00001,,,,"+base64Key(t)+`,"[1,2]"`)
				return c.args()
			}},
		{name: "symmetric key not base64", code: exitUsage, msg: "symmetric_key", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, "symkey-00001", "symkey-00001,,,,not base64!")
				return c.args()
			}},
		{name: "row with both certificate and key", code: exitUsage, msg: "both", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/dev-00003.pem", "pki/devices/dev-00003.key")+base64Key(t))
				return c.args()
			}},
		{name: "group row without group key", code: exitUsage, msg: "no credentials", fix: "--group-key-file",
			setup: func(t *testing.T, c *badFleet) []string {
				args := c.args()
				for i := range args {
					if args[i] == "--group-key-file" {
						return append(args[:i:i], args[i+2:]...)
					}
				}
				t.Fatal("no --group-key-file")
				return nil
			}},

		// Certificate and key files.
		{name: "key file holds a certificate", code: exitUsage, msg: "key_path", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "pki/devices/dev-00003.key", c.read(t, "pki/devices/dev-00003.pem"))
				return c.args()
			}},
		{name: "encrypted key without passphrase", code: exitUsage, msg: "encrypted", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "pki/devices/dev-00003.key", []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n"))
				return c.args()
			}},
		{name: "key of another device", code: exitUsage, msg: "match", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/dev-00003.pem", "pki/devices/dev-00004.key"))
				return c.args()
			}},
		{name: "expired certificate", code: exitUsage, msg: "expired", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				ca, err := certs.LoadCA(c.path("pki/ca/intermediate.pem"), c.path("pki/ca/intermediate.key"))
				if err != nil {
					t.Fatal(err)
				}
				past := func() time.Time { return time.Now().Add(-72 * time.Hour) }
				leaf, err := ca.NewDevice(dev3, certs.Options{Validity: time.Hour, Now: past})
				if err != nil {
					t.Fatal(err)
				}
				c.write(t, "pki/devices/old.pem", certs.CertPEM(leaf.Cert))
				key, err := certs.KeyPEM(leaf.Key)
				if err != nil {
					t.Fatal(err)
				}
				c.write(t, "pki/devices/old.key", key)
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/old.pem", "pki/devices/old.key"))
				return c.args()
			}},
		{name: "certificate CN is another device", code: exitUsage, msg: "CN", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/dev-00004.pem", "pki/devices/dev-00004.key"))
				return c.args()
			}},
		{name: "truncated certificate file", code: exitUsage, msg: "cert_path", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				b := c.read(t, "pki/devices/dev-00003.pem")
				c.write(t, "pki/devices/dev-00003.pem", b[:len(b)/2])
				return c.args()
			}},
		{name: "empty key file", code: exitUsage, msg: "key_path", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "pki/devices/dev-00003.key", nil)
				return c.args()
			}},
		{name: "a directory instead of a file", code: exitUsage, msg: "directory", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				if err := os.Mkdir(c.path("pki/devices/a-dir.pem"), 0o755); err != nil {
					t.Fatal(err)
				}
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/a-dir.pem", "pki/devices/dev-00003.key"))
				return c.args()
			}},
		{name: "a 1 GB certificate file", code: exitUsage, msg: "cert_path", fix: "Fix the rows",
			setup: func(t *testing.T, c *badFleet) []string {
				f, err := os.Create(c.path("pki/devices/huge.pem"))
				if err != nil {
					t.Fatal(err)
				}
				// Sparse: costs no disk, but reads as 1 GB of zeros.
				if err := f.Truncate(1 << 30); err != nil {
					t.Fatal(err)
				}
				f.Close()
				c.rewrite(t, dev3, x509Row(dev3, "pki/devices/huge.pem", "pki/devices/dev-00003.key"))
				return c.args()
			}},

		// Flags.
		{name: "negative workers", code: exitUsage, msg: "--workers", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--workers", "-4") }},
		{name: "zero rate", code: exitUsage, msg: "--rate", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--rate", "0") }},
		{name: "ID scope of the wrong format", code: exitUsage, msg: "does not look like a DPS ID scope", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--id-scope", "my-dps") }},
		{name: "unknown flag", code: exitUsage, msg: "-turbo", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--turbo") }},
		{name: "plain http endpoint", code: exitUsage, msg: "https", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--endpoint", "http://127.0.0.1:1") }},
		{name: "CA file that is not PEM", code: exitUsage, msg: "--ca-file", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "sim-ca.pem", []byte("not a certificate"))
				return c.args()
			}},
		{name: "group key file not base64", code: exitUsage, msg: "group key", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "group.key", []byte("open sesame"))
				return c.args()
			}},
		{name: "negative device timeout", code: exitUsage, msg: "timeout", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--timeout-per-device", "-1s") }},
		{name: "column mapped to a name that is not ours", code: exitUsage, msg: "device is not a column of ours", fix: "Try:",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--column", "device=serial_number") }},
		{name: "column mapped twice", code: exitUsage, msg: "registration_id is mapped twice", fix: "map each column once",
			setup: func(t *testing.T, c *badFleet) []string {
				return c.args("--column", "registration_id=sn", "--column", "registration_id=serial")
			}},
		{name: "strict with an unknown column", code: exitUsage, msg: "hub: unknown column", fix: "leave out --strict",
			setup: func(t *testing.T, c *badFleet) []string {
				lines := strings.Split(strings.TrimRight(string(c.read(t, "manifest.csv")), "\n"), "\n")
				lines[0] += ",hub"
				for i := 1; i < len(lines); i++ {
					lines[i] += ",hub-1"
				}
				c.write(t, "manifest.csv", []byte(strings.Join(lines, "\n")+"\n"))
				return c.args("--strict")
			}},

		// keys derive.
		{name: "keys derive without a group key", code: exitUsage, msg: "no group key", fix: "--group-key-file",
			setup: func(t *testing.T, c *badFleet) []string {
				return []string{"keys", "derive", "--manifest", c.path("manifest.csv"), "--out", c.path("device-keys.csv")}
			}},
		{name: "keys derive over an existing file", code: exitUsage, msg: "already exists", fix: "--force",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "device-keys.csv", []byte("registration_id,symmetric_key\n"))
				return []string{"keys", "derive", "--manifest", c.path("manifest.csv"), "--group-key-file", c.path("group.key"), "--out", c.path("device-keys.csv")}
			}},
		{name: "keys derive to standard output", code: exitUsage, msg: "refusing to write keys to standard output", fix: "--out",
			setup: func(t *testing.T, c *badFleet) []string {
				return []string{"keys", "derive", "--manifest", c.path("manifest.csv"), "--group-key-file", c.path("group.key"), "--out", "-"}
			}},

		// Ledgers.
		{name: "ledger of another ID scope", code: exitUsage, msg: "belongs to ID scope", fix: "use another --ledger",
			setup: func(t *testing.T, c *badFleet) []string { return c.args("--id-scope", "0ne0000ABCD") }},
		{name: "corrupted ledger", code: exitInternal, msg: "corrupt", fix: "restore a copy", ledgerIs: "bytes",
			setup: func(t *testing.T, c *badFleet) []string {
				// A copy cut short: the device pages are missing.
				checkpoint(t, c.path("fleet.ledger"))
				b := c.read(t, "fleet.ledger")
				c.write(t, "fleet.ledger", b[:len(b)/2])
				return c.args()
			}},
		{name: "ledger with garbage pages", code: exitInternal, msg: "corrupt", fix: "restore a copy", ledgerIs: "bytes",
			setup: func(t *testing.T, c *badFleet) []string {
				checkpoint(t, c.path("fleet.ledger"))
				b := c.read(t, "fleet.ledger")
				for i := 4096; i < len(b); i++ {
					b[i] = 0xA5
				}
				c.write(t, "fleet.ledger", b)
				return c.args()
			}},
		{name: "ledger damaged where a run never reads", code: exitInternal, msg: "corrupt", fix: "restore a copy", ledgerIs: "bytes",
			setup: func(t *testing.T, c *badFleet) []string {
				// Every device is assigned, so a re-run reads device rows
				// only: damage in the attempt log shows up in the quick
				// check at open, not in anything the run reads.
				path := c.path("fleet.ledger")
				checkpoint(t, path)
				db, err := sql.Open("sqlite", path)
				if err != nil {
					t.Fatal(err)
				}
				var root, pageSize int
				err = db.QueryRow(`SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'attempts'`).Scan(&root)
				if err == nil {
					err = db.QueryRow(`PRAGMA page_size`).Scan(&pageSize)
				}
				db.Close()
				if err != nil {
					t.Fatal(err)
				}
				b := c.read(t, "fleet.ledger")
				for i := (root - 1) * pageSize; i < root*pageSize && i < len(b); i++ {
					b[i] = 0xA5
				}
				c.write(t, "fleet.ledger", b)
				return c.args()
			}},
		{name: "ledger in use by another run", code: exitBusy, msg: "in use by another dps-batch run", fix: "wait for it or stop it",
			setup: func(t *testing.T, c *badFleet) []string {
				other, err := ledger.Open(context.Background(), c.path("fleet.ledger"), ledger.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if err := other.Lock(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { other.Close() })
				return c.args()
			}},
		{name: "ledger from a newer dps-batch", code: exitInternal, msg: "schema version 999", fix: "upgrade dps-batch", ledgerIs: "bytes",
			setup: func(t *testing.T, c *badFleet) []string {
				db, err := sql.Open("sqlite", c.path("fleet.ledger"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := db.Exec(`INSERT INTO migrations (version, name, applied_at) VALUES (999, '0999_future.sql', 0)`); err != nil {
					t.Fatal(err)
				}
				db.Close()
				checkpoint(t, c.path("fleet.ledger"))
				return c.args()
			}},
		{name: "ledger path is a directory", code: exitInternal, msg: "is a directory", fix: "--ledger",
			setup: func(t *testing.T, c *badFleet) []string {
				if err := os.Mkdir(c.path("dir.ledger"), 0o755); err != nil {
					t.Fatal(err)
				}
				return c.args("--ledger", c.path("dir.ledger"))
			}},
		{name: "ledger that is a text file", code: exitInternal, msg: "not a dps-batch ledger", fix: "--ledger", ledgerIs: "bytes",
			setup: func(t *testing.T, c *badFleet) []string {
				c.write(t, "notes.txt", []byte("registration_id,status\ndev-00001,assigned\n"))
				return c.args("--ledger", c.path("notes.txt"))
			}},
		{name: "ledger of another program", code: exitInternal, msg: "not a dps-batch ledger", fix: "--ledger", ledgerIs: "bytes",
			setup: func(t *testing.T, c *badFleet) []string {
				db, err := sql.Open("sqlite", c.path("app.db"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := db.Exec(`CREATE TABLE users (name TEXT)`); err != nil {
					t.Fatal(err)
				}
				db.Close()
				return c.args("--ledger", c.path("app.db"))
			}},
	}
}

// TestBadInput gives provision each bad input of badCases against a fleet
// whose ledger records a finished run: each is refused with the expected
// exit code and a message saying what is wrong and what to do, DPS sees no
// request, and the ledger keeps what it held.
func TestBadInput(t *testing.T) {
	base := newChaosFleet(t, fleetSpec{x509Group: 4, x509Individual: 2, symIndividual: 2, symGroup: 2}, nil)
	if code, _, errs := runCmd(t, base.provisionArgs("--quiet")...); code != exitOK {
		t.Fatalf("first run: exit %d\n%s", code, errs)
	}
	cases := badCases()
	if len(cases) < 25 {
		t.Fatalf("%d bad-input cases, want at least 25", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &badFleet{chaosFleet: base, dir: copyTree(t, base.dir)}
			args := tc.setup(t, c)
			ledgerPath := c.path("fleet.ledger")
			for i := range args {
				if args[i] == "--ledger" {
					ledgerPath = args[i+1]
				}
			}
			beforeBytes := fileSum(t, ledgerPath)
			var beforeRows map[string]ledger.Device
			if tc.ledgerIs == "" && beforeBytes != "" && ledgerPath == c.path("fleet.ledger") {
				beforeRows = readRows(t, ledgerPath)
			}
			sent := base.trace.requests()

			code, stdout, stderr := runCmd(t, args...)

			if code != tc.code {
				t.Errorf("exit %d, want %d\nstderr:\n%s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.msg) {
				t.Errorf("stderr does not say what is wrong (%q):\n%s", tc.msg, stderr)
			}
			if !strings.Contains(stderr, tc.fix) {
				t.Errorf("stderr does not say what to do (%q):\n%s", tc.fix, stderr)
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
				t.Errorf("stderr shows a crash:\n%s", stderr)
			}
			if n := base.trace.requests() - sent; n != 0 {
				t.Errorf("DPS received %d requests", n)
			}
			if strings.Contains(stdout, "register (billable)") {
				t.Errorf("a run summary was printed for a refused command:\n%s", stdout)
			}
			switch {
			case tc.ledgerIs == "bytes":
				if after := fileSum(t, ledgerPath); after != beforeBytes {
					t.Errorf("the refused ledger file %s was modified", ledgerPath)
				}
			case beforeRows != nil:
				if after := readRows(t, ledgerPath); !reflect.DeepEqual(after, beforeRows) {
					t.Errorf("the ledger's device rows changed")
				}
			}
		})
	}
	t.Logf("bad inputs tried: %d", len(cases))
}

// copyTree copies a directory (files and folders, not symlinks) into a new
// temporary directory and returns it.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if strings.HasSuffix(p, ".lock") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// fileSum is a digest of a file and its WAL, "" when it does not exist.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	h := sha256.New()
	found := false
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if err != nil {
			continue
		}
		found = true
		h.Write(b)
	}
	if !found {
		return ""
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// readRows returns every device row of a ledger, without UpdatedAt.
func readRows(t *testing.T, path string) map[string]ledger.Device {
	t.Helper()
	led, err := ledger.Open(context.Background(), path, ledger.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	rows := map[string]ledger.Device{}
	if err := led.Each(context.Background(), nil, func(d ledger.Device) error {
		rows[d.RegistrationID] = d
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return rows
}

// checkpoint folds the WAL into the database file, so that editing the
// file edits the ledger.
func checkpoint(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
}

func base64Key(t *testing.T) string {
	t.Helper()
	return base64.StdEncoding.EncodeToString(randomBytes(t, 32))
}

package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/dpssim"
)

// sasFleet is a symmetric-key group fleet on disk with its simulator
// running in-process over TLS.
type sasFleet struct {
	dir, manifest, ledger, caFile, keyFile string
	sim                                    *dpssim.Server
	url                                    string
}

func newSASFleet(t *testing.T, n int) *sasFleet {
	t.Helper()
	dir := t.TempDir()
	f := &sasFleet{dir: dir, manifest: filepath.Join(dir, "m.csv"), ledger: filepath.Join(dir, "m.ledger"),
		caFile: filepath.Join(dir, "ca.pem"), keyFile: filepath.Join(dir, "group.key")}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var rows strings.Builder
	rows.WriteString("registration_id\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&rows, "sensor-%04d\n", i)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(f.manifest, []byte(rows.String()), 0o600))
	must(os.WriteFile(f.keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
	zero := 0
	sim, err := dpssim.New(dpssim.Config{
		RetryAfterSeconds: &zero,
		Groups: []dpssim.EnrollmentGroup{{EnrollmentGroupID: "sensors",
			Attestation: dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: base64.StdEncoding.EncodeToString(key)}}}},
		Quotas: dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1},
	})
	must(err)
	running, err := dpssim.StartTLS(sim, "127.0.0.1:0")
	must(err)
	t.Cleanup(func() { running.Close() })
	must(os.WriteFile(f.caFile, running.CAPEM, 0o600))
	f.sim, f.url = sim, running.URL
	return f
}

func (f *sasFleet) args(extra ...string) []string {
	a := []string{"provision", "--manifest", f.manifest, "--ledger", f.ledger, "--id-scope", dpssim.DefaultIDScope,
		"--endpoint", f.url, "--ca-file", f.caFile, "--group-key-file", f.keyFile, "--quiet", "--rate", "-1", "--request-timeout", "5s"}
	return append(a, extra...)
}

// with replaces the value of flag name in args.
func with(args []string, name, value string) []string {
	out := append([]string(nil), args...)
	for i := range out {
		if out[i] == name && i+1 < len(out) {
			out[i+1] = value
		}
	}
	return out
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestSystemicErrorsStopFast: a wrong endpoint, ID scope or group key, or a
// missing --ca-file, stops the run with one clear error and its own exit
// code, sends nothing billable, and leaves a ledger that status describes
// truthfully and the corrected command finishes.
func TestSystemicErrorsStopFast(t *testing.T) {
	badKey := filepath.Join(t.TempDir(), "wrong.key")
	if err := os.WriteFile(badKey, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		mutate   func(f *sasFleet, args []string) []string
		code     int
		stderr   string // in the error
		fix      []string
		rebind   bool
		billable bool // the failing run may reach DPS's registration (never here)
	}{
		{name: "connection refused", code: exitSystemic, stderr: "cannot connect", rebind: true,
			mutate: func(f *sasFleet, a []string) []string { return with(a, "--endpoint", "https://"+closedPort(t)) }},
		{name: "wrong group key", code: exitSystemic, stderr: "401002",
			mutate: func(f *sasFleet, a []string) []string { return with(a, "--group-key-file", badKey) }},
		{name: "wrong ID scope", code: exitSystemic, stderr: "HTTP 404", rebind: true,
			mutate: func(f *sasFleet, a []string) []string { return with(a, "--id-scope", "0ne99999999") }},
		{name: "missing --ca-file", code: exitInternal, stderr: "--ca-file",
			mutate: func(f *sasFleet, a []string) []string {
				out := []string{}
				for i := 0; i < len(a); i++ {
					if a[i] == "--ca-file" {
						i++
						continue
					}
					out = append(out, a[i])
				}
				return out
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newSASFleet(t, 200)
			bad := tt.mutate(f, f.args())
			start := time.Now()
			code, out, errs := runCmd(t, bad...)
			took := time.Since(start)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errs)
			}
			if !strings.Contains(errs, tt.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderr, errs)
			}
			if n := strings.Count(errs, "\n"); n > 8 {
				t.Errorf("stderr has %d lines, want one error and its hint:\n%s", n, errs)
			}
			if strings.Contains(out, "devices/s") || strings.Contains(out, "Resume with the same command") {
				t.Errorf("summary of a stopped run shows a speed or offers the same failing command:\n%s", out)
			}
			st := f.sim.Stats()
			if st.Registers != 0 {
				t.Errorf("the simulator registered %d devices, want none", st.Registers)
			}
			// The first wave of 100 workers is in flight before ten answers
			// are back; the run must not go much beyond it.
			if reqs := st.RegisterRequests; reqs > 130 {
				t.Errorf("%d register requests reached the simulator, want the run to stop after the first wave", reqs)
			}
			t.Logf("%s: exit %d after %s; simulator saw %d register requests", tt.name, code, took.Round(time.Millisecond), st.RegisterRequests)

			code, sout, serrs := runCmd(t, "status", "--ledger", f.ledger)
			if code != exitOK || strings.Contains(sout, ": completed") || !strings.Contains(sout, "Last run #1") {
				t.Errorf("status after the stop (exit %d) does not say how the run ended:\n%s%s", code, sout, serrs)
			}
			if tt.code == exitSystemic && !strings.Contains(sout, "stopped early") {
				t.Errorf("status does not say the run stopped early:\n%s", sout)
			}

			// The corrected command finishes the fleet (with --rebind when
			// the ledger was bound to the wrong endpoint or scope).
			good := f.args()
			if tt.rebind {
				code, _, errs := runCmd(t, good...)
				if code != exitUsage || !strings.Contains(errs, "--rebind") {
					t.Errorf("corrected command without --rebind: exit %d, want 2 with a --rebind hint:\n%s", code, errs)
				}
				good = append(good, "--rebind")
			}
			code, out, errs = runCmd(t, good...)
			if code != exitOK || !strings.Contains(out, "assigned 200") {
				t.Errorf("corrected command: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
			}
			if st := f.sim.Stats(); st.Registers != 200 {
				t.Errorf("simulator registrations after the fix: %d, want 200", st.Registers)
			}
		})
	}
}

// TestFailFastSparesBadLuck: a few devices with a bad key among good ones
// are failed one by one; the run is not stopped as systemic.
func TestFailFastSparesBadLuck(t *testing.T) {
	f := newSASFleet(t, 60)
	// Rows 1-5 get an individual key the simulator does not know.
	b, err := os.ReadFile(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var rows strings.Builder
	rows.WriteString("registration_id,symmetric_key\n")
	for i, id := range lines[1:] {
		key := ""
		if i < 5 {
			key = base64.StdEncoding.EncodeToString(make([]byte, 32))
		}
		fmt.Fprintf(&rows, "%s,%s\n", id, key)
	}
	if err := os.WriteFile(f.manifest, []byte(rows.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, f.args("--workers", "4")...)
	if code != exitDeviceFails || !strings.Contains(out, "assigned 55") || !strings.Contains(out, "failed 5") {
		t.Errorf("exit %d, want 3 with 55 assigned and 5 failed\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}

// TestPollRateFollowsRate: --rate alone raises the poll limiter too.
func TestPollRateFollowsRate(t *testing.T) {
	var p provisionFlags
	p.manifest, p.idScope, p.workers, p.maxAttempts = "m.csv", "0ne00000000", 1, 1
	p.deviceTimeout, p.requestTimeout = time.Second, time.Second
	for _, tt := range []struct{ rate, pollRate, want float64 }{
		{900, 0, 1800}, {6000, 0, 12000}, {-1, 0, -1}, {6000, 500, 500},
	} {
		p.rate, p.pollRate = tt.rate, tt.pollRate
		if err := p.check(); err != nil {
			t.Fatal(err)
		}
		if p.pollRate != tt.want {
			t.Errorf("--rate %v --poll-rate %v: poll rate %v, want %v", tt.rate, tt.pollRate, p.pollRate, tt.want)
		}
	}
}

// TestColumnMappingProvisions: a manifest whose id column has another name
// provisions end to end with --column, extra columns ignored.
func TestColumnMappingProvisions(t *testing.T) {
	f := newSASFleet(t, 12)
	b, err := os.ReadFile(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	var rows strings.Builder
	rows.WriteString("serial_number,line\n")
	for _, id := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		fmt.Fprintf(&rows, "%s,3\n", id)
	}
	if err := os.WriteFile(f.manifest, []byte(rows.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, f.args("--column", "registration_id=serial_number")...)
	if code != exitOK || !strings.Contains(out, "assigned 12") || !strings.Contains(errs, "line") {
		t.Errorf("exit %d, want 0 with 12 assigned and a warning about the line column\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	if st := f.sim.Stats(); st.Registers != 12 {
		t.Errorf("simulator registrations %d, want 12", st.Registers)
	}
}

// TestSummaryNamesTheLimiter: a run held back by --rate says so, and counts
// billable registrations as the simulator does.
func TestSummaryNamesTheLimiter(t *testing.T) {
	f := newSASFleet(t, 6)
	code, out, errs := runCmd(t, with(f.args(), "--rate", "240")...)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	if !strings.Contains(out, "limited by --rate 240/min") {
		t.Errorf("summary does not name --rate as the limiter:\n%s", out)
	}
	if want := fmt.Sprintf("registrations accepted by DPS (billable): %d", f.sim.Stats().Registers); !strings.Contains(out, want) {
		t.Errorf("summary lacks %q:\n%s", want, out)
	}
}

// TestWorkersFollowRate: --rate alone also raises the workers, so that the
// rate can be reached at DPS's usual 3 s per device.
func TestWorkersFollowRate(t *testing.T) {
	for _, tt := range []struct {
		rate    float64
		workers int
		want    int
	}{{900, 0, 100}, {6000, 0, 360}, {-1, 0, 100}, {6000, 50, 50}} {
		var p provisionFlags
		p.manifest, p.idScope, p.maxAttempts = "m.csv", "0ne00000000", 1
		p.deviceTimeout, p.requestTimeout = time.Second, time.Second
		p.rate, p.workers = tt.rate, tt.workers
		if err := p.check(); err != nil {
			t.Fatal(err)
		}
		if p.workers != tt.want {
			t.Errorf("--rate %v --workers %d: %d workers, want %d", tt.rate, tt.workers, p.workers, tt.want)
		}
	}
}

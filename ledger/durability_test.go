//go:build unix

package ledger_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// writerEnv makes the test binary a ledger writer that the durability tests
// kill at random instants: its value is the ledger path.
const writerEnv = "DPSBATCH_TEST_LEDGER_WRITER"

// Shape of the writer's work: writerDevices devices, each written by one of
// writerWorkers goroutines again and again.
const (
	writerWorkers = 8
	writerDevices = 64
)

func init() {
	if path := os.Getenv(writerEnv); path != "" {
		os.Exit(ledgerWriter(path))
	}
}

// ledgerWriter writes to the ledger at path until it is killed, the way a
// run does: runs started and finished, devices added in bulk, and
// concurrent Puts (group-committed) of a device row together with one
// attempt row each. Every write's row says how many writes of that device
// came before (Polls), so a reader can check each transaction is whole:
// a device row with Polls = n has exactly n attempt rows. After each Put
// returns nil it prints "ack DEVICE N": that write is durable.
func ledgerWriter(path string) int {
	ctx := context.Background()
	led, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := led.Lock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	run, err := led.StartRun(ctx, "provision", map[string]string{"writer": "durability"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var pending []ledger.Device
	for i := 0; i < writerDevices; i++ {
		pending = append(pending, ledger.Device{RegistrationID: deviceName(i)})
	}
	if _, err := led.AddPending(ctx, pending); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var outMu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for w := 0; w < writerWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				i := w + (k%(writerDevices/writerWorkers))*writerWorkers
				id := deviceName(i)
				d, _, err := led.Device(ctx, id)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				d.RunID = run
				d.Polls++
				d.State = []ledger.State{ledger.StateRegistering, ledger.StateAssigning, ledger.StateAssigned}[d.Polls%3]
				d.OperationID = fmt.Sprintf("4.op-%d", d.Polls)
				if err := led.Put(ctx, d, ledger.Attempt{Kind: "poll", HTTPStatus: 202}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				outMu.Lock()
				fmt.Fprintf(out, "ack %s %d\n", id, d.Polls)
				out.Flush()
				outMu.Unlock()
				if k%50 == 49 {
					// Close a run and open the next now and then, as re-runs do.
					if err := led.FinishRun(ctx, run, "completed", nil); err != nil {
						fmt.Fprintln(os.Stderr, err)
						os.Exit(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	return 0
}

func deviceName(i int) string { return fmt.Sprintf("dev-%04d", i) }

// writerProc is one running writer.
type writerProc struct {
	cmd  *exec.Cmd
	acks chan [2]string // device, count
	done chan struct{}  // closed when stdout is drained
}

func startWriter(t *testing.T, path string) *writerProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), writerEnv+"="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &writerProc{cmd: cmd, acks: make(chan [2]string, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 && f[0] == "ack" {
				p.acks <- [2]string{f[1], f[2]}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return p
}

// killAndCollect kills the writer and returns the highest acknowledged
// write of each device.
func (p *writerProc) killAndCollect(t *testing.T) map[string]int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	<-p.done
	close(p.acks)
	acked := map[string]int{}
	for a := range p.acks {
		n, err := strconv.Atoi(a[1])
		if err != nil {
			t.Fatalf("bad ack %v", a)
		}
		if n > acked[a[0]] {
			acked[a[0]] = n
		}
	}
	return acked
}

// waitStopped waits until the process is stopped: kill(SIGSTOP) returns
// before a process running on another CPU has stopped, and a write it
// acknowledges in between would be missing from a copy taken at once.
// Where /proc is missing, a short pause stands in.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	stat := fmt.Sprintf("/proc/%d/stat", pid)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(stat)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			return
		}
		// The state follows the parenthesised command name.
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && (b[i+2] == 'T' || b[i+2] == 't') {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("process %d did not stop within 5 s of SIGSTOP", pid)
}

// copyLedger copies the ledger's database and write-ahead log (not the
// shared-memory index, which does not survive a reboot) into dir.
func copyLedger(t *testing.T, path, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, filepath.Base(path))
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// checkLedger opens a ledger left by a crash read-write (as the next run
// would), and checks: the file passes the integrity check; every
// acknowledged write is there; every device row was written whole with its
// attempt rows; a new run can start, write and finish on it.
func checkLedger(t *testing.T, what, path string, acked map[string]int) {
	t.Helper()
	ctx := context.Background()
	led, err := ledger.Open(ctx, path, ledger.Options{})
	if err != nil {
		t.Fatalf("%s: open after crash: %v", what, err)
	}
	defer led.Close()
	if err := led.IntegrityCheck(ctx); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	lost, torn := 0, 0
	if err := led.Each(ctx, nil, func(d ledger.Device) error {
		if d.Polls < acked[d.RegistrationID] {
			lost++
			if lost <= 5 {
				t.Errorf("%s: %s has write %d, but write %d was acknowledged", what, d.RegistrationID, d.Polls, acked[d.RegistrationID])
			}
		}
		atts, err := led.Attempts(ctx, d.RegistrationID)
		if err != nil {
			return err
		}
		if len(atts) != d.Polls || (d.Polls > 0 && d.OperationID != fmt.Sprintf("4.op-%d", d.Polls)) {
			torn++
			if torn <= 5 {
				t.Errorf("%s: %s: row says %d writes (operation %q), log has %d: a transaction was torn", what, d.RegistrationID, d.Polls, d.OperationID, len(atts))
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: read devices: %v", what, err)
	}
	c, err := led.Counts(ctx)
	if err != nil {
		t.Fatalf("%s: counts: %v", what, err)
	}
	_, resumed, err := led.Device(ctx, "after-crash")
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Total - map[bool]int{true: 1}[resumed]; n != writerDevices && n != 0 {
		t.Errorf("%s: %d devices, want 0 or %d (AddPending is one transaction)", what, n, writerDevices)
	}
	// Resumable: a new run writes on top.
	run, err := led.StartRun(ctx, "provision", nil)
	if err != nil {
		t.Fatalf("%s: start a run after the crash: %v", what, err)
	}
	d := ledger.Device{RegistrationID: "after-crash", State: ledger.StatePending, RunID: run}
	if err := led.Put(ctx, d); err != nil {
		t.Fatalf("%s: write after the crash: %v", what, err)
	}
	if err := led.FinishRun(ctx, run, "completed", nil); err != nil {
		t.Fatalf("%s: finish a run after the crash: %v", what, err)
	}
}

// TestDurabilityUnderKill kills a process writing the ledger with SIGKILL
// at random instants, again and again on the same file, so that crashes
// land between (and inside) every kind of statement: every acknowledged
// write survives, no transaction is half there, and the file stays
// usable. Some rounds also take a power-loss copy: the writer is frozen
// (SIGSTOP), its database and WAL are copied without the shared-memory
// index, and the copy must open in a consistent, resumable state holding
// every write acknowledged before the freeze.
// Long form: DPSBATCH_CHAOS_LONG=1.
func TestDurabilityUnderKill(t *testing.T) {
	rounds := 8
	if os.Getenv("DPSBATCH_CHAOS_LONG") == "1" {
		rounds = 60
	}
	seed := time.Now().UnixNano()
	rng := mrand.New(mrand.NewPCG(uint64(seed), 2))
	t.Logf("seed %d", seed)
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.ledger")
	acked := map[string]int{}
	total, copies := 0, 0
	for round := 1; round <= rounds; round++ {
		p := startWriter(t, path)
		time.Sleep(time.Duration(100+rng.IntN(400)) * time.Millisecond)
		var snapshot string
		if round%2 == 0 {
			// Power loss: freeze, copy, then kill without ever resuming.
			if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			waitStopped(t, p.cmd.Process.Pid)
			snapshot = copyLedger(t, path, t.TempDir())
			copies++
		}
		got := p.killAndCollect(t)
		n := 0
		for id, v := range got {
			n += v - acked[id]
			if v > acked[id] {
				acked[id] = v
			}
		}
		total += n
		checkLedger(t, fmt.Sprintf("round %d", round), path, acked)
		if snapshot != "" {
			checkLedger(t, fmt.Sprintf("round %d power-loss copy", round), snapshot, acked)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d kills, %d power-loss copies, %d acknowledged writes, all present and whole", rounds, copies, total)
	if total == 0 {
		t.Errorf("the writer acknowledged no write in %d rounds", rounds)
	}
}

package ledger_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/ledger"
)

func TestLock_SameProcess(t *testing.T) {
	path := tempPath(t)
	a := MustOpen(t, path, ledger.Options{})
	if err := a.Lock(); err != nil {
		t.Fatalf("first Lock: %v", err)
	}
	if err := a.Lock(); err != nil {
		t.Errorf("Lock again on the holder: %v, want nil", err)
	}

	b := MustOpen(t, path, ledger.Options{})
	err := b.Lock()
	if !errors.Is(err, ledger.ErrLocked) {
		t.Fatalf("second Lock err=%v, want ErrLocked", err)
	}
	want := fmt.Sprintf("ledger %s is in use by another dps-batch run (pid %d, started %s); wait for it or stop it",
		path, os.Getpid(), fixedNow.Format("2006-01-02T15:04:05Z07:00"))
	if got := err.Error(); got != want {
		t.Errorf("second Lock error=\n%q\nwant\n%q", got, want)
	}

	// Close releases the lock.
	MustClose(t, a)
	if err := b.Lock(); err != nil {
		t.Errorf("Lock after the holder closed: %v", err)
	}
}

// TestHelperLockHolder is not a test: TestLock_OtherProcess runs the test
// binary with it as a child that holds the run lock until its stdin closes
// or it is killed.
func TestHelperLockHolder(t *testing.T) {
	path := os.Getenv("LEDGER_TEST_LOCK_HOLDER")
	if path == "" {
		t.Skip("helper process for TestLock_OtherProcess")
	}
	l := MustOpen(t, path, ledger.Options{})
	if err := l.Lock(); err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func TestLock_OtherProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := tempPath(t)
	MustClose(t, MustOpen(t, path, ledger.Options{}))

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLockHolder$")
	cmd.Env = append(os.Environ(), "LEDGER_TEST_LOCK_HOLDER="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if got, want := strings.TrimSpace(line), "locked"; got != want {
		t.Fatalf("child said %q (%v), want %q", got, err, want)
	}

	l := MustOpen(t, path, ledger.Options{})
	err = l.Lock()
	if !errors.Is(err, ledger.ErrLocked) {
		t.Fatalf("Lock while a child holds it: err=%v, want ErrLocked", err)
	}
	if want := "(pid " + strconv.Itoa(cmd.Process.Pid) + ", started "; !strings.Contains(err.Error(), want) {
		t.Errorf("Lock error=%q, want it to contain %q", err, want)
	}

	// SIGKILL gives the child no chance to clean up; the kernel releases
	// the lock anyway.
	if err := cmd.Process.Kill(); err != nil { // SIGKILL on Unix
		t.Fatal(err)
	}
	cmd.Wait()
	if err := l.Lock(); err != nil {
		t.Errorf("Lock after the holder was killed: %v", err)
	}
}

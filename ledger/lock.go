package ledger

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// errWouldBlock is what tryLock returns when another holder has the lock.
var errWouldBlock = errors.New("lock is held")

// Lock takes the run lock: an exclusive advisory lock on the file PATH.lock,
// so that only one dps-batch run at a time uses the ledger. The operating
// system drops the lock when the process dies, even with SIGKILL, so a crash
// never leaves a stale lock behind. The lock file records the holder's pid
// and start time for the message another run gets:
//
//	ledger fleet.db is in use by another dps-batch run (pid 123, started 2026-03-01T10:00:00Z); wait for it or stop it
//
// That error wraps ErrLocked. Lock on a Ledger that holds the lock is a
// no-op; Close releases it. Other Ledgers in the same process on the same
// file are refused as well.
func (l *Ledger) Lock() error {
	if err := l.notClosed("lock"); err != nil {
		return err
	}
	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	if l.lockFile != nil {
		return nil
	}
	name := l.abs + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("lock ledger %s: %w", l.path, err)
	}
	if err := tryLock(f); err != nil {
		holder := readHolder(f)
		f.Close()
		if errors.Is(err, errWouldBlock) {
			return &lockedError{path: l.path, holder: holder}
		}
		return fmt.Errorf("lock ledger %s: %s: %w", l.path, name, err)
	}
	info := fmt.Sprintf("pid %d\nstarted %s\n", os.Getpid(), l.now().Format(time.RFC3339))
	if err := writeHolder(f, info); err != nil {
		unlockFile(f)
		f.Close()
		return fmt.Errorf("lock ledger %s: write %s: %w", l.path, name, err)
	}
	l.lockFile = f
	return nil
}

// unlock releases the run lock if this Ledger holds it.
func (l *Ledger) unlock() error {
	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	if l.lockFile == nil {
		return nil
	}
	f := l.lockFile
	l.lockFile = nil
	// The file stays: removing it would let a waiting process lock an
	// unlinked inode while a third one creates a new file.
	err := unlockFile(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("unlock ledger %s: %w", l.path, err)
	}
	return nil
}

// writeHolder replaces the lock file's content with info.
func writeHolder(f *os.File, info string) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(info), 0)
	return err
}

// readHolder describes the lock holder from the lock file, e.g.
// "pid 123, started 2026-03-01T10:00:00Z".
func readHolder(f *os.File) string {
	var pid, started string
	sc := bufio.NewScanner(io.NewSectionReader(f, 0, 4096))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		switch k {
		case "pid":
			pid = v
		case "started":
			started = v
		}
	}
	if pid == "" {
		return "holder unknown"
	}
	if started == "" {
		return "pid " + pid
	}
	return "pid " + pid + ", started " + started
}

// lockedError is the run lock held by someone else.
type lockedError struct {
	path   string
	holder string
}

func (e *lockedError) Error() string {
	return fmt.Sprintf("ledger %s is in use by another dps-batch run (%s); wait for it or stop it", e.path, e.holder)
}

func (e *lockedError) Unwrap() error { return ErrLocked }

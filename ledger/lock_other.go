//go:build !(linux || android || darwin || ios || freebsd || netbsd || openbsd || dragonfly || windows)

package ledger

import "os"

// tryLock does not lock on this platform (no flock): runs are not kept from
// overlapping, though SQLite still keeps the file itself consistent.
func tryLock(*os.File) error { return nil }

// unlockFile does nothing; see tryLock.
func unlockFile(*os.File) error { return nil }

//go:build race

package ledger_test

// raceEnabled scales down the heaviest tests under the race detector, which
// slows the SQLite engine down about thirty times.
const raceEnabled = true

package ledger_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
	"golang.org/x/sync/errgroup"
)

// maxBytesPerDevice is the disk budget of one device, attempt log included.
const maxBytesPerDevice = 600

// guid returns a random canonical GUID, as DPS request and operation ids
// contain.
func guid(rng *rand.Rand) string {
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64()&0xffffffffffff)
}

// provision writes the ledger records of one device provisioned the usual
// way: registering, register PUT answered 202, one poll answered 202, one
// poll answered 200 with the assignment. That is four Puts and three
// attempts, with realistic field sizes (X.509 fingerprint, GUID request ids,
// DPS-shaped operation id).
func provision(ctx context.Context, l *ledger.Ledger, rng *rand.Rand, run int64, id string, t0 time.Time) error {
	d := ledger.Device{
		RegistrationID: id, State: ledger.StateRegistering, RunID: run, Attempts: 1, FirstAttemptAt: t0,
		Fingerprint: fmt.Sprintf("sha256:%016x%016x%016x%016x", rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64()),
	}
	if err := l.Put(ctx, d); err != nil {
		return err
	}
	d.State, d.HTTPStatus, d.RequestID = ledger.StateAssigning, 202, guid(rng)
	d.OperationID = fmt.Sprintf("5.%016x.%s", rng.Uint64(), guid(rng))
	if err := l.Put(ctx, d, ledger.Attempt{Kind: "register", HTTPStatus: 202, RequestID: d.RequestID, Latency: 180 * time.Millisecond, At: t0}); err != nil {
		return err
	}
	d.Polls, d.RequestID = 1, guid(rng)
	if err := l.Put(ctx, d, ledger.Attempt{Kind: "poll", HTTPStatus: 202, RequestID: d.RequestID, Latency: 90 * time.Millisecond, At: t0.Add(3 * time.Second)}); err != nil {
		return err
	}
	d.Polls, d.RequestID, d.HTTPStatus = 2, guid(rng), 200
	d.State, d.AssignedHub, d.DeviceID, d.Substatus = ledger.StateAssigned, "fleet-hub-01.azure-devices.net", id, "initialAssignment"
	d.FinishedAt = t0.Add(6 * time.Second)
	return l.Put(ctx, d, ledger.Attempt{Kind: "poll", HTTPStatus: 200, RequestID: d.RequestID, Latency: 95 * time.Millisecond, At: t0.Add(6 * time.Second)})
}

func TestDiskSize(t *testing.T) {
	n := 10_000
	if raceEnabled || testing.Short() {
		n = 2_000
	}
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	run := MustStartRun(t, l)

	// As the runner does: the manifest goes in as pending rows, in chunks,
	// then 32 workers provision the devices in an interleaved order.
	var pending []ledger.Device
	for i := range n {
		pending = append(pending, ledger.Device{RegistrationID: fmt.Sprintf("device-%06d", i), RunID: run})
	}
	for i := 0; i < n; i += 5000 {
		if _, err := l.AddPending(ctx, pending[i:min(i+5000, n)]); err != nil {
			t.Fatal(err)
		}
	}
	var next atomic.Int64
	var g errgroup.Group
	for w := range 32 {
		rng := rand.New(rand.NewPCG(uint64(w), 7))
		g.Go(func() error {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := provision(ctx, l, rng, run, fmt.Sprintf("device-%06d", i), fixedNow); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	c, err := l.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.ByState[ledger.StateAssigned] != n || c.Polls != 2*n {
		t.Fatalf("Counts()=%+v, want %d assigned devices", c, n)
	}
	MustClose(t, l) // the last connection checkpoints the WAL into the file and removes it

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
		t.Fatalf("WAL still holds %d bytes after Close", wal.Size())
	}
	perDevice := float64(fi.Size()) / float64(n)
	t.Logf("%d devices with 3 attempts each: %d bytes, %.0f bytes/device (budget %d)", n, fi.Size(), perDevice, maxBytesPerDevice)
	if perDevice > maxBytesPerDevice {
		t.Errorf("%.0f bytes/device, want <= %d", perDevice, maxBytesPerDevice)
	}
}

// BenchmarkPutParallel measures Put throughput with many concurrent
// callers, as a runner's workers make: each operation is one Put of a
// device row with one attempt. Reported: puts/s and the mean group-commit
// batch size.
func BenchmarkPutParallel(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run(strings.ToLower(sync), func(b *testing.B) {
			ctx := context.Background()
			l := MustOpen(b, tempPath(b), ledger.Options{Synchronous: sync})
			run := MustStartRun(b, l)
			var seq atomic.Int64
			b.SetParallelism(16) // 16 x GOMAXPROCS callers
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(uint64(seq.Add(1<<40)), 1))
				for pb.Next() {
					i := seq.Add(1)
					d := ledger.Device{
						RegistrationID: fmt.Sprintf("device-%08d", i), State: ledger.StateAssigning, RunID: run, Attempts: 1,
						OperationID: fmt.Sprintf("5.%016x.%s", rng.Uint64(), guid(rng)), RequestID: guid(rng), HTTPStatus: 202,
						Fingerprint: "key:0123456789abcdef", FirstAttemptAt: fixedNow,
					}
					if err := l.Put(ctx, d, ledger.Attempt{Kind: "register", HTTPStatus: 202, RequestID: d.RequestID, Latency: time.Second}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			st := l.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "puts/s")
			if st.Commits > 0 {
				b.ReportMetric(float64(st.Writes)/float64(st.Commits), "puts/commit")
			}
		})
	}
}

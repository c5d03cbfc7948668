package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/dps-batch/dps-batch/ledger"
)

func TestBriefs(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	const n = 2*ledger.LookupChunk + 30 // three queries, the last one padded
	fleet(t, l, n)
	// Rows that carry every field a Brief reads.
	MustPut(t, l, ledger.Device{RegistrationID: "x-assigning", State: ledger.StateAssigning,
		OperationID: "5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550", Fingerprint: "key:0011223344556677"})
	MustPut(t, l, ledger.Device{RegistrationID: "x-assigned", State: ledger.StateAssigned,
		OperationID: "5.1", Fingerprint: "sha256:abcd", AssignedHub: "hub-1"})
	ids := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprintf("d-%05d", i))
		}
		return out
	}
	tests := []struct {
		name string
		ids  []string
	}{
		{"none", nil},
		{"one", ids(7, 8)},
		{"every field", []string{"x-assigning", "x-assigned"}},
		{"unknown only", []string{"nope", "D-00001", "d-1"}},
		{"known and unknown", append(ids(0, 5), "nope", "d-99999")},
		{"duplicates", append(ids(3, 6), ids(3, 6)...)},
		{"exactly one chunk", ids(0, ledger.LookupChunk)},
		{"several chunks", append(ids(0, n), "after-the-last")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := l.Briefs(ctx, tt.ids)
			if err != nil {
				t.Fatalf("Briefs: %v", err)
			}
			want := map[string]ledger.Brief{}
			for _, id := range tt.ids {
				d, ok, err := l.Device(ctx, id)
				if err != nil {
					t.Fatalf("Device(%s): %v", id, err)
				}
				if ok {
					want[id] = ledger.Brief{State: d.State, OperationID: d.OperationID, Fingerprint: d.Fingerprint}
				}
			}
			if len(got) != len(want) {
				t.Errorf("got %d devices, want %d", len(got), len(want))
			}
			for id, w := range want {
				if g, ok := got[id]; !ok {
					t.Errorf("device %s: missing", id)
				} else if !reflect.DeepEqual(g, w) {
					t.Errorf("device %s: got %+v, want %+v (from Device)", id, g, w)
				}
			}
		})
	}

	t.Run("closed", func(t *testing.T) {
		l := MustOpen(t, tempPath(t), ledger.Options{})
		MustClose(t, l)
		if _, err := l.Briefs(ctx, []string{"d-00001"}); !errors.Is(err, ledger.ErrClosed) {
			t.Errorf("Briefs after Close: got %v, want ErrClosed", err)
		}
	})
}

// BenchmarkBriefs compares batched lookups with one Device call per id,
// as a run reads its manifest's devices from the ledger.
func BenchmarkBriefs(b *testing.B) {
	ctx := context.Background()
	l := MustOpen(b, tempPath(b), ledger.Options{})
	fleet(b, l, 4*ledger.LookupChunk)
	var ids []string
	for i := range ledger.LookupChunk {
		ids = append(ids, fmt.Sprintf("d-%05d", 3*i))
	}
	b.Run("Briefs", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m, err := l.Briefs(ctx, ids)
			if err != nil || len(m) != len(ids) {
				b.Fatalf("got %d devices, err %v; want %d", len(m), err, len(ids))
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/device")
	})
	b.Run("Device", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, id := range ids {
				if _, ok, err := l.Device(ctx, id); !ok || err != nil {
					b.Fatalf("Device(%s): found %v, err %v", id, ok, err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/device")
	})
}

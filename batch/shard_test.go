package batch

import (
	"fmt"
	"strings"
	"testing"
)

// TestShardPartition: over a 3,000-id manifest, every device lands in
// exactly one shard for n = 1..7, and an id's shard does not depend on its
// case.
func TestShardPartition(t *testing.T) {
	ids := make([]string, 3000)
	for i := range ids {
		ids[i] = fmt.Sprintf("Line2-Device-%05d", i)
	}
	for n := 1; n <= 7; n++ {
		sizes := make([]int, n)
		for _, id := range ids {
			in := 0
			for i := 0; i < n; i++ {
				if (Shard{Index: i, Count: n}).Has(id) {
					in++
					sizes[i]++
				}
			}
			if in != 1 {
				t.Fatalf("n=%d: %s is in %d shards", n, id, in)
			}
			if ShardOf(id, n) != ShardOf(strings.ToLower(id), n) || ShardOf(id, n) != ShardOf(strings.ToUpper(id), n) {
				t.Fatalf("n=%d: %s: shard depends on case", n, id)
			}
		}
		for i, s := range sizes {
			// FNV-1a spreads the ids evenly: each shard within 20% of its share.
			if want := len(ids) / n; s < want*8/10 || s > want*12/10 {
				t.Errorf("n=%d: shard %d has %d devices, want about %d", n, i, s, want)
			}
		}
	}
}

// TestShardHashStable pins the documented hash: FNV-1a 64 of the lower-cased
// id, mod n. Changing it would move devices between shards of a running
// campaign.
func TestShardHashStable(t *testing.T) {
	ref := func(s string) uint64 {
		h := uint64(14695981039346656037)
		for _, c := range []byte(strings.ToLower(s)) {
			h ^= uint64(c)
			h *= 1099511628211
		}
		return h
	}
	for _, id := range []string{"device-1", "Device-1", "x", "line-3-0042"} {
		for n := 1; n <= 7; n++ {
			if got, want := ShardOf(id, n), int(ref(id)%uint64(n)); got != want {
				t.Errorf("ShardOf(%q, %d) = %d, want %d", id, n, got, want)
			}
		}
	}
}

func TestParseShard(t *testing.T) {
	for in, want := range map[string]Shard{"0/3": {0, 3}, "2/3": {2, 3}, " 0/1 ": {0, 1}} {
		got, err := ParseShard(in)
		if err != nil || got != want {
			t.Errorf("ParseShard(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"3/3", "-1/3", "1/0", "1", "a/b", "1/2/3", ""} {
		if _, err := ParseShard(in); err == nil {
			t.Errorf("ParseShard(%q) = nil error", in)
		}
	}
}

package batch

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// Shard selects the part of a manifest one runner provisions when a
// manifest is split across machines (provision --shard i/n). A device
// belongs to shard Index of Count when the FNV-1a 64-bit hash of its
// registration id in lower case, modulo Count, is Index. DPS treats
// registration ids case-insensitively, so ids differing only in case land
// in the same shard. The hash is part of the command-line contract: the
// same manifest split the same way always gives the same shards, on any
// machine and in any version. The zero Shard (Count 0) selects every
// device.
type Shard struct {
	Index, Count int
}

// All reports whether s selects every device (no sharding, or 1 shard).
func (s Shard) All() bool { return s.Count <= 1 }

// String returns "i/n", as --shard takes it; "" for the zero Shard.
func (s Shard) String() string {
	if s.Count == 0 {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Count)
}

// ShardOf returns the shard, of count, that the registration id belongs to.
func ShardOf(registrationID string, count int) int {
	if count <= 1 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(strings.ToLower(registrationID)))
	return int(h.Sum64() % uint64(count))
}

// Has reports whether the device with the registration id is in s.
func (s Shard) Has(registrationID string) bool {
	return s.All() || ShardOf(registrationID, s.Count) == s.Index
}

// ParseShard reads "i/n": 0 <= i < n. The completion index of a
// Kubernetes Indexed Job counts from 0, and so does i.
func ParseShard(s string) (Shard, error) {
	is, ns, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Shard{}, fmt.Errorf("shard %q: want i/n, e.g. 0/3 (shard 0 of 3; shards count from 0)", s)
	}
	i, err1 := strconv.Atoi(strings.TrimSpace(is))
	n, err2 := strconv.Atoi(strings.TrimSpace(ns))
	switch {
	case err1 != nil || err2 != nil:
		return Shard{}, fmt.Errorf("shard %q: want two whole numbers i/n, e.g. 0/3", s)
	case n < 1:
		return Shard{}, fmt.Errorf("shard %q: the number of shards must be at least 1", s)
	case i < 0 || i >= n:
		return Shard{}, fmt.Errorf("shard %q: the index counts from 0 and must be below %d (0/%d … %d/%d)", s, n, n, n-1, n)
	}
	return Shard{Index: i, Count: n}, nil
}

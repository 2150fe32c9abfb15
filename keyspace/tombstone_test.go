package keyspace

import (
	"fmt"
	"testing"

	"github.com/google/btree"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// TestForgottenTombstones deletes more keys than the copy remembers: a
// range at a revision before a forgotten delete must go to the store, one
// after it is answered, and a key put again after its delete is not lost
// with its tombstone. The rest of the copy is tested through the client,
// against the store (keyspace_test.go at the module's root).
func TestForgottenTombstones(t *testing.T) {
	c := New(nil, nil, nil)
	c.keys, c.floor, c.rev = btree.NewG(degree, entryLess), 1, 1
	key := func(i int) []byte { return fmt.Appendf(nil, "/t/%06d", i) }
	const n = maxTombstones + 10
	rev := int64(1)
	for i := range n {
		rev++
		c.apply(replication.WatchResponse{Revision: rev, Events: []replication.Event{{Type: replication.EventPut, Key: key(i), Value: []byte("v"), Revision: rev, CreateRevision: rev, Version: 1}}})
	}
	// Key 0 is deleted first and put again at once: its tombstone is
	// replaced, and forgetting it must not drop the key.
	del := func(i int) {
		rev++
		c.apply(replication.WatchResponse{Revision: rev, Events: []replication.Event{{Type: replication.EventDelete, Key: key(i), Revision: rev}}})
	}
	del(0)
	rev++
	again := rev
	c.apply(replication.WatchResponse{Revision: rev, Events: []replication.Event{{Type: replication.EventPut, Key: key(0), Value: []byte("again"), Revision: rev, CreateRevision: rev, Version: 1}}})
	for i := 1; i < n; i++ {
		del(i)
	}

	if c.live != 1 {
		t.Fatalf("%d live keys, want 1", c.live)
	}
	if len(c.tombs) > maxTombstones {
		t.Fatalf("%d tombstones kept, want at most %d", len(c.tombs), maxTombstones)
	}
	if c.floor <= again || c.floor >= rev {
		t.Fatalf("floor %d, want above key 0's put at %d and below %d", c.floor, again, rev)
	}
	// The keys forgotten with their tombstones, and key 0.
	forgotten := store.KeyRange{Key: key(0), End: key(maxTombstones/2 + 1)}
	all := store.Prefix([]byte("/t/"))
	for _, tc := range []struct {
		name  string
		rng   store.KeyRange
		rev   int64
		ok    bool
		count int64
	}{
		{"forgotten, below the floor", forgotten, c.floor - 1, false, 0},
		{"forgotten, at the floor", forgotten, c.floor, true, 1},
		{"all, at the floor", all, c.floor, false, 0}, // keys deleted since
		{"all, before the last delete", all, rev - 1, false, 0},
		{"all, at the last delete", all, rev, true, 1},
		{"all, latest", all, 0, true, 1},
	} {
		res, ok := c.readLocked(store.RangeRequest{KeyRange: tc.rng, Revision: tc.rev})
		if ok != tc.ok || ok && res.Count != tc.count {
			t.Errorf("%s (%d): %+v, answered %v; want answered %v, count %d", tc.name, tc.rev, res, ok, tc.ok, tc.count)
		}
	}
}

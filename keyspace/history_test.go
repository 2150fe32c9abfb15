package keyspace

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/google/btree"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// The rest of the copy is tested through the client, against the store
// (keyspace_test.go at the module's root): these tests reach the limits of
// its history, which the client's tests do not.

// newTestCopy returns a live copy, loaded empty at revision 1, and a
// function that applies one change at the next revision and returns it.
func newTestCopy() (*Copy, func(key string, value []byte, deleted bool) int64) {
	c := New(nil, nil, nil)
	c.keys, c.floor, c.rev = btree.NewG(degree, entryLess), 1, 1
	apply := func(key string, value []byte, deleted bool) int64 {
		rev := c.rev + 1
		ev := replication.Event{Type: replication.EventPut, Key: []byte(key), Value: value, Revision: rev, CreateRevision: rev, Version: 1}
		if deleted {
			ev = replication.Event{Type: replication.EventDelete, Key: []byte(key), Revision: rev}
		}
		c.apply(replication.WatchResponse{Revision: rev, Events: []replication.Event{ev}})
		return rev
	}
	return c, apply
}

// TestForgottenTombstones deletes more keys than the copy remembers
// changes: a range at a revision before a forgotten delete must go to the
// store, one after it is answered, and a key put again after its delete is
// not lost with its tombstone.
func TestForgottenTombstones(t *testing.T) {
	c, apply := newTestCopy()
	key := func(i int) string { return fmt.Sprintf("/t/%06d", i) }
	const n = maxHistory + 10 // with their deletes, past maxHistory twice
	for i := range n {
		apply(key(i), []byte("v"), false)
	}
	// Key 0 is deleted first and put again at once: its tombstone is
	// replaced, and forgetting it must not drop the key.
	apply(key(0), nil, true)
	again := apply(key(0), []byte("again"), false)
	var rev int64
	for i := 1; i < n; i++ {
		rev = apply(key(i), nil, true)
	}

	if c.live != 1 {
		t.Fatalf("%d live keys, want 1", c.live)
	}
	if len(c.changes) > maxHistory {
		t.Fatalf("%d changes remembered, want at most %d", len(c.changes), maxHistory)
	}
	if c.floor <= again || c.floor >= rev {
		t.Fatalf("floor %d, want above key 0's put at %d and below %d", c.floor, again, rev)
	}
	if got := c.keys.Len(); got >= n {
		t.Fatalf("%d keys in the tree, want the forgotten tombstones gone", got)
	}
	// The keys forgotten with their tombstones, and key 0.
	forgotten := store.KeyRange{Key: []byte(key(0)), End: []byte(key(n / 4))}
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
		{"all, below the floor", all, c.floor - 1, false, 0},
		{"all, at the floor", all, c.floor, true, int64(rev - c.floor + 1)}, // the keys whose deletes the copy remembers, and key 0
		{"all, before the last delete", all, rev - 1, true, 2},
		{"all, at the last delete", all, rev, true, 1},
		{"all, latest", all, 0, true, 1},
	} {
		res, ok := c.readLocked(store.RangeRequest{KeyRange: tc.rng, Revision: tc.rev})
		if ok != tc.ok || ok && res.Count != tc.count {
			t.Errorf("%s (%d): count %d, answered %v; want answered %v, count %d", tc.name, tc.rev, res.Count, ok, tc.ok, tc.count)
		}
	}
}

// TestForgottenVersions writes one key over and over with values whose
// bytes pass maxHistoryBytes before the changes pass maxHistory: the copy
// forgets the oldest versions, answers at every revision from its floor
// with the value written then, and refuses below it.
func TestForgottenVersions(t *testing.T) {
	c, apply := newTestCopy()
	value := func(rev int64) []byte {
		v := bytes.Repeat([]byte{'v'}, 1<<20)
		copy(v, fmt.Sprint(rev))
		return v
	}
	other := apply("/a", []byte("other"), false) // a key written once, before the rest
	var revs []int64
	for range maxHistoryBytes>>20 + 10 {
		rev := c.rev + 1
		revs = append(revs, apply("/k", value(rev), false))
	}
	if c.history > maxHistoryBytes {
		t.Fatalf("%d bytes remembered, want at most %d", c.history, maxHistoryBytes)
	}
	if c.floor <= revs[0] || c.floor >= revs[len(revs)-1] {
		t.Fatalf("floor %d, want between %d and %d", c.floor, revs[0], revs[len(revs)-1])
	}
	for _, rev := range append(revs, other, 1) {
		res, ok := c.readLocked(store.RangeRequest{KeyRange: store.Prefix([]byte("/")), Revision: rev})
		switch {
		case rev < c.floor:
			if ok {
				t.Errorf("revision %d below the floor %d answered", rev, c.floor)
			}
		case !ok:
			t.Errorf("revision %d at or above the floor %d not answered", rev, c.floor)
		case len(res.KVs) != 2 || string(res.KVs[0].Value) != "other" || !bytes.Equal(res.KVs[1].Value, value(rev)) || res.KVs[1].ModRevision != rev:
			t.Errorf("revision %d: %d keys, want /a and /k's value written at %d", rev, len(res.KVs), rev)
		}
	}
	// What the copy counts is what it holds.
	held := 0
	for _, e := range c.changes {
		if e.prev != nil {
			held += e.prev.size()
		}
	}
	if held != c.history {
		t.Fatalf("history counts %d bytes, the versions replaced hold %d", c.history, held)
	}
}

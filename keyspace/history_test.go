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

// TestForgottenTombstones deletes more keys than the copy remembers: a
// range at a revision before a forgotten delete must go to the store, one
// after it is answered, and a key put again after its delete is not lost
// with its tombstone.
func TestForgottenTombstones(t *testing.T) {
	c, apply := newTestCopy()
	key := func(i int) string { return fmt.Sprintf("/t/%06d", i) }
	const n = maxTombstones + 10
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
	if len(c.tombs) > maxTombstones {
		t.Fatalf("%d tombstones kept, want at most %d", len(c.tombs), maxTombstones)
	}
	if c.floor <= again || c.floor >= rev {
		t.Fatalf("floor %d, want above key 0's put at %d and below %d", c.floor, again, rev)
	}
	// The keys forgotten with their tombstones, and key 0.
	forgotten := store.KeyRange{Key: []byte(key(0)), End: []byte(key(maxTombstones/2 + 1))}
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
		// Key 0, and the keys deleted since, whose versions the copy remembers.
		{"all, at the floor", all, c.floor, true, 1 + rev - c.floor},
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

// TestForgottenVersions writes one key over and over, past each bound of
// the versions the copy remembers: the copy forgets the oldest, answers a
// range with the key at every revision whose version it remembers, with
// the value written then, and refuses the others, while a range of
// another key, written once before, is answered at every revision.
func TestForgottenVersions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int // of a value
		writes int
	}{
		{"bytes", 1 << 20, maxHistoryBytes>>20 + 10},
		{"versions", 8, maxHistory + 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, apply := newTestCopy()
			value := func(rev int64) []byte {
				v := bytes.Repeat([]byte{'v'}, tc.size)
				copy(v, fmt.Sprint(rev))
				return v
			}
			other := apply("/a", []byte("other"), false)
			var revs []int64
			for range tc.writes {
				revs = append(revs, apply("/k", value(c.rev+1), false))
			}
			if c.history > maxHistoryBytes || len(c.replacers) > maxHistory {
				t.Fatalf("%d versions of %d bytes remembered, want at most %d and %d", len(c.replacers), c.history, maxHistory, maxHistoryBytes)
			}
			held := 0
			for _, e := range c.replacers {
				held += e.prev.size()
			}
			if held != c.history {
				t.Fatalf("history counts %d bytes, the versions replaced hold %d", c.history, held)
			}
			// The oldest version remembered is the one the oldest
			// replacer replaced.
			oldest := c.replacers[0].prev.kv.ModRevision
			if oldest <= revs[0] || oldest >= revs[len(revs)-1] || c.floor != 1 {
				t.Fatalf("oldest version remembered at %d, floor %d; want between %d and %d, and 1", oldest, c.floor, revs[0], revs[len(revs)-1])
			}
			answered := 0
			for i, rev := range append(revs, other) {
				if i%97 != 0 && (rev < oldest-2 || rev > oldest+2) && rev != other {
					continue // a sample, and the revisions around the oldest remembered
				}
				res, ok := c.readLocked(store.RangeRequest{KeyRange: store.Prefix([]byte("/")), Revision: rev})
				switch {
				case ok != (rev >= oldest):
					t.Fatalf("revision %d answered %v, oldest version remembered at %d", rev, ok, oldest)
				case ok && (len(res.KVs) != 2 || string(res.KVs[0].Value) != "other" || !bytes.Equal(res.KVs[1].Value, value(rev)) || res.KVs[1].ModRevision != rev):
					t.Fatalf("revision %d: %d keys, want /a and /k's value written at %d", rev, len(res.KVs), rev)
				case ok:
					answered++
				}
				if res, ok := c.readLocked(store.RangeRequest{KeyRange: store.Key([]byte("/a")), Revision: rev}); !ok || len(res.KVs) != 1 {
					t.Fatalf("/a at %d: %d keys, answered %v", rev, len(res.KVs), ok)
				}
			}
			if answered == 0 {
				t.Fatal("no revision of /k answered")
			}
		})
	}
}

package store_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/walwatch/walwatch/store"
)

func TestCompact(t *testing.T) {
	// Each case runs on history(): revisions 2..8, see its comment.
	tests := []struct {
		name        string
		compact     func(s *store.Store) (store.CompactResponse, error)
		wantRev     int64
		wantRemoved int64
		latest      []string // every key at the current revision, unchanged by compaction
	}{
		{"by revision", func(s *store.Store) (store.CompactResponse, error) { return s.Compact(testContext(t), 5) },
			5, 1, nil}, // /routes/a@2 is superseded by 4
		{"by revision at a delete", func(s *store.Store) (store.CompactResponse, error) { return s.Compact(testContext(t), 8) },
			8, 3, nil}, // a@2; b@3 superseded by its tombstone at 7; the tombstone itself
		{"keep latest", func(s *store.Store) (store.CompactResponse, error) { return s.CompactKeepLatest(testContext(t)) },
			8, 3, nil},
	}
	latest := []string{"/routes=root@6/6/1", "/routes/a=2@4/2/2", "/routes/b=3@8/8/1", "/routes2/x=1@5/5/1"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, pool := newStore(t, store.Limits{})
			history(t, s)
			ctx := testContext(t)
			rowsBefore := rowCount(t, pool)
			res, err := tt.compact(s)
			if err != nil || res.CompactRevision != tt.wantRev || res.Removed != tt.wantRemoved {
				t.Fatalf("compact = %+v, %v; want revision %d, %d removed", res, err, tt.wantRev, tt.wantRemoved)
			}
			if n := rowCount(t, pool); n != rowsBefore-tt.wantRemoved {
				t.Fatalf("%d rows left, want %d", n, rowsBefore-tt.wantRemoved)
			}
			// Below the compacted revision reads fail, with the revision.
			_, err = s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0}), Revision: tt.wantRev - 1})
			var ce *store.CompactedError
			if !errors.As(err, &ce) || !errors.Is(err, store.ErrCompacted) || ce.CompactRevision != tt.wantRev {
				t.Fatalf("read below compaction: %v, want compacted at %d", err, tt.wantRev)
			}
			// At it, and at every later revision, reads are what they were.
			for rev := tt.wantRev; rev <= 8; rev++ {
				got, err := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0}), Revision: rev})
				if err != nil {
					t.Fatalf("read at %d: %v", rev, err)
				}
				want := expectedAt(rev)
				if !slices.Equal(kvs(got), want) {
					t.Fatalf("at %d after compaction: %q, want %q", rev, kvs(got), want)
				}
			}
			got, _ := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0})})
			if !slices.Equal(kvs(got), latest) {
				t.Fatalf("latest after compaction: %q", kvs(got))
			}
			// Compacting again at the same revision is etcd's compacted error.
			if _, err := s.Compact(ctx, tt.wantRev); !errors.Is(err, store.ErrCompacted) {
				t.Fatalf("compact again: %v, want compacted", err)
			}
		})
	}
}

// expectedAt is every key of history() as read at rev (5..8).
func expectedAt(rev int64) []string {
	var out []string
	if rev >= 6 {
		out = append(out, "/routes=root@6/6/1")
	}
	out = append(out, "/routes/a=2@4/2/2")
	switch {
	case rev == 8:
		out = append(out, "/routes/b=3@8/8/1")
	case rev < 7:
		out = append(out, "/routes/b=1@3/3/1")
	}
	return append(out, "/routes2/x=1@5/5/1")
}

func TestCompactOlderThanUsesCreatedAt(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	mustPut(t, s, "/k", "old1") // 2
	mustPut(t, s, "/k", "old2") // 3
	mustPut(t, s, "/k", "new1") // 4
	mustPut(t, s, "/k", "new2") // 5
	// Age the first three writes by two hours.
	if _, err := pool.Exec(ctx, "update walwatch.kv set created_at = now() - interval '2 hours' where revision <= 3"); err != nil {
		t.Fatal(err)
	}
	// Nothing is older than three hours: history starts at the first write, nothing goes.
	res, err := s.CompactOlderThan(ctx, 3*time.Hour)
	if err != nil || res.CompactRevision != 2 || res.Removed != 0 {
		t.Fatalf("compact older than 3h = %+v, %v; want compacted at 2, nothing removed", res, err)
	}
	res, err = s.CompactOlderThan(ctx, time.Hour)
	if err != nil || res.CompactRevision != 4 || res.Removed != 2 {
		t.Fatalf("compact older than 1h = %+v, %v; want compacted at 4 (the oldest young write), 2 removed", res, err)
	}
	kv, ok, err := s.Get(ctx, []byte("/k"), 4)
	if err != nil || !ok || string(kv.Value) != "new1" {
		t.Fatalf("read at 4 = %+v %v %v", kv, ok, err)
	}
	if _, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/k")), Revision: 3}); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("read at 3: %v, want compacted", err)
	}
}

// Age compaction finds its revision by a binary search over the primary key:
// check it against every boundary, over a history with holes that an earlier
// compaction left.
func TestFirstRevisionSinceFindsEveryBoundary(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	var last int64
	for i := range 120 { // revisions 2..121
		key := fmt.Sprintf("/k%d", i%7)
		if i == 8 {
			key = "/lonely" // never written again: it outlives the compaction
		}
		last = mustPut(t, s, key, "v")
	}
	if _, err := s.Compact(ctx, 60); err != nil { // deletes most rows below 60
		t.Fatal(err)
	}
	var rows int64
	if err := pool.QueryRow(ctx, "select count(*) from walwatch.kv where revision < 60").Scan(&rows); err != nil || rows != 7 {
		// /lonely's, and the seven keys' newest at 60 but the one written at 60.
		t.Fatalf("rows below 60 after compaction: %d, %v; want 7", rows, err)
	}
	for _, boundary := range []int64{1, 2, 10, 11, 30, 53, 54, 59, 60, 61, 100, last, last + 1} {
		if _, err := pool.Exec(ctx, `update walwatch.kv set created_at = case when revision < $1
			then now() - interval '2 hours' else now() end`, boundary); err != nil {
			t.Fatal(err)
		}
		var got *int64
		if err := pool.QueryRow(ctx, "select walwatch.first_revision_since(now() - interval '1 hour')").Scan(&got); err != nil {
			t.Fatal(err)
		}
		var want *int64
		if err := pool.QueryRow(ctx, "select min(revision) from walwatch.kv where revision >= $1", boundary).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (want == nil) || (got != nil && *got != *want) {
			t.Errorf("boundary %d: first revision since = %v, want %v", boundary, deref(got), deref(want))
		}
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestCompactKeepsNewestRowOfEveryLiveKey(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	for i := 0; i < 5; i++ {
		mustPut(t, s, "/a", "x")
		mustPut(t, s, "/b", "y")
	}
	mustPut(t, s, "/gone", "z")
	if _, err := s.Delete(ctx, store.Key([]byte("/gone"))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompactKeepLatest(ctx); err != nil {
		t.Fatal(err)
	}
	var keys []string
	rows, _ := pool.Query(ctx, "select convert_from(key, 'UTF8') from walwatch.kv order by key")
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	// The tombstone of /gone is at the compacted revision, which a watch from
	// that revision still needs, so it stays until the next compaction.
	if !slices.Equal(keys, []string{"/a", "/b", "/gone"}) {
		t.Fatalf("rows left: %q", keys)
	}
}

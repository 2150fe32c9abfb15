package store_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// A single key is read by a plain statement of the store's own, not by
// walwatch.range: both must answer alike at every revision, for a live key
// (one of them binary), a deleted one and one never written, with and without CountOnly, and fail
// alike below the compacted revision and above the current one.
func TestRangeOneMatchesRangeFunction(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	first := mustPut(t, s, "/one/a", "1")
	mustPut(t, s, "/one/a", "2")
	mustPut(t, s, "/one/b", "1")
	del, err := s.Delete(ctx, store.Key([]byte("/one/b")))
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "/one/c", "1")
	last := mustPut(t, s, "/one/\x00\xff", "\x00binary\xff")
	if _, err := s.Compact(ctx, first+1); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"/one/a", "/one/b", "/one/c", "/one/\x00\xff", "/one/never"} {
		for _, rev := range []int64{0, first, first + 1, del.Revision - 1, del.Revision, last, last + 1} {
			for _, countOnly := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s@%d/count=%v", key, rev, countOnly), func(t *testing.T) {
					got, gotErr := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte(key)), Revision: rev, CountOnly: countOnly})
					var (
						want                            store.RangeResponse
						keys, vals                      [][]byte
						creates, mods, versions, leases []int64
					)
					wantErr := pool.QueryRow(ctx, "select revision, more, count, keys, vals, create_revisions, mod_revisions, versions, leases, walwatch.current_revision() from walwatch.range($1, null, $2, 0, $3)",
						[]byte(key), rev, countOnly).Scan(&want.Revision, &want.More, &want.Count, &keys, &vals, &creates, &mods, &versions, &leases, &want.Current)
					if wantErr != nil {
						wantErr = store.TypedError(wantErr, rev)
						if gotErr == nil || errors.Unwrap(gotErr) == nil || errors.Unwrap(gotErr).Error() != wantErr.Error() {
							t.Fatalf("Range: %+v, %v; walwatch.range fails with %v", got, gotErr, wantErr)
						}
						return
					}
					want.KVs = []store.KeyValue{}
					for i := range keys {
						want.KVs = append(want.KVs, store.KeyValue{Key: keys[i], Value: vals[i], CreateRevision: creates[i],
							ModRevision: mods[i], Version: versions[i], Lease: leases[i]})
					}
					if gotErr != nil || !reflect.DeepEqual(got, want) {
						t.Fatalf("Range: %+v, %v; walwatch.range: %+v", got, gotErr, want)
					}
				})
			}
		}
	}
}

// A read at the current revision takes it from the newest row and not from
// walwatch.meta: compacting at the current revision when the newest row is a
// tombstone must leave that row, so that the revision a get reports is still
// the current one, not below the compacted revision.
func TestRangeOneAfterCompactingToTheNewestTombstone(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	mustPut(t, s, "/gone/a", "1")
	del, err := s.Delete(ctx, store.Key([]byte("/gone/a")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Compact(ctx, del.Revision); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"/gone/a", "/gone/never"} {
		got, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte(key))})
		if err != nil || got.Revision != del.Revision || len(got.KVs) != 0 || got.Count != 0 {
			t.Fatalf("Range(%s) after compacting at %d = %+v, %v; want revision %d, no keys", key, del.Revision, got, err, del.Revision)
		}
		if _, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte(key)), Revision: got.Revision}); err != nil {
			t.Fatalf("Range(%s) at the revision a read at the latest reported: %v", key, err)
		}
	}
}

package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// A range read page by page at one revision, each page from the key after
// the last one's, as Kubernetes lists: every page's count is the range's
// from its key on, the first counted, the others carried from the page
// before (which is then forgotten). A page read at the current revision
// carries nothing: it may not have seen every write below its revision.
func TestPagesAtOneRevisionCarryTheirCount(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	for i := range 40 {
		mustPut(t, s, fmt.Sprintf("/p/%02d", i), "v")
	}
	if _, err := s.Delete(ctx, store.Key([]byte("/p/05"))); err != nil {
		t.Fatal(err)
	}
	rev := mustPut(t, s, "/p/17", "again")
	mustPut(t, s, "/p/40", "after the revision read")
	end := []byte("/p0")

	latest, err := s.Range(ctx, store.RangeRequest{KeyRange: store.KeyRange{Key: []byte("/p/"), End: end}, Limit: 6})
	if err != nil {
		t.Fatal(err)
	}
	if kept := store.KeptCounts(s); kept != 0 || latest.Count != 40 || !latest.More {
		t.Errorf("a page at the current revision: count %d, more %v, %d counts kept; want 40, more, none kept", latest.Count, latest.More, kept)
	}

	key, listed, pages := []byte("/p/"), 0, 0
	for {
		r := store.KeyRange{Key: key, End: end}
		res, err := s.Range(ctx, store.RangeRequest{KeyRange: r, Revision: rev, Limit: 6})
		if err != nil {
			t.Fatal(err)
		}
		if _, kept := store.KeptCount(s, key, end, rev); kept {
			t.Errorf("page %d: its count still kept after it was read", pages+1)
		}
		want, err := s.Range(ctx, store.RangeRequest{KeyRange: r, Revision: rev, CountOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Count != want.Count {
			t.Errorf("page %d from %q: count %d; want %d", pages+1, key, res.Count, want.Count)
		}
		listed += len(res.KVs)
		pages++
		if !res.More {
			break
		}
		key = append(bytes.Clone(res.KVs[len(res.KVs)-1].Key), 0)
		if n, kept := store.KeptCount(s, key, end, rev); !kept || n != res.Count-6 {
			t.Errorf("after page %d: kept %d (%v) for the next; want %d", pages, n, kept, res.Count-6)
		}
	}
	if listed != 39 || pages != 7 {
		t.Errorf("listed %d keys in %d pages; want 39 in 7", listed, pages)
	}
}

// A count kept for a page is what the page answers, unless it cannot be the
// page's (no more than the keys the page holds, though the limit cut it
// short): then the page is counted.
func TestPageCountKeptIsUsedUnlessItCannotBe(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	rev := putTen(t, s, "/k/")
	req := store.RangeRequest{KeyRange: store.KeyRange{Key: []byte("/k/"), End: []byte("/k0")}, Revision: rev, Limit: 3}
	for _, c := range []struct{ kept, want int64 }{
		{kept: 1000, want: 1000}, // not this range's, but nothing shows it
		{kept: 3, want: 10},
		{kept: 0, want: 10},
	} {
		store.KeepCount(s, req.Key, req.End, rev, c.kept)
		res, err := s.Range(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if res.Count != c.want || len(res.KVs) != 3 || !res.More {
			t.Errorf("kept %d: count %d, %d keys, more %v; want count %d, 3 keys, more", c.kept, res.Count, len(res.KVs), res.More, c.want)
		}
	}

	// A read that fails takes its kept count with it: the next one counts.
	store.KeepCount(s, req.Key, req.End, rev, 1000)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Range(cancelled, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("a read with its context cancelled: %v; want context.Canceled", err)
	}
	res, err := s.Range(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Count != 10 || store.KeptCounts(s) != 1 {
		t.Errorf("after a failed read: count %d, %d counts kept; want 10, one kept (for the next page)", res.Count, store.KeptCounts(s))
	}
}

// A range read uncounted (NoCount) page by page at one revision holds the
// keys a counted read holds, with no count on the pages the limit cut
// short and the page's own on the last; it keeps no count and takes none.
func TestPagesUncounted(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	rev := putTen(t, s, "/u/")
	end := []byte("/u0")
	store.KeepCount(s, []byte("/u/"), end, rev, 1000) // not to be used
	key := []byte("/u/")
	var listed []string
	for {
		res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.KeyRange{Key: key, End: end}, Revision: rev, Limit: 4, NoCount: true})
		if err != nil {
			t.Fatal(err)
		}
		want := int64(0)
		if !res.More {
			want = int64(len(res.KVs))
		}
		if res.Count != want || res.Revision != rev {
			t.Errorf("page from %q: count %d at revision %d; want %d at %d", key, res.Count, res.Revision, want, rev)
		}
		for _, kv := range res.KVs {
			listed = append(listed, string(kv.Key))
		}
		if !res.More {
			break
		}
		key = append(bytes.Clone(res.KVs[len(res.KVs)-1].Key), 0)
	}
	if fmt.Sprint(listed) != "[/u/0 /u/1 /u/2 /u/3 /u/4 /u/5 /u/6 /u/7 /u/8 /u/9]" {
		t.Errorf("listed %v; want /u/0 to /u/9", listed)
	}
	if store.KeptCounts(s) != 1 {
		t.Errorf("%d counts kept; want only the one kept before", store.KeptCounts(s))
	}
}

// A page read at the current revision keeps the count after it only when
// its caller vouches that the read saw every write below its revision
// (CarryCount), and only a counted page of a range that the limit cut
// short.
func TestCarryCount(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	rev := putTen(t, s, "/c/")
	page := store.KeyRange{Key: []byte("/c/"), End: []byte("/c0")}
	for _, c := range []struct {
		name string
		req  store.RangeRequest
		kept bool
	}{
		{"a page cut short", store.RangeRequest{KeyRange: page, Limit: 4}, true},
		{"the whole range", store.RangeRequest{KeyRange: page, Limit: 10}, false},
		{"no limit", store.RangeRequest{KeyRange: page}, false},
		{"uncounted", store.RangeRequest{KeyRange: page, Limit: 4, NoCount: true}, false},
		{"count only", store.RangeRequest{KeyRange: page, Limit: 4, CountOnly: true}, false},
		{"at a named revision (kept by the read itself)", store.RangeRequest{KeyRange: page, Revision: rev, Limit: 4}, true},
		{"one key", store.RangeRequest{KeyRange: store.Key([]byte("/c/1")), Limit: 1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			store.ForgetCounts(s)
			res, err := s.Range(ctx, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if c.req.Revision == 0 && store.KeptCounts(s) != 0 {
				t.Fatalf("%d counts kept before CarryCount", store.KeptCounts(s))
			}
			s.CarryCount(c.req, res)
			n, kept := store.KeptCount(s, []byte("/c/3\x00"), page.End, rev)
			if kept != c.kept || kept && n != 6 || !kept && store.KeptCounts(s) != 0 {
				t.Errorf("kept %d (%v), %d counts in all; want kept %v, 6", n, kept, store.KeptCounts(s), c.kept)
			}
		})
	}
}

package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
)

func TestMigrateTwice(t *testing.T) {
	_, pool := newStore(t, store.Limits{}) // migrated once
	res, err := sql.Migrate(testContext(t), pool)
	if err != nil {
		t.Fatal(err)
	}
	if res.From != sql.Latest() || res.To != sql.Latest() {
		t.Fatalf("second migrate went from %d to %d, want a no-op at %d", res.From, res.To, sql.Latest())
	}
}

func TestRevisionsCountWrites(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	cur, compacted, err := s.Revision(ctx)
	if err != nil || cur != 1 || compacted != 0 {
		t.Fatalf("empty store at revision %d, compacted %d, err %v; want 1, 0", cur, compacted, err)
	}
	if rev := mustPut(t, s, "/a", "1"); rev != 2 {
		t.Fatalf("first put got revision %d, want 2", rev)
	}
	// Deleting nothing takes no revision.
	del, err := s.Delete(ctx, store.Key([]byte("/missing")))
	if err != nil || del.Deleted != 0 || del.Revision != 2 {
		t.Fatalf("delete of nothing = %+v, %v; want revision 2, 0 deleted", del, err)
	}
	if rev := mustPut(t, s, "/b", "1"); rev != 3 {
		t.Fatalf("put after empty delete got revision %d, want 3", rev)
	}
}

// CurrentRevision, called by many at once, answers each at least the
// revision of every write acknowledged before the call.
func TestCurrentRevisionShared(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	for round := range 5 {
		rev := mustPut(t, s, "/cur", fmt.Sprint(round))
		var wg sync.WaitGroup
		got := make([]int64, 32)
		errs := make([]error, len(got))
		for i := range got {
			wg.Go(func() { got[i], errs[i] = s.CurrentRevision(ctx) })
		}
		wg.Wait()
		for i := range got {
			if errs[i] != nil || got[i] != rev {
				t.Fatalf("round %d: CurrentRevision = %d, %v after a put at %d", round, got[i], errs[i], rev)
			}
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.CurrentRevision(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("CurrentRevision with a cancelled context: %v", err)
	}
}

// history writes a small history and returns the revision of each step:
//
//	2 put /routes/a=1   3 put /routes/b=1   4 put /routes/a=2
//	5 put /routes2/x=1  6 put /routes=root  7 del /routes/b   8 put /routes/b=3
func history(t *testing.T, s *store.Store) {
	t.Helper()
	steps := []struct{ key, value string }{
		{"/routes/a", "1"}, {"/routes/b", "1"}, {"/routes/a", "2"}, {"/routes2/x", "1"}, {"/routes", "root"}, {"/routes/b", ""}, {"/routes/b", "3"},
	}
	for i, st := range steps {
		want := int64(i + 2)
		var rev int64
		if i == 5 {
			del, err := s.Delete(testContext(t), store.Key([]byte(st.key)))
			if err != nil || del.Deleted != 1 {
				t.Fatalf("delete %s = %+v, %v", st.key, del, err)
			}
			rev = del.Revision
		} else {
			rev = mustPut(t, s, st.key, st.value)
		}
		if rev != want {
			t.Fatalf("step %d got revision %d, want %d", i, rev, want)
		}
	}
}

func TestRange(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	history(t, s)
	tests := []struct {
		name string
		req  store.RangeRequest
		want []string
		more bool
	}{
		{"key latest", store.RangeRequest{KeyRange: store.Key([]byte("/routes/a"))}, []string{"/routes/a=2@4/2/2"}, false},
		{"key at old revision", store.RangeRequest{KeyRange: store.Key([]byte("/routes/a")), Revision: 3}, []string{"/routes/a=1@2/2/1"}, false},
		{"key before it existed", store.RangeRequest{KeyRange: store.Key([]byte("/routes/a")), Revision: 1}, []string{}, false},
		{"deleted key", store.RangeRequest{KeyRange: store.Key([]byte("/routes/b")), Revision: 7}, []string{}, false},
		{"key recreated after delete", store.RangeRequest{KeyRange: store.Key([]byte("/routes/b"))}, []string{"/routes/b=3@8/8/1"}, false},
		{"key before delete", store.RangeRequest{KeyRange: store.Key([]byte("/routes/b")), Revision: 6}, []string{"/routes/b=1@3/3/1"}, false},
		{"missing key", store.RangeRequest{KeyRange: store.Key([]byte("/nope"))}, []string{}, false},
		{"prefix excludes sibling prefix", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/"))}, []string{"/routes/a=2@4/2/2", "/routes/b=3@8/8/1"}, false},
		{"prefix includes the prefix key itself", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes"))}, []string{"/routes=root@6/6/1", "/routes/a=2@4/2/2", "/routes/b=3@8/8/1", "/routes2/x=1@5/5/1"}, false},
		{"prefix at old revision", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/")), Revision: 7}, []string{"/routes/a=2@4/2/2"}, false},
		{"prefix with limit", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/")), Limit: 1}, []string{"/routes/a=2@4/2/2"}, true},
		{"limit equal to count", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/")), Limit: 2}, []string{"/routes/a=2@4/2/2", "/routes/b=3@8/8/1"}, false},
		{"half-open range", store.RangeRequest{KeyRange: store.KeyRange{Key: []byte("/routes/a"), End: []byte("/routes/b")}}, []string{"/routes/a=2@4/2/2"}, false},
		{"from key", store.RangeRequest{KeyRange: store.FromKey([]byte("/routes/b"))}, []string{"/routes/b=3@8/8/1", "/routes2/x=1@5/5/1"}, false},
		{"all keys at revision 2", store.RangeRequest{KeyRange: store.FromKey([]byte{0}), Revision: 2}, []string{"/routes/a=1@2/2/1"}, false},
		{"page at old revision", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes")), Revision: 7, Limit: 1}, []string{"/routes=root@6/6/1"}, true},
		{"count only", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/")), CountOnly: true}, []string{}, false},
		{"count only at old revision", store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/")), Revision: 7, CountOnly: true}, []string{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.Range(testContext(t), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			wantRev := tt.req.Revision
			if wantRev == 0 {
				wantRev = 8
			}
			if got := kvs(res); !slices.Equal(got, tt.want) || res.More != tt.more || res.Revision != wantRev {
				t.Fatalf("got %q more=%v revision=%d, want %q more=%v revision=%d", got, res.More, res.Revision, tt.want, tt.more, wantRev)
			}
			// Each read carries the current revision, whatever it read at.
			if res.Current != 8 {
				t.Fatalf("current revision %d, want 8", res.Current)
			}
		})
	}
}

func TestDeletePrefixIsOneRevision(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	history(t, s)
	ctx := testContext(t)
	del, err := s.Delete(ctx, store.Prefix([]byte("/routes/")))
	if err != nil || del.Deleted != 2 || del.Revision != 9 {
		t.Fatalf("prefix delete = %+v, %v; want 2 deleted at revision 9", del, err)
	}
	var subs []int32
	rows, _ := pool.Query(ctx, "select sub from walwatch.kv where revision = 9 order by sub")
	for rows.Next() {
		var sub int32
		if err := rows.Scan(&sub); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
	}
	if !slices.Equal(subs, []int32{0, 1}) {
		t.Fatalf("revision 9 holds subs %v, want [0 1]", subs)
	}
	res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/routes"))})
	if err != nil {
		t.Fatal(err)
	}
	if got := kvs(res); !slices.Equal(got, []string{"/routes=root@6/6/1", "/routes2/x=1@5/5/1"}) {
		t.Fatalf("after prefix delete: %q", got)
	}
	// Deleting the same prefix again deletes nothing and takes no revision.
	again, err := s.Delete(ctx, store.Prefix([]byte("/routes/")))
	if err != nil || again.Deleted != 0 || again.Revision != 9 {
		t.Fatalf("second prefix delete = %+v, %v", again, err)
	}
}

func TestVersionsAcrossDeleteAndRecreate(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	mustPut(t, s, "k", "a") // 2
	mustPut(t, s, "k", "b") // 3
	mustPut(t, s, "k", "c") // 4
	if _, err := s.Delete(ctx, store.Key([]byte("k"))); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "k", "d") // 6
	kv, ok, err := s.Get(ctx, []byte("k"), 0)
	if err != nil || !ok || kv.Version != 1 || kv.CreateRevision != 6 || kv.ModRevision != 6 {
		t.Fatalf("recreated key = %+v ok=%v err=%v; want version 1 created at 6", kv, ok, err)
	}
	kv, ok, err = s.Get(ctx, []byte("k"), 4)
	if err != nil || !ok || kv.Version != 3 || kv.CreateRevision != 2 || string(kv.Value) != "c" {
		t.Fatalf("key at 4 = %+v ok=%v err=%v; want c, version 3, created at 2", kv, ok, err)
	}
	// An empty value is a value, not a delete.
	mustPut(t, s, "empty", "")
	kv, ok, err = s.Get(ctx, []byte("empty"), 0)
	if err != nil || !ok || len(kv.Value) != 0 || kv.Value == nil {
		t.Fatalf("empty value = %+v ok=%v err=%v", kv, ok, err)
	}
}

func TestBadInputWritesNothing(t *testing.T) {
	s, pool := newStore(t, store.Limits{MaxKeySize: 16, MaxValueSize: 32})
	mustPut(t, s, "/a", "1")
	ctx := testContext(t)
	big := bytes.Repeat([]byte("x"), 33)
	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"put empty key", func() error { _, err := s.Put(ctx, nil, []byte("v")); return err }, store.ErrEmptyKey},
		{"put key over limit", func() error { _, err := s.Put(ctx, bytes.Repeat([]byte("k"), 17), nil); return err }, store.ErrKeyTooLarge},
		{"put value over limit", func() error { _, err := s.Put(ctx, []byte("/a"), big); return err }, store.ErrValueTooLarge},
		{"delete empty key", func() error { _, err := s.Delete(ctx, store.Key(nil)); return err }, store.ErrEmptyKey},
		{"range empty key", func() error { _, err := s.Range(ctx, store.RangeRequest{}); return err }, store.ErrEmptyKey},
		{"range future revision", func() error {
			_, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/a")), Revision: 3})
			return err
		}, store.ErrFutureRevision},
		{"range negative revision", func() error {
			_, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/a")), Revision: -1})
			return err
		}, store.ErrInvalidRevision},
		{"range negative limit", func() error {
			_, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/a")), Limit: -1})
			return err
		}, store.ErrInvalidLimit},
		{"compact future revision", func() error { _, err := s.Compact(ctx, 99); return err }, store.ErrFutureRevision},
		{"compact zero", func() error { _, err := s.Compact(ctx, 0); return err }, store.ErrInvalidRevision},
		{"txn oversize value", func() error {
			_, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{store.OpPutKey([]byte("/b"), nil), store.OpPutKey([]byte("/c"), big)}})
			return err
		}, store.ErrValueTooLarge},
		{"txn writes a key twice", func() error {
			_, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{store.OpPutKey([]byte("/b"), nil), store.OpDeleteRange(store.Prefix([]byte("/")))}})
			return err
		}, store.ErrDuplicateKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if cur, _, _ := s.Revision(ctx); cur != 2 {
				t.Fatalf("revision moved to %d", cur)
			}
			if n := rowCount(t, pool); n != 1 {
				t.Fatalf("%d rows, want 1", n)
			}
		})
	}
	var fe *store.FutureRevisionError
	_, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/a")), Revision: 3})
	if !errors.As(err, &fe) || fe.CurrentRevision != 2 || fe.Revision != 3 {
		t.Fatalf("future revision error = %#v", err)
	}
}

func TestSQLMetacharactersStoredVerbatim(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	keys := []string{
		"'; drop table walwatch.kv; --",
		`/routes/"quoted"\back\slash`,
		"/routes/%_wild*",
		"\x00\x01\xff binary",
		"/routes/ünïcødé",
	}
	for i, k := range keys {
		v := strings.Repeat(k, 2)
		mustPut(t, s, k, v)
		kv, ok, err := s.Get(ctx, []byte(k), 0)
		if err != nil || !ok || string(kv.Key) != k || string(kv.Value) != v {
			t.Fatalf("key %d %q read back as %q=%q ok=%v err=%v", i, k, kv.Key, kv.Value, ok, err)
		}
	}
	res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/routes/%"))})
	if err != nil || len(res.KVs) != 1 {
		t.Fatalf("prefix with %% matched %d keys (%v), want 1: a LIKE pattern leaked", len(res.KVs), err)
	}
}

func TestPrefixEnd(t *testing.T) {
	tests := []struct{ in, want []byte }{
		{[]byte("/routes/"), []byte("/routes0")},
		{[]byte("a\xff"), []byte("b")},
		{[]byte("\xff\xff"), []byte{0}},
		{nil, []byte{0}},
	}
	for _, tt := range tests {
		if got := store.PrefixEnd(tt.in); !bytes.Equal(got, tt.want) {
			t.Errorf("PrefixEnd(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// A page of a range reads bytes as bytes: keys with 0x00 and 0xff in them in
// byte order, a range open at its end (a prefix of 0xff bytes has no upper
// bound), a deleted key left out of the page and the count, and a value of a
// mebibyte of every byte, whole.
func TestRangePageOfBinaryKeys(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for _, kv := range []struct{ key, value string }{
		{"\xff\xfe", "outside"},
		{"\xff\xff\xff", "\x00"},
		{"\xff\xff", string(big)},
		{"\xff\xff\x00", "deleted"},
		{"\xff\xff\x80\x00", "\xff"},
	} {
		if _, err := s.Put(ctx, []byte(kv.key), []byte(kv.value)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Delete(ctx, store.Key([]byte("\xff\xff\x00"))); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		req   store.RangeRequest
		keys  []string
		more  bool
		count int64
	}{
		{"prefix", store.RangeRequest{KeyRange: store.Prefix([]byte("\xff\xff"))},
			[]string{"\xff\xff", "\xff\xff\x80\x00", "\xff\xff\xff"}, false, 3},
		{"prefix with limit", store.RangeRequest{KeyRange: store.Prefix([]byte("\xff\xff")), Limit: 2},
			[]string{"\xff\xff", "\xff\xff\x80\x00"}, true, 3},
		{"from key with limit", store.RangeRequest{KeyRange: store.FromKey([]byte("\xff\xfe")), Limit: 1},
			[]string{"\xff\xfe"}, true, 4},
		{"count only", store.RangeRequest{KeyRange: store.Prefix([]byte("\xff\xff")), CountOnly: true},
			nil, false, 3},
	}
	values := map[string]string{"\xff\xfe": "outside", "\xff\xff\xff": "\x00", "\xff\xff": string(big), "\xff\xff\x80\x00": "\xff"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.Range(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, kv := range res.KVs {
				keys = append(keys, string(kv.Key))
				if string(kv.Value) != values[string(kv.Key)] {
					t.Errorf("%q: a value of %d bytes, want %d", kv.Key, len(kv.Value), len(values[string(kv.Key)]))
				}
			}
			if !slices.Equal(keys, tt.keys) || res.More != tt.more || res.Count != tt.count {
				t.Fatalf("keys %q, more %v, count %d; want %q, more %v, count %d", keys, res.More, res.Count, tt.keys, tt.more, tt.count)
			}
		})
	}

	// Page by page at one revision, as a list: from the second page on the
	// count is carried from the page before, here across the deleted key
	// (the key after "\xff\xff" is the deleted "\xff\xff\x00") and the 1 MiB
	// value, to the open end.
	t.Run("pages at a revision", func(t *testing.T) {
		first, err := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte("\xff\xfe")), Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		var counts []int64
		for key := []byte("\xff\xfe"); ; {
			res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey(key), Revision: first.Revision, Limit: 1})
			if err != nil {
				t.Fatal(err)
			}
			keys, counts = append(keys, string(res.KVs[0].Key)), append(counts, res.Count)
			if !res.More {
				break
			}
			key = append(bytes.Clone(res.KVs[0].Key), 0)
		}
		want := []string{"\xff\xfe", "\xff\xff", "\xff\xff\x80\x00", "\xff\xff\xff"}
		if !slices.Equal(keys, want) || !slices.Equal(counts, []int64{4, 3, 2, 1}) {
			t.Errorf("pages %q with counts %v; want %q with counts [4 3 2 1]", keys, counts, want)
		}
	})
}

package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walwatch/walwatch/store"
)

// Kubernetes' writes, which walwatch.cas_batch decides in SQL, answer and
// write as the general path does with the same Txn on a key with the same
// history: the compare's outcome, each op's answer, the Else branch's read
// and the revisions, relative to the key's.
func TestKubernetesWritesAnswerAsTheGeneralPath(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	lease, err := s.Grant(ctx, 60, 0)
	if err != nil {
		t.Fatal(err)
	}
	type step struct {
		put, del bool
		value    string
	}
	put := func(v string) step { return step{put: true, value: v} }
	del := step{del: true}
	// mod: the compare's operand from the key's mod revision (-1: one it
	// does not have).
	type req func(key []byte, mod int64) store.TxnRequest
	k8s := func(then store.Op, orElse ...store.Op) req {
		return func(key []byte, mod int64) store.TxnRequest {
			then.Range = store.Key(key)
			for i := range orElse {
				orElse[i].Range = store.Key(key)
			}
			return store.TxnRequest{
				If:   []store.Compare{{Key: key, Target: store.CompareModRevision, Result: store.ResultEqual, Number: mod}},
				Then: []store.Op{then},
				Else: orElse,
			}
		}
	}
	putOp := store.Op{Kind: store.OpPut, Value: []byte("new")}
	withLease := store.Op{Kind: store.OpPut, Value: []byte("leased"), Lease: lease.ID}
	delOp := store.Op{Kind: store.OpDelete}
	get := store.Op{Kind: store.OpRange}
	count := store.Op{Kind: store.OpRange, CountOnly: true}
	tests := []struct {
		name    string
		history []step
		stale   bool // compare with a mod revision the key does not have
		req     req
	}{
		{"update", []step{put("a"), put("b")}, false, k8s(putOp, get)},
		{"stale update", []step{put("a"), put("b")}, true, k8s(putOp, get)},
		{"stale update, count only", []step{put("a")}, true, k8s(putOp, count)},
		{"stale update, no else", []step{put("a")}, true, k8s(putOp)},
		{"create", nil, false, k8s(putOp, get)},
		{"create of a key that exists", []step{put("a")}, true, k8s(putOp, get)},
		{"create after a delete", []step{put("a"), del}, false, k8s(putOp, get)},
		{"update under a lease", []step{put("a")}, false, k8s(withLease, get)},
		{"delete", []step{put("a"), put("b")}, false, k8s(delOp, get)},
		{"stale delete", []step{put("a")}, true, k8s(delOp, get)},
		{"delete of a missing key", nil, false, k8s(delOp, get)},
		{"delete of a deleted key", []step{put("a"), del}, false, k8s(delOp, get)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answers := map[string]string{}
			for _, path := range []string{"cas_batch", "general"} {
				key := fmt.Appendf(nil, "/cas/%d/%s", i, path)
				for _, st := range tt.history {
					var err error
					if st.put {
						_, err = s.Put(ctx, key, []byte(st.value))
					} else {
						_, err = s.Delete(ctx, store.Key(key))
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				before, _, _ := s.Get(ctx, key, 0)
				mod := before.ModRevision
				if tt.stale {
					mod = 1
				}
				req := tt.req(key, mod)
				if !store.CASShape(req) {
					t.Fatalf("%+v is not of Kubernetes' shape", req)
				}
				var res store.TxnResponse
				var err error
				if path == "general" {
					res, err = store.TxnGeneral(ctx, s, req)
				} else {
					res, err = s.Txn(ctx, req)
				}
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				answers[path] = describeTxn(t, s, key, before, res)
			}
			if answers["cas_batch"] != answers["general"] {
				t.Errorf("cas_batch answered %s; the general path %s", answers["cas_batch"], answers["general"])
			}
		})
	}
}

// describeTxn says what res answered and wrote, with revisions relative to
// the key's before (prev) and after it.
func describeTxn(t *testing.T, s *store.Store, key []byte, prev store.KeyValue, res store.TxnResponse) string {
	t.Helper()
	ctx := testContext(t)
	after, ok, err := s.Get(ctx, key, 0)
	if err != nil {
		t.Fatal(err)
	}
	cur, _, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rev := func(r int64) string {
		switch {
		case r == 0:
			return "0"
		case ok && r == after.ModRevision && r != prev.ModRevision:
			return "written"
		case r == prev.CreateRevision:
			return "created"
		case r == prev.ModRevision:
			return "previous"
		case r == cur:
			return "current"
		}
		return fmt.Sprintf("%d (written %d, previous %d, current %d)", r, after.ModRevision, prev.ModRevision, cur)
	}
	kv := func(kv store.KeyValue) string {
		if !bytes.Equal(kv.Key, key) {
			return fmt.Sprintf("another key, %q", kv.Key)
		}
		return fmt.Sprintf("%q create %s mod %s version %d lease %d", kv.Value, rev(kv.CreateRevision), rev(kv.ModRevision), kv.Version, kv.Lease)
	}
	out := fmt.Sprintf("succeeded %t at %s:", res.Succeeded, rev(res.Revision))
	for _, r := range res.Responses {
		switch {
		case r.Put != nil:
			out += fmt.Sprintf(" put at %s, prev %v", rev(r.Put.Revision), r.Put.PrevKV)
		case r.Delete != nil:
			out += fmt.Sprintf(" delete of %d at %s, prev %v", r.Delete.Deleted, rev(r.Delete.Revision), r.Delete.PrevKVs)
		case r.Range != nil:
			out += fmt.Sprintf(" range at %s of %d more %t:", rev(r.Range.Revision), r.Range.Count, r.Range.More)
			for _, x := range r.Range.KVs {
				out += " " + kv(x)
			}
		}
	}
	if ok {
		return out + "; then " + kv(after)
	}
	return out + "; then absent"
}

// Kubernetes' writes queued together go out in one statement, each at a
// revision of its own; one under a lease that does not exist fails alone,
// as on the general path, and the others are written all the same.
func TestQueuedKubernetesWritesShareOneStatement(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	before := mustPut(t, s, "/q/old", "old")
	create := func(k string, lease int64) store.TxnRequest {
		return store.TxnRequest{
			If:   []store.Compare{{Key: []byte(k), Target: store.CompareModRevision, Result: store.ResultEqual}},
			Then: []store.Op{{Kind: store.OpPut, Range: store.Key([]byte(k)), Value: []byte("v"), Lease: lease}},
			Else: []store.Op{store.OpGet(store.Key([]byte(k)), 0)},
		}
	}
	reqs := map[string]store.TxnRequest{"a": create("/q/a", 0), "b": create("/q/b", 0), "old": create("/q/old", 0)}
	release := occupyTxnWorkers(t, s, pool)
	results := queueTxns(t, s, reqs)
	release()
	revs := map[int64]string{}
	for range reqs {
		r := <-results
		if r.err != nil {
			t.Fatalf("%s: %v", r.name, r.err)
		}
		if r.res.Succeeded != (r.name != "old") {
			t.Errorf("%s = %+v; want succeeded %t", r.name, r.res, r.name != "old")
		}
		if r.name == "old" {
			continue
		}
		if other, ok := revs[r.res.Revision]; ok {
			t.Errorf("%s and %s both at revision %d", r.name, other, r.res.Revision)
		}
		revs[r.res.Revision] = r.name
	}
	var txns int
	if err := pool.QueryRow(ctx, `select count(distinct xmin::text) from walwatch.kv
		where key in ('/q/a', '/q/b') and revision > $1`, before).Scan(&txns); err != nil {
		t.Fatal(err)
	}
	if txns != 1 {
		t.Errorf("the batch wrote in %d transactions; want 1", txns)
	}

	reqs = map[string]store.TxnRequest{"c": create("/q/c", 0), "gone": create("/q/gone", 12345)}
	release = occupyTxnWorkers(t, s, pool)
	results = queueTxns(t, s, reqs)
	release()
	for range reqs {
		r := <-results
		switch {
		case r.name == "gone" && !errors.Is(r.err, store.ErrLeaseNotFound):
			t.Errorf("a create under a missing lease: %+v, %v; want ErrLeaseNotFound", r.res, r.err)
		case r.name == "c" && (r.err != nil || !r.res.Succeeded):
			t.Errorf("a create beside one under a missing lease: %+v, %v", r.res, r.err)
		}
	}
}

// walwatch.cas_batch refuses what the Go store never sends, as put_batch
// does: arrays that do not pair up, a key given twice, an empty key, a
// lease that does not exist.
func TestCASBatchRefusesBadInput(t *testing.T) {
	_, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	one := [][]byte{[]byte("/bad/a")}
	tests := []struct {
		name     string
		sql      string
		args     []any
		wantRows int
		wantCode string // SQLSTATE, when it must fail
	}{
		{"empty", "", []any{[][]byte{}, []int64{}, [][]byte{}, []int64{}, []bool{}}, 0, ""},
		{"one", "", []any{one, []int64{0}, [][]byte{nil}, []int64{0}, []bool{false}}, 1, ""},
		{"fewer mod revisions", "", []any{one, []int64{}, [][]byte{nil}, []int64{0}, []bool{false}}, 0, "22023"},
		{"more deletes", "", []any{one, []int64{0}, [][]byte{nil}, []int64{0}, []bool{false, true}}, 0, "22023"},
		{"a key twice", "", []any{[][]byte{[]byte("/bad/b"), []byte("/bad/b")}, []int64{0, 0}, [][]byte{nil, nil}, []int64{0, 0}, []bool{false, false}}, 0, "22023"},
		{"an empty key", "", []any{[][]byte{[]byte("/bad/c"), {}}, []int64{0, 0}, [][]byte{nil, nil}, []int64{0, 0}, []bool{false, false}}, 0, "WWK01"},
		{"a lease that does not exist", "", []any{[][]byte{[]byte("/bad/d")}, []int64{0}, [][]byte{nil}, []int64{12345}, []bool{false}}, 0, "WWL01"},
		{"subscripts from 0", "select * from walwatch.cas_batch(('[0:0]=' || $1::bytea[]::text)::bytea[], $2, $3, $4, $5)",
			[]any{[][]byte{[]byte("/bad/e")}, []int64{0}, [][]byte{nil}, []int64{0}, []bool{false}}, 0, "22023"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.sql
			if q == "" {
				q = "select * from walwatch.cas_batch($1, $2, $3, $4, $5)"
			}
			rows, err := pool.Query(ctx, q, tt.args...)
			n := 0
			if err == nil {
				for rows.Next() {
					n++
				}
				err = rows.Err()
			}
			var pe *pgconn.PgError
			switch {
			case tt.wantCode != "" && (!errors.As(err, &pe) || pe.Code != tt.wantCode):
				t.Fatalf("err = %v, want SQLSTATE %s", err, tt.wantCode)
			case tt.wantCode == "" && (err != nil || n != tt.wantRows):
				t.Fatalf("%d rows, %v; want %d", n, err, tt.wantRows)
			}
		})
	}
}

// A batch whose next revision a filler row already holds fails, and the
// store runs its Txns on the general path, which steps over the filler.
func TestKubernetesWriteStepsOverFiller(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	next := fillNextRevision(t, pool)
	key := []byte("/filled")
	res, err := s.Txn(ctx, store.TxnRequest{
		If:   []store.Compare{{Key: key, Target: store.CompareModRevision, Result: store.ResultEqual}},
		Then: []store.Op{store.OpPutKey(key, []byte("v"))},
	})
	if err != nil || !res.Succeeded || res.Revision <= next {
		t.Fatalf("create after the filler: %+v, %v; want it written above %d", res, err, next)
	}
}

package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/wait"
)

// occupyTxnWorkers runs Txns putting /busy, whose lock it holds, until
// every Txn worker waits for it, so later Txns queue; release lets them go.
func occupyTxnWorkers(t *testing.T, s *store.Store, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	return occupyWorkers(t, pool, store.TxnWorkers, func(ctx context.Context) error {
		_, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{store.OpPutKey([]byte("/busy"), []byte("x"))}})
		return err
	})
}

type txnResult struct {
	name string
	res  store.TxnResponse
	err  error
}

// queueTxns starts each Txn and waits until all of them queue.
func queueTxns(t *testing.T, s *store.Store, reqs map[string]store.TxnRequest) <-chan txnResult {
	t.Helper()
	ctx := testContext(t)
	out := make(chan txnResult, len(reqs))
	for name, req := range reqs {
		go func() {
			res, err := s.Txn(ctx, req)
			out <- txnResult{name, res, err}
		}()
	}
	wait.For(t, "every Txn to be queued", func() bool { return store.QueuedTxns(s) == len(reqs) })
	return out
}

// Txns of Kubernetes' shapes queued together share one transaction, each at
// a revision of its own, and answer as each would alone; one naming a key
// another of the batch names runs after it, alone.
func TestQueuedTxnsShareOneTransaction(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	for _, k := range []string{"/t/update", "/t/stale", "/t/delete", "/t/twice", "/t/mixed/old"} {
		mustPut(t, s, k, "old")
	}
	kv := func(k string) store.KeyValue {
		t.Helper()
		kv, _, err := s.Get(ctx, []byte(k), 0)
		if err != nil {
			t.Fatal(err)
		}
		return kv
	}
	modIs := func(k string, rev int64) []store.Compare {
		return []store.Compare{{Key: []byte(k), Target: store.CompareModRevision, Result: store.ResultEqual, Number: rev}}
	}
	get := func(k string) store.Op { return store.OpGet(store.Key([]byte(k)), 0) }
	put := func(k, v string) store.Op { return store.OpPutKey([]byte(k), []byte(v)) }
	del := store.Op{Kind: store.OpDelete, Range: store.Key([]byte("/t/delete")), PrevKV: true}
	reqs := map[string]store.TxnRequest{
		"update": {If: modIs("/t/update", kv("/t/update").ModRevision), Then: []store.Op{put("/t/update", "new")}, Else: []store.Op{get("/t/update")}},
		"stale":  {If: modIs("/t/stale", 1), Then: []store.Op{put("/t/stale", "new")}, Else: []store.Op{get("/t/stale")}},
		"delete": {If: modIs("/t/delete", kv("/t/delete").ModRevision), Then: []store.Op{del}, Else: []store.Op{get("/t/delete")}},
		"two":    {Then: []store.Op{get("/t/two/c"), put("/t/two/a", "1"), put("/t/two/b", "2")}},
		"keep":   {Then: []store.Op{{Kind: store.OpPut, Range: store.Key([]byte("/t/none")), IgnoreValue: true}}},
		"gone":   {Then: []store.Op{store.OpDeleteRange(store.Key([]byte("/t/gone")))}},
		"mixed":  {Then: []store.Op{store.OpDeleteRange(store.Key([]byte("/t/mixed/old"))), put("/t/mixed/new", "v")}},
		"twice1": {Then: []store.Op{put("/t/twice", "1")}},
		"twice2": {Then: []store.Op{put("/t/twice", "2")}},
	}
	for i := range 5 {
		k := fmt.Sprintf("/t/create/\x00\xff%d", i) // not UTF-8
		reqs["create"+k] = store.TxnRequest{If: modIs(k, 0), Then: []store.Op{put(k, "v")}}
	}
	before, _, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release := occupyTxnWorkers(t, s, pool)
	results := queueTxns(t, s, reqs)
	release()
	got := map[string]txnResult{}
	for range reqs {
		r := <-results
		got[r.name] = r
	}
	revs := map[int64]string{}
	for name, r := range got {
		if name == "keep" {
			if !errors.Is(r.err, store.ErrKeyNotFound) {
				t.Errorf("put keeping the value of a missing key: %v; want ErrKeyNotFound", r.err)
			}
			continue
		}
		if r.err != nil {
			t.Fatalf("%s: %v", name, r.err)
		}
		if name == "stale" || name == "gone" {
			continue
		}
		if other, ok := revs[r.res.Revision]; ok {
			t.Errorf("%s and %s both at revision %d", name, other, r.res.Revision)
		}
		revs[r.res.Revision] = name
	}
	if r := got["update"]; !r.res.Succeeded || kv("/t/update").ModRevision != r.res.Revision || r.res.Responses[0].Put.Revision != r.res.Revision {
		t.Errorf("update = %+v; /t/update = %+v", r.res, kv("/t/update"))
	}
	if r := got["stale"].res; r.Succeeded || len(r.Responses[0].Range.KVs) != 1 || string(r.Responses[0].Range.KVs[0].Value) != "old" ||
		r.Revision < kv("/t/stale").ModRevision {
		t.Errorf("stale update = %+v; want the else branch's read of /t/stale", r)
	}
	if r := got["delete"].res; !r.Succeeded || r.Responses[0].Delete.Deleted != 1 || len(r.Responses[0].Delete.PrevKVs) != 1 ||
		string(r.Responses[0].Delete.PrevKVs[0].Value) != "old" || r.Responses[0].Delete.Revision != r.Revision {
		t.Errorf("delete = %+v", r)
	}
	if _, ok, _ := s.Get(ctx, []byte("/t/delete"), 0); ok {
		t.Error("/t/delete is still there")
	}
	two := got["two"].res
	for _, k := range []string{"/t/two/a", "/t/two/b"} {
		if kv(k).ModRevision != two.Revision {
			t.Errorf("%s = %+v; want written at %d", k, kv(k), two.Revision)
		}
	}
	if r := two.Responses[0].Range; r == nil || len(r.KVs) != 0 {
		t.Errorf("two's read of /t/two/c = %+v; want nothing", r)
	}
	if r := got["gone"].res; r.Responses[0].Delete.Deleted != 0 || r.Revision < two.Revision {
		t.Errorf("delete of a missing key = %+v; want nothing deleted, at the batch's revision or above", r)
	}
	// A delete and a put: one revision, rows at sub 0 and 1.
	mixed := got["mixed"].res
	var subs []int
	if err := pool.QueryRow(ctx, "select array_agg(sub order by key) from walwatch.kv where revision = $1", mixed.Revision).Scan(&subs); err != nil ||
		len(subs) != 2 || subs[0] != 1 || subs[1] != 0 || mixed.Responses[0].Delete.Deleted != 1 {
		t.Errorf("mixed = %+v; rows at its revision have subs %v (%v); want the new key at 1, the old at 0", mixed, subs, err)
	}
	if v := kv("/t/twice"); v.Version != 3 {
		t.Errorf("/t/twice = %+v; want version 3, put by both", v)
	}
	// Everything but the second Txn on /t/twice and Kubernetes' writes (the
	// update and the creates) in one transaction; those in another, of
	// walwatch.cas_batch.
	for _, c := range []struct{ what, where string }{
		{"the batch", "key not in ('/t/twice', '/t/update') and not (key >= '/t/create/' and key < '/t/create0')"},
		{"Kubernetes' writes", "(key = '/t/update' or key >= '/t/create/' and key < '/t/create0')"},
	} {
		var txns int
		if err := pool.QueryRow(ctx, `select count(distinct xmin::text) from walwatch.kv
			where key >= '/t/' and key < '/t0' and revision > $1 and `+c.where, before).Scan(&txns); err != nil {
			t.Fatal(err)
		}
		if txns != 1 {
			t.Errorf("%s wrote in %d transactions; want 1", c.what, txns)
		}
	}
}

// A Txn whose write PostgreSQL refuses fails alone: the batch is rolled
// back and each of its Txns runs again on its own.
func TestBatchedTxnFailsAlone(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	reqs := map[string]store.TxnRequest{
		"a":     {Then: []store.Op{store.OpPutKey([]byte("/f/a"), []byte("1"))}},
		"lease": {Then: []store.Op{{Kind: store.OpPut, Range: store.Key([]byte("/f/lease")), Value: []byte("x"), Lease: 12345}}},
		"b":     {Then: []store.Op{store.OpPutKey([]byte("/f/b"), []byte("2"))}},
	}
	release := occupyTxnWorkers(t, s, pool)
	results := queueTxns(t, s, reqs)
	release()
	for range reqs {
		r := <-results
		switch {
		case r.name == "lease" && !errors.Is(r.err, store.ErrLeaseNotFound):
			t.Errorf("put under a missing lease: %v; want ErrLeaseNotFound", r.err)
		case r.name != "lease" && r.err != nil:
			t.Errorf("%s failed beside the put under a missing lease: %v", r.name, r.err)
		}
	}
	for _, k := range []string{"/f/a", "/f/b"} {
		if v, ok, err := s.Get(ctx, []byte(k), 0); err != nil || !ok || !bytes.Equal(v.Key, []byte(k)) {
			t.Errorf("%s = %+v, %v, %v; want it written", k, v, ok, err)
		}
	}
}

// A batch whose connection is lost after its commit went out may have
// committed: every Txn of it fails as unavailable, and none runs again, as
// a Txn alone would not.
func TestBatchLostAfterCommitFailsEveryTxn(t *testing.T) {
	s, admin, commits := newStoreAwaitingStandby(t)
	ctx := testContext(t)

	// Lone Txns hold every worker, each in its commit, so the next queue.
	lone := make(chan error, store.TxnWorkers)
	for i := range store.TxnWorkers {
		go func() {
			_, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{store.OpPutKey(fmt.Appendf(nil, "/lone/%d", i), []byte("x"))}})
			lone <- err
		}()
	}
	commits.await(store.TxnWorkers)
	results := queueTxns(t, s, map[string]store.TxnRequest{
		"put": {Then: []store.Op{store.OpPutKey([]byte("/l/put"), []byte("1"))}},
		"create": {
			If:   []store.Compare{{Key: []byte("/l/create"), Target: store.CompareModRevision, Result: store.ResultEqual}},
			Then: []store.Op{store.OpPutKey([]byte("/l/create"), []byte("2"))},
		},
		"read": {Then: []store.Op{store.OpGet(store.Key([]byte("/l/missing")), 0)}},
		// Fails on its own, before the commit: it keeps its own error.
		"keep": {Then: []store.Op{{Kind: store.OpPut, Range: store.Key([]byte("/l/\xff\x00missing")), IgnoreValue: true}}},
	})
	commits.end()
	for range store.TxnWorkers {
		if err := <-lone; !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("a lone Txn whose commit was cut off: %v; want ErrUnavailable", err)
		}
	}
	// The queued Txns go out together and wait in their commit in turn:
	// Kubernetes' create first (walwatch.cas_batch), then the others.
	for range 2 {
		commits.await(1)
		commits.end()
	}
	for range 4 {
		r := <-results
		switch {
		case r.name == "keep" && !errors.Is(r.err, store.ErrKeyNotFound):
			t.Errorf("a put keeping the value of a missing key, in a batch whose commit was cut off: %v; want ErrKeyNotFound", r.err)
		case r.name != "keep" && !errors.Is(r.err, store.ErrUnavailable):
			t.Errorf("%s, in a batch whose commit was cut off: %+v, %v; want ErrUnavailable", r.name, r.res, r.err)
		}
	}
	// Committed once each: nothing of the batch ran again.
	var rows, xids int
	err := admin.QueryRow(ctx, "select count(*), count(distinct xmin::text) from walwatch.kv where key in ($1, $2)",
		[]byte("/l/put"), []byte("/l/create")).Scan(&rows, &xids)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 2 || xids != 2 {
		t.Errorf("the batch's writes: %d rows in %d transactions; want 2 in 2", rows, xids)
	}
}

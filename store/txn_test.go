package store_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
)

func TestTxn(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	mustPut(t, s, "/cfg", "v1") // 2: created at 2, version 1
	mustPut(t, s, "/cfg", "v2") // 3: version 2
	cfg := []byte("/cfg")
	put := func(k, v string) store.Op { return store.OpPutKey([]byte(k), []byte(v)) }
	tests := []struct {
		name      string
		cmp       store.Compare
		succeeded bool
	}{
		{"value equal", store.Compare{Key: cfg, Target: store.CompareValue, Result: store.ResultEqual, Value: []byte("v2")}, true},
		{"value equal fails", store.Compare{Key: cfg, Target: store.CompareValue, Result: store.ResultEqual, Value: []byte("v1")}, false},
		{"value not equal", store.Compare{Key: cfg, Target: store.CompareValue, Result: store.ResultNotEqual, Value: []byte("v1")}, true},
		{"value greater", store.Compare{Key: cfg, Target: store.CompareValue, Result: store.ResultGreater, Value: []byte("v1")}, true},
		{"value of missing key never holds", store.Compare{Key: []byte("/nope"), Target: store.CompareValue, Result: store.ResultNotEqual, Value: []byte("x")}, false},
		{"version equal", store.Compare{Key: cfg, Target: store.CompareVersion, Result: store.ResultEqual, Number: 2}, true},
		{"version less", store.Compare{Key: cfg, Target: store.CompareVersion, Result: store.ResultLess, Number: 2}, false},
		{"missing key has version 0", store.Compare{Key: []byte("/nope"), Target: store.CompareVersion, Result: store.ResultEqual, Number: 0}, true},
		{"create revision equal", store.Compare{Key: cfg, Target: store.CompareCreateRevision, Result: store.ResultEqual, Number: 2}, true},
		{"create revision greater fails", store.Compare{Key: cfg, Target: store.CompareCreateRevision, Result: store.ResultGreater, Number: 2}, false},
		{"mod revision equal", store.Compare{Key: cfg, Target: store.CompareModRevision, Result: store.ResultEqual, Number: 3}, true},
		{"mod revision less", store.Compare{Key: cfg, Target: store.CompareModRevision, Result: store.ResultLess, Number: 4}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _, _ := s.Revision(testContext(t))
			// Read-only branches: no revision either way.
			res, err := s.Txn(testContext(t), store.TxnRequest{
				If:   []store.Compare{tt.cmp},
				Then: []store.Op{store.OpGet(store.Key(cfg), 0)},
				Else: []store.Op{store.OpGet(store.Key([]byte("/nope")), 0)},
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Succeeded != tt.succeeded || res.Revision != before || len(res.Responses) != 1 || res.Responses[0].Range == nil {
				t.Fatalf("txn = %+v, want succeeded=%v at revision %d with one range response", res, tt.succeeded, before)
			}
			if wantKVs := map[bool]int{true: 1, false: 0}[tt.succeeded]; len(res.Responses[0].Range.KVs) != wantKVs {
				t.Fatalf("branch read %d keys, want %d", len(res.Responses[0].Range.KVs), wantKVs)
			}
		})
	}

	t.Run("writes share one revision", func(t *testing.T) {
		ctx := testContext(t)
		res, err := s.Txn(ctx, store.TxnRequest{
			If:   []store.Compare{{Key: cfg, Target: store.CompareModRevision, Result: store.ResultEqual, Number: 3}},
			Then: []store.Op{put("/t/a", "1"), store.OpDeleteRange(store.Key(cfg)), put("/t/b", "2"), store.OpGet(store.Prefix([]byte("/t/")), 0)},
			Else: []store.Op{put("/t/else", "x")},
		})
		if err != nil || !res.Succeeded || res.Revision != 4 {
			t.Fatalf("txn = %+v, %v; want succeeded at revision 4", res, err)
		}
		if got := kvs(*res.Responses[3].Range); !slices.Equal(got, []string{"/t/a=1@4/4/1", "/t/b=2@4/4/1"}) {
			t.Fatalf("range inside txn saw %q", got)
		}
		all, err := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0})})
		if err != nil || !slices.Equal(kvs(all), []string{"/t/a=1@4/4/1", "/t/b=2@4/4/1"}) {
			t.Fatalf("after txn: %q, %v", kvs(all), err)
		}
	})

	t.Run("failed compare runs else", func(t *testing.T) {
		ctx := testContext(t)
		res, err := s.Txn(ctx, store.TxnRequest{
			If:   []store.Compare{{Key: []byte("/t/a"), Target: store.CompareVersion, Result: store.ResultGreater, Number: 5}},
			Then: []store.Op{put("/t/then", "x")},
			Else: []store.Op{put("/t/a", "again")},
		})
		if err != nil || res.Succeeded || res.Revision != 5 {
			t.Fatalf("txn = %+v, %v; want else branch at revision 5", res, err)
		}
		kv, ok, err := s.Get(ctx, []byte("/t/a"), 0)
		if err != nil || !ok || kv.Version != 2 || string(kv.Value) != "again" {
			t.Fatalf("/t/a = %+v ok=%v err=%v", kv, ok, err)
		}
		if _, ok, _ := s.Get(ctx, []byte("/t/then"), 0); ok {
			t.Fatal("then branch wrote")
		}
	})

	// A delete before the Txn's first write is answered from begin's read.
	t.Run("a delete first shares the revision with the writes after it", func(t *testing.T) {
		ctx := testContext(t)
		mustPut(t, s, "/cfg", "v3") // 6
		res, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{
			{Kind: store.OpDelete, Range: store.Key(cfg), PrevKV: true}, put("/t/c", "3"),
		}})
		if err != nil || !res.Succeeded || res.Revision != 7 {
			t.Fatalf("txn = %+v, %v; want succeeded at revision 7", res, err)
		}
		d := res.Responses[0].Delete
		if d == nil || d.Deleted != 1 || d.Revision != 7 || len(d.PrevKVs) != 1 || kvs(store.RangeResponse{KVs: d.PrevKVs})[0] != "/cfg=v3@6/6/1" {
			t.Fatalf("delete = %+v; want /cfg=v3 deleted at 7", d)
		}
		all, err := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0})})
		if err != nil || !slices.Equal(kvs(all), []string{"/t/a=again@5/4/2", "/t/b=2@4/4/1", "/t/c=3@7/7/1"}) {
			t.Fatalf("after txn: %q, %v", kvs(all), err)
		}
	})
}

// roundTrips counts the statements and batches a connection sends: each
// is one round trip to PostgreSQL once its statements are prepared.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// A Txn begins with its locks and its compares' reads in one round trip,
// commits with its last statement, and answers a read of a key it compared
// from what begin read: two round trips, not five and six. Kubernetes'
// writes (compare a key's mod revision, then put or delete it, else read
// it) take one, walwatch.cas_batch, whether the compare holds or not.
func TestTxnRoundTrips(t *testing.T) {
	ctx := testContext(t)
	trips := &roundTrips{}
	s, _ := newStoreWith(t, store.Limits{}, func(cfg *pgxpool.Config) { cfg.ConnConfig.Tracer = trips })
	key := []byte("/k8s/\x00\xffpod")
	modIs := func(rev int64) store.Compare {
		return store.Compare{Key: key, Target: store.CompareModRevision, Result: store.ResultEqual, Number: rev}
	}
	update := func(rev int64) store.TxnRequest {
		return store.TxnRequest{
			If:   []store.Compare{modIs(rev)},
			Then: []store.Op{store.OpPutKey(key, []byte("v"))},
			Else: []store.Op{store.OpGet(store.Key(key), 0)},
		}
	}
	run := func(req store.TxnRequest) store.TxnResponse {
		t.Helper()
		res, err := s.Txn(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// Once each, so that every statement is prepared before counting.
	run(update(0))
	run(update(0))
	run(store.TxnRequest{Then: []store.Op{store.OpGet(store.Key(key), 0)}})
	run(store.TxnRequest{Then: []store.Op{store.OpDeleteRange(store.Key(key))}})
	run(update(0))

	// Kubernetes' delete.
	del := func(rev int64) store.TxnRequest {
		return store.TxnRequest{
			If:   []store.Compare{modIs(rev)},
			Then: []store.Op{store.OpDeleteRange(store.Key(key))},
			Else: []store.Op{store.OpGet(store.Key(key), 0)},
		}
	}
	then := func(ops ...store.Op) store.TxnRequest { return store.TxnRequest{Then: ops} }
	fixed := func(req store.TxnRequest) func(int64) store.TxnRequest {
		return func(int64) store.TxnRequest { return req }
	}
	withPrev := store.Op{Kind: store.OpPut, Range: store.Key(key), Value: []byte("w"), PrevKV: true}
	keepValue := store.Op{Kind: store.OpPut, Range: store.Key(key), IgnoreValue: true}
	delPrev := store.Op{Kind: store.OpDelete, Range: store.Key(key), PrevKV: true}
	// Each case runs on the key as the cases before it left it.
	tests := []struct {
		name      string
		req       func(cur int64) store.TxnRequest // cur: the key's mod revision
		succeeded bool
		deleted   int64
		trips     int64
	}{
		{"update whose compare holds", update, true, 0, 1},
		{"update whose compare fails", fixed(update(1)), false, 0, 1},
		{"create of a key that exists", fixed(update(0)), false, 0, 1},
		{"read alone", fixed(then(store.OpGet(store.Key(key), 0))), true, 0, 3},
		{"put with the previous value", fixed(then(withPrev)), true, 0, 2},
		{"put keeping the value", fixed(then(keepValue)), true, 0, 2},
		{"delete whose compare fails", fixed(del(1)), false, 0, 1},
		{"delete whose compare holds", del, true, 1, 1},
		{"delete of a key that is gone", fixed(then(delPrev)), true, 0, 2},
		{"create", fixed(update(0)), true, 0, 1},
		{"delete with the previous value", fixed(then(delPrev)), true, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev, _, err := s.Get(ctx, key, 0)
			if err != nil {
				t.Fatal(err)
			}
			req := tt.req(prev.ModRevision)
			before := trips.n.Load()
			res, err := s.Txn(ctx, req)
			if err != nil || res.Succeeded != tt.succeeded {
				t.Fatalf("txn = %+v, %v; want succeeded=%v", res, err, tt.succeeded)
			}
			if got := trips.n.Load() - before; got != tt.trips {
				t.Errorf("%d round trips, want %d", got, tt.trips)
			}
			if !tt.succeeded {
				kv, _, err := s.Get(ctx, key, 0)
				if r := res.Responses[0].Range; err != nil || r == nil || len(r.KVs) != 1 || r.KVs[0].ModRevision != kv.ModRevision ||
					r.KVs[0].Version != kv.Version || !bytes.Equal(r.KVs[0].Value, kv.Value) || !bytes.Equal(r.KVs[0].Key, key) {
					t.Fatalf("the else branch read %+v; want %+v (%v)", res.Responses[0].Range, kv, err)
				}
			}
			if put := res.Responses[0].Put; put != nil {
				kv, ok, err := s.Get(ctx, key, 0)
				if err != nil || !ok || kv.ModRevision != res.Revision {
					t.Fatalf("%q = %+v, %v, %v; want it written at %d", key, kv, ok, err, res.Revision)
				}
				op := req.Then[0]
				if op.PrevKV && (put.PrevKV == nil || put.PrevKV.ModRevision != prev.ModRevision || !bytes.Equal(put.PrevKV.Value, prev.Value)) {
					t.Errorf("previous value %+v; want %+v", put.PrevKV, prev)
				}
				if op.IgnoreValue && !bytes.Equal(kv.Value, prev.Value) {
					t.Errorf("value %q after a put keeping it; want %q", kv.Value, prev.Value)
				}
			}
			if d := res.Responses[0].Delete; d != nil {
				if d.Deleted != tt.deleted {
					t.Fatalf("deleted %d; want %d", d.Deleted, tt.deleted)
				}
				if _, ok, err := s.Get(ctx, key, 0); err != nil || ok {
					t.Fatalf("%q after the delete: ok=%v, %v; want it absent", key, ok, err)
				}
				if tt.deleted > 0 && res.Revision <= prev.ModRevision {
					t.Errorf("deleted at revision %d; want above %d", res.Revision, prev.ModRevision)
				}
				var want []store.KeyValue
				if req.Then[0].PrevKV && tt.deleted > 0 {
					want = []store.KeyValue{prev}
				}
				if len(d.PrevKVs) != len(want) || len(want) > 0 && (d.PrevKVs[0].ModRevision != prev.ModRevision ||
					!bytes.Equal(d.PrevKVs[0].Value, prev.Value) || !bytes.Equal(d.PrevKVs[0].Key, key)) {
					t.Errorf("previous values %+v; want %+v", d.PrevKVs, want)
				}
			}
		})
	}
}

// A Txn whose last put fails, taking the commit along, writes nothing: the
// puts before it are rolled back, and the connection serves the next Txn.
func TestTxnLastPutFails(t *testing.T) {
	ctx := testContext(t)
	// One connection: the next Txn runs on the same one, or on a new one.
	s, _ := newStoreWith(t, store.Limits{}, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	before, _, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Txn(ctx, store.TxnRequest{Then: []store.Op{
		store.OpPutKey([]byte("/first"), []byte("1")),
		{Kind: store.OpPut, Range: store.Key([]byte("/second")), Value: []byte("2"), Lease: 12345},
	}})
	if !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("txn with a put under a missing lease: %v; want ErrLeaseNotFound", err)
	}
	if _, ok, err := s.Get(ctx, []byte("/first"), 0); err != nil || ok {
		t.Fatalf("/first after the failed txn: ok=%v, %v; want it absent", ok, err)
	}
	res, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{store.OpPutKey([]byte("/third"), []byte("3"))}})
	if err != nil || res.Revision <= before {
		t.Fatalf("the next txn = %+v, %v; want a write above %d", res, err, before)
	}
	if kv, ok, err := s.Get(ctx, []byte("/third"), 0); err != nil || !ok || kv.ModRevision != res.Revision {
		t.Fatalf("/third = %+v, %v, %v; want it written at %d", kv, ok, err, res.Revision)
	}
}

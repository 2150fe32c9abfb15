package store_test

import (
	"slices"
	"testing"

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
}

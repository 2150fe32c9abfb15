package etcdapi

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// keysOf lists the keys of kvs, for comparing.
func keysOf(kvs []*mvccpb.KeyValue) string {
	var ks []string
	for _, kv := range kvs {
		ks = append(ks, string(kv.Key))
	}
	return strings.Join(ks, ",")
}

// mustPut puts and returns the revision.
func mustPut(t *testing.T, c *clientv3.Client, key, value string) int64 {
	t.Helper()
	res, err := c.Put(callCtx(t), key, value)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return res.Header.Revision
}

func TestRevisionsCountAsEtcds(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	res, err := c.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	h := res.Header
	if h.Revision != 1 || h.ClusterId == 0 || h.MemberId == 0 || h.RaftTerm < 1 {
		t.Fatalf("empty store's header %+v: want revision 1, ids set, raft_term >= 1", h)
	}
	if rev := mustPut(t, c, "a", "1"); rev != 2 {
		t.Fatalf("first put at %d, want 2", rev)
	}
	// A delete of nothing, a read-only Txn and a failed compare with no
	// writes take no revision.
	d, err := c.Delete(ctx, "nothing")
	if err != nil || d.Deleted != 0 || d.Header.Revision != 2 {
		t.Fatalf("delete of nothing: %+v, %v", d, err)
	}
	tx, err := c.Txn(ctx).Then(clientv3.OpGet("a")).Commit()
	if err != nil || tx.Header.Revision != 2 {
		t.Fatalf("read-only txn: %+v, %v", tx, err)
	}
	tx, err = c.Txn(ctx).If(clientv3.Compare(clientv3.Value("a"), "=", "no")).Then(clientv3.OpPut("b", "x")).Commit()
	if err != nil || tx.Succeeded || tx.Header.Revision != 2 {
		t.Fatalf("failed compare: %+v, %v", tx, err)
	}
	// One revision for a Txn's writes.
	tx, err = c.Txn(ctx).Then(clientv3.OpPut("b", "1"), clientv3.OpPut("c", "1"), clientv3.OpDelete("a")).Commit()
	if err != nil || tx.Header.Revision != 3 {
		t.Fatalf("txn of three writes: %+v, %v", tx, err)
	}
	for i, r := range tx.Responses {
		var rev int64
		switch {
		case r.GetResponsePut() != nil:
			rev = r.GetResponsePut().Header.Revision
		case r.GetResponseDeleteRange() != nil:
			rev = r.GetResponseDeleteRange().Header.Revision
		}
		if rev != 3 {
			t.Errorf("op %d reports revision %d, want 3", i, rev)
		}
	}
	// A read at an old revision answers with the current one in its header.
	old, err := c.Get(ctx, "a", clientv3.WithRev(2))
	if err != nil || old.Header.Revision != 3 || len(old.Kvs) != 1 || string(old.Kvs[0].Value) != "1" {
		t.Fatalf("get a at 2: %+v, %v", old, err)
	}
	// Header IDs are stable.
	if old.Header.ClusterId != h.ClusterId || old.Header.MemberId != h.MemberId {
		t.Fatalf("ids changed: %+v then %+v", h, old.Header)
	}
}

func TestRange(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	// /r/a v1 (rev 2), /r/b v3 (3, 4, 5), /r/c v2 (6, 7), /s (8), with
	// values so that value order differs from key order.
	for _, kv := range [][2]string{{"/r/a", "z"}, {"/r/b", "1"}, {"/r/b", "2"}, {"/r/b", "y"}, {"/r/c", "1"}, {"/r/c", "m"}, {"/s", "s"}} {
		mustPut(t, c, kv[0], kv[1])
	}
	tests := []struct {
		name  string
		key   string
		opts  []clientv3.OpOption
		keys  string
		more  bool
		count int64
	}{
		{"one key", "/r/b", nil, "/r/b", false, 1},
		{"missing key", "/r/x", nil, "", false, 0},
		{"prefix", "/r/", []clientv3.OpOption{clientv3.WithPrefix()}, "/r/a,/r/b,/r/c", false, 3},
		{"from key", "/r/b", []clientv3.OpOption{clientv3.WithFromKey()}, "/r/b,/r/c,/s", false, 3},
		{"range end", "/r/a", []clientv3.OpOption{clientv3.WithRange("/r/c")}, "/r/a,/r/b", false, 2},
		{"limit", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(2)}, "/r/a,/r/b", true, 3},
		{"limit of all", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(3)}, "/r/a,/r/b,/r/c", false, 3},
		{"at revision", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(4)}, "/r/a,/r/b", false, 2},
		{"at revision, limit", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(4), clientv3.WithLimit(1)}, "/r/a", true, 2},
		{"count only at revision", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(4), clientv3.WithCountOnly()}, "", false, 2},
		{"one key at revision", "/r/b", []clientv3.OpOption{clientv3.WithRev(4)}, "/r/b", false, 1},
		{"key descending", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}, "/r/c,/r/b,/r/a", false, 3},
		{"version ascending", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByVersion, clientv3.SortAscend)}, "/r/a,/r/c,/r/b", false, 3},
		{"version, no order: ascending", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByVersion, clientv3.SortNone)}, "/r/a,/r/c,/r/b", false, 3},
		{"create descending", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend)}, "/r/c,/r/b,/r/a", false, 3},
		{"mod descending", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend)}, "/r/c,/r/b,/r/a", false, 3},
		{"value ascending", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortAscend)}, "/r/c,/r/b,/r/a", false, 3},
		{"value descending, limit", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortDescend), clientv3.WithLimit(1)}, "/r/a", true, 3},
		{"min mod revision", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMinModRev(5)}, "/r/b,/r/c", false, 3},
		{"max mod revision", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMaxModRev(5)}, "/r/a,/r/b", false, 3},
		{"min create revision", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMinCreateRev(3)}, "/r/b,/r/c", false, 3},
		{"max create revision", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMaxCreateRev(3)}, "/r/a,/r/b", false, 3},
		{"serializable", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSerializable()}, "/r/a,/r/b,/r/c", false, 3},
		{"count only", "/r/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}, "", false, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Get(callCtx(t), tt.key, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if got := keysOf(res.Kvs); got != tt.keys || res.More != tt.more || res.Count != tt.count {
				t.Fatalf("got %s more=%v count=%d, want %s more=%v count=%d", got, res.More, res.Count, tt.keys, tt.more, tt.count)
			}
			if res.Header.Revision != 8 {
				t.Fatalf("header revision %d, want 8", res.Header.Revision)
			}
		})
	}

	res, err := c.Get(callCtx(t), "/r/b", clientv3.WithKeysOnly())
	if err != nil || len(res.Kvs) != 1 || res.Kvs[0].Value != nil || res.Kvs[0].Version != 3 || res.Kvs[0].CreateRevision != 3 || res.Kvs[0].ModRevision != 5 {
		t.Fatalf("keys only: %+v, %v", res, err)
	}
}

func TestRangeStream(t *testing.T) {
	e := newEnv(t)
	for i := range 50 {
		mustPut(t, e.etcd, fmt.Sprintf("/k/%02d", i), strings.Repeat("v", 100))
	}
	kv := pb.NewKVClient(e.etcd.ActiveConnection())
	for _, limit := range []int64{0, 7, 50} {
		stream, err := kv.RangeStream(callCtx(t), &pb.RangeRequest{Key: []byte("/k/"), RangeEnd: []byte("/k0"), Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		var all pb.RangeResponse
		chunks := 0
		for {
			r, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			chunks++
			all.Kvs = append(all.Kvs, r.RangeResponse.Kvs...)
			if r.RangeResponse.Header != nil {
				all.Header, all.More, all.Count = r.RangeResponse.Header, r.RangeResponse.More, r.RangeResponse.Count
			}
		}
		want := int64(50)
		if limit > 0 {
			want = limit
		}
		if int64(len(all.Kvs)) != want || all.Count != 50 || all.More != (want < 50) || all.Header.GetRevision() != 51 || want > initialStreamChunk && chunks < 2 {
			t.Fatalf("limit %d: %d keys in %d chunks, count %d, more %v, header %v", limit, len(all.Kvs), chunks, all.Count, all.More, all.Header)
		}
		for i, kv := range all.Kvs {
			if string(kv.Key) != fmt.Sprintf("/k/%02d", i) {
				t.Fatalf("key %d is %s", i, kv.Key)
			}
		}
	}
	stream, err := kv.RangeStream(callCtx(t), &pb.RangeRequest{Key: []byte("/k/"), SortOrder: pb.RangeRequest_DESCEND})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("sorted RangeStream: %v, want Unimplemented", err)
	}
}

func TestPut(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	res, err := c.Put(ctx, "k", "v1", clientv3.WithPrevKV())
	if err != nil || res.PrevKv != nil {
		t.Fatalf("first put with prev_kv: %+v, %v", res, err)
	}
	res, err = c.Put(ctx, "k", "v2", clientv3.WithPrevKV())
	if err != nil || res.PrevKv == nil || string(res.PrevKv.Value) != "v1" || res.PrevKv.ModRevision != 2 || res.PrevKv.Version != 1 {
		t.Fatalf("second put with prev_kv: %+v, %v", res, err)
	}
	if _, err := c.Put(ctx, "k", "", clientv3.WithIgnoreValue()); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "k")
	if err != nil || string(got.Kvs[0].Value) != "v2" || got.Kvs[0].Version != 3 {
		t.Fatalf("after ignore_value: %+v, %v", got, err)
	}
	if _, err := c.Put(ctx, "k", "v4", clientv3.WithIgnoreLease()); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"empty key", func() error { _, err := c.Put(ctx, "", "v"); return err }, rpctypes.ErrEmptyKey},
		{"ignore_value without key", func() error { _, err := c.Put(ctx, "none", "", clientv3.WithIgnoreValue()); return err }, rpctypes.ErrKeyNotFound},
		{"ignore_lease without key", func() error { _, err := c.Put(ctx, "none", "v", clientv3.WithIgnoreLease()); return err }, rpctypes.ErrKeyNotFound},
		{"ignore_value with a value", func() error { _, err := c.Put(ctx, "k", "v", clientv3.WithIgnoreValue()); return err }, rpctypes.ErrValueProvided},
		{"ignore_lease with a lease", func() error {
			_, err := c.Do(ctx, clientv3.OpPut("k", "v", clientv3.WithIgnoreLease(), clientv3.WithLease(5)))
			return err
		}, rpctypes.ErrLeaseProvided},
		{"unknown lease", func() error { _, err := c.Put(ctx, "k", "v", clientv3.WithLease(5)); return err }, rpctypes.ErrLeaseNotFound},
		{"request too large", func() error { _, err := c.Put(ctx, "big", strings.Repeat("x", 1600<<10)); return err }, rpctypes.ErrRequestTooLarge},
		{"empty key delete", func() error { _, err := c.Delete(ctx, ""); return err }, rpctypes.ErrEmptyKey},
		{"empty key get", func() error { _, err := c.Get(ctx, ""); return err }, rpctypes.ErrEmptyKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if cur := mustGetRevision(t, c); cur != 5 {
				t.Fatalf("revision moved to %d", cur)
			}
		})
	}
}

// mustGetRevision returns the current revision.
func mustGetRevision(t *testing.T, c *clientv3.Client) int64 {
	t.Helper()
	res, err := c.Get(callCtx(t), "\x00")
	if err != nil {
		t.Fatal(err)
	}
	return res.Header.Revision
}

func TestDeleteRange(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	for _, k := range []string{"/d/a", "/d/b", "/d/c", "/e"} {
		mustPut(t, c, k, "v"+k)
	}
	res, err := c.Delete(ctx, "/d/a", clientv3.WithPrevKV())
	if err != nil || res.Deleted != 1 || len(res.PrevKvs) != 1 || string(res.PrevKvs[0].Value) != "v/d/a" || res.Header.Revision != 6 {
		t.Fatalf("delete one: %+v, %v", res, err)
	}
	res, err = c.Delete(ctx, "/d/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil || res.Deleted != 2 || keysOf(res.PrevKvs) != "/d/b,/d/c" || res.Header.Revision != 7 {
		t.Fatalf("delete prefix: %+v, %v", res, err)
	}
	res, err = c.Delete(ctx, "/", clientv3.WithFromKey())
	if err != nil || res.Deleted != 1 || res.Header.Revision != 8 {
		t.Fatalf("delete from key: %+v, %v", res, err)
	}
}

func TestTxn(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	mustPut(t, c, "a", "1") // 2
	mustPut(t, c, "a", "2") // 3
	mustPut(t, c, "b", "1") // 4
	cmp := func(cs ...clientv3.Cmp) bool {
		t.Helper()
		res, err := c.Txn(ctx).If(cs...).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return res.Succeeded
	}
	tests := []struct {
		name string
		cmp  clientv3.Cmp
		want bool
	}{
		{"value =", clientv3.Compare(clientv3.Value("a"), "=", "2"), true},
		{"value !=", clientv3.Compare(clientv3.Value("a"), "!=", "2"), false},
		{"value <", clientv3.Compare(clientv3.Value("a"), "<", "3"), true},
		{"value >", clientv3.Compare(clientv3.Value("a"), ">", "3"), false},
		{"value of a missing key", clientv3.Compare(clientv3.Value("zz"), "!=", "x"), false},
		{"version", clientv3.Compare(clientv3.Version("a"), "=", 2), true},
		{"version of a missing key", clientv3.Compare(clientv3.Version("zz"), "=", 0), true},
		{"create", clientv3.Compare(clientv3.CreateRevision("a"), "=", 2), true},
		{"mod", clientv3.Compare(clientv3.ModRevision("a"), ">", 2), true},
		{"lease", clientv3.Compare(clientv3.LeaseValue("a"), "=", 0), true},
		{"range: every key holds", clientv3.Compare(clientv3.Version("a"), ">", 0).WithRange("c"), true},
		{"range: one key fails", clientv3.Compare(clientv3.Version("a"), ">", 1).WithRange("c"), false},
		{"prefix", clientv3.Compare(clientv3.ModRevision("a"), "<", 4).WithPrefix(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cmp(tt.cmp); got != tt.want {
				t.Fatalf("succeeded = %v, want %v", got, tt.want)
			}
		})
	}

	// Both branches, nested Txns, all ops, one revision.
	res, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Value("a"), "=", "2")).Then(
		clientv3.OpGet("a"),
		clientv3.OpPut("c", "1", clientv3.WithPrevKV()),
		clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Version("c"), "=", 0)}, // checked before the put above
			[]clientv3.Op{clientv3.OpPut("d", "1")}, []clientv3.Op{clientv3.OpPut("e", "1")}),
		clientv3.OpDelete("b", clientv3.WithPrevKV()),
		clientv3.OpGet("c"),
	).Else(clientv3.OpPut("f", "1")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if !res.Succeeded || res.Header.Revision != 5 || len(res.Responses) != 5 {
		t.Fatalf("txn: %+v", res)
	}
	r := res.Responses
	if kvs := r[0].GetResponseRange().Kvs; len(kvs) != 1 || string(kvs[0].Value) != "2" {
		t.Errorf("get a: %v", kvs)
	}
	nested := r[2].GetResponseTxn()
	if !nested.Succeeded || nested.Responses[0].GetResponsePut() == nil {
		t.Errorf("nested txn: %+v", nested)
	}
	if d := r[3].GetResponseDeleteRange(); d.Deleted != 1 || string(d.PrevKvs[0].Value) != "1" {
		t.Errorf("delete b: %+v", d)
	}
	if kvs := r[4].GetResponseRange().Kvs; len(kvs) != 1 || kvs[0].ModRevision != 5 {
		t.Errorf("get c after its put in the same txn: %v", kvs)
	}
	got, err := c.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil || keysOf(got.Kvs) != "a,c,d" {
		t.Fatalf("after the txn: %v, %v", keysOf(got.Kvs), err)
	}
	for _, kv := range got.Kvs[1:] {
		if kv.ModRevision != 5 {
			t.Errorf("%s at %d, want 5", kv.Key, kv.ModRevision)
		}
	}

	// etcd's rules for what a Txn may write and how many ops it holds.
	many := make([]clientv3.Op, 129)
	for i := range many {
		many[i] = clientv3.OpGet("a")
	}
	errTests := []struct {
		name string
		txn  clientv3.Txn
		want error
	}{
		{"a key put twice", c.Txn(ctx).Then(clientv3.OpPut("x", "1"), clientv3.OpPut("x", "2")), rpctypes.ErrDuplicateKey},
		{"a put in a deleted range", c.Txn(ctx).Then(clientv3.OpDelete("w", clientv3.WithPrefix()), clientv3.OpPut("wx", "1")), rpctypes.ErrDuplicateKey},
		{"a nested put of a key put outside", c.Txn(ctx).Then(clientv3.OpPut("x", "1"), clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("x", "2")}, nil)), rpctypes.ErrDuplicateKey},
		{"129 ops", c.Txn(ctx).Then(many...), rpctypes.ErrTooManyOps},
		{"empty compare key", c.Txn(ctx).If(clientv3.Compare(clientv3.Version(""), "=", 0)), rpctypes.ErrEmptyKey},
		{"unknown lease", c.Txn(ctx).Then(clientv3.OpPut("x", "1", clientv3.WithLease(7))), rpctypes.ErrLeaseNotFound},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.txn.Commit(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if cur := mustGetRevision(t, c); cur != 5 {
				t.Fatalf("revision moved to %d", cur)
			}
		})
	}
	// Overlapping deletes and a key put in both branches of a nested Txn
	// are allowed, as in etcd.
	if _, err := c.Txn(ctx).Then(clientv3.OpDelete("a"), clientv3.OpDelete("a", clientv3.WithPrefix()),
		clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("y", "1")}, []clientv3.Op{clientv3.OpPut("y", "2")})).Commit(); err != nil {
		t.Fatalf("overlapping deletes: %v", err)
	}
}

func TestCompact(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	for i := range 5 {
		mustPut(t, c, "k", fmt.Sprint(i)) // 2..6
	}
	if _, err := c.Compact(ctx, 4, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "k", clientv3.WithRev(3)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("read below the compacted revision: %v", err)
	}
	res, err := c.Get(ctx, "k", clientv3.WithRev(4))
	if err != nil || string(res.Kvs[0].Value) != "2" {
		t.Fatalf("read at the compacted revision: %+v, %v", res, err)
	}
	if _, err := c.Compact(ctx, 4); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("compact again: %v", err)
	}
	if _, err := c.Compact(ctx, 99); !errors.Is(err, rpctypes.ErrFutureRev) {
		t.Fatalf("compact in the future: %v", err)
	}
	if _, err := c.Get(ctx, "k", clientv3.WithRev(99)); !errors.Is(err, rpctypes.ErrFutureRev) {
		t.Fatalf("read in the future: %v", err)
	}
	var rows int
	if err := e.client.Store().Pool().QueryRow(ctx, "select count(*) from walwatch.kv where key = 'k'").Scan(&rows); err != nil || rows != 3 {
		t.Fatalf("%d rows of k after compacting at 4, want 3 (4, 5, 6): %v", rows, err)
	}
}

// TestEtcdCorners holds what a differential run against etcd v3.7.3 found
// walwatch answering differently, each now as etcd answers.
func TestEtcdCorners(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	kv := pb.NewKVClient(c.ActiveConnection())

	// Compacting at 0 before any compaction does nothing.
	if _, err := c.Compact(ctx, 0); err != nil {
		t.Fatalf("compact 0 on a fresh store: %v", err)
	}
	mustPut(t, c, "a", "1") // 2
	mustPut(t, c, "a", "2") // 3
	mustPut(t, c, "b", "1") // 4

	// A negative revision reads the current one, a negative limit is none.
	res, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), Revision: -1, Limit: -1})
	if err != nil || len(res.Kvs) != 2 || res.Header.Revision != 4 {
		t.Fatalf("negative revision and limit: %+v, %v", res, err)
	}

	// An unknown compare target compares as equal; an unknown result holds.
	for _, tt := range []struct {
		cmp  *pb.Compare
		want bool
	}{
		{&pb.Compare{Key: []byte("a"), Target: 9, Result: pb.Compare_EQUAL}, true},
		{&pb.Compare{Key: []byte("a"), Target: 9, Result: pb.Compare_GREATER}, false},
		{&pb.Compare{Key: []byte("a"), Target: pb.Compare_VERSION, Result: 9}, true},
	} {
		res, err := kv.Txn(ctx, &pb.TxnRequest{Compare: []*pb.Compare{tt.cmp}})
		if err != nil || res.Succeeded != tt.want {
			t.Errorf("compare %v: %+v, %v; want succeeded %v", tt.cmp, res, err, tt.want)
		}
	}

	// A range at an older revision inside a Txn reports the Txn's revision.
	tx, err := c.Txn(ctx).Then(clientv3.OpGet("a", clientv3.WithRev(2))).Commit()
	if err != nil || tx.Responses[0].GetResponseRange().Header.Revision != 4 || string(tx.Responses[0].GetResponseRange().Kvs[0].Value) != "1" {
		t.Fatalf("txn range at 2: %+v, %v", tx, err)
	}

	// A Txn that fails after a write takes no revision: the next write gets
	// the next one.
	for _, ops := range [][]clientv3.Op{
		{clientv3.OpPut("c", "1"), clientv3.OpPut("missing", "", clientv3.WithIgnoreValue())},
		{clientv3.OpPut("c", "1"), clientv3.OpGet("a", clientv3.WithRev(99))},
		{clientv3.OpPut("c", "1"), clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("missing", "", clientv3.WithIgnoreLease())}, nil)},
	} {
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err == nil {
			t.Fatalf("txn %v succeeded", ops)
		}
	}
	if rev := mustPut(t, c, "d", "1"); rev != 5 {
		t.Fatalf("put after failed txns at %d, want 5", rev)
	}

	// A serializable read after a write through this server sees it.
	for i := range 20 {
		rev := mustPut(t, c, "s", fmt.Sprint(i))
		res, err := c.Get(ctx, "s", clientv3.WithSerializable())
		if err != nil || res.Header.Revision < rev || string(res.Kvs[0].Value) != fmt.Sprint(i) {
			t.Fatalf("serializable read after put at %d: %+v, %v", rev, res, err)
		}
	}

	// Once compacted, compacting at 0 or below is compacted.
	if _, err := c.Compact(ctx, 3); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []int64{0, -1} {
		if _, err := c.Compact(ctx, rev); !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("compact %d: %v", rev, err)
		}
	}
}

// TestBinaryKeys: keys and values are bytes, as in etcd: NUL, 0xff and
// bytes that are not UTF-8 go in and come out as they were, in ranges too.
func TestBinaryKeys(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	keys := []string{"\x00", "b\x00\xff", "b\xff", "b\xff\xff"}
	for _, k := range keys {
		mustPut(t, c, k, "\xfe"+k)
	}
	res, err := c.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil || keysOf(res.Kvs) != strings.Join(keys, ",") {
		t.Fatalf("every key: %q, %v", keysOf(res.Kvs), err)
	}
	for _, kv := range res.Kvs {
		if string(kv.Value) != "\xfe"+string(kv.Key) {
			t.Errorf("%q = %q", kv.Key, kv.Value)
		}
	}
	// The prefix "b\xff" ends at "c", and "\xff\xff" prefixes end nowhere.
	res, err = c.Get(ctx, "b\xff", clientv3.WithPrefix())
	if err != nil || keysOf(res.Kvs) != "b\xff,b\xff\xff" {
		t.Fatalf("prefix b\\xff: %q, %v", keysOf(res.Kvs), err)
	}
	d, err := c.Delete(ctx, "b", clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil || d.Deleted != 3 || string(d.PrevKvs[0].Key) != "b\x00\xff" {
		t.Fatalf("delete prefix b: %+v, %v", d, err)
	}
}

package etcdapi

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Kubernetes' storage layer (k8s.io/apiserver's etcd3 store) is the most
// demanding user of etcd's API; these tests use its request shapes through
// clientv3.

func TestKubernetesCreateUpdateDelete(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	key := "/registry/pods/default/p"

	// Create: only if the key does not exist.
	create := func(v string) (*clientv3.TxnResponse, error) {
		return c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, v)).Commit()
	}
	res, err := create("v1")
	if err != nil || !res.Succeeded {
		t.Fatalf("create: %+v, %v", res, err)
	}
	created := res.Header.Revision
	if res, err = create("again"); err != nil || res.Succeeded {
		t.Fatalf("second create: %+v, %v", res, err)
	}

	// GuaranteedUpdate: guarded by the mod revision read; a stale one gets
	// the current object back from the Else branch.
	update := func(rev int64, v string) *clientv3.TxnResponse {
		t.Helper()
		res, err := c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, v)).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	up := update(created, "v2")
	if !up.Succeeded {
		t.Fatalf("update at the current revision failed: %+v", up)
	}
	stale := update(created, "v3")
	if stale.Succeeded {
		t.Fatal("update at a stale revision succeeded")
	}
	cur := stale.Responses[0].GetResponseRange().Kvs
	if len(cur) != 1 || cur[0].ModRevision != up.Header.Revision || string(cur[0].Value) != "v2" {
		t.Fatalf("stale update's else branch: %v", cur)
	}

	// Delete, guarded the same way.
	del, err := c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", up.Header.Revision)).
		Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
	if err != nil || !del.Succeeded || del.Responses[0].GetResponseDeleteRange().Deleted != 1 {
		t.Fatalf("delete: %+v, %v", del, err)
	}
}

func TestKubernetesPaginatedList(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	const n = 25
	for i := range n {
		mustPut(t, c, fmt.Sprintf("/registry/pods/ns/p%02d", i), "pod")
	}
	prefix := "/registry/pods/"
	end := clientv3.GetPrefixRangeEnd(prefix)
	// The first page fixes the revision; later pages read at it, while
	// writes go on, and see none of them.
	first, err := c.Get(ctx, prefix, clientv3.WithRange(end), clientv3.WithLimit(10))
	if err != nil {
		t.Fatal(err)
	}
	rev := first.Header.Revision
	if first.Count != n || !first.More {
		t.Fatalf("first page: count %d more %v", first.Count, first.More)
	}
	mustPut(t, c, "/registry/pods/ns/p00", "changed")
	mustPut(t, c, "/registry/pods/ns/p99", "new")
	seen := len(first.Kvs)
	next := string(first.Kvs[len(first.Kvs)-1].Key) + "\x00"
	for {
		page, err := c.Get(ctx, next, clientv3.WithRange(end), clientv3.WithLimit(10), clientv3.WithRev(rev))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range page.Kvs {
			if string(kv.Value) != "pod" {
				t.Fatalf("page at %d shows %s = %s", rev, kv.Key, kv.Value)
			}
		}
		seen += len(page.Kvs)
		if !page.More {
			break
		}
		next = string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
	}
	if seen != n {
		t.Fatalf("listed %d objects, want %d", seen, n)
	}
	count, err := c.Get(ctx, prefix, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil || count.Count != n+1 {
		t.Fatalf("count: %+v, %v", count, err)
	}
}

func TestKubernetesCompaction(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	for i := range 5 {
		mustPut(t, c, "/registry/k", fmt.Sprint(i))
	}
	// The compactor records its revision in a key guarded by the key's
	// version, so that one apiserver compacts, then compacts.
	const compactKey = "compact_rev_key"
	compact := func(version int64, rev int64) (int64, bool) {
		t.Helper()
		res, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Version(compactKey), "=", version)).
			Then(clientv3.OpPut(compactKey, strconv.FormatInt(rev, 10))).
			Else(clientv3.OpGet(compactKey)).Commit()
		if err != nil {
			t.Fatal(err)
		}
		if !res.Succeeded {
			return res.Responses[0].GetResponseRange().Kvs[0].Version, false
		}
		if _, err := c.Compact(ctx, rev); err != nil {
			t.Fatal(err)
		}
		return version + 1, true
	}
	v, ok := compact(0, 4)
	if !ok || v != 1 {
		t.Fatalf("first compaction: version %d, %v", v, ok)
	}
	if v, ok := compact(0, 5); ok || v != 1 {
		t.Fatalf("a second compactor with a stale version: version %d, %v", v, ok)
	}
	if _, err := c.Get(ctx, "/registry/k", clientv3.WithRev(3)); err == nil {
		t.Fatal("read below the compacted revision succeeded")
	}
}

// TestKubernetesListThenWatch lists while writes go on, then watches from
// the list's revision + 1 with prev_kv, as the apiserver's cacher does:
// every write shows up in the list or on the watch, exactly once.
func TestKubernetesListThenWatch(t *testing.T) {
	e := newEnv(t)
	c := e.etcd
	const writers, each = 4, 30
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			for i := range each {
				if _, err := c.Put(context.Background(), fmt.Sprintf("/registry/x/w%d-%02d", w, i), "1"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	close(start)
	list, err := c.Get(callCtx(t), "/registry/x/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, kv := range list.Kvs {
		seen[string(kv.Key)]++
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	wch := c.Watch(ctx, "/registry/x/", clientv3.WithPrefix(), clientv3.WithRev(list.Header.Revision+1), clientv3.WithPrevKV())
	wg.Wait()
	for len(seen) < writers*each {
		resp, ok := <-wch
		if !ok {
			t.Fatalf("watch ended with %d of %d keys", len(seen), writers*each)
		}
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Events {
			if ev.Type != mvccpb.PUT || ev.PrevKv != nil || ev.Kv.ModRevision <= list.Header.Revision {
				t.Fatalf("event %v", ev)
			}
			seen[string(ev.Kv.Key)]++
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s seen %d times", k, n)
		}
	}
}

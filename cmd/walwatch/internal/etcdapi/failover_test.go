package etcdapi

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TestFailoverHistoryChanged: a clientv3 watch open while PostgreSQL fails
// over to an asynchronous standby that missed writes the watch had already
// seen is cancelled as etcd cancels a compacted one (CompactRevision set,
// Err() ErrCompacted, a reason saying why), so the client re-lists; a Get
// then reads the new primary, and a watch from after it gets its writes.
func TestFailoverHistoryChanged(t *testing.T) {
	primary, _ := pgtest.PrivateDatabase(t, pgcluster.Options{})
	standby := pgtest.StartStandby(t, primary, pgcluster.StandbyOptions{})
	url := pgcluster.MultiHostConnString("walwatch", primary, standby) + "&connect_timeout=2"
	client, err := walwatch.Open(t.Context(), url, walwatch.WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	e := startServer(t, client)

	first := mustPut(t, e.etcd, "/k/before", "on both")
	wch := e.etcd.Watch(t.Context(), "/k/", clientv3.WithPrefix(), clientv3.WithRev(first))
	next := func(what string) clientv3.WatchResponse {
		t.Helper()
		select {
		case res, ok := <-wch:
			if !ok {
				t.Fatalf("%s: the watch channel closed", what)
			}
			return res
		case <-time.After(wait.Timeout):
			t.Fatalf("%s: nothing within %s", what, wait.Timeout)
		}
		return clientv3.WatchResponse{}
	}
	if res := next("the first event"); len(res.Events) != 1 || string(res.Events[0].Kv.Key) != "/k/before" {
		t.Fatalf("first response: %+v", res)
	}
	resume, err := standby.StallReplication(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resume() })
	stalled := mustPut(t, e.etcd, "/k/stalled", "only on the old primary")
	if res := next("the stalled put"); len(res.Events) != 1 || res.Events[0].Kv.ModRevision != stalled {
		t.Fatalf("second response: %+v, want the put at %d", res, stalled)
	}
	if err := primary.Kill(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(t.Context()); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()

	res := next("the cancel")
	if !res.Canceled || res.CompactRevision == 0 || !errors.Is(res.Err(), rpctypes.ErrCompacted) {
		t.Fatalf("response after the failover: %+v (err %v), want a compacted cancel", res, res.Err())
	}
	t.Logf("watch cancelled %s after promotion, compact revision %d", time.Since(promoted).Round(time.Millisecond), res.CompactRevision)
	if _, ok := <-wch; ok {
		t.Fatal("the watch channel stays open after the cancel")
	}

	// Re-list: clientv3 does not retry a put that found PostgreSQL away.
	var after int64
	wait.For(t, "a put on the new primary", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		r, err := e.etcd.Put(ctx, "/k/after", "on the new primary")
		if err == nil {
			after = r.Header.Revision
		}
		return err == nil
	})
	list, err := e.etcd.Get(callCtx(t), "/k/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range list.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	if len(got) != 2 || got["/k/before"] != "on both" || got["/k/after"] != "on the new primary" || list.Header.Revision < after {
		t.Fatalf("list at %d after the failover: %v, want /k/before and /k/after (at %d) only", list.Header.Revision, got, after)
	}
	wch = e.etcd.Watch(t.Context(), "/k/", clientv3.WithPrefix(), clientv3.WithRev(list.Header.Revision+1))
	last := mustPut(t, e.etcd, "/k/last", "x")
	if res := next("a put after the re-list"); len(res.Events) != 1 || res.Events[0].Kv.ModRevision != last {
		t.Fatalf("after the re-list: %+v, want the put at %d", res, last)
	}
}

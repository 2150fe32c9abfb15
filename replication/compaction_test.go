package replication_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/chaos/netfault"
	"github.com/walwatch/walwatch/test/wait"
)

// A compaction that passes the hub while its stream is cut and its slot is
// dropped takes revisions the hub has not released: the new slot starts
// after them and the table no longer has them. The watcher that needed them
// is told "compacted" at the compacted revision, as etcd tells a watcher
// that fell below a compaction, and the hub goes on from there without a
// filler below the compacted revision. (It once read the table from its
// watermark, found the compacted revision missing, filled it and went on:
// the watcher missed an event and was never told.)
func TestCompactionPastARecreatedSlot(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := netfault.Listen(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	u.Host = proxy.Addr()
	slot := faultSlotName("cp_skip")
	m, reg := hubMetrics()
	h := e.startHub(t, replication.Config{ConnString: u.String(), Slot: slot, Metrics: m})

	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/k/"))})
	first := e.put(t, "/k/a", "1")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != first {
		t.Fatalf("first event %v, want revision %d", got[0], first)
	}

	proxy.Blackhole()
	proxy.Cut()
	e.put(t, "/k/a", "2") // superseded below the compaction: its row goes
	e.put(t, "/k/a", "3")
	compacted := e.put(t, "/k/b", "1")
	if _, err := e.store.Compact(ctx, compacted); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "slot "+slot+" dropped", func() bool {
		_, err := e.pool.Exec(ctx, "select pg_drop_replication_slot($1)", slot)
		return err == nil
	})
	proxy.Restore()

	var last replication.WatchResponse
	for deadline := time.After(30 * time.Second); ; {
		var resp replication.WatchResponse
		var ok bool
		select {
		case resp, ok = <-w.C:
		case <-deadline:
			t.Fatal("the watcher was neither told compacted nor given anything within 30s")
		}
		if !ok {
			break
		}
		if len(resp.Events) > 0 {
			t.Fatalf("after the compaction the watcher got %d events from revision %d, want it told compacted",
				len(resp.Events), resp.Events[0].Revision)
		}
		last = resp
	}
	var ce *store.CompactedError
	if !last.Canceled || !errors.As(w.Err(), &ce) || last.CompactRevision != compacted || ce.Revision != first+1 {
		t.Fatalf("the watch ended with %+v (%v); want canceled as compacted at %d from %d", last, w.Err(), compacted, first+1)
	}

	// From the compacted revision on, everything, and no filler below it.
	w2 := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/k/")), StartRevision: compacted})
	next := e.put(t, "/k/c", "1")
	got := collect(t, w2, 2, 10*time.Second)
	if got[0].Rev != compacted || got[1].Rev != next {
		t.Fatalf("a watch from the compacted revision %d got %v, want revisions %d and %d", compacted, got, compacted, next)
	}
	var fillers int64
	if err := e.pool.QueryRow(ctx, "select count(*) from walwatch.kv where key = '' and revision < $1", compacted).Scan(&fillers); err != nil || fillers != 0 {
		t.Fatalf("%d fillers below the compacted revision (%v), want none", fillers, err)
	}
	if n := metric(t, reg, "walwatch_hub_compacted_skips_total"); n != 1 {
		t.Errorf("%v compacted skips, want 1", n)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

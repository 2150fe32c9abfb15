package replication_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
)

// A watcher starting below the in-memory window is served from the table,
// then joins the live stream with no gap and no duplicate.
func TestWatchFromThePastJoinsLiveStream(t *testing.T) {
	e := newEnv(t)
	for i := range 40 {
		e.put(t, fmt.Sprintf("/k/%d", i%7), fmt.Sprint(i))
		e.put(t, "/other", "x")
	}
	// The table read copies each row's key and value out of the driver's
	// buffer: binary keys and values, an empty value and deletes (no value)
	// come back as written.
	for i, kv := range [][2]string{{"/k/\x00", "\x00\xff"}, {"/k/\xff\x00", ""}, {"/k/\xfe", "\x01\x00\x00"}} {
		e.put(t, kv[0], kv[1])
		if i != 1 {
			if _, err := e.store.Delete(t.Context(), store.Key([]byte(kv[0]))); err != nil {
				t.Fatal(err)
			}
		}
	}
	h := e.startHub(t, replication.Config{Window: 4})
	for i := range 10 {
		e.put(t, fmt.Sprintf("/k/%d", i%3), fmt.Sprint(i))
	}
	tests := []struct {
		name  string
		rng   store.KeyRange
		start int64
	}{
		{"prefix from the first revision", store.Prefix([]byte("/k/")), 2},
		{"single key from the middle", store.Key([]byte("/k/1")), 30},
		{"prefix from inside the window", store.Prefix([]byte("/k/")), 95},
		{"everything", store.FromKey([]byte{0}), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := watch(t, h, replication.WatchRequest{Range: tt.rng, StartRevision: tt.start})
			e.put(t, "/k/live", "y") // lands while the watcher catches up
			want := e.history(t, tt.rng, tt.start)
			got := collect(t, w, len(want), 20*time.Second)
			if !slices.Equal(got, want) {
				t.Fatalf("got %d events %v\nwant %d %v", len(got), got, len(want), want)
			}
		})
	}
}

func TestWatchCompactedStart(t *testing.T) {
	e := newEnv(t)
	for range 5 {
		e.put(t, "/a", "x") // 2..6
	}
	if _, err := e.store.Compact(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	h := e.startHub(t, replication.Config{})
	_, err := h.Watch(context.Background(), replication.WatchRequest{Range: store.Key([]byte("/a")), StartRevision: 4})
	var ce *store.CompactedError
	if !errors.As(err, &ce) || ce.CompactRevision != 5 {
		t.Fatalf("watch from 4 = %v, want compacted at 5", err)
	}
	// At the compacted revision the watch works, as in etcd.
	w := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/a")), StartRevision: 5})
	if got := collect(t, w, 2, 10*time.Second); got[0].Rev != 5 || got[1].Rev != 6 {
		t.Fatalf("got %v, want revisions 5 and 6", got)
	}
}

// Compaction under a watcher that is catching up from the table ends it
// with the compacted revision, never with a silent gap.
func TestCompactionWhileCatchingUp(t *testing.T) {
	e := newEnv(t)
	for i := range 30 {
		e.put(t, "/a", fmt.Sprint(i))
	}
	h := e.startHub(t, replication.Config{Window: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := h.Watch(ctx, replication.WatchRequest{Range: store.Key([]byte("/a")), StartRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Not reading: the first page fills the channel... compact meanwhile.
	if _, err := e.store.CompactKeepLatest(ctx); err != nil {
		t.Fatal(err)
	}
	var last int64
	for resp := range w.C {
		for _, ev := range resp.Events {
			if ev.Revision != last+1 && last != 0 {
				t.Fatalf("gap: %d after %d", ev.Revision, last)
			}
			last = ev.Revision
		}
		if resp.Canceled && !errors.Is(resp.Err, store.ErrCompacted) {
			t.Fatalf("canceled with %v", resp.Err)
		}
		if last == 31 {
			return // caught up before the compaction reached it
		}
	}
	if err := w.Err(); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("watch ended at %d with %v", last, err)
	}
}

func TestWatchFutureRevisionWaits(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/")), StartRevision: 4})
	e.put(t, "/a", "2")
	e.put(t, "/a", "3")
	e.put(t, "/a", "4")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != 4 {
		t.Fatalf("got %v, want revision 4 first", got)
	}
}

func TestProgressNotify(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{ProgressInterval: 20 * time.Millisecond})
	w := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/quiet")), ProgressNotify: true})
	r := e.put(t, "/noise", "x")
	deadline := time.After(10 * time.Second)
	for {
		select {
		case resp := <-w.C:
			if len(resp.Events) > 0 {
				t.Fatalf("unexpected events %v", resp.Events)
			}
			if resp.Revision >= r {
				return // a progress mark past a revision the watcher had no events in
			}
		case <-deadline:
			t.Fatal("no progress mark reached the write")
		}
	}
}

func TestPrevKV(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/a")), PrevKV: true})
	e.put(t, "/a", "one")
	e.put(t, "/a", "two")
	if _, err := e.store.Delete(context.Background(), store.Key([]byte("/a"))); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/a", "again") // its previous row is the tombstone: no previous value
	var prevs []string
	for len(prevs) < 4 {
		select {
		case resp := <-w.C:
			for _, ev := range resp.Events {
				if ev.PrevKV == nil {
					prevs = append(prevs, "<none>")
				} else {
					prevs = append(prevs, string(ev.PrevKV.Value))
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("got %v", prevs)
		}
	}
	if !slices.Equal(prevs, []string{"<none>", "one", "two", "<none>"}) {
		t.Fatalf("previous values %v", prevs)
	}
}

// The previous rows of a response's events are read with a plan made once
// per connection, not once per response, even when responses are small:
// planning the statement again cost PostgreSQL four times running it.
func TestPrevKVsUseTheCachedPlan(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, second := e.put(t, "/a\x00\xff", "one\x00"), e.put(t, "/b", "two")
	del, err := e.store.Delete(ctx, store.Key([]byte("/b")))
	if err != nil {
		t.Fatal(err)
	}
	e.manyRows(t, 20000)
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// A row (a binary key and value), a tombstone, and a revision of another
	// key.
	keys, revs := [][]byte{[]byte("/a\x00\xff"), []byte("/b"), []byte("/a\x00\xff")}, []int64{first, del.Revision, second}
	for i := range 8 {
		n := 1 + i%3
		rows, err := conn.Query(ctx, replication.PrevKVsSQL, keys[:n], revs[:n])
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var (
				key, value           []byte
				create, mod, version int64
			)
			if err := rows.Scan(&key, &value, &create, &mod, &version); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%s@%d=%s", key, mod, value))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if want := []string{fmt.Sprintf("/a\x00\xff@%d=one\x00", first)}; !slices.Equal(got, want) {
			t.Fatalf("previous rows of %d pairs: %v, want %v", n, got, want)
		}
	}
	pgtest.CheckCachedPlan(t, ctx, conn, replication.PrevKVsSQL)
}

func TestWatchBadInput(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	ctx := context.Background()
	if _, err := h.Watch(ctx, replication.WatchRequest{Range: store.Key(nil)}); !errors.Is(err, store.ErrEmptyKey) {
		t.Fatalf("empty key: %v", err)
	}
	if _, err := h.Watch(ctx, replication.WatchRequest{Range: store.Key([]byte("/a")), StartRevision: -1}); !errors.Is(err, store.ErrInvalidRevision) {
		t.Fatalf("negative revision: %v", err)
	}
	if _, err := replication.New(replication.Config{Pool: e.pool, Slot: "Bad-Name"}); !errors.Is(err, replication.ErrInvalidSlotName) {
		t.Fatalf("bad slot name: %v", err)
	}
}

// A watcher that never reads neither delays the others nor the stream.
func TestSlowWatcherDoesNotDelayOthers(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	stuck := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	live := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	const n = 300 // more responses than a watcher's channel holds
	for i := range n {
		e.put(t, fmt.Sprintf("/k/%d", i%10), "v")
	}
	if got := collect(t, live, n, 30*time.Second); len(got) != n {
		t.Fatalf("live watcher got %d", len(got))
	}
	// The stuck one, read at last, still gets everything in order.
	if got := collect(t, stuck, n, 30*time.Second); len(got) != n {
		t.Fatalf("stuck watcher got %d", len(got))
	}
}

// A watcher read with Drain only when Notify says so gets every event in
// order and the end: Notify comes after each response is queued and after
// the watch ends, with PrevKV (whose responses another goroutine forwards on
// C) too. More puts than a watcher's queue holds, some before the first
// read.
func TestWatchNotify(t *testing.T) {
	for _, prevKV := range []bool{false, true} {
		t.Run(fmt.Sprint("PrevKV=", prevKV), func(t *testing.T) {
			e := newEnv(t)
			h := e.startHub(t, replication.Config{})
			wake := make(chan struct{}, 1)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			w, err := h.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/n/")), PrevKV: prevKV, Notify: func() {
				select {
				case wake <- struct{}{}:
				default:
				}
			}})
			if err != nil {
				t.Fatal(err)
			}
			var want []int64
			for i := range 40 {
				want = append(want, e.put(t, "/n/k", fmt.Sprint(i)))
			}
			var got []int64
			deadline := time.After(30 * time.Second)
			for closed := false; !closed; {
				select {
				case <-wake:
				case <-deadline:
					t.Fatalf("no notification for 30s: got revisions %v of %v, closed %v", got, want, closed)
				}
				var resps []replication.WatchResponse
				resps, closed = w.Drain(nil)
				for _, resp := range resps {
					for _, ev := range resp.Events {
						got = append(got, ev.Revision)
						if prevKV && ev.Revision > want[0] && ev.PrevKV == nil {
							t.Errorf("event at %d has no previous value", ev.Revision)
						}
					}
				}
				if len(got) == len(want) {
					cancel() // and the end must be told too
				}
			}
			if !prevKV && w.C != nil {
				t.Error("a Notify watcher without PrevKV has a channel")
			}
			if !slices.Equal(got, want) {
				t.Errorf("got revisions %v, want %v", got, want)
			}
		})
	}
}

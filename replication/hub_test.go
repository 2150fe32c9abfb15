package replication_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
)

func TestWatchPrefixFromNow(t *testing.T) {
	e := newEnv(t)
	e.put(t, "/routes/old", "x") // before the hub: not seen by a watch from now
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/routes/"))})
	e.put(t, "/routes/a", "1")
	e.put(t, "/other", "x")
	e.put(t, "/routes/a", "2")
	if _, err := e.store.Delete(t.Context(), store.Key([]byte("/routes/a"))); err != nil {
		t.Fatal(err)
	}
	got := collect(t, w, 3, 10*time.Second)
	want := []seen{
		{3, 0, replication.EventPut, "/routes/a", "1", 1},
		{5, 0, replication.EventPut, "/routes/a", "2", 2},
		{6, 0, replication.EventDelete, "/routes/a", "", 0},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// A hub starting on a table with more unsettled rows than one page of its
// first read still reads them all, and goes on streaming after them.
func TestStartAfterManyUnsettledRows(t *testing.T) {
	e := newEnv(t)
	if _, err := e.pool.Exec(t.Context(), "select walwatch.put(convert_to('/k/' || i, 'UTF8'), '\\x00') from generate_series(1, 12001) i"); err != nil {
		t.Fatal(err)
	}
	h := e.startHub(t, replication.Config{})
	if got := h.Watermark(); got != 12002 {
		t.Fatalf("ready at revision %d, want 12002", got)
	}
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	r := e.put(t, "/after", "x")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != r {
		t.Fatalf("got %v, want revision %d", got, r)
	}
}

// A revision with more rows than a page (a prefix delete of 6,000 keys)
// arrives whole, through the first table read and through a catch-up.
func TestRevisionLargerThanAPage(t *testing.T) {
	e := newEnv(t)
	if _, err := e.pool.Exec(t.Context(), "select walwatch.put(convert_to('/k/' || i, 'UTF8'), '\\x00') from generate_series(1, 6000) i"); err != nil {
		t.Fatal(err)
	}
	del, err := e.store.Delete(t.Context(), store.Prefix([]byte("/k/")))
	if err != nil || del.Deleted != 6000 {
		t.Fatalf("delete = %+v, %v", del, err)
	}
	h := e.startHub(t, replication.Config{Window: 2})
	if got := h.Watermark(); got != del.Revision {
		t.Fatalf("ready at revision %d, want %d", got, del.Revision)
	}
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/k/")), StartRevision: del.Revision - 2})
	want := e.history(t, store.Prefix([]byte("/k/")), del.Revision-2)
	if got := collect(t, w, len(want), 30*time.Second); !slices.Equal(got, want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
}

// Pool settings in the connection string stay with the pool: the
// replication connection must not send them to the server as parameters.
func TestPoolSettingsInConnectionString(t *testing.T) {
	e := newEnvAt(t, pgtest.NewDatabase(t)+"&pool_max_conns=7")
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/a"))})
	r := e.put(t, "/a", "1")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != r {
		t.Fatalf("got %v", got)
	}
}

// A read waiting for the first revision of an idle store is answered once
// the hub has its starting point, not at its deadline: the first table read
// moves the watermark, and that must wake the waiters.
func TestWaitForOnIdleStoreAtStart(t *testing.T) {
	e := newEnv(t)
	h, err := replication.New(replication.Config{Pool: e.pool})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	// Well below the 10 s a cp's read waits, well above a start's time.
	wctx, wcancel := context.WithTimeout(t.Context(), 8*time.Second)
	defer wcancel()
	if err := h.WaitFor(wctx, 1); err != nil {
		t.Fatalf("WaitFor(1) on an idle store: %v", err)
	}
}

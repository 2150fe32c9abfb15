package replication_test

import (
	"slices"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
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
		{3, 0, replication.Put, "/routes/a", "1", 1},
		{5, 0, replication.Put, "/routes/a", "2", 2},
		{6, 0, replication.Delete, "/routes/a", "", 0},
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
	if got := h.Revision(); got != 12002 {
		t.Fatalf("ready at revision %d, want 12002", got)
	}
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	r := e.put(t, "/after", "x")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != r {
		t.Fatalf("got %v, want revision %d", got, r)
	}
}

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

package replication_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/wait"
)

// beginHeld opens a transaction that takes the next revision and keeps it.
func beginHeld(t *testing.T, e *env, key string) (rev int64, commit, rollback func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "select walwatch.put($1, $2)", []byte(key), []byte("held")).Scan(&rev); err != nil {
		t.Fatal(err)
	}
	return rev,
		func() {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		},
		func() {
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
		}
}

// waitFillerBlocked waits until the hub's filler is waiting for a revision
// holder: proof that the hub has seen the hole and is holding back.
func waitFillerBlocked(t *testing.T, e *env) {
	t.Helper()
	wait.For(t, "filler waits for the holder", func() bool {
		var n int
		err := e.pool.QueryRow(context.Background(),
			"select count(*) from pg_stat_activity where cardinality(pg_blocking_pids(pid)) > 0 and query like '%walwatch.fill%'").Scan(&n)
		return err == nil && n > 0
	})
}

func assertNothing(t *testing.T, w *replication.Watcher) {
	t.Helper()
	select {
	case resp := <-w.C:
		t.Fatalf("watcher got %+v while a lower revision was still open", resp)
	default:
	}
}

func TestOutOfOrderCommitWaitsForHolder(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})

	r, commit, _ := beginHeld(t, e, "/a")
	r1 := e.put(t, "/b", "after")
	if r1 != r+1 {
		t.Fatalf("revisions %d then %d, want consecutive", r, r1)
	}
	waitFillerBlocked(t, e)
	assertNothing(t, w)
	if got := h.Watermark(); got >= r {
		t.Fatalf("watermark %d passed the open revision %d", got, r)
	}
	commit()
	got := collect(t, w, 2, 10*time.Second)
	want := []seen{{r, 0, replication.EventPut, "/a", "held", 1}, {r1, 0, replication.EventPut, "/b", "after", 1}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestRolledBackRevisionIsFilledAndNeverDelivered(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})

	r, _, rollback := beginHeld(t, e, "/a")
	r1 := e.put(t, "/b", "after")
	waitFillerBlocked(t, e)
	assertNothing(t, w)
	rollback()
	got := collect(t, w, 1, 10*time.Second)
	if want := []seen{{r1, 0, replication.EventPut, "/b", "after", 1}}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// The filler's commit reached the hub through the stream, but a new
	// snapshot may not see it yet: PostgreSQL decodes a commit once its WAL
	// is flushed, a moment before the committing backend makes it visible.
	// Under load that moment can outlast the trip through the hub.
	var filler bool
	wait.For(t, fmt.Sprintf("revision %d visible as a filler row", r), func() bool {
		err := e.pool.QueryRow(context.Background(), "select key = '' from walwatch.kv where revision = $1", r).Scan(&filler)
		return err == nil
	})
	if !filler {
		t.Fatalf("revision %d is not a filler row", r)
	}
	// The next write to /a is its first version: the rolled back one never was.
	r2 := e.put(t, "/a", "real")
	if got := collect(t, w, 1, 10*time.Second); got[0] != (seen{r2, 0, replication.EventPut, "/a", "real", 1}) {
		t.Fatalf("got %v", got)
	}
}

// A hole with no holder (the sequence skipped a value) is settled after the
// grace period without waiting for anything.
func TestSkippedRevisionIsFilled(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	var skipped int64
	if err := e.pool.QueryRow(context.Background(), "select nextval('walwatch.revision')").Scan(&skipped); err != nil {
		t.Fatal(err)
	}
	r := e.put(t, "/a", "1")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != r || r != skipped+1 {
		t.Fatalf("got %v, want revision %d after skipped %d", got, r, skipped)
	}
	if got := h.Watermark(); got != r {
		t.Fatalf("watermark %d, want %d", got, r)
	}
}

func TestTxnEventsArriveTogetherInSubOrder(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/t/"))})
	res, err := e.store.Txn(context.Background(), store.TxnRequest{Then: []store.Op{
		store.OpPutKey([]byte("/t/b"), []byte("1")),
		store.OpPutKey([]byte("/t/a"), []byte("2")),
		store.OpPutKey([]byte("/x"), []byte("3")),
		store.OpPutKey([]byte("/t/c"), []byte("4")),
	}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-w.C:
		var got []string
		for _, ev := range resp.Events {
			got = append(got, string(ev.Key))
			if ev.Revision != res.Revision {
				t.Fatalf("event at revision %d, want %d", ev.Revision, res.Revision)
			}
		}
		if !slices.Equal(got, []string{"/t/b", "/t/a", "/t/c"}) {
			t.Fatalf("one response held %v, want the txn's three matching events in sub order", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no events")
	}
}

package replication_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TestCommittedNotYetVisible holds a put between its commit and its
// visibility. PostgreSQL decodes a transaction once its commit record is
// flushed, and only then ends it for other sessions; a synchronous standby
// that never answers keeps a committed transaction in that state for as long
// as the test likes (without one, the same state lasts microseconds, or as
// long as the committing backend is descheduled). The hub receives the put,
// but with synchronous replication on it releases nothing from it on until
// it is visible (syncrep.go): a primary that died now would take it along,
// never acknowledged. Neither does a read at a later revision, nor a
// watcher catching up from the table, pass over it.
func TestCommittedNotYetVisible(t *testing.T) {
	_, dbURL := pgtest.PrivateDatabase(t, pgcluster.Options{Settings: map[string]string{
		// Every session commits locally unless it asks for more; the one
		// that asks waits for a standby that never comes.
		"synchronous_standby_names": "walwatch_test_no_standby",
		"synchronous_commit":        "local",
	}})
	ctx := t.Context()
	e := newEnvAt(t, dbURL)
	m, reg := hubMetrics()
	// A window of one revision: a watcher from further back reads the table.
	h := e.startHub(t, replication.Config{Window: 1, Metrics: m})
	first := e.put(t, "/v/a", "0")
	waitRevision(t, h, first)
	received := metric(t, reg, "walwatch_hub_transactions_total")
	live := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/v/")), StartRevision: first + 1})

	held, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.Background())
	if _, err := held.Exec(ctx, "set synchronous_commit = on"); err != nil {
		t.Fatal(err)
	}
	heldDone := make(chan error, 1)
	go func() {
		var rev int64
		heldDone <- held.QueryRow(ctx, "select walwatch.put($1, $2)", []byte("/v/a"), []byte("1")).Scan(&rev)
	}()

	// The hub has the held put as soon as it is flushed.
	wait.For(t, "the hub receives the held put", func() bool {
		return metric(t, reg, "walwatch_hub_transactions_total") >= received+1
	})
	if got := readAt(t, e, "/v/a", 0); got != "0" {
		t.Fatalf("the held put is visible already (/v/a=%q): the test holds nothing", got)
	}
	after := e.put(t, "/v/b", "1")
	wait.For(t, "the hub receives the put after it", func() bool {
		return metric(t, reg, "walwatch_hub_transactions_total") >= received+2
	})

	// A watcher from the start, served from the table (below the window).
	behind := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/v/")), StartRevision: first})

	// Committed and received, but a read at after would not see the held
	// put yet.
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = h.WaitFor(wctx, after)
	wcancel()
	if err == nil {
		t.Errorf("WaitFor(%d) returned while a put below it was not visible: a read there gives /v/a=%q",
			after, readAt(t, e, "/v/a", after))
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor(%d): %v", after, err)
	}
	if rev, err := h.ReadRevision(ctx); err != nil {
		t.Fatal(err)
	} else if rev != first {
		t.Errorf("ReadRevision = %d while the put after %d was not visible", rev, first)
	}
	if w := h.Watermark(); w != first {
		t.Errorf("watermark %d: released past %d, the put not visible yet", w, first)
	}
	select {
	case resp := <-live.C:
		t.Errorf("the live watcher got %+v while the put was not visible", resp)
	default:
	}

	// Let the put end: the standby wait is cancelled, the commit stands.
	if _, err := e.pool.Exec(ctx, "select pg_cancel_backend($1)", int32(held.PgConn().PID())); err != nil {
		t.Fatal(err)
	}
	if err := <-heldDone; err != nil {
		t.Fatalf("held put: %v", err)
	}
	if err := h.WaitFor(ctx, after); err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, e, "/v/a", after); got != "1" {
		t.Errorf("read at %d after WaitFor: /v/a=%q, want 1", after, got)
	}
	want := []seen{
		{first, 0, replication.EventPut, "/v/a", "0", 1},
		{after - 1, 0, replication.EventPut, "/v/a", "1", 2},
		{after, 0, replication.EventPut, "/v/b", "1", 1},
	}
	if got := collect(t, behind, 3, 10*time.Second); !slices.Equal(got, want) {
		t.Errorf("watcher from the table: got %v, want %v", got, want)
	}
	if got := collect(t, live, 2, 10*time.Second); !slices.Equal(got, want[1:]) {
		t.Errorf("live watcher: got %v, want %v", got, want[1:])
	}
}

// readAt reads key at rev (0: the latest) and returns its value, "" when
// absent.
func readAt(t *testing.T, e *env, key string, rev int64) string {
	t.Helper()
	res, err := e.store.Range(context.Background(), store.RangeRequest{KeyRange: store.Key([]byte(key)), Revision: rev})
	if err != nil {
		t.Fatalf("read %s at %d: %v", key, rev, err)
	}
	if len(res.KVs) == 0 {
		return ""
	}
	return string(res.KVs[0].Value)
}

// TestVisibleAcrossCompaction: compaction removes rows below its revision,
// so the hub's visibility check must not wait for them.
func TestVisibleAcrossCompaction(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	ctx := context.Background()
	for _, v := range []string{"1", "2", "3", "4"} {
		e.put(t, "/c/a", v)
		e.put(t, "/c/gone", v)
		e.put(t, "/c/gone", "x")
	}
	if _, err := e.store.Delete(ctx, store.Key([]byte("/c/gone"))); err != nil {
		t.Fatal(err)
	}
	last := e.put(t, "/c/b", "1")
	if _, err := e.store.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.WaitFor(wctx, last); err != nil {
		t.Fatalf("WaitFor(%d) after compacting at it: %v", last, err)
	}
	if rev, err := h.ReadRevision(ctx); err != nil || rev < last {
		t.Fatalf("ReadRevision = %d, %v; want at least %d", rev, err, last)
	}
	if got := readAt(t, e, "/c/a", last); got != "4" {
		t.Errorf("/c/a at %d = %q, want 4", last, got)
	}
}

// TestVisibleCheckPlan keeps the visibility check's plan below the cost at
// which PostgreSQL compiles a statement before it runs it. Joined to
// walwatch.meta, which a fresh database has never analyzed, its plan cost
// 33 times the threshold on a table of 200,000 rows, and each check took 5
// to 190 ms instead of a fraction of one.
func TestVisibleCheckPlan(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.manyRows(t, 20000)
	cur, err := e.store.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, after := range []int64{cur - 10, cur - replication.VisibleCheck(), 0} {
		for _, timeline := range []int32{0, 1} {
			pgtest.CheckNoJIT(t, ctx, conn, replication.VisibleCheckSQL, after, cur, timeline)
		}
	}
}

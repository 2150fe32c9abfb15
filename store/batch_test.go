package store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// occupyPutWorkers holds /busy's lock and puts to it until every put worker
// waits for that lock, so later puts queue; release lets them all go.
func occupyPutWorkers(t *testing.T, s *store.Store, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	return occupyWorkers(t, pool, store.PutWorkers, func(ctx context.Context) error {
		_, err := s.Put(ctx, []byte("/busy"), []byte("x"))
		return err
	})
}

// occupyWorkers holds /busy's lock and starts n calls of write, which must
// write /busy, one at a time until each waits for that lock: with n a
// batcher's workers, every worker holds one of them and later calls queue.
// release lets them go and checks they succeeded.
func occupyWorkers(t *testing.T, pool *pgxpool.Pool, n int, write func(context.Context) error) (release func()) {
	t.Helper()
	ctx := testContext(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A test that fails before release must not leave the workers waiting.
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock(walwatch.key_lock($1))", []byte("/busy")); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- write(ctx) }()
		// One more worker waits for the lock before the next call starts,
		// so each worker holds exactly one of them.
		wait.For(t, "the next worker to wait for the key lock", func() bool {
			var waiting int
			err := pool.QueryRow(ctx, "select count(*) from pg_locks where locktype = 'advisory' and not granted").Scan(&waiting)
			return err == nil && waiting == i+1
		})
	}
	return func() {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for range n {
			if err := <-errs; err != nil {
				t.Errorf("write /busy: %v", err)
			}
		}
	}
}

type putResult struct {
	key string
	rev int64
	err error
}

// queuePuts starts a put of each key and waits until all of them queue.
func queuePuts(t *testing.T, s *store.Store, keys ...[]byte) <-chan putResult {
	t.Helper()
	ctx := testContext(t)
	out := make(chan putResult, len(keys))
	for _, k := range keys {
		go func() {
			res, err := s.Put(ctx, k, []byte("v"))
			out <- putResult{string(k), res.Revision, err}
		}()
	}
	wait.For(t, "every put to be queued", func() bool { return store.QueuedPuts(s) == len(keys) })
	return out
}

func TestQueuedPutsShareOneTransaction(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	release := occupyPutWorkers(t, s, pool)
	var keys [][]byte
	for i := range 20 {
		keys = append(keys, fmt.Appendf(nil, "/q/%02d", i%15)) // five keys twice
	}
	results := queuePuts(t, s, keys...)
	release()
	revs := map[int64]bool{}
	for range keys {
		r := <-results
		if r.err != nil {
			t.Fatalf("put %s: %v", r.key, r.err)
		}
		if revs[r.rev] {
			t.Fatalf("revision %d given twice", r.rev)
		}
		revs[r.rev] = true
	}
	var txns, rows int
	if err := pool.QueryRow(ctx, `select count(distinct xmin::text), count(*) from walwatch.kv
		where key >= '/q/' and key < '/q0'`).Scan(&txns, &rows); err != nil {
		t.Fatal(err)
	}
	if txns != 1 || rows != 20 {
		t.Fatalf("20 queued puts wrote %d rows in %d transactions, want 20 in 1", rows, txns)
	}
	// A key put twice in one batch counts both versions.
	kv, ok, err := s.Get(ctx, []byte("/q/03"), 0)
	if err != nil || !ok || kv.Version != 2 || kv.CreateRevision >= kv.ModRevision {
		t.Fatalf("/q/03 = %+v, %v, %v; want version 2, created before modified", kv, ok, err)
	}
	busy, _, err := s.Get(ctx, []byte("/busy"), 0)
	if err != nil || busy.Version != int64(store.PutWorkers) {
		t.Fatalf("/busy = %+v, %v; want version %d", busy, err, store.PutWorkers)
	}
}

// A put the server refuses fails alone: the rest of its batch is written.
func TestBatchedPutFailsAlone(t *testing.T) {
	// Above what a PostgreSQL index entry holds (2,704 bytes), so only the
	// server can refuse it.
	s, pool := newStore(t, store.Limits{MaxKeySize: 8 << 10})
	huge := make([]byte, 3000)
	if _, err := rand.Read(huge); err != nil { // incompressible
		t.Fatal(err)
	}
	release := occupyPutWorkers(t, s, pool)
	results := queuePuts(t, s, []byte("/ok/1"), huge, []byte("/ok/2"))
	release()
	for range 3 {
		r := <-results
		switch {
		case r.key == string(huge) && !errors.Is(r.err, store.ErrKeyTooLarge):
			t.Errorf("huge key: %v, want %v", r.err, store.ErrKeyTooLarge)
		case r.key != string(huge) && r.err != nil:
			t.Errorf("put %s failed with the huge key: %v", r.key, r.err)
		}
	}
}

func TestPutBatchSQL(t *testing.T) {
	_, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	tests := []struct {
		name     string
		keys     [][]byte
		values   [][]byte
		wantRevs int
		wantCode string // SQLSTATE, when it must fail
	}{
		{name: "empty", keys: [][]byte{}, values: [][]byte{}, wantRevs: 0},
		{name: "three", keys: [][]byte{[]byte("/b"), []byte("/a"), []byte("/b")}, values: [][]byte{[]byte("1"), []byte("2"), nil}, wantRevs: 3},
		{name: "fewer values", keys: [][]byte{[]byte("/a"), []byte("/b")}, values: [][]byte{[]byte("1")}, wantCode: "22023"},
		{name: "empty key", keys: [][]byte{[]byte("/a"), {}}, values: [][]byte{[]byte("1"), []byte("2")}, wantCode: "WWK01"},
		{name: "empty key among four", keys: [][]byte{[]byte("/1"), {}, []byte("/3"), []byte("/4")}, values: make([][]byte, 4), wantCode: "WWK01"},
		{name: "four, not UTF-8", keys: [][]byte{{0}, {0xff}, {0xff, 0}, {0xc3, 0x28}}, values: [][]byte{{0}, nil, {}, []byte("4")}, wantRevs: 4},
		{name: "empty key among eight", keys: [][]byte{[]byte("/1"), []byte("/2"), []byte("/3"), []byte("/4"), []byte("/5"), []byte("/6"), []byte("/7"), {}},
			values: make([][]byte, 8), wantCode: "WWK01"},
		{name: "eight, not UTF-8", keys: [][]byte{{0}, {0xff}, {0xff, 0}, {0xc3, 0x28}, []byte("/5"), []byte("/6"), []byte("/7"), []byte("/8")},
			values: [][]byte{{0}, {0xff}, nil, {}, []byte("5"), []byte("6"), []byte("7"), []byte("8")}, wantRevs: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var revs []int64
			err := pool.QueryRow(ctx, "select walwatch.put_batch($1, $2)", tt.keys, tt.values).Scan(&revs)
			if tt.wantCode != "" {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != tt.wantCode {
					t.Fatalf("err = %v, want SQLSTATE %s", err, tt.wantCode)
				}
				return
			}
			if err != nil || len(revs) != tt.wantRevs {
				t.Fatalf("revisions %v, %v; want %d", revs, err, tt.wantRevs)
			}
			seen := map[int64]bool{}
			for _, r := range revs {
				if r <= 1 || seen[r] {
					t.Fatalf("revisions %v: each put needs a revision of its own", revs)
				}
				seen[r] = true
			}
		})
	}
	// In "three", /b's two puts were written in the order given.
	var values []string
	rows, err := pool.Query(ctx, "select convert_from(value, 'UTF8') from walwatch.kv where key = '/b' order by revision")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		values = append(values, v)
	}
	if err := rows.Err(); err != nil || len(values) != 2 || values[0] != "1" || values[1] != "" {
		t.Fatalf("/b's values in revision order = %q, %v; want 1 then the empty value", values, err)
	}
}

// A batch of distinct keys large enough to go in with one insert waits for
// the locks of a batch that holds the same keys, and then builds every row
// on the row that batch wrote, as a batch that inserts key by key does.
func TestPutBatchBuildsOnTheKeysLastWriter(t *testing.T) {
	for _, n := range []int{3, 4, 32} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			_, pool := newStore(t, store.Limits{})
			ctx := testContext(t)
			keys := make([][]byte, n)
			values := make([][]byte, n)
			for i := range keys {
				keys[i], values[i] = fmt.Appendf(nil, "/last/%02d", i), []byte("first")
			}
			first, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Rollback(ctx)
			var firstRevs []int64
			if err := first.QueryRow(ctx, "select walwatch.put_batch($1, $2)", keys, values).Scan(&firstRevs); err != nil {
				t.Fatal(err)
			}
			second := make(chan error, 1)
			go func() {
				var revs []int64
				second <- pool.QueryRow(ctx, "select walwatch.put_batch($1, $2)", keys, values).Scan(&revs)
			}()
			wait.For(t, "the second batch to wait for a key lock", func() bool {
				var waiting int
				err := pool.QueryRow(ctx, "select count(*) from pg_locks where locktype = 'advisory' and not granted").Scan(&waiting)
				return err == nil && waiting == 1
			})
			if err := first.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-second; err != nil {
				t.Fatal(err)
			}
			rows, err := pool.Query(ctx, `select key, version, create_revision, prev_revision from walwatch.kv
				where key >= '/last/' and key < '/last0' and version = 2 order by key`)
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for rows.Next() {
				var (
					key                       []byte
					version, created, prevRev int64
				)
				if err := rows.Scan(&key, &version, &created, &prevRev); err != nil {
					t.Fatal(err)
				}
				if created != firstRevs[got] || prevRev != firstRevs[got] {
					t.Errorf("%s at version 2: created %d, previous %d; want both %d", key, created, prevRev, firstRevs[got])
				}
				got++
			}
			if err := rows.Err(); err != nil || got != n {
				t.Fatalf("%d keys at version 2, %v; want all %d", got, err, n)
			}
		})
	}
}

// put_batch pairs keys and values by position, also for arrays built in
// SQL whose subscripts start elsewhere than 1 and differ from each other,
// whether it inserts key by key (3) or all at once (4).
func TestPutBatchPairsByPosition(t *testing.T) {
	_, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	for _, n := range []int{3, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			keys := make([][]byte, n)
			values := make([][]byte, n)
			for i := range keys {
				keys[i], values[i] = fmt.Appendf(nil, "/pair%d/%d", n, i), fmt.Appendf(nil, "v%d", i)
			}
			var revs []int64
			err := pool.QueryRow(ctx, `select walwatch.put_batch(
					('[0:' || cardinality($1::bytea[]) - 1 || ']=' || $1::bytea[]::text)::bytea[],
					('[5:' || cardinality($2::bytea[]) + 4 || ']=' || $2::bytea[]::text)::bytea[])`,
				keys, values).Scan(&revs)
			if err != nil || len(revs) != n {
				t.Fatalf("revisions %v, %v; want %d", revs, err, n)
			}
			for i, key := range keys {
				var value []byte
				var rev int64
				if err := pool.QueryRow(ctx, "select value, revision from walwatch.kv where key = $1", key).Scan(&value, &rev); err != nil {
					t.Fatalf("read %s: %v", key, err)
				}
				if !bytes.Equal(value, values[i]) || rev != revs[i] {
					t.Errorf("%s = %q at %d; want %q at %d", key, value, rev, values[i], revs[i])
				}
			}
		})
	}
}

// A batch whose next revision a filler row already holds fails with
// unique_violation, which the store answers by putting one by one; it does
// not take another revision as walwatch.put does.
func TestPutBatchLosesRevisionToFiller(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	next := fillNextRevision(t, pool)
	var revs []int64
	err := pool.QueryRow(ctx, "select walwatch.put_batch($1, $2)", [][]byte{[]byte("/f")}, [][]byte{[]byte("v")}).Scan(&revs)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23505" {
		t.Fatalf("put_batch onto a filled revision: %v, %v; want SQLSTATE 23505", revs, err)
	}
	// A single put steps over the filler.
	res, err := s.Put(ctx, []byte("/f"), []byte("v"))
	if err != nil || res.Revision <= next {
		t.Fatalf("put after the filler: %+v, %v; want a revision above %d", res, err, next)
	}
}

// A put whose caller gives up while it waits for a batch is not written.
func TestQueuedPutGivenUpIsNotWritten(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	release := occupyPutWorkers(t, s, pool)
	ctx, cancel := context.WithCancel(testContext(t))
	gaveUp := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, []byte("/gave-up"), []byte("v"))
		gaveUp <- err
	}()
	wait.For(t, "one queued put", func() bool { return store.QueuedPuts(s) == 1 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("put after its caller gave up: %v, want %v", err, context.Canceled)
	}
	kept := make(chan error, 1)
	go func() {
		_, err := s.Put(testContext(t), []byte("/kept"), []byte("v"))
		kept <- err
	}()
	wait.For(t, "two queued puts", func() bool { return store.QueuedPuts(s) == 2 }) // one batch with the given-up put
	release()
	if err := <-kept; err != nil {
		t.Fatalf("put /kept: %v", err)
	}
	if _, ok, err := s.Get(testContext(t), []byte("/gave-up"), 0); err != nil || ok {
		t.Fatalf("/gave-up written: %v, %v", ok, err)
	}
}

// Gets queued behind busy workers are read together, each as a get alone
// would read it: a key's newest value, a deleted key and one never written
// as absent, a key asked twice twice, a count-only get with its count, a
// binary key.
func TestQueuedGetsReadTogether(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	for _, kv := range [][2]string{{"/g/a", "1"}, {"/g/a", "2"}, {"/g/b", "3"}, {"/g/c", "4"}, {"/g/\x00\xff", "5"}} {
		if _, err := s.Put(ctx, []byte(kv[0]), []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Delete(ctx, store.Key([]byte("/g/c"))); err != nil {
		t.Fatal(err)
	}
	want := map[string]store.RangeResponse{}
	for _, k := range []string{"/g/a", "/g/b", "/g/c", "/g/d", "/g/\x00\xff"} {
		res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte(k))})
		if err != nil {
			t.Fatal(err)
		}
		want[k] = res
	}

	// Every get worker waits for the table, so the next gets queue.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "lock table walwatch.kv in access exclusive mode"); err != nil {
		t.Fatal(err)
	}
	type result struct {
		i   int
		res store.RangeResponse
		err error
	}
	get := func(i int, req store.RangeRequest, out chan<- result) {
		res, err := s.Range(ctx, req)
		out <- result{i, res, err}
	}
	busy := make(chan result, store.GetWorkers)
	for i := range store.GetWorkers {
		go get(i, store.RangeRequest{KeyRange: store.Key([]byte("/g/a"))}, busy)
		wait.For(t, "the next get worker to wait for the table", func() bool {
			var n int
			err := pool.QueryRow(ctx, "select count(*) from pg_locks where relation = 'walwatch.kv'::regclass and not granted").Scan(&n)
			return err == nil && n == i+1
		})
	}
	reqs := []store.RangeRequest{
		{KeyRange: store.Key([]byte("/g/a"))},
		{KeyRange: store.Key([]byte("/g/b"))},
		{KeyRange: store.Key([]byte("/g/c"))},
		{KeyRange: store.Key([]byte("/g/d"))},
		{KeyRange: store.Key([]byte("/g/a"))},
		{KeyRange: store.Key([]byte("/g/b")), CountOnly: true},
		{KeyRange: store.Key([]byte("/g/\x00\xff"))}, // not UTF-8, with a NUL
	}
	queued := make(chan result, len(reqs))
	for i, req := range reqs {
		go get(i, req, queued)
	}
	wait.For(t, "every get to be queued", func() bool { return store.QueuedGets(s) == len(reqs) })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range store.GetWorkers {
		if r := <-busy; r.err != nil {
			t.Fatalf("get /g/a: %v", r.err)
		}
	}
	for range reqs {
		r := <-queued
		req := reqs[r.i]
		if r.err != nil {
			t.Fatalf("get %s: %v", req.Key, r.err)
		}
		w := want[string(req.Key)]
		if req.CountOnly {
			w.KVs = []store.KeyValue{}
		}
		if r.res.Revision != w.Revision || r.res.Count != w.Count || fmt.Sprint(r.res.KVs) != fmt.Sprint(w.KVs) {
			t.Errorf("get %s (count only %v) = %+v, want %+v", req.Key, req.CountOnly, r.res, w)
		}
	}
}

// A batch of gets is planned once per connection, not once per batch, even
// when every batch is small: planning it again cost PostgreSQL more than
// running it.
func TestBatchedGetsUseTheCachedPlan(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	for _, k := range []string{"/p/a", "/p/b"} {
		if _, err := s.Put(ctx, []byte(k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// PostgreSQL makes a plan for each of the first five calls, then keeps
	// making them while they look cheaper than the cached one.
	for i := range 8 {
		keys := [][]byte{[]byte("/p/a"), []byte("/p/b"), []byte("/p/none")}[:2+i%2]
		rows, err := conn.Query(ctx, store.ManyKeysLatestSQL, keys, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if rows.Close(); rows.Err() != nil || n != len(keys) {
			t.Fatalf("batch of %d keys: %d rows, %v", len(keys), n, rows.Err())
		}
	}
	pgtest.CheckCachedPlan(t, ctx, conn, store.ManyKeysLatestSQL)
}

// waitingCommits finds and ends commits that wait for a synchronous standby.
type waitingCommits struct {
	t     *testing.T
	admin *pgxpool.Pool
}

const waitingForStandby = "from pg_stat_activity where wait_event = 'SyncRep'"

// await waits until n commits wait for the standby.
func (w waitingCommits) await(n int) {
	w.t.Helper()
	wait.For(w.t, fmt.Sprintf("%d commits to wait for the standby", n), func() bool {
		var got int
		err := w.admin.QueryRow(testContext(w.t), "select count(*) "+waitingForStandby).Scan(&got)
		return err == nil && got == n
	})
}

// end ends the backends that wait: each commits locally and closes its
// connection without an answer, so its client cannot know it committed.
// It returns once they are gone, so that the next await does not count one
// still on its way out (on a busy machine they can linger).
func (w waitingCommits) end() {
	w.t.Helper()
	ctx := testContext(w.t)
	var pids []int32
	if err := w.admin.QueryRow(ctx, "select coalesce(array_agg(pid), '{}') from (select pid, pg_terminate_backend(pid) "+waitingForStandby+") t").Scan(&pids); err != nil {
		w.t.Fatal(err)
	}
	wait.For(w.t, "the ended commits' backends to exit", func() bool {
		var n int
		err := w.admin.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = any($1)", pids).Scan(&n)
		return err == nil && n == 0
	})
}

// newStoreAwaitingStandby returns a store whose every commit waits for a
// synchronous standby that never comes, and a pool on the same database
// whose commits do not wait.
func newStoreAwaitingStandby(t *testing.T) (*store.Store, *pgxpool.Pool, waitingCommits) {
	t.Helper()
	_, url := pgtest.PrivateDatabase(t, pgcluster.Options{Settings: map[string]string{
		"synchronous_standby_names": "walwatch_test_no_standby",
		"synchronous_commit":        "local", // the store's pool alone asks for more
	}})
	ctx := testContext(t)
	admin, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	if _, err := sql.Migrate(ctx, admin); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return store.New(pool, store.Limits{}), admin, waitingCommits{t, admin}
}

// A put batch whose connection is lost after it went out may have
// committed: every put of it fails as unavailable, and none is written
// again one by one, as a put alone would not be.
func TestPutBatchLostAfterCommitFailsEveryPut(t *testing.T) {
	s, admin, commits := newStoreAwaitingStandby(t)
	ctx := testContext(t)
	lone := make(chan error, store.PutWorkers)
	for i := range store.PutWorkers {
		go func() {
			_, err := s.Put(ctx, fmt.Appendf(nil, "/lone/%d", i), []byte("x"))
			lone <- err
		}()
	}
	commits.await(store.PutWorkers)
	keys := [][]byte{[]byte("/l/a"), []byte("/l/b"), []byte("/l/c")}
	results := queuePuts(t, s, keys...)
	commits.end()
	for range store.PutWorkers {
		if err := <-lone; !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("a lone put whose commit was cut off: %v; want ErrUnavailable", err)
		}
	}
	commits.await(1)
	commits.end()
	for range keys {
		if r := <-results; !errors.Is(r.err, store.ErrUnavailable) {
			t.Errorf("put %s, in a batch whose commit was cut off: %d, %v; want ErrUnavailable", r.key, r.rev, r.err)
		}
	}
	var rows, xids int
	err := admin.QueryRow(ctx, "select count(*), count(distinct xmin::text) from walwatch.kv where key = any($1)", keys).Scan(&rows, &xids)
	if err != nil {
		t.Fatal(err)
	}
	if rows != len(keys) || xids != 1 {
		t.Errorf("the batch's puts: %d rows in %d transactions; want %d in 1", rows, xids, len(keys))
	}
}

// A read of the current revision asked while a statement is in flight
// waits for the next one, which began after it asked: a put that returned
// meanwhile is in its answer. The copy of the keyspace answers
// linearizable reads on that (package keyspace); the batcher's yield
// before it takes a batch must not change it.
func TestCurrentRevisionAskedDuringAStatement(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	ran, release := make(chan struct{}), make(chan struct{})
	var held atomic.Bool
	store.AfterRevisionStatement(s, func() {
		if held.CompareAndSwap(false, true) {
			close(ran)
			<-release
		}
	})
	type answer struct {
		rev int64
		err error
	}
	read := func() <-chan answer {
		c := make(chan answer, 1)
		go func() {
			rev, err := s.CurrentRevision(ctx)
			c <- answer{rev, err}
		}()
		return c
	}
	first := read()
	<-ran // its statement has run; its answer is held
	put, err := s.Put(ctx, []byte("/asked-during"), []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	second := read()
	wait.For(t, "the second read to queue (or answer)", func() bool {
		return store.QueuedRevisionReads(s) == 1 || len(second) == 1
	})
	close(release)
	a, b := <-first, <-second
	if a.err != nil || b.err != nil {
		t.Fatal(a.err, b.err)
	}
	if a.rev >= put.Revision {
		t.Fatalf("the first read answered %d, at or above the put's %d that followed its statement", a.rev, put.Revision)
	}
	if b.rev < put.Revision {
		t.Errorf("the second read answered %d, below the put's %d that returned before it was asked", b.rev, put.Revision)
	}
}

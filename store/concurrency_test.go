package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/wait"
)

func TestConcurrentPutsToOneKey(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	const writers = 32
	revs := make([]int64, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			res, err := s.Put(testContext(t), []byte("/hot"), []byte(fmt.Sprint(i)))
			if err != nil {
				errs <- err
				return
			}
			revs[i] = res.Revision
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kv, ok, err := s.Get(testContext(t), []byte("/hot"), 0)
	if err != nil || !ok || kv.Version != writers || kv.CreateRevision != 2 {
		t.Fatalf("after %d concurrent puts: %+v ok=%v err=%v; want version %d, created at 2", writers, kv, ok, err, writers)
	}
	// Every version 1..32 exists once, in revision order.
	slices.Sort(revs)
	for i, rev := range revs {
		kv, _, err := s.Get(testContext(t), []byte("/hot"), rev)
		if err != nil || kv.Version != int64(i+1) || kv.CreateRevision != 2 || kv.ModRevision != rev {
			t.Fatalf("at revision %d: %+v, %v; want version %d", rev, kv, err, i+1)
		}
	}
}

// Two writers a key, each putting over and over, fill batches of distinct
// keys (which put_batch writes with one insert once there are 4) and of keys
// given twice, while the other batch in flight holds some of the same keys:
// every row must be built from its key's newest row, whichever batch wrote
// that.
func TestBatchesOfDistinctKeysCountVersions(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	const keys, writers, puts = 8, 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for range puts {
				if _, err := s.Put(testContext(t), fmt.Appendf(nil, "/own/%d", w%keys), []byte("v")); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const each = writers / keys * puts
	for k := range keys {
		key := fmt.Appendf(nil, "/own/%d", k)
		kv, ok, err := s.Get(testContext(t), key, 0)
		if err != nil || !ok || kv.Version != each {
			t.Fatalf("%s after %d puts: %+v ok=%v err=%v; want version %d", key, each, kv, ok, err, each)
		}
		for v := kv.Version; v > 1; v-- { // back through every version
			prev, _, err := s.Get(testContext(t), key, kv.ModRevision-1)
			if err != nil || prev.Version != v-1 || prev.CreateRevision != kv.CreateRevision {
				t.Fatalf("%s below revision %d: %+v, %v; want version %d", key, kv.ModRevision, prev, err, v-1)
			}
			kv = prev
		}
	}
}

func TestConcurrentPutsToDistinctKeys(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	const writers = 32
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			if _, err := s.Put(testContext(t), fmt.Appendf(nil, "/k/%02d", i), []byte("v")); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	res, err := s.Range(testContext(t), store.RangeRequest{KeyRange: store.Prefix([]byte("/k/"))})
	if err != nil || len(res.KVs) != writers || res.Revision != writers+1 {
		t.Fatalf("range = %d keys at revision %d, %v; want %d at %d", len(res.KVs), res.Revision, err, writers, writers+1)
	}
	seen := map[int64]bool{}
	for _, kv := range res.KVs {
		if seen[kv.ModRevision] || kv.Version != 1 || kv.CreateRevision != kv.ModRevision {
			t.Fatalf("key %+v: revisions must be distinct, version 1", kv)
		}
		seen[kv.ModRevision] = true
	}
}

// A writer holding one key open does not hold up a writer of another key,
// while a writer of the same key waits for it.
func TestWritersOfDifferentKeysDoNotWait(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, "select walwatch.put($1, $2)", []byte("/a"), []byte("held")); err != nil {
		t.Fatal(err)
	}
	// Completes while /a's writer is still open.
	if _, err := s.Put(ctx, []byte("/b"), []byte("free")); err != nil {
		t.Fatal(err)
	}
	sameKey := make(chan store.PutResponse, 1)
	go func() {
		res, err := s.Put(ctx, []byte("/a"), []byte("second"))
		if err != nil {
			t.Error(err)
		}
		sameKey <- res
	}()
	// The second writer of /a is blocked on the first one's key lock.
	wait.For(t, "the second writer to wait for the key lock", func() bool {
		var waiting bool
		err := pool.QueryRow(ctx, "select exists (select 1 from pg_locks where locktype = 'advisory' and not granted)").Scan(&waiting)
		return err == nil && waiting
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-sameKey
	kv, _, err := s.Get(ctx, []byte("/a"), 0)
	if err != nil || kv.Version != 2 || kv.ModRevision != res.Revision || string(kv.Value) != "second" {
		t.Fatalf("/a = %+v, %v; want version 2 at %d", kv, err, res.Revision)
	}
}

// The watch hub settles a revision nobody committed by inserting a filler row
// at (revision, 0). A put whose revision was claimed that way retries with the
// next one and succeeds.
func TestPutRetriesWhenItsRevisionIsClaimed(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	mustPut(t, s, "/a", "1") // 2
	// The next value the sequence hands out is 3: claim it as a filler would.
	if _, err := pool.Exec(ctx, "insert into walwatch.kv (revision, sub, key, tombstone) values (3, 0, ''::bytea, true)"); err != nil {
		t.Fatal(err)
	}
	if rev := mustPut(t, s, "/a", "2"); rev != 4 {
		t.Fatalf("put got revision %d, want 4 (3 was claimed)", rev)
	}
	kv, _, err := s.Get(ctx, []byte("/a"), 0)
	if err != nil || kv.Version != 2 || kv.ModRevision != 4 {
		t.Fatalf("/a = %+v, %v", kv, err)
	}
	// The filler is never shown.
	res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0}), Revision: 3})
	if err != nil || !slices.Equal(kvs(res), []string{"/a=1@2/2/1"}) {
		t.Fatalf("read at the filler's revision: %q, %v", kvs(res), err)
	}
}

func TestSQLAPIFromPlainSQL(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pg := conn.Conn().PgConn()
	// Plain SQL with string literals, as typed into psql.
	script := []struct{ sql, want string }{
		{`select walwatch.set('/routes/foo', '{"uri":"/get"}')`, "2"},
		{`select walwatch.set('/routes/bar', '{"uri":"/anything"}')`, "3"},
		{`select walwatch.set('/routes/foo', '{"uri":"/get2"}')`, "4"},
		{`select value from walwatch.get('/routes/foo')`, `{"uri":"/get2"}`},
		{`select value from walwatch.get('/routes/foo', 2)`, `{"uri":"/get"}`},
		{`select string_agg(key, ',') from walwatch.get_all('/routes/')`, "/routes/bar,/routes/foo"},
		{`select walwatch.del('/routes/bar')`, "5"},
		{`select coalesce(walwatch.del('/routes/bar')::text, 'null')`, "null"},
		{`select string_agg(revision || ':' || key || ':' || tombstone, ',') from walwatch.changes('/routes/', 3)`, "4:/routes/foo:false,5:/routes/bar:true"},
		{`select compact_revision || ' ' || removed from walwatch.compact(4)`, "4 1"},
		{`select count(*) from walwatch.compact_older_than('1 hour')`, "1"},
		{`select compact_revision || ' ' || removed from walwatch.compact_keep_latest()`, "5 1"},
	}
	for _, step := range script {
		res, err := pg.Exec(ctx, step.sql).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", step.sql, err)
		}
		if got := string(res[0].Rows[0][0]); got != step.want {
			t.Fatalf("%s = %q, want %q", step.sql, got, step.want)
		}
	}
	// What plain SQL wrote, the Go store reads.
	kv, ok, err := s.Get(ctx, []byte("/routes/foo"), 0)
	if err != nil || !ok || string(kv.Value) != `{"uri":"/get2"}` || kv.Version != 2 {
		t.Fatalf("store read of a SQL write: %+v %v %v", kv, ok, err)
	}
	// A compacted read from SQL names the revision.
	_, err = pg.Exec(ctx, `select * from walwatch.get('/routes/foo', 3)`).ReadAll()
	if err == nil || !strings.Contains(err.Error(), "compacted") || !strings.Contains(err.Error(), "revision 5") {
		t.Fatalf("compacted read from SQL: %v", err)
	}
}

// Keys and values are bytes: one that is not UTF-8 text (a NUL, invalid
// UTF-8) must not break the text API's reads of its neighbours. The text
// API shows it in bytea's hex form; text, ASCII or not, stays text.
func TestSQLTextAPIWithAnyBytes(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	for _, kv := range [][2]string{
		{"/routes/a\x00b", "nul key"},
		{"/routes/bad\xff\xfe", "invalid key"},
		{"/routes/ok", "v\x00"},
		{"/routes/caf\u00e9", "caf\u00e9 \\ back"},
	} {
		if _, err := s.Put(ctx, []byte(kv[0]), []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ sql, want string }{
		{`select string_agg(key || '=' || value, ',' order by key) from walwatch.get_all('/routes/')`,
			`/routes/café=café \ back,/routes/ok=\x7600,\x2f726f757465732f610062=nul key,\x2f726f757465732f626164fffe=invalid key`},
		{`select string_agg(revision || ':' || key, ',' order by revision) from walwatch.changes('/routes/', 1)`,
			`2:\x2f726f757465732f610062,3:\x2f726f757465732f626164fffe,4:/routes/ok,5:/routes/café`},
		{`select value from walwatch.get('/routes/ok')`, `\x7600`},
		{`select value from walwatch.get('/routes/café')`, `café \ back`},
	}
	for _, tt := range tests {
		var got string
		if err := pool.QueryRow(ctx, tt.sql).Scan(&got); err != nil {
			t.Fatalf("%s: %v", tt.sql, err)
		}
		if got != tt.want {
			t.Errorf("%s = %q, want %q", tt.sql, got, tt.want)
		}
	}
}

// A delete answers at a revision that holds every write below it, as etcd's
// do: a put in its range that took a lower revision and is still open when
// the delete first reads (a later put has committed above it) is waited for
// and deleted too. Before, the delete missed it and answered "deleted
// nothing" at the later put's revision, with the key live below it.
func TestDeleteWaitsForWritesBelowIt(t *testing.T) {
	tests := []struct {
		name  string
		r     store.KeyRange
		later string // put and committed after the open put, above it
		want  int64
	}{
		{"key", store.Key([]byte("/d/a")), "/e/x", 1},
		{"prefix", store.Prefix([]byte("/d/")), "/e/x", 1},
		{"prefix with a later key in it", store.Prefix([]byte("/d/")), "/d/b", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, pool := newStore(t, store.Limits{})
			ctx := testContext(t)
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck
			var held int64
			if err := tx.QueryRow(ctx, "select walwatch.put($1, $2)", []byte("/d/a"), []byte("open")).Scan(&held); err != nil {
				t.Fatal(err)
			}
			mustPut(t, s, tt.later, "later")
			result := startBlocked(t, ctx, pool, "the delete", func() (store.DeleteResponse, error) { return s.Delete(ctx, tt.r) })
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			res, err := result()
			if err != nil || res.Deleted != tt.want || res.Revision <= held {
				t.Fatalf("delete = %+v, %v; want %d deleted above revision %d", res, err, tt.want, held)
			}
			got, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/d/"))})
			if err != nil || len(got.KVs) != 0 {
				t.Fatalf("after the delete: %q, %v", kvs(got), err)
			}
		})
	}
}

// Settling below a revision the sequence has not handed out fills only the
// ones it has: the chaos harness's SQL read at a future revision once
// filled a thousand revisions ahead, and the writers that came next stepped
// over them one by one.
func TestSettleBelowAFutureRevision(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	rev := mustPut(t, s, "/a", "1")
	if _, err := pool.Exec(ctx, "select walwatch.settle_below($1)", rev+1000); err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := pool.QueryRow(ctx, "select count(*) from walwatch.kv where revision > $1", rev).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows above revision %d after settling below a future revision (%v), want none", n, rev, err)
	}
	if next := mustPut(t, s, "/a", "2"); next != rev+1 {
		t.Fatalf("the next put got revision %d, want %d", next, rev+1)
	}
}

// A compaction waits for a write still open below its revision, as a
// delete does: committed after it, the write would sit below the compacted
// revision, where a watch hub starting afresh takes everything as settled
// and never shows it.
func TestCompactionWaitsForWritesBelowIt(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var held int64
	if err := tx.QueryRow(ctx, "select walwatch.put($1, $2)", []byte("/c/a"), []byte("open")).Scan(&held); err != nil {
		t.Fatal(err)
	}
	later := mustPut(t, s, "/c/b", "later")
	result := startBlocked(t, ctx, pool, "the compaction", func() (store.CompactResponse, error) { return s.Compact(ctx, later) })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := result(); err != nil || res.CompactRevision != later {
		t.Fatalf("compact = %+v, %v; want compacted at %d", res, err, later)
	}
	got, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/c/")), Revision: later})
	if err != nil || len(got.KVs) != 2 {
		t.Fatalf("read at the compacted revision: %q, %v; want /c/a and /c/b", kvs(got), err)
	}
}

// A filler never goes below the compacted revision: the revision there may
// have committed and lost its rows to the compaction, and a watch hub that
// missed it (a slot made again) must not settle it as never written.
func TestFillSkipsCompactedRevisions(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	first := mustPut(t, s, "/f/a", "1")
	second := mustPut(t, s, "/f/a", "2")
	if _, err := s.Compact(ctx, second); err != nil {
		t.Fatal(err)
	}
	// A revision handed out to a writer that never wrote: a hole, below
	// the put after it.
	var hole int64
	if err := pool.QueryRow(ctx, "select nextval('walwatch.revision')").Scan(&hole); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "/f/b", "3")
	var n int64
	if err := pool.QueryRow(ctx, "select walwatch.fill(array[$1::bigint, $2::bigint])", first, hole).Scan(&n); err != nil {
		t.Fatal(err)
	}
	var rows int64
	if err := pool.QueryRow(ctx, "select count(*) from walwatch.kv where revision = $1", first).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if n != 1 || rows != 0 {
		t.Fatalf("fill took %d revisions and left %d rows at the compacted revision %d; want 1 (only %d) and none",
			n, rows, first, hole)
	}
}

// TestFillSkipsRevisionsNotHandedOut asks walwatch.fill for revisions above
// the last committed one, as a hub's last request before a failover may ask
// the promoted standby, whose sequence resumes below what the old primary
// handed out: they are no holes, and the writers to come get them.
func TestFillSkipsRevisionsNotHandedOut(t *testing.T) {
	s, pool := newStore(t, store.Limits{})
	ctx := testContext(t)
	last := mustPut(t, s, "/f/a", "1")
	var n int64
	if err := pool.QueryRow(ctx, "select walwatch.fill(array[$1::bigint, $2::bigint])", last+1, last+2).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("fill took %d revisions the sequence had not handed out", n)
	}
	if next := mustPut(t, s, "/f/a", "2"); next != last+1 {
		t.Errorf("the put after %d got revision %d, want %d: fillers took the revisions between", last, next, last+1)
	}
}

// startBlocked runs op, what waits for a put the test holds open below it,
// and returns once op waits on a lock; it fails the test if op answers
// first. The function it returns waits for op's answer.
func startBlocked[T any](t *testing.T, ctx context.Context, pool *pgxpool.Pool, what string, op func() (T, error)) func() (T, error) {
	t.Helper()
	type result struct {
		res T
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := op()
		done <- result{res, err}
	}()
	var early *result
	wait.For(t, what+" to wait for the open put", func() bool {
		select {
		case r := <-done:
			early = &r
			return true
		default:
		}
		var waiting bool
		err := pool.QueryRow(ctx, "select exists (select 1 from pg_locks where not granted)").Scan(&waiting)
		return err == nil && waiting
	})
	if early != nil {
		t.Fatalf("%s answered while a put below it was open: %+v, %v", what, early.res, early.err)
	}
	return func() (T, error) {
		r := <-done
		return r.res, r.err
	}
}

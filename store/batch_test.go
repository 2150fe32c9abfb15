package store_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
)

// occupyPutWorkers holds /busy's lock and puts to it until every put worker
// waits for that lock, so later puts queue; release lets them all go.
func occupyPutWorkers(t *testing.T, s *store.Store, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	ctx := testContext(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock(walwatch.key_lock($1))", []byte("/busy")); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, store.PutWorkers)
	for i := range store.PutWorkers {
		go func() {
			_, err := s.Put(ctx, []byte("/busy"), []byte("x"))
			errs <- err
		}()
		// One more worker waits for the lock before the next put starts, so
		// each worker holds exactly one of them.
		waitFor(t, func() bool {
			var n int
			err := pool.QueryRow(ctx, "select count(*) from pg_locks where locktype = 'advisory' and not granted").Scan(&n)
			return err == nil && n == i+1
		})
	}
	return func() {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for range store.PutWorkers {
			if err := <-errs; err != nil {
				t.Errorf("put /busy: %v", err)
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
	waitFor(t, func() bool { return store.QueuedPuts(s) == len(keys) })
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

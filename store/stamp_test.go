package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// A connection trusts the current revision it read while its snapshot is
// alike, and reads it again once any write transaction has ended: a put
// through the store, or a transaction that touches no walwatch table.
func TestStampedRevision(t *testing.T) {
	// One connection, so that every read is on the one given the stamp.
	s, pool := newStoreWith(t, store.Limits{}, func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx := testContext(t)
	put := func(key string) int64 { return mustPut(t, s, key, "v") }
	put("/s/b")
	rev := put("/s/a")

	reads := stampedReads(ctx, s)
	writes := []struct {
		name  string
		write func() int64 // the current revision after it
	}{
		{"put", func() int64 { return put("/s/a") }},
		{"transaction outside walwatch", func() int64 {
			if _, err := pool.Exec(ctx, "select txid_current()"); err != nil {
				t.Fatal(err)
			}
			return rev
		}},
	}
	const forged = 1 << 40
	for _, r := range reads {
		for _, w := range writes {
			t.Run(r.name+" after "+w.name, func(t *testing.T) {
				// Transactions of other tests end in between now and
				// then (snapshots are the cluster's); try until a read
				// falls where none did.
				wait.For(t, "a read that trusts the stamp", func() bool {
					conn, err := pool.Acquire(ctx)
					if err != nil {
						t.Fatal(err)
					}
					_, err = store.ForgeStamps(ctx, conn.Conn(), forged)
					conn.Release()
					if err != nil {
						t.Fatal(err)
					}
					got, err := r.read()
					if err != nil {
						t.Fatal(err)
					}
					return got == forged
				})
				rev = w.write()
				for range 2 { // the stamp read, then trusted
					if got, err := r.read(); err != nil || got != rev {
						t.Fatalf("after a %s: current revision %d, %v; want %d", w.name, got, err, rev)
					}
				}
			})
		}
	}
}

// stampedRead is a read that may trust its connection's stamp: it
// returns the current revision it answers at.
type stampedRead struct {
	name string
	read func() (int64, error)
}

// stampedReads are the store's reads that keep a stamp: a get of /s/a, a
// batch of gets and the current revision alone.
func stampedReads(ctx context.Context, s *store.Store) []stampedRead {
	return []stampedRead{
		{"get", func() (int64, error) {
			res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/s/a"))})
			return res.Revision, err
		}},
		{"batch of gets", func() (int64, error) {
			res, err := store.GetBatch(ctx, s, []byte("/s/a"), []byte("/s/b"), []byte("/s/none"))
			if err != nil {
				return 0, err
			}
			if res[0].Revision != res[1].Revision || res[1].Revision != res[2].Revision {
				return 0, fmt.Errorf("one batch at revisions %d, %d and %d", res[0].Revision, res[1].Revision, res[2].Revision)
			}
			return res[0].Revision, nil
		}},
		{"current revision", func() (int64, error) { return s.CurrentRevision(ctx) }},
	}
}

// A connection can reach another server without reconnecting (through a
// pooler, after a failover) and find a snapshot there with the same text
// as its stamp's: the stamp names the server it was read on, and is not
// trusted on another.
func TestStampOfAnotherServer(t *testing.T) {
	s, pool := newStoreWith(t, store.Limits{}, func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx := testContext(t)
	mustPut(t, s, "/s/b", "v")
	rev := mustPut(t, s, "/s/a", "v")
	const forged = 1 << 40
	snapshot := func(forge bool) string {
		t.Helper()
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		var text string
		if forge {
			text, err = store.ForgeStampsElsewhere(ctx, conn.Conn(), forged)
		} else {
			text, err = store.SnapshotText(ctx, conn.Conn())
		}
		if err != nil {
			t.Fatal(err)
		}
		return text
	}
	for _, r := range stampedReads(ctx, s) {
		t.Run(r.name, func(t *testing.T) {
			// Only a read whose snapshot is the forged one's tells: try
			// until no other test's transaction ended around it.
			wait.For(t, "a read in the forged stamp's snapshot", func() bool {
				before := snapshot(true)
				got, err := r.read()
				if err != nil {
					t.Fatal(err)
				}
				if snapshot(false) != before {
					return false
				}
				if got != rev {
					t.Fatalf("with another server's stamp: current revision %d, want %d", got, rev)
				}
				return true
			})
		})
	}
}

// A standby's snapshot keeps the transactions in progress out of what
// pg_current_snapshot shows, so two alike may see different rows: a commit
// replayed while an older transaction stays open changes neither the
// snapshot's xmin nor its xmax. There the current revision is read every
// time.
func TestStampedRevisionOnStandby(t *testing.T) {
	t.Parallel()
	primary, url := pgtest.PrivateDatabase(t, pgcluster.Options{})
	ctx := testContext(t)
	writes := poolAt(t, url, 4)
	if _, err := sql.Migrate(ctx, writes); err != nil {
		t.Fatal(err)
	}
	standby := pgtest.StartStandby(t, primary, pgcluster.StandbyOptions{})
	s := store.New(poolAt(t, standby.ConnString("walwatch"), 1), store.Limits{})
	check := poolAt(t, standby.ConnString("walwatch"), 1)
	replayed := func(key string) {
		t.Helper()
		wait.For(t, key+" on the standby", func() bool {
			var n int
			err := check.QueryRow(ctx, "select count(*) from walwatch.kv where key = $1", []byte(key)).Scan(&n)
			return err == nil && n == 1
		})
	}
	begin := func() pgx.Tx {
		t.Helper()
		tx, err := writes.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		if _, err := tx.Exec(ctx, "select txid_current()"); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	putSQL := "select walwatch.put($1, 'v')"

	// old keeps the standby's xmin; last takes its transaction id before
	// first commits, and the newest revision after.
	old, last := begin(), begin()
	var first, newest int64
	if err := writes.QueryRow(ctx, putSQL, []byte("/first")).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if err := last.QueryRow(ctx, putSQL, []byte("/last")).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	replayed("/first")
	if res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/last"))}); err != nil || res.Revision != first || len(res.KVs) != 0 {
		t.Fatalf("before the last commit: %+v, %v; want revision %d and no key", res, err, first)
	}
	if err := last.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	replayed("/last")
	res, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/last"))})
	if err != nil || res.Revision != newest || len(res.KVs) != 1 || res.KVs[0].ModRevision != newest {
		t.Fatalf("after the last commit: %+v, %v; want revision %d and the key", res, err, newest)
	}
	if err := old.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

// poolAt is a pool of at most n connections to url, closed when the test
// ends.
func poolAt(t *testing.T, url string, n int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = n
	pool, err := pgxpool.NewWithConfig(testContext(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

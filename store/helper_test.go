package store_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// newStore returns a store on a fresh, migrated database.
func newStore(tb testing.TB, limits store.Limits) (*store.Store, *pgxpool.Pool) {
	tb.Helper()
	return newStoreWith(tb, limits, func(*pgxpool.Config) {})
}

// newStoreWith is newStore on a pool whose configuration configure changes.
func newStoreWith(tb testing.TB, limits store.Limits, configure func(*pgxpool.Config)) (*store.Store, *pgxpool.Pool) {
	tb.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDatabase(tb))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 64
	configure(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	if _, err := sql.Migrate(ctx, pool); err != nil {
		tb.Fatal(err)
	}
	return store.New(pool, limits), pool
}

func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func mustPut(tb testing.TB, s *store.Store, key, value string) int64 {
	tb.Helper()
	res, err := s.Put(testContext(tb), []byte(key), []byte(value))
	if err != nil {
		tb.Fatalf("put %q: %v", key, err)
	}
	return res.Revision
}

// putTen puts the keys prefix0 to prefix9 and returns the last one's
// revision.
func putTen(tb testing.TB, s *store.Store, prefix string) int64 {
	tb.Helper()
	var rev int64
	for i := range 10 {
		rev = mustPut(tb, s, fmt.Sprintf("%s%d", prefix, i), "v")
	}
	return rev
}

func rowCount(tb testing.TB, pool *pgxpool.Pool) int64 {
	tb.Helper()
	var n int64
	if err := pool.QueryRow(testContext(tb), "select count(*) from walwatch.kv").Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// kvs renders a range result as key=value@mod/create/version strings.
func kvs(res store.RangeResponse) []string {
	out := make([]string, 0, len(res.KVs))
	for _, kv := range res.KVs {
		out = append(out, fmt.Sprintf("%s=%s@%d/%d/%d", kv.Key, kv.Value, kv.ModRevision, kv.CreateRevision, kv.Version))
	}
	return out
}

// fillNextRevision writes a filler row at the revision the next write
// after one more would take, and returns it: the hub writes one for a
// revision nobody wrote within its grace period (walwatch.fill fills only
// below a committed revision: a race a test cannot stage).
func fillNextRevision(tb testing.TB, pool *pgxpool.Pool) int64 {
	tb.Helper()
	ctx := testContext(tb)
	var next int64
	if err := pool.QueryRow(ctx, "select nextval('walwatch.revision') + 1").Scan(&next); err != nil {
		tb.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "insert into walwatch.kv (revision, sub, key, value, tombstone) values ($1, 0, '', null, true)", next); err != nil {
		tb.Fatal(err)
	}
	return next
}

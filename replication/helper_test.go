package replication_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
)

// env is a migrated database with a store on it.
type env struct {
	url   string
	pool  *pgxpool.Pool
	store *store.Store
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	return newEnvAt(tb, pgtest.NewDatabase(tb))
}

func newEnvAt(tb testing.TB, url string) *env {
	tb.Helper()
	pool := newPool(tb, url, 40, 0)
	if _, err := sql.Migrate(context.Background(), pool); err != nil {
		tb.Fatal(err)
	}
	return &env{url: url, pool: pool, store: store.New(pool, store.Limits{})}
}

// socketURL is url, a database of the shared cluster, through the server's
// Unix socket instead of TCP.
func socketURL(tb testing.TB, url string) string {
	tb.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		tb.Fatal(err)
	}
	return pgtest.Shared(tb).SocketConnString(cfg.Database)
}

// newPool opens a pool on url that the test closes when it ends.
func newPool(tb testing.TB, url string, maxConns, minConns int32) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = maxConns, minConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// startHub runs a hub until the test ends and waits until it is ready.
func (e *env) startHub(tb testing.TB, cfg replication.Config) *replication.Hub {
	tb.Helper()
	return e.startHubUntil(context.Background(), tb, cfg)
}

// startHubUntil runs a hub until ctx or the test ends and waits until it is
// ready; the test's end waits for the hub to stop.
func (e *env) startHubUntil(ctx context.Context, tb testing.TB, cfg replication.Config) *replication.Hub {
	tb.Helper()
	cfg.Pool = e.pool
	if cfg.Logger == nil && os.Getenv("WALWATCH_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h, err := replication.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	runErr := sync.OnceValue(func() error { return <-done })
	tb.Cleanup(func() {
		cancel()
		if err := runErr(); err != nil {
			tb.Errorf("hub: %v", err)
		}
	})
	select {
	case <-h.Ready():
	case <-h.Stopped():
		tb.Fatalf("hub stopped before it was ready: %v", runErr())
	case <-time.After(60 * time.Second):
		tb.Fatal("hub not ready within 60s")
	}
	return h
}

func (e *env) put(tb testing.TB, key, value string) int64 {
	tb.Helper()
	res, err := e.store.Put(context.Background(), []byte(key), []byte(value))
	if err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
	return res.Revision
}

func watch(tb testing.TB, h *replication.Hub, req replication.WatchRequest) *replication.Watcher {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	w, err := h.Watch(ctx, req)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	return w
}

// seen is an event as the tests compare them.
type seen struct {
	Rev     int64
	Sub     int32
	Type    replication.EventType
	Key     string
	Value   string
	Version int64
}

func (s seen) String() string {
	return fmt.Sprintf("%d.%d %s %s=%s v%d", s.Rev, s.Sub, s.Type, s.Key, s.Value, s.Version)
}

// collect reads events from w until it has n or the deadline passes; it
// fails the test on a gap in sub order inside a revision or a revision out
// of order.
func collect(tb testing.TB, w *replication.Watcher, n int, timeout time.Duration) []seen {
	tb.Helper()
	var out []seen
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case resp, ok := <-w.C:
			if !ok {
				tb.Fatalf("watch ended after %d of %d events: %v", len(out), n, w.Err())
			}
			for _, ev := range resp.Events {
				s := seen{ev.Revision, ev.Sub, ev.Type, string(ev.Key), string(ev.Value), ev.Version}
				if len(out) > 0 {
					last := out[len(out)-1]
					if s.Rev < last.Rev || (s.Rev == last.Rev && s.Sub <= last.Sub) {
						tb.Fatalf("event %v after %v: out of order or duplicated", s, last)
					}
				}
				out = append(out, s)
			}
		case <-deadline:
			tb.Fatalf("got %d of %d events within %s: %v", len(out), n, timeout, out)
		}
	}
	return out
}

// history reads what the table says watchers of rng from start must see.
func (e *env) history(tb testing.TB, rng store.KeyRange, start int64) []seen {
	tb.Helper()
	rows, err := e.pool.Query(context.Background(),
		`select revision, sub, tombstone, key, coalesce(value, ''), version from walwatch.kv
		  where key <> '' and revision >= $1 order by revision, sub`, start)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out []seen
	for rows.Next() {
		var s seen
		var tomb bool
		var key, value []byte
		if err := rows.Scan(&s.Rev, &s.Sub, &tomb, &key, &value, &s.Version); err != nil {
			tb.Fatal(err)
		}
		if !rng.Contains(key) {
			continue
		}
		s.Key, s.Value = string(key), string(value)
		if tomb {
			s.Type = replication.EventDelete
		}
		out = append(out, s)
	}
	return out
}

// manyRows puts n keys under /many/ and analyzes the table: a table of some
// size, so that the planner has choices to weigh.
func (e *env) manyRows(tb testing.TB, n int) {
	tb.Helper()
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `select count(walwatch.put(convert_to('/many/' || i, 'UTF8'), '\x76'::bytea))
		from generate_series(1, $1) i`, n); err != nil {
		tb.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, "analyze walwatch.kv"); err != nil {
		tb.Fatal(err)
	}
}

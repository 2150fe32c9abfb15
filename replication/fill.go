package replication

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Tunables of the filler.
var (
	// holderReportAfter is how long a filler may wait on a transaction still
	// holding a revision before the hub names that transaction in its logs.
	holderReportAfter = time.Second
	// fillBackoffMax bounds the wait before retrying a filler that failed.
	fillBackoffMax = 2 * time.Second
	// maxFillBatch bounds the revisions one filler statement settles.
	maxFillBatch = 10000
)

// filler settles the holes the reorder buffer waits on, each with a filler
// row at exactly its revision (walwatch.fill, DESIGN.md "The hard part"):
// PostgreSQL makes the insert wait for a transaction still holding the
// revision; if that one commits, the filler does nothing and the real row
// comes through the stream; if it rolled back, or the sequence skipped the
// value, the filler takes the revision. Whatever the filler did arrives
// through the stream too.
//
// A filler statement may wait a long time, so it runs off the run loop, on
// its own connection, one at a time; while it waits, the filler names the
// transaction it waits for (and past Config.HolderLimit ends it).
type filler struct {
	pool        *pgxpool.Pool
	grace       time.Duration // how long a hole may stay open before it is filled (Config.FillGrace)
	holderLimit time.Duration // Config.HolderLimit
	log         *slog.Logger
	metrics     *Metrics
	trouble     *trouble
	done        chan fillResult // the finished statement's result, for the run loop
	wg          sync.WaitGroup  // the statement running and its holder watch

	// Owned by the run loop.
	running   bool          // a statement is running: its result has not been taken
	backoff   time.Duration // the wait after the last failure, doubled by each next one
	notBefore time.Time     // after a failure, no statement before it
}

type fillResult struct {
	filled int64
	err    error
}

func newFiller(cfg Config, log *slog.Logger) *filler {
	return &filler{
		pool: cfg.Pool, grace: cfg.FillGrace, holderLimit: cfg.HolderLimit, log: log, metrics: cfg.Metrics,
		trouble: newTrouble(log, "settling a hole with a filler row failed"),
		done:    make(chan fillResult, 1),
	}
}

// delay is how long to wait before filling a hole that opened at since:
// its grace period, and after a failed statement, at least the backoff.
func (f *filler) delay(since time.Time) time.Duration {
	return max(0, f.grace-time.Since(since), time.Until(f.notBefore))
}

// start fills revs in a goroutine of its own; the result comes on done.
func (f *filler) start(ctx context.Context, revs []int64) {
	f.running = true
	f.wg.Go(func() {
		filled, err := f.fill(ctx, revs)
		f.done <- fillResult{filled: filled, err: err}
	})
}

// finished takes the result of the statement that ran and returns how long
// to wait before filling what is still open: the grace period, or after a
// failure (PostgreSQL is down), a backoff that doubles up to fillBackoffMax.
func (f *filler) finished(ctx context.Context, res fillResult) (retryIn time.Duration) {
	f.running = false
	f.metrics.filled(res.filled)
	if res.err == nil || ctx.Err() != nil {
		f.backoff = 0
		f.trouble.ok()
		return f.grace
	}
	f.backoff = min(max(2*f.backoff, f.grace), fillBackoffMax)
	f.notBefore = time.Now().Add(f.backoff)
	f.trouble.failed(res.err, "retry_in", f.backoff)
	return f.backoff
}

// wait waits for the statement running, if one is, and its holder watch
// to return.
func (f *filler) wait() { f.wg.Wait() }

// fill inserts filler rows for revs on its own connection, and while it
// waits, reports (and with a holder limit, ends) the transaction holding one.
func (f *filler) fill(ctx context.Context, revs []int64) (int64, error) {
	conn, err := f.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("fill holes: %w", err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	done := make(chan struct{})
	defer close(done)
	f.wg.Go(func() { f.watchHolder(ctx, pid, revs[0], done) })

	var filled int64
	if err := conn.QueryRow(ctx, "select walwatch.fill($1)", revs).Scan(&filled); err != nil {
		return 0, fmt.Errorf("fill holes at revisions %d..%d: %w", revs[0], revs[len(revs)-1], err)
	}
	return filled, nil
}

// watchHolder names the session a filler waits for, once it has waited
// holderReportAfter, and ends it past the holder limit.
func (f *filler) watchHolder(ctx context.Context, fillerPID uint32, rev int64, done <-chan struct{}) {
	t := time.NewTicker(holderReportAfter)
	defer t.Stop()
	for {
		select {
		case <-done:
			f.metrics.holder(0)
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var (
			pid int32
			age time.Duration
		)
		err := f.pool.QueryRow(ctx,
			`select a.pid, now() - coalesce(a.xact_start, a.backend_start)
			   from pg_stat_activity a
			  where a.pid = any(pg_blocking_pids($1)) order by a.xact_start limit 1`, int32(fillerPID)).Scan(&pid, &age)
		if err != nil {
			continue // not blocked (any more), or the query failed: look again later
		}
		f.metrics.holder(age)
		f.log.Warn("a transaction holds a revision open; every watcher waits for it",
			"revision", rev, "pid", pid, "transaction_age", age.Round(time.Millisecond))
		if f.holderLimit > 0 && age > f.holderLimit {
			f.log.Warn("terminating the session holding a revision past the holder limit", "pid", pid, "limit", f.holderLimit)
			if _, err := f.pool.Exec(ctx, "select pg_terminate_backend($1)", pid); err != nil {
				f.log.Warn("terminate revision holder", "pid", pid, "err", err)
			}
		}
	}
}

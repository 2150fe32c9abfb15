// Package expiry holds the lease expiry duty: of every process that serves
// a database (each cp), exactly one at a time revokes the leases whose
// deadline, by the database's clock, has passed. The duty is a session-level
// advisory lock on a connection of its own: it passes to another process
// when its holder's connection ends, however the holder died.
package expiry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tunables of the duty.
var (
	// DefaultInterval is how often the holder looks for expired leases:
	// a lease is revoked within about this much of its deadline.
	DefaultInterval = 100 * time.Millisecond
	// DefaultRetry is how often a process without the duty tries to take
	// it: the duty moves within about this much of its holder's end.
	DefaultRetry = time.Second
	// batchLeases bounds the leases revoked by one statement.
	batchLeases = 1000
)

// dutyLock is the advisory lock key of the duty ("wwleases" in ASCII).
const dutyLock int64 = 0x77776c6561736573

// Config configures Run.
type Config struct {
	Pool     *pgxpool.Pool
	Interval time.Duration // 0: DefaultInterval
	Retry    time.Duration // 0: DefaultRetry
	Logger   *slog.Logger  // nil discards
	// Expired, when set, is told of each lease revoked for its deadline.
	Expired func(id, revision, deleted int64)
}

// Run takes the duty whenever it is free and does it until ctx ends; it
// returns nil then. Failures (PostgreSQL down, the connection lost) are
// logged and retried.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for {
		err := hold(ctx, cfg)
		if ctx.Err() != nil {
			return nil
		}
		cfg.Logger.Warn("lease expiry duty lost; trying to take it again", "err", err, "retry_in", cfg.Retry)
		if !sleep(ctx, cfg.Retry) {
			return nil
		}
	}
}

// hold waits for the duty on a connection of its own and does it while
// the connection lives.
func hold(ctx context.Context, cfg Config) error {
	pc, err := cfg.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// The lock lives as long as the session: the connection is ours to
	// close, never to go back to the pool still holding it.
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing ends the session, and the lock with it

	for {
		var got bool
		if err := conn.QueryRow(ctx, "select pg_try_advisory_lock($1)", dutyLock).Scan(&got); err != nil {
			return fmt.Errorf("try the duty's lock: %w", err)
		}
		if got {
			break
		}
		if !sleep(ctx, cfg.Retry) {
			return ctx.Err()
		}
	}
	// As etcd's new leader does: every lease gets its full TTL from now, so
	// none whose owner kept it alive expires for the change of hands.
	var extended int64
	if err := conn.QueryRow(ctx, "select walwatch.extend_leases()").Scan(&extended); err != nil {
		return fmt.Errorf("extend leases: %w", err)
	}
	cfg.Logger.Info("holding the lease expiry duty", "leases_extended", extended)

	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for {
		if err := expire(ctx, conn, cfg); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// expire revokes the expired leases, in batches until none is left.
func expire(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	for {
		rows, err := conn.Query(ctx, "select id, revision, deleted from walwatch.expire_leases($1)", batchLeases)
		if err != nil {
			return fmt.Errorf("expire leases: %w", err)
		}
		n := 0
		var id, rev, deleted int64
		_, err = pgx.ForEachRow(rows, []any{&id, &rev, &deleted}, func() error {
			n++
			cfg.Logger.Debug("lease expired", "lease", id, "revision", rev, "keys_deleted", deleted)
			if cfg.Expired != nil {
				cfg.Expired(id, rev, deleted)
			}
			return nil
		})
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("expire leases: %w", err)
		}
		if n < batchLeases {
			return nil
		}
	}
}

// sleep waits d or until ctx ends, and reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

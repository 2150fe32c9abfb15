// Package expiry holds the lease expiry duty: of every process that serves
// a database (each cp), exactly one at a time (package duty) revokes the
// leases whose deadline, by the database's clock, has passed.
package expiry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/duty"
)

// Tunables of the duty.
var (
	// DefaultInterval is how often the holder looks for expired leases:
	// a lease is revoked within about this much of its deadline.
	DefaultInterval = 100 * time.Millisecond
	// DefaultRetry is how often a process without the duty tries to take
	// it: the duty moves within about this much of its holder's end.
	DefaultRetry = duty.DefaultRetry
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
	d := duty.Config{Pool: cfg.Pool, Lock: dutyLock, Name: "lease expiry", Retry: cfg.Retry, Logger: cfg.Logger}
	return duty.Run(ctx, d, func(ctx context.Context, conn *pgx.Conn) error {
		// As etcd's new leader does: every lease gets its full TTL from
		// now, so none whose owner kept it alive expires for the change of
		// hands.
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
	})
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

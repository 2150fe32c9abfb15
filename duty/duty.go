// Package duty runs a duty that exactly one of the processes serving a
// database does at a time (each cp runs every duty; one holds it). The duty
// is a session-level advisory lock on a connection of its own: it passes to
// another process when its holder's connection ends, however the holder
// died.
package duty

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultRetry is how often a process without a duty tries to take it: a
// duty moves within about this much of its holder's end.
var DefaultRetry = time.Second

// Config names a duty and says how to wait for it.
type Config struct {
	Pool *pgxpool.Pool
	// Lock is the duty's advisory lock key, one per duty.
	Lock int64
	// Name says which duty in logs ("lease expiry").
	Name   string
	Retry  time.Duration // 0: DefaultRetry
	Logger *slog.Logger  // nil discards
}

// Run takes the duty whenever it is free and, while it holds it, runs do
// with the duty's connection, which do may use; do returns when its work
// fails (the connection lost, PostgreSQL down), and the duty is let go and
// taken again. Run returns nil once ctx ends.
func Run(ctx context.Context, cfg Config, do func(ctx context.Context, conn *pgx.Conn) error) error {
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for {
		err := hold(ctx, cfg, do)
		if ctx.Err() != nil {
			return nil
		}
		cfg.Logger.Warn(cfg.Name+" duty lost; trying to take it again", "err", err, "retry_in", cfg.Retry)
		if !Sleep(ctx, cfg.Retry) {
			return nil
		}
	}
}

// hold waits for the duty on a connection of its own and does it while
// the connection lives.
func hold(ctx context.Context, cfg Config, do func(ctx context.Context, conn *pgx.Conn) error) error {
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
		if err := conn.QueryRow(ctx, "select pg_try_advisory_lock($1)", cfg.Lock).Scan(&got); err != nil {
			return fmt.Errorf("try the %s duty's lock: %w", cfg.Name, err)
		}
		if got {
			break
		}
		if !Sleep(ctx, cfg.Retry) {
			return ctx.Err()
		}
	}
	return do(ctx, conn)
}

// Sleep waits d or until ctx ends, and reports whether it waited d.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

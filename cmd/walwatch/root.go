package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch/store"
)

// globals are the flags every command shares.
type globals struct {
	postgres string
	output   string
	stdout   io.Writer
	stderr   io.Writer
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "walwatch",
		Short: "etcd's key-value and watch semantics on PostgreSQL",
		Long: `walwatch keeps keys in an append-only revision table in PostgreSQL and
serves them with etcd's semantics: revisions, reads at any revision,
transactions, compaction, and watches driven by logical replication.

The connection comes from --postgres, else WALWATCH_POSTGRES, else
DATABASE_URL, else the usual PG* environment variables.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("unknown output format %q: use table or json", g.output)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.postgres, "postgres", "", "PostgreSQL connection URL or DSN (default: $WALWATCH_POSTGRES, $DATABASE_URL, PG* variables)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(
		newMigrateCommand(g),
		newPutCommand(g),
		newGetCommand(g),
		newDelCommand(g),
		newLeaseCommand(g),
		newCompactCommand(g),
		newSlotCommand(g),
		newWatchCommand(g),
		newCPCommand(g),
		newDPCommand(g),
		newDemoCommand(g),
	)
	return root
}

// connString picks the connection string: the flag, then WALWATCH_POSTGRES,
// then DATABASE_URL; empty leaves pgx to read the PG* variables.
func (g *globals) connString() string {
	for _, s := range []string{g.postgres, os.Getenv("WALWATCH_POSTGRES"), os.Getenv("DATABASE_URL")} {
		if s != "" {
			return s
		}
	}
	return ""
}

// serverPoolSize is the connection pool of the long-running commands (cp,
// dp) unless the connection string sets pool_max_conns: pgxpool's default
// (4 on two cores) would queue every request behind four.
const serverPoolSize = 32

// pool connects to PostgreSQL; the caller closes it.
func (g *globals) pool(ctx context.Context) (*pgxpool.Pool, error) {
	return g.poolOf(ctx, 0)
}

// poolOf connects with at least size connections, unless the connection
// string says otherwise.
func (g *globals) poolOf(ctx context.Context, size int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(g.connString())
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	if size > 0 && !strings.Contains(g.connString(), "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, size)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return pool, nil
}

// withStore runs fn with a store on a fresh pool.
func (g *globals) withStore(ctx context.Context, fn func(*store.Store) error) error {
	return g.withPool(ctx, func(pool *pgxpool.Pool) error { return fn(store.New(pool, store.Limits{})) })
}

// withPool runs fn on a pool that is closed when fn returns: what a
// short-lived command needs.
func (g *globals) withPool(ctx context.Context, fn func(*pgxpool.Pool) error) error {
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool)
}

// logger is the log of long-running commands: text on stderr.
func (g *globals) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// print writes v as JSON with -o json, else calls table.
func (g *globals) print(v any, table func(w io.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(g.stdout)
		return enc.Encode(v)
	}
	table(g.stdout)
	return nil
}

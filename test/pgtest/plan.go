package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Querier is what CheckCachedPlan reads through: one connection, such as a
// *pgxpool.Conn or a *pgx.Conn.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CheckCachedPlan fails t unless the statement sql, prepared on conn's
// session, ran at least once with the plan PostgreSQL caches for it (a
// generic plan) rather than one made for that call alone.
func CheckCachedPlan(t testing.TB, ctx context.Context, conn Querier, sql string) {
	t.Helper()
	var generic, custom int64
	if err := conn.QueryRow(ctx, "select generic_plans, custom_plans from pg_prepared_statements where statement = $1",
		sql).Scan(&generic, &custom); err != nil {
		t.Fatalf("read the statement's plans: %v", err)
	}
	if generic == 0 {
		t.Errorf("the statement was planned for every call (%d custom plans, no generic one):\n%s", custom, sql)
	}
}

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

// CheckNoJIT fails t if PostgreSQL would compile the statement sql, run
// with args, to machine code: when its plan's cost passes jit_above_cost
// (100,000 by default), every execution compiles first, tens of
// milliseconds on a statement that reads in well under one. The plan is
// the one made for args, as for any of a statement's first five calls.
func CheckNoJIT(t testing.TB, ctx context.Context, conn Querier, sql string, args ...any) {
	t.Helper()
	var above float64
	if err := conn.QueryRow(ctx, "select current_setting('jit_above_cost')::float8").Scan(&above); err != nil {
		t.Fatalf("read jit_above_cost: %v", err)
	}
	var plan []struct {
		Plan struct {
			TotalCost float64 `json:"Total Cost"`
		} `json:"Plan"`
	}
	if err := conn.QueryRow(ctx, "explain (format json) "+sql, args...).Scan(&plan); err != nil {
		t.Fatalf("explain the statement: %v", err)
	}
	if len(plan) != 1 {
		t.Fatalf("explain gave %d plans, want 1", len(plan))
	}
	if above >= 0 && plan[0].Plan.TotalCost > above {
		t.Errorf("the statement's plan costs %.0f, above jit_above_cost (%.0f): every call would be compiled first:\n%s",
			plan[0].Plan.TotalCost, above, sql)
	}
}

package pgcluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TestStandbyFailover starts a synchronous standby, checks that a commit on
// the primary is there, kills the primary, promotes the standby and writes
// to it through a multi-host connection string.
func TestStandbyFailover(t *testing.T) {
	primary := pgtest.StartPrivate(t, pgcluster.Options{})
	ctx := t.Context()
	p := connect(t, primary.ConnString("postgres"))
	execSQL(t, p, "create table t(x int)")
	standby := pgtest.StartStandby(t, primary, pgcluster.StandbyOptions{Synchronous: true})
	if standby.Primary() != primary || standby.Name() == "" {
		t.Fatalf("standby %q of %v, want a name and the primary", standby.Name(), standby.Primary())
	}
	if got := queryString(t, p, "show synchronous_standby_names"); got != standby.Name() {
		t.Fatalf("synchronous_standby_names = %q, want %q", got, standby.Name())
	}
	// Synchronous: once the insert returns, the standby has flushed it;
	// replaying it follows at once.
	execSQL(t, p, "insert into t values (1)")
	s := connect(t, standby.ConnString("postgres"))
	wait.For(t, "the standby replays the insert", func() bool {
		var n int
		return s.QueryRow(ctx, "select count(*) from t").Scan(&n) == nil && n == 1
	})
	if got := queryString(t, s, "show transaction_read_only"); got != "on" {
		t.Fatalf("standby: transaction_read_only = %s", got)
	}

	resume, err := standby.StallReplication(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if err := standby.SetSynchronous(ctx, false); err != nil {
		t.Fatal(err)
	}

	if err := primary.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Exec(ctx, "select 1"); err == nil {
		t.Fatal("the killed primary still answers")
	}
	start := time.Now()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("promotion took %s", time.Since(start).Round(time.Millisecond))
	if standby.Primary() != nil {
		t.Fatal("a promoted standby still has a primary")
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, pgcluster.MultiHostConnString("postgres", primary, standby))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "insert into t values (2)"); err != nil {
		t.Fatal(err)
	}
	var timeline int
	if err := conn.QueryRow(ctx, "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int").Scan(&timeline); err != nil {
		t.Fatal(err)
	}
	if timeline < 2 {
		t.Errorf("the promoted standby writes on timeline %d, want 2", timeline)
	}
}

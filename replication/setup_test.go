package replication_test

// Failures no retry mends: Run returns them, and the hub stops. Outages
// (the server restarted, the walsender terminated, the slot dropped) are
// fault_test.go's, where Run must go on and return nil at the end.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// runningHub is a hub running until the test ends, whose Run's result the
// test reads.
type runningHub struct {
	*replication.Hub
	done chan error
}

// runHub starts a hub on pool with cfg; it does not wait for it to be ready.
func runHub(t *testing.T, pool *pgxpool.Pool, cfg replication.Config) *runningHub {
	t.Helper()
	cfg.Pool = pool
	if cfg.Logger == nil {
		cfg.Logger, _ = hubLogger(t, "hub")
	}
	h, err := replication.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningHub{Hub: h, done: make(chan error, 1)}
	go func() { r.done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.Stopped()
	})
	return r
}

// runErr waits for Run to return and returns its error; the test fails if
// it does not return within wait.Timeout.
func (r *runningHub) runErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the next caller
		return err
	case <-time.After(wait.Timeout):
		t.Fatalf("Run has not returned within %s", wait.Timeout)
		return nil
	}
}

// wantSetupError checks that err is Run's error for a failure no retry
// mends, of the kind sentinel.
func wantSetupError(t *testing.T, err, sentinel error) *replication.SetupError {
	t.Helper()
	if err == nil {
		t.Fatalf("Run returned nil, want an error matching %q", sentinel)
	}
	var se *replication.SetupError
	if !errors.As(err, &se) {
		t.Fatalf("Run returned %v (%T), want a *replication.SetupError", err, err)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("Run returned %v, want an error matching %q", err, sentinel)
	}
	t.Logf("Run: %v", err)
	return se
}

// roleDB is a role of the test's own, with a pool that connects as it.
type roleDB struct {
	name  string
	ident string // its name quoted as an SQL identifier
	url   string
	pool  *pgxpool.Pool
}

// createRole creates a login role with attrs (e.g. "replication") on e's
// database, grants it what a hub needs of the walwatch schema, as
// TestHubAsReplicationRole does, but for the grants listed in without (with
// "select, insert on walwatch.kv" there, it may still select), and opens a
// pool as it. The role is dropped when the test ends.
func createRole(t *testing.T, e *env, attrs string, without ...string) *roleDB {
	t.Helper()
	ctx := context.Background()
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	role := "ws_" + strings.TrimPrefix(u.Path, "/") // roles are cluster-wide; database names are unique
	if len(role) > 63 {
		role = role[:63]
	}
	ident := pgx.Identifier{role}.Sanitize()
	if _, err := e.pool.Exec(ctx, "create role "+ident+" with login "+attrs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the role's hubs and pool are gone
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, q := range []string{"drop owned by " + ident, "drop role " + ident} {
			if _, err := e.pool.Exec(ctx, q); err != nil {
				t.Errorf("cleanup: %s: %v", q, err)
			}
		}
	})
	for _, g := range []string{
		"usage on schema walwatch",
		"select, insert on walwatch.kv",
		"select on walwatch.kv", // for a role without insert
		"select, update on walwatch.meta",
		"execute on all functions in schema walwatch",
	} {
		if slices.Contains(without, g) || g == "select on walwatch.kv" && !slices.Contains(without, "select, insert on walwatch.kv") {
			continue
		}
		if _, err := e.pool.Exec(ctx, "grant "+g+" to "+ident); err != nil {
			t.Fatalf("grant %s: %v", g, err)
		}
	}
	u.User = url.User(role)
	pool := newPool(t, u.String(), 8, 0)
	return &roleDB{name: role, ident: ident, url: u.String(), pool: pool}
}

// A database with no walwatch schema, or one of another version, is
// ErrSchemaVersion; a missing or older one matches sql.ErrSchemaOutdated.
func TestRunFailsOnSchemaVersion(t *testing.T) {
	tests := []struct {
		name     string
		prepare  string // SQL on a migrated database; "" leaves the database empty
		outdated bool
	}{
		{name: "missing", outdated: true},
		{name: "outdated", prepare: "delete from walwatch.schema_migrations where version = (select max(version) from walwatch.schema_migrations)", outdated: true},
		{name: "newer", prepare: fmt.Sprintf("insert into walwatch.schema_migrations (version, name) values (%d, 'from the future')", sql.Latest()+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dbURL := pgtest.NewDatabase(t)
			pool := newPool(t, dbURL, 8, 0)
			if tt.prepare != "" {
				newEnvAt(t, dbURL)
				if _, err := pool.Exec(context.Background(), tt.prepare); err != nil {
					t.Fatal(err)
				}
			}
			h := runHub(t, pool, replication.Config{})
			wantSetupError(t, h.runErr(t), replication.ErrSchemaVersion)
			if got := errors.Is(h.runErr(t), sql.ErrSchemaOutdated); got != tt.outdated {
				t.Errorf("errors.Is(err, sql.ErrSchemaOutdated) = %v, want %v", got, tt.outdated)
			}
			// The hub stopped: a watch gets why.
			_, err := h.Watch(context.Background(), replication.WatchRequest{Range: store.Prefix([]byte("/"))})
			if !errors.Is(err, replication.ErrHubStopped) || !errors.Is(err, replication.ErrSchemaVersion) {
				t.Errorf("Watch on the stopped hub: %v, want ErrHubStopped and ErrSchemaVersion", err)
			}
		})
	}
}

// A server without wal_level=logical can never serve a logical slot.
func TestRunFailsWithoutLogicalWAL(t *testing.T) {
	_, dbURL := pgtest.PrivateDatabase(t, pgcluster.Options{Settings: map[string]string{"wal_level": "replica"}})
	e := newEnvAt(t, dbURL) // a publication can be made; no slot can read it
	for _, slot := range []string{"", "ws_wal_level"} {
		h := runHub(t, e.pool, replication.Config{Slot: slot})
		se := wantSetupError(t, h.runErr(t), replication.ErrServerConfig)
		if !strings.Contains(se.Error(), "wal_level is replica") {
			t.Errorf("the error does not say what wal_level is: %v", se)
		}
	}
}

// A role without the REPLICATION attribute cannot open a replication
// connection: the server's refusal comes with Run's error.
func TestRunFailsWithoutReplicationRole(t *testing.T) {
	e := newEnv(t)
	role := createRole(t, e, "")
	h := runHub(t, role.pool, replication.Config{})
	err := h.runErr(t)
	wantSetupError(t, err, replication.ErrNotPermitted)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("Run's error carries no server error with SQLSTATE 42501 (insufficient_privilege): %v", err)
	}
}

// A role that may replicate and read but lacks the grant to insert filler
// rows works until the first hole: its filler is refused, and Run returns
// that, ending every watch with it.
func TestRunFailsWithoutGrant(t *testing.T) {
	e := newEnv(t)
	role := createRole(t, e, "replication", "select, insert on walwatch.kv")
	h := runHub(t, role.pool, replication.Config{})
	select {
	case <-h.Ready():
	case err := <-h.done:
		t.Fatalf("the hub stopped before it was ready: %v", err)
	case <-time.After(wait.Timeout):
		t.Fatal("the hub is not ready")
	}
	w := watch(t, h.Hub, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	r := e.put(t, "/a", "1")
	if got := collect(t, w, 1, 10*time.Second); got[0].Rev != r {
		t.Fatalf("got %v, want revision %d", got, r)
	}
	// A hole: a revision the sequence handed out and nobody wrote.
	if _, err := e.pool.Exec(context.Background(), "select nextval('walwatch.revision')"); err != nil {
		t.Fatal(err)
	}
	e.put(t, "/a", "2")
	err := h.runErr(t)
	wantSetupError(t, err, replication.ErrNotPermitted)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("Run's error carries no server error with SQLSTATE 42501: %v", err)
	}
	for resp := range w.C {
		if len(resp.Events) > 0 {
			t.Fatalf("an event after the hole: %+v", resp.Events)
		}
	}
	if err := w.Err(); !errors.Is(err, replication.ErrHubStopped) || !errors.Is(err, replication.ErrNotPermitted) {
		t.Fatalf("the watch ended with %v, want ErrHubStopped and ErrNotPermitted", err)
	}
}

// A slot of the configured name that is not a walwatch one (physical, of
// another output plugin, of another database) is never taken over.
func TestRunFailsOnSlotTaken(t *testing.T) {
	e := newEnv(t)
	other := newEnv(t)
	tests := []struct {
		name   string
		pool   *pgxpool.Pool // where the slot is made
		create string
	}{
		{"physical", e.pool, "select pg_create_physical_replication_slot($1)"},
		{"another plugin", e.pool, "select pg_create_logical_replication_slot($1, 'test_decoding')"},
		{"another database", other.pool, "select pg_create_logical_replication_slot($1, 'pgoutput')"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slot := faultSlotName("ws_taken")
			if _, err := tt.pool.Exec(context.Background(), tt.create, slot); err != nil {
				t.Fatal(err)
			}
			dropSlotAtEnd(t, tt.pool, slot) // a logical slot is dropped from its own database
			before, err := replication.GetSlot(context.Background(), e.pool, slot)
			if err != nil {
				t.Fatal(err)
			}
			h := runHub(t, e.pool, replication.Config{Slot: slot})
			wantSetupError(t, h.runErr(t), replication.ErrSlotTaken)
			after, err := replication.GetSlot(context.Background(), e.pool, slot)
			if err != nil {
				t.Fatalf("the slot is gone: %v", err)
			}
			if after.SlotType != before.SlotType || after.Plugin != before.Plugin || after.Database != before.Database {
				t.Fatalf("the slot was %+v, is now %+v", before, after)
			}
		})
	}
}

// A role that may replicate but not use the walwatch schema is refused at
// the start, before it touches a slot.
func TestRunFailsWithoutSchemaUsage(t *testing.T) {
	e := newEnv(t)
	role := createRole(t, e, "replication", "usage on schema walwatch")
	slot := faultSlotName("ws_usage")
	dropSlotAtEnd(t, e.pool, slot)
	h := runHub(t, role.pool, replication.Config{Slot: slot})
	wantSetupError(t, h.runErr(t), replication.ErrNotPermitted)
	if _, err := replication.GetSlot(context.Background(), e.pool, slot); !errors.Is(err, replication.ErrSlotNotFound) {
		t.Fatalf("slot %s: %v, want none made", slot, err)
	}
}

// Package sql holds walwatch's schema and SQL functions, embedded into the
// build, and applies them to a database.
//
// What a database has is written down once, in three kinds of file:
//
//   - schema.sql: the tables, sequence, index and publication as this
//     version has them. A fresh database gets this file.
//   - functions.sql: every function, each defined once with "create or
//     replace". Migrate runs it every time, after the tables, so a function
//     changes by being edited there.
//   - upgrades/NNNN_name.sql: what must happen once to bring an older
//     database to version NNNN: a change to a table, the index, the sequence
//     or the publication, or dropping a function (which "create or replace"
//     cannot do). schema.sql holds the result too, so a fresh database never
//     runs these.
//
// The schema version goes up by one with every change that reaches the
// database, in any of the three files, so that CheckVersion sends a database
// that lacks it to `walwatch migrate`. A change to functions.sql needs only
// that bump. TestUpgradeEqualsFresh checks that an upgraded database ends
// with the same catalog as a fresh one.
//
// Versions 1 to 10 were numbered migrations that each defined some functions
// again; version 11 squashed them into the files above. A database at 9 or 10
// (the versions that existed when they were squashed) is upgraded in place;
// older ones are refused.
package sql

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed schema.sql functions.sql upgrades/*.sql
var files embed.FS

// version is the schema version this build brings (Latest).
const version = 27

// oldestUpgradable is the oldest schema version Migrate upgrades in place:
// the squashed history's last two versions, 9 and 10, have the tables
// schema.sql has.
const oldestUpgradable = 9

// Schema is the PostgreSQL schema that holds every walwatch object.
const Schema = "walwatch"

// Publication is the publication of the revision table that watchers read.
const Publication = "walwatch"

// migrateLock is the advisory lock key that serialises concurrent migrations
// (any fixed number nobody else uses; this one spells "walwatch" in ASCII).
const migrateLock int64 = 0x77616c7761746368

// upgrade is one step in upgrades/: it brings a database at an older version
// to version.
type upgrade struct {
	version int
	name    string
	sql     string
}

// upgrades returns the embedded upgrade steps in version order.
func upgrades() ([]upgrade, error) {
	entries, err := fs.ReadDir(files, "upgrades")
	if err != nil {
		return nil, fmt.Errorf("read embedded upgrades: %w", err)
	}
	var us []upgrade
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= oldestUpgradable || v > version {
			return nil, fmt.Errorf("upgrade %s: name must start with a version from %d to %d and '_'", e.Name(), oldestUpgradable+1, version)
		}
		body, err := fs.ReadFile(files, "upgrades/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("read upgrade %s: %w", e.Name(), err)
		}
		us = append(us, upgrade{version: v, name: e.Name(), sql: string(body)})
	}
	sort.Slice(us, func(i, j int) bool { return us[i].version < us[j].version })
	for i := 1; i < len(us); i++ {
		if us[i].version == us[i-1].version {
			return nil, fmt.Errorf("upgrades %s and %s: one step per version", us[i-1].name, us[i].name)
		}
	}
	return us, nil
}

// Latest returns the schema version this build brings.
func Latest() int { return version }

// Beginner is what Migrate needs of a connection or pool.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

var (
	_ Beginner = (*pgxpool.Pool)(nil)
	_ Beginner = (*pgx.Conn)(nil)
)

// Result says what Migrate did.
type Result struct {
	From, To int // schema version before and after
}

// Migrate brings the walwatch schema up to this build's version: schema.sql
// on a database without it, the steps in upgrades/ on an older one, and
// functions.sql on every call, all in one transaction. It is safe to run
// concurrently and repeatedly. A database whose schema is newer than this
// build is an error: an older binary must not write to it. So is one older
// than version 9.
func Migrate(ctx context.Context, db Beginner) (Result, error) {
	us, err := upgrades()
	if err != nil {
		return Result{}, err
	}
	schema, err := fs.ReadFile(files, "schema.sql")
	if err != nil {
		return Result{}, fmt.Errorf("read embedded schema.sql: %w", err)
	}
	functions, err := fs.ReadFile(files, "functions.sql")
	if err != nil {
		return Result{}, fmt.Errorf("read embedded functions.sql: %w", err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit

	setup := []string{
		"select pg_advisory_xact_lock($1)",
		"create schema if not exists " + Schema,
		"create table if not exists " + Schema + ".schema_migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())",
	}
	for i, q := range setup {
		var args []any
		if i == 0 {
			args = []any{migrateLock}
		}
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return Result{}, fmt.Errorf("migrate: prepare schema %s: %w", Schema, err)
		}
	}
	var from int
	if err := tx.QueryRow(ctx, "select coalesce(max(version), 0) from "+Schema+".schema_migrations").Scan(&from); err != nil {
		return Result{}, fmt.Errorf("migrate: read schema version: %w", err)
	}
	unchanged := Result{From: from, To: from}
	// run runs one file (no arguments: the simple protocol runs all its
	// statements) and, when v is above the version recorded so far, records
	// v as reached by it.
	recorded := from
	run := func(name, body string, v int) error {
		if _, err := tx.Exec(ctx, body); err != nil {
			return fmt.Errorf("migrate: apply %s: %w", name, err)
		}
		if v <= recorded {
			return nil
		}
		if _, err := tx.Exec(ctx, "insert into "+Schema+".schema_migrations (version, name) values ($1, $2)", v, name); err != nil {
			return fmt.Errorf("migrate: record version %d (%s): %w", v, name, err)
		}
		recorded = v
		return nil
	}
	switch {
	case from > version:
		return unchanged, fmt.Errorf("migrate: database schema is at version %d, newer than this build's %d: upgrade walwatch", from, version)
	case from == 0:
		if err := run("schema.sql", string(schema), version); err != nil {
			return unchanged, err
		}
	case from < oldestUpgradable:
		return unchanged, fmt.Errorf("migrate: database schema is at version %d, older than %d, the oldest this build upgrades: "+
			"upgrade it with an older walwatch first, or drop it (drop schema %s cascade; drop publication %s) and migrate again",
			from, oldestUpgradable, Schema, Publication)
	default:
		for _, u := range us {
			if u.version > from {
				if err := run(u.name, u.sql, u.version); err != nil {
					return unchanged, err
				}
			}
		}
	}
	// A version that changed only functions has no step: functions.sql
	// reaches it.
	if err := run("functions.sql", string(functions), version); err != nil {
		return unchanged, err
	}
	if err := tx.Commit(ctx); err != nil {
		return unchanged, fmt.Errorf("migrate: commit: %w", err)
	}
	return Result{From: from, To: version}, nil
}

// Querier is what Version needs of a connection or pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ Querier = (*pgxpool.Pool)(nil)
	_ Querier = (*pgx.Conn)(nil)
	_ Querier = pgx.Tx(nil)
)

// ErrSchemaOutdated is returned by CheckVersion when the database needs
// `walwatch migrate`.
var ErrSchemaOutdated = errors.New("walwatch schema is missing or outdated: run `walwatch migrate`")

// Version returns the database's walwatch schema version, 0 when it has none.
func Version(ctx context.Context, q Querier) (int, error) {
	// Two statements: one naming a table that does not exist fails when it
	// is parsed, whatever a case around it says.
	var exists bool
	if err := q.QueryRow(ctx, "select to_regclass('walwatch.schema_migrations') is not null").Scan(&exists); err != nil {
		return 0, fmt.Errorf("read walwatch schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := q.QueryRow(ctx, "select coalesce(max(version), 0) from walwatch.schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("read walwatch schema version: %w", err)
	}
	return v, nil
}

// CheckVersion fails unless the database's schema is the one this build
// brings.
func CheckVersion(ctx context.Context, q Querier) error {
	v, err := Version(ctx, q)
	if err != nil {
		return err
	}
	if v < Latest() {
		return fmt.Errorf("%w (database at version %d, this build needs %d)", ErrSchemaOutdated, v, Latest())
	}
	if v > Latest() {
		return fmt.Errorf("database schema is at version %d, newer than this build's %d: upgrade walwatch", v, Latest())
	}
	return nil
}

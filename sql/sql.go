// Package sql holds walwatch's schema and SQL functions, embedded into the
// build, and applies them to a database.
//
// Migrations are numbered files in migrations/; each runs once, in order, in
// the transaction that records it, so a re-run is a no-op and a newer binary
// upgrades an older schema. Functions are created with "create or replace", so
// a later migration changes one by defining it again.
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
)

//go:embed migrations/*.sql
var files embed.FS

// Schema is the PostgreSQL schema that holds every walwatch object.
const Schema = "walwatch"

// Publication is the publication of the revision table that watchers read.
const Publication = "walwatch"

// migrateLock is the advisory lock key that serialises concurrent migrations
// (any fixed number nobody else uses; this one spells "walwatch" in ASCII).
const migrateLock int64 = 0x77616c7761746368

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(files, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and '_'", e.Name())
		}
		body, err := fs.ReadFile(files, "migrations/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		ms = append(ms, Migration{Version: v, Name: e.Name(), SQL: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i := range ms {
		if ms[i].Version != i+1 {
			return nil, fmt.Errorf("migration %s: versions must run 1, 2, 3... without gaps", ms[i].Name)
		}
	}
	return ms, nil
}

// Latest returns the schema version this build brings.
func Latest() int {
	ms, err := Migrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// Beginner is what Migrate needs of a connection or pool.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Result says what Migrate did.
type Result struct {
	From, To int // schema version before and after
}

// Migrate brings the walwatch schema up to this build's version. It is safe to
// run concurrently and repeatedly. A database whose schema is newer than this
// build is an error: an older binary must not write to it.
func Migrate(ctx context.Context, db Beginner) (Result, error) {
	ms, err := Migrations()
	if err != nil {
		return Result{}, err
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
	var res Result
	if err := tx.QueryRow(ctx, "select coalesce(max(version), 0) from "+Schema+".schema_migrations").Scan(&res.From); err != nil {
		return Result{}, fmt.Errorf("migrate: read schema version: %w", err)
	}
	res.To = res.From
	if res.From > len(ms) {
		return res, fmt.Errorf("migrate: database schema is at version %d, newer than this build's %d: upgrade walwatch", res.From, len(ms))
	}
	for _, m := range ms[res.From:] {
		// No arguments: the simple protocol runs the whole file, several statements.
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return Result{From: res.From, To: res.From}, fmt.Errorf("migrate: apply %s: %w", m.Name, err)
		}
		if _, err := tx.Exec(ctx, "insert into "+Schema+".schema_migrations (version, name) values ($1, $2)", m.Version, m.Name); err != nil {
			return Result{From: res.From, To: res.From}, fmt.Errorf("migrate: record %s: %w", m.Name, err)
		}
		res.To = m.Version
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{From: res.From, To: res.From}, fmt.Errorf("migrate: commit: %w", err)
	}
	return res, nil
}

// Querier is what Version needs of a connection or pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrSchemaOutdated is returned by CheckVersion when the database needs
// `walwatch migrate`.
var ErrSchemaOutdated = errors.New("walwatch schema is missing or outdated: run `walwatch migrate`")

// Version returns the database's walwatch schema version, 0 when it has none.
func Version(ctx context.Context, q Querier) (int, error) {
	var v int
	err := q.QueryRow(ctx, `select case when to_regclass('walwatch.schema_migrations') is null then 0
	                               else (select coalesce(max(version), 0) from walwatch.schema_migrations) end`).Scan(&v)
	if err != nil {
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

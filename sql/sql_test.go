package sql_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/sql"
)

func migrate(tb testing.TB, db *pgxpool.Pool) sql.Result {
	tb.Helper()
	res, err := sql.Migrate(testContext(tb), db)
	if err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	return res
}

func TestMigrateFresh(t *testing.T) {
	db := newDB(t)
	if res := migrate(t, db); res.From != 0 || res.To != sql.Latest() {
		t.Fatalf("migrate of a fresh database went from %d to %d, want 0 to %d", res.From, res.To, sql.Latest())
	}
	if err := sql.CheckVersion(testContext(t), db); err != nil {
		t.Fatal(err)
	}
	rows, _ := db.Query(testContext(t), "select version || ' ' || name from walwatch.schema_migrations order by version")
	recorded, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{fmt.Sprintf("%d schema.sql", sql.Latest())}; !slices.Equal(recorded, want) {
		t.Fatalf("schema_migrations = %q, want %q", recorded, want)
	}
}

// A database upgraded from version 9 or 10, the versions before the history
// was squashed, ends with the same catalog as a fresh one: the same tables,
// columns, indexes, constraints, sequence, publication, and functions
// defined the same, settings included.
func TestUpgradeEqualsFresh(t *testing.T) {
	fresh := newDB(t)
	migrate(t, fresh)
	want := catalog(t, fresh)
	for _, from := range []int{9, 10} {
		t.Run(fmt.Sprintf("from%d", from), func(t *testing.T) {
			db := newDB(t)
			applyOld(t, db, from)
			if res := migrate(t, db); res.From != from || res.To != sql.Latest() {
				t.Fatalf("migrate went from %d to %d, want %d to %d", res.From, res.To, from, sql.Latest())
			}
			if d := catalogDiff("fresh", want, "upgraded", catalog(t, db)); d != "" {
				t.Fatalf("the upgraded schema differs from a fresh one:\n%s", d)
			}
			if err := sql.CheckVersion(testContext(t), db); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The catalog comparison sees what an upgrade could get wrong: an object
// left behind, a column default, a function's settings.
func TestCatalogSeesDifferences(t *testing.T) {
	fresh := newDB(t)
	migrate(t, fresh)
	want := catalog(t, fresh)
	for _, change := range []string{
		"create function walwatch.changes_between(bytea, bytea, bigint, bigint, bigint) returns setof walwatch.kv language sql as 'select * from walwatch.kv'",
		"alter table walwatch.kv alter column lease set default 1",
		"alter function walwatch.latest_rows(bytea, bytea, bigint, bigint) reset plan_cache_mode",
		"create index kv_created_at on walwatch.kv (created_at)",
		"alter publication walwatch set (publish = 'insert, delete')",
		"comment on table walwatch.meta is 'changed'",
	} {
		db := newDB(t)
		migrate(t, db)
		if _, err := db.Exec(testContext(t), change); err != nil {
			t.Fatal(err)
		}
		if catalogDiff("fresh", want, "changed", catalog(t, db)) == "" {
			t.Errorf("the catalog comparison does not see %q", change)
		}
	}
}

// Data written at version 9 reads back the same after the upgrade, and
// writes carry on from it: revisions continue, versions count on.
func TestUpgradeKeepsData(t *testing.T) {
	db := newDB(t)
	ctx := testContext(t)
	applyOld(t, db, 9)
	for _, q := range []string{
		"select walwatch.put('/a', '1')", // 2
		"select walwatch.put('/b', '1')", // 3
		"select walwatch.put_batch(array['/a', '/c']::bytea[], array['2', '1']::bytea[])", // 4, 5
		"select walwatch.delete_range('/b', null)",                                        // 6
		"select walwatch.put('/a', '3', 7)",                                               // 7, with a lease
		"select walwatch.put('/p/1', '1'), walwatch.put('/p/2', '\\x00ff'::bytea)",        // 8, 9; not UTF-8
		"select walwatch.delete_range('/p/', walwatch.prefix_end('/p/'))",                 // 10, two rows
		"select walwatch.put('/p/1', '2')",                                                // 11
		"select * from walwatch.compact(5)",
		"select walwatch.settle(9)",
	} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// A Txn's writes: one revision, rows at sub 0 and 1.
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"select walwatch.lock_keys(array['/t/1', '/t/2']::bytea[])",
		"select walwatch.append(nextval('walwatch.revision'), 0, '/t/1', 'x', false)", // 12
		"select walwatch.append(currval('walwatch.revision'), 1, '/t/2', 'y', false)",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// state reads everything a reader can see: every row, the compaction and
	// settle marks, the sequence, and a range read of every key at every
	// revision that still reads, and of one key.
	state := func() []string {
		out := strs(t, db, "select format('row %s', k) from walwatch.kv k order by revision, sub")
		out = append(out, strs(t, db, "select format('meta %s', m) from walwatch.meta m")...)
		out = append(out, strs(t, db, "select format('sequence %s %s', last_value, is_called) from walwatch.revision")...)
		// Only the columns version 9 had: version 12 added count and leases.
		out = append(out, strs(t, db, `select format('range at %s: %s / %s', rev,
		                                              (r.revision, r.more, r.keys, r.vals, r.create_revisions, r.mod_revisions, r.versions),
		                                              (a.revision, a.more, a.keys, a.vals, a.create_revisions, a.mod_revisions, a.versions))
		                                  from generate_series(walwatch.compact_revision(), walwatch.current_revision()) rev,
		                                       walwatch.range('/', walwatch.prefix_end('/'), rev) r,
		                                       walwatch.range('/a', null, rev) a
		                                 order by rev`)...)
		return out
	}
	before := state()
	if len(before) < 14 {
		t.Fatalf("the data written at version 9 reads as %q", before)
	}
	if res := migrate(t, db); res.From != 9 || res.To != sql.Latest() {
		t.Fatalf("migrate went from %d to %d, want 9 to %d", res.From, res.To, sql.Latest())
	}
	if d := catalogDiff("before the upgrade", before, "after", state()); d != "" {
		t.Fatalf("the data reads differently after the upgrade:\n%s", d)
	}

	// Writes continue from revision 12.
	one := func(q string) string {
		t.Helper()
		got := strs(t, db, q)
		if len(got) != 1 {
			t.Fatalf("%s: %q", q, got)
		}
		return got[0]
	}
	for _, c := range []struct{ q, want string }{
		{"select walwatch.put('/a', '4')::text", "13"},
		{"select format('%s', r) from walwatch.range('/a', null) r", `(13,f,1,"{""\\\\x2f61""}","{""\\\\x34""}",{2},{13},{4},{0})`}, // created at 2, version 4
		{"select walwatch.put('/b', '2')::text", "14"},
		{"select format('%s', r) from walwatch.range('/b', null) r", `(14,f,1,"{""\\\\x2f62""}","{""\\\\x32""}",{14},{14},{1},{0})`}, // created again
		{"select array(select unnest(walwatch.put_batch(array['/c', '/n']::bytea[], array['2', '1']::bytea[])) order by 1)::text", "{15,16}"},
		{"select string_agg(key || ' ' || version, ', ' order by key) from walwatch.get_all('/')",
			`/a 4, /b 1, /c 2, /n 1, /p/1 1, /t/1 1, /t/2 1`},
		{"select string_agg(revision || ' ' || key || ' ' || tombstone, ', ') from walwatch.changes('/p/', 7)",
			`8 /p/1 false, 9 /p/2 false, 10 /p/1 true, 10 /p/2 true, 11 /p/1 false`},
		{"select value from walwatch.get('/p/2', 9)", `\x00ff`},          // not UTF-8: in hex, as version 10 shows it
		{"select format('%s', c) from walwatch.compact(12) c", "(12,7)"}, // 3 /b, /a at 4 or 5, 6, 8, 9 and 10's two
	} {
		if got := one(c.q); got != c.want {
			t.Errorf("%s = %s, want %s", c.q, got, c.want)
		}
	}
	_, err = db.Exec(ctx, "select walwatch.range('/a', null, 11)")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "WWC01" || pe.Detail != "12" {
		t.Fatalf("a read below the compacted revision: %v; want WWC01 with detail 12", err)
	}
}

func strs(tb testing.TB, db *pgxpool.Pool, q string, args ...any) []string {
	tb.Helper()
	rows, err := db.Query(testContext(tb), q, args...)
	if err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			tb.Fatalf("%s: %v", q, err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	return out
}

func TestMigrateTwiceIsNoOp(t *testing.T) {
	db := newDB(t)
	migrate(t, db)
	if _, err := db.Exec(testContext(t), "select walwatch.put('/a', '1')"); err != nil {
		t.Fatal(err)
	}
	read := func() []string {
		out := catalog(t, db)
		out = append(out, strs(t, db, "select format('%s', k) from walwatch.kv k order by revision, sub")...)
		return append(out, strs(t, db, "select version || ' ' || name from walwatch.schema_migrations order by version")...)
	}
	before := read()
	if res := migrate(t, db); res.From != sql.Latest() || res.To != sql.Latest() {
		t.Fatalf("second migrate went from %d to %d, want a no-op at %d", res.From, res.To, sql.Latest())
	}
	if d := catalogDiff("after one migrate", before, "after two", read()); d != "" {
		t.Fatalf("a second migrate changed the database:\n%s", d)
	}
}

// Concurrent migrations of one database wait for each other: one does the
// work, the others find it done.
func TestMigrateConcurrently(t *testing.T) {
	fresh := newDB(t)
	migrate(t, fresh)
	want := catalog(t, fresh)
	for _, from := range []int{0, 9} {
		t.Run(fmt.Sprintf("from%d", from), func(t *testing.T) {
			db := newDB(t)
			if from > 0 {
				applyOld(t, db, from)
			}
			const n = 8
			results := make([]sql.Result, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { results[i], errs[i] = sql.Migrate(testContext(t), db) })
			}
			wg.Wait()
			upgraded := 0
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("migrate %d: %v", i, errs[i])
				}
				if results[i].To != sql.Latest() || (results[i].From != from && results[i].From != sql.Latest()) {
					t.Fatalf("migrate %d went from %d to %d", i, results[i].From, results[i].To)
				}
				if results[i].From == from {
					upgraded++
				}
			}
			if upgraded != 1 {
				t.Fatalf("%d of %d migrations upgraded from %d, want one", upgraded, n, from)
			}
			if d := catalogDiff("fresh", want, "migrated concurrently", catalog(t, db)); d != "" {
				t.Fatalf("concurrent migrations left a different schema:\n%s", d)
			}
		})
	}
}

func TestMigrateRefuses(t *testing.T) {
	ctx := testContext(t)
	t.Run("newer", func(t *testing.T) {
		db := newDB(t)
		migrate(t, db)
		if _, err := db.Exec(ctx, "insert into walwatch.schema_migrations (version, name) values ($1, 'from the future')", sql.Latest()+1); err != nil {
			t.Fatal(err)
		}
		if _, err := sql.Migrate(ctx, db); err == nil || !strings.Contains(err.Error(), "newer than this build's") {
			t.Fatalf("migrate of a newer schema: %v; want it refused", err)
		}
		if err := sql.CheckVersion(ctx, db); err == nil || errors.Is(err, sql.ErrSchemaOutdated) {
			t.Fatalf("CheckVersion of a newer schema: %v; want a newer-schema error", err)
		}
	})
	t.Run("too old", func(t *testing.T) {
		db := newDB(t)
		applyOld(t, db, 8)
		before := catalog(t, db)
		if _, err := sql.Migrate(ctx, db); err == nil || !strings.Contains(err.Error(), "older than 9") {
			t.Fatalf("migrate of version 8: %v; want it refused", err)
		}
		if d := catalogDiff("before", before, "after", catalog(t, db)); d != "" {
			t.Fatalf("a refused migrate changed the database:\n%s", d)
		}
		if v, err := sql.Version(ctx, db); err != nil || v != 8 {
			t.Fatalf("version after a refused migrate = %d, %v; want 8", v, err)
		}
	})
	t.Run("outdated", func(t *testing.T) {
		db := newDB(t)
		applyOld(t, db, 10)
		if err := sql.CheckVersion(ctx, db); !errors.Is(err, sql.ErrSchemaOutdated) {
			t.Fatalf("CheckVersion of version 10: %v; want ErrSchemaOutdated", err)
		}
	})
}

var functionDef = regexp.MustCompile(`(?i)\bcreate\s+(or\s+replace\s+)?function\s+([a-z_.]+)\s*\(`)

// functions.sql defines every function once (no overloads, so a name says
// which definition) with "create or replace", and nothing else defines
// one: a migrated database has exactly its functions.
func TestFunctionsDefinedOnce(t *testing.T) {
	body, err := os.ReadFile("functions.sql")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range functionDef.FindAllStringSubmatch(string(body), -1) {
		if m[1] == "" {
			t.Errorf("functions.sql: %q: every function is made with create or replace, so that Migrate can run the file again", m[0])
		}
		if slices.Contains(names, m[2]) {
			t.Errorf("functions.sql defines %s twice", m[2])
		}
		names = append(names, m[2])
	}
	others, err := filepath.Glob("upgrades/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(others, "schema.sql") {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := functionDef.FindString(string(b)); m != "" {
			t.Errorf("%s: %q: functions are defined in functions.sql only", p, m)
		}
	}
	sort.Strings(names)
	db := newDB(t)
	migrate(t, db)
	got := strs(t, db, "select 'walwatch.' || proname from pg_proc where pronamespace = 'walwatch'::regnamespace order by 1")
	if !slices.Equal(got, names) {
		t.Fatalf("a migrated database has the functions\n%q\nfunctions.sql defines\n%q", got, names)
	}
}

// What the SQL files hold is pinned to the schema version, so that a change
// to any of them comes with a new version: CheckVersion can only send a
// database to `walwatch migrate` when the version says it lacks something.
// testdata/sql.sha256 holds the version and the digest of the files.
func TestSQLPinnedToVersion(t *testing.T) {
	paths, err := filepath.Glob("upgrades/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range append([]string{"schema.sql", "functions.sql"}, paths...) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00%s", p, len(b), b)
	}
	got := fmt.Sprintf("%d %x", sql.Latest(), h.Sum(nil))
	pinned, err := os.ReadFile("testdata/sql.sha256")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(pinned))
	if got == want {
		return
	}
	wantVersion, _, _ := strings.Cut(want, " ")
	if wantVersion == fmt.Sprint(sql.Latest()) {
		t.Fatalf("schema.sql, functions.sql or upgrades/ changed, and the schema version is still %d (testdata/sql.sha256).\n"+
			"If the change reaches a database (anything but a comment outside a function body), raise version in sql.go.\n"+
			"Then write this line to testdata/sql.sha256:\n%d %x", sql.Latest(), sql.Latest(), h.Sum(nil))
	}
	t.Fatalf("the schema version is now %d: write this line to testdata/sql.sha256:\n%s", sql.Latest(), got)
}

// A database without the schema is at version 0, and CheckVersion says to
// migrate it, rather than failing on the table that is not there.
func TestVersionOfEmptyDatabase(t *testing.T) {
	db := newDB(t)
	if v, err := sql.Version(t.Context(), db); err != nil || v != 0 {
		t.Fatalf("Version of an empty database = %d, %v; want 0", v, err)
	}
	if err := sql.CheckVersion(t.Context(), db); !errors.Is(err, sql.ErrSchemaOutdated) {
		t.Fatalf("CheckVersion of an empty database = %v, want ErrSchemaOutdated", err)
	}
}

package sql_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/test/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// newDB returns a pool on a fresh database with no walwatch schema.
func newDB(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDatabase(tb))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// newMigratedDB returns a pool on a fresh database at this build's schema.
func newMigratedDB(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	db := newDB(tb)
	if _, err := sql.Migrate(testContext(tb), db); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	return db
}

// rowsReadBy runs query in a transaction of its own, scans its row into
// dest, and returns how many rows of walwatch.kv it read, by scan or
// through an index, as PostgreSQL counts them for the transaction.
func rowsReadBy(tb testing.TB, db *pgxpool.Pool, query string, args []any, dest ...any) int64 {
	tb.Helper()
	return countedBy(tb, db, `select seq_tup_read + idx_tup_fetch from pg_stat_xact_user_tables
	                           where relid = 'walwatch.kv'::regclass`, query, args, dest...)
}

// keyIndexEntriesReadBy is rowsReadBy for the entries of the key index
// (kv_key_revision) query read.
func keyIndexEntriesReadBy(tb testing.TB, db *pgxpool.Pool, query string, args []any, dest ...any) int64 {
	tb.Helper()
	return countedBy(tb, db, "select pg_stat_get_xact_tuples_returned('walwatch.kv_key_revision'::regclass)", query, args, dest...)
}

// countedBy runs query in a transaction of its own, scans its row into
// dest, and returns how much the statistic that counter reads grew. The
// statistics may hold the connection's earlier transactions too, until
// the backend reports them: so it takes the difference across the
// statement.
func countedBy(tb testing.TB, db *pgxpool.Pool, counter, query string, args []any, dest ...any) int64 {
	tb.Helper()
	ctx := testContext(tb)
	tx, err := db.Begin(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // nothing to keep
	read := func() int64 {
		var n int64
		if err := tx.QueryRow(ctx, counter).Scan(&n); err != nil {
			tb.Fatal(err)
		}
		return n
	}
	before := read()
	if err := tx.QueryRow(ctx, query, args...).Scan(dest...); err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	return read() - before
}

// execRev runs q and returns the current revision after it.
func execRev(tb testing.TB, db *pgxpool.Pool, q string, args ...any) int64 {
	tb.Helper()
	ctx := testContext(tb)
	if _, err := db.Exec(ctx, q, args...); err != nil {
		tb.Fatal(err)
	}
	var rev int64
	if err := db.QueryRow(ctx, "select walwatch.current_revision()").Scan(&rev); err != nil {
		tb.Fatal(err)
	}
	return rev
}

// applyOld brings db to schema version upTo (at most 10) as walwatch did
// before version 11, from the numbered migrations it had then, kept in
// testdata/migrations: each file in its own statement batch, recorded in
// walwatch.schema_migrations as the old Migrate recorded it.
func applyOld(tb testing.TB, db *pgxpool.Pool, upTo int) {
	tb.Helper()
	ctx := testContext(tb)
	paths, err := filepath.Glob("testdata/migrations/*.sql")
	if err != nil || len(paths) != 10 {
		tb.Fatalf("old migrations: %d files, %v; want 10", len(paths), err)
	}
	sort.Strings(paths)
	tx, err := db.Begin(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	for _, q := range []string{
		"create schema if not exists walwatch",
		"create table if not exists walwatch.schema_migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			tb.Fatal(err)
		}
	}
	for _, p := range paths {
		name := filepath.Base(p)
		v, err := strconv.Atoi(name[:4])
		if err != nil {
			tb.Fatal(err)
		}
		if v > upTo {
			break
		}
		body, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := tx.Exec(ctx, string(body)); err != nil {
			tb.Fatalf("old migration %s: %v", name, err)
		}
		if _, err := tx.Exec(ctx, "insert into walwatch.schema_migrations (version, name) values ($1, $2)", v, name); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		tb.Fatal(err)
	}
}

// catalogQueries describe everything in the walwatch schema that a
// migration makes, one text row per object, in a fixed order: the schema,
// relations (tables, indexes, sequences, views) with their options, owners,
// grants and comments, columns, indexes, constraints, sequences, triggers,
// policies, statistics, types, functions (their whole definition, settings
// included, as pg_get_functiondef gives it), the publication and what it
// publishes, and the one row of walwatch.meta. Data is left out, except
// that row.
var catalogQueries = []string{
	`select format('schema %s owner=%s acl=%s comment=%s', n.nspname, n.nspowner::regrole, n.nspacl,
	               obj_description(n.oid, 'pg_namespace'))
	   from pg_namespace n where n.nspname = 'walwatch'`,
	`select format('relation %s kind=%s owner=%s persistence=%s replica_identity=%s row_security=%s options=%s acl=%s comment=%s view=%s',
	               c.relname, c.relkind, c.relowner::regrole, c.relpersistence, c.relreplident, c.relrowsecurity,
	               c.reloptions, c.relacl, obj_description(c.oid, 'pg_class'),
	               case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end)
	   from pg_class c where c.relnamespace = 'walwatch'::regnamespace order by c.relname`,
	`select format('column %s.%s position=%s type=%s not_null=%s default=%s identity=%s generated=%s storage=%s collation=%s comment=%s',
	               c.relname, a.attname, row_number() over (partition by c.oid order by a.attnum),
	               format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
	               a.attidentity, a.attgenerated, a.attstorage, a.attcollation, col_description(c.oid, a.attnum))
	   from pg_attribute a join pg_class c on c.oid = a.attrelid
	   left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
	  where c.relnamespace = 'walwatch'::regnamespace and a.attnum > 0 and not a.attisdropped
	  order by c.relname, a.attnum`,
	`select format('index %s: %s', c.relname, pg_get_indexdef(c.oid))
	   from pg_index i join pg_class c on c.oid = i.indexrelid
	  where c.relnamespace = 'walwatch'::regnamespace order by c.relname`,
	`select format('constraint %s on %s: %s comment=%s', co.conname,
	               case when co.conrelid <> 0 then co.conrelid::regclass::text else co.contypid::regtype::text end,
	               pg_get_constraintdef(co.oid), obj_description(co.oid, 'pg_constraint'))
	   from pg_constraint co where co.connamespace = 'walwatch'::regnamespace order by 1`,
	`select format('sequence %s type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
	               s.seqrelid::regclass, format_type(s.seqtypid, null), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
	               s.seqcache, s.seqcycle,
	               (select string_agg(d.refobjid::regclass || '.' || d.refobjsubid, ',') from pg_depend d
	                 where d.classid = 'pg_class'::regclass and d.objid = s.seqrelid and d.deptype in ('a', 'i')))
	   from pg_sequence s join pg_class c on c.oid = s.seqrelid
	  where c.relnamespace = 'walwatch'::regnamespace order by c.relname`,
	`select format('trigger %s: %s', t.tgname, pg_get_triggerdef(t.oid))
	   from pg_trigger t join pg_class c on c.oid = t.tgrelid
	  where c.relnamespace = 'walwatch'::regnamespace and not t.tgisinternal order by 1`,
	`select format('policy %s on %s: %s %s %s using=%s check=%s', p.polname, p.polrelid::regclass, p.polcmd, p.polpermissive,
	               p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
	   from pg_policy p join pg_class c on c.oid = p.polrelid
	  where c.relnamespace = 'walwatch'::regnamespace order by 1`,
	`select format('statistics %s: %s', s.stxname, pg_get_statisticsobjdef(s.oid))
	   from pg_statistic_ext s where s.stxnamespace = 'walwatch'::regnamespace order by 1`,
	`select format('type %s kind=%s base=%s comment=%s', t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod),
	               obj_description(t.oid, 'pg_type'))
	   from pg_type t
	  where t.typnamespace = 'walwatch'::regnamespace
	    and not exists (select from pg_class c where c.reltype = t.oid or (t.typcategory = 'A' and c.reltype = t.typelem))
	  order by 1`,
	`select format(E'function %s kind=%s owner=%s acl=%s comment=%s\n%s', p.oid::regprocedure, p.prokind, p.proowner::regrole,
	               p.proacl, obj_description(p.oid, 'pg_proc'),
	               case when p.prokind in ('f', 'p') then pg_get_functiondef(p.oid) end)
	   from pg_proc p where p.pronamespace = 'walwatch'::regnamespace order by p.oid::regprocedure::text`,
	`select format('publication %s owner=%s all_tables=%s insert=%s update=%s delete=%s truncate=%s via_root=%s comment=%s',
	               p.pubname, p.pubowner::regrole, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
	               p.pubviaroot, obj_description(p.oid, 'pg_publication'))
	   from pg_publication p where p.pubname = 'walwatch'`,
	`select format('publication %s publishes %s.%s columns=%s row_filter=%s', t.pubname, t.schemaname, t.tablename,
	               t.attnames, t.rowfilter)
	   from pg_publication_tables t where t.pubname = 'walwatch' order by 1`,
	`select format('publication %s publishes schema %s', p.pubname, pn.pnnspid::regnamespace)
	   from pg_publication_namespace pn join pg_publication p on p.oid = pn.pnpubid
	  where p.pubname = 'walwatch' order by 1`,
	`select format('extension %s', e.extname) from pg_extension e where e.extnamespace = 'walwatch'::regnamespace order by 1`,
	`select format('walwatch.meta %s', m) from walwatch.meta m`,
}

// catalog returns the walwatch objects of db, one entry per object.
func catalog(tb testing.TB, db *pgxpool.Pool) []string {
	tb.Helper()
	ctx := testContext(tb)
	var out []string
	for _, q := range catalogQueries {
		rows, _ := db.Query(ctx, q)
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			tb.Fatalf("catalog query %q: %v", q, err)
		}
		out = append(out, got...)
	}
	return out
}

// catalogDiff describes the entries that are in only one of a and b, nothing
// when they are equal.
func catalogDiff(aName string, a []string, bName string, b []string) string {
	count := map[string]int{}
	for _, s := range a {
		count[s]++
	}
	for _, s := range b {
		count[s]--
	}
	var d strings.Builder
	for _, s := range a {
		if count[s] > 0 {
			fmt.Fprintf(&d, "only in %s:\n%s\n", aName, s)
			count[s]--
		}
	}
	for _, s := range b {
		if count[s] < 0 {
			fmt.Fprintf(&d, "only in %s:\n%s\n", bName, s)
			count[s]++
		}
	}
	if d.Len() == 0 && strings.Join(a, "\n") != strings.Join(b, "\n") {
		return "the same entries in another order"
	}
	return d.String()
}

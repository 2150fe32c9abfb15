package sql_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A page of a range (Kubernetes lists 500 keys at a time) reads the keys of
// the page, not every row of the range: with values of a kilobyte, the
// planner preferred reading the whole range and sorting it, 95 ms for a page
// of 501 of 10,000 keys of three versions each, where the key index in
// order takes 2.4 ms. So does walwatch.range's, count included, and its
// page comes in key order.
func TestRangePageReadsItsPage(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	const keys, versions, page, others = 2000, 3, 500, 20000
	// The range is a small part of the table, as a kind of object is of a
	// Kubernetes cluster's: its rows are few enough that reading them all
	// looks cheap to the planner. Statements of 5,000 keys keep their key
	// locks inside the lock table.
	for i := 0; i < others; i += 5000 {
		if _, err := db.Exec(ctx, `select walwatch.put(convert_to('/a/' || i, 'UTF8'), 'v') from generate_series($1::int, $2::int) i`,
			i, i+4999); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(ctx, `select walwatch.put(convert_to('/p/' || lpad(i::text, 5, '0'), 'UTF8'), convert_to(repeat('x', 1500), 'UTF8'))
	                             from generate_series(1, $1) v, generate_series(1, $2) i`, versions, keys); err != nil {
		t.Fatal(err)
	}
	// As autovacuum would, so that the plans are those of a table in use
	// and range's count reads the indexes alone.
	if _, err := db.Exec(ctx, "vacuum analyze walwatch.kv"); err != nil {
		t.Fatal(err)
	}
	var n int
	fetched := rowsReadBy(t, db, `select count(*) from walwatch.latest_rows('/p/', '/p0', walwatch.current_revision(), $1)`,
		[]any{page + 1}, &n)
	if n != page+1 || fetched > 2*versions*(page+1) {
		t.Errorf("a page of %d keys: %d rows, %d fetched; want %d rows, at most %d fetched (the range holds %d)",
			page+1, n, fetched, page+1, 2*versions*(page+1), keys*versions)
	}

	var (
		got   []string
		more  bool
		count int64
	)
	fetched = rowsReadBy(t, db, `select array(select convert_from(k, 'UTF8') from unnest(keys) k), more, count
	                              from walwatch.range('/p/', '/p0', 0, $1)`, []any{page}, &got, &more, &count)
	if fetched > 2*versions*(page+1) {
		t.Errorf("range with limit %d: %d rows fetched; want at most %d (the range holds %d)",
			page, fetched, 2*versions*(page+1), keys*versions)
	}
	var want []string
	for i := range page {
		want = append(want, fmt.Sprintf("/p/%05d", i+1))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || !more || count != keys {
		t.Errorf("range with limit %d: %v, more %v, count %d; want %v, more, count %d", page, got, more, count, want, keys)
	}
}

// range_page is inlined into the statement that reads it, as the store's
// does, under a custom plan and the generic one that a cached statement
// comes to: its rows are fetched by row id as they go out, in key order
// without a sort. Not inlined (a SET clause on it would do that), a
// function scan gathers the whole page in memory before the first row goes
// out, which cost cp's backends about 150 newly faulted pages a page of 500
// keys of 1 KiB.
func TestRangePageStreamsItsRows(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `prepare page(bytea, bytea, bigint, bigint) as
	    select revision, count, key, value, create_revision, mod_revision, version, lease
	      from walwatch.range_page($1, $2, $3, $4)`); err != nil {
		t.Fatal(err)
	}
	functionScan := regexp.MustCompile(`Function Scan on range_page\b`)
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "set plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		rows, _ := conn.Query(ctx, `explain execute page('/p/', '/p0', 0, 500)`)
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(plan, "\n")
		if functionScan.MatchString(text) || !strings.Contains(text, "Tid Scan on kv") || strings.Contains(text, "Sort") {
			t.Errorf("%s: want range_page inlined, its rows fetched by row id, no sort; the plan:\n%s", mode, text)
		}
	}
}

// A range's count is its keys at the revision less those whose newest row
// there is a tombstone, read from the indexes: the same as reading each
// key's newest row for its flag (the reference below), at every revision of
// a history of puts, deletes and puts again, and without reading the table
// once vacuum has found its pages all visible.
func TestRangeCount(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	const keys = 300
	revs := []int64{1}
	step := func(q string, args ...any) {
		t.Helper()
		rev := execRev(t, db, q, args...)
		revs = append(revs, rev-1, rev)
	}
	// Other keys, so that the range is a small part of the table, and the
	// plans those of a table in use.
	step(`select walwatch.put(convert_to('/a/' || i, 'UTF8'), 'v') from generate_series(1, $1) i`, 5000)
	step(`select walwatch.put(convert_to('/a/' || i, 'UTF8'), 'v') from generate_series(1, $1) i`, 5000)
	key := `convert_to('/c/' || lpad(i::text, 3, '0'), 'UTF8')`
	step(`select walwatch.put(`+key+`, 'v') from generate_series(1, $1) v, generate_series(1, $2) i`, 2, keys)
	step(`select walwatch.delete_range(`+key+`, null) from generate_series(1, $1, 7) i`, keys)
	step(`select walwatch.put(`+key+`, 'again') from generate_series(1, $1, 21) i`, keys)
	step(`select walwatch.delete_range(`+key+`, null) from generate_series(1, $1, 42) i`, keys)
	step(`select walwatch.put('/d', 'after the range')`)

	const reference = `select count(*) from (select distinct on (k.key) k.tombstone from walwatch.kv k
	                    where k.key >= $1 and ($2::bytea is null or k.key < $2) and k.revision <= $3
	                    order by k.key, k.revision desc) t where not t.tombstone`
	ranges := []struct{ lo, hi []byte }{
		{[]byte("/c/"), []byte("/c0")},
		{[]byte("/c/1"), []byte("/c/2")},
		{[]byte("/c/299"), nil},
		{[]byte("/c/150"), nil},
		{[]byte("/x"), nil},
	}
	for _, r := range ranges {
		for _, rev := range revs {
			var got, want int64
			if err := db.QueryRow(ctx, "select walwatch.range_count($1, $2, $3)", r.lo, r.hi, rev).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(ctx, reference, r.lo, r.hi, rev).Scan(&want); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("range_count(%q, %q, %d) = %d; want %d", r.lo, r.hi, rev, got, want)
			}
		}
	}

	if _, err := db.Exec(ctx, "vacuum analyze walwatch.kv"); err != nil {
		t.Fatal(err)
	}
	var n int64
	if fetched := rowsReadBy(t, db, "select walwatch.range_count('/c/', '/c0', walwatch.current_revision())", nil, &n); fetched != 0 {
		t.Errorf("counting %d keys of a vacuumed table read %d of its rows; want none", n, fetched)
	}
}

// range_page finds its rows by row id, and a row id stays good for the
// snapshot that found it: compaction deleting the page's older rows, and a
// vacuum after it, change nothing for a transaction that read the page
// before them and reads it again.
func TestRangePageOfASnapshotOutlivesCompaction(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	if _, err := db.Exec(ctx, `select walwatch.put(convert_to('/s/' || i, 'UTF8'), convert_to(repeat(v::text, 3000), 'UTF8'))
	                             from generate_series(1, 3) v, generate_series(1, 20) i`); err != nil {
		t.Fatal(err)
	}
	var rev int64
	if err := db.QueryRow(ctx, "select walwatch.current_revision()").Scan(&rev); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	const page = `select coalesce(string_agg(convert_from(key, 'UTF8') || '=' || md5(value), ',' order by key), '') || ' ' || max(count)
	                from walwatch.range_page('/s/', '/s0', $1, 10)`
	var before, after string
	if err := tx.QueryRow(ctx, page, rev-30).Scan(&before); err != nil {
		t.Fatal(err)
	}
	// Every version but the newest of each key goes, rev-30 with them.
	if _, err := db.Exec(ctx, "select walwatch.compact($1)", rev); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, "vacuum walwatch.kv"); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, page, rev-30).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before || !strings.HasSuffix(before, " 20") {
		t.Errorf("the page at revision %d before compaction %q, after it in the same snapshot %q", rev-30, before, after)
	}
}

// With p_count false, range_page leaves a page that the limit cut short
// uncounted: its count is null, and range_count is not called. A page that
// reaches the range's end is counted as it is read, whatever p_count says.
func TestRangePageUncounted(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	if _, err := db.Exec(ctx, `select walwatch.put(convert_to('/u/' || i, 'UTF8'), 'v') from generate_series(1, 9) i`); err != nil {
		t.Fatal(err)
	}
	nine := int64(9)
	for _, c := range []struct {
		limit  int64
		count  any    // true, false or nil (null: as false)
		rows   int64  // of keys, one past the limit when it cuts the range short
		want   *int64 // the closing row's count
		counts int64  // calls of range_count
	}{
		{limit: 4, count: true, rows: 5, want: &nine, counts: 1},
		{limit: 4, count: false, rows: 5, want: nil, counts: 0},
		{limit: 4, count: nil, rows: 5, want: nil, counts: 0},
		// The page's extra key is the range's last: none left to count.
		{limit: 8, count: true, rows: 9, want: &nine, counts: 1},
		{limit: 9, count: false, rows: 9, want: &nine, counts: 0},
		{limit: 0, count: false, rows: 9, want: &nine, counts: 0},
	} {
		tx, err := db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var (
			rows, before, after int64
			count               *int64
		)
		if _, err := tx.Exec(ctx, "set local track_functions = 'pl'"); err != nil {
			t.Fatal(err)
		}
		// The view may hold the connection's earlier transactions too, until
		// the backend reports them.
		const calls = `select coalesce(sum(calls), 0) from pg_stat_xact_user_functions
		                where schemaname = 'walwatch' and funcname = 'range_count'`
		if err := tx.QueryRow(ctx, calls).Scan(&before); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, `select count(key), (array_agg(count) filter (where key is null))[1]
		                              from walwatch.range_page('/u/', '/u0', 0, $1, $2)`, c.limit, c.count).Scan(&rows, &count); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, calls).Scan(&after); err != nil {
			t.Fatal(err)
		}
		counts := after - before
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if rows != c.rows || (count == nil) != (c.want == nil) || count != nil && *count != *c.want || counts != c.counts {
			t.Errorf("range_page(limit %d, p_count %v): %d rows, count %v, range_count called %d times; want %d rows, count %v, %d calls",
				c.limit, c.count, rows, fmtCount(count), counts, c.rows, fmtCount(c.want), c.counts)
		}
	}
}

func fmtCount(n *int64) string {
	if n == nil {
		return "null"
	}
	return fmt.Sprint(*n)
}

// A range whose keys have many versions (never compacted) is read a key at
// a step, not a version: its page, its count and latest_rows read about one
// entry of the key index a key, and answer as reading every version does
// (the reference below), at every revision of a history of puts, deletes,
// puts again and keys created late, over bounded and unbounded ranges,
// whole and cut by a limit.
func TestRangeOfManyVersionsReadsAKeyAStep(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	const keys, rounds = 120, 40
	var revs []int64
	step := func(q string, args ...any) {
		t.Helper()
		revs = append(revs, execRev(t, db, q, args...))
	}
	key := `convert_to('/m/' || lpad(i::text, 3, '0'), 'UTF8')`
	step(`select walwatch.put(convert_to('/a/' || i, 'UTF8'), 'few') from generate_series(1, 500) i`)
	for r := 1; r <= rounds; r++ {
		switch r {
		case 20:
			step(`select walwatch.delete_range(`+key+`, null) from generate_series(0, $1, 7) i`, keys-1)
		case 30:
			step(`select walwatch.put(`+key+`, 'again') from generate_series(0, $1, 14) i`, keys-1)
		case 35:
			step(`select walwatch.delete_range(`+key+`, null) from generate_series(0, $1, 21) i`, keys-1)
		case 38:
			step(`select walwatch.put(`+key+`, 'late') from generate_series($1::int, $1 + 9) i`, keys)
		default:
			step(`select walwatch.put(`+key+`, convert_to($1::text, 'UTF8')) from generate_series(0, $2) i`, fmt.Sprint(r), keys-1)
		}
	}
	step(`select walwatch.put('/z', 'after the range')`)
	if _, err := db.Exec(ctx, "vacuum analyze walwatch.kv"); err != nil {
		t.Fatal(err)
	}

	const reference = `select coalesce(array_agg(convert_from(t.key, 'UTF8') order by t.key), '{}')
	                     from (select distinct on (k.key) k.key, k.tombstone from walwatch.kv k
	                            where k.key >= $1 and ($2::bytea is null or k.key < $2) and k.revision <= $3
	                            order by k.key, k.revision desc) t where not t.tombstone`
	ranges := []struct{ lo, hi []byte }{
		{[]byte("/m/"), []byte("/m0")},
		{[]byte("/m/05"), []byte("/m/1")},
		{[]byte("/m/100"), nil},
		{[]byte("/m/"), nil},
		{[]byte("/m/0"), []byte("/m/00")},
	}
	for _, r := range ranges {
		end := r.hi
		if end == nil {
			end = []byte{0}
		}
		for _, rev := range revs {
			var want, got, latest, first []string
			var count, counted, pageCount int64
			if err := db.QueryRow(ctx, reference, r.lo, r.hi, rev).Scan(&want); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(ctx, `select coalesce(array_agg(convert_from(p.key, 'UTF8')) filter (where p.key is not null), '{}'),
			                                   max(p.count)
			                              from walwatch.range_page($1, $2, $3, 0) p`, r.lo, end, rev).Scan(&got, &count); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(ctx, `select coalesce(array_agg(convert_from(p.key, 'UTF8')) filter (where p.key is not null), '{}'),
			                                   max(p.count)
			                              from walwatch.range_page($1, $2, $3, 7) p`, r.lo, end, rev).Scan(&first, &pageCount); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(ctx, `select coalesce(array_agg(convert_from(l.key, 'UTF8')), '{}')
			                              from walwatch.latest_rows($1, $2, $3, null) l`, r.lo, r.hi, rev).Scan(&latest); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(ctx, "select walwatch.range_count($1, $2, $3)", r.lo, r.hi, rev).Scan(&counted); err != nil {
				t.Fatal(err)
			}
			wantFirst := want[:min(len(want), 8)]
			n := int64(len(want))
			if fmt.Sprint(got) != fmt.Sprint(want) || count != n || fmt.Sprint(latest) != fmt.Sprint(want) || counted != n ||
				fmt.Sprint(first) != fmt.Sprint(wantFirst) || pageCount != n {
				t.Errorf("[%q, %q) at %d: range_page %v (count %d), with limit 7 %v (count %d), latest_rows %v, range_count %d; want %v, count %d",
					r.lo, r.hi, rev, got, count, first, pageCount, latest, counted, want, n)
			}
		}
	}

	// Each reads the range's keys at most twice (a page cut short is
	// counted too) and two samples of 128 entries (versions_a_key); read the
	// way a DISTINCT ON reads, each would take about rounds entries a key.
	const most = 2*(keys+10+1) + 2*128
	for _, q := range []string{
		`select count(*) from walwatch.range_page('/m/', '/m0', 0, 0)`,
		`select count(*) from walwatch.range_page('/m/', '/m0', 0, 50)`,
		`select walwatch.range_count('/m/', '/m0', walwatch.current_revision())`,
		`select count(*) from walwatch.latest_rows('/m/', '/m0', walwatch.current_revision(), null)`,
	} {
		var n int64
		if entries := keyIndexEntriesReadBy(t, db, q, nil, &n); entries > most {
			t.Errorf("%s: read %d entries of the key index for %d keys of up to %d versions; want at most %d",
				q, entries, keys+10, rounds, most)
		}
	}
}

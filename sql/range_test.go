package sql_test

import (
	"fmt"
	"testing"
)

// A page of a range (Kubernetes lists 500 keys at a time) reads the keys of
// the page, not every row of the range: with values of a kilobyte, the
// planner preferred reading the whole range and sorting it, 95 ms for a page
// of 501 of 10,000 keys of three versions each, where the key index in
// order takes 2.4 ms. And the page comes in key order.
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
	// As autovacuum would, so that the plans are those of a table in use.
	if _, err := db.Exec(ctx, "analyze walwatch.kv"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // nothing to keep
	before := rowsRead(t, ctx, tx)
	var n int
	if err := tx.QueryRow(ctx, `select count(*) from walwatch.latest_rows('/p/', '/p0', walwatch.current_revision(), $1)`, page+1).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if fetched := rowsRead(t, ctx, tx) - before; n != page+1 || fetched > 2*versions*(page+1) {
		t.Errorf("a page of %d keys: %d rows, %d fetched; want %d rows, at most %d fetched (the range holds %d)",
			page+1, n, fetched, page+1, 2*versions*(page+1), keys*versions)
	}

	var (
		got   []string
		more  bool
		count int64
	)
	if err := tx.QueryRow(ctx, `select array(select convert_from(k, 'UTF8') from unnest(keys) k), more, count
	                              from walwatch.range('/p/', '/p0', 0, $1)`, page).Scan(&got, &more, &count); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range page {
		want = append(want, fmt.Sprintf("/p/%05d", i+1))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || !more || count != keys {
		t.Errorf("range with limit %d: %v, more %v, count %d; want %v, more, count %d", page, got, more, count, want, keys)
	}
}

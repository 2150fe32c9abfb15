package sql_test

import "testing"

// delete_range of one key reads the key's newest row, not every row it has:
// a key deleted and created again many times (a Kubernetes object recreated
// under its name) costs what a new key does. The rows a delete reads, by
// scan or through an index, counted by PostgreSQL for the transaction, must
// not grow with the key's history.
func TestDeleteOneKeyReadsItsNewestRow(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	const versions = 200
	if _, err := db.Exec(ctx, `select walwatch.put('/pod', 'v'), walwatch.delete_range('/pod', null)
	                             from generate_series(1, $1)`, versions/2); err != nil {
		t.Fatal(err)
	}
	// As autovacuum would, so that the plans are those of a table in use.
	if _, err := db.Exec(ctx, "analyze walwatch.kv"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		setup   string
		deleted int64
	}{
		{"live", "select walwatch.put('/pod', 'v')", 1},
		{"deleted", "select walwatch.delete_range('/pod', null)", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := db.Exec(ctx, tc.setup); err != nil {
				t.Fatal(err)
			}
			var deleted int64
			fetched := rowsReadBy(t, db, "select deleted from walwatch.delete_range('/pod', null)", nil, &deleted)
			if deleted != tc.deleted {
				t.Errorf("deleted %d; want %d", deleted, tc.deleted)
			}
			// The newest row, and the few a put reads (append's own look at
			// the key's newest row, the revision's neighbours).
			if fetched > 10 {
				t.Errorf("the delete fetched %d rows of a key with %d; want at most 10", fetched, versions+1)
			}
		})
	}
}

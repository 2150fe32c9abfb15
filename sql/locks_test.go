package sql_test

import "testing"

// lock_keys holds one advisory lock per distinct key it is given, each the
// key's key_lock, until the transaction ends.
func TestLockKeys(t *testing.T) {
	db := newMigratedDB(t)
	ctx := testContext(t)
	for _, tc := range []struct {
		name string
		keys [][]byte
		from int // the array's first subscript
		want int
	}{
		{"none", [][]byte{}, 1, 0},
		{"null", nil, 1, 0},
		{"one", [][]byte{[]byte("/a")}, 1, 1},
		{"binary", [][]byte{{0x00, 0xff}}, 1, 1},
		{"one from 5", [][]byte{[]byte("/a")}, 5, 1},
		{"many", [][]byte{[]byte("/a"), []byte("/b"), []byte("/c")}, 1, 3},
		{"many from 0", [][]byte{[]byte("/a"), []byte("/b")}, 0, 2},
		{"repeated", [][]byte{[]byte("/b"), []byte("/a"), []byte("/b")}, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := db.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // nothing to keep
			// An array from SQL may start at any subscript; one from Go
			// starts at 1.
			if _, err := tx.Exec(ctx, `select walwatch.lock_keys(case when cardinality($1::bytea[]) > 0
			        then format('[%s:%s]=%s', $2::int, $2::int + cardinality($1) - 1, $1::text)::bytea[] else $1 end)`,
				tc.keys, tc.from); err != nil {
				t.Fatal(err)
			}
			// A bigint advisory lock shows as its high and low halves.
			var held, theirs int
			if err := tx.QueryRow(ctx, `select count(*),
			        count(*) filter (where ((l.classid::bigint << 32) | l.objid::bigint)
			                               in (select walwatch.key_lock(k) from unnest($1::bytea[]) k))
			   from pg_locks l
			  where l.locktype = 'advisory' and l.pid = pg_backend_pid() and l.granted and l.objsubid = 1`,
				tc.keys).Scan(&held, &theirs); err != nil {
				t.Fatal(err)
			}
			if held != tc.want || theirs != tc.want {
				t.Errorf("lock_keys(%q) holds %d advisory locks, %d of them the keys'; want %d", tc.keys, held, theirs, tc.want)
			}
		})
	}
}

package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
)

// Tunables of the table reads.
var (
	// pageRows bounds the rows of a page of any table read: the first read
	// of a session (and the read after a reconnect) and a catch-up read. A
	// revision larger than a page is read whole, alone.
	pageRows = 5000
	// firstReadPageBytes bounds the bytes of keys and values of a page of
	// the first table read of a session; a catch-up page takes at most a
	// response's bytes.
	firstReadPageBytes = 16 << 20
)

// Table reads (the first read of a session, a watcher's catch-up) go in
// pages bounded by rows and by bytes, so that what one page holds does not
// follow the size of the values: 5,000 rows of 1.5 MiB values would be 7 GiB.
// A page is read in one statement when its rows are small, two when not.
// The first reads the next rows with their sizes (octet_length reads a
// value's length without fetching it), but the key and value only of rows
// small enough that all of them together stay within the page's bytes;
// pageEnd picks the last revision that keeps the page within its bounds.
// When every row up to it came whole, that is the page; otherwise the second
// statement reads the rows up to it, whole revisions with no limit.

// tableRead is one paged read of walwatch.kv: the rows after a revision (up
// to another, in a key range), in (revision, sub) order, a page at a time.
// The first read of a session takes every row, fillers too (they settle
// their revisions); a catch-up takes the rows of its watcher's range, which
// never holds a filler (their key is empty).
type tableRead struct {
	q        querier
	keys     *store.KeyRange // nil: every row, fillers included
	after    int64           // the last revision read: the next page starts after it
	upto     int64           // the last revision to read; 0: no bound
	maxRows  int
	maxBytes int
	done     bool         // the last page has been read
	scratch  *pageScratch // nil: each page in memory of its own
}

// pageScratch is memory a table read scans its pages into, kept from read
// to read by a reader done with each page before it reads the next (the
// hub's catch-up). A page of up to 5,001 rows grown from nothing by
// appending was a sixth of BenchmarkCatchUp's CPU, and a page sized up
// front for the rows a read might hold would be a whole page for a sparse
// range's few rows.
type pageScratch struct {
	rows  []row
	sizes []rowSize
}

// next reads the next page: whole revisions, at most maxRows rows and
// maxBytes bytes (rowsSize), or else the next revision alone, whole, however
// large. Once done it returns no rows. compacted is the compacted revision,
// read in the same snapshot as the rows; 0 when the page is empty.
func (r *tableRead) next(ctx context.Context) (page []row, compacted int64, err error) {
	if r.done {
		return nil, 0, nil
	}
	where, args := r.filter()
	page, compacted, more, err := readPage(ctx, r.q, where, args, r.maxRows, r.maxBytes, r.scratch)
	if err != nil {
		return nil, 0, err
	}
	if len(page) > 0 {
		r.after = page[len(page)-1].revision
	}
	r.done = !more || len(page) == 0
	return page, compacted, nil
}

// walkRevisionsTx begins the transaction of a catch-up page of a key range,
// in one round trip: with sorts off, the only plan left for a range is the
// primary key in revision order, filtered by key, whatever the statistics
// say, as walwatch.changes (and changes_between before it) does. Right after
// a bulk write under a new prefix the statistics still say the prefix is
// empty, and the plan they gave read the whole prefix through the key index
// and sorted it, for every page: BenchmarkCatchUp without its analyze fell
// from about 800k to 180k events/s.
var walkRevisionsTx = pgx.TxOptions{BeginQuery: "begin read only; set local enable_sort = off"}

// walkRevisions reads the next page as next does, in a transaction of pool
// with sorts off (walkRevisionsTx). It is for key ranges only: a single key
// wants its own rows through the key index, which with sorts off it would
// not get.
func (r *tableRead) walkRevisions(ctx context.Context, pool *pgxpool.Pool) (page []row, compacted int64, err error) {
	tx, err := pool.BeginTx(ctx, walkRevisionsTx)
	if err != nil {
		return nil, 0, fmt.Errorf("read a page of the table after revision %d: begin: %w", r.after, err)
	}
	// Read only: a rollback ends it as well as a commit would. One that
	// fails closes the connection, and the pool drops it.
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
	r.q = tx
	defer func() { r.q = pool }()
	return r.next(ctx)
}

// filter is the read's where clause and its parameters. Each kind of read
// keeps one text, so its statement description stays cached.
func (r *tableRead) filter() (string, []any) {
	var (
		conds []string
		args  []any
	)
	arg := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, fmt.Sprintf(cond, len(args)))
	}
	if r.keys != nil {
		arg("key >= $%d", r.keys.Key)
		if hi := r.keys.Upper(); hi != nil {
			arg("key < $%d", hi)
		}
		conds = append(conds, "key <> ''")
	}
	arg("revision > $%d", r.after)
	if r.upto > 0 {
		arg("revision <= $%d", r.upto)
	}
	return strings.Join(conds, " and "), args
}

// rowSize is one row's revision and the memory it will take (rowsSize).
type rowSize struct {
	revision int64
	bytes    int
}

// rowsSize is the memory rows hold once read: their keys, values and a
// fixed overhead each, counted as eventsSize counts their events.
func rowsSize(rows []row) int {
	n := 0
	for i := range rows {
		n += len(rows[i].key) + len(rows[i].value) + eventOverhead
	}
	return n
}

// querier is what a table read runs on: a pool, or the transaction of the
// first read.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

var (
	_ querier = (*pgxpool.Pool)(nil)
	_ querier = pgx.Tx(nil)
)

// pageMode plans each page read for its own parameters (a prefix of
// everything and a single key want different indexes; a
// cached generic plan made a catch-up page three times slower), with binary
// results: an unnamed statement each time, its description cached.
const pageMode = pgx.QueryExecModeCacheDescribe

// readPage reads the next rows of walwatch.kv that match where (whose
// parameters are args), in (revision, sub) order: whole revisions, at most
// maxRows rows and maxBytes bytes (rowsSize), or else the first revision
// alone, whole, however large. more reports whether rows may follow the
// page. compacted is the compacted revision, read in the same snapshot as
// the rows; 0 when the page is empty. With scratch, the page is scratch's
// memory, which the next read with it reuses. tableRead.next is its caller.
func readPage(ctx context.Context, q querier, where string, args []any, maxRows, maxBytes int, scratch *pageScratch) (page []row, compacted int64, more bool, err error) {
	n := len(args)
	// Rows up to inline bytes come whole with the sizes: maxRows+1 of them
	// stay within maxBytes.
	inline := maxBytes / (maxRows + 1)
	rows, err := q.Query(ctx, fmt.Sprintf(
		`select revision, sub, case when size <= $%[3]d then key end, case when size <= $%[3]d then value end,
		        tombstone, create_revision, version, prev_revision, lease, size, (select compact_revision from walwatch.meta)
		   from (select *, octet_length(key) + coalesce(octet_length(value), 0) as size
		           from walwatch.kv where %[1]s order by revision, sub limit $%[2]d) k
		  order by revision, sub`, where, n+1, n+2),
		append([]any{pageMode}, append(args[:n:n], maxRows+1, inline)...)...)
	if err != nil {
		return nil, 0, false, fmt.Errorf("read a page of the table (%v): %w", args, err)
	}
	var sizes []rowSize
	if scratch != nil {
		page, sizes = scratch.rows[:0], scratch.sizes[:0]
	}
	page, err = scanRows(page, rows, &sizes, &compacted)
	if scratch != nil {
		scratch.rows, scratch.sizes = page[:0], sizes[:0] // grown, for the next read
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("read a page of the table (%v): %w", args, err)
	}
	if len(page) == 0 {
		return nil, 0, false, nil
	}
	end, more := pageEnd(sizes, maxRows, maxBytes)
	whole := len(page) <= maxRows || end != page[len(page)-1].revision // every revision up to end is all here
	cut := len(page)
	for cut > 0 && page[cut-1].revision > end {
		cut--
	}
	for i := range cut {
		whole = whole && sizes[i].bytes-eventOverhead <= inline
	}
	if whole {
		clear(page[cut:]) // keep no rows past the page alive
		return page[:cut], compacted, more, nil
	}
	// A row too large to come with the sizes, or one revision larger than
	// a page: read the rows up to end.
	rows, err = q.Query(ctx, fmt.Sprintf(
		`select %s, (select compact_revision from walwatch.meta)
		   from walwatch.kv where %s and revision <= $%d order by revision, sub`, rowColumns, where, n+1),
		append([]any{pageMode}, append(args[:n:n], end)...)...)
	if err != nil {
		return nil, 0, false, fmt.Errorf("read rows up to revision %d (%v): %w", end, args, err)
	}
	clear(page) // reused: keep none of the first read's rows alive
	page, err = scanRows(page[:0], rows, nil, &compacted)
	if scratch != nil {
		scratch.rows = page[:0]
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("read rows up to revision %d (%v): %w", end, args, err)
	}
	if len(page) == 0 {
		compacted = 0 // none read: the caller asks
	}
	return page, compacted, more, nil
}

// scanRows appends the rows of rows to page and, when sizes is not nil,
// each one's size to *sizes (the query selects it after the row's columns);
// the compacted revision comes last. One set of scan targets serves every
// row, and a row's key and value share one allocation: scanning each row
// into targets of its own, two copies apiece, was half of a catch-up's CPU
// (BenchmarkCatchUp).
func scanRows(page []row, rows pgx.Rows, sizes *[]rowSize, compacted *int64) ([]row, error) {
	defer rows.Close()
	var (
		x          row
		size       int32
		key, value pgtype.DriverBytes // the driver's buffer until the next row: x.own copies them
	)
	dest := []any{&x.revision, &x.sub, &key, &value, &x.tombstone, &x.createRevision, &x.version,
		&x.prevRevision, &x.lease}
	if sizes != nil {
		dest = append(dest, &size)
	}
	dest = append(dest, compacted)
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return page, err
		}
		x.key, x.value = key, value
		x.own()
		page = append(page, x)
		if sizes != nil {
			*sizes = append(*sizes, rowSize{revision: x.revision, bytes: int(size) + eventOverhead})
		}
	}
	return page, rows.Err()
}

// pageEnd picks where a page that starts with sizes ends: the last revision
// such that the page holds whole revisions, at most maxRows rows and
// maxBytes bytes, or else the first revision, whole. sizes were read with a
// limit of maxRows+1 rows, so when there are more than maxRows the last
// revision in them may go on past them. more reports whether anything may
// follow the page.
func pageEnd(sizes []rowSize, maxRows, maxBytes int) (end int64, more bool) {
	cut := len(sizes) > maxRows // the read stopped at its limit
	total := 0
	for i := 0; i < len(sizes); {
		rev := sizes[i].revision
		j, bytes := i, 0
		for j < len(sizes) && sizes[j].revision == rev {
			bytes += sizes[j].bytes
			j++
		}
		whole := j < len(sizes) || !cut
		if i > 0 && (!whole || total+bytes > maxBytes) {
			return end, true
		}
		end, total, i = rev, total+bytes, j
	}
	return end, cut
}

package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RangeRequest reads a key or range at a revision.
type RangeRequest struct {
	KeyRange
	Revision int64 // 0: the current revision
	Limit    int64 // 0: no limit
	// CountOnly asks for Count alone, no keys.
	CountOnly bool
	// NoCount leaves a page at a named Revision that Limit cuts short
	// uncounted (Count 0): its count reads the rest of the range, so a
	// reader that reads a whole range page by page, and counts the keys
	// itself, reads it once rather than twice. Other reads are counted.
	NoCount bool
}

// RangeResponse is what a read returns.
type RangeResponse struct {
	Revision int64 // the revision read at
	// Current is the current revision in the read's snapshot (etcd's
	// header revision): Revision for a read at the current revision.
	Current int64
	KVs     []KeyValue
	More    bool // Limit cut the result short
	// Count is how many keys the range holds at Revision, whatever Limit
	// says, as etcd's count.
	Count int64
}

// PutResponse is what a put returns.
type PutResponse struct {
	Revision int64
	PrevKV   *KeyValue // asked for with Op.PrevKV; nil when there was no key
}

// DeleteResponse is what a delete returns.
type DeleteResponse struct {
	Revision int64 // of the delete; the current one when nothing was deleted
	Deleted  int64
	PrevKVs  []KeyValue // asked for with Op.PrevKV: the keys deleted, as they were
}

// Put sets key to value at a revision of its own. Puts made while others are
// in flight share a transaction with them (one round trip for all), so a put
// commits together with its neighbours, never half of them.
func (s *Store) Put(ctx context.Context, key, value []byte) (PutResponse, error) {
	if err := s.checkKey(key); err != nil {
		return PutResponse{}, err
	}
	if err := s.checkValue(value); err != nil {
		return PutResponse{}, err
	}
	rev, err := s.puts.put(ctx, key, value)
	if err != nil {
		return PutResponse{}, err
	}
	return PutResponse{Revision: rev}, nil
}

// Delete deletes a key or range in one revision; deleting nothing takes none.
func (s *Store) Delete(ctx context.Context, r KeyRange) (DeleteResponse, error) {
	if err := s.CheckRange(r); err != nil {
		return DeleteResponse{}, err
	}
	for attempt := 1; ; attempt++ {
		res, err := deleteRange(ctx, s.pool, r, nil, 0)
		if aborted(err) && attempt < txnRetries {
			continue
		}
		return res, err
	}
}

const deleteRangeSQL = "select revision, deleted from walwatch.delete_range($1, $2, $3, $4)"

func deleteRangeArgs(r KeyRange, rev *int64, sub int) []any { return []any{r.Key, r.end(), rev, sub} }

// deleteRange deletes at revision rev from sub on, or at a new revision when
// rev is nil.
func deleteRange(ctx context.Context, q querier, r KeyRange, rev *int64, sub int) (DeleteResponse, error) {
	var res DeleteResponse
	err := q.QueryRow(ctx, deleteRangeSQL, deleteRangeArgs(r, rev, sub)...).Scan(&res.Revision, &res.Deleted)
	if err != nil {
		return DeleteResponse{}, fmt.Errorf("delete %s: %w", keyText(r.Key), TypedError(err, 0))
	}
	return res, nil
}

// Range reads a key or range at a revision, in key order, in one snapshot.
// Below the compacted revision it fails with a *CompactedError, above the
// current one with a *FutureRevisionError.
func (s *Store) Range(ctx context.Context, req RangeRequest) (RangeResponse, error) {
	if err := s.CheckRange(req.KeyRange); err != nil {
		return RangeResponse{}, err
	}
	if err := checkRevision(req.Revision); err != nil {
		return RangeResponse{}, err
	}
	if req.Limit < 0 {
		return RangeResponse{}, fmt.Errorf("%w: %d: must be 0 (no limit) or positive", ErrInvalidLimit, req.Limit)
	}
	switch {
	case req.IsSingleKey() && req.Revision == 0:
		return s.gets.get(ctx, req)
	case req.IsSingleKey() || req.CountOnly || req.Limit == 0 || req.Revision == 0:
		return rangeKeys(ctx, s.pool, req)
	}
	return s.rangePageAt(ctx, req)
}

// rangePageAt reads a limited range's page at a revision the caller named,
// counted from the page before when this Store read that (pageCounts).
func (s *Store) rangePageAt(ctx context.Context, req RangeRequest) (RangeResponse, error) {
	if req.NoCount {
		res, err := rangePage(ctx, s.pool, req, false)
		if err != nil {
			return RangeResponse{}, rangeError(req, err)
		}
		return res, nil
	}
	count, known := s.counts.take(req)
	res, err := rangePage(ctx, s.pool, req, !known)
	if err == nil && known && res.More {
		res.Count = count
		if count <= int64(len(res.KVs)) {
			// Kept from a page read before its revision settled.
			res, err = rangePage(ctx, s.pool, req, true)
		}
	}
	if err != nil {
		return RangeResponse{}, rangeError(req, err)
	}
	s.counts.keep(req, res)
	return res, nil
}

// rangeError says which read failed, with the error's type.
func rangeError(req RangeRequest, err error) error {
	return fmt.Errorf("range %s at revision %d: %w", keyText(req.Key), req.Revision, TypedError(err, req.Revision))
}

func rangeKeys(ctx context.Context, q querier, req RangeRequest) (RangeResponse, error) {
	if req.IsSingleKey() {
		return rangeOne(ctx, q, req)
	}
	var (
		res RangeResponse
		err error
	)
	if req.CountOnly {
		res.KVs = []KeyValue{}
		err = q.QueryRow(ctx, "select revision, count, "+currentOfRead+" from walwatch.range($1, $2, $3, 0, true)",
			req.Key, req.end(), req.Revision).Scan(&res.Revision, &res.Count, &res.Current)
	} else {
		res, err = rangePage(ctx, q, req, true)
	}
	if err != nil {
		return RangeResponse{}, rangeError(req, err)
	}
	return res, nil
}

// currentOfRead is the current revision in a range statement's snapshot,
// beside the revision it read at and whose parameter is $3: that revision
// itself for a read at the current one (0).
const currentOfRead = "case when $3 = 0 then revision else walwatch.current_revision() end"

// rangePage reads req's page through walwatch.range_page: its keys, one
// past the limit if the range has more, then a row with no key that holds
// the revision read at, the count and the current revision (read there, in
// the page's snapshot, so that a read at an older revision needs no second
// round trip for it). Without count, a page the limit cut short comes back
// with no count (0), for the caller to fill in.
func rangePage(ctx context.Context, q querier, req RangeRequest, count bool) (RangeResponse, error) {
	rows, err := q.Query(ctx, `select revision, count, key, value, create_revision, mod_revision, version, lease,
	       case when key is null then `+currentOfRead+` end
	  from walwatch.range_page($1, $2, $3, $4, $5)`,
		req.Key, req.end(), req.Revision, req.Limit, count)
	if err != nil {
		return RangeResponse{}, err
	}
	defer rows.Close()
	res := RangeResponse{KVs: make([]KeyValue, 0, min(max(req.Limit, 0), 1024))}
	trailer := false
	// One set of targets for every row, and a row's key and value copied
	// into one allocation: targets declared in the loop escaped to the heap
	// row by row, seven allocations a row, and pgx's two for the key and
	// value made the rest of a list's garbage. Int8s: each column is null
	// in the keys' rows or in the closing one.
	var (
		key, value                               pgtype.DriverBytes // the driver's until the next row
		rev, n, create, mod, version, lease, cur pgtype.Int8
	)
	dest := []any{&rev, &n, &key, &value, &create, &mod, &version, &lease, &cur}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return RangeResponse{}, err
		}
		if key == nil {
			// The keys' rows come first, so More is known here.
			if !rev.Valid || !cur.Valid || !n.Valid && (count || !res.More) {
				return RangeResponse{}, errors.New("range_page: a closing row without its revisions or count")
			}
			res.Revision, res.Count, res.Current, trailer = rev.Int64, n.Int64, cur.Int64, true
			continue
		}
		if req.Limit > 0 && int64(len(res.KVs)) == req.Limit {
			res.More = true
			continue
		}
		kv := KeyValue{CreateRevision: create.Int64, ModRevision: mod.Int64, Version: version.Int64, Lease: lease.Int64}
		kv.Key, kv.Value = OwnKeyValue(key, value)
		res.KVs = append(res.KVs, kv)
	}
	if err := rows.Err(); err != nil {
		return RangeResponse{}, err
	}
	if !trailer {
		return RangeResponse{}, errors.New("range_page: no closing row")
	}
	return res, nil
}

// A single key is read by one plain statement rather than walwatch.range,
// whose PL/pgSQL makes half the rate at 32 clients (BenchmarkGetParts),
// and the caller applies walwatch.read_revision's rule. Absent columns come
// back as zeros (no row: revision 0, never a written one) so that a get
// allocates nothing for them.
//
// oneKeyLatestSQL reads at the current revision: the newest row overall
// (unless the connection's stamp, $2 and $3, gives it) and the key's
// newest, and returns the snapshot when it is not the stamp's. It leaves
// walwatch.meta out, which the other statement reads for the compacted
// revision: the current revision is never below the compacted one, as
// walwatch.revisions allows for, because compaction refuses a revision
// above the current one and removes only rows below its revision, so the
// newest row stays. Without the meta row and the join that brought it,
// PostgreSQL serves 35% more of these statements at 32 clients (pgbench,
// median of five runs: 23.8k against 17.6k/s).
const (
	latestRevision  = `case when o.s = $2 then $3::bigint else coalesce((select max(x.revision) from walwatch.kv x), 1) end`
	oneKeyLatestSQL = `select nullif(o.s, $2), ` + latestRevision + `,
       coalesce(k.revision, 0), k.value, coalesce(k.create_revision, 0), coalesce(k.version, 0), coalesce(k.lease, 0), coalesce(k.tombstone, true)
  from ` + snapshotFrom + `
  left join (select * from walwatch.kv k where k.key = $1 order by k.revision desc limit 1) k on true`
	// manyKeysLatestSQL is oneKeyLatestSQL for the keys of a batch of gets,
	// all read in one snapshot: a row each, by its place in $1 (from 1).
	// The keys come from generate_subscripts, not unnest: the planner takes
	// unnest's rows from the array's length, so when a connection's first
	// five batches were small, a plan made for each call looked cheaper
	// than the cached one (made for ten keys) for good, and PostgreSQL
	// planned every batch afresh: 326 against 144 µs of its CPU for a batch
	// of five keys. generate_subscripts has one estimate for every array, so
	// the cached plan serves from the sixth call on.
	manyKeysLatestSQL = `select nullif(o.s, $2), ` + latestRevision + `, u.i,
       coalesce(k.revision, 0), k.value, coalesce(k.create_revision, 0), coalesce(k.version, 0), coalesce(k.lease, 0), coalesce(k.tombstone, true)
  from ` + snapshotFrom + `
  cross join generate_subscripts($1::bytea[], 1) u(i)
  left join lateral (select * from walwatch.kv k where k.key = ($1::bytea[])[u.i] order by k.revision desc limit 1) k on true`
	oneKeyAtSQL = `select m.compact_revision, greatest(coalesce((select max(x.revision) from walwatch.kv x), 1), m.compact_revision),
       coalesce(k.revision, 0), k.value, coalesce(k.create_revision, 0), coalesce(k.version, 0), coalesce(k.lease, 0), coalesce(k.tombstone, true)
  from walwatch.meta m
  left join (select * from walwatch.kv k where k.key = $1 and k.revision <= $2 order by k.revision desc limit 1) k on true`
)

// rangeOne is rangeKeys for a single key. Its revision rule is
// walwatch.read_revision's: 0 reads at the current revision; below the
// compacted revision, or above the current one, fails; the compacted
// revision itself still reads.
func rangeOne(ctx context.Context, q querier, req RangeRequest) (RangeResponse, error) {
	var (
		k   oneKey
		err error
	)
	if req.Revision == 0 {
		_, err = k.scanLatest(q.QueryRow(ctx, oneKeyLatestSQL, req.Key, "", 0))
	} else {
		err = q.QueryRow(ctx, oneKeyAtSQL, req.Key, req.Revision).Scan(&k.compacted, &k.cur, &k.mod, &k.value, &k.create, &k.ver, &k.lease, &k.tombstone)
	}
	if err != nil {
		return RangeResponse{}, rangeError(req, err)
	}
	return k.response(req)
}

// getLatest is rangeOne at the current revision on a pool connection of
// its own, which may know the current revision from its stamp.
func getLatest(ctx context.Context, pool *pgxpool.Pool, req RangeRequest) (RangeResponse, error) {
	var k oneKey
	err := withStamp(ctx, pool, latestStamp, func(conn *pgxpool.Conn, st stamp) (*string, int64, error) {
		snapshot, err := k.scanLatest(conn.QueryRow(ctx, oneKeyLatestSQL, req.Key, st.snapshot, st.rev))
		return snapshot, k.cur, err
	})
	if err != nil {
		return RangeResponse{}, rangeError(req, err)
	}
	return k.response(req)
}

// scanManyKeys reads the n rows of manyKeysLatestSQL for n keys, closing
// rows: each key's read, in the keys' order, and the snapshot for the
// connection's stamp.
func scanManyKeys(rows pgx.Rows, n int) ([]oneKey, *string, error) {
	defer rows.Close()
	read := make([]oneKey, n)
	got := 0
	var (
		i        int
		snapshot *string
	)
	for rows.Next() {
		var k oneKey
		if err := rows.Scan(&snapshot, &k.cur, &i, &k.mod, &k.value, &k.create, &k.ver, &k.lease, &k.tombstone); err != nil {
			return nil, nil, err
		}
		if i < 1 || i > n {
			return nil, nil, fmt.Errorf("a row for key %d of %d", i, n)
		}
		read[i-1] = k
		got++
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if got != n {
		return nil, nil, fmt.Errorf("%d rows for %d keys", got, n)
	}
	return read, snapshot, nil
}

// oneKey is what the single-key statements read: the compacted and current
// revisions and the key's newest row at the revision read.
type oneKey struct {
	compacted, cur, mod, create, ver, lease int64
	value                                   []byte
	tombstone                               bool
}

// scanLatest reads a row of oneKeyLatestSQL, and the snapshot for the
// connection's stamp.
func (k *oneKey) scanLatest(row pgx.Row) (snapshot *string, err error) {
	err = row.Scan(&snapshot, &k.cur, &k.mod, &k.value, &k.create, &k.ver, &k.lease, &k.tombstone)
	return snapshot, err
}

// response applies the revision rule to what was read for req.
func (k *oneKey) response(req RangeRequest) (RangeResponse, error) {
	rev := req.Revision
	var err error
	switch {
	case rev == 0:
		rev = k.cur
	case rev < k.compacted:
		err = &CompactedError{Revision: rev, CompactRevision: k.compacted}
	case rev > k.cur:
		err = &FutureRevisionError{Revision: rev, CurrentRevision: k.cur}
	}
	if err != nil {
		return RangeResponse{}, fmt.Errorf("range %s at revision %d: %w", keyText(req.Key), req.Revision, err)
	}
	res := RangeResponse{Revision: rev, Current: k.cur, KVs: []KeyValue{}}
	if k.mod == 0 || k.tombstone {
		return res, nil
	}
	res.Count = 1
	if !req.CountOnly {
		res.KVs = []KeyValue{{Key: bytes.Clone(req.Key), Value: k.value, CreateRevision: k.create, ModRevision: k.mod, Version: k.ver, Lease: k.lease}}
	}
	return res, nil
}

// Get reads one key at a revision (0: the current one). ok is false when the
// key does not exist at that revision.
func (s *Store) Get(ctx context.Context, key []byte, rev int64) (kv KeyValue, ok bool, err error) {
	res, err := s.Range(ctx, RangeRequest{KeyRange: Key(key), Revision: rev})
	if err != nil || len(res.KVs) == 0 {
		return KeyValue{}, false, err
	}
	return res.KVs[0], true, nil
}

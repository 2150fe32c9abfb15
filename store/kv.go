package store

import (
	"bytes"
	"context"
	"fmt"
)

// RangeRequest reads a key or range at a revision.
type RangeRequest struct {
	KeyRange
	Revision int64 // 0: the current revision
	Limit    int64 // 0: no limit
	// CountOnly asks for Count alone, no keys.
	CountOnly bool
}

// RangeResponse is what a read returns.
type RangeResponse struct {
	Revision int64 // the revision read at
	KVs      []KeyValue
	More     bool // Limit cut the result short
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
	if err := s.checkRange(r); err != nil {
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

// deleteRange deletes at revision rev from sub on, or at a new revision when
// rev is nil.
func deleteRange(ctx context.Context, q querier, r KeyRange, rev *int64, sub int) (DeleteResponse, error) {
	var res DeleteResponse
	err := q.QueryRow(ctx, "select revision, deleted from walwatch.delete_range($1, $2, $3, $4)",
		r.Key, r.end(), rev, sub).Scan(&res.Revision, &res.Deleted)
	if err != nil {
		return DeleteResponse{}, fmt.Errorf("delete %s: %w", keyText(r.Key), TypedError(err, 0))
	}
	return res, nil
}

// Range reads a key or range at a revision, in key order, in one snapshot.
// Below the compacted revision it fails with a *CompactedError, above the
// current one with a *FutureRevisionError.
func (s *Store) Range(ctx context.Context, req RangeRequest) (RangeResponse, error) {
	if err := s.checkRange(req.KeyRange); err != nil {
		return RangeResponse{}, err
	}
	if err := checkRevision(req.Revision); err != nil {
		return RangeResponse{}, err
	}
	if req.Limit < 0 {
		return RangeResponse{}, fmt.Errorf("%w: %d: must be 0 (no limit) or positive", ErrInvalidLimit, req.Limit)
	}
	return rangeKeys(ctx, s.pool, req)
}

func rangeKeys(ctx context.Context, q querier, req RangeRequest) (RangeResponse, error) {
	if req.IsSingleKey() {
		return rangeOne(ctx, q, req)
	}
	var (
		res                             RangeResponse
		keys, values                    [][]byte
		creates, mods, versions, leases []int64
	)
	err := q.QueryRow(ctx,
		"select revision, more, count, keys, vals, create_revisions, mod_revisions, versions, leases from walwatch.range($1, $2, $3, $4, $5)",
		req.Key, req.end(), req.Revision, req.Limit, req.CountOnly,
	).Scan(&res.Revision, &res.More, &res.Count, &keys, &values, &creates, &mods, &versions, &leases)
	if err != nil {
		return RangeResponse{}, fmt.Errorf("range %s at revision %d: %w", keyText(req.Key), req.Revision, TypedError(err, req.Revision))
	}
	res.KVs = make([]KeyValue, len(keys))
	for i := range keys {
		res.KVs[i] = KeyValue{Key: keys[i], Value: values[i], CreateRevision: creates[i], ModRevision: mods[i], Version: versions[i], Lease: leases[i]}
	}
	return res, nil
}

// oneKeySQL reads one key's newest row at $2 (0: the current revision) with
// the compacted and current revisions, in one plain statement: at 32
// clients walwatch.range's PL/pgSQL makes half its rate
// (BenchmarkGetParts). The key's row does not depend on the current
// revision (at 0, its newest row in the statement's snapshot is at or below
// the snapshot's newest revision), so the planner reads it with no nested
// loop or memoize node over the max(revision) probe: 12-15% more gets at 32
// clients than the lateral join it replaced. The caller applies
// walwatch.read_revision's rule.
const oneKeySQL = `select m.compact_revision, greatest(c.cur, m.compact_revision), k.value, k.create_revision, k.revision, k.version, k.lease, k.tombstone
  from walwatch.meta m
 cross join (select coalesce(max(x.revision), 1) as cur from walwatch.kv x) c
  left join (select * from walwatch.kv k
              where k.key = $1 and k.revision <= case when $2 = 0 then 9223372036854775807 else $2 end
              order by k.revision desc limit 1) k on true`

// rangeOne is rangeKeys for a single key. Its revision rule is
// walwatch.read_revision's: 0 reads at the current revision; below the
// compacted revision, or above the current one, fails; the compacted
// revision itself still reads.
func rangeOne(ctx context.Context, q querier, req RangeRequest) (RangeResponse, error) {
	var (
		compacted, cur          int64
		value                   []byte
		create, mod, ver, lease *int64
		tombstone               *bool
	)
	rev := req.Revision
	err := q.QueryRow(ctx, oneKeySQL, req.Key, rev).
		Scan(&compacted, &cur, &value, &create, &mod, &ver, &lease, &tombstone)
	switch {
	case err != nil:
		err = TypedError(err, rev)
	case rev == 0:
		rev = cur
	case rev < compacted:
		err = &CompactedError{Revision: rev, CompactRevision: compacted}
	case rev > cur:
		err = &FutureRevisionError{Revision: rev, CurrentRevision: cur}
	}
	if err != nil {
		return RangeResponse{}, fmt.Errorf("range %s at revision %d: %w", keyText(req.Key), req.Revision, err)
	}
	res := RangeResponse{Revision: rev, KVs: []KeyValue{}}
	if mod == nil || *tombstone {
		return res, nil
	}
	res.Count = 1
	if !req.CountOnly {
		res.KVs = []KeyValue{{Key: bytes.Clone(req.Key), Value: value, CreateRevision: *create, ModRevision: *mod, Version: *ver, Lease: *lease}}
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

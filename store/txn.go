package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// CompareTarget is the field of a key a Compare looks at.
type CompareTarget int

const (
	CompareValue CompareTarget = iota
	CompareVersion
	CompareCreateRevision
	CompareModRevision
)

// CompareResult is how a Compare relates the key's field to its operand.
type CompareResult int

const (
	ResultEqual CompareResult = iota
	ResultNotEqual
	ResultLess
	ResultGreater
)

// Compare is one condition of a Txn, as etcd's: the key's Target field
// compared with Value (for CompareValue) or Number (the others). A missing key
// has version, create and mod revision 0, and no value compare holds for it.
type Compare struct {
	Key    []byte
	Target CompareTarget
	Result CompareResult
	Value  []byte
	Number int64
}

// OpKind says what an Op does.
type OpKind int

const (
	OpRange OpKind = iota
	OpPut
	OpDelete
)

// Op is one operation of a Txn branch.
type Op struct {
	Kind  OpKind
	Range KeyRange // the key for a put
	Value []byte   // for a put
	Limit int64    // for a range
}

// OpGet reads a range at the Txn's own revision.
func OpGet(r KeyRange, limit int64) Op { return Op{Kind: OpRange, Range: r, Limit: limit} }

// OpPutKey sets key to value.
func OpPutKey(key, value []byte) Op { return Op{Kind: OpPut, Range: Key(key), Value: value} }

// OpDeleteRange deletes a key or range.
func OpDeleteRange(r KeyRange) Op { return Op{Kind: OpDelete, Range: r} }

// TxnRequest is etcd's transaction: if every compare holds, Then runs, else Else.
type TxnRequest struct {
	If   []Compare
	Then []Op
	Else []Op
}

// OpResponse is the result of one Op; exactly one field is set.
type OpResponse struct {
	Range  *RangeResponse
	Put    *PutResponse
	Delete *DeleteResponse
}

// TxnResponse is the result of a Txn.
type TxnResponse struct {
	Succeeded bool
	Revision  int64 // of the Txn's writes; the current revision when it wrote nothing
	Responses []OpResponse
}

// txnRetries bounds how often a Txn that lost a deadlock (two range deletes
// locking keys in different orders) is run again before giving up.
const txnRetries = 5

// Txn runs req atomically: the compares are checked and the chosen branch
// runs with every key it names locked, and all its writes share one revision.
// A Txn that writes nothing takes no revision.
func (s *Store) Txn(ctx context.Context, req TxnRequest) (TxnResponse, error) {
	if err := s.checkTxn(req); err != nil {
		return TxnResponse{}, err
	}
	for attempt := 1; ; attempt++ {
		var res TxnResponse
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			res, err = runTxn(ctx, tx, req)
			return err
		})
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "40P01" && attempt < txnRetries {
			continue // deadlock detected: PostgreSQL rolled us back, nothing was written
		}
		if err != nil {
			return TxnResponse{}, fmt.Errorf("txn: %w", markTransient(err))
		}
		return res, nil
	}
}

func (s *Store) checkTxn(req TxnRequest) error {
	for _, c := range req.If {
		if err := s.checkKey(c.Key); err != nil {
			return err
		}
		if c.Target < CompareValue || c.Target > CompareModRevision || c.Result < ResultEqual || c.Result > ResultGreater {
			return fmt.Errorf("txn: compare on %s: unknown target or result", keyText(c.Key))
		}
	}
	for _, ops := range [][]Op{req.Then, req.Else} {
		if len(ops) > s.limits.MaxTxnOps {
			return fmt.Errorf("%w: %d, limit %d", ErrTooManyOps, len(ops), s.limits.MaxTxnOps)
		}
		var writes []KeyRange
		for _, op := range ops {
			if err := s.checkRange(op.Range); err != nil {
				return err
			}
			switch op.Kind {
			case OpRange:
				if op.Limit < 0 {
					return fmt.Errorf("%w: %d", ErrInvalidLimit, op.Limit)
				}
				continue
			case OpPut:
				if !op.Range.IsSingleKey() {
					return fmt.Errorf("txn: put on %s names a range", keyText(op.Range.Key))
				}
				if err := s.checkValue(op.Value); err != nil {
					return err
				}
			case OpDelete:
			default:
				return fmt.Errorf("txn: unknown op kind %d", op.Kind)
			}
			// etcd refuses a branch that writes one key twice: its revision
			// would hold two rows for the key.
			for _, w := range writes {
				if overlaps(w, op.Range) {
					return fmt.Errorf("%w: %s", ErrDuplicateKey, keyText(op.Range.Key))
				}
			}
			writes = append(writes, op.Range)
		}
	}
	return nil
}

// overlaps reports whether two ranges share a key.
func overlaps(a, b KeyRange) bool {
	switch {
	case a.IsSingleKey():
		return b.Contains(a.Key)
	case b.IsSingleKey():
		return a.Contains(b.Key)
	}
	// Two [start, end) ranges, either perhaps without an end.
	aBefore := !a.IsOpenEnded() && bytes.Compare(a.End, b.Key) <= 0
	bBefore := !b.IsOpenEnded() && bytes.Compare(b.End, a.Key) <= 0
	return !aBefore && !bBefore
}

func runTxn(ctx context.Context, tx pgx.Tx, req TxnRequest) (TxnResponse, error) {
	// Lock every single key the Txn names, in one statement and one order, so
	// the compares still hold when the branch writes. Range deletes lock the
	// keys they find themselves.
	var keys [][]byte
	for _, c := range req.If {
		keys = append(keys, c.Key)
	}
	for _, ops := range [][]Op{req.Then, req.Else} {
		for _, op := range ops {
			if op.Kind != OpRange && op.Range.IsSingleKey() {
				keys = append(keys, op.Range.Key)
			}
		}
	}
	if len(keys) > 0 {
		if _, err := tx.Exec(ctx, "select walwatch.lock_keys($1)", keys); err != nil {
			return TxnResponse{}, fmt.Errorf("lock keys: %w", err)
		}
	}

	res := TxnResponse{Succeeded: true}
	for _, c := range req.If {
		ok, err := compare(ctx, tx, c)
		if err != nil {
			return TxnResponse{}, err
		}
		if !ok {
			res.Succeeded = false
			break
		}
	}
	ops := req.Then
	if !res.Succeeded {
		ops = req.Else
	}

	var rev *int64 // the Txn's revision, taken by its first write
	sub := 0
	for _, op := range ops {
		switch op.Kind {
		case OpRange:
			r, err := rangeKeys(ctx, tx, RangeRequest{KeyRange: op.Range, Limit: op.Limit})
			if err != nil {
				return TxnResponse{}, err
			}
			res.Responses = append(res.Responses, OpResponse{Range: &r})
		case OpPut:
			var r PutResponse
			if err := tx.QueryRow(ctx, "select walwatch.append($1, $2, $3, $4, false)", rev, sub, op.Range.Key, op.Value).Scan(&r.Revision); err != nil {
				return TxnResponse{}, fmt.Errorf("put %s: %w", keyText(op.Range.Key), TypedError(err, 0))
			}
			rev, sub = &r.Revision, sub+1
			res.Responses = append(res.Responses, OpResponse{Put: &r})
		case OpDelete:
			r, err := deleteRange(ctx, tx, op.Range, rev, sub)
			if err != nil {
				return TxnResponse{}, err
			}
			if r.Deleted > 0 {
				rev, sub = &r.Revision, sub+int(r.Deleted)
			}
			res.Responses = append(res.Responses, OpResponse{Delete: &r})
		}
	}
	if rev != nil {
		res.Revision = *rev
	} else if err := tx.QueryRow(ctx, "select walwatch.current_revision()").Scan(&res.Revision); err != nil {
		return TxnResponse{}, fmt.Errorf("read revision: %w", err)
	}
	// Every op of a branch reports the Txn's revision, as etcd's headers do.
	for _, r := range res.Responses {
		switch {
		case r.Range != nil:
			r.Range.Revision = res.Revision
		case r.Put != nil:
			r.Put.Revision = res.Revision
		case r.Delete != nil:
			r.Delete.Revision = res.Revision
		}
	}
	return res, nil
}

// compare checks one condition against the key's newest version.
func compare(ctx context.Context, tx pgx.Tx, c Compare) (bool, error) {
	r, err := rangeKeys(ctx, tx, RangeRequest{KeyRange: Key(c.Key)})
	if err != nil {
		return false, err
	}
	var kv KeyValue
	if len(r.KVs) == 0 {
		if c.Target == CompareValue {
			return false, nil
		}
	} else {
		kv = r.KVs[0]
	}
	var cmp int
	switch c.Target {
	case CompareValue:
		cmp = bytes.Compare(kv.Value, c.Value)
	case CompareVersion:
		cmp = compareInt(kv.Version, c.Number)
	case CompareCreateRevision:
		cmp = compareInt(kv.CreateRevision, c.Number)
	case CompareModRevision:
		cmp = compareInt(kv.ModRevision, c.Number)
	}
	switch c.Result {
	case ResultEqual:
		return cmp == 0, nil
	case ResultNotEqual:
		return cmp != 0, nil
	case ResultLess:
		return cmp < 0, nil
	default:
		return cmp > 0, nil
	}
}

func compareInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

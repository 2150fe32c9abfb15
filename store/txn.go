package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// CompareTarget is the field of a key a Compare looks at.
type CompareTarget int

const (
	CompareValue CompareTarget = iota
	CompareVersion
	CompareCreateRevision
	CompareModRevision
	CompareLease
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
// has version, create and mod revision and lease 0, and no value compare
// holds for it. With End, the compare is over the range [Key, End) (End
// "\x00": every key from Key on) and holds when it holds for every key there,
// or, when there is none, as for a missing key.
type Compare struct {
	Key    []byte
	End    []byte
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
	OpTxn
)

// Op is one operation of a Txn branch.
type Op struct {
	Kind  OpKind
	Range KeyRange // the key for a put
	Value []byte   // for a put

	// For a range: at most Limit keys (0: all), at Revision (0: the Txn's
	// own view, with its writes so far), or with CountOnly the count alone.
	Limit     int64
	Revision  int64
	CountOnly bool

	// For a put: the key's lease (0: none). IgnoreValue keeps the key's
	// value and IgnoreLease its lease (Value, Lease must then be empty);
	// both fail with ErrKeyNotFound when there is no key.
	Lease       int64
	IgnoreValue bool
	IgnoreLease bool

	// For a put or a delete: answer with the key-values before the write.
	PrevKV bool

	// For a nested Txn (OpTxn): its compares are checked with the outer
	// ones, before any write, and its writes share the outer revision.
	Txn *TxnRequest
}

// OpGet reads a range at the Txn's own revision.
func OpGet(r KeyRange, limit int64) Op { return Op{Kind: OpRange, Range: r, Limit: limit} }

// OpPutKey sets key to value.
func OpPutKey(key, value []byte) Op { return Op{Kind: OpPut, Range: Key(key), Value: value} }

// OpDeleteRange deletes a key or range.
func OpDeleteRange(r KeyRange) Op { return Op{Kind: OpDelete, Range: r} }

// OpNested runs req inside the Txn, as etcd's RequestOp_RequestTxn.
func OpNested(req TxnRequest) Op { return Op{Kind: OpTxn, Txn: &req} }

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
	Txn    *TxnResponse
}

// TxnResponse is the result of a Txn.
type TxnResponse struct {
	Succeeded bool
	Revision  int64 // of the Txn's writes; the current revision when it wrote nothing
	Responses []OpResponse
}

// txnRetries bounds how often a Txn, a delete or a compaction that
// PostgreSQL aborted is run again before giving up: a deadlock (two range
// deletes locking keys in different orders, a compaction and a Txn settling
// the same revisions), or a range delete that found a key written above its
// revision (walwatch.delete_range).
const txnRetries = 5

// aborted says whether err is a deadlock or a serialization failure: the
// transaction was rolled back whole, and running it again may succeed.
func aborted(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == codeDeadlockDetected || pe.Code == codeSerializationFailure)
}

// Txn runs req atomically: the compares are checked and the chosen branch
// runs with every key it names locked, and all its writes share one revision.
// A Txn that writes nothing takes no revision.
func (s *Store) Txn(ctx context.Context, req TxnRequest) (TxnResponse, error) {
	if err := s.checkTxn(req, s.limits.MaxTxnOps); err != nil {
		return TxnResponse{}, err
	}
	if _, _, err := writeSets(req.Then); err != nil {
		return TxnResponse{}, err
	}
	if _, _, err := writeSets(req.Else); err != nil {
		return TxnResponse{}, err
	}
	if batchable(req) {
		return s.txns.txn(ctx, req)
	}
	return s.txnAlone(ctx, req)
}

// txnAlone runs req, checked, in a transaction of its own, again when
// PostgreSQL aborted it.
func (s *Store) txnAlone(ctx context.Context, req TxnRequest) (TxnResponse, error) {
	for attempt := 1; ; attempt++ {
		res, err := s.txnOnce(ctx, req)
		if aborted(err) && attempt < txnRetries {
			continue // PostgreSQL rolled us back, nothing was written
		}
		if err != nil {
			return TxnResponse{}, fmt.Errorf("txn: %w", markTransient(err))
		}
		return res, nil
	}
}

// txnOnce runs req in a transaction of its own. runTxn begins it in the
// same round trip as its locks and the reads of its compares, and commits
// it with its last statement when it can, so a Txn of Kubernetes' shape
// (compare a key's revision, then put the key, else read it) costs two
// round trips, not five or six.
func (s *Store) txnOnce(ctx context.Context, req TxnRequest) (TxnResponse, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return TxnResponse{}, err
	}
	// The pool closes a connection still inside a transaction (one whose
	// rollback failed) rather than hand it out again.
	defer conn.Release()
	res, committed, err := runTxn(ctx, conn, req)
	if err != nil {
		// If begin itself failed, there is nothing to roll back and
		// PostgreSQL only warns.
		_, _ = conn.Exec(ctx, "rollback")
		return TxnResponse{}, err
	}
	if committed {
		return res, nil
	}
	tag, err := conn.Exec(ctx, "commit")
	if err != nil {
		return TxnResponse{}, fmt.Errorf("commit: %w", err)
	}
	if tag.String() == "ROLLBACK" {
		return TxnResponse{}, pgx.ErrTxCommitRollback
	}
	return res, nil
}

// checkTxn checks req's shape and sizes, as etcd does: no part (compares,
// either branch) longer than maxOps, and a nested Txn within what its
// parent leaves (maxOps less the parent's longest part).
func (s *Store) checkTxn(req TxnRequest, maxOps int) error {
	n := max(len(req.If), len(req.Then), len(req.Else))
	if n > maxOps {
		return fmt.Errorf("%w: %d, limit %d", ErrTooManyOps, n, maxOps)
	}
	for _, c := range req.If {
		if err := s.CheckRange(KeyRange{Key: c.Key, End: c.End}); err != nil {
			return err
		}
		if c.Target < CompareValue || c.Target > CompareLease || c.Result < ResultEqual || c.Result > ResultGreater {
			return fmt.Errorf("txn: compare on %s: unknown target or result", keyText(c.Key))
		}
	}
	for _, ops := range [][]Op{req.Then, req.Else} {
		for _, op := range ops {
			if err := s.checkOp(op, maxOps-n); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) checkOp(op Op, maxOps int) error {
	if op.Kind == OpTxn {
		if op.Txn == nil {
			return errors.New("txn: nested txn missing")
		}
		return s.checkTxn(*op.Txn, maxOps)
	}
	if err := s.CheckRange(op.Range); err != nil {
		return err
	}
	switch op.Kind {
	case OpRange:
		if op.Limit < 0 {
			return fmt.Errorf("%w: %d", ErrInvalidLimit, op.Limit)
		}
		return checkRevision(op.Revision)
	case OpPut:
		if !op.Range.IsSingleKey() {
			return fmt.Errorf("txn: put on %s names a range", keyText(op.Range.Key))
		}
		if op.IgnoreValue && len(op.Value) > 0 {
			return ErrValueProvided
		}
		if op.IgnoreLease && op.Lease != 0 {
			return ErrLeaseProvided
		}
		return s.checkValue(op.Value)
	case OpDelete:
		return nil
	}
	return fmt.Errorf("txn: unknown op kind %d", op.Kind)
}

// writeSets applies etcd's rule for what one branch may write: a key is put
// at most once, and never in a range the branch (or a Txn nested in it)
// deletes, since its revision would hold two rows for the key; deletes may
// overlap. The two branches of a nested Txn exclude each other, so both may
// put the same key. It returns the keys put and the ranges deleted.
func writeSets(ops []Op) (map[string]bool, []KeyRange, error) {
	var dels []KeyRange
	for _, op := range ops {
		if op.Kind == OpDelete {
			dels = append(dels, op.Range)
		}
	}
	deleted := func(k string) bool {
		for _, d := range dels {
			if d.Contains([]byte(k)) {
				return true
			}
		}
		return false
	}
	puts := map[string]bool{}
	for _, op := range ops {
		if op.Kind != OpTxn {
			continue
		}
		thenPuts, thenDels, err := writeSets(op.Txn.Then)
		if err != nil {
			return nil, nil, err
		}
		elsePuts, elseDels, err := writeSets(op.Txn.Else)
		if err != nil {
			return nil, nil, err
		}
		for k := range thenPuts {
			if puts[k] || deleted(k) {
				return nil, nil, fmt.Errorf("%w: %s", ErrDuplicateKey, keyText([]byte(k)))
			}
			puts[k] = true
		}
		for k := range elsePuts {
			if puts[k] && !thenPuts[k] || deleted(k) {
				return nil, nil, fmt.Errorf("%w: %s", ErrDuplicateKey, keyText([]byte(k)))
			}
			puts[k] = true
		}
		dels = append(append(dels, thenDels...), elseDels...)
	}
	for _, op := range ops {
		if op.Kind != OpPut {
			continue
		}
		k := string(op.Range.Key)
		if puts[k] || deleted(k) {
			return nil, nil, fmt.Errorf("%w: %s", ErrDuplicateKey, keyText(op.Range.Key))
		}
		puts[k] = true
	}
	return puts, dels, nil
}

// lockedKeys appends every single key req names, in its compares and in
// both branches, nested Txns included.
func lockedKeys(keys [][]byte, req TxnRequest) [][]byte {
	for _, c := range req.If {
		if len(c.End) == 0 {
			keys = append(keys, c.Key)
		}
	}
	for _, ops := range [][]Op{req.Then, req.Else} {
		for _, op := range ops {
			switch {
			case op.Kind == OpTxn:
				keys = lockedKeys(keys, *op.Txn)
			case op.Kind != OpRange && op.Range.IsSingleKey():
				keys = append(keys, op.Range.Key)
			}
		}
	}
	return keys
}

// txnPath is the branch a Txn takes, and those of the Txns nested in that
// branch, in order.
type txnPath struct {
	succeeded bool
	nested    []*txnPath
}

// choosePath checks the compares of req and of every Txn nested on the
// branch taken, all before any write, as etcd does.
func choosePath(ctx context.Context, r txnReader, req TxnRequest) (*txnPath, error) {
	p := &txnPath{succeeded: true}
	for _, c := range req.If {
		ok, err := compare(ctx, r, c)
		if err != nil {
			return nil, err
		}
		if !ok {
			p.succeeded = false
			break
		}
	}
	for _, op := range p.branch(req) {
		if op.Kind == OpTxn {
			n, err := choosePath(ctx, r, *op.Txn)
			if err != nil {
				return nil, err
			}
			p.nested = append(p.nested, n)
		}
	}
	return p, nil
}

// checkPath finds, before the first write, what would make an op on the
// path fail: a range at a revision that is compacted or in the future, a
// put that keeps the value or lease of a key that does not exist. etcd checks
// these first too; here it also keeps a Txn that fails from taking a
// revision from the sequence, which would leave a gap.
func checkPath(ctx context.Context, r txnReader, req TxnRequest, path *txnPath) error {
	nested := path.nested
	for _, op := range path.branch(req) {
		switch {
		case op.Kind == OpTxn:
			if err := checkPath(ctx, r, *op.Txn, nested[0]); err != nil {
				return err
			}
			nested = nested[1:]
		case op.Kind == OpRange && op.Revision != 0:
			if _, err := r.tx.Exec(ctx, "select walwatch.read_revision($1)", op.Revision); err != nil {
				return fmt.Errorf("range %s at revision %d: %w", keyText(op.Range.Key), op.Revision, TypedError(err, op.Revision))
			}
		case op.Kind == OpPut && (op.IgnoreValue || op.IgnoreLease):
			// The key is locked: it cannot go before the put.
			cur, err := r.rangeKeys(ctx, RangeRequest{KeyRange: op.Range, CountOnly: true})
			if err != nil {
				return err
			}
			if cur.Count == 0 {
				return fmt.Errorf("put %s: %w", keyText(op.Range.Key), ErrKeyNotFound)
			}
		}
	}
	return nil
}

func (p *txnPath) branch(req TxnRequest) []Op {
	if p.succeeded {
		return req.Then
	}
	return req.Else
}

// txnConn is the connection a Txn's transaction is open on.
type txnConn interface {
	querier
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var _ txnConn = (*pgxpool.Conn)(nil)

// txnReader reads for a Txn before its first write. begin read some keys
// after locking them (readKeys): until the Txn writes, each is as it was
// read, so a read of one of them at the current revision needs no
// statement (Kubernetes' read after a failed compare, a put's previous
// value).
type txnReader struct {
	tx   txnConn
	read map[string]*oneKey
}

func (r txnReader) rangeKeys(ctx context.Context, req RangeRequest) (RangeResponse, error) {
	if k := r.read[string(req.Key)]; k != nil && req.IsSingleKey() && req.Revision == 0 {
		return k.response(req)
	}
	return rangeKeys(ctx, r.tx, req)
}

// txnWriter runs a Txn's ops: the revision is taken by its first write, and
// every row of the Txn, nested ones included, gets the next sub.
type txnWriter struct {
	txnReader
	rev       *int64
	sub       int
	committed bool // the last put took the commit along
}

// rangeKeys reads req: through the reader until the Txn has written.
func (w *txnWriter) rangeKeys(ctx context.Context, req RangeRequest) (RangeResponse, error) {
	if w.rev == nil {
		return w.txnReader.rangeKeys(ctx, req)
	}
	return rangeKeys(ctx, w.tx, req)
}

// runTxn runs req on tx, where no transaction is open yet. It commits when
// the Txn's last statement can take the commit along (committed); otherwise,
// and on an error, it leaves the transaction to the caller.
func runTxn(ctx context.Context, tx txnConn, req TxnRequest) (res TxnResponse, committed bool, err error) {
	read, err := begin(ctx, tx, req)
	if err != nil {
		return TxnResponse{}, false, err
	}
	r := txnReader{tx: tx, read: read}
	path, err := choosePath(ctx, r, req)
	if err != nil {
		return TxnResponse{}, false, err
	}
	if err := checkPath(ctx, r, req, path); err != nil {
		return TxnResponse{}, false, err
	}
	w := &txnWriter{txnReader: r}
	res, err = w.run(ctx, req, path, true)
	if err != nil {
		return TxnResponse{}, false, err
	}
	if w.rev == nil {
		// Wrote nothing: with synchronous replication, the commit waits for
		// the standby to have everything the answer shows (await_standby).
		err := withCommit(ctx, tx, "select walwatch.current_revision() from walwatch.await_standby()", nil, &res.Revision)
		if err != nil {
			return TxnResponse{}, false, fmt.Errorf("read revision: %w", err)
		}
		setRevision(&res, res.Revision)
		return res, true, nil
	}
	return res, w.committed, nil
}

// withCommit runs sql, the transaction's last statement, scans its one row
// into dest and commits, in one round trip. When sql fails, PostgreSQL
// skips the commit and the transaction is left to roll back.
func withCommit(ctx context.Context, tx txnConn, sql string, args []any, dest ...any) error {
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	b.Queue("commit")
	results := tx.SendBatch(ctx, b)
	err := results.QueryRow().Scan(dest...)
	if err == nil {
		var tag pgconn.CommandTag
		tag, err = results.Exec()
		switch {
		case err != nil:
			err = fmt.Errorf("commit: %w", err)
		case tag.String() == "ROLLBACK":
			err = pgx.ErrTxCommitRollback
		}
	}
	if cerr := results.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("commit: %w", cerr)
	}
	return err
}

// begin opens the transaction on tx, locks every single key the Txn names
// (in one statement and one order, so that the compares still hold when the
// branch writes; range deletes lock the keys they find themselves), and
// then reads the keys readKeys names: all in one round trip. It returns the
// reads by key.
func begin(ctx context.Context, tx txnConn, req TxnRequest) (map[string]*oneKey, error) {
	b := &pgx.Batch{}
	b.Queue("begin")
	locks := lockedKeys(nil, req)
	if len(locks) > 0 {
		b.Queue("select walwatch.lock_keys($1)", locks)
	}
	reads := readKeys(req)
	for _, key := range reads {
		b.Queue(oneKeyLatestSQL, key, "", 0) // in a transaction: no stamp
	}
	results := tx.SendBatch(ctx, b)
	read, err := beginResults(results, len(locks) > 0, reads)
	if cerr := results.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("begin: %w", cerr)
	}
	return read, err
}

// readKeys returns the keys begin reads, each once: those of req's
// single-key compares, of its puts, in either branch, that need the key's
// value, and of its single-key deletes. All are locked (lockedKeys).
func readKeys(req TxnRequest) [][]byte {
	var keys distinctKeys
	for _, c := range req.If {
		if len(c.End) == 0 {
			keys.add(c.Key)
		}
	}
	for _, op := range slices.Concat(req.Then, req.Else) {
		switch {
		case op.Kind == OpPut && readsPrevious(op):
			keys.add(op.Range.Key)
		case op.Kind == OpDelete && op.Range.IsSingleKey():
			keys.add(op.Range.Key)
		}
	}
	return keys.list
}

// distinctKeys lists keys in the order first added, each once.
type distinctKeys struct {
	list [][]byte
	seen map[string]bool
}

func (d *distinctKeys) add(key []byte) {
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	if !d.seen[string(key)] {
		d.seen[string(key)] = true
		d.list = append(d.list, key)
	}
}

// beginResults reads the answers to begin's statements, in their order.
func beginResults(results pgx.BatchResults, locked bool, keys [][]byte) (map[string]*oneKey, error) {
	if _, err := results.Exec(); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if locked {
		if _, err := results.Exec(); err != nil {
			return nil, fmt.Errorf("lock keys: %w", err)
		}
	}
	read := make(map[string]*oneKey, len(keys))
	for _, key := range keys {
		var k oneKey
		if _, err := k.scanLatest(results.QueryRow()); err != nil {
			return nil, fmt.Errorf("range %s at revision 0: %w", keyText(key), TypedError(err, 0))
		}
		read[string(key)] = &k
	}
	return read, nil
}

// setRevision gives a Txn that wrote nothing, and those nested in it, the
// revision it was read at.
func setRevision(res *TxnResponse, rev int64) {
	res.Revision = rev
	for _, r := range res.Responses {
		if r.Txn != nil {
			setRevision(r.Txn, rev)
		}
	}
}

// run runs the branch path chose. Each op reports the revision as etcd's
// do: the Txn's once it has written (a range after a write reads it), the
// one read at before. In the outermost Txn (top), a put that is the last op
// commits.
func (w *txnWriter) run(ctx context.Context, req TxnRequest, path *txnPath, top bool) (TxnResponse, error) {
	res := TxnResponse{Succeeded: path.succeeded}
	nested := path.nested
	ops := path.branch(req)
	for i, op := range ops {
		var r OpResponse
		var err error
		switch op.Kind {
		case OpRange:
			r.Range, err = w.rangeOp(ctx, op)
		case OpPut:
			r.Put, err = w.put(ctx, op, top && i == len(ops)-1)
		case OpDelete:
			r.Delete, err = w.delete(ctx, op, top && i == len(ops)-1)
		case OpTxn:
			var t TxnResponse
			t, err = w.run(ctx, *op.Txn, nested[0], false)
			nested = nested[1:]
			r.Txn = &t
		}
		if err != nil {
			return TxnResponse{}, err
		}
		res.Responses = append(res.Responses, r)
	}
	if w.rev != nil {
		res.Revision = *w.rev
		for _, r := range res.Responses {
			switch {
			case r.Put != nil:
				r.Put.Revision = *w.rev
			case r.Delete != nil:
				r.Delete.Revision = *w.rev
			}
		}
	}
	return res, nil
}

func (w *txnWriter) rangeOp(ctx context.Context, op Op) (*RangeResponse, error) {
	req := RangeRequest{KeyRange: op.Range, Revision: op.Revision, Limit: op.Limit, CountOnly: op.CountOnly}
	if w.rev != nil && op.Revision == 0 {
		// etcd runs Txns one at a time, so a read after a write sees every
		// Txn ordered before this one. Here one with a lower revision may
		// still be in flight: wait for each (a statement later is a new
		// snapshot). Without it two clients of concurrency.Mutex, each
		// putting its key and reading the first, both held the lock.
		if _, err := w.tx.Exec(ctx, "select walwatch.settle_below($1)", *w.rev); err != nil {
			return nil, fmt.Errorf("wait for the revisions below %d: %w", *w.rev, TypedError(err, 0))
		}
	}
	r, err := w.rangeKeys(ctx, req)
	if err != nil {
		return nil, err
	}
	if w.rev != nil && op.Revision == 0 {
		r.Revision = *w.rev
	}
	return &r, nil
}

func (w *txnWriter) put(ctx context.Context, op Op, last bool) (*PutResponse, error) {
	key, value, lease := op.Range.Key, op.Value, op.Lease
	var prev *KeyValue
	if readsPrevious(op) {
		// The Txn holds the key's lock: nobody writes it between this
		// read and the put.
		cur, err := w.rangeKeys(ctx, RangeRequest{KeyRange: Key(key)})
		if err != nil {
			return nil, err
		}
		if value, lease, prev, err = putOver(op, cur.KVs); err != nil {
			return nil, err
		}
	}
	var r PutResponse
	const sql = "select walwatch.append($1, $2, $3, $4, false, $5)"
	args := []any{w.rev, w.sub, key, value, lease}
	var err error
	if last {
		err = withCommit(ctx, w.tx, sql, args, &r.Revision)
		w.committed = err == nil
	} else {
		err = w.tx.QueryRow(ctx, sql, args...).Scan(&r.Revision)
	}
	if err != nil {
		return nil, fmt.Errorf("put %s: %w", keyText(key), TypedError(err, 0))
	}
	w.rev, w.sub = &r.Revision, w.sub+1
	r.PrevKV = prev
	return &r, nil
}

// readsPrevious reports whether put op needs the key's current value.
func readsPrevious(op Op) bool { return op.PrevKV || op.IgnoreValue || op.IgnoreLease }

// putOver applies put op's options to cur, the key's current value (none
// or one): the value and lease it writes, and the previous value it
// returns.
func putOver(op Op, cur []KeyValue) (value []byte, lease int64, prev *KeyValue, err error) {
	value, lease = op.Value, op.Lease
	if len(cur) > 0 {
		prev = &cur[0]
	}
	if prev == nil && (op.IgnoreValue || op.IgnoreLease) {
		return nil, 0, nil, fmt.Errorf("put %s: %w", keyText(op.Range.Key), ErrKeyNotFound)
	}
	if op.IgnoreValue {
		value = prev.Value
	}
	if op.IgnoreLease {
		lease = prev.Lease
	}
	if !op.PrevKV {
		prev = nil
	}
	return value, lease, prev, nil
}

func (w *txnWriter) delete(ctx context.Context, op Op, last bool) (*DeleteResponse, error) {
	if k := w.read[string(op.Range.Key)]; k != nil && w.rev == nil && op.Range.IsSingleKey() {
		return w.deleteRead(ctx, op, k, last)
	}
	first := w.sub
	r, err := deleteRange(ctx, w.tx, op.Range, w.rev, w.sub)
	if err != nil {
		return nil, err
	}
	if r.Deleted == 0 {
		return &r, nil
	}
	w.rev, w.sub = &r.Revision, w.sub+int(r.Deleted)
	if op.PrevKV {
		// Each tombstone names the row it ends (prev_revision), in the
		// order of the keys deleted.
		rows, err := w.tx.Query(ctx,
			`select p.key, p.value, p.create_revision, p.revision, p.version, p.lease
			   from walwatch.kv t join walwatch.kv p on p.key = t.key and p.revision = t.prev_revision
			  where t.revision = $1 and t.sub >= $2 and t.sub < $3 order by t.sub`,
			r.Revision, first, w.sub)
		if err != nil {
			return nil, fmt.Errorf("delete %s: read previous values: %w", keyText(op.Range.Key), err)
		}
		r.PrevKVs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (KeyValue, error) {
			var kv KeyValue
			err := row.Scan(&kv.Key, &kv.Value, &kv.CreateRevision, &kv.ModRevision, &kv.Version, &kv.Lease)
			return kv, err
		})
		if err != nil {
			return nil, fmt.Errorf("delete %s: read previous values: %w", keyText(op.Range.Key), err)
		}
	}
	return &r, nil
}

// deleteRead deletes a single key begin read, before the Txn's first
// write: the key has been locked since, so the read says whether the delete
// deletes it and what it held. A delete of nothing needs no statement, and
// Kubernetes' delete (compare the key's revision, delete it, else read it)
// takes the commit along: two round trips, not three.
func (w *txnWriter) deleteRead(ctx context.Context, op Op, k *oneKey, last bool) (*DeleteResponse, error) {
	cur, err := k.response(RangeRequest{KeyRange: op.Range})
	if err != nil {
		return nil, err
	}
	if len(cur.KVs) == 0 {
		return &DeleteResponse{Revision: cur.Revision}, nil
	}
	var r DeleteResponse
	args := deleteRangeArgs(op.Range, w.rev, w.sub)
	if last {
		err = withCommit(ctx, w.tx, deleteRangeSQL, args, &r.Revision, &r.Deleted)
		w.committed = err == nil
	} else {
		err = w.tx.QueryRow(ctx, deleteRangeSQL, args...).Scan(&r.Revision, &r.Deleted)
	}
	if err == nil && r.Deleted != 1 {
		// The key's lock makes this impossible; say so rather than answer
		// with a delete that did not happen.
		err = fmt.Errorf("deleted %d keys of the one read", r.Deleted)
	}
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", keyText(op.Range.Key), TypedError(err, 0))
	}
	w.rev, w.sub = &r.Revision, w.sub+1
	if op.PrevKV {
		r.PrevKVs = cur.KVs
	}
	return &r, nil
}

// compare checks one condition against the newest version of its key, or of
// every key in its range.
func compare(ctx context.Context, r txnReader, c Compare) (bool, error) {
	cur, err := r.rangeKeys(ctx, RangeRequest{KeyRange: KeyRange{Key: c.Key, End: c.End}})
	if err != nil {
		return false, err
	}
	if len(cur.KVs) == 0 {
		// A missing key: no value to compare, every number 0.
		return c.Target != CompareValue && compareKV(c, KeyValue{}), nil
	}
	for _, kv := range cur.KVs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c Compare, kv KeyValue) bool {
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
	case CompareLease:
		cmp = compareInt(kv.Lease, c.Number)
	}
	switch c.Result {
	case ResultEqual:
		return cmp == 0
	case ResultNotEqual:
		return cmp != 0
	case ResultLess:
		return cmp < 0
	default:
		return cmp > 0
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

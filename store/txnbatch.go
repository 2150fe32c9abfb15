package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Txns of Kubernetes' shapes (compare keys, then put, delete or read them)
// that arrive while another is in flight share a PostgreSQL transaction, as
// puts do (batch.go): one Txn alone costs PostgreSQL a commit and its WAL
// sender three messages, and cp two round trips; a batch pays each once.
// A batch holds Txns of distinct keys only, so each one's reads are what it
// would have read alone, and each still takes a revision of its own, in the
// order of the batch. Its two round trips: begin, every key's lock and
// every key's read; then every Txn's writes and the commit. A Txn that finds
// no batch in flight runs alone, as before.
const (
	txnWorkers   = 2
	maxBatchTxns = 32
	// maxBatchTxnKeys bounds the keys a batchable Txn names.
	maxBatchTxnKeys = 16
)

// batchable reports whether req can share a transaction: single-key
// compares and ops, no nested Txn, no read at a past revision, and no read
// after a write (which must wait for the revisions below its own; see
// txnWriter.rangeOp).
func batchable(req TxnRequest) bool {
	keys := 0
	for _, c := range req.If {
		if len(c.End) > 0 {
			return false
		}
		keys++
	}
	for _, ops := range [][]Op{req.Then, req.Else} {
		wrote := false
		for _, op := range ops {
			switch {
			case op.Kind == OpTxn || !op.Range.IsSingleKey():
				return false
			case op.Kind == OpRange && (op.Revision != 0 || wrote):
				return false
			case op.Kind == OpPut || op.Kind == OpDelete:
				wrote = true
			}
			keys++
		}
	}
	return keys <= maxBatchTxnKeys
}

// txnCall is one Txn waiting for its batch.
type txnCall struct {
	pending
	req TxnRequest
	res TxnResponse
}

func (c *txnCall) size() int {
	n := 0
	for _, ops := range [][]Op{c.req.Then, c.req.Else} {
		for _, op := range ops {
			n += len(op.Range.Key) + len(op.Value)
		}
	}
	return n
}

// txnBatcher runs batchable Txns in batches.
type txnBatcher struct {
	s *Store
	b batcher[*txnCall]
}

func newTxnBatcher(s *Store) *txnBatcher {
	t := &txnBatcher{s: s}
	t.b = batcher[*txnCall]{limit: txnWorkers, max: maxBatchTxns, run: t.run}
	return t
}

func (t *txnBatcher) txn(ctx context.Context, req TxnRequest) (TxnResponse, error) {
	c := &txnCall{pending: newPending(ctx), req: req}
	t.b.submit(c)
	if err := c.wait(); err != nil {
		return TxnResponse{}, err
	}
	return c.res, nil
}

// run runs a batch: the Txns whose keys no earlier one in it names run
// together, the others after, alone; so do all when the batch fails in a
// way that leaves nothing written.
func (t *txnBatcher) run(calls []*txnCall) {
	together, alone := disjoint(live(calls))
	if len(together) > 1 {
		unknown, err := t.runTogether(together)
		switch {
		case err == nil:
		case unknown:
			// The connection failed while the commit was on its way:
			// whether the batch committed is unknown, as for a Txn alone.
			// A Txn that failed on its own wrote nothing either way, and
			// keeps its error.
			for _, c := range together {
				if c.err == nil {
					c.err = fmt.Errorf("txn: %w", markTransient(TypedError(err, 0)))
				}
			}
		default:
			alone = append(together, alone...)
		}
	} else {
		alone = append(together, alone...)
	}
	for _, c := range alone {
		c.res, c.err = t.s.txnAlone(c.ctx, c.req)
	}
}

// disjoint splits calls into those that name no key an earlier one of
// together names, and the rest.
func disjoint(calls []*txnCall) (together, rest []*txnCall) {
	taken := map[string]bool{}
	for _, c := range calls {
		keys := txnKeys(c.req)
		free := true
		for _, k := range keys {
			free = free && !taken[string(k)]
		}
		if !free {
			rest = append(rest, c)
			continue
		}
		for _, k := range keys {
			taken[string(k)] = true
		}
		together = append(together, c)
	}
	return together, rest
}

// txnKeys returns every key a batchable req names, each once.
func txnKeys(req TxnRequest) [][]byte {
	var keys distinctKeys
	for _, c := range req.If {
		keys.add(c.Key)
	}
	for _, op := range slices.Concat(req.Then, req.Else) {
		keys.add(op.Range.Key)
	}
	return keys.list
}

// runTogether runs batch, whose Txns name distinct keys, in one
// transaction. A Txn that fails on its own (a put keeping the value of a
// key that does not exist) fails alone; a statement that fails rolls the
// batch back, and the caller runs each Txn alone. unknown reports an error
// after the commit was sent that is not PostgreSQL's: the batch may have
// committed.
func (t *txnBatcher) runTogether(batch []*txnCall) (unknown bool, err error) {
	ctx, stop := batchContext(batch)
	defer stop()
	conn, err := t.s.pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	// The pool closes a connection still inside a transaction.
	defer conn.Release()
	committed := false
	defer func() {
		if err != nil && !committed {
			_, _ = conn.Exec(ctx, "rollback")
		}
	}()

	var keys [][]byte
	for _, c := range batch {
		keys = append(keys, txnKeys(c.req)...)
	}
	read, err := beginBatch(ctx, conn, keys)
	if err != nil {
		return false, err
	}
	r := txnReader{tx: conn, read: read}
	plans := make([]*txnPlan, len(batch))
	b := &pgx.Batch{}
	closingRead := false
	for i, c := range batch {
		var perr error
		if plans[i], perr = planTxn(ctx, r, c.req); perr != nil {
			c.err = fmt.Errorf("txn: %w", markTransient(perr))
			continue
		}
		plans[i].queue(b)
		closingRead = closingRead || len(plans[i].writes) == 0
	}
	if closingRead {
		// With synchronous replication, a Txn that wrote nothing waits for
		// the standby to have everything its answer shows.
		b.Queue("select walwatch.current_revision() from walwatch.await_standby()")
	}
	b.Queue("commit")
	results := conn.SendBatch(ctx, b)
	cur, err := batchResults(results, batch, plans, closingRead)
	if cerr := results.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("commit: %w", cerr)
	}
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) || errors.Is(err, pgx.ErrTxCommitRollback) {
			return false, err // rolled back: nothing of the batch is written
		}
		return true, err
	}
	committed = true
	for i, c := range batch {
		if c.err == nil {
			c.res = plans[i].response(cur)
		}
	}
	return false, nil
}

// beginBatch opens the transaction, locks keys and reads them, in one round
// trip.
func beginBatch(ctx context.Context, conn txnConn, keys [][]byte) (map[string]*oneKey, error) {
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue("select walwatch.lock_keys($1)", keys)
	b.Queue(manyKeysLatestSQL, keys, "", 0) // in a transaction: no stamp
	results := conn.SendBatch(ctx, b)
	read, err := beginBatchResults(results, keys)
	if cerr := results.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("begin: %w", cerr)
	}
	return read, err
}

func beginBatchResults(results pgx.BatchResults, keys [][]byte) (map[string]*oneKey, error) {
	if _, err := results.Exec(); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if _, err := results.Exec(); err != nil {
		return nil, fmt.Errorf("lock keys: %w", err)
	}
	rows, err := results.Query()
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	got, _, err := scanManyKeys(rows, len(keys))
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	read := make(map[string]*oneKey, len(keys))
	for i := range got {
		read[string(keys[i])] = &got[i]
	}
	return read, nil
}

// txnPlan is a batchable Txn decided from begin's reads: its responses,
// and the statements of its writes, each filling in a response.
type txnPlan struct {
	res    TxnResponse
	writes []plannedWrite
}

type plannedWrite struct {
	sql  string
	args []any
}

// planTxn chooses req's branch and answers its reads from read, as runTxn
// would with the same reads; it sends nothing.
func planTxn(ctx context.Context, r txnReader, req TxnRequest) (*txnPlan, error) {
	path, err := choosePath(ctx, r, req)
	if err != nil {
		return nil, err
	}
	if err := checkPath(ctx, r, req, path); err != nil {
		return nil, err
	}
	p := &txnPlan{res: TxnResponse{Succeeded: path.succeeded}}
	sub := 0
	// The first write takes the Txn's revision; the others write at it.
	rev := func() string {
		if sub == 0 {
			return "null::bigint"
		}
		return "currval('walwatch.revision')"
	}
	for _, op := range path.branch(req) {
		var resp OpResponse
		switch op.Kind {
		case OpRange:
			res, err := r.rangeKeys(ctx, RangeRequest{KeyRange: op.Range, Limit: op.Limit, CountOnly: op.CountOnly})
			if err != nil {
				return nil, err
			}
			resp.Range = &res
		case OpPut:
			value, lease := op.Value, op.Lease
			resp.Put = &PutResponse{}
			if readsPrevious(op) {
				cur, err := r.rangeKeys(ctx, RangeRequest{KeyRange: op.Range})
				if err != nil {
					return nil, err
				}
				if value, lease, resp.Put.PrevKV, err = putOver(op, cur.KVs); err != nil {
					return nil, err
				}
			}
			p.writes = append(p.writes, plannedWrite{
				sql:  "select walwatch.append(" + rev() + ", $1, $2, $3, false, $4)",
				args: []any{sub, op.Range.Key, value, lease}})
			sub++
		case OpDelete:
			cur, err := r.rangeKeys(ctx, RangeRequest{KeyRange: op.Range})
			if err != nil {
				return nil, err
			}
			resp.Delete = &DeleteResponse{Revision: cur.Revision}
			if len(cur.KVs) > 0 {
				if op.PrevKV {
					resp.Delete.PrevKVs = cur.KVs
				}
				resp.Delete.Deleted = 1
				p.writes = append(p.writes, plannedWrite{
					sql:  "select revision from walwatch.delete_range($1, null, " + rev() + ", $2)",
					args: []any{op.Range.Key, sub}})
				sub++
			}
		}
		p.res.Responses = append(p.res.Responses, resp)
	}
	return p, nil
}

func (p *txnPlan) queue(b *pgx.Batch) {
	for _, w := range p.writes {
		b.Queue(w.sql, w.args...)
	}
}

// batchResults reads the answers to the statements runTogether queued, in
// their order, and returns the closing read's revision.
func batchResults(results pgx.BatchResults, batch []*txnCall, plans []*txnPlan, closingRead bool) (cur int64, err error) {
	for i, c := range batch {
		if c.err != nil {
			continue
		}
		p := plans[i]
		for j := range p.writes {
			var rev int64
			if err := results.QueryRow().Scan(&rev); err != nil {
				return 0, fmt.Errorf("txn %d of %d in a batch: %w", i+1, len(batch), err)
			}
			if j > 0 && rev != p.res.Revision {
				return 0, fmt.Errorf("txn %d of %d in a batch wrote at revisions %d and %d", i+1, len(batch), p.res.Revision, rev)
			}
			p.res.Revision = rev
		}
	}
	if closingRead {
		if err := results.QueryRow().Scan(&cur); err != nil {
			return 0, fmt.Errorf("read revision: %w", err)
		}
	}
	tag, err := results.Exec()
	switch {
	case err != nil:
		return 0, fmt.Errorf("commit: %w", err)
	case tag.String() == "ROLLBACK":
		return 0, pgx.ErrTxCommitRollback
	}
	return cur, nil
}

// response is the Txn's answer once its batch committed; cur is the
// revision a Txn that wrote nothing was read at.
func (p *txnPlan) response(cur int64) TxnResponse {
	if len(p.writes) == 0 {
		setRevision(&p.res, cur)
		return p.res
	}
	for _, r := range p.res.Responses {
		switch {
		case r.Put != nil:
			r.Put.Revision = p.res.Revision
		case r.Delete != nil:
			r.Delete.Revision = p.res.Revision
		}
	}
	return p.res
}

package store

import (
	"bytes"
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
// every key's read; then every Txn's writes and the commit. Kubernetes' own
// writes (compare one key's mod revision, put or delete it, else read it)
// need no decision made in Go: walwatch.cas_batch decides and writes them
// all in one statement, one round trip, a batch of one included. A Txn of
// another shape that finds no batch in flight runs alone, as before.
//
// One batch in flight, as puts have (batch.go says why). Under 32 clients
// writing as Kubernetes does through cp, a watcher of their prefix had each
// event at a p99 of 1.06–1.56× etcd's with two (median 1.40×) and
// 0.85–1.29× with one (0.99×), and the writes ran at 0.68–0.90× etcd's
// rate with two (0.81×) and 0.81–0.99× with one (0.94×); at 8 clients at
// a median of 0.62× and 0.72× (bench-quick, -systems walwatch_etcd,etcd,
// four runs each, alternated).
const (
	txnWorkers   = 1
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
// together (Kubernetes' writes among them in one statement, the others in
// one transaction), the others after, alone; so do all when the batch fails
// in a way that leaves nothing written.
func (t *txnBatcher) run(calls []*txnCall) {
	together, alone := disjoint(live(calls))
	var cas []*txnCall
	var writes []casWrite
	together = slices.DeleteFunc(together, func(c *txnCall) bool {
		w, ok := casShape(c.req)
		if ok {
			cas, writes = append(cas, c), append(writes, w)
		}
		return ok
	})
	if len(cas) > 0 {
		alone = append(t.runCAS(cas, writes), alone...)
	}
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

// casWrite is a Txn of Kubernetes' writes: if key's mod revision is mod,
// put value with lease, or delete the key; else read it (read), or nothing.
// walwatch.cas_batch runs a batch of them in one statement.
type casWrite struct {
	key    []byte
	mod    int64
	value  []byte
	lease  int64
	delete bool
	read   *RangeRequest // the Else branch's read; nil when it is empty
}

// casShape reports whether req is a Txn of Kubernetes' writes (its
// GuaranteedUpdate, Create and Delete): one compare of a key's mod revision
// for equality, then one put (neither keeping the value or lease nor
// asking for the previous one) or one delete (not asking for the previous
// one) of that key, else nothing or one read of it at the current revision.
func casShape(req TxnRequest) (casWrite, bool) {
	if len(req.If) != 1 || len(req.Then) != 1 || len(req.Else) > 1 {
		return casWrite{}, false
	}
	c := req.If[0]
	if len(c.End) > 0 || c.Target != CompareModRevision || c.Result != ResultEqual {
		return casWrite{}, false
	}
	w := casWrite{key: c.Key, mod: c.Number}
	switch op := req.Then[0]; {
	case !op.Range.IsSingleKey() || !bytes.Equal(op.Range.Key, c.Key) || op.PrevKV:
		return casWrite{}, false
	case op.Kind == OpPut && !op.IgnoreValue && !op.IgnoreLease:
		w.value, w.lease = op.Value, op.Lease
	case op.Kind == OpDelete:
		w.delete = true
	default:
		return casWrite{}, false
	}
	if len(req.Else) == 1 {
		op := req.Else[0]
		if op.Kind != OpRange || !op.Range.IsSingleKey() || !bytes.Equal(op.Range.Key, c.Key) || op.Revision != 0 {
			return casWrite{}, false
		}
		w.read = &RangeRequest{KeyRange: op.Range, Limit: op.Limit, CountOnly: op.CountOnly}
	}
	return w, true
}

// runCAS runs batch, Txns of Kubernetes' writes on distinct keys (writes,
// in the same order), with one statement: one round trip and one commit,
// where the general path takes two round trips. It returns the Txns to run
// alone: all of them when the server refused the batch, which rolled it
// back whole (a lease that does not exist, a revision a filler took, a
// deadlock), so that each fails only for a reason of its own.
func (t *txnBatcher) runCAS(batch []*txnCall, writes []casWrite) (alone []*txnCall) {
	ctx := batch[0].ctx
	if len(batch) > 1 {
		var stop func()
		ctx, stop = batchContext(batch)
		defer stop()
	}
	n := len(writes)
	keys, values := make([][]byte, n), make([][]byte, n)
	mods, leases := make([]int64, n), make([]int64, n)
	deletes := make([]bool, n)
	for i, w := range writes {
		keys[i], mods[i], values[i], leases[i], deletes[i] = w.key, w.mod, w.value, w.lease, w.delete
	}
	rows, err := t.s.pool.Query(ctx, "select * from walwatch.cas_batch($1, $2, $3, $4, $5)", keys, mods, values, leases, deletes)
	if err == nil {
		err = scanCAS(rows, batch, writes)
	}
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe):
		return batch
	case errors.Is(err, errCASDisagrees):
		// Committed, but its answers cannot be trusted.
		for _, c := range batch {
			c.err = fmt.Errorf("txn: %w", err)
		}
		return nil
	}
	// The connection failed: whether the batch committed is unknown, as for
	// a Txn alone.
	for _, c := range batch {
		c.err = fmt.Errorf("txn: %w", markTransient(TypedError(err, 0)))
	}
	return nil
}

// errCASDisagrees is walwatch.cas_batch's answer contradicting the store's
// own rules: the two definitions of Kubernetes' writes have drifted apart.
var errCASDisagrees = errors.New("cas_batch disagrees with the store")

// scanCAS reads walwatch.cas_batch's rows, one a Txn in batch's order, and
// hands each Txn its response.
func scanCAS(rows pgx.Rows, batch []*txnCall, writes []casWrite) error {
	defer rows.Close()
	res := make([]TxnResponse, 0, len(batch))
	for rows.Next() {
		var (
			held, live bool
			written    int64
			k          oneKey
		)
		if err := rows.Scan(&held, &written, &k.cur, &live, &k.mod, &k.value, &k.create, &k.ver, &k.lease); err != nil {
			return fmt.Errorf("read cas_batch: %w", err)
		}
		if len(res) == len(writes) {
			return fmt.Errorf("%w: more than %d rows", errCASDisagrees, len(writes))
		}
		k.tombstone = !live
		r, err := writes[len(res)].response(held, written, k)
		if err != nil {
			return err
		}
		res = append(res, r)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(res) != len(batch) {
		return fmt.Errorf("%w: %d rows for %d Txns", errCASDisagrees, len(res), len(batch))
	}
	for i, c := range batch {
		c.res = res[i]
	}
	return nil
}

// response is the Txn's answer from what walwatch.cas_batch found and did:
// held, whether the compare held; written, the revision written (0: none);
// k, the key's newest row before the write and the current revision after
// the batch. The compare is decided in SQL; the store's own rule (compareKV)
// must agree, or the two definitions have drifted apart.
func (w casWrite) response(held bool, written int64, k oneKey) (TxnResponse, error) {
	var kv KeyValue
	if !k.tombstone {
		kv = KeyValue{ModRevision: k.mod, CreateRevision: k.create, Version: k.ver, Lease: k.lease, Value: k.value}
	}
	if compareKV(Compare{Target: CompareModRevision, Result: ResultEqual, Number: w.mod}, kv) != held {
		return TxnResponse{}, fmt.Errorf("%w: on %s, whether mod revision %d holds", errCASDisagrees, keyText(w.key), w.mod)
	}
	wrote := held && (!w.delete || !k.tombstone)
	if wrote != (written != 0) {
		return TxnResponse{}, fmt.Errorf("%w: on %s, wrote at revision %d where a write was due: %t", errCASDisagrees, keyText(w.key), written, wrote)
	}
	switch {
	case held && w.delete:
		res := TxnResponse{Succeeded: true, Revision: k.cur, Responses: []OpResponse{{Delete: &DeleteResponse{Revision: k.cur}}}}
		if wrote {
			res.Revision = written
			res.Responses[0].Delete = &DeleteResponse{Revision: written, Deleted: 1}
		}
		return res, nil
	case held:
		return TxnResponse{Succeeded: true, Revision: written, Responses: []OpResponse{{Put: &PutResponse{Revision: written}}}}, nil
	}
	res := TxnResponse{Revision: k.cur}
	if w.read != nil {
		rr, err := k.response(*w.read)
		if err != nil {
			return TxnResponse{}, err
		}
		res.Responses = []OpResponse{{Range: &rr}}
	}
	return res, nil
}

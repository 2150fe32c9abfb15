package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Puts that arrive while others are in flight share a transaction, as etcd's
// apply loop batches its writes: at many concurrent clients the transaction
// around a put, not the put, is what the server spends most on. At most
// putWorkers batches are in flight; what arrives meanwhile waits for the next
// one, so a lone put goes out at once, alone, and batches grow only with
// concurrency. Every put still takes a revision of its own.
//
// One in flight, as etcd applies its writes one batch at a time. Two
// batches took revisions from the one sequence at once and committed in
// either order, and a watcher can have a revision only once every revision
// below it is in: a batch's events waited for the other's commit, and under
// load for a CPU for the other's backend (BenchmarkPutToEvent at 32
// writers: revisions arriving before a lower one 0.31–0.36 a put with two,
// 0.13 with one, where the probe's own store still interleaves with the
// writers'). With one, the benchmark's put→event p99 under 32 writers fell
// from 20.8–89.6 ms to 4.3–6.8 (etcd's 12.7–18.7), and its puts at 8
// writers cost about half the CPU and 0.88× the disk writes, in larger
// batches: fewer transactions, commits and WAL flushes (bench-quick, three
// runs each, alternated). Its watched puts at 32 writers stayed level and
// its unwatched ones rose; BenchmarkPutWorkers, which has no watcher,
// finds one 0.86×, 1.02× and 0.98× two's puts at 32 writers in three runs,
// 0.97×, 1.04× and 1.03× at 8, with a third fewer transactions a put.
const (
	putWorkers    = 1
	maxBatchPuts  = 64
	maxBatchBytes = 1 << 20 // keys and values; a larger put goes alone
)

// call is one operation waiting for its batch.
type call interface {
	base() *pending
	size() int // its bytes, toward maxBatchBytes
}

// pending is what every call has: its caller's context, its error, and
// done, closed once its result is in.
type pending struct {
	ctx  context.Context
	err  error
	done chan struct{}
}

func newPending(ctx context.Context) pending {
	return pending{ctx: ctx, done: make(chan struct{})}
}

func (p *pending) base() *pending { return p }

// wait returns the call's error once its result is in, or its caller's
// when the caller gives up first.
func (p *pending) wait() error {
	select {
	case <-p.done: // at once if it was in a batch its own submit ran
		return p.err
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
}

// batcher queues calls and runs them in batches of at most max calls and
// maxBatchBytes, at most limit batches at once, in the goroutine of a call
// that finds a worker slot free, then on goroutines that exist only while
// there is more to do, so the Store needs no Close. run runs a batch and
// gives every call its result (res fields, or pending.err).
type batcher[C call] struct {
	limit int // batches in flight at most
	max   int
	run   func([]C)

	// yield gives up the processor once before a batch is taken, so that
	// calls whose goroutines are runnable, a request each that has not yet
	// reached submit, join it rather than wait for the next one; a lone
	// call finds nothing runnable and goes on at once.
	yield bool

	mu      sync.Mutex
	queue   []C
	workers int
	flying  []int // the sizes of the batches in flight
}

// startable reports whether the queue may go in flight as a batch now: at
// once when nothing is in flight, and beside other batches only once it is
// as large as the smallest of them and no worker is about to take it; b.mu
// is held. Otherwise it waits for a batch to finish, and grows meanwhile.
// A batch started the moment a slot was free would be a put or two, its
// clients' puts back a moment later while the large batch they left behind
// is still in flight: at 8 clients batches of 1 to 7 puts; with the rule,
// batches of about 4, and a transaction (a WAL flush, which writes at least
// one 8 KiB page) per 3.2 puts rather than 2.6 (BenchmarkPutWorkers:
// transactions per put 0.38 → 0.32, puts/s 6,198 → 7,089; at 4 clients
// 0.63 → 0.50 and 3,832 → 4,928; measured when two put batches flew).
// Every batcher of the store now has one in flight; the rule serves
// BenchmarkPutWorkers, which still compares one with two.
func (b *batcher[C]) startable() bool {
	switch {
	case b.workers == 0:
		return true
	case b.workers >= b.limit:
		return false
	case len(b.flying) < b.workers:
		return false // a worker between two batches takes the queue next
	default:
		return len(b.queue) >= slices.Min(b.flying)
	}
}

// submit queues c, and runs batches here while it holds a free slot.
func (b *batcher[C]) submit(c C) {
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if b.startable() {
		// A slot is free: run the next batch here rather than hand it to a
		// goroutine, so a lone call costs no handoff (one cost 50-100 µs at
		// p50 and milliseconds at p99 on two busy cores).
		b.workers++
		b.gather()
		batch := b.take()
		b.mu.Unlock()
		b.runAll(batch)
		b.mu.Lock()
		if len(b.queue) > 0 {
			go b.work() // the slot passes on to whoever serves the rest
		} else {
			b.workers--
		}
	}
	b.mu.Unlock()
}

// work runs batches until the queue is empty; it holds a worker slot.
func (b *batcher[C]) work() {
	for {
		b.mu.Lock()
		b.gather()
		batch := b.take()
		if len(batch) == 0 {
			b.workers--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.runAll(batch)
	}
}

// gather yields the processor when b yields, so that the calls on their
// way join the next batch; b.mu is held, and released meanwhile.
func (b *batcher[C]) gather() {
	if b.yield {
		b.mu.Unlock()
		runtime.Gosched()
		b.mu.Lock()
	}
}

// runAll runs batch, taken by take, and tells every call its result is in.
func (b *batcher[C]) runAll(batch []C) {
	defer func() {
		b.mu.Lock()
		i := slices.Index(b.flying, len(batch))
		b.flying = slices.Delete(b.flying, i, i+1)
		b.mu.Unlock()
		for _, c := range batch {
			close(c.base().done)
		}
	}()
	b.run(batch)
}

// take removes the next batch from the queue and counts it in flight; b.mu
// is held.
func (b *batcher[C]) take() []C {
	n, size := 0, 0
	for n < len(b.queue) && n < b.max {
		size += b.queue[n].size()
		if n > 0 && size > maxBatchBytes {
			break
		}
		n++
	}
	batch := make([]C, n)
	copy(batch, b.queue)
	clear(b.queue[:n])
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go
	}
	if n > 0 {
		b.flying = append(b.flying, n)
	}
	return batch
}

// live returns the calls whose caller has not given up, and fails the
// others.
func live[C call](calls []C) []C {
	out := make([]C, 0, len(calls))
	for _, c := range calls {
		if p := c.base(); p.ctx.Err() != nil {
			p.err = p.ctx.Err()
			continue
		}
		out = append(out, c)
	}
	return out
}

// putCall is one Put waiting for its batch.
type putCall struct {
	pending
	key, value []byte
	rev        int64
}

func (c *putCall) size() int { return len(c.key) + len(c.value) }

// putBatcher runs puts in batches, each in a transaction of its own.
type putBatcher struct {
	pool *pgxpool.Pool
	b    batcher[*putCall]
}

func newPutBatcher(pool *pgxpool.Pool) *putBatcher {
	p := &putBatcher{pool: pool}
	p.b = batcher[*putCall]{limit: putWorkers, max: maxBatchPuts, run: p.run}
	return p
}

func (b *putBatcher) put(ctx context.Context, key, value []byte) (int64, error) {
	c := &putCall{pending: newPending(ctx), key: key, value: value}
	b.b.submit(c)
	// A put given up may still be written, as when a single statement is
	// cancelled after it was sent.
	if err := c.wait(); err != nil {
		return 0, err
	}
	return c.rev, nil
}

// run writes a batch and hands every call its result.
func (b *putBatcher) run(calls []*putCall) {
	// A put whose caller gave up while it queued is not written.
	batch := live(calls)
	if len(batch) == 0 {
		return
	}
	if len(batch) == 1 { // a put alone needs no context shared with others
		c := batch[0]
		c.rev, c.err = putOne(c.ctx, b.pool, c.key, c.value)
		return
	}
	ctx, stop := batchContext(batch)
	defer stop()
	keys := make([][]byte, len(batch))
	values := make([][]byte, len(batch))
	for i, c := range batch {
		keys[i], values[i] = c.key, c.value // nil is stored as empty: walwatch.new_row sees to it
	}
	var revs []int64
	err := b.pool.QueryRow(ctx, "select walwatch.put_batch($1, $2)", keys, values).Scan(&revs)
	if err == nil && len(revs) != len(batch) {
		err = fmt.Errorf("put_batch returned %d revisions for %d puts", len(revs), len(batch))
	}
	if err == nil {
		for i, c := range batch {
			c.rev = revs[i]
		}
		return
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server rolled the batch back: put one by one, so a put fails
		// only for a reason of its own.
		for _, c := range batch {
			c.rev, c.err = putOne(c.ctx, b.pool, c.key, c.value)
		}
		return
	}
	// The connection failed: whether the batch committed is unknown, as for
	// a single put whose connection fails.
	for _, c := range batch {
		c.err = fmt.Errorf("put %s: %w", keyText(c.key), TypedError(err, 0))
	}
}

// Gets of one key at the latest revision that arrive while others are in
// flight are read by one statement: at 32 clients PostgreSQL serves a
// statement of 16 keys at a third of the rate of a statement of one, so
// about five times the keys (pgbench, 12.6-15.2k statements of one key
// against 4.0k of 16 a second). A lone get goes out at once, alone, as a
// put does. One batch at a time: the next gathers while it runs, and
// batches twice as large cost a server that reads for others (cp) fewer
// round trips. cp's etcd gets at 32 clients (the etcd Go client, three
// runs each, alternating): 7.8k/7.1k/6.1k a second with one batch in flight
// against 5.6k/6.1k/5.5k with two; BenchmarkGetParts at 32 clients
// 53k/64k against 52k/53k.
const (
	getWorkers   = 1
	maxBatchGets = 64
)

// getCall is one get waiting for its batch.
type getCall struct {
	pending
	req RangeRequest
	res RangeResponse
}

func (c *getCall) size() int { return len(c.req.Key) }

// getBatcher runs gets of single keys at the latest revision in batches.
type getBatcher struct {
	pool *pgxpool.Pool
	b    batcher[*getCall]
}

func newGetBatcher(pool *pgxpool.Pool) *getBatcher {
	g := &getBatcher{pool: pool}
	g.b = batcher[*getCall]{limit: getWorkers, max: maxBatchGets, run: g.run}
	return g
}

func (g *getBatcher) get(ctx context.Context, req RangeRequest) (RangeResponse, error) {
	c := &getCall{pending: newPending(ctx), req: req}
	g.b.submit(c)
	if err := c.wait(); err != nil {
		return RangeResponse{}, err
	}
	return c.res, nil
}

func (g *getBatcher) run(calls []*getCall) {
	batch := live(calls)
	if len(batch) > 1 && g.runBatch(batch) == nil {
		return
	}
	// Alone, or the batch failed: each on its own, so a get fails only
	// for a reason of its own.
	for _, c := range batch {
		c.res, c.err = getLatest(c.ctx, g.pool, c.req)
	}
}

// runBatch reads the keys of batch in one statement and hands each call its
// result, unless the statement fails.
func (g *getBatcher) runBatch(batch []*getCall) error {
	ctx, stop := batchContext(batch)
	defer stop()
	keys := make([][]byte, len(batch))
	for i, c := range batch {
		keys[i] = c.req.Key
	}
	var read []oneKey
	err := withStamp(ctx, g.pool, latestStamp, func(conn *pgxpool.Conn, st stamp) (*string, int64, error) {
		rows, err := conn.Query(ctx, manyKeysLatestSQL, keys, st.snapshot, st.rev)
		if err != nil {
			return nil, 0, err
		}
		var snapshot *string
		if read, snapshot, err = scanManyKeys(rows, len(keys)); err != nil {
			return nil, 0, fmt.Errorf("get batch: %w", err)
		}
		return snapshot, read[0].cur, nil
	})
	if err != nil {
		return err
	}
	for i, c := range batch {
		c.res, c.err = read[i].response(c.req)
	}
	return nil
}

func putOne(ctx context.Context, pool *pgxpool.Pool, key, value []byte) (int64, error) {
	var rev int64
	if err := pool.QueryRow(ctx, "select walwatch.put($1, $2)", key, value).Scan(&rev); err != nil {
		return 0, fmt.Errorf("put %s: %w", keyText(key), TypedError(err, 0))
	}
	return rev, nil
}

// batchContext ends when every call of the batch has given up: a batch is
// everybody's, so no single caller's cancellation may end it.
func batchContext[C call](batch []C) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, c := range batch {
		stops[i] = context.AfterFunc(c.base().ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// Reads of the current revision that arrive while one is in flight share
// the next statement: every reader still gets a statement that began after
// it asked, which is what a linearizable read from a copy of the keyspace
// needs (package keyspace), and 32 clients cost a round trip, not 32.
// The batcher yields before it takes a batch: at 32 readers in process
// that made 24 reads a statement rather than 15, and 1.17–1.20× the reads
// a second (BenchmarkCurrentRevisionYield); through cp's etcd API, where
// each read is a gRPC handler that becomes runnable before it reaches the
// batcher, 9.7 reads a statement rather than 6.3, a fifth less of
// PostgreSQL's CPU, and 1.09×, 1.09× and 1.24× the gets a second at 32
// clients in three interleaved rounds.
const maxBatchRevisions = 1024

// revisionCall is one CurrentRevision waiting for its batch.
type revisionCall struct {
	pending
	rev int64
}

func (c *revisionCall) size() int { return 0 }

func newRevisionBatcher(pool *pgxpool.Pool) *batcher[*revisionCall] {
	b := &batcher[*revisionCall]{limit: 1, max: maxBatchRevisions, yield: true}
	b.run = func(calls []*revisionCall) {
		batch := live(calls)
		if len(batch) == 0 {
			return
		}
		ctx, stop := batchContext(batch)
		defer stop()
		rev, err := currentRevision(ctx, pool)
		if err != nil {
			err = fmt.Errorf("read current revision: %w", markTransient(err))
		}
		for _, c := range batch {
			c.rev, c.err = rev, err
			if err != nil && c.ctx.Err() != nil {
				c.err = c.ctx.Err() // it gave up: the batch's own cancellation is not its error
			}
		}
	}
	return b
}

// currentRevisionSQL is walwatch.current_revision() unless the
// connection's stamp ($1, $2) gives it, with the snapshot when it is not
// the stamp's.
const currentRevisionSQL = `select nullif(o.s, $1), case when o.s = $1 then $2::bigint else walwatch.current_revision() end from ` + snapshotFrom

// currentRevision reads the current revision on a pool connection of its
// own, which may know it from its stamp.
func currentRevision(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var rev int64
	err := withStamp(ctx, pool, currentStamp, func(conn *pgxpool.Conn, st stamp) (*string, int64, error) {
		var snapshot *string
		err := conn.QueryRow(ctx, currentRevisionSQL, st.snapshot, st.rev).Scan(&snapshot, &rev)
		return snapshot, rev, err
	})
	return rev, err
}

package store

import (
	"context"
	"errors"
	"fmt"
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
// Two in flight keep the server busy, one batch running while the other waits
// for its commit to be flushed, and let the waiting puts gather into batches
// about twice the size four make: fewer transactions for the same puts.
// BenchmarkPutWorkers compares the two.
const (
	putWorkers    = 2
	maxBatchPuts  = 64
	maxBatchBytes = 1 << 20 // keys and values; a larger put goes alone
)

// putCall is one Put waiting for its batch.
type putCall struct {
	ctx        context.Context
	key, value []byte
	rev        int64
	err        error
	done       chan struct{}
}

// putBatcher queues puts and runs them in batches, in the goroutine of a put
// that finds a worker slot free, then on goroutines that exist only while
// there is more to do, so the Store needs no Close.
type putBatcher struct {
	pool    *pgxpool.Pool
	limit   int // batches in flight at most: putWorkers but in benchmarks
	mu      sync.Mutex
	queue   []*putCall
	workers int
}

func (b *putBatcher) put(ctx context.Context, key, value []byte) (int64, error) {
	c := &putCall{ctx: ctx, key: key, value: value, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if b.workers < b.limit {
		// A slot is free: run the next batch here rather than hand it to a
		// goroutine, so a lone put costs no handoff (one cost 50-100 µs at
		// p50 and milliseconds at p99 on two busy cores).
		b.workers++
		batch := b.take()
		b.mu.Unlock()
		b.run(batch)
		b.mu.Lock()
		if len(b.queue) > 0 {
			go b.work() // the slot passes on to whoever serves the rest
		} else {
			b.workers--
		}
	}
	b.mu.Unlock()
	select {
	case <-c.done: // at once if it was in the batch run above
		return c.rev, c.err
	case <-ctx.Done():
		// The put may still be written, as when a single statement is
		// cancelled after it was sent.
		return 0, ctx.Err()
	}
}

// work runs batches until the queue is empty; it holds a worker slot.
func (b *putBatcher) work() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.workers--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.run(batch)
	}
}

// take removes the next batch from the queue; b.mu is held.
func (b *putBatcher) take() []*putCall {
	n, size := 0, 0
	for n < len(b.queue) && n < maxBatchPuts {
		size += len(b.queue[n].key) + len(b.queue[n].value)
		if n > 0 && size > maxBatchBytes {
			break
		}
		n++
	}
	batch := make([]*putCall, n)
	copy(batch, b.queue)
	clear(b.queue[:n])
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go
	}
	return batch
}

// run writes a batch and hands every call its result.
func (b *putBatcher) run(calls []*putCall) {
	defer func() {
		for _, c := range calls {
			close(c.done)
		}
	}()
	// A put whose caller gave up while it queued is not written.
	batch := make([]*putCall, 0, len(calls))
	for _, c := range calls {
		if c.err = c.ctx.Err(); c.err == nil {
			batch = append(batch, c)
		}
	}
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

func putOne(ctx context.Context, pool *pgxpool.Pool, key, value []byte) (int64, error) {
	var rev int64
	if err := pool.QueryRow(ctx, "select walwatch.put($1, $2)", key, value).Scan(&rev); err != nil {
		return 0, fmt.Errorf("put %s: %w", keyText(key), TypedError(err, 0))
	}
	return rev, nil
}

// batchContext ends when every call of the batch has given up: a batch is
// everybody's, so no single caller's cancellation may end it.
func batchContext(batch []*putCall) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, c := range batch {
		stops[i] = context.AfterFunc(c.ctx, func() {
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

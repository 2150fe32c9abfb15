package replication

import (
	"context"
	"sync"
)

// txnQueue hands transactions from the stream to the hub without ever
// blocking the stream: the goroutine that owns the replication connection
// must always be free to answer keepalives, so the queue cannot push back on
// it and has no bound of its own. It stays short because the hub drains it
// without touching PostgreSQL (accepting into the reorder buffer, which
// bounds its own bytes by spilling, costs no I/O): what it holds is what the
// stream decodes while the run loop finishes one round. The first table read
// of a session can wait, and does (waitBelow), so a large table does not
// pile up here either.
type txnQueue struct {
	mu      sync.Mutex
	items   []*txn
	bytes   int // what items hold (rowsSize)
	notify  chan struct{}
	drained chan struct{} // receives after a drain
}

func newTxnQueue() *txnQueue {
	return &txnQueue{notify: make(chan struct{}, 1), drained: make(chan struct{}, 1)}
}

func (q *txnQueue) push(t *txn) {
	size := rowsSize(t.rows)
	q.mu.Lock()
	q.items = append(q.items, t)
	q.bytes += size
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// wait returns a channel that receives after a push.
func (q *txnQueue) wait() <-chan struct{} { return q.notify }

func (q *txnQueue) drain() []*txn {
	q.mu.Lock()
	items := q.items
	q.items, q.bytes = nil, 0
	q.mu.Unlock()
	select {
	case q.drained <- struct{}{}:
	default:
	}
	return items
}

// waitBelow waits until the queue holds at most limit bytes: for a producer
// that may wait (the table read), never for the stream.
func (q *txnQueue) waitBelow(ctx context.Context, limit int) error {
	for {
		q.mu.Lock()
		over := q.bytes > limit
		q.mu.Unlock()
		if !over {
			return nil
		}
		select {
		case <-q.drained:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

package replication

import "sync"

// txnQueue hands transactions from the stream to the hub without ever
// blocking the stream: the goroutine that owns the replication connection
// must always be free to answer keepalives. It is unbounded; the hub drains
// it without touching PostgreSQL, so it stays short.
type txnQueue struct {
	mu     sync.Mutex
	items  []*txn
	notify chan struct{}
}

func newTxnQueue() *txnQueue { return &txnQueue{notify: make(chan struct{}, 1)} }

func (q *txnQueue) push(t *txn) {
	q.mu.Lock()
	q.items = append(q.items, t)
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
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

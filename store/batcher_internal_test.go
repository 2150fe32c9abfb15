package store

import (
	"context"
	"testing"

	"github.com/walwatch/walwatch/test/wait"
)

// ranBatch is a batch the test's run holds until release is closed.
type ranBatch struct {
	size    int
	release chan struct{}
}

// A batch goes in flight beside another only once it is as large as the
// smallest batch in flight; until then its calls wait, and it grows.
func TestBatchStartsBesideAnotherOnlyAsLarge(t *testing.T) {
	runs := make(chan ranBatch, 8)
	b := &batcher[*putCall]{limit: 2, max: 64, run: func(batch []*putCall) {
		r := ranBatch{len(batch), make(chan struct{})}
		runs <- r
		<-r.release
	}}
	locked := func(f func() bool) func() bool {
		return func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return f()
		}
	}
	queued := func(n int) func() bool { return locked(func() bool { return len(b.queue) == n }) }
	var calls []*putCall
	submit := func() {
		c := &putCall{pending: newPending(context.Background())}
		calls = append(calls, c)
		go b.submit(c)
	}
	next := func(want int) ranBatch {
		t.Helper()
		r := <-runs
		if r.size != want {
			t.Fatalf("a batch of %d started, want %d", r.size, want)
		}
		return r
	}

	submit()
	first := next(1) // nothing in flight: at once
	submit()
	second := next(1) // as large as the one in flight
	for range 3 {
		submit()
	}
	wait.For(t, "three calls queued behind two batches", queued(3))
	close(first.release)
	third := next(3) // the finished batch's slot takes the queue
	close(second.release)
	wait.For(t, "one batch in flight", locked(func() bool { return b.workers == 1 }))

	submit()
	submit()
	// Two calls, smaller than the batch of three in flight, wait; had
	// either started a batch the queue would be empty.
	wait.For(t, "two calls queued beside a batch of three", queued(2))
	submit()
	fourth := next(3)
	close(third.release)
	close(fourth.release)
	for i, c := range calls {
		if err := c.wait(); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	wait.For(t, "no batch in flight", locked(func() bool { return b.workers == 0 && len(b.flying) == 0 }))
}

// A worker between two batches (its last one done, the next not yet taken)
// takes what is queued: no other batch starts for it.
func TestBatchWaitsForWorkerBetweenBatches(t *testing.T) {
	b := &batcher[*putCall]{limit: 2, max: 64, workers: 1, queue: []*putCall{{}}}
	if b.startable() {
		t.Error("a batch started while a worker was about to take the queue")
	}
	b.flying = []int{1}
	if !b.startable() {
		t.Error("a batch as large as the one in flight did not start")
	}
}

// Package keyspace keeps a copy of the latest keyspace in memory, fed by one
// watch on every key, so that a linearizable read of one key asks
// PostgreSQL only for the current revision, in one statement shared by
// every read waiting at the moment (store.CurrentRevision), and answers
// from memory once the copy holds that revision. It is what etcd's members
// do with their in-memory index, and costs what that costs: the keyspace's
// latest values in every process that keeps a copy.
//
// The copy is correct as long as the hub's deliveries are: it holds, at its
// revision, exactly what a watcher of every key has been sent up to that
// revision, and a read answers at a revision at or above the current one
// when it began. Ranges, reads at a revision and everything else go to the
// store. Its tests are the client's (keyspace_test.go at the module's root),
// which runs it.
package keyspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// Tunables of the copy.
const (
	// loadPage is how many keys one read of the initial load takes.
	loadPage = 1000
	// retryMin and retryMax bound the wait before loading again after the
	// copy's watch ended (a compaction it could not follow, a failover, an
	// outage of the hub).
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
	// askAgain is how soon a read waiting for the copy asks the hub again
	// for a progress mark the hub could not send (its watcher was catching
	// up).
	askAgain = time.Millisecond
)

// ErrNotLive is returned by Get when the copy cannot answer: it is loading,
// or its watch ended and it is loading again. Read the store instead.
var ErrNotLive = errors.New("keyspace copy not live")

// ErrBehind is returned (wrapped, with the cause) by Get when the copy did
// not reach the current revision within ctx: a transaction may hold a lower
// revision open, or the hub is not keeping up.
var ErrBehind = errors.New("keyspace copy behind the current revision")

// Copy is the latest value of every key, kept by a watch. Run keeps it; Get
// reads it. It is safe for concurrent use.
type Copy struct {
	store *store.Store
	hub   *replication.Hub
	log   *slog.Logger

	mu       sync.Mutex
	kvs      map[string]store.KeyValue // nil while not live
	rev      int64                     // the copy holds every change at or below rev
	watcher  *replication.Watcher      // the watch feeding the copy while live
	advanced chan struct{}             // closed and replaced when rev advances or the copy stops being live

	asked  atomic.Bool   // a progress mark is on its way
	served atomic.Uint64 // reads answered from the copy
}

// New returns a copy that Run fills from hub's deliveries and st's reads.
// A nil log discards.
func New(st *store.Store, hub *replication.Hub, log *slog.Logger) *Copy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Copy{store: st, hub: hub, log: log, advanced: make(chan struct{})}
}

// Run keeps the copy until ctx ends: it loads every key at a settled
// revision, then applies every change the hub delivers after it, and loads
// again whenever that watch ends. It returns when ctx ends.
func (c *Copy) Run(ctx context.Context) {
	wait := retryMin
	for {
		err := c.follow(ctx)
		c.stop()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errFollowed) {
			wait = retryMin // it was live: a new failure, not the same one again
		}
		c.log.Warn("keyspace copy stopped; reads of one key go to the database until it is loaded again", "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(2*wait, retryMax)
	}
}

// errFollowed marks the end of a watch that had fed a live copy.
var errFollowed = errors.New("keyspace copy's watch ended")

// follow loads the copy and applies the hub's deliveries until its watch ends.
func (c *Copy) follow(ctx context.Context) error {
	select {
	case <-c.hub.Ready():
	case <-c.hub.Stopped():
		return replication.ErrHubStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	rev, err := c.hub.ReadRevision(ctx)
	if err != nil {
		return fmt.Errorf("load keyspace copy: %w", err)
	}
	kvs, err := c.load(ctx, rev)
	if err != nil {
		return fmt.Errorf("load keyspace copy at revision %d: %w", rev, err)
	}
	// The watch's context is the copy's: stop() closes it.
	w, err := c.hub.Watch(ctx, replication.WatchRequest{Range: all, StartRevision: rev + 1})
	if err != nil {
		return fmt.Errorf("watch for keyspace copy from revision %d: %w", rev+1, err)
	}
	c.mu.Lock()
	c.kvs, c.rev, c.watcher = kvs, rev, w
	c.wakeLocked()
	c.mu.Unlock()
	c.log.Info("keyspace copy loaded", "keys", len(kvs), "revision", rev)
	for resp := range w.C {
		if resp.Canceled {
			break // w.Err says why
		}
		c.apply(resp)
	}
	return fmt.Errorf("%w: %w", errFollowed, w.Err())
}

// all is every key.
var all = store.FromKey([]byte{0})

// load reads every key at rev, a page at a time, uncounted: the first
// page's count would read the whole range once more.
func (c *Copy) load(ctx context.Context, rev int64) (map[string]store.KeyValue, error) {
	kvs := make(map[string]store.KeyValue)
	req := store.RangeRequest{KeyRange: all, Revision: rev, Limit: loadPage, NoCount: true}
	for {
		res, err := c.store.Range(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, kv := range res.KVs {
			kvs[string(kv.Key)] = kv
		}
		if !res.More || len(res.KVs) == 0 {
			return kvs, nil
		}
		req.Key = append(bytes.Clone(res.KVs[len(res.KVs)-1].Key), 0)
	}
}

// apply makes the copy hold resp's changes, or advances it to a progress
// mark.
func (c *Copy) apply(resp replication.WatchResponse) {
	mark := len(resp.Events) == 0
	if mark {
		c.asked.Store(false)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range resp.Events {
		ev := &resp.Events[i]
		if ev.Type == replication.EventDelete {
			delete(c.kvs, string(ev.Key))
			continue
		}
		// The event's bytes are the hub's, shared with every watcher and never
		// written: Get hands out copies.
		c.kvs[string(ev.Key)] = store.KeyValue{
			Key: ev.Key, Value: ev.Value, CreateRevision: ev.CreateRevision,
			ModRevision: ev.Revision, Version: ev.Version, Lease: ev.Lease,
		}
	}
	if resp.Revision > c.rev || mark {
		// A mark below what a read waits for still wakes it, to ask again.
		c.rev = max(c.rev, resp.Revision)
		c.wakeLocked()
	}
}

// stop drops the copy's keys and wakes the reads waiting for it.
func (c *Copy) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watcher != nil {
		c.watcher.Close()
	}
	c.kvs, c.rev, c.watcher = nil, 0, nil
	c.asked.Store(false)
	c.wakeLocked()
}

// wakeLocked wakes the reads waiting for the copy; c.mu is held.
func (c *Copy) wakeLocked() {
	close(c.advanced)
	c.advanced = make(chan struct{})
}

// Live reports whether the copy can answer reads now.
func (c *Copy) Live() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kvs != nil
}

// Keys returns how many keys the copy holds; 0 while it is not live.
func (c *Copy) Keys() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.kvs)
}

// Served returns how many reads the copy has answered.
func (c *Copy) Served() uint64 { return c.served.Load() }

// Get reads one key (req.End empty, req.Revision 0) at the latest revision:
// it reads the current revision, waits until the copy holds it, and answers
// at the copy's revision, at or above it. ctx bounds the wait. It fails
// with ErrNotLive when the copy cannot answer (also when it stops while
// the read waits): the caller reads the store.
func (c *Copy) Get(ctx context.Context, req store.RangeRequest) (store.RangeResponse, error) {
	if !req.IsSingleKey() || req.Revision != 0 {
		return store.RangeResponse{}, fmt.Errorf("keyspace copy reads one key at the latest revision, not %q..%q at %d: %w", req.Key, req.End, req.Revision, ErrNotLive)
	}
	// Not live: no round trip spent before the store's own.
	if !c.Live() || !c.hub.Streaming() {
		return store.RangeResponse{}, ErrNotLive
	}
	cur, err := c.store.CurrentRevision(ctx)
	if err != nil {
		return store.RangeResponse{}, err
	}
	for {
		c.mu.Lock()
		kvs, rev, w, advanced := c.kvs, c.rev, c.watcher, c.advanced
		if kvs != nil && rev >= cur {
			res := store.RangeResponse{Revision: rev, Current: rev}
			if kv, ok := kvs[string(req.Key)]; ok {
				res.Count = 1
				if !req.CountOnly {
					kv.Key, kv.Value = bytes.Clone(kv.Key), bytes.Clone(kv.Value)
					res.KVs = []store.KeyValue{kv}
				}
			}
			c.mu.Unlock()
			c.served.Add(1)
			return res, nil
		}
		c.mu.Unlock()
		if kvs == nil {
			return store.RangeResponse{}, ErrNotLive
		}
		if err := c.await(ctx, w, cur, advanced); err != nil {
			return store.RangeResponse{}, fmt.Errorf("%w: at %d, current %d: %w", ErrBehind, rev, cur, err)
		}
	}
}

// await returns once the copy may have advanced toward cur. Changes reach
// the copy as events, and the current revision is always a row's (fillers
// settle holes below the newest row, and compaction keeps the newest): its
// event is on its way. Once the hub has settled cur, a progress mark on the
// copy's watch, sent after every event up to the hub's watermark, brings
// the copy to it all the same, so that no read can wait on an event that
// will not come.
func (c *Copy) await(ctx context.Context, w *replication.Watcher, cur int64, advanced <-chan struct{}) error {
	if c.hub.Watermark() < cur {
		// Events are on their way, or a hole is settling.
		if err := c.hub.WaitFor(ctx, cur); err != nil {
			return err
		}
	}
	var again <-chan time.Time
	if !c.asked.Swap(true) && !c.hub.RequestProgress(w) {
		c.asked.Store(false)
		again = time.After(askAgain)
	}
	select {
	case <-advanced:
	case <-again:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

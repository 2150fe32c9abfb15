// Package keyspace keeps a copy of the latest keyspace in memory, in key
// order, fed by one watch on every key, so that a linearizable read asks
// PostgreSQL only for the current revision, in one statement shared by
// every read of the latest revision waiting at the moment
// (store.CurrentRevision), and answers from memory once the copy holds that
// revision. It is what etcd's members do with their in-memory index, and
// costs what that costs: the keyspace's latest values in every process that
// keeps a copy.
//
// The copy also keeps the versions that the latest changes replaced, and
// the keys they deleted as tombstones, so it answers a range at an older
// revision as long as it still holds every change after it: the pages of a
// list after its first, which Kubernetes reads at the first page's
// revision, while the list's keys are being written.
//
// The copy is correct as long as the hub's deliveries are: it holds, at its
// revision, exactly what a watcher of every key has been sent up to that
// revision, and a read answers at a revision at or above the current one
// when it began. What it cannot answer goes to the store. Its tests are
// mostly the client's (keyspace_test.go at the module's root), which runs
// it, against the store's answers.
package keyspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"

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
	// maxHistory and maxHistoryBytes bound the changes whose replaced
	// versions and tombstones the copy remembers: the changes, and the
	// keys and values of the versions they replaced and of their
	// tombstones. Past either, the older half is forgotten, and reads
	// before those changes go to the store. etcd keeps every version until
	// a compaction; this keeps seconds of history at thousands of puts a
	// second of a kilobyte, and a list of 5,000 keys lasts tens of ms.
	maxHistory      = 1 << 16
	maxHistoryBytes = 64 << 20
	// degree is the B-tree's, as etcd's index's (a fork of the same B-tree).
	degree = 32
)

// ErrNotLive is returned by Range when the copy cannot answer: it is
// loading, or its watch ended and it is loading again, or it no longer
// knows the range at the revision asked for. Read the store instead.
var ErrNotLive = errors.New("keyspace copy not live")

// ErrBehind is returned (wrapped, with the cause) by Range when the copy did
// not reach the current revision within ctx: a transaction may hold a lower
// revision open, or the hub is not keeping up.
var ErrBehind = errors.New("keyspace copy behind the current revision")

// entry is a version of a key in the copy, or its tombstone, whose
// ModRevision is its delete's. The B-tree holds each key's newest; prev
// is the version it replaced, while the copy remembers it. Only prev is
// ever written (cut, under the lock), so a reader may hold an entry's kv
// after the lock.
type entry struct {
	kv      store.KeyValue
	deleted bool
	prev    *entry
}

// at returns the version of e's key at rev: the newest at or below it, or
// nil when the key had none the copy remembers.
func (e *entry) at(rev int64) *entry {
	for ; e != nil; e = e.prev {
		if e.kv.ModRevision <= rev {
			return e
		}
	}
	return nil
}

// size is what an entry's key and value hold.
func (e *entry) size() int { return len(e.kv.Key) + len(e.kv.Value) }

func entryLess(a, b *entry) bool { return bytes.Compare(a.kv.Key, b.kv.Key) < 0 }

// Copy is the latest value of every key, kept by a watch. Run keeps it;
// Range reads it. It is safe for concurrent use.
type Copy struct {
	store *store.Store
	hub   *replication.Hub
	log   *slog.Logger

	mu   sync.RWMutex
	keys *btree.BTreeG[*entry] // nil while not live
	live int                   // entries of keys that are not tombstones
	// changes are the versions the copy applied since it loaded, oldest
	// first, whose replaced versions (prev) and tombstones it remembers;
	// history is the bytes those hold.
	changes []*entry
	history int
	// floor is the oldest revision the copy answers at: the one it was
	// loaded at, or the newest change whose replaced version or tombstone
	// it forgot.
	floor    int64
	rev      int64                // the copy holds every change at or below rev
	watcher  *replication.Watcher // the watch feeding the copy while live
	advanced chan struct{}        // closed and replaced when rev advances or the copy stops being live

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
		c.log.Warn("keyspace copy stopped; reads go to the database until it is loaded again", "err", err, "retry_in", wait)
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
	keys, live, err := c.load(ctx, rev)
	if err != nil {
		return fmt.Errorf("load keyspace copy at revision %d: %w", rev, err)
	}
	// The watch's context is the copy's: stop() closes it.
	w, err := c.hub.Watch(ctx, replication.WatchRequest{Range: all, StartRevision: rev + 1})
	if err != nil {
		return fmt.Errorf("watch for keyspace copy from revision %d: %w", rev+1, err)
	}
	c.mu.Lock()
	c.keys, c.live, c.changes, c.history, c.floor, c.rev, c.watcher = keys, live, nil, 0, rev, rev, w
	c.wakeLocked()
	c.mu.Unlock()
	c.log.Info("keyspace copy loaded", "keys", live, "revision", rev)
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
func (c *Copy) load(ctx context.Context, rev int64) (*btree.BTreeG[*entry], int, error) {
	keys := btree.NewG(degree, entryLess)
	req := store.RangeRequest{KeyRange: all, Revision: rev, Limit: loadPage, NoCount: true}
	for {
		res, err := c.store.Range(ctx, req)
		if err != nil {
			return nil, 0, err
		}
		for _, kv := range res.KVs {
			keys.ReplaceOrInsert(&entry{kv: kv})
		}
		if !res.More || len(res.KVs) == 0 {
			return keys, keys.Len(), nil
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
		// The event's bytes are the hub's, shared with every watcher and
		// never written: Range hands out copies.
		e := &entry{kv: store.KeyValue{Key: ev.Key, ModRevision: ev.Revision}}
		if ev.Type == replication.EventDelete {
			e.deleted = true
			c.history += e.size()
		} else {
			e.kv.Value, e.kv.CreateRevision, e.kv.Version, e.kv.Lease = ev.Value, ev.CreateRevision, ev.Version, ev.Lease
			c.live++
		}
		if old, ok := c.keys.ReplaceOrInsert(e); ok {
			e.prev = old
			if !old.deleted {
				c.live--
				c.history += old.size() // a tombstone was counted as it came
			}
		}
		c.changes = append(c.changes, e)
	}
	if len(c.changes) > maxHistory || c.history > maxHistoryBytes {
		c.forgetLocked()
	}
	if resp.Revision > c.rev || mark {
		// A mark below what a read waits for still wakes it, to ask again.
		c.rev = max(c.rev, resp.Revision)
		c.wakeLocked()
	}
}

// forgetLocked forgets the oldest changes until at most half of
// maxHistory and of maxHistoryBytes are left; c.mu is held. Changes are
// applied in revision order, so a change's replaced version is the last
// the copy remembers of its key: it goes, and a tombstone still newest goes
// with its key. A read before such a change cannot know what the key
// held, so the floor rises to it.
func (c *Copy) forgetLocked() {
	n := 0
	for ; n < len(c.changes) && (len(c.changes)-n > maxHistory/2 || c.history > maxHistoryBytes/2); n++ {
		e := c.changes[n]
		if e.prev != nil {
			c.history -= e.prev.size()
			e.prev = nil
			c.floor = max(c.floor, e.kv.ModRevision)
		}
		if cur, ok := c.keys.Get(e); e.deleted && ok && cur == e {
			c.history -= e.size()
			c.keys.Delete(e)
			c.floor = max(c.floor, e.kv.ModRevision)
		}
	}
	clear(c.changes[:n])
	c.changes = slices.Delete(c.changes, 0, n)
}

// stop drops the copy's keys and wakes the reads waiting for it.
func (c *Copy) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watcher != nil {
		c.watcher.Close()
	}
	c.keys, c.live, c.changes, c.history, c.floor, c.rev, c.watcher = nil, 0, nil, 0, 0, 0, nil
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
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.keys != nil
}

// Keys returns how many keys the copy holds; 0 while it is not live.
func (c *Copy) Keys() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.live
}

// Served returns how many reads the copy has answered.
func (c *Copy) Served() uint64 { return c.served.Load() }

// Range reads req from the copy. At the latest revision (req.Revision 0)
// it reads the current revision, waits until the copy holds it, and
// answers at the copy's revision, at or above it; ctx bounds the wait. At
// a revision req names, see rangeAt. It fails with ErrNotLive when the
// copy cannot answer (also when it stops while the read waits), for a
// request the store refuses (a bad key or limit, a compacted or future
// revision), whose error the store words, and for one key at a named
// revision, which the store reads in one statement anyway: the caller
// reads the store.
func (c *Copy) Range(ctx context.Context, req store.RangeRequest) (store.RangeResponse, error) {
	if req.Revision < 0 || req.Limit < 0 || req.Revision > 0 && req.IsSingleKey() || c.store.CheckRange(req.KeyRange) != nil {
		return store.RangeResponse{}, ErrNotLive
	}
	// Not live: no round trip spent before the store's own.
	if !c.Live() || !c.hub.Streaming() {
		return store.RangeResponse{}, ErrNotLive
	}
	if req.Revision != 0 {
		return c.rangeAt(ctx, req)
	}
	cur, err := c.store.CurrentRevision(ctx)
	if err != nil {
		return store.RangeResponse{}, err
	}
	for {
		c.mu.RLock()
		keys, rev, w, advanced := c.keys, c.rev, c.watcher, c.advanced
		if keys != nil && rev >= cur {
			res, _ := c.readLocked(req) // at the copy's revision: always known
			c.mu.RUnlock()
			own(res.KVs)
			c.served.Add(1)
			return res, nil
		}
		c.mu.RUnlock()
		if keys == nil {
			return store.RangeResponse{}, ErrNotLive
		}
		if err := c.await(ctx, w, cur, advanced); err != nil {
			return store.RangeResponse{}, fmt.Errorf("%w: at %d, current %d: %w", ErrBehind, rev, cur, err)
		}
	}
}

// rangeAt answers a range at the revision req names, which the copy holds
// when that revision is at or below the copy's and at or above its floor.
// That answer never changes, so it needs no wait: the one statement after
// it reads what the store checks in its own snapshot, the compacted
// revision, and the current one for the answer's header.
func (c *Copy) rangeAt(ctx context.Context, req store.RangeRequest) (store.RangeResponse, error) {
	c.mu.RLock()
	if c.keys == nil || c.rev < req.Revision {
		c.mu.RUnlock()
		return store.RangeResponse{}, ErrNotLive
	}
	res, ok := c.readLocked(req)
	c.mu.RUnlock()
	if !ok {
		return store.RangeResponse{}, fmt.Errorf("keyspace copy does not hold %q..%q at revision %d: %w", req.Key, req.End, req.Revision, ErrNotLive)
	}
	cur, compacted, err := c.store.Revision(ctx)
	if err != nil {
		return store.RangeResponse{}, err
	}
	if req.Revision < compacted || req.Revision > cur {
		return store.RangeResponse{}, ErrNotLive
	}
	res.Current = cur
	own(res.KVs)
	c.served.Add(1)
	return res, nil
}

// readLocked answers req as the store would at req.Revision, or at the
// copy's revision for 0, with the copy's revision as the current one; c.mu
// is held, the copy is live and holds req.Revision. ok is false when the
// revision is below the copy's floor, where it no longer knows what the
// keys held. The key values are the copy's, for the caller to copy.
func (c *Copy) readLocked(req store.RangeRequest) (res store.RangeResponse, ok bool) {
	at := req.Revision
	if at == 0 {
		at = c.rev
	}
	if at < c.floor {
		return res, false
	}
	res = store.RangeResponse{Revision: at, Current: c.rev, KVs: []store.KeyValue{}}
	// As the store's: a page at a named revision that the limit cuts short
	// goes uncounted when asked; every other read is counted.
	counted := !req.NoCount || req.Revision == 0
	visit := func(e *entry) bool {
		switch e = e.at(at); {
		case e == nil || e.deleted:
			return true
		case req.CountOnly:
		case req.Limit > 0 && int64(len(res.KVs)) == req.Limit:
			res.More = true
			if !counted {
				return false
			}
		default:
			res.KVs = append(res.KVs, e.kv)
		}
		res.Count++
		return true
	}
	from := &entry{kv: store.KeyValue{Key: req.Key}}
	switch {
	case req.IsSingleKey():
		if e, found := c.keys.Get(from); found {
			visit(e)
		}
	case req.IsOpenEnded():
		c.keys.AscendGreaterOrEqual(from, visit)
	default:
		c.keys.AscendRange(from, &entry{kv: store.KeyValue{Key: req.End}}, visit)
	}
	if res.More && !counted {
		res.Count = 0
	}
	return res, true
}

// own gives kvs keys and values of their own, in one allocation.
func own(kvs []store.KeyValue) {
	n := 0
	for _, kv := range kvs {
		n += len(kv.Key) + len(kv.Value)
	}
	buf := make([]byte, 0, n)
	for i := range kvs {
		kv := &kvs[i]
		start := len(buf)
		buf = append(buf, kv.Key...)
		kv.Key = buf[start:len(buf):len(buf)]
		if kv.Value != nil {
			start = len(buf)
			buf = append(buf, kv.Value...)
			kv.Value = buf[start:len(buf):len(buf)]
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

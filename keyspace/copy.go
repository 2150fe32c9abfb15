// Package keyspace keeps a copy of the latest keyspace in memory, in key
// order, fed by one watch on every key, so that a linearizable read asks
// PostgreSQL only for the current revision, in one statement shared by
// every read of the latest revision waiting at the moment
// (store.CurrentRevision), and answers from memory once the copy holds that
// revision. It is what etcd's members do with their in-memory index, and
// costs the keyspace's latest values, and a bounded history of the versions
// they replaced, in every process that keeps a copy.
//
// The copy also keeps the versions that the latest changes replaced, and
// the keys deleted lately as tombstones, so it answers a range at an older
// revision as long as it still holds the version of each key of the range
// at that revision: the pages of a list after its first, which Kubernetes
// reads at the first page's revision, also while the list's keys are being
// written.
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
	// maxTombstones is how many deleted keys the copy remembers. Past it,
	// the older half is forgotten, and reads before their deletes go to
	// the store.
	maxTombstones = 1 << 14
	// maxHistory and maxHistoryBytes bound the versions that later changes
	// replaced which the copy remembers: how many, and their keys' and
	// values' bytes. Past either, the oldest half is forgotten, and a read
	// of a key before the change that replaced a forgotten version goes to
	// the store. etcd keeps every version until a compaction, in its
	// database file; these are in the Go heap, so they are bounded to
	// seconds of a kilobyte's puts at thousands a second, and minutes at
	// tens, where a list of 5,000 keys takes tens of milliseconds.
	maxHistory      = 1 << 16
	maxHistoryBytes = 16 << 20
	// degree is the B-tree's, as etcd's index's (a fork of the same B-tree).
	degree = 32
	// visibleEvery is how often, while the hub settles revisions that no
	// read has had checked visible, the copy has it check them
	// (Hub.ReadRevision). A read of the latest revision waits for its
	// revision to be visible (Hub.WaitFor), which checks every revision
	// since the last check, one statement for each 10,000 (3 ms for
	// 10,000 on a table of 200,000 rows): after a burst of writes that no
	// read followed, the next read would pay for all of them. (The
	// 110-270 ms first pages that led to this were mostly PostgreSQL's
	// JIT compiling the check, since mended in replication/visibility.go.)
	visibleEvery = 50 * time.Millisecond
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
// is the version it replaced while the copy remembers it, and cut says it
// forgot it. Only prev and cut are ever written (under the lock), so a
// reader may hold an entry's kv after the lock.
type entry struct {
	kv      store.KeyValue
	deleted bool
	cut     bool
	prev    *entry
}

// at returns the version of e's key at rev: the newest at or below it, or
// nil when the key had none. known is false when the copy forgot it.
func (e *entry) at(rev int64) (v *entry, known bool) {
	for v = e; v != nil; v = v.prev {
		if v.kv.ModRevision <= rev {
			return v, true
		}
		if v.cut {
			return nil, false
		}
	}
	return nil, true
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

	mu    sync.RWMutex
	keys  *btree.BTreeG[*entry] // nil while not live
	live  int                   // entries of keys that are not tombstones
	tombs []*entry              // the tombstones put in keys, oldest first; a later put may have replaced some
	// replacers are the versions that replaced another, oldest first,
	// while the copy remembers the version replaced (prev); history is
	// the bytes of those.
	replacers []*entry
	history   int
	// floor is the oldest revision the copy answers at: the one it was
	// loaded at, or the newest tombstone it forgot.
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
	c.keys, c.live, c.tombs, c.replacers, c.history, c.floor, c.rev, c.watcher = keys, live, nil, nil, 0, rev, rev, w
	c.wakeLocked()
	c.mu.Unlock()
	c.log.Info("keyspace copy loaded", "keys", live, "revision", rev)
	vctx, stopVisible := context.WithCancel(ctx)
	var visible sync.WaitGroup
	visible.Go(func() { c.keepVisible(vctx) })
	defer visible.Wait()
	defer stopVisible()
	for resp := range w.C {
		if resp.Canceled {
			break // w.Err says why
		}
		c.apply(resp)
	}
	return fmt.Errorf("%w: %w", errFollowed, w.Err())
}

// keepVisible has the hub check the revisions it settled visible every
// visibleEvery while there are any it has not, until ctx ends.
func (c *Copy) keepVisible(ctx context.Context) {
	t := time.NewTicker(visibleEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		if c.hub.Visible() >= c.hub.Watermark() {
			continue
		}
		// A failure (PostgreSQL away) leaves the next read's wait to
		// check; the hub and the reads report it.
		_, _ = c.hub.ReadRevision(ctx)
	}
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
			c.tombs = append(c.tombs, e)
		} else {
			e.kv.Value, e.kv.CreateRevision, e.kv.Version, e.kv.Lease = ev.Value, ev.CreateRevision, ev.Version, ev.Lease
			c.live++
		}
		if old, ok := c.keys.ReplaceOrInsert(e); ok {
			if !old.deleted {
				c.live--
			}
			e.prev = old
			c.replacers = append(c.replacers, e)
			c.history += old.size()
		}
	}
	if len(c.tombs) > maxTombstones {
		c.forgetTombstonesLocked(len(c.tombs) - maxTombstones/2)
	}
	if len(c.replacers) > maxHistory || c.history > maxHistoryBytes {
		c.forgetVersionsLocked()
	}
	if resp.Revision > c.rev || mark {
		// A mark below what a read waits for still wakes it, to ask again.
		c.rev = max(c.rev, resp.Revision)
		c.wakeLocked()
	}
}

// forgetTombstonesLocked drops the n oldest tombstones; c.mu is held. A
// read before a forgotten delete cannot know that its key was there, so
// the floor rises to it.
func (c *Copy) forgetTombstonesLocked(n int) {
	for _, t := range c.tombs[:n] {
		if cur, ok := c.keys.Get(t); ok && cur == t {
			c.keys.Delete(t)
			c.floor = max(c.floor, t.kv.ModRevision)
		}
	}
	clear(c.tombs[:n])
	c.tombs = slices.Delete(c.tombs, 0, n)
}

// forgetVersionsLocked forgets the oldest replaced versions until at most
// half of maxHistory and of maxHistoryBytes are left; c.mu is held.
// Changes are applied in revision order, so the oldest replaced version
// the copy remembers is the last it remembers of its key: cutting it
// leaves the rest of the key's versions, and every other key's, known.
func (c *Copy) forgetVersionsLocked() {
	n := 0
	for ; n < len(c.replacers) && (len(c.replacers)-n > maxHistory/2 || c.history > maxHistoryBytes/2); n++ {
		e := c.replacers[n]
		c.history -= e.prev.size()
		e.prev, e.cut = nil, true
	}
	clear(c.replacers[:n])
	c.replacers = slices.Delete(c.replacers, 0, n)
}

// stop drops the copy's keys and wakes the reads waiting for it.
func (c *Copy) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watcher != nil {
		c.watcher.Close()
	}
	c.keys, c.live, c.tombs, c.replacers, c.history, c.floor, c.rev, c.watcher = nil, 0, nil, nil, 0, 0, 0, nil
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

// HistoryBytes returns the bytes of the keys and values of the replaced
// versions the copy remembers.
func (c *Copy) HistoryBytes() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.history
}

// Served returns how many reads the copy has answered.
func (c *Copy) Served() uint64 { return c.served.Load() }

// Range reads req from the copy. At the latest revision (req.Revision 0)
// it reads the current revision, waits until it is visible and the copy
// holds it, and answers at the newest revision the copy holds that is
// visible, at or above it; ctx bounds the wait. At
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
	// The answer holds only what every session can see: a write flushed
	// and decoded but not yet visible would show here before a read
	// elsewhere, begun after this one ended, could see it (test/chaos,
	// seed 3221483427576925: a Txn found 269 current after the copy had
	// answered at 270).
	if c.hub.Visible() < cur {
		if err := c.hub.WaitFor(ctx, cur); err != nil {
			return store.RangeResponse{}, fmt.Errorf("%w: current %d not yet visible: %w", ErrBehind, cur, err)
		}
	}
	for {
		visible := c.hub.Visible() // at or above cur from here on
		c.mu.RLock()
		keys, rev, w, advanced := c.keys, c.rev, c.watcher, c.advanced
		if keys != nil && rev >= cur {
			at := min(rev, visible)
			res, ok := c.readAtLocked(req, at)
			c.mu.RUnlock()
			if !ok {
				return store.RangeResponse{}, fmt.Errorf("keyspace copy does not hold %q..%q at revision %d: %w", req.Key, req.End, at, ErrNotLive)
			}
			res.Current = at
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
// when the hub has checked that revision visible, it is at or below the
// copy's and at or above its floor,
// and it remembers the version at that revision of every key of the
// range, live or deleted. That answer never changes, so it needs no wait:
// the one statement after it reads what the store checks in its own
// snapshot, the compacted revision, and the current one for the answer's
// header.
func (c *Copy) rangeAt(ctx context.Context, req store.RangeRequest) (store.RangeResponse, error) {
	if req.Revision > c.hub.Visible() {
		return store.RangeResponse{}, ErrNotLive // the store waits until it is visible
	}
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
// copy no longer knows what a key of the range held at that revision. The
// key values are the copy's, for the caller to copy.
func (c *Copy) readLocked(req store.RangeRequest) (res store.RangeResponse, ok bool) {
	at := req.Revision
	if at == 0 {
		at = c.rev
	}
	return c.readAtLocked(req, at)
}

// readAtLocked is readLocked at revision at, which the copy holds; a read
// of the latest revision (req.Revision 0) is counted as the store counts
// one.
func (c *Copy) readAtLocked(req store.RangeRequest, at int64) (res store.RangeResponse, ok bool) {
	if at < c.floor {
		return res, false
	}
	res = store.RangeResponse{Revision: at, Current: c.rev, KVs: []store.KeyValue{}}
	// As the store's: a page at a named revision that the limit cuts short
	// goes uncounted when asked; every other read is counted.
	counted := !req.NoCount || req.Revision == 0
	ok = true
	visit := func(e *entry) bool {
		e, known := e.at(at)
		switch {
		case !known:
			ok = false
			return false
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
	return res, ok
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
		// Range has waited for cur already, so only a failover that
		// took the watermark back below it lands here.
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

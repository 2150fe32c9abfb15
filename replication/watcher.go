package replication

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/walwatch/walwatch/store"
)

// Tunables of the watcher groups, after etcd's watchable store.
var (
	// chanBufLen is how many responses a watcher's channel holds before the
	// watcher counts as too slow and leaves the live group. Every slot costs
	// every watcher, idle or not, a WatchResponse (64 bytes): 16 keep an
	// idle one under 2 KiB (TestIdleWatcherMemory); a reader further behind
	// catches up from the window, as a slow one always has.
	chanBufLen = 16
	// maxWatchersPerSync bounds how many catching-up watchers one round of
	// syncWatchersLoop serves, so one round stays short.
	maxWatchersPerSync = 512
	// maxEventsPerResponse bounds a catch-up response (whole revisions are
	// never split, so one big revision may exceed it).
	maxEventsPerResponse = 1000
	// maxResponseBytes bounds the events of one response, live or catch-up,
	// by bytes (eventsSize), when Config.WatcherBytes is not smaller: a
	// release after a long-held revision may carry a whole reorder buffer.
	// Whole revisions are never split, so one big revision may exceed it.
	maxResponseBytes = 4 << 20
	// catchUpBackoffMax bounds the wait between catch-up reads while they
	// fail (PostgreSQL is down): the wait doubles from syncInterval.
	catchUpBackoffMax = time.Second
	// syncInterval is how often the catch-up and victim loops look for work
	// they were not woken for (etcd's watchResyncPeriod is 100ms; ours is
	// shorter because a catch-up here is one query, not a scan of bbolt).
	syncInterval = 10 * time.Millisecond
)

// watcher is the hub's side of one watch. Every field but the immutable
// ones is protected by Hub.mu, and every send on ch (or push on pull)
// happens under it, so a check for room stays true until the send.
type watcher struct {
	rng store.KeyRange
	// The responses not yet read: on ch, or on pull for a Notify watcher
	// (then ch is nil). Either holds at most chanBufLen.
	ch   chan WatchResponse
	pull *pullQueue
	// next is the first revision not yet delivered (or skipped as not
	// matching) to a watcher that is not live. A live one's is the
	// watermark's successor, or its start if that is later: it is written
	// down when the watcher leaves the live group.
	next         int64
	pending      *WatchResponse // a victim's response that did not fit in ch
	pendingBytes int            // its events' size
	err          error          // why the watch ended, once it has
	// sizes is a ring of the sizes (eventsSize) of the last cap(ch)
	// responses sent on ch; head is where the next one goes. ch is FIFO, so
	// the responses its reader has not taken are the last len(ch) sent, and
	// their bytes are the last len(ch) sizes: a bound on the bytes queued
	// for a watcher with no goroutine of its own. Until a response larger
	// than queueLimit.small is sent the ring is nil and costs nothing, as
	// for the many watchers that only ever get small responses: a full
	// channel of those stays within the limit, so slots alone bound them.
	sizes    []int32
	head     int32
	progress bool
	closed   bool
	notify   func() // WatchRequest.Notify; nil: none
	// unwatch ends the watch's hold on its context: one Closed early must
	// not stay in the children of a context that lives on (an etcd watch
	// stream's, with watchers created and canceled on it for days).
	unwatch func() bool
}

// pullQueue holds the responses of a watcher read with Watcher.Drain when
// its Notify says so. Unlike a channel it costs nothing while empty: a
// channel of chanBufLen responses is 1.1 KiB, most of an idle watcher, and
// one stream multiplexes thousands of idle watchers (issue 17, target 9).
type pullQueue struct {
	mu    sync.Mutex
	resps []WatchResponse
	ended bool // the watch ended after resps
}

// pullKeep is the most responses a drained pullQueue keeps room for, so
// that a burst does not cost a watcher its backing array for good.
const pullKeep = 4

func (q *pullQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.resps)
}

// push queues resp unless ended or more than limit would be queued, and
// reports whether it did.
func (q *pullQueue) push(resp WatchResponse, limit int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ended || len(q.resps) >= limit {
		return false
	}
	q.resps = append(q.resps, resp)
	return true
}

func (q *pullQueue) end() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
}

func (q *pullQueue) drain(dst []WatchResponse) ([]WatchResponse, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = append(dst, q.resps...)
	clear(q.resps) // keep no events alive
	if cap(q.resps) > pullKeep {
		q.resps = nil
	} else {
		q.resps = q.resps[:0]
	}
	return dst, q.ended
}

// length is how many responses are queued and not yet read. The reader may
// take some meanwhile: that only makes the answer too high.
func (wt *watcher) length() int {
	if wt.pull != nil {
		return wt.pull.len()
	}
	return len(wt.ch)
}

// capacity is how many responses may be queued at once.
func (wt *watcher) capacity() int {
	if wt.pull != nil {
		return chanBufLen
	}
	return cap(wt.ch)
}

// offer queues resp if there is a free slot, and reports whether it did.
func (wt *watcher) offer(resp WatchResponse) bool {
	if wt.pull != nil {
		return wt.pull.push(resp, chanBufLen)
	}
	select {
	case wt.ch <- resp:
		return true
	default:
		return false
	}
}

// closeQueue tells the reader that nothing follows what is queued.
func (wt *watcher) closeQueue() {
	if wt.pull != nil {
		wt.pull.end()
		return
	}
	close(wt.ch)
}

// queueLimit bounds the bytes queued for a watcher (Config.WatcherBytes).
// small is the largest response of which chanBufLen, a full channel, stay
// within it.
type queueLimit struct{ bytes, small int }

func newQueueLimit(bytes int) queueLimit { return queueLimit{bytes: bytes, small: bytes / chanBufLen} }

// queued returns at least the bytes of the responses in ch not yet read:
// exactly while sizes are recorded, else len(ch) small ones. The reader may
// take one meanwhile: that only makes the answer too high.
func (wt *watcher) queued(q queueLimit) int {
	n := wt.length()
	if wt.sizes == nil {
		return n * q.small
	}
	total, i := 0, int(wt.head)
	for range n {
		if i--; i < 0 {
			i = len(wt.sizes) - 1
		}
		total += int(wt.sizes[i])
	}
	return total
}

// room returns how many bytes of events wt can be sent now: none with no
// free slot in ch, all of q.bytes with ch empty (and then a larger revision
// may go too, alone).
func (wt *watcher) room(q queueLimit) int {
	switch n := wt.length(); {
	case n == wt.capacity():
		return 0
	case n == 0:
		return q.bytes
	}
	return q.bytes - wt.queued(q)
}

// tell calls the watcher's Notify, if it has one.
func (wt *watcher) tell() {
	if wt.notify != nil {
		wt.notify()
	}
}

// trySend sends resp, of size bytes, if ch has a free slot and is empty or
// keeps within q.bytes with it, and reports whether it did.
func (wt *watcher) trySend(resp WatchResponse, size int, q queueLimit) bool {
	if wt.sizes == nil && size <= q.small {
		// Everything queued is small too, and a full channel of small
		// responses is within the bound: a free slot is room enough. The
		// common case, at the cost of the plain send it always was.
		if !wt.offer(resp) {
			return false
		}
		wt.tell()
		return true
	}
	if n := wt.length(); n == wt.capacity() || n > 0 && wt.queued(q)+size > q.bytes {
		return false
	}
	if wt.sizes == nil {
		// The first large response: record sizes from now on. Those
		// queued were small; count them as the largest small one.
		wt.sizes = make([]int32, wt.capacity())
		for i := range wt.sizes {
			wt.sizes[i] = int32(min(q.small, math.MaxInt32))
		}
	}
	wt.sizes[wt.head] = int32(min(size, math.MaxInt32))
	if wt.head++; int(wt.head) == len(wt.sizes) {
		wt.head = 0
	}
	wt.offer(resp) // there is a free slot, and only the hub adds to it
	wt.tell()
	return true
}

type watcherSet map[*watcher]struct{}

// Watcher is one watch: read C until it is closed, then Err says why; a
// Notify watcher without PrevKV has no C and is read with Drain. Events
// share their byte slices with other watchers: do not modify them.
type Watcher struct {
	C   <-chan WatchResponse
	hub *Hub
	w   *watcher
}

// ErrWatcherClosed is Err after Close.
var ErrWatcherClosed = errors.New("watcher closed")

// Drain appends the responses queued for the watcher to dst without
// waiting, and reports whether the watch has ended after them (then Err
// says why). It is how a Notify watcher is read when notified, whether it
// has a C or not.
func (w *Watcher) Drain(dst []WatchResponse) ([]WatchResponse, bool) {
	if w.C == nil {
		return w.w.pull.drain(dst)
	}
	for {
		select {
		case resp, ok := <-w.C:
			if !ok {
				return dst, true
			}
			dst = append(dst, resp)
		default:
			return dst, false
		}
	}
}

// Close ends the watch.
func (w *Watcher) Close() { w.hub.cancel(w.w, ErrWatcherClosed) }

// Err returns why the watch ended, once C is closed.
func (w *Watcher) Err() error {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	return w.w.err
}

// Watch starts a watch. A start revision below the compacted one fails with
// a *store.CompactedError; a future one waits for its revision. The watch
// ends when ctx ends, Close is called, or the hub stops.
func (h *Hub) Watch(ctx context.Context, req WatchRequest) (*Watcher, error) {
	if len(req.Range.Key) == 0 {
		return nil, store.ErrEmptyKey
	}
	if req.StartRevision < 0 {
		return nil, fmt.Errorf("%w: %d: must be 0 (now) or positive", store.ErrInvalidRevision, req.StartRevision)
	}
	select {
	case <-h.ready:
	case <-h.stopped:
		return nil, h.stopError()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if req.StartRevision > 0 {
		var compacted int64
		if err := h.cfg.Pool.QueryRow(ctx, "select walwatch.compact_revision()").Scan(&compacted); err != nil {
			return nil, fmt.Errorf("watch: read compacted revision: %w", err)
		}
		if req.StartRevision < compacted {
			return nil, &store.CompactedError{Revision: req.StartRevision, CompactRevision: compacted}
		}
	}
	wt := &watcher{rng: req.Range, progress: req.ProgressNotify, next: req.StartRevision}
	if req.Notify != nil && !req.PrevKV {
		wt.pull, wt.notify = &pullQueue{}, req.Notify
	} else {
		// With PrevKV, ch's reader is withPrevKV's goroutine, and it
		// tells the caller.
		wt.ch = make(chan WatchResponse, chanBufLen)
	}
	h.mu.Lock()
	if h.closed != nil {
		err := h.closed
		h.mu.Unlock()
		return nil, err
	}
	if wt.next == 0 {
		wt.next = h.order.watermark + 1
	}
	if wt.next > h.order.watermark {
		h.synced.add(wt)
	} else {
		h.unsynced[wt] = struct{}{}
	}
	h.metrics.watchers(h.synced.len() + len(h.unsynced) + len(h.victims))
	// Under mu, so that cancelLocked finds it; if ctx has ended already,
	// the cancel waits for mu.
	wt.unwatch = context.AfterFunc(ctx, func() { h.cancel(wt, ctx.Err()) })
	h.mu.Unlock()
	h.wake()

	pub := &Watcher{C: wt.ch, hub: h, w: wt}
	if req.PrevKV {
		pub.C = h.withPrevKV(ctx, wt, req.Notify)
	}
	return pub, nil
}

// cancel ends a watch with err, telling the watcher why when there is room.
func (h *Hub) cancel(wt *watcher, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cancelLocked(wt, err)
}

func (h *Hub) cancelLocked(wt *watcher, err error) {
	if wt.closed {
		return
	}
	h.synced.delete(wt)
	delete(h.unsynced, wt)
	delete(h.victims, wt)
	wt.closed, wt.err = true, err
	if wt.unwatch != nil {
		wt.unwatch()
	}
	if !errors.Is(err, ErrWatcherClosed) && !errors.Is(err, context.Canceled) {
		resp := WatchResponse{Canceled: true, Err: err}
		var (
			ce *store.CompactedError
			hc *HistoryChangedError
		)
		switch {
		case errors.As(err, &ce):
			resp.CompactRevision = ce.CompactRevision
		case errors.As(err, &hc):
			// As etcd's compacted cancel: clients re-list. The first
			// revision of the new history a watch gets.
			resp.CompactRevision = hc.Revision + 1
		}
		wt.offer(resp)
	}
	wt.closeQueue()
	wt.tell()
	h.metrics.watchers(h.synced.len() + len(h.unsynced) + len(h.victims))
}

// closeWatchers ends every watch, and any later one, with reason: the hub
// has stopped.
func (h *Hub) closeWatchers(reason error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = reason
	h.synced.each(func(wt *watcher) { h.cancelLocked(wt, reason) })
	for _, set := range []watcherSet{h.unsynced, h.victims} {
		for wt := range set {
			h.cancelLocked(wt, reason)
		}
	}
}

// stopError is why the hub stopped, once Stopped is closed: ErrHubStopped,
// or an error wrapping it and Run's failure.
func (h *Hub) stopError() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed == nil {
		return ErrHubStopped
	}
	return h.closed
}

func (h *Hub) wake() {
	select {
	case h.wakeSync <- struct{}{}:
	default:
	}
}

// matching returns the events of revs at or above from that fall in rng.
// all is every event of revs (or nil): when they all match, it is returned
// itself rather than a copy.
func matching(rng store.KeyRange, from int64, revs []revEvents, all []Event) []Event {
	n := 0
	for _, re := range revs {
		if re.rev >= from {
			for i := range re.events {
				if rng.Contains(re.events[i].Key) {
					n++
				}
			}
		}
	}
	if n == 0 {
		return nil
	}
	if n == len(all) {
		return all
	}
	out := make([]Event, 0, n)
	for _, re := range revs {
		if re.rev >= from {
			for i := range re.events {
				if rng.Contains(re.events[i].Key) {
					out = append(out, re.events[i])
				}
			}
		}
	}
	return out
}

// release publishes revisions that just became settled, as the watermark
// moved past them (advance, which holds mu): they join the window and go to
// every live watcher, in runs of at most a response's bytes. A watcher with
// no room for its response (a full channel, or too many bytes queued)
// becomes a victim instead of holding anyone up. A run of spilled revisions
// (released without their values) sends the live watchers it concerns to
// catch up from the table, and moves the window past it.
func (h *Hub) release(revs []revEvents) {
	caughtUp := false
	for len(revs) > 0 {
		n, size := 1, revs[0].bytes
		for n < len(revs) && revs[n].spilled == revs[0].spilled &&
			(revs[0].spilled || size+revs[n].bytes <= h.responseBytes) {
			size += revs[n].bytes
			n++
		}
		run := revs[:n]
		revs = revs[n:]
		if run[0].spilled {
			h.window.skip(run[n-1].rev)
			if h.leaveForTable(run) {
				caughtUp = true
			}
			continue
		}
		for _, re := range run {
			h.window.add(re)
		}
		h.deliver(run)
	}
	close(h.advanced)
	h.advanced = make(chan struct{})
	h.metrics.windowSize(h.window.bytes)
	if caughtUp {
		h.wake()
	}
}

// deliver sends the events of run, released revisions with their values, to
// every live watcher they concern.
func (h *Hub) deliver(run []revEvents) {
	last := run[len(run)-1].rev
	// A live watcher's next revision is the watermark's successor (or its
	// future start): it is only written down when the watcher leaves.
	h.deliveries = h.synced.matches(h.deliveries[:0], run)
	// Watchers of one prefix or key share their events' slice: size it once.
	var (
		sizedFirst *Event
		sizedLen   int
		sized      int
	)
	for _, d := range h.deliveries {
		if &d.evs[0] != sizedFirst || len(d.evs) != sizedLen {
			sizedFirst, sizedLen, sized = &d.evs[0], len(d.evs), eventsSize(d.evs)
		}
		resp := WatchResponse{Events: d.evs, Revision: d.evs[len(d.evs)-1].Revision}
		if d.wt.trySend(resp, sized, h.queue) {
			continue
		}
		h.synced.delete(d.wt)
		d.wt.next = max(d.wt.next, last+1)
		pending := resp // a copy, so resp stays off the heap for every other watcher
		d.wt.pending, d.wt.pendingBytes = &pending, sized
		h.victims[d.wt] = struct{}{}
		h.metrics.victim()
	}
	clear(h.deliveries) // keep no watcher or event alive until the next release
}

// leaveForTable moves the live watchers that a run of spilled revisions
// concerns to the catching-up set, from the first of its revisions they
// match: everything before it has been delivered to them, and the table
// holds the rest. It reports whether it moved any.
func (h *Hub) leaveForTable(run []revEvents) bool {
	h.deliveries = h.synced.matches(h.deliveries[:0], run)
	moved := len(h.deliveries) > 0
	for _, d := range h.deliveries {
		h.synced.delete(d.wt)
		d.wt.next = max(d.wt.next, d.evs[0].Revision)
		h.unsynced[d.wt] = struct{}{}
	}
	clear(h.deliveries)
	return moved
}

// syncVictimsLoop retries the responses of watchers that were too slow;
// once one is delivered, the watcher catches up (or goes live again).
func (h *Hub) syncVictimsLoop(ctx context.Context) {
	every(ctx, syncInterval, func() {
		h.mu.Lock()
		for wt := range h.victims {
			if !wt.trySend(*wt.pending, wt.pendingBytes, h.queue) {
				continue
			}
			wt.pending, wt.pendingBytes = nil, 0
			delete(h.victims, wt)
			if wt.next > h.order.watermark {
				h.synced.add(wt)
			} else {
				h.unsynced[wt] = struct{}{}
			}
		}
		h.mu.Unlock()
		h.wake()
	})
}

// syncWatchersLoop serves watchers that are behind, from the window when it
// reaches back far enough and from the table when not, until they are live.
func (h *Hub) syncWatchersLoop(ctx context.Context) {
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	var backoff time.Duration // after a failed catch-up read
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.wakeSync:
		}
		h.mu.Lock()
		batch := make([]*watcher, 0, min(len(h.unsynced), maxWatchersPerSync))
		for wt := range h.unsynced {
			if len(batch) == maxWatchersPerSync {
				break
			}
			batch = append(batch, wt)
		}
		h.mu.Unlock()
		more := false
		var err error
		for _, wt := range batch {
			var behind bool
			if behind, err = h.syncWatcher(ctx, wt); err != nil {
				break // the table is unreachable for the rest too
			}
			more = more || behind
		}
		if err != nil {
			if err := setupFailure(err); err != nil {
				h.fail(err)
				return
			}
			// Back off: without it, each watcher behind would query a
			// PostgreSQL that is down every syncInterval.
			h.troubles.catchUp.failed(err)
			backoff = min(max(2*backoff, syncInterval), catchUpBackoffMax)
			if !sleep(ctx, backoff) {
				return
			}
			h.wake()
			continue
		}
		if backoff > 0 {
			backoff = 0
			h.troubles.catchUp.ok()
		}
		if more {
			h.wake()
		}
	}
}

// syncWatcher sends one catch-up response to wt if it has room, and reports
// whether it is still behind. The response takes at most the room wt has
// (whole revisions, at least one). err is a table read that failed, to retry.
func (h *Hub) syncWatcher(ctx context.Context, wt *watcher) (behind bool, err error) {
	h.mu.Lock()
	room := wt.room(h.queue)
	if _, ok := h.unsynced[wt]; !ok || room <= 0 {
		h.mu.Unlock()
		return false, nil
	}
	limit := min(room, h.responseBytes)
	w := h.order.watermark
	if wt.next > w {
		delete(h.unsynced, wt)
		h.synced.add(wt)
		h.mu.Unlock()
		return false, nil
	}
	if h.window.covers(wt.next) {
		revs, all := h.window.since(wt.next, maxEventsPerResponse, limit)
		next := w + 1
		if !all {
			next = revs[len(revs)-1].rev + 1
		}
		h.deliverLocked(wt, matching(wt.rng, wt.next, revs, nil), next)
		behind := wt.next <= w
		h.mu.Unlock()
		return behind, nil
	}
	from := wt.next
	h.mu.Unlock()

	// Read the table only as far as every transaction is visible: a read
	// past one that has committed but is not visible yet would skip it for
	// good.
	upto, err := h.visible.upTo(ctx, w)
	if err == nil && upto < from {
		return false, nil // not visible yet: try again on the next tick
	}
	var (
		evs  []Event
		next int64
	)
	if err == nil {
		evs, next, err = h.readChanges(ctx, wt.rng, from, upto, limit)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.unsynced[wt]; !ok || wt.next != from {
		return false, nil
	}
	if err != nil {
		if errors.Is(err, store.ErrCompacted) {
			h.cancelLocked(wt, err)
			return false, nil
		}
		if ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("catch up from revision %d: %w", from, err)
	}
	h.deliverLocked(wt, evs, next)
	return true, nil
}

// deliverLocked sends evs and moves wt on to next; a watcher past the
// watermark goes live. Room was checked, but a revision larger than the room
// left comes whole: if it does not fit, it waits as a victim's response
// until wt's reader has taken what is queued.
func (h *Hub) deliverLocked(wt *watcher, evs []Event, next int64) {
	wt.next = next
	if len(evs) > 0 {
		resp := WatchResponse{Events: evs, Revision: evs[len(evs)-1].Revision}
		size := eventsSize(evs)
		h.metrics.caughtUp(len(evs))
		if !wt.trySend(resp, size, h.queue) {
			delete(h.unsynced, wt)
			wt.pending, wt.pendingBytes = &resp, size
			h.victims[wt] = struct{}{}
			return
		}
	}
	if wt.next > h.order.watermark {
		delete(h.unsynced, wt)
		h.synced.add(wt)
	}
}

// readChanges reads the changes in rng from revision from up to upto from the
// table, whole revisions only, at most a page's rows and maxBytes bytes
// (but one revision whole, however large), and returns them with the next
// revision to read. A from below the compacted revision fails with a
// *store.CompactedError, as a read of the store does.
func (h *Hub) readChanges(ctx context.Context, rng store.KeyRange, from, upto int64, maxBytes int) ([]Event, int64, error) {
	read := tableRead{q: h.cfg.Pool, keys: &rng, after: from - 1, upto: upto, maxRows: pageRows, maxBytes: maxBytes,
		scratch: &h.catchUpScratch}
	var (
		page      []row
		compacted int64
		err       error
	)
	if rng.IsSingleKey() {
		page, compacted, err = read.next(ctx)
	} else {
		page, compacted, err = read.walkRevisions(ctx, h.cfg.Pool)
	}
	if err != nil {
		return nil, 0, err
	}
	if len(page) == 0 {
		// Nothing in the range, or compaction took it: ask, now. A
		// compaction since the read makes this answer too cautious,
		// never wrong: from is below the compacted revision either way.
		if err := h.cfg.Pool.QueryRow(ctx, "select walwatch.compact_revision()").Scan(&compacted); err != nil {
			return nil, 0, fmt.Errorf("read changes after revision %d: compacted revision: %w", from-1, err)
		}
	}
	if from < compacted {
		return nil, 0, &store.CompactedError{Revision: from, CompactRevision: compacted}
	}
	next := upto + 1
	if !read.done {
		next = read.after + 1
	}
	evs := make([]Event, len(page))
	for i := range page {
		evs[i] = page[i].event(0, time.Time{})
	}
	clear(page) // the scratch keeps no keys or values alive
	return evs, next, nil
}

// progressLoop sends progress marks to idle live watchers that asked for
// them: only when everything up to the watermark has been delivered.
func (h *Hub) progressLoop(ctx context.Context) {
	every(ctx, h.cfg.ProgressInterval, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		w := h.order.watermark
		h.synced.each(func(wt *watcher) {
			// Live, so everything up to the watermark has been sent, unless
			// the watcher starts in the future.
			if wt.progress && wt.next <= w+1 {
				wt.trySend(WatchResponse{Revision: w}, 0, h.queue)
			}
		})
	})
}

// withPrevKV forwards wt's responses with each event's previous key-value
// read from the table. It runs beside the hub, so the read never delays it:
// while it waits, wt's channel fills and the hub treats wt as slow.
func (h *Hub) withPrevKV(ctx context.Context, wt *watcher, notify func()) <-chan WatchResponse {
	// One slot, so that a send completes before notify tells the reader:
	// it receives without blocking.
	out := make(chan WatchResponse, 1)
	if notify == nil {
		notify = func() {}
	}
	send := func(resp WatchResponse) bool {
		select {
		case out <- resp:
			notify()
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() {
		defer notify()
		defer close(out)
		for resp := range wt.ch {
			resp.Events = slices.Clone(resp.Events) // other watchers may share the slice
			if err := h.attachPrevKVs(ctx, resp.Events); err != nil {
				h.cancel(wt, fmt.Errorf("watch: read previous values: %w", err))
				// Forward only the cancel: a progress mark queued behind
				// these events would tell the watcher it had them.
				for resp := range wt.ch {
					if resp.Canceled {
						send(resp)
					}
				}
				return
			}
			if !send(resp) {
				h.cancel(wt, ctx.Err())
				for range wt.ch {
				}
				return
			}
		}
	}()
	return out
}

// prevKVsSQL reads the rows at $1[i], $2[i], those that are no tombstone:
// a key put after its delete had no previous value, as in etcd. The pairs
// come from generate_subscripts, not unnest, whose row estimate (the
// arrays' length) would have PostgreSQL plan each call afresh for good
// once a connection's first five calls had few events: a plan took 0.16 ms
// where running it took 0.04. The lateral LIMIT keeps the plan a nested
// loop over the index whatever the estimate.
const prevKVsSQL = `select k.key, k.value, k.create_revision, k.revision, k.version
  from generate_subscripts($1::bytea[], 1) p(i)
  cross join lateral (select * from walwatch.kv k
                       where k.key = ($1::bytea[])[p.i] and k.revision = ($2::bigint[])[p.i] limit 1) k
 where not k.tombstone`

func (h *Hub) attachPrevKVs(ctx context.Context, evs []Event) error {
	var keys [][]byte
	var revs []int64
	for _, ev := range evs {
		if ev.PrevRevision > 0 {
			keys, revs = append(keys, ev.Key), append(revs, ev.PrevRevision)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	// The previous rows are settled, but one committed a moment ago may not
	// be visible to a new snapshot yet (visibility.go): read before it is,
	// and the event goes without its previous value. The chaos test caught
	// a put whose previous version was the event before it in the same
	// response.
	if err := h.WaitFor(ctx, slices.Max(revs)); err != nil {
		return err
	}
	rows, err := h.cfg.Pool.Query(ctx, prevKVsSQL, keys, revs)
	if err != nil {
		return err
	}
	prev := map[string]*store.KeyValue{}
	for rows.Next() {
		var kv store.KeyValue
		if err := rows.Scan(&kv.Key, &kv.Value, &kv.CreateRevision, &kv.ModRevision, &kv.Version); err != nil {
			rows.Close()
			return err
		}
		prev[fmt.Sprintf("%d/%s", kv.ModRevision, kv.Key)] = &kv
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for i := range evs {
		if evs[i].PrevRevision > 0 {
			// A compacted previous version is simply absent, as in etcd.
			evs[i].PrevKV = prev[fmt.Sprintf("%d/%s", evs[i].PrevRevision, evs[i].Key)]
		}
	}
	return nil
}

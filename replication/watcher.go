package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/walwatch/walwatch/store"
)

// Tunables of the watcher groups, after etcd's watchable store.
var (
	// chanBufLen is how many responses a watcher's channel holds before the
	// watcher counts as too slow and leaves the live group.
	chanBufLen = 64
	// maxWatchersPerSync bounds how many catching-up watchers one round of
	// syncWatchersLoop serves, so one round stays short.
	maxWatchersPerSync = 512
	// maxEventsPerResponse bounds a catch-up response (whole revisions are
	// never split, so one big revision may exceed it).
	maxEventsPerResponse = 1000
	// catchUpPage is how many rows a catch-up read takes from the table.
	catchUpPage = 5000
	// syncInterval is how often the catch-up and victim loops look for work
	// they were not woken for (etcd's watchResyncPeriod is 100ms; ours is
	// shorter because a catch-up here is one query, not a scan of bbolt).
	syncInterval = 10 * time.Millisecond
)

// watcher is the hub's side of one watch. Every field but the immutable
// ones is protected by Hub.mu, and every send on ch happens under it, so a
// check for room in ch stays true until the send.
type watcher struct {
	rng      store.KeyRange
	progress bool
	ch       chan WatchResponse
	next     int64          // the first revision not yet delivered (or skipped as not matching)
	pending  *WatchResponse // a victim's response that did not fit in ch
	err      error          // why the watch ended, once it has
	closed   bool
}

type watcherSet map[*watcher]struct{}

// Watcher is one watch: read C until it is closed, then Err says why.
// Events share their byte slices with other watchers: do not modify them.
type Watcher struct {
	C   <-chan WatchResponse
	hub *Hub
	w   *watcher
}

// ErrWatcherClosed is Err after Close.
var ErrWatcherClosed = errors.New("watcher closed")

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
		return nil, ErrHubStopped
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
	wt := &watcher{rng: req.Range, progress: req.ProgressNotify, ch: make(chan WatchResponse, chanBufLen), next: req.StartRevision}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrHubStopped
	}
	if wt.next == 0 {
		wt.next = h.watermark + 1
	}
	if wt.next > h.watermark {
		h.synced.add(wt)
	} else {
		h.unsynced[wt] = struct{}{}
	}
	h.metrics.watchers(h.synced.len() + len(h.unsynced) + len(h.victims))
	h.mu.Unlock()
	h.wake()

	pub := &Watcher{C: wt.ch, hub: h, w: wt}
	if req.PrevKV {
		pub.C = h.withPrevKV(ctx, wt)
	}
	context.AfterFunc(ctx, func() { h.cancel(wt, ctx.Err()) })
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
	if !errors.Is(err, ErrWatcherClosed) && !errors.Is(err, context.Canceled) {
		resp := WatchResponse{Canceled: true, Err: err}
		var ce *store.CompactedError
		if errors.As(err, &ce) {
			resp.CompactRevision = ce.CompactRevision
		}
		select {
		case wt.ch <- resp:
		default:
		}
	}
	close(wt.ch)
	h.metrics.watchers(h.synced.len() + len(h.unsynced) + len(h.victims))
}

func (h *Hub) closeWatchers() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	h.synced.each(func(wt *watcher) { h.cancelLocked(wt, ErrHubStopped) })
	for _, set := range []watcherSet{h.unsynced, h.victims} {
		for wt := range set {
			h.cancelLocked(wt, ErrHubStopped)
		}
	}
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

// release publishes revisions that just became settled: they join the window
// and go to every live watcher. A watcher whose channel is full becomes a
// victim instead of holding anyone up.
func (h *Hub) release(revs []revEvents, watermark int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, re := range revs {
		h.window.add(re.rev, re.events)
	}
	h.watermark = watermark
	close(h.advanced)
	h.advanced = make(chan struct{})
	// A live watcher's next revision is the watermark's successor (or its
	// future start): it is only written down when the watcher leaves.
	h.deliveries = h.synced.matches(h.deliveries[:0], revs)
	for _, d := range h.deliveries {
		resp := WatchResponse{Events: d.evs, Revision: d.evs[len(d.evs)-1].Revision}
		select {
		case d.wt.ch <- resp:
		default:
			h.synced.delete(d.wt)
			d.wt.next = max(d.wt.next, watermark+1)
			pending := resp // a copy, so resp stays off the heap for every other watcher
			d.wt.pending = &pending
			h.victims[d.wt] = struct{}{}
			h.metrics.victim()
		}
	}
	clear(h.deliveries) // keep no watcher or event alive until the next release
}

// syncVictimsLoop retries the responses of watchers that were too slow;
// once one is delivered, the watcher catches up (or goes live again).
func (h *Hub) syncVictimsLoop(ctx context.Context) {
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		for wt := range h.victims {
			select {
			case wt.ch <- *wt.pending:
			default:
				continue
			}
			wt.pending = nil
			delete(h.victims, wt)
			if wt.next > h.watermark {
				h.synced.add(wt)
			} else {
				h.unsynced[wt] = struct{}{}
			}
		}
		h.mu.Unlock()
		h.wake()
	}
}

// syncWatchersLoop serves watchers that are behind, from the window when it
// reaches back far enough and from the table when not, until they are live.
func (h *Hub) syncWatchersLoop(ctx context.Context) {
	t := time.NewTicker(syncInterval)
	defer t.Stop()
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
		for _, wt := range batch {
			if h.syncWatcher(ctx, wt) {
				more = true
			}
		}
		if more {
			h.wake()
		}
	}
}

// syncWatcher sends one catch-up response to wt if it has room, and reports
// whether it is still behind.
func (h *Hub) syncWatcher(ctx context.Context, wt *watcher) (behind bool) {
	h.mu.Lock()
	if _, ok := h.unsynced[wt]; !ok || len(wt.ch) == cap(wt.ch) {
		h.mu.Unlock()
		return false
	}
	w := h.watermark
	if wt.next > w {
		delete(h.unsynced, wt)
		h.synced.add(wt)
		h.mu.Unlock()
		return false
	}
	if h.window.covers(wt.next) {
		revs, all := h.window.since(wt.next, maxEventsPerResponse)
		next := w + 1
		if !all {
			next = revs[len(revs)-1].rev + 1
		}
		h.deliverLocked(wt, matching(wt.rng, wt.next, revs, nil), next)
		behind := wt.next <= w
		h.mu.Unlock()
		return behind
	}
	from := wt.next
	h.mu.Unlock()

	// Read the table only as far as every transaction is visible: a read
	// past one that has committed but is not visible yet would skip it for
	// good.
	upto, err := h.visibleUpTo(ctx, w)
	if err == nil && upto < from {
		return false // not visible yet: try again on the next tick
	}
	var (
		evs  []Event
		next int64
	)
	if err == nil {
		evs, next, err = h.readChanges(ctx, wt.rng, from, upto)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.unsynced[wt]; !ok || wt.next != from {
		return false
	}
	if err != nil {
		if errors.Is(err, store.ErrCompacted) {
			h.cancelLocked(wt, err)
			return false
		}
		if ctx.Err() == nil {
			h.log.Warn("catch-up read failed; will retry", "from", from, "err", err)
		}
		return false
	}
	h.deliverLocked(wt, evs, next)
	return true
}

// deliverLocked sends evs (room was checked) and moves wt on to next; a
// watcher past the watermark goes live.
func (h *Hub) deliverLocked(wt *watcher, evs []Event, next int64) {
	if len(evs) > 0 {
		wt.ch <- WatchResponse{Events: evs, Revision: evs[len(evs)-1].Revision}
		h.metrics.caughtUp(len(evs))
	}
	wt.next = next
	if wt.next > h.watermark {
		delete(h.unsynced, wt)
		h.synced.add(wt)
	}
}

// readChanges reads the changes in rng from revision from up to upto from the
// table, whole revisions only, and returns them with the next revision to
// read.
func (h *Hub) readChanges(ctx context.Context, rng store.KeyRange, from, upto int64) ([]Event, int64, error) {
	lo, hi := rng.Key, rangeUpper(rng)
	rows, err := h.queryChanges(ctx, lo, hi, from-1, upto, catchUpPage)
	if err != nil {
		return nil, 0, err
	}
	next := upto + 1
	if len(rows) == catchUpPage {
		if kept := wholeRevisions(rows, catchUpPage); len(kept) > 0 {
			rows = kept
		} else { // one revision larger than a page: take it whole
			last := rows[0].revision
			if rows, err = h.queryChanges(ctx, lo, hi, last-1, last, 0); err != nil {
				return nil, 0, err
			}
		}
		next = rows[len(rows)-1].revision + 1
	}
	evs := make([]Event, len(rows))
	for i := range rows {
		evs[i] = rows[i].event(0, time.Time{})
	}
	return evs, next, nil
}

func (h *Hub) queryChanges(ctx context.Context, lo, hi []byte, after, upto int64, limit int) ([]row, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	rows, err := h.cfg.Pool.Query(ctx, "select "+rowColumns+" from walwatch.changes_between($1, $2, $3, $4, $5)", lo, hi, after, upto, lim)
	if err != nil {
		return nil, fmt.Errorf("read changes after revision %d: %w", after, err)
	}
	out, err := scanRows(rows)
	if err != nil {
		return nil, store.FromDB(fmt.Errorf("read changes after revision %d: %w", after, err), after+1)
	}
	return out, nil
}

// rangeUpper is the exclusive upper bound of rng for changes_between: nil
// means no bound.
func rangeUpper(rng store.KeyRange) []byte {
	switch {
	case len(rng.End) == 0:
		return append(append([]byte{}, rng.Key...), 0)
	case len(rng.End) == 1 && rng.End[0] == 0:
		return nil
	default:
		return rng.End
	}
}

// progressLoop sends progress marks to idle live watchers that asked for
// them: only when everything up to the watermark has been delivered.
func (h *Hub) progressLoop(ctx context.Context) {
	t := time.NewTicker(h.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		w := h.watermark
		h.synced.each(func(wt *watcher) {
			// Live, so everything up to the watermark has been sent, unless
			// the watcher starts in the future.
			if wt.progress && wt.next <= w+1 {
				select {
				case wt.ch <- WatchResponse{Revision: w}:
				default:
				}
			}
		})
		h.mu.Unlock()
	}
}

// withPrevKV forwards wt's responses with each event's previous key-value
// read from the table. It runs beside the hub, so the read never delays it:
// while it waits, wt's channel fills and the hub treats wt as slow.
func (h *Hub) withPrevKV(ctx context.Context, wt *watcher) <-chan WatchResponse {
	out := make(chan WatchResponse)
	go func() {
		defer close(out)
		for resp := range wt.ch {
			resp.Events = slices.Clone(resp.Events) // other watchers may share the slice
			if err := h.attachPrevKVs(ctx, resp.Events); err != nil {
				h.cancel(wt, fmt.Errorf("watch: read previous values: %w", err))
				continue // drain what is left; the channel closes
			}
			select {
			case out <- resp:
			case <-ctx.Done():
				h.cancel(wt, ctx.Err())
				for range wt.ch {
				}
				return
			}
		}
	}()
	return out
}

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
	rows, err := h.cfg.Pool.Query(ctx,
		`select k.key, k.value, k.create_revision, k.revision, k.version
		   from walwatch.kv k join unnest($1::bytea[], $2::bigint[]) as p(key, rev) on k.key = p.key and k.revision = p.rev`,
		keys, revs)
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

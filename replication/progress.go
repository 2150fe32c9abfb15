package replication

// RequestProgress asks for a progress mark on each of ws, at one revision:
// if every one is live (fed by releases, not catching up from the window
// or the table nor blocked as too slow) and has room in its channel, each
// gets WatchResponse{Revision: the watermark}, and RequestProgress reports
// true; otherwise none gets anything and it reports false, and the caller
// asks again later (the catch-up and victim loops bring a watcher back to
// live within a few syncIntervals once its reader keeps up). A watcher whose
// start is in the future counts as live: it has everything up to the
// watermark, nothing. ws must be distinct watchers of h.
//
// Why: a front end that multiplexes watchers on one stream (etcd's Watch)
// must answer a progress request with a revision R such that every watcher
// of the stream has been sent every event up to R, and none after it, before
// the answer, as etcd does from its one channel per stream. Here each
// watcher has its own channel, so the mark travels in it, after the events
// released before it and before any released after; all marks carry the
// same watermark because they are sent in one critical section. Once the
// front end has read every mark, R is the watermark, and holding each
// watcher's later responses until then keeps every later event after the
// answer. The hub's own ProgressInterval marks serve watchers that asked
// for them in WatchRequest; these are sent only when asked.
func (h *Hub) RequestProgress(ws ...*Watcher) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed != nil {
		return false
	}
	for _, w := range ws {
		if w.hub != h || !h.isLive(w.w) || !w.w.hasRoomForMark(h.queue) {
			return false
		}
	}
	mark := WatchResponse{Revision: h.order.watermark}
	for _, w := range ws {
		w.w.trySend(mark, 0, h.queue) // room was checked under the same lock
	}
	return true
}

// isLive reports whether wt is in the live group: everything up to the
// watermark has been sent to it. Watchers are in exactly one of the three
// groups until they are closed.
func (h *Hub) isLive(wt *watcher) bool {
	if wt.closed {
		return false
	}
	if _, ok := h.unsynced[wt]; ok {
		return false
	}
	_, victim := h.victims[wt]
	return !victim
}

// hasRoomForMark reports whether trySend would take a response without
// events now: a free slot, and no more bytes queued than q allows.
func (wt *watcher) hasRoomForMark(q queueLimit) bool {
	n := wt.length()
	return n < wt.capacity() && (wt.sizes == nil || n == 0 || wt.queued(q) <= q.bytes)
}

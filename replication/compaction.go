package replication

import "github.com/walwatch/walwatch/store"

// A compaction deletes the rows of revisions below it that no read at or
// above it can see, whatever the hub has released. The stream still brings
// every insert since the slot's confirmed position, so a hub on its slot
// misses nothing; but a hub that had to make its slot again starts the
// stream at the new slot's snapshot, and the revisions between its
// watermark and the compacted one that it had not buffered are gone from
// both. Its watchers there are told "compacted", as etcd tells a watcher
// that fell below a compaction, and the hub goes on from the compacted
// revision. Below it, the table holds only what survived: readTable never
// reads there after the first session, and walwatch.fill never fills there.

// skipCompacted acts, on the run loop, on a table read in a new slot's
// snapshot that found the revision table compacted at compacted, above the
// watermark's successor: unless every revision up to compacted-1 is in the
// reorder buffer, it ends every watcher that still needs one of them with a
// *store.CompactedError and moves the watermark to compacted-1. It reports
// whether it did.
func (h *Hub) skipCompacted(compacted int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	base := compacted - 1
	if !h.order.missingUpTo(base) {
		return false
	}
	h.log.Warn("the revision table was compacted past the hub while it had no slot; watchers below the compacted revision are told so",
		"watermark", h.order.floor(), "compact_revision", compacted)
	h.metrics.compactedSkip()
	cancelBelow := func(wt *watcher) {
		if wt.next <= base {
			h.cancelLocked(wt, &store.CompactedError{Revision: max(wt.next, h.order.floor()+1), CompactRevision: compacted})
		}
	}
	h.synced.each(cancelBelow)
	for _, set := range []watcherSet{h.unsynced, h.victims} {
		for wt := range set {
			cancelBelow(wt)
		}
	}
	h.order.skip(base)
	h.window.skip(base)
	h.visible.assume(base) // settled on the primary before it was compacted
	close(h.advanced)
	h.advanced = make(chan struct{})
	return true
}

package replication

// window keeps the events of the most recent revisions, so a watcher that
// starts a little in the past, or falls a little behind, is served from
// memory instead of the table.
type window struct {
	limit   int         // most revisions kept
	from    int64       // every event with a revision at or above it is here
	entries []revEvents // oldest first
}

// revEvents are the events of one revision, in sub order.
type revEvents struct {
	rev    int64
	events []Event
}

// add appends a released revision, dropping the oldest past the limit.
func (w *window) add(rev int64, events []Event) {
	if len(events) > 0 {
		w.entries = append(w.entries, revEvents{rev: rev, events: events})
	}
	// Trim in steps of a quarter of the limit, so the copy that keeps the
	// backing array from growing for ever is paid once per many adds.
	if len(w.entries) > w.limit+w.limit/4 {
		drop := len(w.entries) - w.limit
		w.from = w.entries[drop-1].rev + 1
		w.entries = append(w.entries[:0], w.entries[drop:]...)
	}
}

// covers reports whether every event at or above rev is in the window.
func (w *window) covers(rev int64) bool { return rev >= w.from }

// since returns the whole revisions at or above rev, at most maxEvents
// events (but always at least one revision when there is one), and whether
// that is all the window holds from rev on.
func (w *window) since(rev int64, maxEvents int) (revs []revEvents, all bool) {
	lo, hi := 0, len(w.entries)
	for lo < hi { // first entry with rev >= rev
		mid := (lo + hi) / 2
		if w.entries[mid].rev < rev {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	n := 0
	end := lo
	for end < len(w.entries) && (end == lo || n+len(w.entries[end].events) <= maxEvents) {
		n += len(w.entries[end].events)
		end++
	}
	return w.entries[lo:end], end == len(w.entries)
}

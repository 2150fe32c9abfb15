package replication

// window keeps the events of the most recent revisions, so a watcher that
// starts a little in the past, or falls a little behind, is served from
// memory instead of the table. It is bounded twice: by revisions (limit) and
// by the bytes its events hold (maxBytes), whichever is reached first, so
// its memory does not follow the size of the values.
type window struct {
	limit    int         // most revisions kept
	maxBytes int         // most bytes kept (eventsSize of every entry)
	bytes    int         // what the entries hold now
	from     int64       // every event with a revision at or above it is here
	entries  []revEvents // oldest first
}

// revEvents are the events of one revision, in sub order, and what they
// hold in memory (eventsSize).
type revEvents struct {
	rev    int64
	events []Event
	bytes  int
	// spilled: released from the reorder buffer without values (the
	// events have their keys only), never kept in the window.
	spilled bool
}

// eventOverhead is what an event costs beyond its key and value: the Event
// itself (152 bytes on 64-bit) and a little of the slices around it. Every
// byte bound counts it, so a flood of empty values is bounded too.
const eventOverhead = 160

// eventsSize is the memory evs hold: their keys, values and overhead.
func eventsSize(evs []Event) int {
	n := 0
	for i := range evs {
		n += len(evs[i].Key) + len(evs[i].Value) + eventOverhead
	}
	return n
}

// add appends a released revision, dropping the oldest entries past either
// bound. A revision larger than maxBytes on its own is not kept at all: the
// window then starts after it, and a watcher that needs it reads the table.
func (w *window) add(re revEvents) {
	if len(re.events) > 0 {
		w.entries = append(w.entries, re)
		w.bytes += re.bytes
	}
	drop := 0
	for drop < len(w.entries) && (len(w.entries)-drop > w.limit || w.bytes > w.maxBytes) {
		w.bytes -= w.entries[drop].bytes
		w.from = w.entries[drop].rev + 1
		drop++
	}
	w.dropFront(drop)
}

// skip records that rev was released without its events in memory (the
// reorder buffer spilled its values): the window can no longer serve
// anything at or below it, so it starts after it.
func (w *window) skip(rev int64) {
	w.dropFront(len(w.entries))
	w.bytes = 0
	w.from = rev + 1
}

// dropFront removes the n oldest entries. The slice moves forward in its
// backing array, whose dropped slots are cleared so they keep no events
// alive; append copies the live entries to a new array when it runs out of
// room, so the array stays within a small factor of the entries kept.
func (w *window) dropFront(n int) {
	if n == 0 {
		return
	}
	clear(w.entries[:n])
	w.entries = w.entries[n:]
	if len(w.entries) == 0 {
		w.entries = nil
	}
}

// covers reports whether every event at or above rev is in the window.
func (w *window) covers(rev int64) bool { return rev >= w.from }

// since returns the whole revisions at or above rev, at most maxEvents
// events and maxBytes bytes (but always at least one revision when there is
// one), and whether that is all the window holds from rev on.
func (w *window) since(rev int64, maxEvents, maxBytes int) (revs []revEvents, all bool) {
	lo, hi := 0, len(w.entries)
	for lo < hi { // first entry with rev >= rev
		mid := (lo + hi) / 2
		if w.entries[mid].rev < rev {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	n, size := 0, 0
	end := lo
	for end < len(w.entries) && (end == lo ||
		n+len(w.entries[end].events) <= maxEvents && size+w.entries[end].bytes <= maxBytes) {
		n += len(w.entries[end].events)
		size += w.entries[end].bytes
		end++
	}
	return w.entries[lo:end], end == len(w.entries)
}

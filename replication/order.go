package replication

import (
	"bytes"
	"cmp"
	"log/slog"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
)

// order puts committed revisions back into revision order. Transactions
// commit, and the stream delivers them, in commit order, which is not
// revision order (DESIGN.md, "The hard part"): order holds each committed
// revision above the watermark in its reorder buffer until every revision
// below it is settled, then releases it. It knows the holes that keep it
// waiting, and which of the stream's transactions are settled, so that the
// stream confirms to PostgreSQL only what nothing can take back.
//
// order does no I/O and takes no lock. The hub's run loop owns it, with two
// exceptions: the watermark, which other goroutines read with Hub.mu held
// (advance, its only writer, runs with Hub.mu held, so the watermark moves
// together with the window and the live watchers), and the LSN the stream
// may confirm, an atomic.
type order struct {
	// watermark: every revision at or below it is settled, committed and
	// received or known never to commit, and released. Written only by
	// advance.
	watermark int64
	// base is where the watermark starts: the first table read's
	// settled-revision hint, taken from the first base marker; every
	// revision at or below it is settled (an earlier hub recorded so).
	base int64

	buffer      map[int64]*committed // committed revisions above the watermark
	top         int64                // the highest revision ever buffered
	bufferBytes int                  // what the buffered revisions that kept their values hold
	maxBytes    int                  // the bound on bufferBytes (Config.BufferBytes)
	// spillFrom, when not 0: no buffered revision at or above it holds its
	// values (see spill), and one arriving there is stored without them.
	spillFrom int64
	// holeFrom is when the revision after the watermark went missing; zero
	// while none is.
	holeFrom time.Time

	pending []pendingTxn // stream transactions not yet settled, in commit order
	// confirmable is the end LSN of the last stream transaction whose
	// revisions are all at or below the watermark: what the stream may
	// confirm. Written by advance, read by the stream's goroutine.
	confirmable atomic.Uint64
	// exposed is the highest WAL position that anything released depends
	// on: the end of each stream transaction released, the position a
	// table read was taken at. After a failover, history went backwards
	// if it lies beyond where the new server's timeline branched off
	// (failover.go). Written by accept and advance.
	exposed pglogrepl.LSN

	log     *slog.Logger
	metrics *Metrics
}

// committed is one revision's rows, waiting in the reorder buffer.
type committed struct {
	rows  []row
	lsn   pglogrepl.LSN
	wal   pglogrepl.LSN // what releasing it exposes (order.exposed)
	at    time.Time
	bytes int // what rows hold in memory (rowsSize), until spilled
	// spilled: the rows' values were dropped to keep the buffer within its
	// bytes; their keys say which watchers the revision concerns, and those
	// read it from the table.
	spilled bool
}

// events are the revision's events in sub order; a filler has none.
func (c *committed) events() []Event {
	evs := make([]Event, 0, len(c.rows))
	for i := range c.rows {
		if !c.rows[i].isFiller() {
			evs = append(evs, c.rows[i].event(c.lsn, c.at))
		}
	}
	return evs
}

// pendingTxn is a stream transaction waiting for its revisions to settle.
type pendingTxn struct {
	endLSN pglogrepl.LSN
	maxRev int64
}

func newOrder(maxBytes int, log *slog.Logger, m *Metrics) order {
	return order{buffer: map[int64]*committed{}, maxBytes: maxBytes, log: log, metrics: m}
}

// floor is the revision at or below which every revision is settled: the
// watermark, or, before the first advance has moved it, the base.
func (o *order) floor() int64 { return max(o.watermark, o.base) }

// accept takes one committed transaction (or a page read from the table)
// into the reorder buffer, dropping revisions already settled or buffered:
// after a reconnect the server replays what it had not been told was done,
// and the table read of a new session overlaps the stream. A base marker
// (the first table read's) gives the watermark its start, once.
func (o *order) accept(t *txn) {
	if t.base > 0 && o.watermark == 0 && o.base == 0 {
		o.base = t.base
		o.exposed = max(o.exposed, t.readLSN) // the base is readable from now on
	}
	wal := t.endLSN
	if wal == 0 {
		wal = t.readLSN // a table page
	}
	w := o.floor()
	var maxRev int64
	// The txn is ours now: sort its rows in place. One transaction may hold
	// several revisions, and not one after the other: a writer that settles
	// the revisions below its own (walwatch.settle_below) inserts their
	// fillers between its rows.
	slices.SortFunc(t.rows, func(a, b row) int {
		return cmp.Or(cmp.Compare(a.revision, b.revision), cmp.Compare(a.sub, b.sub))
	})
	for i := 0; i < len(t.rows); {
		rev := t.rows[i].revision
		j := i
		for j < len(t.rows) && t.rows[j].revision == rev {
			j++
		}
		maxRev = max(maxRev, rev)
		if _, dup := o.buffer[rev]; rev > w && !dup {
			rows := t.rows[i:j:j]
			c := &committed{rows: rows, lsn: t.commitLSN, wal: wal, at: t.commitTime, bytes: rowsSize(rows)}
			if o.spillFrom > 0 && rev >= o.spillFrom {
				o.dropValues(c)
			} else {
				o.bufferBytes += c.bytes
			}
			o.buffer[rev] = c
			o.top = max(o.top, rev)
		}
		i = j
	}
	if t.endLSN != 0 {
		o.pending = append(o.pending, pendingTxn{endLSN: t.endLSN, maxRev: maxRev})
	}
	o.metrics.buffer(len(o.buffer), o.bufferBytes)
}

// advance is advanceTo without a limit.
func (o *order) advance() []revEvents { return o.advanceTo(math.MaxInt64) }

// advanceTo moves the watermark over every buffered revision that follows it
// directly, up to limit, and returns those revisions, in order, with their
// events; it makes the stream transactions that are now settled
// confirmable. It is the only writer of the watermark, and its caller holds
// Hub.mu.
func (o *order) advanceTo(limit int64) []revEvents {
	var released []revEvents
	w := o.floor()
	for w < limit {
		c, ok := o.buffer[w+1]
		if !ok {
			break
		}
		o.exposed = max(o.exposed, c.wal)
		delete(o.buffer, w+1)
		w++
		if !c.spilled {
			o.bufferBytes -= c.bytes
		}
		evs := c.events()
		released = append(released, revEvents{rev: w, events: evs, bytes: eventsSize(evs), spilled: c.spilled})
		o.metrics.released(c)
	}
	o.watermark = w
	switch {
	case len(o.buffer) == 0:
		o.spillFrom = 0
	case o.spillFrom > 0 && o.spillFrom <= w:
		o.spillFrom = w + 1 // everything still buffered was above it: spilled
	}
	o.metrics.buffer(len(o.buffer), o.bufferBytes)
	for len(o.pending) > 0 && o.pending[0].maxRev <= w {
		o.confirmable.Store(uint64(o.pending[0].endLSN))
		o.pending = o.pending[1:]
	}
	if !o.holeOpen() {
		o.holeFrom = time.Time{}
	} else if o.holeFrom.IsZero() || len(released) > 0 {
		o.holeFrom = time.Now()
		o.metrics.holeSeen()
	}
	return released
}

// settledTop returns the highest revision up to which every revision is
// settled, in the buffer or below the watermark: what advance releases
// without a limit.
func (o *order) settledTop() int64 {
	w := o.floor()
	for {
		if _, ok := o.buffer[w+1]; !ok {
			return w
		}
		w++
	}
}

// forget drops what came from a server that is no longer the primary and
// was not released: the reorder buffer and the stream transactions waiting
// to be confirmed. The new server's table and stream bring again whatever
// of it that server has.
func (o *order) forget() {
	clear(o.buffer)
	o.top, o.bufferBytes, o.spillFrom, o.holeFrom = 0, 0, 0, time.Time{}
	o.pending = nil
	o.confirmable.Store(0) // a position of the old server's stream
	o.metrics.buffer(0, 0)
}

// restart starts the watermark again at base, a revision at or below which
// everything is settled on the new server, after history went backwards;
// forget has run.
func (o *order) restart(base int64) {
	o.watermark, o.base, o.exposed = base, base, 0
}

// missingUpTo reports whether a revision above the floor and at or below
// rev is not in the reorder buffer.
func (o *order) missingUpTo(rev int64) bool {
	for r := o.floor() + 1; r <= rev; r++ {
		if _, ok := o.buffer[r]; !ok {
			return true
		}
	}
	return false
}

// skip moves the watermark up to base, over revisions a compaction took
// (Hub.skipCompacted), dropping what the buffer holds at or below it. The
// stream transactions now settled become confirmable at the next advance.
func (o *order) skip(base int64) {
	for rev, c := range o.buffer {
		if rev <= base {
			if !c.spilled {
				o.bufferBytes -= c.bytes
			}
			delete(o.buffer, rev)
		}
	}
	o.watermark = max(o.watermark, base)
	o.top = max(o.top, base)
	switch {
	case len(o.buffer) == 0:
		o.spillFrom = 0
	case o.spillFrom > 0 && o.spillFrom <= base:
		o.spillFrom = base + 1
	}
	o.holeFrom = time.Time{}
	o.metrics.buffer(len(o.buffer), o.bufferBytes)
}

// confirmed returns the end LSN of the last stream transaction whose
// revisions are all settled: the position the stream may confirm.
func (o *order) confirmed() pglogrepl.LSN { return pglogrepl.LSN(o.confirmable.Load()) }

// holeOpen reports whether a revision is missing below one that has
// arrived. Without a release limit that is any revision buffered: the one
// right after the watermark is missing; with one (syncrep.go) the buffer
// may start with revisions settled but held back.
func (o *order) holeOpen() bool { return int64(len(o.buffer)) < o.top-o.floor() }

// holes lists the revisions missing between the watermark and the highest
// buffered one, at most limit of them, lowest first.
func (o *order) holes(limit int) []int64 {
	var out []int64
	for rev := o.floor() + 1; rev < o.top && len(out) < limit; rev++ {
		if _, ok := o.buffer[rev]; !ok {
			out = append(out, rev)
		}
	}
	return out
}

// spill keeps the values in the reorder buffer within maxBytes, without
// dropping a revision and without talking to PostgreSQL: while they are
// over, it drops the values of the highest revisions still holding theirs
// and keeps their keys and the fact that they are there. The buffer so
// keeps values for its lowest revisions, the next to be released, and only
// keys from spillFrom up. When the watermark reaches a spilled revision,
// release sends the watchers its keys concern to catch up from the table,
// which holds every settled revision, and the window starts after it.
//
// The walk down from spillFrom visits each revision once per spell of
// spilling: spillFrom only moves up again as the watermark passes it.
func (o *order) spill() {
	if o.bufferBytes <= o.maxBytes {
		return
	}
	w := o.floor()
	rev := o.top
	if o.spillFrom > 0 {
		rev = o.spillFrom - 1
	} else {
		o.log.Warn("the reorder buffer is over its bytes behind an open revision; watchers will read the newest revisions from the table",
			"watermark", w, "buffered_revisions", len(o.buffer), "buffer_bytes", o.bufferBytes, "limit", o.maxBytes)
	}
	for ; o.bufferBytes > o.maxBytes && rev > w; rev-- {
		if c, ok := o.buffer[rev]; ok && !c.spilled {
			o.bufferBytes -= c.bytes
			o.dropValues(c)
		}
		o.spillFrom = rev // a revision still missing here arrives without its values too
	}
	o.metrics.buffer(len(o.buffer), o.bufferBytes)
}

// dropValues spills c: its rows keep their keys, in allocations of their
// own (a row's key and value share one, row.own), and lose their values.
func (o *order) dropValues(c *committed) {
	for i := range c.rows {
		c.rows[i].key = bytes.Clone(c.rows[i].key)
		c.rows[i].value = nil
	}
	c.spilled = true
	o.metrics.spilled()
}

package check

import (
	"fmt"
	"strings"
)

// CheckWatches checks every watch against the audit: exactly the matching
// committed rows from its start, in (revision, sub) order, each once, one
// revision per response, with the right type, KV and prev_kv, up to the
// last revision it received or was told of by a progress mark; progress
// marks that never run ahead; compacted and re-list endings that are true.
// A watch stops being judged at its first discrepancy.
func CheckWatches(h *History) []Anomaly {
	ix := newIndex(h.Committed)
	var out []Anomaly
	for i := range h.Watches {
		if a, ok := checkWatch(h, ix, &h.Watches[i]); !ok {
			out = append(out, a)
		}
	}
	return out
}

type rowID struct {
	rev int64
	key string
}

type watchWalk struct {
	h        *History
	ix       *index
	w        *Watch
	want     []Row    // the matching rows it must receive
	j        int      // the next of want to receive
	received []string // what it received so far, for the report
}

func checkWatch(h *History, ix *index, w *Watch) (Anomaly, bool) {
	ww := &watchWalk{h: h, ix: ix, w: w}
	// Rows at or above a failover's From, of a watch opened before it, were
	// on the old primary only: the audit cannot judge them.
	var cut int64
	for _, d := range h.Diverged {
		if w.Opened < d.At && (cut == 0 || d.From < cut) {
			cut = d.From
		}
	}
	for _, r := range ix.rows {
		if r.Revision >= w.Start && inRange(r.Key, w.Key, w.End) && (cut == 0 || r.Revision < cut) {
			ww.want = append(ww.want, r)
		}
	}
	var (
		lastRev  int64 // the last event's revision
		lastResp = -1  // the response that carried it
		progress int64 // the highest progress mark
		ended    bool
	)
	delivered := make(map[rowID]bool)
	// Everything it received, to tell an event that comes late from one
	// that never comes.
	all := make(map[rowID]bool)
	for _, resp := range w.Responses {
		for _, e := range resp.Events {
			all[rowID{e.KV.ModRevision, e.KV.Key}] = true
		}
	}
	for i, resp := range w.Responses {
		if ended {
			return ww.fail("a response after the watch ended (response %d at %v)", i, resp.At)
		}
		for _, e := range resp.Events {
			if e.KV.Key == "" {
				continue // CheckFillers reports it
			}
			rev, id := e.KV.ModRevision, rowID{e.KV.ModRevision, e.KV.Key}
			cur := fmtEvent(i, e)
			switch {
			case !inRange(e.KV.Key, w.Key, w.End) || rev < w.Start:
				return ww.failAt(cur, "an event outside the watch's keys or start")
			case delivered[id]:
				return ww.failAt(cur, "an event repeated")
			case rev < lastRev:
				return ww.failAt(cur, "an event out of revision order (after revision %d)", lastRev)
			case rev == lastRev && lastResp != i:
				return ww.failAt(cur, "revision %d split over two responses", rev)
			case rev <= progress:
				return ww.failAt(cur, "an event at or below an earlier progress mark %d", progress)
			}
			lastRev, lastResp = rev, i
			delivered[id] = true
			if cut > 0 && rev >= cut {
				ww.received = append(ww.received, cur+" (past a failover: not checked)")
				continue
			}
			if ww.j < len(ww.want) && ww.want[ww.j].Revision < rev {
				if x := ww.want[ww.j]; all[rowID{x.Revision, x.Key}] {
					return ww.failAt(cur, "an event out of order: revision %d comes later", x.Revision)
				}
				return ww.failAt(cur, "an event missing")
			}
			if ww.j >= len(ww.want) || ww.want[ww.j].Revision != rev || ww.want[ww.j].Key != e.KV.Key {
				for _, r := range ix.byRev[rev] {
					if r.Key == e.KV.Key && inRange(r.Key, w.Key, w.End) {
						return ww.failAt(cur, "events of revision %d out of sub order", rev)
					}
				}
				if ix.filler[rev] {
					return ww.failAt(cur, "an event the audit does not hold: a filler settled revision %d", rev)
				}
				return ww.failAt(cur, "an event the audit does not hold")
			}
			if msg := ww.judge(e, ww.want[ww.j]); msg != "" {
				return ww.failAt(cur, "%s", msg)
			}
			ww.j++
			ww.received = append(ww.received, cur)
		}
		if len(resp.Events) > 0 && ww.j < len(ww.want) && ww.want[ww.j].Revision <= lastRev {
			return ww.fail("revision %d incomplete in its response", lastRev)
		}
		if p := resp.Progress; p > 0 {
			if p < lastRev || p < progress {
				return ww.fail("progress mark %d below what came before (event %d, mark %d)", p, lastRev, progress)
			}
			if ww.j < len(ww.want) && ww.want[ww.j].Revision <= p {
				return ww.fail("progress mark %d ahead of the events delivered", p)
			}
			progress = p
			ww.received = append(ww.received, fmt.Sprintf("response %d: progress %d", i, p))
		}
		if resp.Ended {
			ended = true
			if c := resp.Compacted; c > 0 {
				if w.Start >= c {
					return ww.fail("ended as compacted at %d, but its start is not below it", c)
				}
				if c > h.Compacted {
					return ww.fail("ended as compacted at %d, above the compacted revision at the end (%d)", c, h.Compacted)
				}
			}
		}
	}
	for _, d := range h.Diverged {
		if w.Opened > d.At || (w.Closed != 0 && w.Closed <= d.At) {
			continue
		}
		relisted, after := false, false
		for _, resp := range w.Responses {
			if resp.At >= d.At {
				after = true
				relisted = relisted || resp.Relist
			}
		}
		// A watcher that stopped on its own before hearing anything after
		// the failover was never owed the re-list.
		if !relisted && (after || w.Closed == 0) {
			return ww.fail("open across a failover at %v (lost revisions from %d) but not ended with re-list", d.At, d.From)
		}
	}
	return Anomaly{}, true
}

// judge compares an event with the row it must show; "" when right.
func (ww *watchWalk) judge(e Event, r Row) string {
	if r.Tombstone {
		if e.Type != EventDelete {
			return "a delete shown as " + evType(e.Type)
		}
	} else {
		if e.Type != EventPut {
			return "a put shown as " + evType(e.Type)
		}
		if !sameKV(e.KV, kvOf(r)) {
			return "wrong KV: want " + fmtKV(kvOf(r))
		}
	}
	prev, ok := ww.ix.before(r)
	live := ok && !prev.Tombstone
	switch {
	case e.PrevKV != nil && !live:
		return "a prev_kv where the key had no live value before"
	case e.PrevKV != nil && !sameKV(*e.PrevKV, kvOf(prev)):
		return "wrong prev_kv: want " + fmtKV(kvOf(prev))
	case e.PrevKV == nil && ww.w.PrevKV && live && prev.Revision >= ww.h.Compacted:
		// Below the compacted revision the previous row may have been
		// removed before the event was sent: absent is then allowed.
		return "prev_kv missing: want " + fmtKV(kvOf(prev))
	}
	return ""
}

func (ww *watchWalk) failAt(cur, format string, args ...any) (Anomaly, bool) {
	ww.received = append(ww.received, cur+"   <-- here")
	return ww.fail(format, args...)
}

// fail reports msg with the expected rows and the received events around
// where the watch went wrong.
func (ww *watchWalk) fail(format string, args ...any) (Anomaly, bool) {
	w := ww.w
	var b strings.Builder
	fmt.Fprintf(&b, "watcher %d via %s %s from %d", w.Watcher, w.Via, fmtRange(w.Key, w.End), w.Start)
	if w.PrevKV {
		b.WriteString(" with prev_kv")
	}
	fmt.Fprintf(&b, ": %s\n  expected next:", fmt.Sprintf(format, args...))
	if ww.j >= len(ww.want) {
		b.WriteString(" nothing")
	}
	for _, r := range ww.want[ww.j:min(ww.j+3, len(ww.want))] {
		b.WriteString("\n    " + fmtRow(r))
	}
	b.WriteString("\n  received (last):")
	if len(ww.received) == 0 {
		b.WriteString(" nothing")
	}
	for _, s := range ww.received[max(0, len(ww.received)-4):] {
		b.WriteString("\n    " + s)
	}
	return Anomaly{Check: "watch", Detail: b.String()}, false
}

func evType(t EventType) string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

func fmtRow(r Row) string {
	if r.Tombstone {
		return fmt.Sprintf("rev %d.%d delete %q", r.Revision, r.Sub, r.Key)
	}
	return fmt.Sprintf("rev %d.%d put %s", r.Revision, r.Sub, fmtKV(kvOf(r)))
}

func fmtEvent(resp int, e Event) string {
	s := fmt.Sprintf("response %d: rev %d %s ", resp, e.KV.ModRevision, evType(e.Type))
	if e.Type == EventDelete {
		s += fmt.Sprintf("%q", e.KV.Key)
	} else {
		s += fmtKV(e.KV)
	}
	if e.PrevKV != nil {
		s += " prev " + fmtKV(*e.PrevKV)
	}
	return s
}

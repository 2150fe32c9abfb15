package check

import "fmt"

// CheckLost checks that every acknowledged write is in the audit at the
// revision its answer gave: a put's (or successful Txn's) value at its
// key, a delete's tombstones, as many as it said it deleted. A write
// acknowledged before a failover at a revision the failover took back is
// not reported: that loss is the divergence itself.
func CheckLost(h *History) []Anomaly {
	ix := newIndex(h.Committed)
	var out []Anomaly
	bad := func(o Op, format string, args ...any) {
		out = append(out, Anomaly{Check: "lost", Detail: fmt.Sprintf(format, args...) + "\n  " + o.String()})
	}
	for _, o := range h.Ops {
		if o.Status != OK || divergedAway(h, o) {
			continue
		}
		switch {
		case o.Kind == Put || o.Kind == Txn && o.Succeeded:
			r, ok := committedPut(ix, o)
			switch {
			case !ok:
				bad(o, "an acknowledged write is not in the audit")
			case o.Header != 0 && r.Revision != o.Header:
				bad(o, "an acknowledged write is in the audit at revision %d, not at %d", r.Revision, o.Header)
			}
		case (o.Kind == Delete || o.Kind == DeleteRange) && o.Deleted > 0:
			end := o.End
			if o.Kind == Delete {
				end = ""
			}
			var n int64
			for _, r := range ix.byRev[o.Header] {
				if r.Tombstone && inRange(r.Key, o.Key, end) {
					n++
				}
			}
			if n != o.Deleted {
				bad(o, "an acknowledged delete of %d keys has %d tombstones at revision %d in the audit", o.Deleted, n, o.Header)
			}
		}
	}
	return out
}

// divergedAway says whether o was acknowledged before a failover that
// took back its revision.
func divergedAway(h *History, o Op) bool {
	for _, d := range h.Diverged {
		if o.Header >= d.From && o.Return <= d.At {
			return true
		}
	}
	return false
}

// CheckFillers checks that no operation, event or read ever showed a row
// with an empty key: fillers settle revisions and are never shown.
func CheckFillers(h *History) []Anomaly {
	var out []Anomaly
	for _, o := range h.Ops {
		for _, kv := range o.KVs {
			if kv.Key == "" {
				out = append(out, Anomaly{Check: "filler", Detail: fmt.Sprintf("an operation showed a filler at revision %d\n  %s", kv.ModRevision, o)})
				break
			}
		}
	}
	for _, w := range h.Watches {
		for i, resp := range w.Responses {
			for _, e := range resp.Events {
				if e.KV.Key == "" || e.PrevKV != nil && e.PrevKV.Key == "" {
					out = append(out, Anomaly{Check: "filler", Detail: fmt.Sprintf("watcher %d via %s %s from %d showed a filler in response %d: %s",
						w.Watcher, w.Via, fmtRange(w.Key, w.End), w.Start, i, fmtEvent(i, e))})
				}
			}
		}
	}
	for _, r := range h.Reads {
		for _, a := range r.Answers {
			for _, kv := range a.KVs {
				if kv.Key == "" {
					out = append(out, Anomaly{Check: "filler", Detail: fmt.Sprintf("read of %s at %d showed a filler at %v: %s",
						fmtRange(r.Key, r.End), r.Revision, a.At, fmtKVs(a.KVs))})
				}
			}
		}
	}
	return out
}

// CheckCommitted checks the audit itself: each (revision, sub) once, each
// put's value once (values are unique, so a value twice is a write applied
// twice), and versions and create revisions that follow from the rows
// before them. The other checks trust these fields.
func CheckCommitted(h *History) []Anomaly {
	var out []Anomaly
	bad := func(r Row, format string, args ...any) {
		out = append(out, Anomaly{Check: "committed", Detail: fmt.Sprintf(format, args...) + ": " + fmtRow(r)})
	}
	seen := make(map[[2]int64]bool, len(h.Committed))
	for _, r := range h.Committed {
		id := [2]int64{r.Revision, int64(r.Sub)}
		if seen[id] {
			bad(r, "revision %d sub %d inserted twice", r.Revision, r.Sub)
		}
		seen[id] = true
	}
	ix := newIndex(h.Committed)
	for _, rows := range ix.value {
		if len(rows) > 1 && rows[0].Value != "" {
			bad(rows[1], "value %q committed twice, first at revision %d", rows[0].Value, rows[0].Revision)
		}
	}
	for _, k := range ix.keys {
		var prev *Row
		for i, r := range ix.byKey[k] {
			if !r.Tombstone {
				create, version := r.Revision, int64(1)
				if prev != nil && !prev.Tombstone {
					create, version = prev.CreateRevision, prev.Version+1
				}
				if r.CreateRevision != create || r.Version != version {
					bad(r, "create revision %d version %d, want %d %d", r.CreateRevision, r.Version, create, version)
				}
			}
			prev = &ix.byKey[k][i]
		}
	}
	return out
}

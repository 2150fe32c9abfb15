package check

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Result is what the checks found in one history.
type Result struct {
	Ops       int // client operations checked
	Events    int // watch events checked
	Reads     int // repeated reads checked
	Anomalies []Anomaly
}

// OK says whether the checks found nothing wrong.
func (r Result) OK() bool { return len(r.Anomalies) == 0 }

// Run runs every check on h. linearizabilityTimeout bounds porcupine's
// search (0: only ctx's deadline bounds it); a search that does not finish
// is reported as an anomaly, never taken as a pass.
func Run(ctx context.Context, h *History, linearizabilityTimeout time.Duration) Result {
	var r Result
	if h == nil {
		return r
	}
	r.Ops = len(h.Ops)
	for _, w := range h.Watches {
		for _, resp := range w.Responses {
			r.Events += len(resp.Events)
		}
	}
	r.Reads = len(h.Reads)
	r.Anomalies = append(r.Anomalies, CheckLinearizability(ctx, h, linearizabilityTimeout)...)
	r.Anomalies = append(r.Anomalies, CheckWatches(h)...)
	r.Anomalies = append(r.Anomalies, CheckReads(h)...)
	r.Anomalies = append(r.Anomalies, CheckLost(h)...)
	r.Anomalies = append(r.Anomalies, CheckFillers(h)...)
	r.Anomalies = append(r.Anomalies, CheckCommitted(h)...)
	return r
}

// index is h.Committed arranged for the questions the checks ask of it.
type index struct {
	rows   []Row            // every non-filler row, in (revision, sub) order
	byKey  map[string][]Row // a key's rows, in (revision, sub) order
	keys   []string         // every key ever written, sorted
	byRev  map[int64][]Row  // a revision's rows, in sub order
	revs   []int64          // revisions holding a non-filler row, ascending
	value  map[string][]Row // live rows by value
	filler map[int64]bool   // revisions a filler settled
}

func newIndex(committed []Row) *index {
	ix := &index{
		byKey:  make(map[string][]Row),
		byRev:  make(map[int64][]Row),
		value:  make(map[string][]Row),
		filler: make(map[int64]bool),
	}
	for _, r := range committed {
		if r.Filler() {
			ix.filler[r.Revision] = true
		} else {
			ix.rows = append(ix.rows, r)
		}
	}
	// The audit should already be in order; sorting costs little and keeps
	// every lookup below honest if it is not.
	sort.SliceStable(ix.rows, func(i, j int) bool { return rowLess(ix.rows[i], ix.rows[j]) })
	for _, r := range ix.rows {
		if _, ok := ix.byKey[r.Key]; !ok {
			ix.keys = append(ix.keys, r.Key)
		}
		ix.byKey[r.Key] = append(ix.byKey[r.Key], r)
		if len(ix.byRev[r.Revision]) == 0 {
			ix.revs = append(ix.revs, r.Revision)
		}
		ix.byRev[r.Revision] = append(ix.byRev[r.Revision], r)
		if !r.Tombstone {
			ix.value[r.Value] = append(ix.value[r.Value], r)
		}
	}
	sort.Strings(ix.keys)
	return ix
}

func rowLess(a, b Row) bool {
	if a.Revision != b.Revision {
		return a.Revision < b.Revision
	}
	return a.Sub < b.Sub
}

// next is the smallest revision above r that holds a write.
func (ix *index) next(r int64) (int64, bool) {
	i := sort.Search(len(ix.revs), func(i int) bool { return ix.revs[i] > r })
	if i < len(ix.revs) {
		return ix.revs[i], true
	}
	return 0, false
}

// at is key's newest row at or below rev.
func (ix *index) at(key string, rev int64) (Row, bool) {
	rows := ix.byKey[key]
	i := sort.Search(len(rows), func(i int) bool { return rows[i].Revision > rev })
	if i == 0 {
		return Row{}, false
	}
	return rows[i-1], true
}

// stateAt is what a read of [key, end) at rev must show.
func (ix *index) stateAt(rev int64, key, end string) []KV {
	var kvs []KV
	for _, k := range ix.keys {
		if !inRange(k, key, end) {
			continue
		}
		if r, ok := ix.at(k, rev); ok && !r.Tombstone {
			kvs = append(kvs, kvOf(r))
		}
	}
	return kvs
}

// before is the row of r's key just before r.
func (ix *index) before(r Row) (Row, bool) {
	rows := ix.byKey[r.Key]
	i := sort.Search(len(rows), func(i int) bool { return !rowLess(rows[i], r) })
	if i == 0 {
		return Row{}, false
	}
	return rows[i-1], true
}

// startRevision is the revision the model starts from.
func startRevision(h *History) int64 {
	if h.StartRevision > 0 {
		return h.StartRevision
	}
	if len(h.Committed) == 0 {
		return 1
	}
	low := h.Committed[0].Revision
	for _, r := range h.Committed {
		low = min(low, r.Revision)
	}
	return max(low-1, 1)
}

// inRange says whether k is in [key, end), or is key when end is "".
// An end of "\x00" means every key from key on, as in etcd.
func inRange(k, key, end string) bool {
	switch end {
	case "":
		return k == key
	case "\x00":
		return k >= key
	}
	return k >= key && k < end
}

func kvOf(r Row) KV {
	return KV{Key: r.Key, Value: r.Value, CreateRevision: r.CreateRevision, ModRevision: r.Revision, Version: r.Version}
}

// sameKV compares what the checks can know of a KV; leases are not
// modelled (the harness writes none).
func sameKV(a, b KV) bool {
	return a.Key == b.Key && a.Value == b.Value && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version
}

func sameKVs(a, b []KV) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameKV(a[i], b[i]) {
			return false
		}
	}
	return true
}

func fmtKV(kv KV) string {
	return fmt.Sprintf("%q=%q(c%d,m%d,v%d)", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
}

func fmtKVs(kvs []KV) string {
	if len(kvs) == 0 {
		return "[]"
	}
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		parts[i] = fmtKV(kv)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func fmtRange(key, end string) string {
	switch end {
	case "":
		return fmt.Sprintf("%q", key)
	case "\x00":
		return fmt.Sprintf("[%q, ∞)", key)
	}
	return fmt.Sprintf("[%q, %q)", key, end)
}

func (k Kind) String() string {
	switch k {
	case Get:
		return "Get"
	case Put:
		return "Put"
	case Delete:
		return "Delete"
	case DeleteRange:
		return "DeleteRange"
	case Txn:
		return "Txn"
	case Compact:
		return "Compact"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case Failed:
		return "Failed"
	case Unknown:
		return "Unknown"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// String prints an operation on one line: who, what, when, and what came back.
func (o Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "client %d via %s %s ", o.Client, o.Via, o.Kind)
	switch o.Kind {
	case Get:
		b.WriteString(fmtRange(o.Key, o.End))
		if o.Revision > 0 {
			fmt.Fprintf(&b, " @%d", o.Revision)
		}
	case Put:
		fmt.Fprintf(&b, "%q=%q", o.Key, o.Value)
	case Delete:
		fmt.Fprintf(&b, "%q", o.Key)
	case DeleteRange:
		b.WriteString(fmtRange(o.Key, o.End))
	case Txn:
		fmt.Fprintf(&b, "if mod(%q)==%d", o.Key, o.CmpModRevision)
		if o.CmpValue != nil {
			fmt.Fprintf(&b, " && value==%q", *o.CmpValue)
		}
		fmt.Fprintf(&b, " put %q", o.Value)
	case Compact:
		fmt.Fprintf(&b, "%d", o.Revision)
	}
	fmt.Fprintf(&b, " [%v, %v] -> %s", o.Call, o.Return, o.Status)
	switch o.Status {
	case OK:
		fmt.Fprintf(&b, " rev %d", o.Header)
		switch o.Kind {
		case Get:
			b.WriteString(" " + fmtKVs(o.KVs))
		case Txn:
			if o.Succeeded {
				b.WriteString(" succeeded")
			} else {
				b.WriteString(" failed " + fmtKVs(o.KVs))
			}
		case Delete, DeleteRange:
			fmt.Fprintf(&b, " deleted %d", o.Deleted)
		}
	default:
		if o.Compacted > 0 {
			fmt.Fprintf(&b, " compacted %d", o.Compacted)
		}
		if o.Err != "" {
			fmt.Fprintf(&b, " %q", o.Err)
		}
	}
	return b.String()
}

// divergedFrom is the lowest revision any failover took back, or 0.
func divergedFrom(h *History) int64 {
	var from int64
	for _, d := range h.Diverged {
		if from == 0 || d.From < from {
			from = d.From
		}
	}
	return from
}

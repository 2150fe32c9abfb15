package check

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// entry is one live key in the model.
type entry struct {
	key, value           string
	create, mod, version int64
	hash                 uint64
}

func newEntry(key, value string, create, mod, version int64) entry {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\x00%d", key, value, create, mod, version)
	return entry{key: key, value: value, create: create, mod: mod, version: version, hash: h.Sum64()}
}

func (e entry) kv() KV {
	return KV{Key: e.key, Value: e.value, CreateRevision: e.create, ModRevision: e.mod, Version: e.version}
}

// state is the model's etcd: its revision and its live keys. It is never
// changed once built (porcupine keeps old states); a write copies it.
type state struct {
	rev     int64
	entries []entry // sorted by key
	xor     uint64  // xor of the entries' hashes
}

func (s *state) hash() uint64 {
	return s.xor ^ (uint64(s.rev) * 0x9e3779b97f4a7c15)
}

func (s *state) equal(o *state) bool {
	if s.rev != o.rev || s.xor != o.xor || len(s.entries) != len(o.entries) {
		return false
	}
	for i := range s.entries {
		a, b := s.entries[i], o.entries[i]
		if a.key != b.key || a.value != b.value || a.create != b.create || a.mod != b.mod || a.version != b.version {
			return false
		}
	}
	return true
}

func (s *state) find(key string) (int, bool) {
	i := sort.Search(len(s.entries), func(i int) bool { return s.entries[i].key >= key })
	return i, i < len(s.entries) && s.entries[i].key == key
}

func (s *state) put(key, value string, rev int64) *state {
	i, found := s.find(key)
	n := &state{rev: rev, xor: s.xor}
	if found {
		old := s.entries[i]
		n.entries = make([]entry, len(s.entries))
		copy(n.entries, s.entries)
		n.entries[i] = newEntry(key, value, old.create, rev, old.version+1)
		n.xor ^= old.hash ^ n.entries[i].hash
		return n
	}
	n.entries = make([]entry, 0, len(s.entries)+1)
	n.entries = append(n.entries, s.entries[:i]...)
	e := newEntry(key, value, rev, rev, 1)
	n.entries = append(n.entries, e)
	n.entries = append(n.entries, s.entries[i:]...)
	n.xor ^= e.hash
	return n
}

func (s *state) count(key, end string) int64 {
	var n int64
	for _, e := range s.entries {
		if inRange(e.key, key, end) {
			n++
		}
	}
	return n
}

func (s *state) delete(key, end string, rev int64) *state {
	n := &state{rev: rev, xor: s.xor, entries: make([]entry, 0, len(s.entries))}
	for _, e := range s.entries {
		if inRange(e.key, key, end) {
			n.xor ^= e.hash
			continue
		}
		n.entries = append(n.entries, e)
	}
	return n
}

// shows says whether kvs is exactly what a read of [key, end) sees in s.
func (s *state) shows(key, end string, kvs []KV) bool {
	i := 0
	for _, e := range s.entries {
		if !inRange(e.key, key, end) {
			continue
		}
		if i >= len(kvs) || !sameKV(e.kv(), kvs[i]) {
			return false
		}
		i++
	}
	return i == len(kvs)
}

// input is what an operation asked, as the model sees it.
type input struct {
	op       int // its index in History.Ops
	kind     Kind
	key, end string // end is "" for one key (Delete always)
	value    string
	cmpMod   int64
	cmpValue *string
}

// output is what it answered. unknown marks a delete that may or may not
// have happened: the model lets it happen wherever porcupine places it,
// and placing it last is the same as it never having happened.
type output struct {
	unknown   bool
	header    int64 // 0: not recorded, not checked
	kvs       []KV
	succeeded bool
	deleted   int64
}

// kvModel is etcd's KV as porcupine's sequential specification. A write
// takes the next revision that holds a write in the audit (fillers settle
// the ones between), and a read at latest sees the state of its header.
func kvModel(ix *index, start *state) porcupine.Model {
	// headerOK: a read's header may be any revision from the state's to
	// just below the next write's (a filler's, when the watermark is on one).
	headerOK := func(s *state, h int64) bool {
		if h == 0 {
			return true
		}
		n, ok := ix.next(s.rev)
		return h >= s.rev && (!ok || h < n)
	}
	// writeRev is the revision a write answering h takes, if it can.
	writeRev := func(s *state, h int64) (int64, bool) {
		n, ok := ix.next(s.rev)
		if h == 0 {
			if !ok {
				return s.rev + 1, true
			}
			return n, true
		}
		return h, h > s.rev && (!ok || h <= n)
	}
	step := func(st, in, out any) (bool, any) {
		s, i, o := st.(*state), in.(input), out.(output)
		switch i.kind {
		case Get:
			return headerOK(s, o.header) && s.shows(i.key, i.end, o.kvs), s
		case Put:
			rev, ok := writeRev(s, o.header)
			if !ok {
				return false, s
			}
			return true, s.put(i.key, i.value, rev)
		case Delete, DeleteRange:
			n := s.count(i.key, i.end)
			if o.unknown {
				if n == 0 {
					return true, s
				}
				rev, _ := writeRev(s, 0)
				return true, s.delete(i.key, i.end, rev)
			}
			if n == 0 {
				return o.deleted == 0 && headerOK(s, o.header), s
			}
			if o.deleted != n {
				return false, s
			}
			rev, ok := writeRev(s, o.header)
			if !ok {
				return false, s
			}
			return true, s.delete(i.key, i.end, rev)
		case Txn:
			idx, found := s.find(i.key)
			var mod int64
			if found {
				mod = s.entries[idx].mod
			}
			cond := mod == i.cmpMod && (i.cmpValue == nil || found && s.entries[idx].value == *i.cmpValue)
			if o.succeeded {
				if !cond {
					return false, s
				}
				rev, ok := writeRev(s, o.header)
				if !ok {
					return false, s
				}
				return true, s.put(i.key, i.value, rev)
			}
			return !cond && headerOK(s, o.header) && s.shows(i.key, "", o.kvs), s
		}
		return false, s
	}
	return porcupine.Model{
		Init:  func() any { return start },
		Step:  step,
		Equal: func(a, b any) bool { return a.(*state).equal(b.(*state)) },
		Hash:  func(a any) uint64 { return a.(*state).hash() },
		DescribeOperation: func(in, out any) string {
			return fmt.Sprintf("op %d", in.(input).op)
		},
	}
}

// initialState is the model's state at rev, from the audit.
func initialState(ix *index, rev int64) *state {
	s := &state{rev: rev}
	for _, kv := range ix.stateAt(rev, "", "\x00") {
		e := newEntry(kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
		s.entries = append(s.entries, e)
		s.xor ^= e.hash
	}
	return s
}

// CheckLinearizability checks h.Ops against etcd's KV with porcupine, and
// what porcupine cannot see: reads at an old revision (against the audit),
// compacted answers, and writes reported failed that committed.
// Unknown operations are resolved with the audit: a put or Txn whose
// value committed happened at that revision (and is pending to the end of
// the history), one whose value did not never happened; an unknown delete
// stays pending with either outcome allowed, unless no unclaimed tombstone
// in the audit could be its; an unknown read is dropped.
func CheckLinearizability(ctx context.Context, h *History, timeout time.Duration) []Anomaly {
	ix := newIndex(h.Committed)
	anomalies := checkOldReads(h, ix)
	ops := porcupineOps(h, ix)
	if len(ops) == 0 {
		return anomalies
	}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return append(anomalies, Anomaly{Check: "linearizability", Detail: "timed out: " + ctx.Err().Error()})
		}
		if timeout <= 0 || left < timeout {
			timeout = left
		}
	} else if ctx.Err() != nil {
		return append(anomalies, Anomaly{Check: "linearizability", Detail: "not run: " + ctx.Err().Error()})
	}
	start := initialState(ix, startRevision(h))
	model := kvModel(ix, start)
	// porcupine takes no context: a step that fails once ctx is done ends
	// its search quickly, and the verdict is then "timed out", not illegal.
	step := model.Step
	model.Step = func(st, in, out any) (bool, any) {
		if ctx.Err() != nil {
			return false, st
		}
		return step(st, in, out)
	}
	res := porcupine.CheckOperationsTimeout(model, ops, timeout)
	switch {
	case ctx.Err() != nil:
		return append(anomalies, Anomaly{Check: "linearizability", Detail: fmt.Sprintf("timed out on %d operations: %v", len(ops), ctx.Err())})
	case res == porcupine.Unknown:
		return append(anomalies, Anomaly{Check: "linearizability", Detail: fmt.Sprintf("timed out after %v on %d operations", timeout, len(ops))})
	case res == porcupine.Ok:
		return anomalies
	}
	// Search again, now keeping the partial linearizations, only when there
	// is something to show: keeping them slows the search down.
	res, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
	if ctx.Err() != nil || res == porcupine.Unknown {
		return append(anomalies, Anomaly{Check: "linearizability", Detail: "not linearizable (the search for where timed out)"})
	}
	return append(anomalies, Anomaly{Check: "linearizability", Detail: explain(h, ops, model, start, info)})
}

// porcupineOps turns h.Ops into porcupine's operations, resolving the
// unknown ones with the audit.
func porcupineOps(h *History, ix *index) []porcupine.Operation {
	var ops []porcupine.Operation
	from := divergedFrom(h)
	claimed := make(map[int64]bool)
	var unknownDeletes []int
	add := func(i int, in input, out output, pending bool) {
		o := h.Ops[i]
		ret := int64(o.Return)
		if pending {
			ret = math.MaxInt64
		}
		ret = max(ret, int64(o.Call))
		ops = append(ops, porcupine.Operation{ClientId: o.Client, Input: in, Call: int64(o.Call), Output: out, Return: ret, Metadata: i})
	}
	for i, o := range h.Ops {
		in := input{op: i, kind: o.Kind, key: o.Key, end: o.End, value: o.Value, cmpMod: o.CmpModRevision, cmpValue: o.CmpValue}
		switch o.Kind {
		case Get:
			// Reads at an old revision are checked against the audit instead.
			if o.Status != OK || o.Revision > 0 {
				continue
			}
		case Delete:
			in.end = ""
		case Put, Txn, DeleteRange:
		default:
			continue
		}
		if from > 0 && o.Status == OK && o.Header >= from {
			// Past a failover that lost revisions the audit is no judge.
			continue
		}
		switch o.Status {
		case OK:
			if o.Kind != Get && (o.Kind != Txn || o.Succeeded) && (o.Kind == Put || o.Kind == Txn || o.Deleted > 0) {
				claimed[o.Header] = true
			}
			add(i, in, output{header: o.Header, kvs: o.KVs, succeeded: o.Succeeded, deleted: o.Deleted}, false)
		case Unknown:
			switch o.Kind {
			case Put, Txn:
				r, ok := committedPut(ix, o)
				if !ok {
					continue // it never happened
				}
				claimed[r.Revision] = true
				add(i, in, output{header: r.Revision, succeeded: true}, true)
			case Delete, DeleteRange:
				unknownDeletes = append(unknownDeletes, i)
			}
		}
	}
	// An unknown delete that deleted something left tombstones at a
	// revision no other write claims; one that left none did nothing anyone
	// can see, and keeping it pending only slows the search.
	var free []int64
	for _, rev := range ix.revs {
		if claimed[rev] {
			continue
		}
		all := true
		for _, r := range ix.byRev[rev] {
			all = all && r.Tombstone
		}
		if all {
			free = append(free, rev)
		}
	}
	for _, i := range unknownDeletes {
		o := h.Ops[i]
		end := o.End
		if o.Kind == Delete {
			end = ""
		}
		could := false
		for _, rev := range free {
			in := true
			for _, r := range ix.byRev[rev] {
				in = in && inRange(r.Key, o.Key, end)
			}
			could = could || in
		}
		if could {
			add(i, input{op: i, kind: o.Kind, key: o.Key, end: end}, output{unknown: true}, true)
		}
	}
	return ops
}

// committedPut is the audit's row for a put or Txn's value, if it committed.
func committedPut(ix *index, o Op) (Row, bool) {
	for _, r := range ix.value[o.Value] {
		if r.Key == o.Key {
			return r, true
		}
	}
	return Row{}, false
}

// checkOldReads checks what porcupine does not: reads at a revision, the
// compacted answers, compactions, and failed writes.
func checkOldReads(h *History, ix *index) []Anomaly {
	var out []Anomaly
	bad := func(o Op, format string, args ...any) {
		out = append(out, Anomaly{Check: "linearizability", Detail: fmt.Sprintf(format, args...) + "\n  " + o.String()})
	}
	from := divergedFrom(h)
	var compacts []Op
	for _, o := range h.Ops {
		if o.Kind == Compact && o.Status == OK {
			compacts = append(compacts, o)
			if o.Revision > h.Compacted {
				bad(o, "compaction to %d answered OK but the compacted revision at the end is %d", o.Revision, h.Compacted)
			}
		}
	}
	for _, o := range h.Ops {
		switch {
		case (o.Kind == Put || o.Kind == Txn) && o.Status == Failed:
			if r, ok := committedPut(ix, o); ok {
				bad(o, "a write reported failed committed at revision %d", r.Revision)
			}
		case o.Kind == Get && o.Revision > 0 && o.Status == Failed && o.Compacted > 0:
			if o.Revision >= o.Compacted {
				bad(o, "read at %d refused as compacted, but the compacted revision it gave is %d", o.Revision, o.Compacted)
			}
			if o.Compacted > h.Compacted {
				bad(o, "read refused as compacted at %d, above the compacted revision at the end (%d)", o.Compacted, h.Compacted)
			}
		case o.Kind == Get && o.Revision > 0 && o.Status == OK:
			if o.Header > 0 && o.Header < o.Revision {
				bad(o, "read at %d answered with a header below it", o.Revision)
			}
			for _, c := range compacts {
				if c.Return < o.Call && o.Revision < c.Revision {
					bad(o, "read at %d answered after a compaction to %d had finished (at %v)", o.Revision, c.Revision, c.Return)
					break
				}
			}
			if from > 0 && o.Revision >= from {
				continue
			}
			if want := ix.stateAt(o.Revision, o.Key, o.End); !sameKVs(want, o.KVs) {
				bad(o, "read at %d differs from the audit: want %s", o.Revision, fmtKVs(want))
			}
		}
	}
	return out
}

// explain shows where the longest linearizable prefix porcupine found
// ends: its last operations, the state after it, and the operations that
// could not follow it.
func explain(h *History, ops []porcupine.Operation, model porcupine.Model, start *state, info porcupine.LinearizationInfo) string {
	var longest []int
	for _, part := range info.PartialLinearizations() {
		for _, seq := range part {
			if len(seq) > len(longest) {
				longest = seq
			}
		}
	}
	s := any(start)
	done := make(map[int]bool, len(longest))
	for _, id := range longest {
		if id < 0 || id >= len(ops) {
			continue
		}
		_, s = model.Step(s, ops[id].Input, ops[id].Output)
		done[id] = true
	}
	var rest []int
	for id := range ops {
		if !done[id] {
			rest = append(rest, id)
		}
	}
	sort.Slice(rest, func(a, b int) bool {
		x, y := ops[rest[a]], ops[rest[b]]
		if x.Return != y.Return {
			return x.Return < y.Return
		}
		return x.Call < y.Call
	})
	const tail, head = 4, 8
	var b strings.Builder
	fmt.Fprintf(&b, "not linearizable: %d of %d operations linearize, then none of the rest can\n", len(longest), len(ops))
	b.WriteString("last linearized:\n")
	for _, id := range longest[max(0, len(longest)-tail):] {
		fmt.Fprintf(&b, "  %s%s\n", h.Ops[ops[id].Metadata.(int)], pendingNote(ops[id]))
	}
	st := s.(*state)
	fmt.Fprintf(&b, "state then: rev %d", st.rev)
	keys := make(map[string]bool)
	shown := rest[:min(head, len(rest))]
	for _, id := range shown {
		keys[h.Ops[ops[id].Metadata.(int)].Key] = true
	}
	for _, e := range st.entries {
		if keys[e.key] {
			b.WriteString(" " + fmtKV(e.kv()))
		}
	}
	b.WriteString("\nfirst that cannot follow (by return):\n")
	for _, id := range shown {
		fmt.Fprintf(&b, "  %s%s\n", h.Ops[ops[id].Metadata.(int)], pendingNote(ops[id]))
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func pendingNote(o porcupine.Operation) string {
	if o.Return != math.MaxInt64 {
		return ""
	}
	if out := o.Output.(output); !out.unknown {
		return fmt.Sprintf(" (pending; committed at %d)", out.header)
	}
	return " (pending; outcome unknown)"
}

package check

import (
	"context"
	"strings"
	"testing"
	"time"
)

// builder writes a small sequential history: each operation takes 1ms and
// the next one starts 1ms after it, so their order is fixed.
type builder struct {
	s   *sim
	ops []Op
	t   time.Duration
}

func newBuilder() *builder { return &builder{s: newSim(), t: time.Millisecond} }

func (b *builder) do(o Op) int {
	o.Call, o.Return = b.t, b.t+time.Millisecond
	b.t += 2 * time.Millisecond
	if o.Via == "" {
		o.Via = "etcd"
	}
	b.s.apply(&o)
	b.ops = append(b.ops, o)
	return len(b.ops) - 1
}

func (b *builder) put(c int, k, v string) int {
	return b.do(Op{Client: c, Kind: Put, Key: k, Value: v})
}
func (b *builder) get(c int, k, end string) int {
	return b.do(Op{Client: c, Kind: Get, Key: k, End: end})
}
func (b *builder) getAt(c int, k, end string, rev int64) int {
	return b.do(Op{Client: c, Kind: Get, Key: k, End: end, Revision: rev})
}
func (b *builder) del(c int, k string) int { return b.do(Op{Client: c, Kind: Delete, Key: k}) }
func (b *builder) delRange(c int, k, end string) int {
	return b.do(Op{Client: c, Kind: DeleteRange, Key: k, End: end})
}
func (b *builder) txn(c int, k string, cmpMod int64, v string) int {
	return b.do(Op{Client: c, Kind: Txn, Key: k, CmpModRevision: cmpMod, Value: v})
}

// unknown records an operation that timed out: run says whether it took
// effect (it is applied to the store but its answer is lost).
func (b *builder) unknown(o Op, run bool) int {
	if run {
		b.do(o)
		b.ops[len(b.ops)-1] = Op{Client: o.Client, Via: "etcd", Kind: o.Kind, Key: o.Key, End: o.End, Value: o.Value,
			CmpModRevision: o.CmpModRevision, Call: b.ops[len(b.ops)-1].Call, Return: b.ops[len(b.ops)-1].Return,
			Status: Unknown, Err: "deadline exceeded"}
		return len(b.ops) - 1
	}
	o.Call, o.Return = b.t, b.t+time.Millisecond
	b.t += 2 * time.Millisecond
	o.Via, o.Status, o.Err = "etcd", Unknown, "deadline exceeded"
	b.ops = append(b.ops, o)
	return len(b.ops) - 1
}

func (b *builder) history() *History {
	return &History{Ops: b.ops, Committed: append([]Row(nil), b.s.rows...), Compacted: b.s.compacted}
}

// base is a small correct history with every kind of operation, a filler,
// a watch of everything with prev_kv, and a read at a revision twice.
func base() *History {
	b := newBuilder()
	b.put(0, "a", "a1")     // 2
	b.put(1, "b", "b1")     // 3
	b.s.filler()            // 4
	b.get(2, "a", "c")      // header 4
	b.put(0, "a", "a2")     // 5
	b.txn(1, "a", 5, "a3")  // 6
	b.txn(2, "a", 5, "a4")  // fails
	b.del(0, "b")           // 7
	b.del(1, "b")           // nothing
	b.put(2, "b", "b2")     // 8
	b.put(0, "c", "c1")     // 9
	b.delRange(1, "b", "d") // 10: b and c together
	b.getAt(2, "a", "d", 5) // a2
	b.get(0, "a", "d")      // a3
	b.do(Op{Client: 0, Kind: Compact, Revision: 6})
	b.getAt(1, "a", "", 3) // compacted
	h := b.history()
	w := watchOf(h.Committed, "a", "d", 2, true)
	h.Watches = []Watch{w, watchOf(h.Committed, "b", "", 5, false)}
	h.Reads = []Read{{Key: "a", End: "d", Revision: 8, Answers: []ReadAnswer{
		{At: time.Millisecond, KVs: b.s.at(8, "a", "d")},
		{At: 2 * time.Millisecond, KVs: b.s.at(8, "a", "d")},
		{At: 3 * time.Millisecond, Compacted: 9},
	}}}
	h.Compacted = 9
	return h
}

func TestBasePasses(t *testing.T) {
	h := base()
	r := Run(context.Background(), h, 10*time.Second)
	for _, a := range r.Anomalies {
		t.Errorf("%s: %s", a.Check, a.Detail)
	}
	if r.Ops != len(h.Ops) || r.Events == 0 || r.Reads != 1 {
		t.Errorf("counts: %+v", r)
	}
}

func findOp(h *History, kind Kind, pred func(Op) bool) *Op {
	for i := range h.Ops {
		if h.Ops[i].Kind == kind && pred(h.Ops[i]) {
			return &h.Ops[i]
		}
	}
	return nil
}

// respWithRev is the response of w carrying revision rev.
func respWithRev(w *Watch, rev int64) int {
	for i, r := range w.Responses {
		for _, e := range r.Events {
			if e.KV.ModRevision == rev {
				return i
			}
		}
	}
	return -1
}

func TestAnomalies(t *testing.T) {
	tests := []struct {
		name  string
		h     func() *History
		check string // the check that must report it; "" for none
		text  string // in the detail
	}{
		{"base", base, "", ""},
		{"stale read", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 0 && o.Header == 10 })
			g.Header, g.KVs = 5, []KV{{Key: "a", Value: "a2", CreateRevision: 2, ModRevision: 5, Version: 2}}
			return h
		}, "linearizability", "cannot follow"},
		{"read of a value never written", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 0 && o.Header == 10 })
			g.KVs[0].Value = "zz"
			return h
		}, "linearizability", ""},
		{"wrong version", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 0 && o.Header == 10 })
			g.KVs[0].Version = 7
			return h
		}, "linearizability", ""},
		{"a revision no operation wrote", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.s.put("z", "ghost")
			b.put(0, "a", "a2")
			return b.history()
		}, "linearizability", ""},
		{"a revision nobody holds", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.s.rev++ // the sequence skipped it, and no filler was needed
			b.put(0, "a", "a2")
			b.get(1, "a", "")
			return b.history()
		}, "", ""},
		{"lost acknowledged put", func() *History {
			h := base()
			h.Committed = h.Committed[:len(h.Committed)-3] // drop rev 9 and 10
			h.Watches, h.Reads = nil, nil
			return h
		}, "lost", "not in the audit"},
		{"put acknowledged at the wrong revision", func() *History {
			h := base()
			findOp(h, Put, func(o Op) bool { return o.Value == "b2" }).Header = 7
			return h
		}, "lost", "not at 7"},
		{"lost delete", func() *History {
			h := base()
			findOp(h, DeleteRange, func(Op) bool { return true }).Deleted = 3
			return h
		}, "lost", "tombstones"},
		{"failed write that committed", func() *History {
			h := base()
			o := findOp(h, Put, func(o Op) bool { return o.Value == "c1" })
			o.Status, o.Err = Failed, "refused"
			return h
		}, "linearizability", "reported failed"},
		{"old read differs from the audit", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 5 })
			g.KVs = nil
			return h
		}, "linearizability", "differs from the audit"},
		{"read below a finished compaction answered", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 3 })
			g.Status, g.Compacted, g.Header = OK, 0, 10
			g.KVs = []KV{{Key: "a", Value: "a1", CreateRevision: 2, ModRevision: 2, Version: 1}, {Key: "b", Value: "b1", CreateRevision: 3, ModRevision: 3, Version: 1}}
			g.End = "c"
			return h
		}, "linearizability", "compaction"},
		{"compacted answer at the compacted revision", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 3 })
			g.Revision = 6
			return h
		}, "linearizability", "refused as compacted"},
		{"read answer compacted above its revision", func() *History {
			h := base()
			h.Reads[0].Answers[2].Compacted = 8
			return h
		}, "read", "compacted"},
		{"compacted above the final compacted revision", func() *History {
			h := base()
			h.Reads[0].Answers[2].Compacted = 12
			return h
		}, "read", "above the compacted revision"},
		{"read at a revision that changed", func() *History {
			h := base()
			h.Reads[0].Answers[1].KVs = h.Reads[0].Answers[1].KVs[:1]
			return h
		}, "read", "changed"},
		{"read differs from the audit", func() *History {
			h := base()
			for i := range h.Reads[0].Answers[:2] {
				h.Reads[0].Answers[i].KVs = h.Reads[0].Answers[i].KVs[1:]
			}
			return h
		}, "read", "audit"},
		{"read un-compacted", func() *History {
			h := base()
			a := h.Reads[0].Answers
			a[1], a[2] = a[2], a[1]
			a[1].At, a[2].At = a[2].At, a[1].At
			return h
		}, "read", "after being refused"},
		{"watch missing an event", func() *History {
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 5)
			w.Responses = append(w.Responses[:i], w.Responses[i+1:]...)
			return h
		}, "watch", "missing"},
		{"watch missing the last event before a progress mark", func() *History {
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 10)
			w.Responses = append(w.Responses[:i], w.Responses[i+1:]...)
			return h
		}, "watch", "progress mark 10 ahead"},
		{"watch repeated event", func() *History {
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 5)
			w.Responses = append(w.Responses[:i+1], w.Responses[i:]...)
			return h
		}, "watch", "repeated"},
		{"watch out of order", func() *History {
			h := base()
			w := &h.Watches[0]
			i, j := respWithRev(w, 5), respWithRev(w, 6)
			w.Responses[i].Events, w.Responses[j].Events = w.Responses[j].Events, w.Responses[i].Events
			return h
		}, "watch", "order"},
		{"watch revision split over two responses", func() *History {
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 10)
			evs := w.Responses[i].Events
			if len(evs) != 2 {
				t.Fatalf("revision 10 has %d events", len(evs))
			}
			split := []Response{{At: w.Responses[i].At, Events: evs[:1]}, {At: w.Responses[i].At, Events: evs[1:]}}
			w.Responses = append(w.Responses[:i], append(split, w.Responses[i+1:]...)...)
			return h
		}, "watch", "incomplete"},
		{"watch progress mark ahead", func() *History {
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 8)
			w.Responses = append(w.Responses[:i], append([]Response{{At: w.Responses[i].At, Progress: 8}}, w.Responses[i:]...)...)
			return h
		}, "watch", "progress mark 8 ahead"},
		{"watch event after a progress mark", func() *History {
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 8)
			w.Responses = append(w.Responses[:i], append([]Response{{At: w.Responses[i].At, Progress: 7}, w.Responses[i]}, w.Responses[i:]...)...)
			w.Responses[i+1].Events = []Event{{Type: EventPut, KV: KV{Key: "b", Value: "b1", CreateRevision: 3, ModRevision: 7, Version: 1}}}
			return h
		}, "watch", ""},
		{"watch wrong prev_kv", func() *History {
			h := base()
			w := &h.Watches[0]
			e := &w.Responses[respWithRev(w, 5)].Events[0]
			p := *e.PrevKV
			p.Value = "zz"
			e.PrevKV = &p
			return h
		}, "watch", "wrong prev_kv"},
		{"watch prev_kv missing", func() *History {
			h := base()
			w := &h.Watches[0]
			w.Responses[respWithRev(w, 10)].Events[1].PrevKV = nil
			return h
		}, "watch", "prev_kv missing"},
		{"watch prev_kv after a delete", func() *History {
			h := base()
			w := &h.Watches[0]
			e := &w.Responses[respWithRev(w, 8)].Events[0] // b2 after b's delete
			e.PrevKV = &KV{Key: "b", Value: "b1", CreateRevision: 3, ModRevision: 3, Version: 1}
			return h
		}, "watch", "no live value"},
		{"watch wrong event type", func() *History {
			h := base()
			w := &h.Watches[0]
			w.Responses[respWithRev(w, 7)].Events[0].Type = EventPut
			return h
		}, "watch", "shown as put"},
		{"watch wrong value", func() *History {
			h := base()
			w := &h.Watches[1]
			w.Responses[respWithRev(w, 8)].Events[0].KV.Version = 2
			return h
		}, "watch", "wrong KV"},
		{"watch event outside its range", func() *History {
			h := base()
			w := &h.Watches[1]
			w.Responses[0].Events = append([]Event{{Type: EventPut, KV: KV{Key: "a", Value: "a2", CreateRevision: 2, ModRevision: 5, Version: 2}}}, w.Responses[0].Events...)
			return h
		}, "watch", "outside"},
		{"watch compacted though its start is not below", func() *History {
			h := base()
			w := &h.Watches[1]
			w.Responses = []Response{{At: time.Millisecond, Ended: true, Compacted: 5}}
			return h
		}, "watch", "start is not below"},
		{"watch compacted properly", func() *History {
			h := base()
			w := &h.Watches[1]
			w.Start = 3
			w.Responses = []Response{{At: time.Millisecond, Ended: true, Compacted: 9}}
			return h
		}, "", ""},
		{"watch closed early by the watcher", func() *History {
			h := base()
			w := &h.Watches[0]
			w.Responses = w.Responses[:2]
			return h
		}, "", ""},
		{"filler shown by a watch", func() *History {
			h := base()
			w := &h.Watches[0]
			w.Responses = append(w.Responses[:2], append([]Response{{At: w.Responses[1].At, Events: []Event{{Type: EventPut, KV: KV{ModRevision: 4}}}}}, w.Responses[2:]...)...)
			return h
		}, "filler", ""},
		{"watch event at a filler's revision", func() *History {
			// The known defect: a put's lost first attempt delivered at the
			// revision a filler took.
			h := base()
			w := &h.Watches[0]
			i := respWithRev(w, 5)
			w.Responses = append(w.Responses[:i], append([]Response{{At: w.Responses[i].At, Events: []Event{{Type: EventPut,
				KV: KV{Key: "a", Value: "a2", CreateRevision: 2, ModRevision: 4, Version: 2}}}}}, w.Responses[i:]...)...)
			return h
		}, "watch", "a filler settled revision 4"},
		{"filler shown by a read", func() *History {
			h := base()
			g := findOp(h, Get, func(o Op) bool { return o.Revision == 0 && o.Header == 4 })
			g.KVs = append(g.KVs, KV{ModRevision: 4})
			return h
		}, "filler", ""},
		{"watch not relisted across a failover", func() *History {
			h := base()
			h.Diverged = []Divergence{{At: 3 * time.Millisecond, From: 9}}
			return h
		}, "watch", "re-list"},
		{"watch relisted across a failover", func() *History {
			h := base()
			h.Diverged = []Divergence{{At: 3 * time.Millisecond, From: 9}}
			for i := range h.Watches {
				w := &h.Watches[i]
				w.Responses = append(w.Responses, Response{At: time.Second, Ended: true, Relist: true})
			}
			return h
		}, "", ""},
		{"audit with a wrong version", func() *History {
			h := base()
			h.Committed[4].Version = 1
			h.Watches, h.Reads = nil, nil
			return h
		}, "committed", "version"},
		{"unknown put that committed and was seen", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Put, Key: "a", Value: "a2"}, true)
			b.get(2, "a", "")
			return b.history()
		}, "", ""},
		{"unknown put that committed and was not seen", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Put, Key: "a", Value: "a2"}, true)
			b.ops = append(b.ops, Op{Client: 2, Via: "etcd", Kind: Get, Key: "a", Call: b.t, Return: b.t + time.Millisecond,
				Status: OK, Header: 3, KVs: []KV{{Key: "a", Value: "a1", CreateRevision: 2, ModRevision: 2, Version: 1}}})
			return b.history()
		}, "linearizability", "pending; committed at 3"},
		{"unknown put that did not commit and was not seen", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Put, Key: "a", Value: "a2"}, false)
			b.get(2, "a", "")
			b.put(0, "a", "a3")
			return b.history()
		}, "", ""},
		{"unknown put that did not commit but was seen", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Put, Key: "a", Value: "a2"}, false)
			b.ops = append(b.ops, Op{Client: 2, Via: "etcd", Kind: Get, Key: "a", Call: b.t, Return: b.t + time.Millisecond,
				Status: OK, Header: 3, KVs: []KV{{Key: "a", Value: "a2", CreateRevision: 2, ModRevision: 3, Version: 2}}})
			return b.history()
		}, "linearizability", ""},
		{"unknown Txn that committed", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Txn, Key: "a", CmpModRevision: 2, Value: "a2"}, true)
			b.get(2, "a", "")
			return b.history()
		}, "", ""},
		{"unknown Txn that committed though its compare failed", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Txn, Key: "a", CmpModRevision: 2, Value: "a2"}, true)
			b.ops[1].CmpModRevision = 7
			b.get(2, "a", "")
			return b.history()
		}, "linearizability", ""},
		{"unknown delete that happened", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.put(0, "b", "b1")
			b.unknown(Op{Client: 1, Kind: DeleteRange, Key: "a", End: "c"}, true)
			b.get(2, "a", "c")
			b.put(0, "a", "a2")
			b.get(2, "a", "c")
			return b.history()
		}, "", ""},
		{"unknown delete that did not happen", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Delete, Key: "a"}, false)
			b.get(2, "a", "")
			return b.history()
		}, "", ""},
		{"delete seen that no one did", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Delete, Key: "b"}, false)
			b.ops = append(b.ops, Op{Client: 2, Via: "etcd", Kind: Get, Key: "a", Call: b.t, Return: b.t + time.Millisecond, Status: OK, Header: 2})
			return b.history()
		}, "linearizability", ""},
		{"unknown read dropped", func() *History {
			b := newBuilder()
			b.put(0, "a", "a1")
			b.unknown(Op{Client: 1, Kind: Get, Key: "a"}, false)
			return b.history()
		}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), tt.h(), 10*time.Second)
			if tt.check == "" {
				for _, a := range r.Anomalies {
					t.Errorf("unexpected %s: %s", a.Check, a.Detail)
				}
				return
			}
			found := false
			for _, a := range r.Anomalies {
				if a.Check == tt.check && strings.Contains(a.Detail, tt.text) {
					found = true
					t.Logf("%s: %s", a.Check, a.Detail)
				}
			}
			if !found {
				t.Errorf("no %s anomaly with %q; got %d:", tt.check, tt.text, len(r.Anomalies))
				for _, a := range r.Anomalies {
					t.Errorf("  %s: %s", a.Check, a.Detail)
				}
			}
		})
	}
}

func TestTimeoutIsAnAnomaly(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	found := false
	for _, a := range Run(ctx, base(), time.Minute).Anomalies {
		found = found || a.Check == "linearizability" && strings.Contains(a.Detail, "timed out")
	}
	if !found {
		t.Error("a search that could not run passed")
	}
}

func TestBadInputDoesNotPanic(t *testing.T) {
	h := &History{
		Ops: []Op{
			{Kind: Kind(99), Status: OK},
			{Kind: Get, Status: Status(7)},
			{Kind: Put, Status: OK, Call: 5, Return: 1},
			{Kind: Txn, Status: Unknown, Value: "x"},
		},
		Watches:   []Watch{{Responses: []Response{{Events: []Event{{}}}, {Progress: -1}}}},
		Reads:     []Read{{Answers: []ReadAnswer{{}}}},
		Committed: []Row{{Revision: 5}, {Revision: 3, Key: "a", Value: "x"}},
	}
	Run(context.Background(), h, time.Second)
	Run(context.Background(), &History{}, time.Second)
	Run(context.Background(), nil, time.Second)
}

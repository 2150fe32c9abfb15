package check

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"testing"
	"time"
)

// generate simulates clients on a linearizable store: each operation takes
// effect at one instant inside its call and return, in instant order. Some
// time out (Unknown) whether or not they took effect, some reads are at an
// old revision, one client compacts, fillers settle some revisions.
func generate(seed int64, clients, perClient, keys int) *History {
	rng := rand.New(rand.NewSource(seed))
	s := newSim()
	type pending struct {
		op     int
		at     time.Duration
		effect bool // an Unknown op that took effect
	}
	var (
		ops  []Op
		plan []pending
	)
	key := func() string { return fmt.Sprintf("k%02d", rng.Intn(keys)) }
	for c := range clients {
		t := time.Duration(rng.Intn(1000)) * time.Microsecond
		for n := range perClient {
			o := Op{Client: c, Via: []string{"etcd", "http", "sql"}[rng.Intn(3)], Key: key()}
			switch p := rng.Intn(100); {
			case p < 30:
				o.Kind = Get
				if rng.Intn(3) == 0 {
					o.Key, o.End = "k00", "k99"
				}
			case p < 37:
				o.Kind = Get
				o.Revision = -1 // chosen when it takes effect
			case p < 65:
				o.Kind = Put
			case p < 75:
				o.Kind = Delete
			case p < 79:
				o.Kind = DeleteRange
				a, b := rng.Intn(keys), rng.Intn(keys)
				o.Key, o.End = fmt.Sprintf("k%02d", min(a, b)), fmt.Sprintf("k%02d", max(a, b)+1)
			default:
				o.Kind = Txn
				o.CmpModRevision = -1 // chosen when it takes effect
			}
			if c == 0 && n == perClient/2 {
				o.Kind = Compact
			}
			if o.Kind == Put || o.Kind == Txn {
				o.Value = fmt.Sprintf("v%d.%d", c, n)
			}
			o.Call = t
			at := t + time.Duration(rng.Intn(2000))*time.Microsecond
			o.Return = at + time.Duration(rng.Intn(2000))*time.Microsecond
			t = o.Return + time.Duration(rng.Intn(500))*time.Microsecond
			effect := true
			if o.Kind != Compact && rng.Intn(100) < 3 {
				o.Status = Unknown
				effect = rng.Intn(2) == 0
			}
			ops = append(ops, o)
			plan = append(plan, pending{op: len(ops) - 1, at: at, effect: effect})
		}
	}
	sort.SliceStable(plan, func(i, j int) bool { return plan[i].at < plan[j].at })
	var compactedAt time.Duration
	for _, p := range plan {
		o := &ops[p.op]
		if !p.effect {
			continue
		}
		if o.Revision == -1 {
			o.Revision = 1 + rng.Int63n(s.rev)
		}
		if o.Kind == Compact {
			o.Revision = max(s.rev-30, 1)
			compactedAt = o.Return
		}
		if o.CmpModRevision == -1 {
			o.CmpModRevision = s.live[o.Key].ModRevision
			if rng.Intn(3) == 0 {
				o.CmpModRevision = rng.Int63n(s.rev + 1)
			}
		}
		unknown := o.Status == Unknown
		s.apply(o)
		if unknown {
			*o = Op{Client: o.Client, Via: o.Via, Kind: o.Kind, Key: o.Key, End: o.End, Value: o.Value,
				Revision: o.Revision, CmpModRevision: o.CmpModRevision, Call: o.Call, Return: o.Return,
				Status: Unknown, Err: "deadline exceeded"}
		}
		if o.Kind != Get && o.Kind != Compact && rng.Intn(20) == 0 {
			s.filler()
		}
	}
	for i := range ops {
		if ops[i].Revision == -1 { // an Unknown read at a revision that never ran
			ops[i].Revision = 1
		}
	}
	h := &History{Seed: seed, Ops: ops, Committed: s.rows, Compacted: s.compacted}
	h.Watches = []Watch{
		watchOf(s.rows, "k00", "k99", 2, true),
		watchOf(s.rows, "k03", "", s.rev/2, true),
		watchOf(s.rows, "k04", "k08", s.rev/3, false),
	}
	for range 6 {
		rev := 1 + rng.Int63n(s.rev)
		r := Read{Key: "k00", End: "k99", Revision: rev}
		for i := range 3 {
			at := compactedAt + time.Duration(i-1)*time.Millisecond
			if at >= compactedAt && rev < s.compacted {
				r.Answers = append(r.Answers, ReadAnswer{At: at, Compacted: s.compacted})
			} else {
				r.Answers = append(r.Answers, ReadAnswer{At: at, KVs: s.at(rev, r.Key, r.End)})
			}
		}
		h.Reads = append(h.Reads, r)
	}
	return h
}

func TestGeneratedHistory(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			h := generate(seed, 8, 300, 16)
			start := time.Now()
			r := Run(context.Background(), h, 30*time.Second)
			t.Logf("%d ops, %d events, %d reads, %d rows in %v", r.Ops, r.Events, r.Reads, len(h.Committed), time.Since(start))
			for _, a := range r.Anomalies {
				t.Errorf("%s: %s", a.Check, a.Detail)
			}
			if r.Ops != 8*300 || r.Events == 0 || r.Reads != 6 {
				t.Errorf("counts: %+v", r)
			}
		})
	}
}

func TestGeneratedHistoryWithStaleRead(t *testing.T) {
	h := generate(1, 8, 300, 16)
	// Make a late read of one key see the state before a write to that key
	// that had returned before the read was called.
	stale := -1
	for i := len(h.Ops) - 1; i >= 0 && stale < 0; i-- {
		g := h.Ops[i]
		if g.Kind != Get || g.Status != OK || g.Revision != 0 || g.End != "" {
			continue
		}
		for _, w := range h.Ops {
			if w.Kind == Put && w.Status == OK && w.Key == g.Key && w.Return < g.Call && w.Header > 3 {
				s := &sim{rows: h.Committed}
				h.Ops[i].Header = w.Header - 1
				h.Ops[i].KVs = s.at(w.Header-1, g.Key, "")
				stale = i
				break
			}
		}
	}
	if stale < 0 {
		t.Fatal("no read to make stale")
	}
	start := time.Now()
	r := Run(context.Background(), h, 30*time.Second)
	t.Logf("in %v", time.Since(start))
	found := false
	for _, a := range r.Anomalies {
		t.Logf("%s: %s", a.Check, a.Detail)
		found = found || a.Check == "linearizability"
	}
	if !found {
		t.Errorf("stale read of op %d not found: %s", stale, h.Ops[stale])
	}
}

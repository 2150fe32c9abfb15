package replication

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// TestMatches: every watcher gets exactly the events of a release that are
// in its range and at or after its start, in order; range watchers that get
// all of them share one slice.
func TestMatches(t *testing.T) {
	ev := func(rev int64, key string) Event { return Event{Revision: rev, Key: []byte(key)} }
	revs := []revEvents{
		{rev: 10, events: []Event{ev(10, "/a/1"), ev(10, "/b/1")}},
		{rev: 11, events: []Event{ev(11, "/a/1")}},
		{rev: 12, events: []Event{ev(12, "/a/2")}},
	}
	tests := []struct {
		name  string
		rng   store.KeyRange
		next  int64
		want  []string // rev:key
		share bool     // the release's slice of all events itself
	}{
		{"prefix of everything", store.Prefix([]byte("/")), 10, []string{"10:/a/1", "10:/b/1", "11:/a/1", "12:/a/2"}, true},
		{"prefix of some", store.Prefix([]byte("/a/")), 10, []string{"10:/a/1", "11:/a/1", "12:/a/2"}, false},
		{"prefix from a later start", store.Prefix([]byte("/")), 11, []string{"11:/a/1", "12:/a/2"}, false},
		{"prefix of none", store.Prefix([]byte("/c/")), 10, nil, false},
		{"key with two events", store.Key([]byte("/a/1")), 10, []string{"10:/a/1", "11:/a/1"}, false},
		{"key from its second event", store.Key([]byte("/a/1")), 11, []string{"11:/a/1"}, false},
		{"key after its events", store.Key([]byte("/a/1")), 12, nil, false},
		{"key of one event", store.Key([]byte("/b/1")), 10, []string{"10:/b/1"}, false},
		{"key of none", store.Key([]byte("/b/2")), 10, nil, false},
	}
	g := newWatcherGroup()
	watchers := map[*watcher]int{}
	twins := make([][2]*watcher, len(tests))
	for i, tt := range tests {
		// Two watchers of each: the same key or range gets the same events.
		for j := range twins[i] {
			twins[i][j] = &watcher{rng: tt.rng, next: tt.next}
			g.add(twins[i][j])
			watchers[twins[i][j]] = i
		}
	}
	got := map[*watcher][]Event{}
	out := g.matches(nil, revs)
	for _, d := range out {
		if _, dup := got[d.wt]; dup {
			t.Fatalf("watcher %q delivered twice", tests[watchers[d.wt]].name)
		}
		got[d.wt] = d.evs
	}
	for wt, i := range watchers {
		tt := tests[i]
		if keys := revKeys(got[wt]); !slices.Equal(keys, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, keys, tt.want)
		}
	}
	for i, tt := range tests {
		a, b := got[twins[i][0]], got[twins[i][1]]
		if tt.share && (len(a) == 0 || &a[0] != &b[0]) {
			t.Errorf("%s: twin watchers were given copies, not one shared slice", tt.name)
		}
	}
	// Appending to a reused buffer keeps what it held.
	if first, again := out[0].wt, g.matches(out[:1], revs); len(again) != len(out)+1 || again[0].wt != first {
		t.Errorf("matches onto a buffer of one: %d deliveries, want %d", len(again), len(out)+1)
	}
}

// TestMatchesAgainstEveryWatcher checks the group's index against asking
// every watcher: random watchers of keys, prefixes, ranges, open ranges and
// ranges from the empty key, many sharing a range, added and deleted
// between random releases; each release must reach exactly the watchers,
// and the events, that the watchers' own ranges and starts say.
func TestMatchesAgainstEveryWatcher(t *testing.T) {
	rnd := rand.New(rand.NewPCG(17, 2026))
	// Binary keys too: bytes at both ends of the order, where a prefix of
	// 0xff bytes has no end and "\x00" is the lowest key there is.
	binary := func() []byte {
		k := make([]byte, 1+rnd.IntN(3))
		for i := range k {
			k[i] = []byte{0x00, 0x01, 0xfe, 0xff}[rnd.IntN(4)]
		}
		return k
	}
	key := func() []byte {
		if rnd.IntN(4) == 0 {
			return binary()
		}
		return fmt.Appendf(nil, "/%c/%d", 'a'+rune(rnd.IntN(4)), rnd.IntN(8))
	}
	ranges := []func() store.KeyRange{
		func() store.KeyRange { return store.Prefix(binary()[:1]) },
		func() store.KeyRange { return store.Key(key()) },
		func() store.KeyRange { return store.Prefix(fmt.Appendf(nil, "/%c/", 'a'+rune(rnd.IntN(4)))) },
		func() store.KeyRange { return store.Prefix(key()) }, // /a/1 holds /a/1 only here
		func() store.KeyRange { return store.Prefix([]byte("/")) },
		func() store.KeyRange { return store.Prefix(nil) },
		func() store.KeyRange { return store.FromKey(key()) },
		func() store.KeyRange { return store.FromKey(nil) },
		func() store.KeyRange { return store.KeyRange{Key: nil, End: key()} },
		func() store.KeyRange {
			a, b := key(), key()
			if string(a) > string(b) {
				a, b = b, a
			}
			return store.KeyRange{Key: a, End: append(b, 0)}
		},
	}
	g := newWatcherGroup()
	live := map[*watcher]bool{}
	rev := int64(10)
	for round := range 300 {
		for range rnd.IntN(6) {
			wt := &watcher{rng: ranges[rnd.IntN(len(ranges))](), next: rev - 2 + int64(rnd.IntN(5))}
			g.add(wt)
			live[wt] = true
		}
		for wt := range live {
			if rnd.IntN(8) == 0 {
				g.delete(wt)
				delete(live, wt)
			}
		}
		if g.len() != len(live) {
			t.Fatalf("round %d: the group counts %d watchers, %d were added and not deleted", round, g.len(), len(live))
		}
		var revs []revEvents
		var all []Event
		for range 1 + rnd.IntN(4) {
			re := revEvents{rev: rev}
			for range 1 + rnd.IntN(3) {
				re.events = append(re.events, Event{Revision: rev, Key: key()})
			}
			revs = append(revs, re)
			all = append(all, re.events...)
			rev++
		}
		got := map[*watcher][]Event{}
		for _, d := range g.matches(nil, revs) {
			if !live[d.wt] {
				t.Fatalf("round %d: a delivery to a deleted watcher", round)
			}
			if _, dup := got[d.wt]; dup {
				t.Fatalf("round %d: two deliveries to one watcher", round)
			}
			got[d.wt] = d.evs
		}
		for wt := range live {
			var want []Event
			for _, ev := range all {
				if ev.Revision >= wt.next && wt.rng.Contains(ev.Key) {
					want = append(want, ev)
				}
			}
			if g, w := revKeys(got[wt]), revKeys(want); !slices.Equal(g, w) {
				t.Fatalf("round %d: watcher of [%q, %q) from %d got %v, want %v", round, wt.rng.Key, wt.rng.End, wt.next, g, w)
			}
		}
	}
	n := 0
	g.each(func(wt *watcher) {
		if !live[wt] {
			t.Fatal("each visited a deleted watcher")
		}
		n++
		g.delete(wt)
	})
	if n != len(live) || g.len() != 0 || g.ranges.Len() != 0 || len(g.keys) != 0 {
		t.Fatalf("each visited %d of %d watchers, deleting each; %d left, %d ranges, %d keys", n, len(live), g.len(), g.ranges.Len(), len(g.keys))
	}
}

// revKeys writes events as revision:key.
func revKeys(evs []Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprintf("%d:%s", e.Revision, e.Key)
	}
	return out
}

// BenchmarkMatches times one release of one event to live range watchers,
// by how many distinct prefixes they watch and how many watch each: an
// event concerns one prefix's watchers, and finding them should not cost a
// visit to every other prefix's.
func BenchmarkMatches(b *testing.B) {
	for _, c := range []struct{ prefixes, each int }{{1, 1}, {1, 1000}, {100, 10}, {1000, 1}, {10000, 1}} {
		b.Run(fmt.Sprintf("prefixes=%d/watchers=%d", c.prefixes, c.prefixes*c.each), func(b *testing.B) {
			g := newWatcherGroup()
			for p := range c.prefixes {
				for range c.each {
					g.add(&watcher{rng: store.Prefix(fmt.Appendf(nil, "/p/%05d/", p))})
				}
			}
			revs := make([][]revEvents, c.prefixes)
			for p := range revs {
				revs[p] = []revEvents{{rev: 1, events: []Event{{Revision: 1, Key: fmt.Appendf(nil, "/p/%05d/k", p)}}}}
			}
			var out []delivery
			b.ResetTimer()
			for i := range b.N {
				out = g.matches(out[:0], revs[i%c.prefixes])
				if len(out) != c.each {
					b.Fatalf("%d deliveries, want %d", len(out), c.each)
				}
			}
		})
	}
}

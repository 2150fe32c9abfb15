package replication

import (
	"fmt"
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
		var keys []string
		for _, e := range got[wt] {
			keys = append(keys, fmt.Sprintf("%d:%s", e.Revision, e.Key))
		}
		if !slices.Equal(keys, tt.want) {
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

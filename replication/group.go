package replication

import (
	"go.etcd.io/etcd/pkg/v3/adt"

	"github.com/walwatch/walwatch/store"
)

// watcherGroup holds the live watchers, indexed so a release finds the ones
// an event concerns without visiting every watcher: single-key watchers by
// their key (the common case: a data plane watching one key per route or a
// client watching its own config), range watchers by their range, and the
// ranges in an interval tree (etcd's, which its own watcher group keeps
// them in), so that an event finds the ranges holding its key in the log of
// their number. Visiting every range watcher for every event was a quarter
// of cp's CPU in the soak (1,000 watchers of 100 prefixes, 900 writes a
// second), and grew with every watcher of another prefix.
type watcherGroup struct {
	keys   map[string]watcherSet
	ranges adt.IntervalTree // of *rangeWatchers
	n      int
	// touched is matches' list of the ranges an event of the release
	// concerns, kept for its capacity.
	touched []*rangeWatchers
}

// rangeWatchers are the live watchers of one range, and what matches
// gathers for them.
type rangeWatchers struct {
	rng store.KeyRange
	// Most ranges have one watcher: a set is made only for a second.
	one  *watcher
	more watcherSet
	// The first and last of the release's events the range holds, and how
	// many it holds (matches' scratch, 0 between releases).
	first, last, hits int
}

func newWatcherGroup() *watcherGroup {
	return &watcherGroup{keys: map[string]watcherSet{}, ranges: adt.NewIntervalTree()}
}

// rangeInterval is r as the interval tree holds it. The tree reads an empty
// bound as infinity, so an empty start becomes "\x00", below which there is
// no key (keys are never empty), and a range without an end gets an empty
// one.
func rangeInterval(r store.KeyRange) adt.Interval {
	begin, end := r.Key, r.End
	if len(begin) == 0 {
		begin = []byte{0}
	}
	if r.IsOpenEnded() {
		end = nil
	}
	return adt.NewBytesAffineInterval(begin, end)
}

func (g *watcherGroup) add(wt *watcher) {
	g.n++
	if wt.rng.IsSingleKey() {
		set := g.keys[string(wt.rng.Key)]
		if set == nil {
			set = watcherSet{}
			g.keys[string(wt.rng.Key)] = set
		}
		set[wt] = struct{}{}
		return
	}
	ivl := rangeInterval(wt.rng)
	iv := g.ranges.Find(ivl)
	if iv == nil {
		g.ranges.Insert(ivl, &rangeWatchers{rng: wt.rng, one: wt})
		return
	}
	rw := iv.Val.(*rangeWatchers)
	switch {
	case rw.one == nil:
		rw.one = wt
	case rw.more == nil:
		rw.more = watcherSet{wt: {}}
	default:
		rw.more[wt] = struct{}{}
	}
}

func (g *watcherGroup) delete(wt *watcher) {
	if wt.rng.IsSingleKey() {
		set := g.keys[string(wt.rng.Key)]
		if _, ok := set[wt]; !ok {
			return
		}
		delete(set, wt)
		if len(set) == 0 {
			delete(g.keys, string(wt.rng.Key))
		}
		g.n--
		return
	}
	ivl := rangeInterval(wt.rng)
	iv := g.ranges.Find(ivl)
	if iv == nil {
		return
	}
	rw := iv.Val.(*rangeWatchers)
	if rw.one == wt {
		rw.one = nil
	} else if _, ok := rw.more[wt]; ok {
		delete(rw.more, wt)
	} else {
		return
	}
	g.n--
	if rw.one == nil && len(rw.more) == 0 {
		g.ranges.Delete(ivl)
	}
}

func (g *watcherGroup) len() int { return g.n }

// each calls fn for every watcher; fn may delete the one it is given.
func (g *watcherGroup) each(fn func(*watcher)) {
	// The tree must not change while it is visited: gather the range
	// watchers first.
	var ranged []*watcher
	g.ranges.Visit(rangeInterval(store.FromKey(nil)), func(iv *adt.IntervalValue) bool {
		rw := iv.Val.(*rangeWatchers)
		if rw.one != nil {
			ranged = append(ranged, rw.one)
		}
		for wt := range rw.more {
			ranged = append(ranged, wt)
		}
		return true
	})
	for _, wt := range ranged {
		fn(wt)
	}
	for _, set := range g.keys {
		for wt := range set {
			fn(wt)
		}
	}
}

// delivery is what one watcher receives of one release.
type delivery struct {
	wt  *watcher
	evs []Event
}

// matches appends to out, for every watcher an event of revs concerns, its
// events (revisions below a watcher's start excluded). Watchers that get the
// same events share one slice (responses are read-only), so a release to
// thousands of watchers of one prefix allocates nothing per watcher.
func (g *watcherGroup) matches(out []delivery, revs []revEvents) []delivery {
	if g.n == 0 {
		return out
	}
	var all []Event
	for _, re := range revs {
		all = append(all, re.events...)
	}
	if len(all) == 0 {
		return out
	}
	if g.ranges.Len() > 0 {
		out = g.matchRanges(out, all)
	}
	if len(g.keys) == 0 {
		return out
	}
	// A single-key watcher's events all have its key: gather each watched
	// key's events once, in revision order, and give every watcher of the
	// key those from its start on.
	var byKey map[string][]Event
	for _, ev := range all {
		if _, ok := g.keys[string(ev.Key)]; ok {
			if byKey == nil {
				byKey = map[string][]Event{}
			}
			byKey[string(ev.Key)] = append(byKey[string(ev.Key)], ev)
		}
	}
	for key, evs := range byKey {
		for wt := range g.keys[key] {
			if evs := from(evs, wt.next); len(evs) > 0 {
				out = append(out, delivery{wt, evs})
			}
		}
	}
	return out
}

// matchRanges is matches for the range watchers: each event finds the
// ranges that hold its key in the tree, and each range's events are
// gathered once for all its watchers.
func (g *watcherGroup) matchRanges(out []delivery, all []Event) []delivery {
	var i int
	visit := func(iv *adt.IntervalValue) bool {
		rw := iv.Val.(*rangeWatchers)
		if rw.hits == 0 {
			rw.first = i
			g.touched = append(g.touched, rw)
		}
		rw.last = i
		rw.hits++
		return true
	}
	for i = range all {
		g.ranges.Visit(adt.NewBytesAffinePoint(all[i].Key), visit)
	}
	for _, rw := range g.touched {
		evs := rw.events(all)
		rw.first, rw.last, rw.hits = 0, 0, 0
		if wt := rw.one; wt != nil {
			if evs := from(evs, wt.next); len(evs) > 0 {
				out = append(out, delivery{wt, evs})
			}
		}
		for wt := range rw.more {
			if evs := from(evs, wt.next); len(evs) > 0 {
				out = append(out, delivery{wt, evs})
			}
		}
	}
	clear(g.touched)
	g.touched = g.touched[:0]
	return out
}

// events returns the events of all that the range holds, as matchRanges
// counted them: a part of all itself when they are one run (every event of
// the release, for a range that holds them all), else a copy.
func (rw *rangeWatchers) events(all []Event) []Event {
	if rw.last-rw.first+1 == rw.hits {
		return all[rw.first : rw.last+1 : rw.last+1]
	}
	evs := make([]Event, 0, rw.hits)
	for _, ev := range all[rw.first : rw.last+1] {
		if rw.rng.Contains(ev.Key) {
			evs = append(evs, ev)
		}
	}
	return evs
}

// from returns the events of evs (in revision order) at or after revision
// next.
func from(evs []Event, next int64) []Event {
	i := 0
	for i < len(evs) && evs[i].Revision < next {
		i++
	}
	return evs[i:]
}

package replication

// watcherGroup holds the live watchers, indexed so a release finds the ones
// an event concerns without visiting every watcher: single-key watchers by
// their key (the common case: a data plane watching one key per route or a
// client watching its own config), range watchers in a set.
type watcherGroup struct {
	keys   map[string]watcherSet
	ranges watcherSet
	n      int
}

func newWatcherGroup() *watcherGroup {
	return &watcherGroup{keys: map[string]watcherSet{}, ranges: watcherSet{}}
}

func (g *watcherGroup) add(wt *watcher) {
	if wt.rng.IsSingleKey() {
		set := g.keys[string(wt.rng.Key)]
		if set == nil {
			set = watcherSet{}
			g.keys[string(wt.rng.Key)] = set
		}
		set[wt] = struct{}{}
	} else {
		g.ranges[wt] = struct{}{}
	}
	g.n++
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
	} else {
		if _, ok := g.ranges[wt]; !ok {
			return
		}
		delete(g.ranges, wt)
	}
	g.n--
}

func (g *watcherGroup) len() int { return g.n }

// each calls fn for every watcher; fn may delete the one it is given.
func (g *watcherGroup) each(fn func(*watcher)) {
	for wt := range g.ranges {
		fn(wt)
	}
	for _, set := range g.keys {
		for wt := range set {
			fn(wt)
		}
	}
}

// matches returns, for every watcher an event of revs concerns, its events
// (revisions below a watcher's start excluded). Range watchers that every
// event concerns share one slice: responses are read-only.
func (g *watcherGroup) matches(revs []revEvents) map[*watcher][]Event {
	if g.n == 0 {
		return nil
	}
	out := map[*watcher][]Event{}
	var all []Event
	for _, re := range revs {
		all = append(all, re.events...)
	}
	if len(all) == 0 {
		return out
	}
	for wt := range g.ranges {
		if evs := matching(wt.rng, wt.next, revs); len(evs) == len(all) {
			out[wt] = all
		} else if len(evs) > 0 {
			out[wt] = evs
		}
	}
	if len(g.keys) == 0 {
		return out
	}
	for _, ev := range all {
		for wt := range g.keys[string(ev.Key)] {
			if ev.Revision >= wt.next {
				out[wt] = append(out[wt], ev)
			}
		}
	}
	return out
}

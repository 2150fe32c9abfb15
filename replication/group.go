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
	for wt := range g.ranges {
		if evs := matching(wt.rng, wt.next, revs, all); len(evs) > 0 {
			out = append(out, delivery{wt, evs})
		}
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
			i := 0
			for i < len(evs) && evs[i].Revision < wt.next {
				i++
			}
			if i < len(evs) {
				out = append(out, delivery{wt, evs[i:]})
			}
		}
	}
	return out
}

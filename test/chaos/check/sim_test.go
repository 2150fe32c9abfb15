package check

import (
	"sort"
	"time"
)

// sim is a correct, sequential store for the tests: it hands out
// revisions, keeps the audit, and answers as walwatch must.
type sim struct {
	rev       int64
	live      map[string]KV
	rows      []Row
	compacted int64
}

func newSim() *sim { return &sim{rev: 1, live: make(map[string]KV)} }

func (s *sim) put(key, value string) int64 {
	s.rev++
	kv := KV{Key: key, Value: value, CreateRevision: s.rev, ModRevision: s.rev, Version: 1}
	prevRev := int64(0)
	if old, ok := s.live[key]; ok {
		kv.CreateRevision, kv.Version, prevRev = old.CreateRevision, old.Version+1, old.ModRevision
	}
	s.live[key] = kv
	s.rows = append(s.rows, Row{Revision: s.rev, Key: key, Value: value, CreateRevision: kv.CreateRevision, Version: kv.Version, PrevRevision: prevRev})
	return s.rev
}

// del deletes [key, end) (key alone when end is ""), in one revision.
func (s *sim) del(key, end string) (int64, int64) {
	var keys []string
	for k := range s.live {
		if inRange(k, key, end) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return 0, s.rev
	}
	sort.Strings(keys)
	s.rev++
	for i, k := range keys {
		s.rows = append(s.rows, Row{Revision: s.rev, Sub: int32(i), Key: k, Tombstone: true, PrevRevision: s.live[k].ModRevision})
		delete(s.live, k)
	}
	return int64(len(keys)), s.rev
}

func (s *sim) filler() {
	s.rev++
	s.rows = append(s.rows, Row{Revision: s.rev})
}

func (s *sim) get(key, end string) []KV {
	var kvs []KV
	for k, kv := range s.live {
		if inRange(k, key, end) {
			kvs = append(kvs, kv)
		}
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
	return kvs
}

// at replays the audit to rev, independently of the package's index.
func (s *sim) at(rev int64, key, end string) []KV {
	live := make(map[string]KV)
	for _, r := range s.rows {
		if r.Revision > rev || r.Key == "" {
			continue
		}
		if r.Tombstone {
			delete(live, r.Key)
			continue
		}
		live[r.Key] = KV{Key: r.Key, Value: r.Value, CreateRevision: r.CreateRevision, ModRevision: r.Revision, Version: r.Version}
	}
	var kvs []KV
	for k, kv := range live {
		if inRange(k, key, end) {
			kvs = append(kvs, kv)
		}
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
	return kvs
}

// apply runs o's input on the store, filling its outputs as an OK answer
// (or a Failed one for a read below the compacted revision).
func (s *sim) apply(o *Op) {
	o.Status = OK
	switch o.Kind {
	case Get:
		o.Header = s.rev
		if o.Revision > 0 {
			if o.Revision < s.compacted {
				o.Status, o.Compacted, o.Header, o.Err = Failed, s.compacted, 0, "compacted"
				return
			}
			o.KVs = s.at(o.Revision, o.Key, o.End)
			return
		}
		o.KVs = s.get(o.Key, o.End)
	case Put:
		o.Header = s.put(o.Key, o.Value)
	case Delete:
		o.Deleted, o.Header = s.del(o.Key, "")
	case DeleteRange:
		o.Deleted, o.Header = s.del(o.Key, o.End)
	case Txn:
		cur, ok := s.live[o.Key]
		cond := cur.ModRevision == o.CmpModRevision && (o.CmpValue == nil || ok && cur.Value == *o.CmpValue)
		o.Succeeded = cond
		if cond {
			o.Header = s.put(o.Key, o.Value)
		} else {
			o.Header, o.KVs = s.rev, s.get(o.Key, "")
		}
	case Compact:
		s.compacted = max(s.compacted, o.Revision)
		o.Header = s.rev
	}
}

// watchOf is the correct watch of [key, end) from start over the audit:
// one response per revision, with prev_kv when asked, and a progress mark
// at the end.
func watchOf(rows []Row, key, end string, start int64, prevKV bool) Watch {
	w := Watch{Watcher: 1, Via: "etcd", Key: key, End: end, Start: start, PrevKV: prevKV, Opened: time.Millisecond, Closed: time.Hour}
	live := make(map[string]KV)
	var last int64
	at := 2 * time.Millisecond
	for _, r := range rows {
		if r.Key == "" {
			last = max(last, r.Revision)
			continue
		}
		prev, had := live[r.Key]
		kv := KV{Key: r.Key, Value: r.Value, CreateRevision: r.CreateRevision, ModRevision: r.Revision, Version: r.Version}
		if r.Tombstone {
			delete(live, r.Key)
			kv = KV{Key: r.Key, ModRevision: r.Revision}
		} else {
			live[r.Key] = kv
		}
		last = max(last, r.Revision)
		if r.Revision < start || !inRange(r.Key, key, end) {
			continue
		}
		e := Event{Type: EventPut, KV: kv}
		if r.Tombstone {
			e.Type = EventDelete
		}
		if prevKV && had {
			p := prev
			e.PrevKV = &p
		}
		n := len(w.Responses)
		if n > 0 && len(w.Responses[n-1].Events) > 0 && w.Responses[n-1].Events[0].KV.ModRevision == r.Revision {
			w.Responses[n-1].Events = append(w.Responses[n-1].Events, e)
			continue
		}
		at += time.Millisecond
		w.Responses = append(w.Responses, Response{At: at, Events: []Event{e}})
	}
	if last >= start {
		w.Responses = append(w.Responses, Response{At: at + time.Millisecond, Progress: last})
	}
	return w
}

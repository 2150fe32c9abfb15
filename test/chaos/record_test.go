package chaos

import (
	"sync"
	"time"

	"github.com/walwatch/walwatch/test/chaos/check"
)

// recorder collects a history from many goroutines.
type recorder struct {
	start time.Time // offsets in the history are from here, on the monotonic clock

	mu      sync.Mutex
	ops     []check.Op
	watches []check.Watch
	reads   []*check.Read
	faults  []check.Fault
}

func newRecorder() *recorder { return &recorder{start: time.Now()} }

// now is the offset of this moment from the history's start.
func (r *recorder) now() time.Duration { return time.Since(r.start) }

func (r *recorder) op(op check.Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
}

func (r *recorder) watch(w check.Watch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watches = append(r.watches, w)
}

func (r *recorder) fault(f check.Fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, f)
}

// maxReads bounds the reads at a fixed revision a history keeps.
const maxReads = 40

// addRead registers a read at a fixed revision with its first answer; it
// reports false once there are enough.
func (r *recorder) addRead(rd check.Read) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reads) >= maxReads {
		return false
	}
	r.reads = append(r.reads, &rd)
	return true
}

// readAt returns the i-th read's question, for asking it again; ok is
// false when there are none yet.
func (r *recorder) readAt(i int) (rd check.Read, idx int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reads) == 0 {
		return check.Read{}, 0, false
	}
	idx = i % len(r.reads)
	q := r.reads[idx]
	return check.Read{Key: q.Key, End: q.End, Revision: q.Revision}, idx, true
}

func (r *recorder) readCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reads)
}

func (r *recorder) answer(idx int, a check.ReadAnswer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads[idx].Answers = append(r.reads[idx].Answers, a)
}

// history returns what was recorded so far, with the rest of the history
// filled in by the caller.
func (r *recorder) history() *check.History {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := &check.History{
		Ops:     append([]check.Op(nil), r.ops...),
		Watches: append([]check.Watch(nil), r.watches...),
		Faults:  append([]check.Fault(nil), r.faults...),
	}
	for _, rd := range r.reads {
		c := *rd
		c.Answers = append([]check.ReadAnswer(nil), rd.Answers...)
		h.Reads = append(h.Reads, c)
	}
	return h
}

package replication_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/wait"
)

// untilMark reads w until a progress mark and returns it with the events
// read before it.
func untilMark(t *testing.T, w *replication.Watcher) (replication.WatchResponse, []replication.Event) {
	t.Helper()
	var evs []replication.Event
	deadline := time.After(wait.Timeout)
	for {
		select {
		case resp, ok := <-w.C:
			if !ok {
				t.Fatalf("watch ended before a mark: %v", w.Err())
			}
			if resp.Canceled {
				t.Fatalf("watch canceled before a mark: %v", resp.Err)
			}
			if resp.IsProgress() {
				return resp, evs
			}
			evs = append(evs, resp.Events...)
		case <-deadline:
			t.Fatalf("no mark within %v (%d events)", wait.Timeout, len(evs))
		}
	}
}

// Marks requested together carry one revision, the watermark, and reach
// each watcher after every event up to it: through the previous-value
// reader too, and to a watcher starting in the future (which has nothing
// up to it).
func TestRequestProgressMarksAfterEvents(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	prefix := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/p/"))})
	prev := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/p/")), PrevKV: true})
	future := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/p/0")), StartRevision: 1000})
	var last int64
	for i := range 10 {
		last = e.put(t, fmt.Sprintf("/p/%d", i%3), fmt.Sprint(i))
	}
	wait.For(t, "the watermark to reach the last put", func() bool { return h.Watermark() >= last })
	if !h.RequestProgress(prefix, prev, future) {
		t.Fatal("RequestProgress of live watchers with room = false")
	}
	var rev int64
	for name, w := range map[string]*replication.Watcher{"prefix": prefix, "prevKV": prev, "future": future} {
		mark, evs := untilMark(t, w)
		want := 10
		if w == future {
			want = 0
		}
		if len(evs) != want {
			t.Errorf("%s: %d events before the mark, want %d", name, len(evs), want)
		}
		if mark.Revision < last {
			t.Errorf("%s: mark at %d, below the last put %d", name, mark.Revision, last)
		}
		if rev != 0 && mark.Revision != rev {
			t.Errorf("%s: mark at %d, another watcher's at %d: one request, one revision", name, mark.Revision, rev)
		}
		rev = mark.Revision
	}
}

// A watcher that is not live (here: closed) makes the request fail for all:
// none of them gets a mark.
func TestRequestProgressAllOrNone(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	live := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/a"))})
	closed := watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/a"))})
	closed.Close()
	if h.RequestProgress(live, closed) {
		t.Fatal("RequestProgress with a closed watcher = true")
	}
	rev := e.put(t, "/a", "x")
	resp := <-live.C // the put's event, not a mark
	if resp.IsProgress() || resp.Revision != rev {
		t.Fatalf("live watcher got %+v, want the put at %d and no mark", resp, rev)
	}
}

// A watcher too slow to keep up gets no mark until it is live again; the
// mark it then gets follows every event it was owed.
func TestRequestProgressWaitsForSlowWatcher(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := h.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/s/"))})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100 // more than a watcher's channel holds
	var last int64
	for i := range n {
		last = e.put(t, fmt.Sprintf("/s/%d", i), "v")
	}
	wait.For(t, "the watermark to reach the last put", func() bool { return h.Watermark() >= last })
	if h.RequestProgress(w) {
		t.Fatal("RequestProgress of a watcher with a full channel = true")
	}
	var evs []replication.Event
	requested := false
	deadline := time.After(wait.Timeout)
	retry := time.NewTicker(5 * time.Millisecond) // ask again while the watcher catches up
	defer retry.Stop()
	for {
		select {
		case resp := <-w.C:
			if resp.IsProgress() {
				if !requested {
					t.Fatal("a mark nobody asked for")
				}
				if len(evs) != n || resp.Revision < last {
					t.Fatalf("mark at %d after %d events, want at least %d after %d", resp.Revision, len(evs), last, n)
				}
				return
			}
			evs = append(evs, resp.Events...)
		case <-retry.C:
		case <-deadline:
			t.Fatalf("no mark within %v (%d events, requested %v)", wait.Timeout, len(evs), requested)
		}
		if !requested {
			requested = h.RequestProgress(w)
		}
	}
}

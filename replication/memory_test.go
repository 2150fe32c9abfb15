package replication_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/wait"
)

// A transaction holds a revision open while puts of large values pile up
// behind it, many times what the reorder buffer may hold: the buffer keeps
// its values within its bytes by spilling them, and when the holder commits
// or rolls back, every watcher (live ones the spilled revisions concern,
// one they do not, one behind from the start) still gets exactly the
// table's history, in order, once.
func TestReorderBufferSpillsBehindHeldRevision(t *testing.T) {
	for _, end := range []string{"commit", "rollback"} {
		t.Run(end, func(t *testing.T) { testSpillBehindHeldRevision(t, end == "commit") })
	}
}

func testSpillBehindHeldRevision(t *testing.T, commit bool) {
	const (
		bufferBytes = 512 << 10
		valueSize   = 64 << 10
		writers     = 4
		perWriter   = 12 // 48 puts of 64 KiB: 3 MiB, six times the buffer
	)
	e := newEnv(t)
	metrics, reg := hubMetrics()
	log, _ := hubLogger(t, "spill")
	h := e.startHub(t, replication.Config{
		BufferBytes: bufferBytes, WindowBytes: 256 << 10, WatcherBytes: 256 << 10,
		Metrics: metrics, Logger: log,
	})
	past := e.put(t, "/a/before", "x")
	waitRevision(t, h, past)

	now := h.Watermark() + 1
	ws := []*watched{
		{name: "/ from now", rng: store.Prefix([]byte("/")), start: now},
		{name: "/a/ from now", rng: store.Prefix([]byte("/a/")), start: now},
		{name: "key /b/k from now", rng: store.Key([]byte("/b/k")), start: now},
		{name: "/c/ from now (no spilled revision concerns it)", rng: store.Prefix([]byte("/c/")), start: now},
		{name: fmt.Sprintf("/ from %d, read at the end", past), rng: store.Prefix([]byte("/")), start: past},
	}
	for i, x := range ws {
		x.w = watch(t, h, replication.WatchRequest{Range: x.rng, StartRevision: x.start})
		if i < len(ws)-1 {
			x.r = readAll(x.w)
		}
	}

	held, commitHeld, rollbackHeld := beginHeld(t, e, "/a/held")
	// Large values under /a/, and now and then a small one to /b/k, from
	// several writers at once, so they also commit out of order.
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range perWriter {
				if i%4 == 3 {
					e.put(t, "/b/k", fmt.Sprintf("small %d-%d", g, i))
					continue
				}
				e.put(t, fmt.Sprintf("/a/big/%d-%d", g, i), fmt.Sprintf("%d-%d:", g, i)+strings.Repeat("v", valueSize))
			}
		})
	}
	wg.Wait()
	waitFillerBlocked(t, e)
	wait.For(t, "every put buffered behind the held revision", func() bool {
		return metric(t, reg, "walwatch_hub_reorder_buffer_revisions") >= writers*perWriter
	})
	if got := h.Watermark(); got >= held {
		t.Fatalf("watermark %d passed the held revision %d", got, held)
	}
	if spilled := metric(t, reg, "walwatch_hub_spilled_revisions_total"); spilled == 0 {
		t.Fatal("no revision spilled: the test does not exercise the spill")
	}
	if b := metric(t, reg, "walwatch_hub_reorder_buffer_bytes"); b > bufferBytes {
		t.Fatalf("the reorder buffer holds %.0f bytes of values, over its %d", b, bufferBytes)
	}

	if commit {
		commitHeld()
	} else {
		rollbackHeld()
	}
	// A last change in every range: nothing follows it, so a watcher that
	// has it has everything.
	e.put(t, "/a/zz-end", "end")
	e.put(t, "/b/k", "end")
	last := e.put(t, "/c/end", "end")
	waitRevision(t, h, last)
	for _, x := range ws {
		want := e.history(t, x.rng, x.start)
		compareHistory(t, x.name, x.received(t, len(want)), want)
	}
	if b := metric(t, reg, "walwatch_hub_window_bytes"); b > 256<<10 {
		t.Errorf("the window holds %.0f bytes, over its %d", b, 256<<10)
	}
}

// A watcher catching up from the table over large values gets them in
// responses of at most its bytes (whole revisions: one larger revision comes
// alone), and exactly the table's history.
func TestCatchUpResponsesBoundedByBytes(t *testing.T) {
	const watcherBytes = 512 << 10
	e := newEnv(t)
	h := e.startHub(t, replication.Config{WatcherBytes: watcherBytes, WindowBytes: 256 << 10})
	start := e.put(t, "/v/first", "x")
	for i := range 24 {
		e.put(t, fmt.Sprintf("/v/%02d", i), strings.Repeat(string(rune('a'+i)), 200<<10))
		if i == 12 { // one revision larger than a response: 3 × 300 KiB
			if _, err := e.store.Txn(t.Context(), store.TxnRequest{Then: []store.Op{
				store.OpPutKey([]byte("/v/t1"), []byte(strings.Repeat("1", 300<<10))),
				store.OpPutKey([]byte("/v/t2"), []byte(strings.Repeat("2", 300<<10))),
				store.OpPutKey([]byte("/v/t3"), []byte(strings.Repeat("3", 300<<10))),
			}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	last := e.put(t, "/v/last", "x")
	waitRevision(t, h, last)

	w := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/v/")), StartRevision: start})
	want := e.history(t, store.Prefix([]byte("/v/")), start)
	var got []seen
	deadline := time.After(60 * time.Second)
	for len(got) < len(want) {
		select {
		case resp, ok := <-w.C:
			if !ok {
				t.Fatalf("watch ended after %d of %d events: %v", len(got), len(want), w.Err())
			}
			size := 0
			for _, ev := range resp.Events {
				size += len(ev.Key) + len(ev.Value)
				got = append(got, seen{ev.Revision, ev.Sub, ev.Type, string(ev.Key), string(ev.Value), ev.Version})
			}
			if one := len(resp.Events) > 0 && resp.Events[0].Revision == resp.Revision; size > watcherBytes && !one {
				t.Errorf("a response of %d bytes over revisions %d..%d, over the watcher's %d", size, resp.Events[0].Revision, resp.Revision, watcherBytes)
			}
		case <-deadline:
			t.Fatalf("got %d of %d events within 60s", len(got), len(want))
		}
	}
	compareHistory(t, "/v/ from the start", got, want)
}

// An idle watcher, one nobody reads yet, costs at most 2 KiB of the hub's
// memory (issue 17's target 9): thousands of them are what a control plane
// with one watch per proxy and prefix holds; one read with Drain, as the
// etcd API's streams read theirs, less than 768 bytes (target 9's other
// half: etcd's own measures 0.7 KiB). Measured as the benchmark does:
// heap and stacks after a GC, before and after, divided by the watchers.
func TestIdleWatcherMemory(t *testing.T) {
	const n = 10000
	for _, tt := range []struct {
		name   string
		notify func()
		limit  float64
	}{
		{"channel", nil, 2048},
		// Read with Drain: no channel, so a fraction of the above.
		{"notify", func() {}, 768},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			h := e.startHub(t, replication.Config{})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			ws := make([]*replication.Watcher, n)
			for i := range ws {
				w, err := h.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/idle/")), Notify: tt.notify})
				if err != nil {
					t.Fatal(err)
				}
				ws[i] = w
			}
			runtime.GC()
			runtime.ReadMemStats(&m1)
			per := (float64(m1.HeapAlloc+m1.StackInuse) - float64(m0.HeapAlloc+m0.StackInuse)) / n
			t.Logf("%.0f bytes per idle watcher", per)
			if per > tt.limit {
				t.Errorf("an idle watcher costs %.0f bytes, want at most %.0f", per, tt.limit)
			}
			runtime.KeepAlive(ws)
		})
	}
}

// A watcher closed while its context lives on leaves nothing behind: an etcd
// watch stream creates and cancels watchers on one context for as long as it
// lives. (The context held each closed watcher, channel and all, until it
// ended.)
func TestClosedWatcherMemory(t *testing.T) {
	const n, limit = 10000, 64
	e := newEnv(t)
	h := e.startHub(t, replication.Config{})
	ctx := t.Context() // lives on
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for range n {
		w, err := h.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/closed/"))})
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	per := (float64(m1.HeapAlloc+m1.StackInuse) - float64(m0.HeapAlloc+m0.StackInuse)) / n
	t.Logf("%.0f bytes left per closed watcher", per)
	if per > limit {
		t.Errorf("a closed watcher leaves %.0f bytes behind, want at most %d", per, limit)
	}
}

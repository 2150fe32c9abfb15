package replication

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// The byte bounds on what holds values, tested without a database: the
// window, a watcher's queue, table pages, and the reorder buffer's spill.

// revOf is one revision whose events are keys with values of size bytes.
func revOf(rev int64, size int, keys ...string) revEvents {
	evs := make([]Event, len(keys))
	for i, k := range keys {
		evs[i] = Event{Key: []byte(k), Value: make([]byte, size), Revision: rev, Sub: int32(i)}
	}
	return revEvents{rev: rev, events: evs, bytes: eventsSize(evs)}
}

func revsOf(w *window) []int64 {
	var out []int64
	for _, re := range w.entries {
		out = append(out, re.rev)
	}
	return out
}

func TestWindowTrimsByBytes(t *testing.T) {
	const value = 1000
	one := revOf(0, value, "/k").bytes
	w := window{limit: 100, maxBytes: 3 * one, from: 1}
	for rev := int64(1); rev <= 5; rev++ {
		w.add(revOf(rev, value, "/k"))
		if w.bytes > w.maxBytes {
			t.Fatalf("after revision %d the window holds %d bytes, over its %d", rev, w.bytes, w.maxBytes)
		}
	}
	if got := revsOf(&w); !slices.Equal(got, []int64{3, 4, 5}) || w.from != 3 || w.bytes != 3*one {
		t.Fatalf("window holds %v from %d (%d bytes), want [3 4 5] from 3 (%d bytes)", got, w.from, w.bytes, 3*one)
	}
	if w.covers(2) || !w.covers(3) {
		t.Fatalf("covers(2), covers(3) = %v, %v; want false, true", w.covers(2), w.covers(3))
	}

	// A revision larger than the whole window is not kept; the window
	// starts after it and still takes what follows.
	w.add(revOf(6, 4*value, "/big"))
	if len(w.entries) != 0 || w.from != 7 || w.bytes != 0 {
		t.Fatalf("after a revision larger than the window: %v from %d (%d bytes), want nothing from 7", revsOf(&w), w.from, w.bytes)
	}
	w.add(revOf(7, value, "/k"))
	if got := revsOf(&w); !slices.Equal(got, []int64{7}) || w.from != 7 {
		t.Fatalf("window holds %v from %d, want [7] from 7", got, w.from)
	}

	// A spilled revision moves the window past it.
	w.skip(9)
	if len(w.entries) != 0 || w.from != 10 || w.bytes != 0 {
		t.Fatalf("after skip(9): %v from %d (%d bytes), want nothing from 10", revsOf(&w), w.from, w.bytes)
	}
}

func TestWindowTrimsByCount(t *testing.T) {
	w := window{limit: 3, maxBytes: 1 << 30, from: 1}
	for rev := int64(1); rev <= 10; rev++ {
		w.add(revOf(rev, 10, "/k"))
	}
	if got := revsOf(&w); !slices.Equal(got, []int64{8, 9, 10}) || w.from != 8 {
		t.Fatalf("window holds %v from %d, want [8 9 10] from 8", got, w.from)
	}
	// A revision with no events (a filler) takes no entry.
	w.add(revEvents{rev: 11})
	if got := revsOf(&w); !slices.Equal(got, []int64{8, 9, 10}) {
		t.Fatalf("window holds %v, want [8 9 10]", got)
	}
}

func TestWindowSinceByBytes(t *testing.T) {
	w := window{limit: 100, maxBytes: 1 << 30, from: 1}
	for rev := int64(1); rev <= 6; rev++ {
		w.add(revOf(rev, 1000, "/a", "/b")) // two events each
	}
	per := w.entries[0].bytes
	tests := []struct {
		from      int64
		maxEvents int
		maxBytes  int
		want      []int64
		all       bool
	}{
		{1, 100, 1 << 30, []int64{1, 2, 3, 4, 5, 6}, true},
		{3, 100, 2 * per, []int64{3, 4}, false},
		{3, 100, 2*per + per/2, []int64{3, 4}, false},
		{5, 100, 2 * per, []int64{5, 6}, true},
		{2, 100, 1, []int64{2}, false}, // one revision at least, however large
		{2, 5, 1 << 30, []int64{2, 3}, false},
		{7, 100, 1 << 30, nil, true},
	}
	for _, tt := range tests {
		revs, all := w.since(tt.from, tt.maxEvents, tt.maxBytes)
		var got []int64
		for _, re := range revs {
			got = append(got, re.rev)
		}
		if !slices.Equal(got, tt.want) || all != tt.all {
			t.Errorf("since(%d, %d events, %d bytes) = %v, %v; want %v, %v", tt.from, tt.maxEvents, tt.maxBytes, got, all, tt.want, tt.all)
		}
	}
}

// The bytes a watcher has queued are the sizes of the last len(ch)
// responses sent, read or not by its reader in FIFO order. Until a response
// larger than small is sent, nothing is recorded and each queued response
// counts as small.
func TestWatcherQueuedBytes(t *testing.T) {
	q := queueLimit{bytes: 100, small: 25} // as newQueueLimit makes it for a channel of 4
	wt := &watcher{ch: make(chan WatchResponse, 4)}
	send := func(size int) bool { return wt.trySend(WatchResponse{}, size, q) }
	// Progress marks and small responses weigh at most small, and allocate
	// nothing: an idle watcher, or one of small values, pays no ring.
	for _, size := range []int{0, 10, 25} {
		if !send(size) {
			t.Fatalf("send of %d bytes with %d queued refused", size, wt.queued(q))
		}
	}
	if wt.sizes != nil || wt.queued(q) != 75 || wt.room(q) != 25 {
		t.Fatalf("small responses: sizes %v, queued %d, room %d; want nil, 75, 25", wt.sizes, wt.queued(q), wt.room(q))
	}
	if send(26) {
		t.Fatal("26 bytes sent behind three small responses, over 100")
	}
	if !send(25) || send(0) {
		t.Fatal("a fourth small response refused, or a fifth sent on a full channel")
	}
	for range 3 {
		<-wt.ch
	}
	// The first large response starts the record; the small one queued
	// before it counts as small.
	if !send(30) || wt.sizes == nil {
		t.Fatalf("a response larger than small: sent %d, recorded %v", len(wt.ch), wt.sizes)
	}
	if got := wt.queued(q); got != 55 { // 25 for the small one, then 30
		t.Fatalf("queued %d, want 55", got)
	}
	if !send(40) {
		t.Fatalf("send of 40 bytes with %d queued refused", wt.queued(q))
	}
	if got := wt.room(q); got != 5 {
		t.Fatalf("room %d, want 5", got)
	}
	if send(6) {
		t.Fatal("a send past the byte limit was made")
	}
	<-wt.ch // the reader takes the oldest (the small one, counted 25)
	if got := wt.queued(q); got != 70 {
		t.Fatalf("queued %d after one read, want 70", got)
	}
	// Around the ring: sizes go on where the last one went; small ones
	// are recorded too now.
	for _, size := range []int{10, 20} {
		if !send(size) {
			t.Fatalf("send of %d bytes with %d queued refused", size, wt.queued(q))
		}
	}
	if got, n := wt.queued(q), len(wt.ch); got != 100 || n != 4 {
		t.Fatalf("queued %d in %d responses, want 100 in 4", got, n)
	}
	if wt.room(q) != 0 || send(0) {
		t.Fatal("a full channel has room")
	}
	for range 4 {
		<-wt.ch
	}
	// An empty channel takes a response larger than the limit, alone.
	if !send(5 * q.bytes) {
		t.Fatal("an empty watcher refused one large response")
	}
	if send(1) {
		t.Fatal("a response was queued behind one larger than the limit")
	}
}

func TestPageEnd(t *testing.T) {
	sz := func(revs ...int64) []rowSize { // 10 bytes a row
		out := make([]rowSize, len(revs))
		for i, r := range revs {
			out[i] = rowSize{revision: r, bytes: 10}
		}
		return out
	}
	// Sizes are read with a limit of maxRows+1 (here 5): six rows say the
	// last revision may go on past them.
	tests := []struct {
		name     string
		sizes    []rowSize
		maxBytes int
		end      int64
		more     bool
	}{
		{"all of it", sz(2, 3, 3, 4), 100, 4, false},
		{"all of it, as many rows as a page", sz(2, 3, 3, 4, 4), 100, 4, false},
		{"row limit: the last revision may go on", sz(2, 3, 3, 4, 4, 4), 100, 3, true},
		{"row limit at a revision's end", sz(2, 3, 3, 4, 4, 5), 100, 4, true},
		{"one revision larger than a page", sz(2, 2, 2, 2, 2, 2), 100, 2, true},
		{"byte limit", sz(2, 3, 3, 4), 30, 3, true},
		{"byte limit inside a revision", sz(2, 3, 3, 4), 25, 2, true},
		{"one revision larger than the bytes", sz(2, 2, 2, 3), 15, 2, true},
		{"exactly the bytes", sz(2, 3), 20, 3, false},
		{"one row", sz(7), 1, 7, false},
	}
	for _, tt := range tests {
		end, more := pageEnd(tt.sizes, 5, tt.maxBytes)
		if end != tt.end || more != tt.more {
			t.Errorf("%s: pageEnd = %d, %v; want %d, %v", tt.name, end, more, tt.end, tt.more)
		}
	}
}

// testHub is a hub with no database: enough for the run loop's bookkeeping
// (order's accept and spill, the hub's advance) and release.
func testHub(cfg Config) *Hub { return newHub(cfg, nil) }

// put is a stream transaction of one put of key at rev with a value of size
// bytes; key and value share one allocation, as decodeRow leaves them.
func put(rev int64, key string, size int) *txn {
	own := append([]byte(key), make([]byte, size)...)
	return &txn{commitLSN: 1, rows: []row{{revision: rev, key: own[:len(key):len(key)], value: own[len(key):], version: 1}}}
}

// The reorder buffer keeps its values within BufferBytes behind a hole by
// dropping the values of its newest revisions; released, a spilled revision
// sends the live watchers it concerns (and only those) to the table, from
// that revision, after every event before it; the window moves past it.
func TestReorderBufferSpillsNewestValues(t *testing.T) {
	const value = 1000
	h := testHub(Config{BufferBytes: 3 * (value + 2 + eventOverhead), WatcherBytes: 1 << 20})
	h.order.accept(&txn{base: 1}) // the watermark starts at 1
	all := &watcher{rng: store.Prefix([]byte("/")), ch: make(chan WatchResponse, 16), next: 2}
	b := &watcher{rng: store.Key([]byte("/b")), ch: make(chan WatchResponse, 16), next: 2}
	other := &watcher{rng: store.Prefix([]byte("/z/")), ch: make(chan WatchResponse, 16), next: 2}
	for _, wt := range []*watcher{all, b, other} {
		h.synced.add(wt)
	}

	// Revision 2 is held open; 3..8 arrive behind it, 5 and 8 for /b.
	for rev := int64(3); rev <= 8; rev++ {
		key := "/a"
		if rev == 5 || rev == 8 {
			key = "/b"
		}
		h.order.accept(put(rev, key, value))
		h.advance()
		h.order.spill()
		if h.order.bufferBytes > h.cfg.BufferBytes {
			t.Fatalf("after revision %d the buffer holds %d bytes of values, over its %d", rev, h.order.bufferBytes, h.cfg.BufferBytes)
		}
	}
	for rev := int64(3); rev <= 8; rev++ {
		c := h.order.buffer[rev]
		if c == nil {
			t.Fatalf("revision %d is not buffered", rev)
		}
		if want := rev >= 6; c.spilled != want || (c.rows[0].value == nil) != want {
			t.Fatalf("revision %d: spilled %v, value kept %v; want only 6..8 spilled", rev, c.spilled, c.rows[0].value != nil)
		}
		if c.spilled && cap(c.rows[0].key) >= value {
			t.Fatalf("spilled revision %d keeps its key in the value's allocation (cap %d)", rev, cap(c.rows[0].key))
		}
	}
	if h.order.spillFrom != 6 {
		t.Fatalf("spillFrom %d, want 6", h.order.spillFrom)
	}
	// A revision arriving in the spilled range comes without its value.
	h.order.accept(put(10, "/a", value))
	h.advance()
	h.order.spill()
	if c := h.order.buffer[10]; !c.spilled {
		t.Fatal("revision 10 arrived above spillFrom and kept its value")
	}

	// The holder commits: 2..8 are released, 9 is still missing.
	h.order.accept(put(2, "/a", value))
	h.advance()
	h.order.spill()
	if got := h.Watermark(); got != 8 {
		t.Fatalf("watermark %d, want 8", got)
	}
	if h.order.spillFrom != 9 {
		t.Fatalf("spillFrom %d after the release, want 9 (10 is still spilled)", h.order.spillFrom)
	}
	revsIn := func(wt *watcher) []int64 {
		var out []int64
		for len(wt.ch) > 0 {
			for _, ev := range (<-wt.ch).Events {
				out = append(out, ev.Revision)
			}
		}
		return out
	}
	if got := revsIn(all); !slices.Equal(got, []int64{2, 3, 4, 5}) {
		t.Fatalf("prefix watcher got %v live, want [2 3 4 5] and the rest from the table", got)
	}
	if _, ok := h.unsynced[all]; !ok || all.next != 6 {
		t.Fatalf("prefix watcher: unsynced %v, next %d; want to catch up from 6", ok, all.next)
	}
	if got := revsIn(b); !slices.Equal(got, []int64{5}) {
		t.Fatalf("/b watcher got %v live, want [5]", got)
	}
	if _, ok := h.unsynced[b]; !ok || b.next != 8 {
		t.Fatalf("/b watcher: unsynced %v, next %d; want to catch up from 8", ok, b.next)
	}
	if _, ok := h.unsynced[other]; ok || h.synced.len() != 1 {
		t.Fatal("a watcher no spilled revision concerns left the live group")
	}
	if h.window.from != 9 || len(h.window.entries) != 0 {
		t.Fatalf("window from %d with %d entries, want from 9 and empty", h.window.from, len(h.window.entries))
	}
	if h.order.bufferBytes != 0 {
		t.Fatalf("buffer holds %d bytes of values with only spilled revisions left, want 0", h.order.bufferBytes)
	}

	// 9 arrives: above spillFrom, it is spilled too, and all is settled.
	h.order.accept(put(9, "/z/x", value))
	h.advance()
	h.order.spill()
	if got := h.Watermark(); got != 10 || len(h.order.buffer) != 0 || h.order.spillFrom != 0 {
		t.Fatalf("watermark %d, %d buffered, spillFrom %d; want 10, 0, 0", got, len(h.order.buffer), h.order.spillFrom)
	}
	if _, ok := h.unsynced[other]; !ok || other.next != 9 {
		t.Fatalf("/z/ watcher: unsynced %v, next %d; want to catch up from 9", ok, other.next)
	}
	// Values arrive with their values again.
	h.order.accept(put(12, "/a", value))
	if c := h.order.buffer[12]; c.spilled {
		t.Fatal("revision 12 spilled with the buffer empty before it")
	}
}

// A release larger than a response goes out in responses of at most
// responseBytes (whole revisions); a watcher out of byte room becomes a
// victim holding the response it missed, and misses nothing after it.
func TestReleaseInResponsesOfBoundedBytes(t *testing.T) {
	const value = 1000
	per := value + 2 + eventOverhead
	// release settles revisions from..to at once, from held back until last.
	release := func(h *Hub, from, to int64) {
		for rev := from + 1; rev <= to; rev++ {
			h.order.accept(put(rev, "/a", value))
		}
		h.advance()
		h.order.accept(put(from, "/a", value))
		h.advance()
	}
	t.Run("reader keeps up", func(t *testing.T) {
		h := testHub(Config{WatcherBytes: 1 << 20})
		h.responseBytes = 4 * per // as maxResponseBytes would make it for values this size
		h.order.accept(&txn{base: 1})
		fast := &watcher{rng: store.Prefix([]byte("/")), ch: make(chan WatchResponse, 16), next: 2}
		h.synced.add(fast)
		release(h, 2, 10)
		var sizes []int
		var got []int64
		for len(fast.ch) > 0 {
			resp := <-fast.ch
			sizes = append(sizes, eventsSize(resp.Events))
			for _, ev := range resp.Events {
				got = append(got, ev.Revision)
			}
		}
		if want := []int64{2, 3, 4, 5, 6, 7, 8, 9, 10}; !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		if !slices.Equal(sizes, []int{4 * per, 4 * per, per}) {
			t.Fatalf("responses of %v bytes, want %v", sizes, []int{4 * per, 4 * per, per})
		}
		if len(h.victims) != 0 {
			t.Fatal("a watcher with room became a victim")
		}
	})
	t.Run("reader does not read", func(t *testing.T) {
		h := testHub(Config{WatcherBytes: 4 * per})
		h.order.accept(&txn{base: 1})
		slow := &watcher{rng: store.Prefix([]byte("/")), ch: make(chan WatchResponse, 16), next: 2}
		h.synced.add(slow)
		release(h, 2, 11)
		if _, ok := h.victims[slow]; !ok {
			t.Fatal("a watcher out of byte room is not a victim")
		}
		if q := slow.queued(h.queue); q > h.cfg.WatcherBytes {
			t.Fatalf("%d bytes queued for a watcher, over its %d", q, h.cfg.WatcherBytes)
		}
		first := <-slow.ch
		if first.Events[0].Revision != 2 || slow.pending == nil || slow.pending.Events[0].Revision != first.Revision+1 {
			t.Fatalf("first response ends at %d, pending %v: want the pending response right after it", first.Revision, slow.pending)
		}
		if slow.next != slow.pending.Revision+1 || len(slow.ch) != 0 {
			t.Fatalf("victim next %d with pending up to %d and %d queued", slow.next, slow.pending.Revision, len(slow.ch))
		}
		if !h.window.covers(slow.next) {
			t.Fatalf("the window (from %d) does not cover the victim's next revision %d", h.window.from, slow.next)
		}
	})
}

// A spilled revision's key is its own allocation, and its value gone: a
// spilled buffer keeps only keys.
func TestDropValues(t *testing.T) {
	h := testHub(Config{})
	c := &committed{rows: put(2, "/k", 1<<20).rows}
	h.order.dropValues(c)
	if !c.spilled || c.rows[0].value != nil || !bytes.Equal(c.rows[0].key, []byte("/k")) || cap(c.rows[0].key) > 8 {
		t.Fatalf("after dropValues: spilled %v, value %d bytes, key %q (cap %d)", c.spilled, len(c.rows[0].value), c.rows[0].key, cap(c.rows[0].key))
	}
	if evs := c.events(); len(evs) != 1 || string(evs[0].Key) != "/k" {
		t.Fatalf("events of a spilled revision: %v", fmt.Sprint(evs))
	}
}

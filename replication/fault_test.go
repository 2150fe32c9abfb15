package replication_test

// Faults under a running hub: the server restarted (fast and immediate), the
// walsender terminated, the slot dropped, a watcher that never reads, a quiet
// revision table beside a busy one, a hub that is not a superuser, and
// several hubs settling the same holes. Each
// test checks the watch contract the same way: writers keep writing across
// the fault, and afterwards every watcher has received exactly the table's
// history from its start revision, in revision order, with no gap and no
// duplicate.

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// ---- writers --------------------------------------------------------------

// writers put (and now and then delete) keys under /a/ and /b/ from several
// goroutines until stopped. A write that fails is retried with the next one:
// the server may be down or restarting. Only successful writes count.
type writers struct {
	ok       atomic.Int64
	failed   atomic.Int64
	stopping atomic.Bool
	wg       sync.WaitGroup

	mu      sync.Mutex
	lastErr error
}

func startWriters(t *testing.T, e *env, n int) *writers {
	t.Helper()
	ws := &writers{}
	for g := range n {
		ws.wg.Go(func() { ws.loop(e, g) })
	}
	t.Cleanup(ws.stop)
	return ws
}

func (ws *writers) loop(e *env, g int) {
	for i := 0; !ws.stopping.Load(); i++ {
		prefix := "/a/"
		if i%3 == 2 {
			prefix = "/b/"
		}
		key := fmt.Appendf(nil, "%sk%d", prefix, (g*5+i)%11)
		// Not cancelled by stop: a statement cut off by its context may
		// still commit on the server after we have read the history.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var err error
		if i%10 == 9 {
			_, err = e.store.Delete(ctx, store.Key(key))
		} else {
			_, err = e.store.Put(ctx, key, fmt.Appendf(nil, "w%d-%d", g, i))
		}
		cancel()
		if err != nil {
			ws.failed.Add(1)
			ws.mu.Lock()
			ws.lastErr = err
			ws.mu.Unlock()
			// The server may be down: pace the retries instead of spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ws.ok.Add(1)
	}
}

// waitMore waits until the writers have made n more successful writes.
func (ws *writers) waitMore(t *testing.T, n int64) {
	t.Helper()
	target := ws.ok.Load() + n
	deadline := time.Now().Add(60 * time.Second)
	for ws.ok.Load() < target {
		if time.Now().After(deadline) {
			ws.mu.Lock()
			err := ws.lastErr
			ws.mu.Unlock()
			t.Fatalf("writers: %d of %d successful writes within 60s (%d failed, last error: %v)",
				ws.ok.Load(), target, ws.failed.Load(), err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

func (ws *writers) stop() {
	ws.stopping.Store(true)
	ws.wg.Wait()
}

// ---- watchers -------------------------------------------------------------

// watched is one watcher and what it must receive: every change in rng from
// revision start on.
type watched struct {
	name  string
	rng   store.KeyRange
	start int64
	w     *replication.Watcher
	r     *reader // nil: read only at the end, with collect
}

// reader drains a watcher as it goes, so the watcher stays live.
type reader struct {
	mu   sync.Mutex
	got  []seen
	bad  string // the first order violation
	done bool   // the channel closed
	err  error  // the watch's end, once done
}

func readAll(w *replication.Watcher) *reader {
	r := &reader{}
	go func() {
		for resp := range w.C {
			r.mu.Lock()
			for _, ev := range resp.Events {
				s := seen{ev.Revision, ev.Sub, ev.Type, string(ev.Key), string(ev.Value), ev.Version}
				if n := len(r.got); n > 0 && r.bad == "" {
					last := r.got[n-1]
					if s.Rev < last.Rev || (s.Rev == last.Rev && s.Sub <= last.Sub) {
						r.bad = fmt.Sprintf("event %v after %v: out of order or duplicated", s, last)
					}
				}
				r.got = append(r.got, s)
			}
			r.mu.Unlock()
		}
		r.mu.Lock()
		r.done, r.err = true, w.Err()
		r.mu.Unlock()
	}()
	return r
}

// wait returns what the reader has once it has n events, the watch ended or
// an event came out of order; it fails the test at the deadline.
func (r *reader) wait(t *testing.T, n int, timeout time.Duration) []seen {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r.mu.Lock()
		got, bad, done, err := slices.Clone(r.got), r.bad, r.done, r.err
		r.mu.Unlock()
		switch {
		case bad != "":
			t.Fatalf("%s", bad)
		case done && len(got) < n:
			t.Fatalf("watch ended after %d of %d events: %v", len(got), n, err)
		case len(got) >= n:
			return got
		case time.Now().After(deadline):
			t.Fatalf("got %d of %d events within %s", len(got), n, timeout)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

// standardWatchers opens, on h, a watcher of everything and one of /a/ from
// the next revision (nothing may be written meanwhile), both read as they
// go, and a watcher of everything from revision past, read only at the end:
// it falls behind, leaves the live group and must catch up.
func standardWatchers(t *testing.T, h *replication.Hub, hub string, past int64) []*watched {
	t.Helper()
	now := h.Watermark() + 1
	ws := []*watched{
		{name: hub + " / from now", rng: store.Prefix([]byte("/")), start: now},
		{name: hub + " /a/ from now", rng: store.Prefix([]byte("/a/")), start: now},
		{name: fmt.Sprintf("%s /a/ from %d", hub, past+1), rng: store.Prefix([]byte("/a/")), start: past + 1},
		{name: fmt.Sprintf("%s / from %d, read at the end", hub, past), rng: store.Prefix([]byte("/")), start: past},
	}
	for i, x := range ws {
		start := x.start
		if start == now {
			start = 0 // from now: the hub picks watermark+1
		}
		x.w = watch(t, h, replication.WatchRequest{Range: x.rng, StartRevision: start})
		if i < 3 {
			x.r = readAll(x.w)
		}
	}
	if got := h.Watermark() + 1; got != now {
		t.Fatalf("%s: the watermark moved from %d to %d while the watchers started", hub, now-1, got-1)
	}
	return ws
}

// putRetry puts one key, retrying while the server may still be settling
// after a fault.
func putRetry(t *testing.T, e *env, key, value string) int64 {
	t.Helper()
	var last error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		res, err := e.store.Put(context.Background(), []byte(key), []byte(value))
		if err == nil {
			return res.Revision
		}
		last = err
		time.Sleep(10 * time.Millisecond) // retry pacing
	}
	t.Fatalf("put %s: %v", key, last)
	return 0
}

// received waits for the n events x should have received, from its hub
// watcher or its bare slot reader.
func (x *watched) received(t *testing.T, n int) []seen {
	t.Helper()
	if x.r != nil {
		return x.r.wait(t, n, 60*time.Second)
	}
	return collect(t, x.w, n, 60*time.Second)
}

// checkHistories writes a last key every watcher matches, then checks that
// each one received exactly the table's history from its start: an event
// delivered twice, or one that is not in the table, shows as a difference
// before that last key.
func checkHistories(t *testing.T, e *env, hubs []*replication.Hub, ws []*watched) {
	t.Helper()
	end := putRetry(t, e, "/a/zz-end", "end")
	for _, x := range ws {
		want := e.history(t, x.rng, x.start)
		if len(want) == 0 || want[len(want)-1].Rev != end {
			t.Fatalf("%s: the table history does not end with the last put at %d: %d events", x.name, end, len(want))
		}
		compareHistory(t, x.name, x.received(t, len(want)), want)
	}
	for i, h := range hubs {
		if w := h.Watermark(); w < end {
			t.Errorf("hub %d: watermark %d below the last revision %d", i, w, end)
		}
	}
}

// compareHistory reports the difference between what a watcher got and
// the table's history, briefly: the lists may be thousands long.
func compareHistory(t *testing.T, name string, got, want []seen) {
	t.Helper()
	if slices.Equal(got, want) {
		t.Logf("%s: %d events, revisions %d..%d, as in the table", name, len(got), want[0].Rev, want[len(want)-1].Rev)
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	type rs struct {
		rev int64
		sub int32
	}
	inGot, inWant := map[rs]bool{}, map[rs]bool{}
	for _, s := range got {
		inGot[rs{s.Rev, s.Sub}] = true
	}
	for _, s := range want {
		inWant[rs{s.Rev, s.Sub}] = true
	}
	var missing, extra []string
	for _, s := range want {
		if !inGot[rs{s.Rev, s.Sub}] && len(missing) < 10 {
			missing = append(missing, s.String())
		}
	}
	for _, s := range got {
		if !inWant[rs{s.Rev, s.Sub}] && len(extra) < 10 {
			extra = append(extra, s.String())
		}
	}
	at := func(l []seen, i int) string {
		if i < len(l) {
			return l[i].String()
		}
		return "<end>"
	}
	t.Errorf("%s: got %d events, the table has %d; first difference at #%d: got %s, want %s; missing (first 10): %v; not in the table (first 10): %v",
		name, len(got), len(want), i, at(got, i), at(want, i), missing, extra)
}

// ---- hubs, logs, metrics, slots -----------------------------------------

// hubLogger returns a logger whose output the test prints (the last lines)
// if it fails. Call it before starting the hub, so the hub has stopped by
// the time the log is printed.
// With WALWATCH_TEST_LOG set it also goes to stderr as it is written.
func hubLogger(t *testing.T, hub string) (*slog.Logger, *logs.Buffer) {
	t.Helper()
	l := &logs.Buffer{}
	var out io.Writer = l
	if os.Getenv("WALWATCH_TEST_LOG") != "" {
		out = io.MultiWriter(l, os.Stderr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(l.String()), "\n")
			if len(lines) > 150 {
				lines = append([]string{fmt.Sprintf("... %d lines before", len(lines)-150)}, lines[len(lines)-150:]...)
			}
			t.Logf("hub %q log:\n%s", hub, strings.Join(lines, "\n"))
		}
	})
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})).With("hub", hub), l
}

// hubMetrics returns metrics of the hub's own and their registry.
func hubMetrics() (*replication.Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return replication.NewMetrics(reg), reg
}

// metric reads a counter or gauge (summed over its series) from reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
		return sum
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// faultSlotName is a slot name of the test's own: slots are cluster-wide
// and the package's tests share a cluster.
func faultSlotName(prefix string) string {
	return prefix + "_" + strings.ToLower(rand.Text()[:10])
}

// tempSlotPID returns the pid of the walsender reading this database's
// temporary walwatch slot, 0 if none is active.
func tempSlotPID(ctx context.Context, e *env) (int32, error) {
	var pid int32
	err := e.pool.QueryRow(ctx, `select coalesce(max(active_pid), 0) from pg_replication_slots
		where slot_name like 'walwatch\_tmp\_%' and database = current_database() and active`).Scan(&pid)
	return pid, err
}

// slotPID returns the pid of the walsender reading the slot, 0 if none is.
func slotPID(ctx context.Context, e *env, slot string) (int32, error) {
	var pid int32
	err := e.pool.QueryRow(ctx, `select coalesce(max(active_pid), 0) from pg_replication_slots
		where slot_name = $1 and active`, slot).Scan(&pid)
	return pid, err
}

// waitNewWalsender waits until a walsender other than old reads the slot
// (the temporary one when slot is "") and returns its pid.
func waitNewWalsender(t *testing.T, e *env, slot string, old int32) int32 {
	t.Helper()
	var pid int32
	wait.For(t, fmt.Sprintf("a walsender other than %d reads slot %q", old, slot), func() bool {
		var err error
		if slot == "" {
			pid, err = tempSlotPID(context.Background(), e)
		} else {
			pid, err = slotPID(context.Background(), e, slot)
		}
		return err == nil && pid != 0 && pid != old
	})
	return pid
}

// seed writes a few keys before any hub starts, and returns the first and
// last revisions written.
func seed(t *testing.T, e *env) (first, last int64) {
	t.Helper()
	for i := range 20 {
		rev := e.put(t, fmt.Sprintf("/%c/seed%d", 'a'+i%2, i), "s")
		if first == 0 {
			first = rev
		}
		last = rev
	}
	return first, last
}

func waitRevision(t *testing.T, h *replication.Hub, rev int64) {
	t.Helper()
	wait.For(t, fmt.Sprintf("hub watermark reaches %d", rev), func() bool { return h.Watermark() >= rev })
}

// ---- 1. server restart ----------------------------------------------------

func TestRestartFastMidStream(t *testing.T)      { testRestartMidStream(t, pgcluster.StopFast) }
func TestRestartImmediateMidStream(t *testing.T) { testRestartMidStream(t, pgcluster.StopImmediate) }

// testRestartMidStream restarts the server under two hubs, one on a
// persistent slot (which the server rewinds to its last checkpoint after a
// crash, so it replays) and one on a temporary slot (which is gone after
// the restart, so the hub reads the table and makes a new one), while
// writers write. An immediate stop also makes the revision sequence skip
// values and loses transactions in flight: holes the hubs must fill.
func testRestartMidStream(t *testing.T, mode pgcluster.StopMode) {
	c, dbURL := pgtest.PrivateDatabase(t, pgcluster.Options{})
	ctx := t.Context()
	e := newEnvAt(t, dbURL)
	first, last := seed(t, e)

	plog, _ := hubLogger(t, "persistent")
	tlog, _ := hubLogger(t, "temporary")
	pm, preg := hubMetrics()
	tm, treg := hubMetrics()
	persistent := e.startHub(t, replication.Config{Slot: "ft_restart", Window: 64, Logger: plog, Metrics: pm})
	temporary := e.startHub(t, replication.Config{Logger: tlog, Metrics: tm})
	waitRevision(t, persistent, last)
	waitRevision(t, temporary, last)
	ws := append(standardWatchers(t, persistent, "persistent", first), standardWatchers(t, temporary, "temporary", first)...)

	wr := startWriters(t, e, 3)
	wr.waitMore(t, 150)
	var before int64
	if err := e.pool.QueryRow(ctx, "select max(revision) from walwatch.kv").Scan(&before); err != nil {
		t.Fatal(err)
	}
	restartStart := time.Now()
	if err := c.Restart(ctx, mode); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart (%v) took %s; %d writes before it", mode, time.Since(restartStart).Round(time.Millisecond), wr.ok.Load())
	wr.waitMore(t, 300)
	wr.stop()
	t.Logf("writers: %d successful writes, %d failed", wr.ok.Load(), wr.failed.Load())

	checkHistories(t, e, []*replication.Hub{persistent, temporary}, ws)

	var fillers int64
	if err := e.pool.QueryRow(ctx, "select count(*) from walwatch.kv where key = '' and revision > $1", before).Scan(&fillers); err != nil {
		t.Fatal(err)
	}
	t.Logf("filler rows after the restart: %d; filled by the persistent hub %v, by the temporary one %v",
		fillers, metric(t, preg, "walwatch_hub_holes_filled_total"), metric(t, treg, "walwatch_hub_holes_filled_total"))
	for name, reg := range map[string]*prometheus.Registry{"persistent": preg, "temporary": treg} {
		if n := metric(t, reg, "walwatch_hub_reconnects_total"); n < 1 {
			t.Errorf("%s hub: %v reconnects, want at least 1 after the restart", name, n)
		}
	}
}

// ---- 2. walsender terminated ---------------------------------------------

// TestWalsenderTerminated ends the walsenders of a persistent and a
// temporary slot several times while writers write.
func TestWalsenderTerminated(t *testing.T) {
	e := newEnv(t)
	first, last := seed(t, e)
	slot := faultSlotName("ft_term")
	plog, _ := hubLogger(t, "persistent")
	tlog, _ := hubLogger(t, "temporary")
	pm, preg := hubMetrics()
	tm, treg := hubMetrics()
	persistent := e.startHub(t, replication.Config{Slot: slot, Logger: plog, Metrics: pm})
	temporary := e.startHub(t, replication.Config{Logger: tlog, Metrics: tm})
	waitRevision(t, persistent, last)
	waitRevision(t, temporary, last)
	ws := append(standardWatchers(t, persistent, "persistent", first), standardWatchers(t, temporary, "temporary", first)...)

	ppid := waitNewWalsender(t, e, slot, 0)
	tpid := waitNewWalsender(t, e, "", 0)
	wr := startWriters(t, e, 3)
	const rounds = 3
	for range rounds {
		wr.waitMore(t, 100)
		ctx := context.Background()
		if _, err := e.pool.Exec(ctx, "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1", slot); err != nil {
			t.Fatal(err)
		}
		if _, err := e.pool.Exec(ctx, `select pg_terminate_backend(active_pid) from pg_replication_slots
			where slot_name like 'walwatch\_tmp\_%' and database = current_database()`); err != nil {
			t.Fatal(err)
		}
		ppid = waitNewWalsender(t, e, slot, ppid)
		tpid = waitNewWalsender(t, e, "", tpid)
	}
	wr.waitMore(t, 100)
	wr.stop()
	checkHistories(t, e, []*replication.Hub{persistent, temporary}, ws)
	for name, reg := range map[string]*prometheus.Registry{"persistent": preg, "temporary": treg} {
		if n := metric(t, reg, "walwatch_hub_reconnects_total"); n < rounds {
			t.Errorf("%s hub: %v reconnects, want at least %d", name, n, rounds)
		}
	}
}

// ---- 3. slot dropped ------------------------------------------------------

// TestSlotDroppedUnderHub drops the hub's persistent slot while writers
// write: the hub makes it again and catches up from the table.
func TestSlotDroppedUnderHub(t *testing.T) {
	e := newEnv(t)
	first, last := seed(t, e)
	slot := faultSlotName("ft_drop")
	log, _ := hubLogger(t, "persistent")
	m, reg := hubMetrics()
	h := e.startHub(t, replication.Config{Slot: slot, Logger: log, Metrics: m})
	waitRevision(t, h, last)
	ws := standardWatchers(t, h, "persistent", first)
	pid := waitNewWalsender(t, e, slot, 0)

	wr := startWriters(t, e, 3)
	wr.waitMore(t, 150)
	// The hub reconnects between our terminate and our drop now and then:
	// then the drop finds the slot active, and we go round.
	var tries int
	wait.For(t, "slot "+slot+" dropped", func() bool {
		tries++
		ctx := context.Background()
		if _, err := e.pool.Exec(ctx, "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1", slot); err != nil {
			t.Fatal(err)
		}
		_, err := e.pool.Exec(ctx, "select pg_drop_replication_slot($1)", slot)
		return err == nil
	})
	t.Logf("slot dropped after %d tries", tries)
	wr.waitMore(t, 300)
	wr.stop()
	checkHistories(t, e, []*replication.Hub{h}, ws)

	waitNewWalsender(t, e, slot, pid) // the slot exists again, and is read
	info, err := replication.GetSlot(context.Background(), e.pool, slot)
	if err != nil {
		t.Fatal(err)
	}
	if info.Temporary || info.Plugin != "pgoutput" {
		t.Fatalf("slot made again as %+v, want a persistent pgoutput slot", info)
	}
	if n := metric(t, reg, "walwatch_hub_slots_recreated_total"); n < 1 {
		t.Errorf("%v slots recreated, want at least 1", n)
	}
}

// ---- 4. wal_sender_timeout ------------------------------------------------

// TestWalSenderNeverTimesOut keeps the server's wal_sender_timeout short
// and writes for more than twice that, with a watcher that never reads:
// the walsender must stay the same the whole time (the hub confirms in time,
// whatever its watchers do), and the watcher that reads gets everything.
func TestWalSenderNeverTimesOut(t *testing.T) {
	const timeout = 2 * time.Second
	_, dbURL := pgtest.PrivateDatabase(t, pgcluster.Options{Settings: map[string]string{"wal_sender_timeout": "2s"}})
	ctx := t.Context()
	e := newEnvAt(t, dbURL)
	log, _ := hubLogger(t, "temporary")
	m, reg := hubMetrics()
	h := e.startHub(t, replication.Config{Logger: log, Metrics: m}) // StatusInterval: the default
	start := h.Watermark() + 1
	stuck := watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))})
	_ = stuck // never read
	live := readAll(watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/"))}))

	pid := waitNewWalsender(t, e, "", 0)
	checkPID := func(when string) {
		t.Helper()
		got, err := tempSlotPID(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if got != pid {
			t.Fatalf("%s: the slot's walsender is %d, was %d: the stream was cut", when, got, pid)
		}
	}
	began := time.Now()
	lastCheck := began
	var puts, checks int
	for time.Since(began) < 5*time.Second && puts < 100000 {
		e.put(t, fmt.Sprintf("/k/%d", puts%17), fmt.Sprint(puts))
		puts++
		if time.Since(lastCheck) >= 100*time.Millisecond {
			checkPID(fmt.Sprintf("after %s", time.Since(began).Round(time.Millisecond)))
			lastCheck = time.Now()
			checks++
		}
	}
	checkPID("at the end")
	t.Logf("%d puts in %s (wal_sender_timeout %s), walsender %d checked %d times", puts, time.Since(began).Round(time.Millisecond), timeout, pid, checks)

	want := e.history(t, store.Prefix([]byte("/")), start)
	if len(want) != puts {
		t.Fatalf("the table has %d events from %d, want %d", len(want), start, puts)
	}
	compareHistory(t, "reading watcher", live.wait(t, len(want), 30*time.Second), want)
	checkPID("after the reading watcher caught up")
	if n := metric(t, reg, "walwatch_hub_reconnects_total"); n != 0 {
		t.Errorf("%v reconnects, want 0", n)
	}
	if n := metric(t, reg, "walwatch_hub_slow_watchers_total"); n < 1 {
		t.Errorf("the watcher that never reads was never found slow (%v): the test did not test it", n)
	}
}

// ---- 5. a quiet revision table does not pin WAL ---------------------------

// TestQuietTableDoesNotPinWAL writes megabytes to another table while the
// revision table stays quiet: the hub has nothing in flight, so it confirms
// the server's WAL end from keepalives, and its slot moves past that WAL.
func TestQuietTableDoesNotPinWAL(t *testing.T) {
	// Keepalives come at half of wal_sender_timeout when nothing else does.
	_, dbURL := pgtest.PrivateDatabase(t, pgcluster.Options{Settings: map[string]string{"wal_sender_timeout": "4s"}})
	ctx := t.Context()
	e := newEnvAt(t, dbURL)
	log, _ := hubLogger(t, "temporary")
	e.startHub(t, replication.Config{Logger: log})
	waitNewWalsender(t, e, "", 0)

	var kvBefore int64
	if err := e.pool.QueryRow(ctx, "select count(*) from walwatch.kv").Scan(&kvBefore); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, "create table other(x text)"); err != nil {
		t.Fatal(err)
	}
	for range 4 { // about 1 MB of rows a statement
		if _, err := e.pool.Exec(ctx, "insert into other select repeat(md5(i::text), 32) from generate_series(1, 1000) i"); err != nil {
			t.Fatal(err)
		}
	}
	var target string
	if err := e.pool.QueryRow(ctx, "select pg_current_wal_lsn()::text").Scan(&target); err != nil {
		t.Fatal(err)
	}
	var confirmed string
	var held int64
	deadline := time.Now().Add(30 * time.Second)
	for {
		var past bool
		err := e.pool.QueryRow(ctx, `select confirmed_flush_lsn::text, confirmed_flush_lsn >= $1::pg_lsn,
			pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
			from pg_replication_slots where slot_name like 'walwatch\_tmp\_%' and database = current_database()`,
			target).Scan(&confirmed, &past, &held)
		if err != nil {
			t.Fatal(err)
		}
		if past {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot's confirmed_flush_lsn is %s, still before %s (the WAL end after the other table's writes) after 30s", confirmed, target)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	t.Logf("confirmed_flush_lsn %s passed %s; the slot holds %d kB of WAL", confirmed, target, held>>10)
	var kvAfter int64
	if err := e.pool.QueryRow(ctx, "select count(*) from walwatch.kv").Scan(&kvAfter); err != nil {
		t.Fatal(err)
	}
	if kvAfter != kvBefore {
		t.Fatalf("walwatch.kv has %d rows, had %d: the revision table was not quiet", kvAfter, kvBefore)
	}
}

// ---- 6. a hub that is not a superuser --------------------------------------

// TestHubAsReplicationRole runs hubs as a role with LOGIN REPLICATION and
// only these grants, while a superuser writes.
func TestHubAsReplicationRole(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	role := "ww_" + db // roles are cluster-wide; database names are unique
	if len(role) > 63 {
		role = role[:63]
	}
	ident := pgx.Identifier{role}.Sanitize()
	if _, err := e.pool.Exec(ctx, "create role "+ident+" with login replication"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the hubs and the role's pool are gone
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, q := range []string{"drop owned by " + ident, "drop role " + ident} {
			if _, err := e.pool.Exec(ctx, q); err != nil {
				t.Errorf("cleanup: %s: %v", q, err)
			}
		}
	})
	grants := []string{
		"grant usage on schema walwatch to " + ident,
		"grant select, insert on walwatch.kv to " + ident,
		"grant select, update on walwatch.meta to " + ident,
		"grant execute on all functions in schema walwatch to " + ident,
	}
	for _, q := range grants {
		if _, err := e.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var super, repl bool
	if err := e.pool.QueryRow(ctx, "select rolsuper, rolreplication from pg_roles where rolname = $1", role).Scan(&super, &repl); err != nil || super || !repl {
		t.Fatalf("role %s: superuser %v, replication %v, %v", role, super, repl, err)
	}

	first, last := seed(t, e)
	u.User = url.User(role)
	rolePool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rolePool.Close)
	var who string
	if err := rolePool.QueryRow(ctx, "select current_user").Scan(&who); err != nil || who != role {
		t.Fatalf("the role's pool connects as %q (%v), want %q", who, err, role)
	}
	asRole := &env{url: u.String(), pool: rolePool, store: store.New(rolePool, store.Limits{})}

	slot := faultSlotName("ft_role")
	plog, plogs := hubLogger(t, "persistent")
	tlog, tlogs := hubLogger(t, "temporary")
	// Config.ConnString is empty: the replication connection is the pool's,
	// as the role.
	persistent := asRole.startHub(t, replication.Config{Slot: slot, Logger: plog})
	temporary := asRole.startHub(t, replication.Config{Logger: tlog})
	waitRevision(t, persistent, last)
	waitRevision(t, temporary, last)
	ws := append(standardWatchers(t, persistent, "persistent", first), standardWatchers(t, temporary, "temporary", first)...)

	for i := range 20 {
		e.put(t, fmt.Sprintf("/%c/k%d", 'a'+i%2, i%5), fmt.Sprint(i))
	}
	// A revision held open, then rolled back: the role's filler must wait
	// for it and then take it.
	held, _, rollback := beginHeld(t, e, "/a/held")
	after := e.put(t, "/a/after", "x")
	wait.For(t, "a filler run by "+role+" waits for the holder", func() bool {
		var n int
		err := e.pool.QueryRow(ctx, `select count(*) from pg_stat_activity
			where usename = $1 and query like '%walwatch.fill%' and cardinality(pg_blocking_pids(pid)) > 0`, role).Scan(&n)
		return err == nil && n > 0
	})
	for _, h := range []*replication.Hub{persistent, temporary} {
		if w := h.Watermark(); w >= held {
			t.Fatalf("watermark %d passed the open revision %d", w, held)
		}
	}
	rollback()
	waitRevision(t, persistent, after)
	waitRevision(t, temporary, after)
	var filler bool
	if err := e.pool.QueryRow(ctx, "select key = '' from walwatch.kv where revision = $1", held).Scan(&filler); err != nil || !filler {
		t.Fatalf("revision %d is not a filler row: %v", held, err)
	}
	for i := range 10 {
		e.put(t, fmt.Sprintf("/b/k%d", i), "late")
	}
	checkHistories(t, e, []*replication.Hub{persistent, temporary}, ws)

	// The hubs record the settled revision as the role too.
	var end int64
	if err := e.pool.QueryRow(ctx, "select max(revision) from walwatch.kv").Scan(&end); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "settled revision recorded", func() bool {
		var settled int64
		err := e.pool.QueryRow(ctx, "select settled_revision from walwatch.meta").Scan(&settled)
		return err == nil && settled >= end
	})
	info, err := replication.GetSlot(ctx, e.pool, slot)
	if err != nil || !info.Active {
		t.Fatalf("slot %s: %+v, %v", slot, info, err)
	}
	for _, l := range []*logs.Buffer{plogs, tlogs} {
		if bad := l.Lines("denied"); len(bad) > 0 {
			t.Errorf("permission errors in the hub log:\n%s", strings.Join(bad, "\n"))
		}
		// Expected: the filler waited for the held revision. Two hubs
		// filling the same hole may also collide (SQLSTATE 23505):
		// TestHubsFillTheSameHoleTogether is about that.
		bad := slices.DeleteFunc(l.Lines("level=WARN"), func(s string) bool {
			return strings.Contains(s, "holds a revision open") || strings.Contains(s, "23505")
		})
		if len(bad) > 0 {
			t.Errorf("warnings in the hub log:\n%s", strings.Join(bad, "\n"))
		}
	}
}

// ---- 7. several hubs fill the same hole ------------------------------------

// TestHubsFillTheSameHoleTogether runs several hubs on one database, as
// several cp processes do. Every hub settles every hole, so when the
// transactions holding revisions roll back, the hubs' fillers for the same
// revisions all go ahead at once: each must take the revision or do
// nothing, never fail.
func TestHubsFillTheSameHoleTogether(t *testing.T) {
	e := newEnv(t)
	const hubs, rounds, held = 4, 8, 3
	var hs []*replication.Hub
	var hubLogs []*logs.Buffer
	for i := range hubs {
		log, l := hubLogger(t, fmt.Sprint("hub", i))
		hs = append(hs, e.startHub(t, replication.Config{Logger: log}))
		hubLogs = append(hubLogs, l)
	}
	start := hs[0].Watermark() + 1
	w := readAll(watch(t, hs[0], replication.WatchRequest{Range: store.Prefix([]byte("/"))}))
	for round := range rounds {
		var rollbacks []func()
		var first int64
		for i := range held {
			rev, _, rollback := beginHeld(t, e, fmt.Sprintf("/held/%d/%d", round, i))
			if i == 0 {
				first = rev
			}
			rollbacks = append(rollbacks, rollback)
		}
		after := e.put(t, fmt.Sprintf("/after/%d", round), "x")
		wait.For(t, fmt.Sprintf("the %d hubs' fillers wait for revision %d", hubs, first), func() bool {
			var n int
			err := e.pool.QueryRow(context.Background(), `select count(*) from pg_stat_activity
				where datname = current_database() and query like '%walwatch.fill%' and cardinality(pg_blocking_pids(pid)) > 0`).Scan(&n)
			return err == nil && n >= hubs
		})
		for _, rollback := range rollbacks {
			rollback()
		}
		for _, h := range hs {
			waitRevision(t, h, after)
		}
	}
	want := e.history(t, store.Prefix([]byte("/")), start)
	compareHistory(t, "hub0 / from now", w.wait(t, len(want), 30*time.Second), want)
	var fillers int64
	if err := e.pool.QueryRow(context.Background(), "select count(*) from walwatch.kv where key = ''").Scan(&fillers); err != nil {
		t.Fatal(err)
	}
	if fillers != rounds*held {
		t.Errorf("%d filler rows, want %d", fillers, rounds*held)
	}
	var failed []string
	for _, l := range hubLogs {
		failed = append(failed, l.Lines("settling a hole with a filler row failed")...)
	}
	if len(failed) > 0 {
		t.Errorf("%d filler statements failed; the first:\n%s", len(failed), failed[0])
	}
}

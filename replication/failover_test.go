package replication_test

// Failover to a promoted standby under a running hub whose connection
// string names both servers (target_session_attrs=read-write): with a
// synchronous standby nothing acknowledged is lost and no watcher is
// cancelled; with an asynchronous one that lags, the hub finds that history
// went backwards and tells every watcher to re-list.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// failoverEnv is a primary with a standby, and an env whose pool (and so
// the hubs' replication connections) reaches whichever takes writes.
type failoverEnv struct {
	*env
	primary, standby *pgcluster.Cluster
}

func newFailoverEnv(t *testing.T, opts pgcluster.StandbyOptions) *failoverEnv {
	t.Helper()
	primary, url := pgtest.PrivateDatabase(t, pgcluster.Options{})
	newEnvAt(t, url) // the schema, before the standby copies it
	standby := pgtest.StartStandby(t, primary, opts)
	multi := pgcluster.MultiHostConnString("walwatch", primary, standby)
	// connect_timeout: a host that does not answer at all must not hold up
	// trying the next one.
	return &failoverEnv{env: newEnvAt(t, multi+"&connect_timeout=2"), primary: primary, standby: standby}
}

// failover kills the primary and promotes the standby, and returns when
// the promoted standby takes writes.
func (f *failoverEnv) failover(t *testing.T) time.Time {
	t.Helper()
	ctx := t.Context()
	if err := f.primary.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// ack is a write its writer was told succeeded.
type ack struct {
	rev        int64
	key, value string
}

// ackWriters put keys under prefix from several goroutines until stopped,
// retrying through the failover, and record every write acknowledged.
type ackWriters struct {
	stopping atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	acks     []ack
}

func startAckWriters(t *testing.T, e *env, n int, prefix string) *ackWriters {
	ws := &ackWriters{}
	for g := range n {
		ws.wg.Go(func() {
			for i := 0; !ws.stopping.Load(); i++ {
				key, value := fmt.Sprintf("%sg%d/k%d", prefix, g, i%7), fmt.Sprintf("%s-%d-%d", prefix, g, i)
				// Not cancelled by stop: see writers.loop.
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				res, err := e.store.Put(ctx, []byte(key), []byte(value))
				cancel()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // retry pacing while the server is away
					continue
				}
				ws.mu.Lock()
				ws.acks = append(ws.acks, ack{res.Revision, key, value})
				ws.mu.Unlock()
			}
		})
	}
	t.Cleanup(ws.stop)
	return ws
}

func (ws *ackWriters) count() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.acks)
}

func (ws *ackWriters) waitMore(t *testing.T, n int) {
	t.Helper()
	target := ws.count() + n
	wait.For(t, fmt.Sprintf("%d acknowledged writes", target), func() bool { return ws.count() >= target })
}

func (ws *ackWriters) stop() {
	ws.stopping.Store(true)
	ws.wg.Wait()
}

// TestFailoverSynchronous fails over to a synchronous standby while
// writers write, with commits waiting for the standby (its WAL sender
// stalled) when the primary dies: every acknowledged write reaches the
// watchers exactly once, in order; none of the commits that were waiting,
// which the hub had already received, is delivered; no watcher is
// cancelled.
func TestFailoverSynchronous(t *testing.T) {
	f := newFailoverEnv(t, pgcluster.StandbyOptions{Synchronous: true})
	ctx := t.Context()
	plog, _ := hubLogger(t, "persistent")
	tlog, _ := hubLogger(t, "temporary")
	pm, preg := hubMetrics()
	persistent := f.startHub(t, replication.Config{Slot: "ft_failover_sync", Logger: plog, Metrics: pm})
	temporary := f.startHub(t, replication.Config{Logger: tlog})
	all := store.Prefix([]byte("/"))
	start := persistent.Watermark() + 1
	var ws []*reader
	for _, h := range []*replication.Hub{persistent, temporary} {
		ws = append(ws, readAll(watch(t, h, replication.WatchRequest{Range: all, StartRevision: start})))
	}

	wr := startAckWriters(t, f.env, 3, "/before/")
	wr.waitMore(t, 150)
	wr.stop()
	var last int64
	for _, a := range wr.acks {
		last = max(last, a.rev)
	}
	waitRevision(t, persistent, last)
	received := metric(t, preg, "walwatch_hub_transactions_total")

	// Commits from now on wait for the standby, which never gets them.
	resume, err := f.standby.StallReplication(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resume() })
	// The first commit the standby lacks: nothing below it holds the hub.
	cancelled := cancelledWrite(t, f, preg)
	hiddenUntilStandby(t, f, persistent, cancelled)
	received = metric(t, preg, "walwatch_hub_transactions_total")
	lost := make(chan error, 1)
	go func() {
		_, err := f.pool.Exec(context.Background(), "select walwatch.set('/lost', 'never acknowledged')")
		lost <- err
	}()
	around := startAckWriters(t, f.env, 3, "/around/")
	wait.For(t, "the hub receives a commit the standby does not have", func() bool {
		return metric(t, preg, "walwatch_hub_transactions_total") > received
	})
	promoted := f.failover(t)
	t.Logf("the hub had a put on the new primary %s after promotion", recovered(t, f.env, persistent, promoted))
	if err := <-lost; err == nil {
		t.Fatal("the write waiting for the stalled standby was acknowledged")
	}
	around.waitMore(t, 100)
	around.stop()

	end := putRetry(t, f.env, "/zz-end", "end")
	want := f.history(t, all, start)
	if len(want) == 0 || want[len(want)-1].Rev != end {
		t.Fatalf("the table's history does not end with the last put at %d", end)
	}
	acked := map[ack]bool{}
	for _, a := range append(wr.acks, around.acks...) {
		acked[a] = true
	}
	for i, r := range ws {
		got := r.wait(t, len(want), 60*time.Second)
		compareHistory(t, fmt.Sprint("watcher ", i), got, want)
		n := 0
		for _, s := range got {
			if s.Key == "/lost" || s.Key == "/cancelled" {
				t.Errorf("watcher %d got %v, a write never acknowledged nor on the new primary", i, s)
			}
			if acked[ack{s.Rev, s.Key, s.Value}] {
				n++
			}
		}
		if n != len(acked) {
			t.Errorf("watcher %d got %d of the %d acknowledged writes", i, n, len(acked))
		}
		r.mu.Lock()
		done, err := r.done, r.err
		r.mu.Unlock()
		if done {
			t.Errorf("watcher %d ended: %v", i, err)
		}
	}
	if n := metric(t, preg, "walwatch_hub_failovers_total"); n != 1 {
		t.Errorf("%v failovers counted, want 1", n)
	}
}

// cancelledWrite puts /cancelled while the standby is stalled, and gives
// up on it once the hub has it: pgx cancels the query, PostgreSQL ends the
// commit's wait for the standby with a warning, and the commit stands,
// visible on the primary alone. It returns the write's revision.
func cancelledWrite(t *testing.T, f *failoverEnv, reg *prometheus.Registry) int64 {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	received := metric(t, reg, "walwatch_hub_transactions_total")
	wctx, giveUp := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(wctx, "select walwatch.set('/cancelled', 'on the old primary alone')")
		done <- err
	}()
	wait.For(t, "the hub receives the write about to be given up", func() bool {
		return metric(t, reg, "walwatch_hub_transactions_total") > received
	})
	giveUp()
	if err := <-done; err == nil {
		t.Fatal("the write to the stalled standby was acknowledged")
	}
	var rev int64
	wait.For(t, "the given-up write is visible on the primary", func() bool {
		return f.pool.QueryRow(ctx, "select revision from walwatch.kv where key = '/cancelled'").Scan(&rev) == nil
	})
	return rev
}

// hiddenUntilStandby checks that nothing shows the write at rev, which is
// visible on the primary but not on the stalled standby: the hub does not
// release it, and neither a Txn nor a delete that writes nothing, nor a
// plain-SQL reader settling before it reads, answers while the standby
// lacks what it would show (walwatch.await_standby). Each is given a
// moment to answer; without the standby none can.
func hiddenUntilStandby(t *testing.T, f *failoverEnv, h *replication.Hub, rev int64) {
	t.Helper()
	const moment = 300 * time.Millisecond
	key := []byte("/cancelled")
	for _, c := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"hub WaitFor", func(ctx context.Context) error { return h.WaitFor(ctx, rev) }},
		{"read-only Txn", func(ctx context.Context) error {
			_, err := f.store.Txn(ctx, store.TxnRequest{
				If:   []store.Compare{{Key: key, Target: store.CompareModRevision, Result: store.ResultEqual, Number: rev}},
				Then: []store.Op{{Kind: store.OpRange, Range: store.Key(key)}},
			})
			return err
		}},
		{"delete of nothing", func(ctx context.Context) error {
			_, err := f.store.Delete(ctx, store.Key([]byte("/no-such-key")))
			return err
		}},
		{"SQL settle_below", func(ctx context.Context) error {
			_, err := f.pool.Exec(ctx, "select walwatch.settle_below($1)", rev+1)
			return err
		}},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), moment)
		err := c.run(ctx)
		cancel()
		if err == nil {
			t.Errorf("%s answered with revision %d visible on the primary alone", c.name, rev)
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v, want it to wait for the standby", c.name, err)
		}
	}
	if w := h.Watermark(); w >= rev {
		t.Errorf("watermark %d: the hub released revision %d, on the primary alone", w, rev)
	}
}

// TestFailoverAsynchronousLag fails over to an asynchronous standby that
// lags: writes the old primary acknowledged, and the hub delivered, while
// its WAL sender to the standby was stalled are not on the new primary,
// which hands out their revisions again. Every watcher open across it is
// cancelled with ErrHistoryChanged; a watch from the new history gets every
// write made on the new primary, and a read at the latest revision sees it.
func TestFailoverAsynchronousLag(t *testing.T) {
	f := newFailoverEnv(t, pgcluster.StandbyOptions{})
	ctx := t.Context()
	plog, _ := hubLogger(t, "persistent")
	tlog, _ := hubLogger(t, "temporary")
	pm, preg := hubMetrics()
	persistent := f.startHub(t, replication.Config{Slot: "ft_failover_async", Logger: plog, Metrics: pm})
	temporary := f.startHub(t, replication.Config{Logger: tlog})
	all := store.Prefix([]byte("/"))
	hubs := []*replication.Hub{persistent, temporary}
	var ws []*replication.Watcher
	for _, h := range hubs {
		ws = append(ws, watch(t, h, replication.WatchRequest{Range: all}), watch(t, h, replication.WatchRequest{Range: store.Key([]byte("/stalled"))}))
	}
	readers := make([]*reader, len(ws))
	for i, w := range ws {
		readers[i] = readAll(w)
	}
	wr := startAckWriters(t, f.env, 3, "/before/")
	wr.waitMore(t, 100)

	resume, err := f.standby.StallReplication(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resume() })
	wr.waitMore(t, 200)
	stalled := f.put(t, "/stalled", "only on the old primary")
	for _, h := range hubs {
		waitRevision(t, h, stalled)
	}
	for _, r := range readers[1:2] {
		r.wait(t, 1, 30*time.Second) // delivered: now it must be taken back
	}
	wr.stop()
	promoted := f.failover(t)

	var hc *replication.HistoryChangedError
	for i, r := range readers {
		wait.For(t, fmt.Sprintf("watcher %d ends", i), func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.done
		})
		if !errors.Is(r.err, replication.ErrHistoryChanged) || !errors.As(r.err, &hc) {
			t.Fatalf("watcher %d ended with %v, want ErrHistoryChanged", i, r.err)
		}
	}
	t.Logf("watchers cancelled %s after promotion: %v", time.Since(promoted).Round(time.Millisecond), hc)
	var onNew int64
	if err := f.pool.QueryRow(ctx, "select count(*) from walwatch.kv where revision = $1 and key = '/stalled'", stalled).Scan(&onNew); err != nil {
		t.Fatal(err)
	}
	if onNew != 0 {
		t.Fatalf("the new primary has /stalled at %d: the standby did not lag", stalled)
	}
	if hc.Revision >= stalled {
		t.Errorf("the new history is settled up to %d, at or past %d which it lacks", hc.Revision, stalled)
	}

	// What a client does next: re-list, and watch from after the list.
	from := hc.Revision + 1
	var fresh []*reader
	for _, h := range hubs {
		fresh = append(fresh, readAll(watch(t, h, replication.WatchRequest{Range: all, StartRevision: from})))
	}
	after := startAckWriters(t, f.env, 3, "/after/")
	after.waitMore(t, 100)
	after.stop()
	end := putRetry(t, f.env, "/zz-end", "end")
	want := f.history(t, all, from)
	for i, r := range fresh {
		compareHistory(t, fmt.Sprint("watcher from the new history ", i), r.wait(t, len(want), 60*time.Second), want)
	}
	for _, h := range hubs {
		waitRevision(t, h, end)
		rev, err := h.ReadRevision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res, err := f.store.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/zz-end")), Revision: rev})
		if err != nil || len(res.KVs) != 1 || string(res.KVs[0].Value) != "end" {
			t.Fatalf("read at the hub's revision %d: %+v, %v", rev, res, err)
		}
	}
	if n := metric(t, preg, "walwatch_hub_failovers_total"); n != 1 {
		t.Errorf("%v failovers counted, want 1", n)
	}
}

// recovered puts a key on the new primary and waits until h has it: it
// returns how long after since (the promotion) that was.
func recovered(t *testing.T, e *env, h *replication.Hub, since time.Time) time.Duration {
	t.Helper()
	waitRevision(t, h, putRetry(t, e, "/recovered", "x"))
	return time.Since(since).Round(time.Millisecond)
}

// BenchmarkFailoverRecovery measures how soon after a promotion a hub on a
// multi-host connection string has a put made on the new primary
// (recovery-ms), with the promotion right after the primary dies and 5 s
// later, as a slow one: the hub's reconnect backoff stays short while the
// server it finds is a standby (reconnectWait), so recovery follows the
// promotion either way. One op is one failover:
//
//	go test -run '^$' -bench BenchmarkFailoverRecovery -benchtime 1x -count 3 ./replication/
func BenchmarkFailoverRecovery(b *testing.B) {
	for _, delay := range []time.Duration{0, 5 * time.Second} {
		b.Run(fmt.Sprintf("promote-after=%s", delay), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				total += failoverRecovery(b, delay)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "recovery-ms")
		})
	}
}

func failoverRecovery(b *testing.B, delay time.Duration) time.Duration {
	primary, url := pgtest.PrivateDatabase(b, pgcluster.Options{})
	newEnvAt(b, url)
	standby := pgtest.StartStandby(b, primary, pgcluster.StandbyOptions{})
	e := newEnvAt(b, pgcluster.MultiHostConnString("walwatch", primary, standby)+"&connect_timeout=2")
	h := e.startHub(b, replication.Config{})
	rev := e.put(b, "/x", "before")
	wait.For(b, "the hub has the first put", func() bool { return h.Watermark() >= rev })
	ctx := context.Background()
	if err := primary.Kill(ctx); err != nil {
		b.Fatal(err)
	}
	time.Sleep(delay) // the promotion's own delay, the scenario measured
	if err := standby.Promote(ctx); err != nil {
		b.Fatal(err)
	}
	promoted := time.Now()
	var after int64
	wait.For(b, "a put on the new primary", func() bool {
		res, err := e.store.Put(ctx, []byte("/x"), []byte("after"))
		after = res.Revision
		return err == nil
	})
	wait.For(b, "the hub has it", func() bool { return h.Watermark() >= after })
	return time.Since(promoted)
}

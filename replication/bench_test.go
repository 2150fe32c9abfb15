// Benchmarks of the watch hub against the private PostgreSQL the test
// harness starts (fsync on, as in production). How to run them, without the
// Makefile; each command takes well under a minute on two cores:
//
//	# put→event round trip, idle and under 32 concurrent writers, over
//	# TCP and over the Unix socket
//	go test -run '^$' -bench 'BenchmarkPutToEvent' -benchtime 2000x -count 3 ./replication/
//	# the same with a streaming standby, asynchronous and synchronous
//	# (where the hub holds each event until its commit is visible), interleaved
//	go test -run '^$' -bench 'BenchmarkPutToEventStandby' -benchtime 2000x -count 3 ./replication/
//	# catch-up of a new watcher over 100,000 revisions in the table
//	go test -run '^$' -bench 'BenchmarkCatchUp' -benchtime 3x -count 3 ./replication/
//	# puts at 32 writers with one watcher, with a bare slot reader (over
//	# TCP and over the Unix socket) and with none, interleaved
//	go test -run '^$' -bench 'BenchmarkWatchedPuts' -benchtime 5x ./replication/
//	# heap per idle watcher, and fan-out of one put to 10,000 watchers
//	go test -run '^$' -bench 'BenchmarkIdleWatcherMemory' -benchtime 20x -count 3 ./replication/
//
// Each iteration of BenchmarkCatchUp is a whole 100,000-event catch-up and
// each of BenchmarkIdleWatcherMemory a put fanned out to 10,000 watchers, so
// do not give them the 2000x of the first. Add -cpuprofile cpu.out (one
// benchmark at a time) to see where the time goes.
//
// The figures are reported as metrics: p50-us, p99-us and p999-us are
// round-trip percentiles in microseconds, events/s and puts/s throughputs,
// bytes/watcher the heap an idle watcher costs, fanout-p99-ms the time for
// one put to reach every watcher. Under load, BenchmarkPutToEvent also
// reports how the hub's WAL sender spent the time (walsender-oncpu on a CPU,
// walsender-runq runnable but waiting for one, each as a fraction of the
// wall time), from Linux's schedstat. These are measurements, never
// assertions.
package replication_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// benchValue is an APISIX-route-sized value, as store's BenchmarkPut uses.
var benchValue = []byte(`{"uri":"/get","upstream":"http://127.0.0.1:8080"}`)

// benchWait bounds any single wait for an event, so a lost event fails the
// benchmark instead of hanging it.
const benchWait = 30 * time.Second

// percentile returns the q-quantile (0 < q ≤ 1) of sorted, nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// reportLatency reports the p50 and p99 (and p999 when there are enough
// samples for it to mean something) of samples, in microseconds, under
// prefix (e.g. "" or "put-").
func reportLatency(b *testing.B, prefix string, samples []time.Duration) {
	s := slices.Clone(samples)
	slices.Sort(s)
	b.ReportMetric(us(percentile(s, 0.50)), prefix+"p50-us")
	b.ReportMetric(us(percentile(s, 0.99)), prefix+"p99-us")
	if len(s) >= 1000 {
		b.ReportMetric(us(percentile(s, 0.999)), prefix+"p999-us")
	}
}

// awaitRevision reads w until it has delivered an event at revision rev or
// later, and returns that event. The timer is reused across calls.
func awaitRevision(b *testing.B, w *replication.Watcher, rev int64, timer *time.Timer) replication.Event {
	timer.Reset(benchWait)
	defer timer.Stop()
	for {
		select {
		case resp, ok := <-w.C:
			if !ok {
				b.Fatalf("watch ended waiting for revision %d: %v", rev, w.Err())
			}
			if resp.Canceled {
				b.Fatalf("watch canceled waiting for revision %d: %v", rev, resp.Err)
			}
			if len(resp.Events) > 0 && resp.Revision >= rev {
				return resp.Events[len(resp.Events)-1]
			}
		case <-timer.C:
			b.Fatalf("no event for revision %d within %s", rev, benchWait)
		}
	}
}

// BenchmarkPutToEvent measures one put's round trip through the store, the
// replication stream and the hub to a watcher: put a key, then wait until
// the watcher has that revision's event. One op is one round trip.
//
//   - idle: nothing else writes.
//   - writers=32: 32 goroutines, each on its own connection of a separate
//     pool, put continuously to keys outside the watcher's prefix, so the
//     load goes through the stream and the hub's reorder buffer while the
//     watcher receives only the measured events.
//
// Besides the round trip (p50-us, p99-us, p999-us) it reports the put alone
// (put-p50-us, put-p99-us) and what follows its return until the event is
// in (hub-p50-us, hub-p99-us: the stream and the hub), the time from the
// server's commit timestamp to the event's arrival (commit-p50-us,
// commit-p99-us: the commit's flush, the WAL sender, the hub), and under
// load the hub's holes and fillers per measured put.
//
// Both run twice, every connection through TCP on loopback (tcp/...) and
// through the server's Unix socket (unix/...): the WAL sender sends every
// message on its own, and what each send costs on TCP shows in the tail
// under load.
func BenchmarkPutToEvent(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchmarkPutToEvent(b, newEnv(b)) })
	b.Run("unix", func(b *testing.B) { benchmarkPutToEvent(b, newEnvAt(b, socketURL(b, pgtest.NewDatabase(b)))) })
}

func benchmarkPutToEvent(b *testing.B, e *env) {
	reg := prometheus.NewRegistry()
	h := e.startHub(b, replication.Config{Metrics: replication.NewMetrics(reg)})
	ctx := context.Background()
	counter := func(name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.GetMetric()) == 1 {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		b.Fatalf("no counter %s", name)
		return 0
	}

	measure := func(b *testing.B, prefix string) {
		w := watch(b, h, replication.WatchRequest{Range: store.Prefix([]byte(prefix))})
		key := []byte(prefix + "k")
		timer := time.NewTimer(benchWait)
		timer.Stop()
		// Warm the connection, the prepared statement and the watcher.
		for range 10 {
			res, err := e.store.Put(ctx, key, benchValue)
			if err != nil {
				b.Fatal(err)
			}
			awaitRevision(b, w, res.Revision, timer)
		}
		rtts := make([]time.Duration, 0, b.N)
		puts := make([]time.Duration, 0, b.N)
		after := make([]time.Duration, 0, b.N)
		fromCommit := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			start := time.Now()
			res, err := e.store.Put(ctx, key, benchValue)
			if err != nil {
				b.Fatal(err)
			}
			put := time.Since(start)
			ev := awaitRevision(b, w, res.Revision, timer)
			rtt := time.Since(start)
			puts, rtts, after = append(puts, put), append(rtts, rtt), append(after, rtt-put)
			fromCommit = append(fromCommit, time.Since(ev.CommitTime))
		}
		b.StopTimer()
		reportLatency(b, "", rtts)
		reportLatency(b, "put-", puts)
		reportLatency(b, "hub-", after)
		reportLatency(b, "commit-", fromCommit)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	}

	b.Run("idle", func(b *testing.B) { measure(b, "/measured/idle/") })

	b.Run("writers=32", func(b *testing.B) {
		const writers = 32
		load := store.New(newPool(b, e.url, 40, writers), store.Limits{})

		var (
			stop    atomic.Bool
			loadOps atomic.Int64
			wg      sync.WaitGroup
			errOnce sync.Once
			loadErr error
		)
		for i := range writers {
			wg.Go(func() {
				for j := 0; !stop.Load(); j++ {
					// Each writer has its own 100 keys: no key lock is shared.
					key := fmt.Appendf(nil, "/load/%02d/%03d", i, j%100)
					if _, err := load.Put(ctx, key, benchValue); err != nil {
						errOnce.Do(func() { loadErr = err })
						return
					}
					loadOps.Add(1)
				}
			})
		}
		// Bounded: the writers stop as soon as the measured loop ends, even
		// if it fails.
		stopWriters := sync.OnceFunc(func() { stop.Store(true); wg.Wait() })
		defer stopWriters()
		time.Sleep(200 * time.Millisecond) // let the load reach a steady state
		before := loadOps.Load()
		holes, filled := counter("walwatch_hub_holes_seen_total"), counter("walwatch_hub_holes_filled_total")
		sender := walSender(b, e)
		start, sched := time.Now(), sender()

		measure(b, "/measured/loaded/")

		elapsed := time.Since(start).Seconds()
		loadRate := float64(loadOps.Load()-before) / elapsed
		if end := sender(); end.ok && sched.ok {
			b.ReportMetric((end.onCPU-sched.onCPU).Seconds()/elapsed, "walsender-oncpu")
			b.ReportMetric((end.waiting-sched.waiting).Seconds()/elapsed, "walsender-runq")
		}
		b.ReportMetric((counter("walwatch_hub_holes_seen_total")-holes)/float64(b.N), "holes/op")
		b.ReportMetric((counter("walwatch_hub_holes_filled_total")-filled)/float64(b.N), "fillers/op")
		stopWriters()
		if loadErr != nil {
			b.Fatalf("background writer: %v", loadErr)
		}
		b.ReportMetric(loadRate, "load-puts/s")
	})
}

// BenchmarkPutToEventStandby is BenchmarkPutToEvent (over TCP) on a
// primary with a streaming standby, asynchronous and then synchronous
// (synchronous_standby_names). Synchronous, a commit waits for the standby
// (put-p50-us), and the hub holds each event until its commit is visible
// (hub-p50-us: syncrep.go), which the stream delivers before it is.
func BenchmarkPutToEventStandby(b *testing.B) {
	primary, url := pgtest.PrivateDatabase(b, pgcluster.Options{})
	e := newEnvAt(b, url)
	standby := pgtest.StartStandby(b, primary, pgcluster.StandbyOptions{})
	for _, sync := range []bool{false, true} {
		name := "async"
		if sync {
			name = "sync"
		}
		b.Run(name, func(b *testing.B) {
			if err := standby.SetSynchronous(context.Background(), sync); err != nil {
				b.Fatal(err)
			}
			benchmarkPutToEvent(b, e)
		})
	}
}

// schedStat is how long a process has run and how long it has waited,
// runnable, for a CPU, from Linux's /proc/PID/schedstat.
type schedStat struct {
	onCPU, waiting time.Duration
	ok             bool
}

// walSender returns a function that reads the schedstat of the WAL sender
// serving e's hub (the test harness's server runs on this machine). A WAL
// sender runnable far longer than it runs is short of CPU, not of work; on
// two shared cores that, not the hub, is the round trip's tail under load.
func walSender(b *testing.B, e *env) func() schedStat {
	var pid int
	err := e.pool.QueryRow(context.Background(),
		`select active_pid from pg_replication_slots where database = current_database() and active_pid is not null`).Scan(&pid)
	if err != nil {
		b.Fatalf("find the hub's WAL sender: %v", err)
	}
	return func() schedStat {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			b.Logf("no schedstat for the WAL sender: %v", err)
			return schedStat{}
		}
		var run, wait int64
		if _, err := fmt.Sscan(string(data), &run, &wait); err != nil {
			b.Logf("parse the WAL sender's schedstat %q: %v", data, err)
			return schedStat{}
		}
		return schedStat{time.Duration(run), time.Duration(wait), true}
	}
}

// catchUpRevisions is how many revisions BenchmarkCatchUp's watcher replays.
const catchUpRevisions = 100_000

// BenchmarkCatchUp measures how fast a new watcher catches up over 100,000
// revisions in the table: one op is one fresh watcher, from revision 2 on
// prefix "/", until it has all 100,000 events, all but the last few thousand
// (the hub's default Window) read from the table. The table and the hub are
// set up once, outside the timer.
//
// The rows are written with the hub already running, and the timer starts
// once it has settled them all.
func BenchmarkCatchUp(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	h := e.startHub(b, replication.Config{})
	// One revision per row, each a new key (so create_revision is the
	// revision and version 1), revisions 2..100001, as 100,000 puts of new
	// keys would leave them; the sequence continues after them.
	if _, err := e.pool.Exec(ctx, `
		insert into walwatch.kv (revision, sub, key, value, tombstone, create_revision, version, prev_revision)
		select g, 0, convert_to('/catchup/' || lpad(g::text, 7, '0'), 'UTF8'), $1::bytea, false, g, 1, 0
		  from generate_series(2, $2::bigint + 1) as g`, benchValue, catchUpRevisions); err != nil {
		b.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `select setval('walwatch.revision', $1::bigint + 1)`, catchUpRevisions); err != nil {
		b.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `analyze walwatch.kv`); err != nil {
		b.Fatal(err)
	}
	wait.For(b, "hub at the last written revision", func() bool { return h.Watermark() == catchUpRevisions+1 })

	b.Run(fmt.Sprintf("revisions=%d", catchUpRevisions), func(b *testing.B) {
		timer := time.NewTimer(benchWait)
		b.ResetTimer()
		for range b.N {
			wctx, cancel := context.WithCancel(ctx)
			w, err := h.Watch(wctx, replication.WatchRequest{Range: store.Prefix([]byte("/")), StartRevision: 2})
			if err != nil {
				b.Fatal(err)
			}
			n, last := 0, int64(1)
			timer.Reset(benchWait)
			for n < catchUpRevisions {
				select {
				case resp, ok := <-w.C:
					if !ok {
						b.Fatalf("watch ended after %d of %d events: %v", n, catchUpRevisions, w.Err())
					}
					for i := range resp.Events {
						if rev := resp.Events[i].Revision; rev != last+1 {
							b.Fatalf("event at revision %d after %d", rev, last)
						}
						last++
					}
					n += len(resp.Events)
				case <-timer.C:
					b.Fatalf("caught up %d of %d events within %s", n, catchUpRevisions, benchWait)
				}
			}
			timer.Stop()
			cancel()
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)*catchUpRevisions/b.Elapsed().Seconds(), "events/s")
	})
}

// idleWatchers is how many watchers BenchmarkIdleWatcherMemory registers.
const idleWatchers = 10_000

// BenchmarkIdleWatcherMemory registers 10,000 idle watchers on distinct
// single keys and reports the heap they take (bytes/watcher: HeapAlloc after
// a GC, with them minus without them). It then replaces them with 10,000
// watchers on one prefix, each read by its own goroutine as a server's
// streams would be, and times puts until every watcher has the event: one
// op is one put fanned out to all of them (fanout-p50-ms, fanout-p99-ms).
// Run it with about -benchtime 20x.
func BenchmarkIdleWatcherMemory(b *testing.B) {
	e := newEnv(b)
	h := e.startHub(b, replication.Config{})
	bg := context.Background()

	// Heap per idle watcher. One context for all of them, as one client
	// stream carries many watches; the keys are the caller's and counted.
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	idleCtx, idleCancel := context.WithCancel(bg)
	defer idleCancel()
	idle := make([]*replication.Watcher, 0, idleWatchers)
	before := heap()
	for i := range idleWatchers {
		w, err := h.Watch(idleCtx, replication.WatchRequest{Range: store.Key(fmt.Appendf(nil, "/idle/%05d", i))})
		if err != nil {
			b.Fatal(err)
		}
		idle = append(idle, w)
	}
	after := heap()
	runtime.KeepAlive(idle)
	perWatcher := (float64(after) - float64(before)) / idleWatchers
	for _, w := range idle {
		w.Close()
	}
	idle = nil
	idleCancel()

	// Fan-out of one put to 10,000 watchers of the same prefix.
	fanCtx, fanCancel := context.WithCancel(bg)
	var (
		readers sync.WaitGroup
		got     atomic.Int64
		all     = make(chan struct{}, 1)
	)
	defer func() { fanCancel(); readers.Wait() }()
	for range idleWatchers {
		w, err := h.Watch(fanCtx, replication.WatchRequest{Range: store.Prefix([]byte("/fan/"))})
		if err != nil {
			b.Fatal(err)
		}
		readers.Go(func() {
			for resp := range w.C {
				if len(resp.Events) > 0 && got.Add(1) == idleWatchers {
					all <- struct{}{}
				}
			}
		})
	}
	key := []byte("/fan/k")
	fanOut := func() time.Duration {
		got.Store(0)
		start := time.Now()
		if _, err := e.store.Put(bg, key, benchValue); err != nil {
			b.Fatal(err)
		}
		select {
		case <-all:
		case <-time.After(benchWait):
			b.Fatalf("%d of %d watchers had the event within %s", got.Load(), idleWatchers, benchWait)
		}
		return time.Since(start)
	}
	for range 3 { // warm up: connection, statement, reader goroutines' stacks
		fanOut()
	}
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		samples = append(samples, fanOut())
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(perWatcher, "bytes/watcher")
	b.ReportMetric(ms(percentile(samples, 0.50)), "fanout-p50-ms")
	b.ReportMetric(ms(percentile(samples, 0.99)), "fanout-p99-ms")
}

// BenchmarkWatchedPuts compares put throughput at 32 writers over 10,000
// keys in three settings, one phase of each per op so drift on a shared
// machine falls on all three:
//
//   - unwatched: no replication slot, no hub;
//   - slot: a bare reader of a temporary slot with the hub's pgoutput
//     options, which only counts Insert messages: what the server's WAL
//     sender costs, a floor for any watcher built on logical replication;
//   - slot-unix: the same reader through the server's Unix socket instead
//     of TCP on loopback, which every other connection here uses: the WAL
//     sender sends each message on its own, and on TCP each is a segment
//     that both ends process;
//   - watched: a hub on a temporary slot with one prefix watcher counting
//     every event.
//
// A phase with a reader lasts until the reader has every put, so a reader
// falling behind counts against it. It reports each phase's median puts/s,
// each reader phase's ratio to unwatched, and this process's CPU per put in
// each phase (cpu-us/put): the difference between watched and slot
// is what the hub and its watcher cost per event, a steadier figure than
// throughput on a shared machine. The WAL sender's CPU is the server's and
// counted in neither.
func BenchmarkWatchedPuts(b *testing.B) {
	const (
		writers = 32
		keys    = 10_000
		phase   = 2 * time.Second
	)
	e := newEnv(b)
	bg := context.Background()
	load := store.New(newPool(b, e.url, writers, writers), store.Limits{})

	// puts runs the writers for d and returns how many puts they made.
	puts := func(d time.Duration) int64 {
		var (
			n       atomic.Int64
			wg      sync.WaitGroup
			errOnce sync.Once
			putErr  error
		)
		ctx, cancel := context.WithTimeout(bg, d)
		defer cancel()
		for i := range writers {
			wg.Go(func() {
				for j := i; ctx.Err() == nil; j += writers {
					if _, err := load.Put(bg, fmt.Appendf(nil, "/w/%05d", j%keys), benchValue); err != nil {
						errOnce.Do(func() { putErr = err })
						return
					}
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if putErr != nil {
			b.Fatal(putErr)
		}
		return n.Load()
	}
	// measure runs one phase with a reader started by start, which returns
	// how many puts the reader has seen so far (nil: no reader).
	type result struct{ rate, cpu float64 }
	measure := func(start func(ctx context.Context) func() int64) result {
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		var seen func() int64
		if start != nil {
			seen = start(ctx)
		}
		t, cpu := time.Now(), cpuTime(b)
		n := puts(phase)
		if seen != nil {
			wait.For(b, "the reader has every put", func() bool { return seen() >= n })
		}
		return result{float64(n) / time.Since(t).Seconds(), us(cpuTime(b)-cpu) / float64(n)}
	}
	hub := func(ctx context.Context) func() int64 {
		h := e.startHubUntil(ctx, b, replication.Config{})
		w, err := h.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/w/"))})
		if err != nil {
			b.Fatal(err)
		}
		var seen atomic.Int64
		go func() {
			for resp := range w.C {
				seen.Add(int64(len(resp.Events)))
			}
		}()
		return seen.Load
	}
	slot := func(ctx context.Context) func() int64 {
		return startSlotReader(ctx, b, e.url)
	}
	socket := socketURL(b, e.url)
	slotUnix := func(ctx context.Context) func() int64 {
		return startSlotReader(ctx, b, socket)
	}

	puts(phase / 4) // warm the pool, the statements and the table
	phases := []struct {
		name  string
		start func(context.Context) func() int64
	}{{"unwatched", nil}, {"slot", slot}, {"slot-unix", slotUnix}, {"watched", hub}}
	results := make([][]result, len(phases))
	b.ResetTimer()
	for range b.N {
		for i, p := range phases {
			results[i] = append(results[i], measure(p.start))
		}
	}
	b.StopTimer()
	median := func(rs []result, f func(result) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	rate := func(r result) float64 { return r.rate }
	cpu := func(r result) float64 { return r.cpu }
	base := median(results[0], rate)
	for i, p := range phases {
		b.ReportMetric(median(results[i], rate), p.name+"-puts/s")
		b.ReportMetric(median(results[i], cpu), p.name+"-cpu-us/put")
		if i > 0 {
			b.ReportMetric(median(results[i], rate)/base, p.name+"-ratio")
		}
	}
}

// startSlotReader reads a temporary slot of the walwatch publication with
// the hub's pgoutput options until ctx ends, answering the server's
// keepalives and nothing more; it returns the count of Insert messages read.
func startSlotReader(ctx context.Context, b *testing.B, url string) func() int64 {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	slot := fmt.Sprintf("bench_bare_reader_%d", time.Now().UnixNano()) // the last phase's may not be gone yet
	if _, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication}); err != nil {
		b.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: []string{
		"proto_version '1'", "publication_names '" + sql.Publication + "'", "binary 'true'",
	}}); err != nil {
		b.Fatal(err)
	}
	var inserts atomic.Int64
	done := make(chan struct{})
	b.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		defer conn.Close(context.Background())
		var pos pglogrepl.LSN
		for ctx.Err() == nil {
			msg, err := conn.ReceiveMessage(ctx)
			if err != nil {
				if ctx.Err() == nil {
					b.Errorf("bare slot reader: %v", err)
				}
				return
			}
			cd, ok := msg.(*pgproto3.CopyData)
			if !ok || len(cd.Data) == 0 {
				continue
			}
			switch cd.Data[0] {
			case pglogrepl.XLogDataByteID:
				if xld, err := pglogrepl.ParseXLogData(cd.Data[1:]); err == nil {
					pos = xld.WALStart + pglogrepl.LSN(len(xld.WALData))
					if len(xld.WALData) > 0 && xld.WALData[0] == byte(pglogrepl.MessageTypeInsert) {
						inserts.Add(1)
					}
				}
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				if ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:]); err == nil && ka.ReplyRequested {
					_ = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos})
				}
			}
		}
	}()
	return inserts.Load
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

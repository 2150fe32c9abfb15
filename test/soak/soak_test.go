// Package soak runs cp under steady mixed load and reports, every interval,
// what must stay flat once warm: throughput, the put-to-event round trip,
// cp's memory and goroutines, the revision table's size and dead rows, and
// the WAL the slot holds. `make soak` runs it for 20 minutes with 1,000
// watchers and writes report.md; `go test ./...` runs a short version.
package soak

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	testbinary "github.com/walwatch/walwatch/test/binary"
	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

var reportFlag = flag.String("report", os.Getenv("SOAK_REPORT"), "write the run's series here (default $SOAK_REPORT)")

// binary is the walwatch binary TestMain built.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testbinary.Main("soak", &binary, func() int { return pgtest.Main(m) }))
}

// config is the size of a run.
type config struct {
	duration  time.Duration // the whole run
	interval  time.Duration // between samples
	warmup    time.Duration // samples before this are not held to flatness
	rate      int           // operations a second, all writers together
	writers   int
	watchers  int
	churn     float64       // share of the watchers cancelled and resumed every second
	retention time.Duration // cp's --auto-compaction-retention (periodic)
}

// configFromEnv reads the run's size: SOAK_DURATION set is `make soak`;
// without it, the short run of `go test ./...`.
func configFromEnv() (config, error) {
	c := config{duration: 24 * time.Second, interval: 4 * time.Second, warmup: 8 * time.Second,
		rate: 400, writers: 8, watchers: 200, churn: 0.01, retention: 4 * time.Second}
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return c, fmt.Errorf("SOAK_DURATION=%q: want a positive duration", v)
		}
		c = config{duration: d, interval: time.Minute, warmup: 5 * time.Minute,
			rate: 1000, writers: 8, watchers: 1000, churn: 0.01, retention: time.Minute}
	}
	for name, p := range map[string]*int{"SOAK_WATCHERS": &c.watchers, "SOAK_RATE": &c.rate} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return c, fmt.Errorf("%s=%q: want a positive number", name, v)
			}
			*p = n
		}
	}
	if v := os.Getenv("SOAK_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return c, fmt.Errorf("SOAK_INTERVAL=%q: want a positive duration", v)
		}
		c.interval = d
	}
	return c, nil
}

// keys and prefixes: each watcher watches one of prefixes, which holds
// keys/prefixes keys, so an event goes to about watchers/prefixes of them.
const (
	keys     = 1000
	prefixes = 100
	valueLen = 128
)

func key(i int) string { return fmt.Sprintf("/soak/%02d/k%02d", i%prefixes, i/prefixes) }

func TestSoak(t *testing.T) {
	cfg, err := configFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	e := start(t, ctx, cfg)
	t.Logf("soak: %v, a sample every %v, %d ops/s by %d writers, %d watchers (%.0f%% churned a second), auto-compaction keeping %v",
		cfg.duration, cfg.interval, cfg.rate, cfg.writers, cfg.watchers, 100*cfg.churn, cfg.retention)

	load, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	st := &stats{}
	wg.Go(func() { e.write(load, cfg, st) })
	ws := e.openWatchers(t, load, cfg.watchers, st)
	wg.Go(func() { ws.churn(load, cfg.churn, st) })
	wg.Go(func() { e.probe(load, st) })

	var samples []sample
	tick := time.NewTicker(cfg.interval)
	began := time.Now()
	for time.Since(began) < cfg.duration {
		<-tick.C
		s := e.sample(t, ctx, st, time.Since(began))
		samples = append(samples, s)
		t.Logf("%s", s)
	}
	tick.Stop()
	stopLoad()
	wg.Wait()
	ws.close()

	report := renderReport(cfg, samples)
	t.Logf("\n%s", report)
	if *reportFlag != "" {
		if err := os.WriteFile(*reportFlag, []byte(report), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		}
	}
	if n := st.errors.Load(); n > 0 {
		t.Errorf("%d operations failed; the last: %v", n, st.lastErr.Load())
	}
	if n := st.disorder.Load(); n > 0 {
		t.Errorf("%d watch responses came out of revision order", n)
	}
	for _, problem := range checkFlat(cfg, samples) {
		t.Error(problem)
	}
	if t.Failed() {
		t.Logf("---- cp output (last 5000 bytes) ----\n%s", tail(e.cpOut.String(), 5000))
	}
}

// env is the system under load: a private PostgreSQL and one cp.
type env struct {
	admin    *pgxpool.Pool
	cpHTTP   string
	etcdAddr string
	slot     string
	cpOut    *logs.Buffer
	clients  []*clientv3.Client
	http     *http.Client
	// the counters at the previous sample
	last struct {
		at                                      time.Duration
		puts, gets, deletes, events, resumes, c int64
	}
}

func start(t *testing.T, ctx context.Context, cfg config) *env {
	t.Helper()
	pg := pgtest.StartPrivate(t, pgcluster.Options{})
	dsn, err := pg.CreateDatabase(ctx, "soak")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, binary, "--postgres", dsn, "migrate").CombinedOutput(); err != nil {
		t.Fatalf("walwatch migrate: %v\n%s", err, out)
	}
	e := &env{slot: "soak_cp", cpOut: &logs.Buffer{}, http: &http.Client{Timeout: 10 * time.Second}}
	e.admin, err = pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.admin.Close)
	for attempt := 0; ; attempt++ {
		e.cpHTTP, e.etcdAddr = pgtest.FreeAddr(t), pgtest.FreeAddr(t)
		cmd := exec.Command(binary, "--postgres", dsn, "cp", "--listen", e.cpHTTP, "--etcd-listen", e.etcdAddr, "--slot", e.slot,
			"--auto-compaction-mode", "periodic", "--auto-compaction-retention", cfg.retention.String())
		cmd.Stdout, cmd.Stderr = e.cpOut, e.cpOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
		ready := false
		wait.For(t, "cp to answer /readyz or exit", func() bool {
			select {
			case <-done:
				return true
			default:
			}
			resp, err := e.http.Get("http://" + e.cpHTTP + "/readyz")
			if err != nil {
				return false
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ready = resp.StatusCode == http.StatusOK
			return ready
		})
		if ready {
			break
		}
		if !strings.Contains(e.cpOut.String(), "address already in use") || attempt == 5 {
			t.Fatalf("cp did not start:\n%s", e.cpOut.String())
		}
	}
	// A few connections, as a fleet of proxies would share a few cps.
	for range 4 {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.etcdAddr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		e.clients = append(e.clients, c)
	}
	return e
}

// stats are what the load and the watchers count, read at each sample.
type stats struct {
	puts, gets, deletes, events, resumes, compactedResumes atomic.Int64
	errors, disorder                                       atomic.Int64
	lastErr                                                atomic.Value
	mu                                                     sync.Mutex
	rtt                                                    []time.Duration // put-to-event round trips since the last sample
}

func (s *stats) failed(err error) {
	s.errors.Add(1)
	s.lastErr.Store(err.Error())
}

// write runs the mixed load at cfg.rate: 60% puts, 20% gets, 20% deletes,
// over the keys, each writer on its own schedule.
func (e *env) write(ctx context.Context, cfg config, st *stats) {
	var wg sync.WaitGroup
	every := time.Duration(cfg.writers) * time.Second / time.Duration(cfg.rate)
	value := strings.Repeat("v", valueLen)
	for w := range cfg.writers {
		wg.Go(func() {
			cli := e.clients[w%len(e.clients)]
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				k := key(rnd.IntN(keys))
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				var err error
				switch p := rnd.IntN(10); {
				case p < 6:
					_, err = cli.Put(octx, k, value)
					st.puts.Add(1)
				case p < 8:
					_, err = cli.Get(octx, k)
					st.gets.Add(1)
				default:
					_, err = cli.Delete(octx, k)
					st.deletes.Add(1)
				}
				cancel()
				if err != nil && ctx.Err() == nil {
					st.failed(err)
				}
			}
		})
	}
	wg.Wait()
}

// probe puts /soak-probe every 100 ms and times the event's arrival on a
// watch of its own.
func (e *env) probe(ctx context.Context, st *stats) {
	cli := e.clients[0]
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(clientv3.WithRequireLeader(wctx), "/soak-probe")
	var sent sync.Map // value -> time.Time
	go func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if at, ok := sent.LoadAndDelete(string(ev.Kv.Value)); ok {
					st.mu.Lock()
					st.rtt = append(st.rtt, time.Since(at.(time.Time)))
					st.mu.Unlock()
				}
			}
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		v := strconv.Itoa(i)
		sent.Store(v, time.Now())
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Put(octx, "/soak-probe", v)
		cancel()
		if err != nil && ctx.Err() == nil {
			st.failed(err)
		}
	}
}

// watcher is one watch of a prefix, resumed from its last revision when
// churned.
type watcher struct {
	prefix string
	cli    *clientv3.Client
	last   int64 // the last revision it got
	cancel context.CancelFunc
	done   chan struct{}
}

type watchers struct {
	ctx context.Context
	all []*watcher
	st  *stats
}

func (e *env) openWatchers(t *testing.T, ctx context.Context, n int, st *stats) *watchers {
	t.Helper()
	ws := &watchers{ctx: ctx, st: st}
	for i := range n {
		w := &watcher{prefix: fmt.Sprintf("/soak/%02d/", i%prefixes), cli: e.clients[i%len(e.clients)]}
		ws.open(w, 0)
		ws.all = append(ws.all, w)
	}
	return ws
}

// open starts w's watch from rev (0: now). A start compacted meanwhile
// is counted and the watch opened again from now, as a client re-lists.
func (ws *watchers) open(w *watcher, rev int64) {
	ctx, cancel := context.WithCancel(ws.ctx)
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		for ws.follow(ctx, w, rev) {
			ws.st.compactedResumes.Add(1)
			rev = 0
		}
	}()
}

// follow reads w's watch from rev until it ends; it reports whether it
// ended because rev was compacted.
func (ws *watchers) follow(ctx context.Context, w *watcher, rev int64) (compacted bool) {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	for resp := range w.cli.Watch(clientv3.WithRequireLeader(ctx), w.prefix, opts...) {
		if resp.CompactRevision > 0 {
			return true
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil {
				ws.st.failed(err)
			}
			return false
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision <= w.last {
				ws.st.disorder.Add(1)
			}
			w.last = ev.Kv.ModRevision
		}
		ws.st.events.Add(int64(len(resp.Events)))
	}
	return false
}

// churn cancels a share of the watchers every second and resumes each from
// the revision after its last (from now if that was compacted meanwhile).
func (ws *watchers) churn(ctx context.Context, share float64, st *stats) {
	rnd := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for range max(1, int(share*float64(len(ws.all)))) {
			w := ws.all[rnd.IntN(len(ws.all))]
			w.cancel()
			<-w.done
			from := int64(0)
			if w.last > 0 {
				from = w.last + 1
			}
			ws.open(w, from)
			st.resumes.Add(1)
		}
	}
}

func (ws *watchers) close() {
	for _, w := range ws.all {
		w.cancel()
		<-w.done
	}
}

// sample is one interval's figures.
type sample struct {
	at                       time.Duration
	putsPerS, getsPerS       float64
	deletesPerS, eventsPerS  float64
	rttP50, rttP99           time.Duration
	rssBytes, goroutines     float64
	tableBytes, deadRows     int64
	walRetained              int64
	resumes, compactedResume int64
}

func (s sample) String() string {
	return fmt.Sprintf("%6s  puts/s %6.0f  gets/s %5.0f  deletes/s %5.0f  events/s %7.0f  rtt p50 %6s p99 %7s  cp rss %6.1f MiB  goroutines %5.0f  table %6.1f MiB  dead rows %7d  slot WAL %6.1f MiB",
		s.at.Round(time.Second), s.putsPerS, s.getsPerS, s.deletesPerS, s.eventsPerS,
		s.rttP50.Round(10*time.Microsecond), s.rttP99.Round(10*time.Microsecond),
		s.rssBytes/(1<<20), s.goroutines, float64(s.tableBytes)/(1<<20), s.deadRows, float64(s.walRetained)/(1<<20))
}

func (e *env) sample(t *testing.T, ctx context.Context, st *stats, at time.Duration) sample {
	t.Helper()
	s := sample{at: at}
	last := &e.last
	secs := (at - last.at).Seconds()
	puts, gets, deletes, events := st.puts.Load(), st.gets.Load(), st.deletes.Load(), st.events.Load()
	s.putsPerS, s.getsPerS = float64(puts-last.puts)/secs, float64(gets-last.gets)/secs
	s.deletesPerS, s.eventsPerS = float64(deletes-last.deletes)/secs, float64(events-last.events)/secs
	s.resumes, s.compactedResume = st.resumes.Load()-last.resumes, st.compactedResumes.Load()-last.c
	last.at, last.puts, last.gets, last.deletes, last.events = at, puts, gets, deletes, events
	last.resumes, last.c = st.resumes.Load(), st.compactedResumes.Load()

	st.mu.Lock()
	rtt := st.rtt
	st.rtt = nil
	st.mu.Unlock()
	s.rttP50, s.rttP99 = percentile(rtt, 0.5), percentile(rtt, 0.99)

	page := e.metricsPage(t)
	s.rssBytes = metric(page, "process_resident_memory_bytes")
	s.goroutines = metric(page, "go_goroutines")
	err := e.admin.QueryRow(ctx, `select pg_total_relation_size('walwatch.kv'),
		       coalesce((select n_dead_tup from pg_stat_user_tables where relid = 'walwatch.kv'::regclass), 0),
		       coalesce((select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint from pg_replication_slots where slot_name = $1), 0)`,
		e.slot).Scan(&s.tableBytes, &s.deadRows, &s.walRetained)
	if err != nil {
		t.Errorf("sample PostgreSQL: %v", err)
	}
	return s
}

func (e *env) metricsPage(t *testing.T) string {
	t.Helper()
	resp, err := e.http.Get("http://" + e.cpHTTP + "/metrics")
	if err != nil {
		t.Errorf("cp /metrics: %v", err)
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("cp /metrics: %v", err)
	}
	return string(b)
}

// metric reads an unlabelled sample from a Prometheus text page (0 if
// absent).
func metric(page, name string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// percentile returns the q-quantile (nearest rank) of xs, 0 for none.
func percentile(xs []time.Duration, q float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := min(len(s)-1, max(0, int(float64(len(s))*q+0.999999)-1))
	return s[i]
}

// checkFlat holds every series that must not grow to flatness after the
// warm-up: the later half of the samples after it may not rise above the
// earlier half's highest by more than half again, plus a floor for small
// values.
func checkFlat(cfg config, samples []sample) []string {
	var warm []sample
	for _, s := range samples {
		if s.at > cfg.warmup {
			warm = append(warm, s)
		}
	}
	if len(warm) < 2 {
		return []string{fmt.Sprintf("only %d samples after the %v warm-up: run longer", len(warm), cfg.warmup)}
	}
	early, late := warm[:len(warm)/2], warm[len(warm)/2:]
	var problems []string
	for _, series := range []struct {
		name  string
		get   func(sample) float64
		floor float64
	}{
		{"cp RSS (bytes)", func(s sample) float64 { return s.rssBytes }, 16 << 20},
		{"cp goroutines", func(s sample) float64 { return s.goroutines }, 50},
		{"revision table size (bytes)", func(s sample) float64 { return float64(s.tableBytes) }, 8 << 20},
		{"dead rows", func(s sample) float64 { return float64(s.deadRows) }, 20000},
		{"WAL the slot holds (bytes)", func(s sample) float64 { return float64(s.walRetained) }, 64 << 20},
		{"round trip p50 (ns)", func(s sample) float64 { return float64(s.rttP50) }, float64(5 * time.Millisecond)},
	} {
		var hi, top float64
		for _, s := range early {
			hi = max(hi, series.get(s))
		}
		for _, s := range late {
			top = max(top, series.get(s))
		}
		if top > 1.5*hi+series.floor {
			problems = append(problems, fmt.Sprintf("%s grew after warm-up: at most %.0f in the first half, %.0f in the second", series.name, hi, top))
		}
	}
	return problems
}

func renderReport(cfg config, samples []sample) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Soak\n\n%v of mixed load against one cp (etcd API): %d operations a second by %d writers (60%% puts of %d-byte values, 20%% gets, 20%% deletes over %d keys), %d watchers of one prefix each (%.0f%% cancelled and resumed every second), a put every 100 ms timed to its event; auto-compaction periodic, keeping %v. A sample every %v; the first %v are warm-up.\n\n",
		cfg.duration, cfg.rate, cfg.writers, valueLen, keys, cfg.watchers, 100*cfg.churn, cfg.retention, cfg.interval, cfg.warmup)
	b.WriteString("| at | puts/s | gets/s | deletes/s | events/s | round trip p50 | p99 | cp RSS MiB | goroutines | table MiB | dead rows | slot WAL MiB | resumes | of them compacted |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, s := range samples {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %s | %s | %.1f | %.0f | %.1f | %d | %.1f | %d | %d |\n",
			s.at.Round(time.Second), s.putsPerS, s.getsPerS, s.deletesPerS, s.eventsPerS,
			s.rttP50.Round(10*time.Microsecond), s.rttP99.Round(10*time.Microsecond),
			s.rssBytes/(1<<20), s.goroutines, float64(s.tableBytes)/(1<<20), s.deadRows, float64(s.walRetained)/(1<<20),
			s.resumes, s.compactedResume)
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

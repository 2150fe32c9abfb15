// Command bench compares walwatch with the seed's LISTEN/NOTIFY design and
// with etcd, side by side on this machine, and writes results.json, a
// README.md with the tables and a chart.
//
//	go run . [-quick] [-out DIR] [-systems NAME,NAME]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.etcd.io/etcd/api/v3/version"
)

// config is how much of each workload a run does.
type config struct {
	quick       bool
	rounds      int
	putDur      time.Duration // per put-throughput measurement
	getDur      time.Duration
	rttSamples  int
	rttMaxTime  time.Duration // a round-trip series stops at rttSamples or after this
	walPuts     int
	cpuPuts     int
	fanoutPuts  int
	catchupRows int
}

func fullConfig() config {
	return config{rounds: 3, putDur: 3 * time.Second, getDur: 3 * time.Second, rttSamples: 2000,
		rttMaxTime: 6 * time.Second, walPuts: 5000, cpuPuts: 10000, fanoutPuts: 20, catchupRows: 100000}
}

func quickConfig() config {
	return config{quick: true, rounds: 3, putDur: 400 * time.Millisecond, getDur: 400 * time.Millisecond, rttSamples: 300,
		rttMaxTime: time.Second, walPuts: 1000, cpuPuts: 3000, fanoutPuts: 8, catchupRows: 20000}
}

// bench is one run: the environment, the systems, and what was measured.
type bench struct {
	cfg        config
	env        *env
	selected   map[string]bool // the systems this run measures, by name
	walwatch   *walwatchSystem // nil unless selected, as are etcd and kine
	etcd       *etcdSystem
	etcdAPI    *etcdAPISystem
	systems    []system // in turn order
	walSystems map[string]bool
	keys       [][]byte
	txnKeys    [][]byte // written by the Txn workload alone
	listKeys   [][]byte // read by the list workload alone
	// writtenListKeys are the lists' while written, and their writer's.
	writtenListKeys [][]byte
	value           []byte
	listValue       []byte
	samples         samples
	quiesced        time.Duration // waited for autovacuum before measuring, in all
	out             io.Writer     // the summary, as it goes
	log             *slog.Logger
}

func main() {
	quick := flag.Bool("quick", false, "a short run: the same figures from shorter measurements")
	out := flag.String("out", "../../docs/benchmarks", "directory for results.json, README.md and the chart")
	etcdDir := flag.String("etcd-serve", "", "(the benchmark's etcd, a child process) serve etcd with its data in this directory until SIGTERM")
	etcdClientURL := flag.String("etcd-client-url", "", "with -etcd-serve: the client URL")
	etcdPeerURL := flag.String("etcd-peer-url", "", "with -etcd-serve: the peer URL")
	holdWatchesURL := flag.String("hold-watches", "", "(the watcher memory figure's child process) hold idle etcd watches on this server until standard input closes")
	apiFloor := flag.Bool("etcd-api-floor", false, "measure target 7's figures on the thinnest servers of etcd's API over walwatch's store, beside cp's and etcd, instead of the benchmark")
	thinAddr := flag.String("thin-serve", "", "(-etcd-api-floor's thin server, a child process) serve etcd's KV over walwatch's store on this address until SIGTERM")
	thinRead := flag.String("thin-read", "store", "with -thin-serve: answer gets from the store (store), with one select 1 each (select1), with one select 1 for all waiting (shared), or from the keys in memory after one current-revision read for all waiting (mirror)")
	thinPostgres := flag.String("thin-postgres", "", "with -thin-serve: the walwatch database's URL")
	only := flag.String("systems", "", "comma-separated systems to measure, of "+strings.Join(systemOrder, ", ")+
		" (default: all; a quick run leaves kine out unless it is named here)")
	flag.Parse()

	if *etcdDir != "" {
		if err := serveEtcd(*etcdDir, *etcdClientURL, *etcdPeerURL); err != nil {
			fmt.Fprintln(os.Stderr, "bench -etcd-serve:", err)
			os.Exit(1)
		}
		return
	}
	if *thinAddr != "" {
		if err := serveThin(*thinAddr, *thinPostgres, *thinRead); err != nil {
			fmt.Fprintln(os.Stderr, "bench -thin-serve:", err)
			os.Exit(1)
		}
		return
	}
	if *holdWatchesURL != "" {
		if err := holdWatches(*holdWatchesURL); err != nil {
			fmt.Fprintln(os.Stderr, "bench -hold-watches:", err)
			os.Exit(1)
		}
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if *apiFloor {
		err = etcdAPIFloor(ctx, *quick, *out, log)
	} else {
		err = run(ctx, *quick, *only, *out, log)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, quick bool, only, outDir string, log *slog.Logger) error {
	started := time.Now()
	cfg := fullConfig()
	if quick {
		cfg = quickConfig()
	}
	selected, err := selectSystems(only, quick)
	if err != nil {
		return err
	}
	outDir, err = filepath.Abs(outDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output dir: %w", err)
	}
	// Before anything is built: the code measured is the code at this commit.
	repoDir, commit, err := repoCommit(ctx)
	if err != nil {
		return err
	}

	e, err := startEnv(ctx, repoDir, selected["kine"], log)
	if err != nil {
		return err
	}
	defer e.Close()

	b := &bench{cfg: cfg, env: e, selected: selected, value: make([]byte, valueSize), samples: samples{}, out: os.Stdout, log: log,
		walSystems: map[string]bool{"walwatch": true, "notify": true, "floor": true, "kine": true}}
	for i := range b.value {
		b.value[i] = 'a' + byte(i%26)
	}
	for i := range numKeys {
		b.keys = append(b.keys, fmt.Appendf(nil, "%sk%05d", prefix, i))
		b.txnKeys = append(b.txnKeys, fmt.Appendf(nil, "%s%05d", txnPrefix, i))
	}
	b.listValue = bytes.Repeat([]byte{'o'}, listValueSize)
	for i := range listKeys {
		b.listKeys = append(b.listKeys, fmt.Appendf(nil, "%s%05d", listPrefix, i))
		b.writtenListKeys = append(b.writtenListKeys, fmt.Appendf(nil, "%s%05d", writtenListPrefix, i))
	}
	closeSystems, err := b.openSystems(ctx)
	if err != nil {
		return err
	}
	defer closeSystems()

	for round := 1; round <= cfg.rounds; round++ {
		for _, sys := range b.systems {
			if err := b.quiesce(ctx); err != nil {
				return err
			}
			if err := b.turn(ctx, sys, round); err != nil {
				return fmt.Errorf("round %d: %w", round, err)
			}
		}
		if err := b.quiesce(ctx); err != nil {
			return err
		}
		if err := b.pairedRoundTrips(ctx, round); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
	}
	// Fan-out and catch-up drive walwatch's hub and etcd directly: each
	// runs only if its system does.
	if b.walwatch != nil {
		log.Info("fan-out", "system", "walwatch")
		if err := b.quiesce(ctx); err != nil {
			return err
		}
		if err := b.fanoutWalwatch(ctx); err != nil {
			return err
		}
	}
	if b.etcd != nil {
		log.Info("fan-out", "system", "etcd")
		if err := b.quiesce(ctx); err != nil {
			return err
		}
		if err := b.fanoutEtcd(ctx); err != nil {
			return err
		}
	}
	if err := b.watcherMemory(ctx); err != nil {
		return err
	}
	if b.walwatch != nil {
		log.Info("catch-up")
		if err := b.quiesce(ctx); err != nil {
			return err
		}
		if err := b.catchup(ctx); err != nil {
			return err
		}
	}

	res, err := b.results(ctx, commit)
	if err != nil {
		return err
	}
	res.Notes = append(res.Notes, fmt.Sprintf("This run took %v.", time.Since(started).Round(time.Second)))
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results.json: %w", err)
	}
	if err := writeReport(outDir, res); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	printSummary(b.out, res)
	log.Info("done", "out", outDir, "took", time.Since(started).Round(time.Second))
	return nil
}

// selectSystems is the set of systems a run measures: those named in list
// (comma-separated) or, if it is empty, all of them, but for kine in a
// quick run: its build and preload take longer than a quick run's
// measurements, so a quick run measures it only when it is named.
func selectSystems(list string, quick bool) (map[string]bool, error) {
	sel := map[string]bool{}
	if strings.TrimSpace(list) == "" {
		for _, s := range systemOrder {
			sel[s] = !quick || s != "kine"
		}
		return sel, nil
	}
	known := map[string]bool{}
	for _, s := range systemOrder {
		known[s] = true
	}
	for s := range strings.SplitSeq(list, ",") {
		s = strings.TrimSpace(s)
		if !known[s] {
			return nil, fmt.Errorf("-systems: unknown system %q; the systems are %s", s, strings.Join(systemOrder, ", "))
		}
		sel[s] = true
	}
	return sel, nil
}

// openSystems connects the selected systems, loads the benchmark's keys
// into each store, and returns how to close them.
func (b *bench) openSystems(ctx context.Context) (func(), error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fail := func(err error) (func(), error) {
		closeAll()
		return nil, err
	}
	sel := b.selected
	var preloads []func() error
	// walwatch_http and walwatch_etcd serve the walwatch database, whose
	// keys walwatch's pool loads.
	if sel["walwatch"] || sel["walwatch_http"] || sel["walwatch_etcd"] {
		ww, err := newWalwatchSystem(ctx, b.env)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, ww.close)
		preloads = append(preloads, func() error {
			const put = `select count(walwatch.put(k, $2)) from unnest($1::bytea[]) k`
			err := preloadSQL(ctx, ww.clients, put, b.keys, b.value)
			for range listVersions {
				err = errors.Join(err, preloadSQL(ctx, ww.clients, put, b.listKeys, b.listValue),
					preloadSQL(ctx, ww.clients, put, b.writtenListKeys, b.listValue))
			}
			return err
		})
		if sel["walwatch"] {
			b.walwatch = ww
			b.systems = append(b.systems, ww)
		}
	}
	for _, s := range []system{newHTTPSystem(b.env), newEtcdAPISystem(b.env)} {
		if !sel[s.name()] {
			continue
		}
		if ea, ok := s.(*etcdAPISystem); ok {
			b.etcdAPI = ea
		}
		closers = append(closers, func() {
			if err := s.end(context.Background()); err != nil {
				b.log.Warn("stop cp", "system", s.name(), "err", err)
			}
		})
		b.systems = append(b.systems, s)
	}
	if sel["etcd"] {
		et, err := newEtcdSystem(b.env)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, et.close)
		preloads = append(preloads, func() error { return b.preloadEtcd(ctx, et.preload) })
		b.etcd = et
		b.systems = append(b.systems, et)
	}
	if sel["kine"] {
		kn, err := newKineSystem(ctx, b.env)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, kn.close)
		preloads = append(preloads, func() error { return b.preloadEtcd(ctx, kn.preload) })
		b.systems = append(b.systems, kn)
	}
	if sel["notify"] {
		nt, err := newNotifySystem(ctx, b.env)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, nt.close)
		preloads = append(preloads, func() error {
			return preloadSQL(ctx, nt.clients, `select count(notify.set(convert_from(k, 'UTF8'), $2)) from unnest($1::bytea[]) k`, b.keys, b.value)
		})
		b.systems = append(b.systems, nt)
	}
	if sel["floor"] {
		fl, err := newFloorSystem(ctx, b.env)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, fl.close)
		preloads = append(preloads, func() error {
			return preloadSQL(ctx, fl.clients, `insert into floor.kv (key, value) select k, $2 from unnest($1::bytea[]) k`, b.keys, b.value)
		})
		b.systems = append(b.systems, fl)
	}

	b.log.Info("loading keys", "keys", len(b.keys))
	var errs []error
	for _, preload := range preloads {
		errs = append(errs, preload())
	}
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	return closeAll, nil
}

// preloadEtcd loads a server of etcd's API with preload: the keys, and the
// list workloads' keys in listVersions versions each.
func (b *bench) preloadEtcd(ctx context.Context, preload func(ctx context.Context, keys [][]byte, value []byte) error) error {
	err := preload(ctx, b.keys, b.value)
	for range listVersions {
		err = errors.Join(err, preload(ctx, b.listKeys, b.listValue), preload(ctx, b.writtenListKeys, b.listValue))
	}
	return err
}

// preloadSQL writes keys with query ($1 the keys, $2 the value), in chunks
// that keep each transaction's locks well inside the server's lock table.
func preloadSQL(ctx context.Context, pool *pgxpool.Pool, query string, keys [][]byte, value []byte) error {
	const chunk = 2500
	for i := 0; i < len(keys); i += chunk {
		if _, err := pool.Exec(ctx, query, keys[i:min(i+chunk, len(keys))], value); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
	}
	return nil
}

// repoCommit is the walwatch repository and its commit as git describes
// it, -dirty when the tree has changes.
func repoCommit(ctx context.Context) (dir, commit string, err error) {
	dir, err = repoRoot(ctx)
	if err != nil {
		return "", "", err
	}
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "", "", fmt.Errorf("git describe: %w", err)
	}
	return dir, strings.TrimSpace(string(out)), nil
}

// repoRoot is the walwatch repository: the directory of the module this
// benchmark replaces with ../.. .
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/walwatch/walwatch").Output()
	if err != nil {
		return "", fmt.Errorf("find the walwatch module: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// results turns the samples into Results: medians over the rounds.
func (b *bench) results(ctx context.Context, commit string) (*Results, error) {
	pgVersion, err := b.env.postgresVersion(ctx)
	if err != nil {
		return nil, err
	}
	r := &Results{
		Meta: Meta{
			Date: time.Now().UTC().Format(time.RFC3339), Commit: commit,
			Machine: machine(), Autogroup: autogroup(), GoVersion: runtime.Version(), Postgres: pgVersion, Etcd: version.Version,
			Quick: b.cfg.quick, Rounds: b.cfg.rounds,
		},
		Systems:              map[string]*SystemResults{},
		Fanout:               map[string]map[string]*Fanout{},
		WALBytesPerPut:       map[string]float64{},
		CPUSPer10kPuts:       map[string]float64{},
		MemoryPerWatcher:     map[string]float64{},
		DiskWriteBytesPerPut: map[string]float64{},
		DiskWrites:           map[string]*DiskWrites{},
	}
	pick := func(system, metric string, keys []string) map[string]float64 {
		m := map[string]float64{}
		for _, k := range keys {
			if v, ok := b.samples.median(system, metric, k); ok {
				m[k] = v
			}
		}
		return m
	}
	clientKeys := func(ns []int) []string {
		var ks []string
		for _, n := range ns {
			ks = append(ks, strconv.Itoa(n))
		}
		return ks
	}
	pct := []string{"p50", "p99", "p999"}
	var names, lagNotes, cpuNotes []string
	for _, sys := range b.systems {
		name := sys.name()
		names = append(names, name)
		r.Systems[name] = &SystemResults{
			PutPerS:                  pick(name, "put_per_s", clientKeys(putConcurrency)),
			PutPerSUnwatched:         pick(name, "put_per_s_unwatched", clientKeys(putConcurrency)),
			GetPerS:                  pick(name, "get_per_s", clientKeys(getConcurrency)),
			GetCPUUs:                 pick(name, "get_1_cpu_us", getCPUParts),
			WatchRTTUs:               pick(name, "watch_rtt_us", pct),
			WatchRTTPairedUs:         pick(name, "watch_rtt_paired_us", pct),
			WatchRTTLoadedUs:         pick(name, "watch_rtt_loaded_us", pct),
			WatchRTTPutUs:            pick(name, "watch_rtt_put_us", pct),
			WatchRTTDeliveryUs:       pick(name, "watch_rtt_delivery_us", pct),
			WatchRTTLoadedPutUs:      pick(name, "watch_rtt_loaded_put_us", pct),
			WatchRTTLoadedDeliveryUs: pick(name, "watch_rtt_loaded_delivery_us", pct),
		}
		if _, ok := sys.(frontDoor); ok {
			r.Systems[name].NoopPerS = pick(name, "noop_per_s", clientKeys(getConcurrency))
		}
		if _, ok := sys.(kubernetesStore); ok {
			r.Systems[name].TxnPerS = pick(name, "txn_per_s", clientKeys(txnConcurrency))
			r.Systems[name].TxnRTTLoadedUs = pick(name, "txn_rtt_loaded_us", []string{"p50", "p99", "p999"})
			r.Systems[name].ListPageMs = pick(name, "list_page_ms", []string{"p50", "p99"})
			r.Systems[name].ListPageWrittenMs = pick(name, "list_page_written_ms", []string{"p50", "p99", "updates_per_s"})
		}
		if v, ok := b.samples.median(name, "wal_bytes_per_put", ""); ok {
			r.WALBytesPerPut[name] = v
		}
		if v, ok := b.samples.median(name, "cpu_s_per_10k_puts", ""); ok {
			r.CPUSPer10kPuts[name] = v
		}
		if v, ok := b.samples.median(name, "disk_write_bytes_per_put", ""); ok {
			r.DiskWriteBytesPerPut[name] = v
			d := &DiskWrites{ProcByProcess: pick(name, "proc_write_bytes_per_put", append(slices.Clone(pgRoles), "benchmark", "server")),
				WALByRecord: pick(name, "disk_wal_record_bytes_per_put", b.samples.keys(name, "disk_wal_record_bytes_per_put"))}
			d.ProcWriteBytes, _ = b.samples.median(name, "proc_write_bytes_per_put", "")
			d.WALBytes, _ = b.samples.median(name, "disk_wal_bytes_per_put", "")
			d.DataPageBytes, _ = b.samples.median(name, "disk_data_page_bytes_per_put", "")
			d.WALSyncs, _ = b.samples.median(name, "disk_wal_syncs_per_put", "")
			d.FPIBytes, _ = b.samples.median(name, "disk_fpi_bytes_per_put", "")
			d.Commits, _ = b.samples.median(name, "disk_commits_per_put", "")
			if len(d.WALByRecord) == 0 {
				d.WALByRecord = nil
			}
			r.DiskWrites[name] = d
		}
		lag := pick(name, "watcher_lag_ms", clientKeys(putConcurrency))
		var parts []string
		for _, k := range clientKeys(putConcurrency) {
			parts = append(parts, fmt.Sprintf("%s: %.1f ms", k, lag[k]))
		}
		lagNotes = append(lagNotes, fmt.Sprintf("%s (%s)", name, strings.Join(parts, ", ")))
		cpu := pick(name, "cpu_s_per_10k_puts", []string{"postgres", "self", "extra"})
		cpuNotes = append(cpuNotes, fmt.Sprintf("%s %.2f s PostgreSQL + %.2f s benchmark process + %.2f s its server's own process (etcd, cp, kine)",
			name, cpu["postgres"], cpu["self"], cpu["extra"]))
	}
	for _, name := range []string{"walwatch", "etcd"} {
		r.Fanout[name] = map[string]*Fanout{}
		for _, n := range clientKeys(fanoutSizes) {
			p50, ok1 := b.samples.median(name, "fanout_p50_ms", n)
			p99, ok2 := b.samples.median(name, "fanout_p99_ms", n)
			if ok1 && ok2 {
				r.Fanout[name][n] = &Fanout{P50Ms: p50, P99Ms: p99}
			}
		}
	}
	for _, name := range []string{"walwatch", "walwatch_etcd", "etcd"} {
		if v, ok := b.samples.median(name, "memory_per_watcher_bytes", "10000"); ok {
			r.MemoryPerWatcher[name] = v
		}
	}
	r.CatchupEventsPerS, _ = b.samples.median("walwatch", "catchup_events_per_s", "")
	r.Notes = b.notes(names, lagNotes, cpuNotes)
	return r, nil
}

// quiesce waits for autovacuum to finish before a measurement.
func (b *bench) quiesce(ctx context.Context) error {
	waited, err := b.env.quiesce(ctx)
	if err != nil {
		return err
	}
	if waited > 200*time.Millisecond {
		b.log.Info("waited for autovacuum", "for", waited.Round(time.Millisecond))
	}
	b.quiesced += waited
	return nil
}

// notes say how the figures were taken, for the report; names are the
// systems in turn order.
func (b *bench) notes(names, lagNotes, cpuNotes []string) []string {
	c := b.cfg
	dbs := "its walwatch and notify databases"
	if b.selected["kine"] {
		dbs += ", and kine's"
	}
	notes := []string{
		fmt.Sprintf("Everything ran on this one machine (%d cores), servers and benchmark clients alike: one private PostgreSQL (%s) and etcd 3.7's server as a process of its own (this program re-executed with -etcd-serve, running etcd's embed package as etcd's main does), fsync on. "+
			"Systems take turns, all workloads of one system per turn, rounds interleaved (%s, %s, ...); "+
			"every figure is the median of %d rounds. Before each turn, each fan-out and the catch-up the benchmark waits until no autovacuum worker runs, "+
			"so that no measurement pays for vacuuming what earlier ones wrote (%v in all in this run).",
			runtime.NumCPU(), dbs, strings.Join(names, ", "), names[0], c.rounds, b.quiesced.Round(100*time.Millisecond)),
		fmt.Sprintf("Puts: %d keys under %s, %d-byte values, random keys, each client on its own connection; %v per measurement. "+
			"With a watcher, the watcher must have every event before the next measurement; how long it lagged behind the writers after each phase "+
			"(median, by client count; polled every millisecond): %s.", numKeys, prefix, valueSize, c.putDur, strings.Join(lagNotes, "; ")),
		"walwatch is its Go store and hub, as a program embedding them would use them; the store sends puts that arrive while others are in flight " +
			"together, one transaction at a time, each put at a revision of its own (etcd batches its writes too; notify writes each insert alone, as the seed does). " +
			"walwatch without a watcher runs no hub and holds no slot. walwatch with a watcher runs one hub on a temporary slot in this process and one watcher on it. " +
			"walwatch_http is the walwatch binary's control plane (cp) as a subprocess on its own slot, which it holds for its whole turn, so its " +
			"'unwatched' puts still feed a hub; writes are PUT /v1/kv/..., reads GET /v1/kv/... of one key, " +
			"which the cp answers from its copy of the keyspace (--keyspace-copy: every key's latest value in its memory, kept by a watch) once the copy " +
			"holds the current revision, read once for all the reads waiting, " +
			"the watcher one Server-Sent Events stream; the cp uses its own pool of 32 connections, whatever the client count, and its etcd API is off. " +
			"walwatch_etcd is the same cp (its own slot, held for its turn) with its etcd v3 gRPC API on (--etcd-listen), driven by the same code as etcd: " +
			"the etcd Go client, one client (one gRPC connection) per benchmark client and one for the watcher; puts are KV.Put, gets linearizable KV.Range " +
			"of one key, the watcher one etcd Watch on the prefix; its gRPC server shares the cp's pool of 32 connections, and its copy of the keyspace answers " +
			"the gets and the pages of the Kubernetes lists below (those after the first at the first page's revision, from the versions it holds).",
		"notify: the seed's design written afresh: a revision table with an AFTER INSERT trigger calling pg_notify only when a listener holds the shared " +
			"advisory lock (a writer that can take it exclusively knows nobody listens), one LISTEN connection as the watcher.",
		"floor: the physical limit of a logical-replication watch here: walwatch's row (its columns and indexes) written by a plain INSERT whose revision " +
			"is a sequence default (no function, no lock, no settling), in the notify database, and read by a bare pglogrepl consumer in this process " +
			"(a temporary slot, pgoutput, keys matched by prefix; no hub, no ordering, no visibility check). walwatch's distance to it is the overhead walwatch owns.",
		fmt.Sprintf("Round trip: one client puts a probe key and waits until the watcher has its event, so it includes the put's own latency; "+
			"%d samples a round or as many as fit in %v, idle and while %d other clients put as fast as they can (the table of stages splits it into the put and its delivery).",
			c.rttSamples, c.rttMaxTime, loadedRTT),
		fmt.Sprintf("WAL per put: pg_current_wal_lsn() before and after %d single-client puts, watcher attached, until the watcher had them all "+
			"(cluster-wide, so what the watching side writes counts).", c.walPuts),
		fmt.Sprintf("CPU per 10,000 puts: %d puts by %d clients, watcher attached, until the watcher had them all; user+system time of every PostgreSQL process "+
			"(postmaster and all its children, from /proc) plus this benchmark process (which holds the benchmark clients and the walwatch hub), "+
			"plus the server's own process: etcd's, the cp for walwatch_http and walwatch_etcd, kine's. Counted alike for every system, so every figure includes its clients' CPU and the idle other servers' housekeeping. "+
			"Split (medians): %s.",
			c.cpuPuts, cpuClients, strings.Join(cpuNotes, "; ")),
		fmt.Sprintf("Disk writes per put: a checkpoint, then %d puts by %d clients of %d-byte values over the %d keys, watcher attached, until the watcher had them all, "+
			"then a checkpoint, so that the data pages the puts dirtied are written back and counted; the sectors the block device holding the system's data "+
			"wrote meanwhile (/sys/dev/block, after a sync), divided by the puts. Everything else on that device counts too: only one system runs at a time. "+
			"PostgreSQL's WAL is read back with pg_walinspect; its data pages and WAL flushes are from pg_stat_bgwriter and pg_stat_wal. "+
			"/proc/<pid>/io's write_bytes is reported beside it but is not the figure: it counts each page-cache folio a process dirties whole, "+
			"and this kernel caches files in folios of up to 2 MiB, so rewriting 8 KiB of a cached file and fdatasyncing it, as each PostgreSQL commit does to its WAL page, counts up to 2 MiB.",
			diskPuts, cpuClients, valueSize, numKeys),
		fmt.Sprintf("Fan-out: N watchers on %s, then %d puts of one key, each timed until every watcher has its event. walwatch: one hub (one slot), "+
			"N hub watchers each read by a goroutine. etcd: N watches spread over %d clients (one gRPC watch stream each). Memory per watcher: "+
			"Go heap plus goroutine stacks after GC, before and after creating 10,000 hub watchers (not yet read), divided by 10,000.",
			fanPrefix, c.fanoutPuts, etcdFanClients),
		fmt.Sprintf("etcd-API watcher memory: another process (this program with -hold-watches) opens %d idle watches, each on its own prefix, all on one gRPC watch stream "+
			"(the etcd Go client, one context), to etcd and to walwatch_etcd's cp; the server's Go heap plus goroutine stacks from its /metrics, "+
			"after a heap profile asked with gc=1 (both serve pprof), before and after, divided by the watches. The client's memory is not counted.", watchMemWatchers),
		fmt.Sprintf("Catch-up: %d revisions written in transactions of 5,000 puts and settled by a hub, then a new watcher on that hub from the first "+
			"of them (served from the table, as they are past the in-memory window), timed until it had them all.", c.catchupRows),
	}
	if b.selected["kine"] {
		notes = append(notes, kineNote())
	}
	if len(names) < len(systemOrder) {
		notes = append(notes, fmt.Sprintf("This run measured only %s (-systems, or kine left out of a quick run).", strings.Join(names, ", ")))
	}
	return notes
}

// printSummary prints the figures as a table, one column per system.
func printSummary(w io.Writer, r *Results) {
	names := systemOrder
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	defer tw.Flush()
	fmt.Fprintf(tw, "\t%s\t\n", strings.Join(names, "\t"))
	row := func(label string, f func(s *SystemResults) (float64, bool)) {
		cells := []string{label}
		for _, n := range names {
			s, ok := r.Systems[n]
			v, ok2 := 0.0, false
			if ok {
				v, ok2 = f(s)
			}
			if ok2 {
				cells = append(cells, strconv.FormatFloat(v, 'f', 0, 64))
			} else {
				cells = append(cells, "-")
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	get := func(m func(s *SystemResults) map[string]float64, k string) func(s *SystemResults) (float64, bool) {
		return func(s *SystemResults) (float64, bool) { v, ok := m(s)[k]; return v, ok }
	}
	for _, k := range []string{"1", "8", "32", "64"} {
		row("put/s watched @"+k, get(func(s *SystemResults) map[string]float64 { return s.PutPerS }, k))
	}
	for _, k := range []string{"1", "8", "32", "64"} {
		row("put/s unwatched @"+k, get(func(s *SystemResults) map[string]float64 { return s.PutPerSUnwatched }, k))
	}
	for _, k := range []string{"1", "32"} {
		row("get/s @"+k, get(func(s *SystemResults) map[string]float64 { return s.GetPerS }, k))
	}
	for _, k := range []string{"1", "32"} {
		row("noop/s @"+k, get(func(s *SystemResults) map[string]float64 { return s.NoopPerS }, k))
	}
	for _, k := range []string{"p50", "p99", "p999"} {
		row("rtt idle µs "+k, get(func(s *SystemResults) map[string]float64 { return s.WatchRTTUs }, k))
	}
	for _, k := range []string{"p50", "p99", "p999"} {
		row("rtt loaded µs "+k, get(func(s *SystemResults) map[string]float64 { return s.WatchRTTLoadedUs }, k))
	}
	tw.Flush()
	fmt.Fprintf(w, "WAL bytes/put: %v\nCPU s/10k puts: %v\ndisk write bytes/put: %v\ncatch-up events/s: %.0f\nmemory/watcher bytes: %v\n",
		r.WALBytesPerPut, r.CPUSPer10kPuts, r.DiskWriteBytesPerPut, r.CatchupEventsPerS, r.MemoryPerWatcher)
	for _, name := range []string{"walwatch", "etcd"} {
		for _, n := range []string{"1000", "10000"} {
			if f, ok := r.Fanout[name][n]; ok {
				fmt.Fprintf(w, "fan-out %s %s: p50 %.2f ms, p99 %.2f ms\n", name, n, f.P50Ms, f.P99Ms)
			}
		}
	}
}

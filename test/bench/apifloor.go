package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/walwatch/walwatch/store"
)

// The etcd API's floor (-etcd-api-floor) asks how close any server of
// etcd's API beside PostgreSQL can come to etcd, which answers from its own
// memory: target 7's figures measured on the thinnest such servers there
// can be, beside cp and etcd, alternated on one database. A thin server
// (this program re-executed with -thin-serve) speaks etcd's gRPC with
// grpc-go's defaults and cp's flow-control windows, and answers a get or a
// put with one call of walwatch's store and nothing else: no hub, no
// watch, no checks, no metrics. The select 1 servers answer a get with
// PostgreSQL's cheapest statement instead (thinReads): the least that a
// linearizable read, which must ask the database for what other servers
// wrote, can cost; the mirror answers from memory after reading the
// current revision. "in process" is the store called in this program: what
// walwatch costs without a server in front of it.
type apiFloorSystem struct {
	name string
	cli  *etcdClients // nil for the store in process
	// puts says whether its puts are measured (the other thin servers'
	// are the store's thin server's own).
	puts bool
	// idle, for the store in process, is how long the machine is left idle
	// before each call at one client, as a server finds it when a request
	// arrives: only those calls' p50s are measured.
	idle time.Duration
}

// idleBeforeCall is the idle time before each call of "in process, after
// idle": longer than a get or put through any of the systems takes.
const idleBeforeCall = 500 * time.Microsecond

// apiFloorMetrics are measured for each system in each round, in this order.
var apiFloorMetrics = []string{"get_1_per_s", "get_1_p50_us", "put_1_p50_us", "put_1_p99_us", "get_32_per_s", "put_32_per_s", "noop_1_per_s"}

// apiFloorConfig is how long each measurement runs.
type apiFloorConfig struct {
	rounds       int
	calls        int           // sequential calls at one client
	loadDuration time.Duration // at 32 clients
}

// etcdAPIFloor measures the floor and writes it, with what it ran on, to
// etcd-api-floor.md in outDir.
func etcdAPIFloor(ctx context.Context, quick bool, outDir string, log *slog.Logger) error {
	cfg := apiFloorConfig{rounds: 4, calls: 2000, loadDuration: 5 * time.Second}
	if quick {
		cfg = apiFloorConfig{rounds: 2, calls: 500, loadDuration: 2 * time.Second}
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output dir: %w", err)
	}
	repoDir, commit, err := repoCommit(ctx)
	if err != nil {
		return err
	}
	started := time.Now()
	e, err := startEnv(ctx, repoDir, false, log)
	if err != nil {
		return err
	}
	defer e.Close()
	b := &bench{env: e, value: make([]byte, valueSize)}
	for i := range b.value {
		b.value[i] = 'a' + byte(i%26)
	}
	for i := range numKeys {
		b.keys = append(b.keys, fmt.Appendf(nil, "%sk%05d", prefix, i))
	}
	pool, err := newPool(ctx, e.walwatchURL, 32)
	if err != nil {
		return err
	}
	defer pool.Close()
	const put = `select count(walwatch.put(k, $2)) from unnest($1::bytea[]) k`
	if err := preloadSQL(ctx, pool, put, b.keys, b.value); err != nil {
		return err
	}
	etcdCli, err := openEtcdClients(e.etcdURL)
	if err != nil {
		return err
	}
	defer etcdCli.close()
	if err := etcdCli.preload(ctx, b.keys, b.value); err != nil {
		return err
	}

	cp := newEtcdAPISystem(e)
	if err := cp.begin(ctx); err != nil {
		return err
	}
	defer func() { _ = cp.end(context.WithoutCancel(ctx)) }()
	systems := []apiFloorSystem{{name: "in process", puts: true}, {name: "in process, after idle", puts: true, idle: idleBeforeCall}}
	for _, read := range thinReads {
		cli, stop, err := startThin(ctx, e, read)
		if err != nil {
			return err
		}
		defer stop()
		systems = append(systems, apiFloorSystem{name: thinName(read), cli: cli, puts: read == "store"})
	}
	systems = append(systems,
		apiFloorSystem{name: "walwatch_etcd", cli: cp.etcdClients, puts: true},
		apiFloorSystem{name: "etcd", cli: etcdCli, puts: true})

	st := store.New(pool, store.Limits{})
	got := map[string]map[string][]float64{}
	for round := range cfg.rounds {
		order := slices.Clone(systems)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range order {
			log.Info("etcd API floor", "round", round+1, "system", s.name)
			if _, err := e.quiesce(ctx); err != nil {
				return err
			}
			// cp's hub follows every walwatch system's writes, not only
			// cp's: one read through cp waits until it has caught up, so
			// no system is measured beside its catching up.
			if err := caughtUp(ctx, cp.etcdClients); err != nil {
				return fmt.Errorf("round %d: cp's hub: %w", round+1, err)
			}
			m, err := measureAPIFloor(ctx, cfg, b, s, st)
			if err != nil {
				return fmt.Errorf("round %d: %s: %w", round+1, s.name, err)
			}
			if got[s.name] == nil {
				got[s.name] = map[string][]float64{}
			}
			for k, v := range m {
				got[s.name][k] = append(got[s.name][k], v)
			}
		}
	}
	names := make([]string, len(systems))
	for i, s := range systems {
		names[i] = s.name
	}
	var doc strings.Builder
	doc.WriteString("# The etcd API's floor\n\n")
	fmt.Fprintf(&doc, "`cd test/bench && go run . -etcd-api-floor` (`make bench-etcd-api-floor`) at %s, %s, on %s (sched_autogroup_enabled %s); %d rounds, the systems' order reversed every other round.\n\n",
		commit, started.UTC().Format("2006-01-02 15:04 MST"), machine(), autogroup(), cfg.rounds)
	doc.WriteString(apiFloorIntro)
	doc.WriteString(apiFloorTable(names, got))
	path := filepath.Join(outDir, "etcd-api-floor.md")
	if err := os.WriteFile(path, []byte(doc.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	log.Info("etcd API floor written", "path", path, "took", time.Since(started).Round(time.Second))
	return nil
}

const apiFloorIntro = "Target 7 measures cp's etcd API against etcd, which answers from its own memory; every request to cp is a gRPC request " +
	"and then a PostgreSQL statement. Here the same etcd Go client drives, alternated on one database: walwatch's store called in this " +
	"program (in process, no server in front), four thin servers of etcd's API (this program re-executed: grpc-go with cp's windows, " +
	"nothing but one statement a request; no hub, no watch, no checks, no metrics), cp (walwatch_etcd, with its keyspace copy: --keyspace-copy) and etcd. `thin` answers a get " +
	"with the store's get, `thin_select1` with `select 1`, the least a linearizable read, which must ask the database what other " +
	"servers wrote, can cost one client; `thin_select1_shared` answers every get waiting with one `select 1`, one in flight at a " +
	"time (as etcd's ReadIndex serves many reads with one round), the least it can cost many; `thin_mirror` keeps every key in its " +
	"memory (loaded when it starts) and reads only the current revision, shared in the same way: the least a cp that answered gets " +
	"from a copy of the keyspace would pay. Gets at one client and their p50 are sequential calls, and so are puts at one client, whose p99 " +
	"is the least an idle round trip's p99 (a put and its delivery) can be through that server; at 32 clients each a 5 s run (2 s quick); puts write " +
	"the benchmark's 10,000 keys, 128 B values, fsync on; MemberList is the front door alone. `in process, after idle` is the store " +
	"called in process as `in process` is, but each get and put at one client after 0.5 ms without work, as a request finds a " +
	"server (its p50s only): the calls back to back find the machine's CPUs awake, which a call through a server, waiting on " +
	"its client, does not. Before each measurement the benchmark waits for autovacuum and for cp's hub, which " +
	"follows every walwatch system's writes, to catch up.\n\n"

// measureAPIFloor measures apiFloorMetrics of one system once.
func measureAPIFloor(ctx context.Context, cfg apiFloorConfig, b *bench, s apiFloorSystem, st *store.Store) (map[string]float64, error) {
	get := func(ctx context.Context, client int, rng *rand.Rand) error {
		key := b.keys[rng.IntN(len(b.keys))]
		if s.cli == nil {
			_, err := st.Range(ctx, store.RangeRequest{KeyRange: store.Key(key)})
			return err
		}
		return s.cli.get(ctx, client, key)
	}
	put := func(ctx context.Context, client int, rng *rand.Rand) error {
		key := b.keys[rng.IntN(len(b.keys))]
		if s.cli == nil {
			_, err := st.Put(ctx, key, b.value)
			return err
		}
		return s.cli.put(ctx, client, key, b.value)
	}
	m := map[string]float64{}
	rate, p50, _, err := sequential(ctx, cfg.calls, s.idle, get)
	if err != nil {
		return nil, fmt.Errorf("gets at 1 client: %w", err)
	}
	m["get_1_p50_us"] = p50
	if s.idle > 0 {
		if s.puts {
			if _, m["put_1_p50_us"], _, err = sequential(ctx, cfg.calls/2, s.idle, put); err != nil {
				return nil, fmt.Errorf("puts at 1 client: %w", err)
			}
		}
		return m, nil
	}
	m["get_1_per_s"] = rate
	if _, m["get_32_per_s"], err = throughput(ctx, 32, cfg.loadDuration, get); err != nil {
		return nil, fmt.Errorf("gets at 32 clients: %w", err)
	}
	if s.puts {
		if _, m["put_1_p50_us"], m["put_1_p99_us"], err = sequential(ctx, cfg.calls/2, 0, put); err != nil {
			return nil, fmt.Errorf("puts at 1 client: %w", err)
		}
		if _, m["put_32_per_s"], err = throughput(ctx, 32, cfg.loadDuration, put); err != nil {
			return nil, fmt.Errorf("puts at 32 clients: %w", err)
		}
	}
	if s.cli != nil {
		noop := func(ctx context.Context, client int, _ *rand.Rand) error { return s.cli.memberList(ctx, client) }
		if m["noop_1_per_s"], _, _, err = sequential(ctx, cfg.calls, 0, noop); err != nil {
			return nil, fmt.Errorf("MemberList at 1 client: %w", err)
		}
	}
	return m, nil
}

// caughtUp returns once a linearizable read through c has answered, trying
// for a minute: cp answers it once its hub has settled the current
// revision.
func caughtUp(ctx context.Context, c *etcdClients) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := c.answers(ctx)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
	}
}

// sequential calls f n times from one client, each after idle without
// work, and returns the calls a second (counting the idle time) and their
// p50 and p99 in microseconds.
func sequential(ctx context.Context, n int, idle time.Duration, f op) (perSec, p50, p99 float64, err error) {
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	times := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		if idle > 0 {
			time.Sleep(idle)
		}
		t := time.Now()
		if err := f(ctx, 0, rng); err != nil {
			return 0, 0, 0, err
		}
		times = append(times, time.Since(t))
	}
	ps := percentiles(micros(times), 0.5, 0.99)
	return float64(n) / time.Since(start).Seconds(), ps[0], ps[1], nil
}

// apiFloorTable is the medians over the rounds of each system's metrics, each
// with its ratio to etcd's.
func apiFloorTable(systems []string, got map[string]map[string][]float64) string {
	var b strings.Builder
	b.WriteString("| system | gets/s, 1 client | get p50, 1 client | put p50, 1 client | put p99, 1 client | gets/s, 32 clients | puts/s, 32 clients | MemberList/s, 1 client |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range systems {
		b.WriteString("| " + s)
		for _, m := range apiFloorMetrics {
			xs := got[s][m]
			if len(xs) == 0 {
				b.WriteString(" | —")
				continue
			}
			v := median(xs)
			unit := ""
			if strings.HasSuffix(m, "_us") {
				unit = " µs"
			}
			fmt.Fprintf(&b, " | %.0f%s", v, unit)
			if ref := median(got["etcd"][m]); s != "etcd" && ref > 0 {
				fmt.Fprintf(&b, " (%.2f×)", v/ref)
			}
		}
		b.WriteString(" |\n")
	}
	b.WriteString("\nMedians of the rounds; in brackets, the ratio to etcd's. Each round, per system:\n\n")
	for _, s := range systems {
		for _, m := range apiFloorMetrics {
			if xs := got[s][m]; len(xs) > 0 {
				fmt.Fprintf(&b, "- %s %s: %s\n", s, m, formatRounds(xs))
			}
		}
	}
	return b.String()
}

func formatRounds(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

// thinReads are the thin servers' ways to answer a get: the store's get;
// one select 1 a get; one select 1 for every get waiting when it starts,
// one in flight at a time, as etcd's ReadIndex serves many reads with one
// round of its leader's: the least a linearizable read at many clients can
// cost a server that keeps nothing in memory; and "mirror", a server that
// keeps every key in memory (loaded when it starts, never updated) and
// reads only the current revision, shared as the select 1 is: the least a
// cp answering gets from a copy of the keyspace would pay.
var thinReads = []string{"select1", "shared", "mirror", "store"}

func thinName(read string) string {
	switch read {
	case "store":
		return "thin"
	case "shared":
		return "thin_select1_shared"
	}
	return "thin_" + read
}

// startThin starts a thin server whose gets are read (one of thinReads),
// and connects the etcd clients to it.
func startThin(ctx context.Context, e *env, read string) (*etcdClients, func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("start the thin server: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := &serverProcess{name: "thin " + read, logPath: filepath.Join(e.dir, "thin-"+read+".log")}
	if err := p.start(exe, "-thin-serve", addr, "-thin-read", read, "-thin-postgres", e.walwatchURL); err != nil {
		return nil, nil, err
	}
	cli, err := openEtcdClients("http://" + addr)
	if err != nil {
		p.stop()
		return nil, nil, err
	}
	if err := p.await(ctx, "a get", cli.answers); err != nil {
		cli.close()
		p.stop()
		return nil, nil, err
	}
	return cli, func() { cli.close(); p.stop() }, nil
}

// serveThin is the -thin-serve process: etcd's KV (gets of one key at the
// latest revision, plain puts) and MemberList on addr, over walwatch's store
// on pgURL, until SIGTERM.
func serveThin(addr, pgURL, read string) error {
	if !slices.Contains(thinReads, read) {
		return fmt.Errorf("-thin-read %q: want one of %s", read, strings.Join(thinReads, ", "))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pool, err := newPool(ctx, pgURL, 32)
	if err != nil {
		return err
	}
	defer pool.Close()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// cp's windows (etcdapi.New): without them gRPC pings after every
	// request's data to estimate the link, which costs a thin server more
	// than cp.
	s := grpc.NewServer(grpc.InitialWindowSize(2<<20), grpc.InitialConnWindowSize(4<<20), grpc.MaxConcurrentStreams(1<<31-1))
	kv := &thinKV{store: store.New(pool, store.Limits{}), pool: pool, read: read}
	switch read {
	case "shared":
		kv.shared = &sharedReads{pool: pool, stmt: "select 1"}
	case "mirror":
		kv.shared = &sharedReads{pool: pool, stmt: currentRevisionSQL}
		if kv.mirror, err = loadMirror(ctx, kv.store); err != nil {
			return err
		}
	}
	pb.RegisterKVServer(s, kv)
	pb.RegisterClusterServer(s, thinCluster{})
	go func() {
		<-ctx.Done()
		s.Stop()
	}()
	if err := s.Serve(l); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// thinKV answers what the floor measures and refuses the rest.
type thinKV struct {
	pb.UnimplementedKVServer
	store  *store.Store
	pool   *pgxpool.Pool
	read   string       // one of thinReads
	shared *sharedReads // for "shared" and "mirror"
	mirror map[string]*mvccpb.KeyValue
}

var errThinRange = status.Error(codes.Unimplemented, "thin server: a get of one key at the latest revision only")

func (k *thinKV) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if len(r.RangeEnd) != 0 || r.Revision != 0 || len(r.Key) == 0 {
		return nil, errThinRange
	}
	var (
		rev int64 = 1
		err error
	)
	switch k.read {
	case "store":
		return k.rangeStore(ctx, r)
	case "select1":
		err = selectOne(ctx, k.pool)
	default:
		rev, err = k.shared.read(ctx)
	}
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	out := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rev}}
	if kv, ok := k.mirror[string(r.Key)]; ok {
		out.Kvs, out.Count = []*mvccpb.KeyValue{kv}, 1
	} else if k.read != "mirror" {
		// The key, so that the benchmark's get finds what it asked for.
		out.Kvs, out.Count = []*mvccpb.KeyValue{{Key: r.Key}}, 1
	}
	return out, nil
}

func (k *thinKV) rangeStore(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	res, err := k.store.Range(ctx, store.RangeRequest{KeyRange: store.Key(r.Key)})
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	out := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: res.Revision}, Count: res.Count}
	for _, kv := range res.KVs {
		out.Kvs = append(out.Kvs, pbKeyValue(kv))
	}
	return out, nil
}

func pbKeyValue(kv store.KeyValue) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
}

// loadMirror reads every key's newest row once. The floor does not keep it
// current: what it measures is the read, not the copy's upkeep.
func loadMirror(ctx context.Context, st *store.Store) (map[string]*mvccpb.KeyValue, error) {
	res, err := st.Range(ctx, store.RangeRequest{KeyRange: store.FromKey([]byte{0})})
	if err != nil {
		return nil, fmt.Errorf("load the mirror: %w", err)
	}
	m := make(map[string]*mvccpb.KeyValue, len(res.KVs))
	for _, kv := range res.KVs {
		m[string(kv.Key)] = pbKeyValue(kv)
	}
	return m, nil
}

func (k *thinKV) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if r.Lease != 0 || r.PrevKv || r.IgnoreValue || r.IgnoreLease {
		return nil, status.Error(codes.Unimplemented, "thin server: a plain put only")
	}
	res, err := k.store.Put(ctx, r.Key, r.Value)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &pb.PutResponse{Header: &pb.ResponseHeader{Revision: res.Revision}}, nil
}

// thinCluster answers MemberList from memory, as cp and etcd do: the
// front door alone.
type thinCluster struct{ pb.UnimplementedClusterServer }

func (thinCluster) MemberList(context.Context, *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	return &pb.MemberListResponse{Header: &pb.ResponseHeader{}}, nil
}

func selectOne(ctx context.Context, pool *pgxpool.Pool) error {
	var one int
	return pool.QueryRow(ctx, "select 1").Scan(&one)
}

// currentRevisionSQL is the mirror's only statement: the subquery that
// the store's get statements (oneKeyLatestSQL and manyKeysLatestSQL in
// store/kv.go) read the current revision with, copied because they are the
// store's own; walwatch.current_revision() would measure a costlier call.
const currentRevisionSQL = "select coalesce((select max(x.revision) from walwatch.kv x), 1)"

// sharedReads answers every read waiting when its statement starts with
// that statement's answer (a bigint). The first reader to find none in
// flight runs it in its own goroutine; reads that arrive meanwhile wait for
// the next, which a new goroutine runs, as the store's batches do.
type sharedReads struct {
	pool    *pgxpool.Pool
	stmt    string
	mu      sync.Mutex
	waiting []chan sharedRead
	running bool
}

type sharedRead struct {
	n   int64
	err error
}

func (s *sharedReads) read(ctx context.Context) (int64, error) {
	ch := make(chan sharedRead, 1)
	s.mu.Lock()
	s.waiting = append(s.waiting, ch)
	lead := !s.running
	s.running = true
	s.mu.Unlock()
	if lead {
		s.round()
	}
	select {
	case r := <-ch:
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// round answers the reads waiting with one statement, then hands the lead
// to a new goroutine if more wait.
func (s *sharedReads) round() {
	s.mu.Lock()
	batch := s.waiting
	s.waiting = nil
	s.mu.Unlock()
	// The round is every waiting reader's, so no one reader's context may
	// end it; a minute bounds a database that stopped answering.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var r sharedRead
	r.err = s.pool.QueryRow(ctx, s.stmt).Scan(&r.n)
	cancel()
	for _, ch := range batch {
		ch <- r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) > 0 {
		go s.round()
		return
	}
	s.running = false
}

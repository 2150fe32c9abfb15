package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	wwsql "github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/test/pgcluster"
)

// env is everything the systems run on: one private PostgreSQL with the
// walwatch and notify databases (and kine's, when kine runs), etcd's server
// as a child process, the walwatch binary for the control-plane pass and, when kine runs,
// kine's binary. Close undoes all of it.
type env struct {
	dir     string // temp dir for etcd's data, the binaries and logs
	cluster *pgcluster.Cluster
	etcd    *serverProcess // etcd's server, a child process
	etcdURL string
	etcdDir string // its data
	bin     string // the walwatch binary
	kineBin string // kine's binary; "" when kine does not run
	log     *slog.Logger

	walwatchURL string
	notifyURL   string
	kineURL     string        // kine's database; "" when kine does not run
	admin       *pgxpool.Pool // walwatch database, for LSNs and slot admin
	procs       *procMeter
}

// pgSettings are the server settings; fsync, synchronous commit and
// full-page writes are on, as they are by default, and spelled out so
// nobody wonders. wal_compression is what the README's operations section
// recommends: it compresses the full-page images that follow each
// checkpoint, a fifth to a half of the WAL of a put here.
var pgSettings = map[string]string{
	"wal_level":          "logical",
	"max_connections":    "300",
	"fsync":              "on",
	"synchronous_commit": "on",
	"full_page_writes":   "on",
	"wal_compression":    "lz4",
}

// startEnv starts everything, with kine's binary and database if withKine.
// On error, what was started is stopped.
func startEnv(ctx context.Context, repoDir string, withKine bool, log *slog.Logger) (_ *env, err error) {
	dir, err := os.MkdirTemp("", "walwatch-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	e := &env{dir: dir, log: log}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()

	buildDone := make(chan error, 2)
	go func() { buildDone <- e.buildBinary(ctx, repoDir) }()
	if withKine {
		go func() { buildDone <- e.buildKine(ctx) }()
	} else {
		buildDone <- nil
	}

	start := time.Now()
	e.cluster, err = pgcluster.Start(ctx, pgcluster.Options{Settings: pgSettings})
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	if e.walwatchURL, err = e.cluster.CreateDatabase(ctx, "walwatch"); err != nil {
		return nil, fmt.Errorf("create database walwatch: %w", err)
	}
	if e.notifyURL, err = e.cluster.CreateDatabase(ctx, "notify"); err != nil {
		return nil, fmt.Errorf("create database notify: %w", err)
	}
	if withKine {
		if e.kineURL, err = e.cluster.CreateDatabase(ctx, "kine"); err != nil {
			return nil, fmt.Errorf("create database kine: %w", err)
		}
	}
	if e.admin, err = newPool(ctx, e.walwatchURL, 4); err != nil {
		return nil, err
	}
	if _, err := wwsql.Migrate(ctx, e.admin); err != nil {
		return nil, fmt.Errorf("migrate walwatch: %w", err)
	}
	// The disk figure reads the WAL of its puts back to split it by kind.
	if _, err := e.admin.Exec(ctx, "create extension pg_walinspect"); err != nil {
		return nil, fmt.Errorf("create extension pg_walinspect: %w", err)
	}
	if e.procs, err = newProcMeter(e.cluster.DataDir()); err != nil {
		return nil, err
	}
	log.Info("PostgreSQL ready", "port", e.cluster.Port(), "took", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := e.startEtcd(ctx); err != nil {
		return nil, err
	}
	log.Info("etcd ready", "url", e.etcdURL, "took", time.Since(start).Round(time.Millisecond))

	if err := errors.Join(<-buildDone, <-buildDone); err != nil {
		return nil, err
	}
	return e, nil
}

// buildBinary builds cmd/walwatch into the temp dir.
func (e *env) buildBinary(ctx context.Context, repoDir string) error {
	e.bin = filepath.Join(e.dir, "walwatch")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", e.bin, "./cmd/walwatch")
	cmd.Dir = repoDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("build walwatch: %w\n%s", err, out)
	}
	return nil
}

// startEtcd runs etcd as a child process (this program with -etcd-serve)
// and waits until it reports itself healthy.
func (e *env) startEtcd(ctx context.Context) error {
	clientPort, err := freePort()
	if err != nil {
		return err
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	cu := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	pu := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	e.etcd = &serverProcess{name: "etcd", logPath: filepath.Join(e.dir, "etcd.log")}
	e.etcdDir = filepath.Join(e.dir, "etcd")
	if err := e.etcd.start(exe, "-etcd-serve", e.etcdDir, "-etcd-client-url", cu, "-etcd-peer-url", pu); err != nil {
		return err
	}
	hc := &http.Client{Timeout: time.Second}
	err = e.etcd.await(ctx, "/health", func(ctx context.Context) error { return getOK(ctx, hc, cu+"/health") })
	if err != nil {
		e.etcd.stop()
		return err
	}
	e.etcdURL = cu
	return nil
}

// serveEtcd is the -etcd-serve process: etcd's server (its embed package,
// as etcd's own main runs it) with its data in dir, fsync on, until
// SIGTERM.
func serveEtcd(dir, clientURL, peerURL string) error {
	cu, err := url.Parse(clientURL)
	if err != nil {
		return err
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	// Quiet: etcd reports its own listeners closing at shutdown as errors.
	// A real failure reaches the benchmark through the client.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.QuotaBackendBytes = 8 << 30 // every revision is kept; the default 2 GiB could fill
	// Its heap profile with gc=1 is how the watcher memory figure collects
	// garbage before it reads etcd's /metrics.
	cfg.EnablePprof = true
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if cfg.UnsafeNoFsync {
		return errors.New("etcd: fsync must stay on")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer srv.Close()
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

// Close stops etcd and PostgreSQL and removes the temp dir. It runs on a
// fresh context: cleanup must happen even after Ctrl-C.
func (e *env) Close() {
	if e.admin != nil {
		e.admin.Close()
	}
	if e.etcd != nil {
		e.etcd.stop()
	}
	if e.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := e.cluster.Stop(ctx); err != nil {
			e.log.Warn("stop PostgreSQL", "err", err)
		}
		cancel()
	}
	if err := os.RemoveAll(e.dir); err != nil {
		e.log.Warn("remove temp dir", "dir", e.dir, "err", err)
	}
}

// postgresVersion is the server's version() string.
func (e *env) postgresVersion(ctx context.Context) (string, error) {
	var v string
	if err := e.admin.QueryRow(ctx, "select version()").Scan(&v); err != nil {
		return "", fmt.Errorf("postgres version: %w", err)
	}
	return v, nil
}

// walLSN is the current WAL insert position, in bytes.
func (e *env) walLSN(ctx context.Context) (float64, error) {
	var lsn float64
	err := e.admin.QueryRow(ctx, "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8").Scan(&lsn)
	if err != nil {
		return 0, fmt.Errorf("read WAL position: %w", err)
	}
	return lsn, nil
}

// newPool connects a pool of at most size connections and opens them all,
// so no benchmark client waits for a connection to be made.
func newPool(ctx context.Context, connString string, size int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	cfg.MaxConns = size
	cfg.MinConns = size
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg.ConnConfig.Database, err)
	}
	conns := make([]*pgxpool.Conn, 0, size)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range size {
		c, err := pool.Acquire(ctx)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("open connection to %s: %w", cfg.ConnConfig.Database, err)
		}
		conns = append(conns, c)
	}
	return pool, nil
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// machine describes this host: CPU model, cores, memory.
func machine() string {
	model, mem := "unknown CPU", ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				if _, err := fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb); err == nil {
					mem = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/(1<<20))
				}
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores%s", model, runtime.NumCPU(), mem)
}

// autogroup reports whether Linux's scheduler autogroup is on ("on",
// "off"), or "" where the kernel has no such setting.
func autogroup() string {
	b, err := os.ReadFile("/proc/sys/kernel/sched_autogroup_enabled")
	if err != nil {
		return ""
	}
	if strings.TrimSpace(string(b)) == "0" {
		return "off"
	}
	return "on"
}

// quiesce waits until no autovacuum worker runs, for at most two minutes, so
// that a measurement does not pay for vacuuming what earlier workloads
// wrote. It returns how long it waited.
func (e *env) quiesce(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	for {
		var n int
		if err := e.admin.QueryRow(ctx,
			"select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'").Scan(&n); err != nil {
			return 0, fmt.Errorf("look for autovacuum workers: %w", err)
		}
		if n == 0 || time.Since(start) > 2*time.Minute {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

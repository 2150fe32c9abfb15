// Package pgcluster runs a private, throwaway PostgreSQL server for tests and
// for `walwatch demo`: initdb into a temp dir, postgres as a child process on
// 127.0.0.1, and cleanup on Stop.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// readyTimeout bounds the wait for the server to accept connections;
	// crash recovery after StopImmediate is included.
	readyTimeout = 60 * time.Second
	pollInterval = 20 * time.Millisecond
	// portAttempts retries a picked port that got taken between our probe
	// and the server's bind.
	portAttempts = 3
	logTailLines = 30
)

// Options configures a private cluster.
type Options struct {
	// DataDir is the data directory. "" means a new temp dir, removed by
	// Stop. A set DataDir is never removed; if it already holds a cluster
	// (PG_VERSION exists) it is reused without initdb.
	DataDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Settings are extra server settings passed as -c name=value; they
	// override the defaults, except "port" (use Port) and
	// "unix_socket_directories" (always private).
	Settings map[string]string
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
}

// StopMode says how Restart stops the server.
type StopMode int

const (
	// StopFast sends SIGINT: clients are disconnected and a shutdown
	// checkpoint is written.
	StopFast StopMode = iota
	// StopImmediate sends SIGQUIT: processes exit without a checkpoint, like
	// a crash, so the next start runs WAL recovery. Sequences may skip
	// values afterwards, since nextval logs ahead in the WAL.
	StopImmediate
)

func (m StopMode) String() string {
	switch m {
	case StopFast:
		return "fast"
	case StopImmediate:
		return "immediate"
	default:
		return "StopMode(" + strconv.Itoa(int(m)) + ")"
	}
}

func (m StopMode) signal() (syscall.Signal, error) {
	switch m {
	case StopFast:
		return syscall.SIGINT, nil
	case StopImmediate:
		return syscall.SIGQUIT, nil
	default:
		return 0, fmt.Errorf("unknown stop mode %v", m)
	}
}

// Cluster is a running private PostgreSQL server. Its methods are safe for
// concurrent use.
type Cluster struct {
	bindir   string
	dataDir  string
	tmpDir   string // holds the socket dir, the log and, unless Options.DataDir was set, the data dir
	sockDir  string
	logPath  string
	port     int
	settings map[string]string
	acct     *account
	log      *slog.Logger

	// name is a standby's application_name on its primary; "" for a
	// cluster started by Start.
	name string

	mu      sync.Mutex // serialises Restart, Kill, Promote and Stop
	primary *Cluster   // a standby's primary, until Promote
	proc    *process
	stopped bool
}

// process is one postmaster run.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the postmaster has exited
	err  error         // result of cmd.Wait, valid once done is closed
}

// Start creates (or reuses) a data directory, starts postgres on it and
// waits until it accepts connections. Call Stop to shut it down.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	c, err := newCluster(opts)
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			_ = os.RemoveAll(c.tmpDir) // best effort; the start error matters more
		}
	}()
	if err := c.prepareDataDir(ctx, opts.DataDir); err != nil {
		return nil, err
	}
	if err := c.startOnPort(ctx, opts.Port); err != nil {
		return nil, err
	}
	started = true
	return c, nil
}

// newCluster checks opts and makes the cluster's temp dir and socket dir,
// owned by the server user. The caller removes c.tmpDir if it fails later.
func newCluster(opts Options) (*Cluster, error) {
	if _, ok := opts.Settings["port"]; ok {
		return nil, errors.New(`starting postgres: use Options.Port instead of Settings["port"]`)
	}
	// The private socket dir is how Start tells its own server from another
	// one on the same port, so it cannot be moved.
	if _, ok := opts.Settings["unix_socket_directories"]; ok {
		return nil, errors.New(`starting postgres: Settings["unix_socket_directories"] cannot be overridden`)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bindir, err := FindBinaries()
	if err != nil {
		return nil, err
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}

	tmpDir, err := os.MkdirTemp("", "pgcluster-")
	if err != nil {
		return nil, fmt.Errorf("creating temp dir for postgres: %w", err)
	}
	c := &Cluster{
		bindir:   bindir,
		tmpDir:   tmpDir,
		sockDir:  filepath.Join(tmpDir, "sock"),
		logPath:  filepath.Join(tmpDir, "postgres.log"),
		port:     opts.Port,
		settings: maps.Clone(opts.Settings),
		acct:     acct,
		log:      logger,
	}
	if err := c.makeDirs(); err != nil {
		_ = os.RemoveAll(tmpDir) // best effort; the error matters more
		return nil, err
	}
	return c, nil
}

func (c *Cluster) makeDirs() error {
	if err := c.acct.checkReachable(c.tmpDir); err != nil {
		return err
	}
	// The server user creates the data dir (initdb) and the socket lock in here.
	if err := c.acct.chown(c.tmpDir); err != nil {
		return err
	}
	if err := os.Mkdir(c.sockDir, 0o700); err != nil {
		return fmt.Errorf("creating socket dir: %w", err)
	}
	return c.acct.chown(c.sockDir)
}

// startOnPort starts the server on port, or on a free one when port is 0,
// trying another if the one picked is taken before the server binds it.
func (c *Cluster) startOnPort(ctx context.Context, port int) error {
	for attempt := 1; ; attempt++ {
		if port == 0 {
			var err error
			if c.port, err = freePort(); err != nil {
				return err
			}
		}
		err := c.startServer(ctx)
		if err == nil {
			return nil
		}
		if port != 0 || attempt == portAttempts || !errors.Is(err, errAddrInUse) {
			return err
		}
		c.log.Warn("picked port was taken, trying another", "port", c.port, "attempt", attempt)
	}
}

// prepareDataDir sets c.dataDir and runs initdb unless dir already holds a cluster.
func (c *Cluster) prepareDataDir(ctx context.Context, dir string) error {
	if dir == "" {
		c.dataDir = filepath.Join(c.tmpDir, "data")
		return c.initdb(ctx)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("resolving data dir %s: %w", dir, err)
	}
	c.dataDir = abs
	if err := c.acct.checkReachable(abs); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(abs, "PG_VERSION")); err == nil {
		c.log.Info("reusing existing data dir", "dir", abs)
		return nil
	}
	// Parents we create must stay traversable for the server user; the
	// data dir itself must be private or postgres refuses it.
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return fmt.Errorf("creating parent of data dir %s: %w", abs, err)
	}
	if err := os.Mkdir(abs, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating data dir: %w", err)
	}
	if err := c.acct.chown(abs); err != nil {
		return err
	}
	return c.initdb(ctx)
}

func (c *Cluster) initdb(ctx context.Context) error {
	start := time.Now()
	// --no-sync: the cluster is throwaway, and skipping the fsync of every
	// new file makes initdb several times faster. --auth=trust: only local
	// test clients connect, to 127.0.0.1 and a private socket dir.
	cmd := exec.CommandContext(ctx, filepath.Join(c.bindir, "initdb"),
		"-D", c.dataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	cmd.Dir = c.tmpDir // our cwd may be unreadable for the server user
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.acct.credential(),
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb in %s: %w\n%s", c.dataDir, err, lastLines(out, logTailLines))
	}
	c.log.Debug("initdb done", "dir", c.dataDir, "took", time.Since(start))
	return nil
}

// serverArgs returns the postgres command line: defaults, then the
// caller's settings, then the port, sorted so the log is stable.
func (c *Cluster) serverArgs() []string {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": c.sockDir,
		"wal_level":               "logical",
		"max_replication_slots":   "32",
		"max_wal_senders":         "32",
		"max_connections":         "300",
		"shared_buffers":          "128MB",
		"logging_collector":       "off",
		"log_min_messages":        "warning",
	}
	maps.Copy(settings, c.settings)
	settings["port"] = strconv.Itoa(c.port)

	args := []string{"-D", c.dataDir}
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", name+"="+settings[name])
	}
	return args
}

var errAddrInUse = errors.New("address already in use")

// startServer runs the postmaster and waits until it accepts connections.
// The caller holds c.mu or has exclusive access.
func (c *Cluster) startServer(ctx context.Context) error {
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening postgres log: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	fi, err := logFile.Stat()
	if err != nil {
		return fmt.Errorf("opening postgres log: %w", err)
	}
	logStart := fi.Size() // show only this run's lines on failure

	start := time.Now()
	// Not CommandContext: the server must outlive the ctx of the call that started it.
	cmd := exec.Command(filepath.Join(c.bindir, "postgres"), c.serverArgs()...)
	cmd.Dir = c.tmpDir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.acct.credential(),
		// Own process group: a Ctrl-C meant for the demo or test binary does
		// not reach postgres directly, and Stop can kill the whole group.
		Setpgid: true,
		// If this process dies (test binary aborted or killed), the kernel
		// sends SIGQUIT, postgres's immediate shutdown, so nothing lingers.
		// Strictly it fires when the starting OS thread exits, which the Go
		// runtime only does for goroutines that exit while locked to one.
		Pdeathsig: syscall.SIGQUIT,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.proc = p
	c.log.Debug("postgres started", "pid", cmd.Process.Pid, "port", c.port, "dir", c.dataDir)

	if err := c.waitReady(ctx, p); err != nil {
		// Don't leave a half-started server behind.
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.signalAndWait(stopCtx, syscall.SIGQUIT) // already failing; the log tail explains more
		tail := c.logTail(logStart)
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("postgres on port %d (data dir %s) did not become ready: %w\nlast lines of %s:\n%s",
			c.port, c.dataDir, err, c.logPath, tail)
	}
	c.log.Info("postgres ready", "port", c.port, "dir", c.dataDir, "took", time.Since(start))
	return nil
}

// waitReady polls with real connections until one succeeds, the server
// exits or the deadline passes.
func (c *Cluster) waitReady(ctx context.Context, p *process) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(c.ConnString("postgres"))
	if err != nil {
		return fmt.Errorf("parsing connection string: %w", err)
	}
	// Poll through the private socket dir, not TCP: if the port belongs to
	// another server, a TCP connect would succeed against the wrong one.
	// postgres binds its TCP port before creating the socket, so a socket
	// connection also proves the port is ours.
	cfg.Host = c.sockDir
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = time.Second

	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			_ = conn.Close(ctx) // it connected; that is all we wanted to know
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("postgres exited during startup: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for connections: %w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// signalAndWait sends sig to the postmaster and waits for it to exit. If
// ctx ends first the whole process group is killed, so nothing lingers.
func (p *process) signalAndWait(ctx context.Context, sig syscall.Signal) error {
	pid := p.cmd.Process.Pid
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending %v to postgres (pid %d): %w", sig, pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-pid, syscall.SIGKILL) // the group may already be gone
		<-p.done
		return fmt.Errorf("waiting for postgres (pid %d) to exit after %v, killed it: %w", pid, sig, ctx.Err())
	}
}

// Port returns the TCP port the server listens on at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// DataDir returns the absolute path of the data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogFile returns the path of the server log; Stop removes it.
func (c *Cluster) LogFile() string { return c.logPath }

// ConnString returns a URL connecting to dbname as the superuser "postgres".
func (c *Cluster) ConnString(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// SocketConnString is ConnString through the server's Unix socket, for
// measuring what TCP on loopback costs.
func (c *Cluster) SocketConnString(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Path:     "/" + dbname,
		RawQuery: url.Values{"host": {c.sockDir}, "port": {strconv.Itoa(c.port)}}.Encode(),
	}
	return u.String()
}

// CreateDatabase creates database name and returns its connection string.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := c.execAdmin(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("creating database %q: %w", name, err)
	}
	return c.ConnString(name), nil
}

// DropDatabase drops database name if it exists, disconnecting its clients.
//
// A replication slot of the database (a walsender that is still exiting, or
// a slot a test left behind) blocks the drop, so it drops those slots first
// and retries until ctx ends.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	for {
		err := c.execAdmin(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "55006" { // object_in_use: a slot
			if err != nil {
				return fmt.Errorf("dropping database %q: %w", name, err)
			}
			return nil
		}
		// Logical slots can only be dropped from their own database.
		_ = c.execIn(ctx, name, `select pg_terminate_backend(active_pid) from pg_replication_slots where database = current_database() and active_pid is not null`)
		_ = c.execIn(ctx, name, `select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = current_database() and not active`)
		select {
		case <-ctx.Done():
			return fmt.Errorf("dropping database %q: %w", name, err)
		case <-time.After(pollInterval):
		}
	}
}

// execAdmin runs sql on the "postgres" database in a short-lived connection.
func (c *Cluster) execAdmin(ctx context.Context, sql string) error {
	return c.execIn(ctx, "postgres", sql)
}

// execIn runs sql on database db in a short-lived connection.
func (c *Cluster) execIn(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// Restart stops the server with mode, starts it again on the same port and
// data dir, and waits until it accepts connections.
func (c *Cluster) Restart(ctx context.Context, mode StopMode) error {
	sig, err := mode.signal()
	if err != nil {
		return fmt.Errorf("restarting postgres: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("restarting postgres: cluster already stopped")
	}
	if err := c.proc.signalAndWait(ctx, sig); err != nil {
		return fmt.Errorf("stopping postgres (%v) for restart: %w", mode, err)
	}
	c.log.Info("postgres stopped for restart", "mode", mode, "exit", exitStatus(c.proc.err))
	if err := c.startServer(ctx); err != nil {
		return fmt.Errorf("restarting postgres: %w", err)
	}
	return nil
}

// Stop shuts the server down (fast mode), waits for it to exit and removes
// the temp dirs it created. A DataDir given in Options is kept. Calling
// Stop again does nothing.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	if c.proc != nil {
		if err := c.proc.signalAndWait(ctx, syscall.SIGINT); err != nil {
			errs = append(errs, fmt.Errorf("stopping postgres: %w", err))
		} else {
			c.log.Info("postgres stopped", "port", c.port, "exit", exitStatus(c.proc.err))
		}
	}
	if err := os.RemoveAll(c.tmpDir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", c.tmpDir, err))
	}
	return errors.Join(errs...)
}

func exitStatus(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

// freePort asks the kernel for a free port on 127.0.0.1. Another process
// can take it before postgres binds; Start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("picking a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// logTail returns the last lines of the server log written after offset.
func (c *Cluster) logTail(offset int64) string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, offset, 1<<62))
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	return lastLines(b, logTailLines)
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

package pgcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// StandbyOptions configures a streaming standby (StartStandby).
type StandbyOptions struct {
	// Synchronous names the standby in the primary's
	// synchronous_standby_names (and reloads it), so that a commit on the
	// primary waits for the standby to flush it. SetSynchronous changes it
	// later.
	Synchronous bool
	// Settings are added to the primary's own, overriding them; "port" and
	// "unix_socket_directories" are refused as for Start.
	Settings map[string]string
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
}

// StartStandby starts a streaming standby of primary: a copy of its data
// directory (pg_basebackup -X stream -R) streaming from a physical
// replication slot created on the primary for it, with its own port,
// socket dir and data dir (removed by Stop). It returns once the standby
// accepts read-only connections and the primary shows it streaming (and,
// with Synchronous, as its synchronous standby).
//
// The standby's slot name, and its application_name on the primary, is
// Name(). Promote makes it a primary; Kill or Stop of the primary leaves it
// waiting for one.
func StartStandby(ctx context.Context, primary *Cluster, opts StandbyOptions) (*Cluster, error) {
	settings := maps.Clone(primary.settings)
	if settings == nil {
		settings = map[string]string{}
	}
	maps.Copy(settings, opts.Settings)
	logger := opts.Logger
	if logger == nil {
		logger = primary.log
	}
	c, err := newCluster(Options{Settings: settings, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("starting a standby: %w", err)
	}
	started := false
	defer func() {
		if !started {
			_ = c.Stop(context.WithoutCancel(ctx)) // best effort; the start error matters more
		}
	}()
	c.name = "standby_" + strings.ToLower(rand.Text()[:12])
	c.primary = primary
	c.dataDir = filepath.Join(c.tmpDir, "data")
	if err := c.baseBackup(ctx, primary); err != nil {
		return nil, err
	}
	// Given on the command line, these override what -R wrote: the
	// application_name is how the primary knows this standby.
	c.settings["primary_conninfo"] = fmt.Sprintf("host=127.0.0.1 port=%d user=postgres application_name=%s", primary.port, c.name)
	c.settings["primary_slot_name"] = c.name
	if err := c.startOnPort(ctx, 0); err != nil {
		return nil, fmt.Errorf("starting standby %s: %w", c.name, err)
	}
	if err := c.waitStreaming(ctx, false); err != nil {
		return nil, err
	}
	if opts.Synchronous {
		if err := c.SetSynchronous(ctx, true); err != nil {
			return nil, err
		}
	}
	started = true
	return c, nil
}

// baseBackup copies primary's data directory into c.dataDir, creating the
// physical slot c.name on the primary, and writes standby.signal (-R).
func (c *Cluster) baseBackup(ctx context.Context, primary *Cluster) error {
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bindir, "pg_basebackup"),
		"-D", c.dataDir, "-h", primary.sockDir, "-p", strconv.Itoa(primary.port), "-U", "postgres",
		"-X", "stream", "-R", "-C", "-S", c.name, "--checkpoint=fast", "--no-sync")
	cmd.Dir = c.tmpDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.acct.credential(), Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_basebackup of the primary on port %d: %w\n%s", primary.port, err, lastLines(out, logTailLines))
	}
	c.log.Debug("pg_basebackup done", "dir", c.dataDir, "took", time.Since(start))
	return nil
}

// Name returns a standby's name: its application_name on the primary and
// the name of its physical slot there. It is "" for a cluster from Start.
func (c *Cluster) Name() string { return c.name }

// Primary returns the cluster a standby streams from, nil for a primary.
func (c *Cluster) Primary() *Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primary
}

// waitStreaming waits until the primary shows standby c streaming, and
// with sync as its synchronous standby.
func (c *Cluster) waitStreaming(ctx context.Context, sync bool) error {
	primary := c.Primary()
	if primary == nil {
		return fmt.Errorf("standby %s has no primary", c.name)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		var n int
		err := primary.queryRow(ctx, "postgres", `select count(*) from pg_stat_replication
			where application_name = $1 and state = 'streaming' and (not $2 or sync_state = 'sync')`, []any{c.name, sync}, &n)
		if err == nil && n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the primary on port %d to show standby %s streaming (synchronous %v): %w (last error: %v)",
				primary.port, c.name, sync, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// SetSynchronous makes standby c its primary's synchronous standby (on), so
// that every commit there waits for c to flush it, or no longer (off): it
// sets the primary's synchronous_standby_names with ALTER SYSTEM, reloads
// it, and waits until the primary reports c's sync_state accordingly.
func (c *Cluster) SetSynchronous(ctx context.Context, on bool) error {
	primary := c.Primary()
	if primary == nil {
		return fmt.Errorf("standby %s has no primary", c.name)
	}
	// ALTER SYSTEM takes no parameters; the name is ours, [a-z0-9_] only.
	stmt := "ALTER SYSTEM RESET synchronous_standby_names"
	if on {
		stmt = "ALTER SYSTEM SET synchronous_standby_names = '" + c.name + "'"
	}
	if err := primary.execAdmin(ctx, stmt); err != nil {
		return fmt.Errorf("setting synchronous_standby_names on the primary: %w", err)
	}
	if err := primary.execAdmin(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("reloading the primary's configuration: %w", err)
	}
	if on {
		return c.waitStreaming(ctx, true)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		var n int
		err := primary.queryRow(ctx, "postgres", `select count(*) from pg_stat_replication
			where application_name = $1 and sync_state = 'sync'`, []any{c.name}, &n)
		if err == nil && n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for standby %s to be asynchronous: %w (last error: %v)", c.name, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// StallReplication stops (SIGSTOP) the primary's WAL sender that serves
// standby c, as a slow or cut link would, until resume is called (SIGCONT):
// meanwhile the standby falls behind, and an asynchronous one misses what
// the primary commits. With a synchronous standby, commits on the primary
// wait meanwhile.
func (c *Cluster) StallReplication(ctx context.Context) (resume func() error, err error) {
	primary := c.Primary()
	if primary == nil {
		return nil, fmt.Errorf("standby %s has no primary", c.name)
	}
	var pid int
	err = primary.queryRow(ctx, "postgres", `select coalesce(max(pid), 0) from pg_stat_replication where application_name = $1`,
		[]any{c.name}, &pid)
	if err != nil {
		return nil, fmt.Errorf("finding the WAL sender of standby %s: %w", c.name, err)
	}
	if pid == 0 {
		return nil, fmt.Errorf("standby %s has no WAL sender on the primary", c.name)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("stopping WAL sender %d of standby %s: %w", pid, c.name, err)
	}
	c.log.Info("replication to the standby stalled", "standby", c.name, "walsender", pid)
	return func() error {
		// The primary may be gone with it by now.
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("resuming WAL sender %d of standby %s: %w", pid, c.name, err)
		}
		return nil
	}, nil
}

// Promote makes standby c a primary (pg_promote) and waits until it takes
// writes. Its slot on the old primary stays there.
func (c *Cluster) Promote(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("promoting postgres: cluster already stopped")
	}
	start := time.Now()
	var promoted bool
	if err := c.queryRow(ctx, "postgres", "select pg_promote(true, $1)", []any{int(readyTimeout.Seconds())}, &promoted); err != nil {
		return fmt.Errorf("promoting standby %s: %w", c.name, err)
	}
	if !promoted {
		return fmt.Errorf("promoting standby %s: not promoted within %s", c.name, readyTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		var readOnly string
		err := c.queryRow(ctx, "postgres", "show transaction_read_only", nil, &readOnly)
		if err == nil && readOnly == "off" {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for promoted standby %s to take writes: %w (last error: %v)", c.name, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
	c.primary = nil
	c.log.Info("standby promoted", "standby", c.name, "port", c.port, "took", time.Since(start))
	return nil
}

// Kill ends the server as a crash or a lost machine would: every process
// of it stops (SIGSTOP) before any dies (SIGKILL), so none runs another
// instruction, and nothing it has not yet sent (to a standby, to a client)
// leaves it. Killing them one by one is not enough: a backend that sees
// the postmaster die before its own SIGKILL lands ends its wait for a
// synchronous standby and makes its commit visible, for a moment, to
// sessions still alive. (Nor is the process group: PostgreSQL puts each
// child in a session of its own.) Restart starts it again (with crash
// recovery); Stop removes its files.
func (c *Cluster) Kill(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped || c.proc == nil {
		return errors.New("killing postgres: cluster not running")
	}
	pid := c.proc.cmd.Process.Pid
	// The postmaster first, so it forks no child after the look below.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping postgres (pid %d): %w", pid, err)
	}
	procs := append([]int{pid}, children(pid)...)
	for _, p := range procs[1:] {
		_ = syscall.Kill(p, syscall.SIGSTOP) // ESRCH: it exited meanwhile
	}
	waitStopped(ctx, procs)
	for _, p := range procs {
		_ = syscall.Kill(p, syscall.SIGKILL) // ESRCH: it exited meanwhile
	}
	select {
	case <-c.proc.done:
	case <-ctx.Done():
		return fmt.Errorf("waiting for killed postgres (pid %d) to exit: %w", pid, ctx.Err())
	}
	c.log.Info("postgres killed", "port", c.port, "processes", len(procs))
	return nil
}

// procStat reads /proc/<pid>/stat ("pid (comm) state ppid ..."): the
// fields after comm, which may hold spaces and parentheses.
func procStat(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil // gone, or no /proc
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// children returns the pids of ppid's child processes, from /proc.
func children(ppid int) []int {
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil
	}
	var pids []int
	for _, d := range dirs {
		f := procStat(filepath.Base(d))
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitStopped waits, for at most a second, until none of pids runs: a
// signal lands when its process next runs.
func waitStopped(ctx context.Context, pids []int) {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		running := false
		for _, pid := range pids {
			f := procStat(strconv.Itoa(pid))
			if len(f) > 0 && f[0] != "T" && f[0] != "t" && f[0] != "Z" && f[0] != "X" {
				running = true
				break
			}
		}
		if !running {
			return
		}
		time.Sleep(time.Millisecond) // polling interval
	}
}

// queryRow runs sql with args on database db in a short-lived connection
// and scans its one row into dest.
func (c *Cluster) queryRow(ctx context.Context, db, sql string, args []any, dest ...any) error {
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// MultiHostConnString returns a URL connecting to dbname as "postgres" on
// any of clusters, to whichever takes writes (target_session_attrs=
// read-write), as a client configured for failover would.
func MultiHostConnString(dbname string, clusters ...*Cluster) string {
	hosts := make([]string, len(clusters))
	for i, c := range clusters {
		hosts[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     strings.Join(hosts, ","),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable&target_session_attrs=read-write",
	}
	return u.String()
}

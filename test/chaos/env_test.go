package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/test/chaos/netfault"
	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
)

// Timeouts. opTimeout bounds one client operation, so that a fault makes
// it Unknown rather than a hang; the others bound waits for conditions that
// should hold long before.
const (
	opTimeout      = 3 * time.Second
	readyTimeout   = 60 * time.Second // cp ready again after a restart of anything
	drainTimeout   = 90 * time.Second // every watcher caught up after the faults
	progressPeriod = 250 * time.Millisecond
	etcdCloseWait  = 10 * time.Second // the etcd client's Close (closeEtcd)
)

// env is one history's world: a private cluster, the proxy in front of it,
// a cp behind the proxy, and the clients of each API.
//
// Who goes through the proxy: cp, the SQL clients and the Go hub (so a cut
// or a stall reaches them all). The harness's own work (migrate, the audit,
// faults, the final reads of the audit) connects directly.
//
// A history with a failover in its schedule has a synchronous standby too,
// behind a proxy of its own, and everything that goes through a proxy
// names both (target_session_attrs=read-write), as a client set up for
// failover does. The failover kills the primary and promotes the standby;
// pg and admin are the new primary's from then on. Only the faulter, and
// the harness once the faults are over, use them.
type env struct {
	pg      *pgcluster.Cluster
	standby *pgcluster.Cluster // nil without one, or once promoted
	direct  string             // PostgreSQL, directly
	proxies []*netfault.Proxy  // in front of the primary, then the standby
	viaPx   string             // PostgreSQL through the proxies
	slot    string

	admin *pgxpool.Pool // direct
	sql   *pgxpool.Pool // through the proxy
	cp    *cpProc
	hub   *walwatch.Client
	etcd  *clientv3.Client
	http  *http.Client
}

// database is the history's database.
const database = "chaos"

// auditSQL copies every row ever inserted into walwatch.kv into
// chaos.audit, where compaction, which deletes from walwatch.kv, cannot
// hide it. A filler's insert that meets a row (ON CONFLICT DO NOTHING)
// inserts nothing and fires nothing; a rolled-back insert goes with its
// copy.
const auditSQL = `
create schema chaos;
create table chaos.audit (like walwatch.kv);
create function chaos.audit_row() returns trigger language plpgsql as $$
begin
    insert into chaos.audit select new.*;
    return null;
end
$$;
create trigger chaos_audit after insert on walwatch.kv for each row execute function chaos.audit_row();
`

func newEnv(t *testing.T, ctx context.Context, withStandby, keyspaceCopy bool) *env {
	t.Helper()
	dataDir, err := os.MkdirTemp("", "walwatch-chaos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dataDir) })
	e := &env{slot: "chaos_cp"}
	e.pg = pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir})
	e.direct, err = e.pg.CreateDatabase(ctx, database)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, binary, "--postgres", e.direct, "migrate").CombinedOutput(); err != nil {
		t.Fatalf("walwatch migrate: %v\n%s", err, out)
	}
	e.admin, err = pgxpool.New(ctx, e.direct)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	t.Cleanup(e.admin.Close)
	if _, err := e.admin.Exec(ctx, auditSQL); err != nil {
		t.Fatalf("install the audit trigger: %v", err)
	}

	servers := []*pgcluster.Cluster{e.pg}
	if withStandby {
		// After the audit trigger, which it copies with everything else.
		e.standby = pgtest.StartStandby(t, e.pg, pgcluster.StandbyOptions{Synchronous: true})
		servers = append(servers, e.standby)
	}
	var hosts []string
	for _, pg := range servers {
		px, err := netfault.Listen(net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = px.Close() })
		e.proxies = append(e.proxies, px)
		hosts = append(hosts, px.Addr())
	}
	u, err := url.Parse(e.direct)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = strings.Join(hosts, ",")
	if withStandby {
		q := u.Query()
		q.Set("target_session_attrs", "read-write")
		u.RawQuery = q.Encode()
	}
	e.viaPx = u.String()

	cfg, err := pgxpool.ParseConfig(e.viaPx)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	cfg.ConnConfig.ConnectTimeout = opTimeout
	e.sql, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect to PostgreSQL through the proxy: %v", err)
	}
	t.Cleanup(e.sql.Close)

	e.cp = startCP(t, ctx, e.viaPx, e.slot, keyspaceCopy)

	e.hub, err = walwatch.Open(ctx, e.viaPx, walwatch.WithConfig(walwatch.Config{
		Hub: replication.Config{ProgressInterval: progressPeriod},
	}))
	if err != nil {
		t.Fatalf("open the Go hub: %v", err)
	}
	t.Cleanup(func() { _ = e.hub.Close() })

	e.etcd, err = clientv3.New(clientv3.Config{
		Endpoints:   []string{e.cp.etcdAddr},
		DialTimeout: opTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { closeEtcd(t, e.etcd) })
	e.http = &http.Client{Timeout: opTimeout}
	return e
}

// closeEtcd closes the etcd client, or leaves it behind after
// etcdCloseWait: its Close can block for ever. It did once, after a
// history whose cp had been cut off: Close waited for the watch stream's
// goroutine, which waited for it in turn, to take one of the substreams
// closing (etcd's client v3.7.3, watch.go). The history was checked by
// then; a client left behind costs the test nothing.
func closeEtcd(t *testing.T, c *clientv3.Client) {
	done := make(chan struct{})
	go func() {
		_ = c.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(etcdCloseWait):
		t.Logf("the etcd client's Close had not returned after %v; left behind", etcdCloseWait)
	}
}

// ---- cp ----

// cpProc is `walwatch cp`, restarted on the same addresses after a kill.
type cpProc struct {
	args     []string
	httpAddr string
	etcdAddr string
	out      *logs.Buffer // every run's output, in order

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

func startCP(t *testing.T, ctx context.Context, pg, slot string, keyspaceCopy bool) *cpProc {
	t.Helper()
	for attempt := 0; ; attempt++ {
		c := &cpProc{httpAddr: pgtest.FreeAddr(t), etcdAddr: pgtest.FreeAddr(t), out: &logs.Buffer{}}
		c.args = []string{"--postgres", pg, "cp", "--listen", c.httpAddr, "--etcd-listen", c.etcdAddr, "--slot", slot,
			"--progress-interval", progressPeriod.String(), "--etcd-progress-interval", progressPeriod.String()}
		if keyspaceCopy {
			c.args = append(c.args, "--keyspace-copy")
		}
		if err := c.start(); err != nil {
			t.Fatal(err)
		}
		err := c.waitReady(ctx)
		if err == nil {
			t.Cleanup(func() {
				c.stop()
				if t.Failed() {
					t.Logf("---- cp output (last 20000 bytes) ----\n%s", tail(c.out.String(), 20000))
				}
			})
			return c
		}
		c.kill()
		if !strings.Contains(c.out.String(), "address already in use") || attempt == 5 {
			t.Fatalf("cp did not start: %v\n%s", err, c.out.String())
		}
	}
}

func (c *cpProc) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd := exec.Command(binary, c.args...)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start cp: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	c.cmd, c.done = cmd, done
	return nil
}

func (c *cpProc) current() (*exec.Cmd, chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmd, c.done
}

// kill sends SIGKILL and waits for the process to end.
func (c *cpProc) kill() {
	cmd, done := c.current()
	_ = cmd.Process.Kill()
	<-done
}

// stop ends cp with SIGTERM, or SIGKILL if it takes too long.
func (c *cpProc) stop() {
	cmd, done := c.current()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.kill()
	}
}

// restart starts cp again on its addresses once the last run has ended,
// and waits until it is ready.
func (c *cpProc) restart(ctx context.Context) error {
	_, done := c.current()
	<-done
	if err := c.start(); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// waitReady waits until /readyz answers 200, or cp exits.
func (c *cpProc) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	_, done := c.current()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.httpAddr+"/readyz", nil)
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			return errors.New("cp exited before it was ready")
		case <-ctx.Done():
			return fmt.Errorf("cp not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// cut resets every connection through the proxies.
func (e *env) cut() {
	for _, px := range e.proxies {
		px.Cut()
	}
}

// blackhole stops forwarding through every proxy until restore.
func (e *env) blackhole() {
	for _, px := range e.proxies {
		px.Blackhole()
	}
}

func (e *env) restore() {
	for _, px := range e.proxies {
		px.Restore()
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

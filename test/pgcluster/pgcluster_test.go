package pgcluster_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connecting to %s: %v", connString, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(t.Context(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func execSQL(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestFindBinaries(t *testing.T) {
	dir, err := pgcluster.FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "postgres", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinaries returned %s without %s: %v", dir, name, err)
		}
	}
}

func TestNewDatabaseQuery(t *testing.T) {
	t.Parallel()
	conn := connect(t, pgtest.NewDatabase(t))
	var sum int
	if err := conn.QueryRow(t.Context(), "SELECT $1::int + 1", 41).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if sum != 42 {
		t.Errorf("got %d, want 42", sum)
	}
	if db := queryString(t, conn, "SELECT current_database()"); !strings.HasPrefix(db, "testnewdatabasequery_") {
		t.Errorf("current_database() = %q, want a name derived from the test", db)
	}
}

func TestSocketConnString(t *testing.T) {
	t.Parallel()
	tcp := connect(t, pgtest.NewDatabase(t))
	db := queryString(t, tcp, "SELECT current_database()")
	unix := connect(t, pgtest.Shared(t).SocketConnString(db))
	if got := queryString(t, unix, "SELECT current_database()"); got != db {
		t.Errorf("through the socket: database %q, want %q", got, db)
	}
	// The server reports no address for a Unix socket connection.
	for conn, want := range map[*pgx.Conn]string{tcp: "127.0.0.1/32", unix: "none"} {
		if got := queryString(t, conn, "SELECT coalesce(inet_client_addr()::text, 'none')"); got != want {
			t.Errorf("client address %q, want %q", got, want)
		}
	}
}

func TestSharedServerSettings(t *testing.T) {
	t.Parallel()
	conn := connect(t, pgtest.NewDatabase(t))
	for name, want := range map[string]string{
		"wal_level":             "logical",
		"max_replication_slots": "32",
		"max_wal_senders":       "32",
		"max_connections":       "300",
		"fsync":                 "on",
	} {
		if got := queryString(t, conn, "SHOW "+name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestDatabasesAreIsolated(t *testing.T) {
	t.Parallel()
	urlA, urlB := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	if urlA == urlB {
		t.Fatalf("two NewDatabase calls returned the same URL %s", urlA)
	}
	a, b := connect(t, urlA), connect(t, urlB)
	if dbA, dbB := queryString(t, a, "SELECT current_database()"), queryString(t, b, "SELECT current_database()"); dbA == dbB {
		t.Fatalf("both connections are to database %s", dbA)
	}
	execSQL(t, a, "CREATE TABLE only_in_a (id int)")
	if got := queryString(t, b, "SELECT coalesce(to_regclass('only_in_a')::text, 'missing')"); got != "missing" {
		t.Errorf("table created in A is visible in B as %s", got)
	}
}

func TestDropDatabaseOnCleanup(t *testing.T) {
	t.Parallel()
	var name string
	outer := t
	t.Run("inner", func(t *testing.T) {
		// Closed only by the outer test, so the drop must use WITH (FORCE).
		conn, err := pgx.Connect(t.Context(), pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		outer.Cleanup(func() { _ = conn.Close(context.Background()) })
		name = queryString(t, conn, "SELECT current_database()")
	})
	conn := connect(t, pgtest.Shared(t).ConnString("postgres"))
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %s still exists after its test ended", name)
	}
}

func TestPrivateSettings(t *testing.T) {
	t.Parallel()
	c := pgtest.StartPrivate(t, pgcluster.Options{
		Settings: map[string]string{"wal_sender_timeout": "3s"},
	})
	if c.Port() == pgtest.Shared(t).Port() {
		t.Errorf("private cluster shares port %d with the shared cluster", c.Port())
	}
	conn := connect(t, c.ConnString("postgres"))
	if got := queryString(t, conn, "SHOW wal_sender_timeout"); got != "3s" {
		t.Errorf("wal_sender_timeout = %q, want 3s", got)
	}
	if got := queryString(t, conn, "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical (defaults must survive extra settings)", got)
	}
}

func TestPortSettingRejected(t *testing.T) {
	_, err := pgcluster.Start(t.Context(), pgcluster.Options{Settings: map[string]string{"port": "5432"}})
	if err == nil || !strings.Contains(err.Error(), "Options.Port") {
		t.Fatalf("Start with Settings[port]: err = %v, want one pointing to Options.Port", err)
	}
}

func TestRestartKeepsDataAndPort(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgcluster.StopMode{pgcluster.StopFast, pgcluster.StopImmediate} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			c := pgtest.StartPrivate(t, pgcluster.Options{})
			port := c.Port()
			url, err := c.CreateDatabase(t.Context(), "keep me")
			if err != nil {
				t.Fatal(err)
			}
			before := connect(t, url)
			execSQL(t, before, "CREATE TABLE t (id int)")
			execSQL(t, before, "INSERT INTO t SELECT generate_series(1, 1000)")
			started := queryString(t, before, "SELECT pg_postmaster_start_time()::text")

			if err := c.Restart(t.Context(), mode); err != nil {
				t.Fatal(err)
			}
			if c.Port() != port {
				t.Errorf("port changed from %d to %d", port, c.Port())
			}
			if err := before.Ping(t.Context()); err == nil {
				t.Error("connection from before the restart still works; was the server restarted?")
			}

			after := connect(t, url)
			var n int
			if err := after.QueryRow(t.Context(), "SELECT count(*) FROM t").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1000 {
				t.Errorf("after restart t has %d rows, want 1000", n)
			}
			if got := queryString(t, after, "SELECT pg_postmaster_start_time()::text"); got == started {
				t.Errorf("postmaster start time unchanged (%s); was the server restarted?", got)
			}
		})
	}
}

func TestStopRemovesTempDir(t *testing.T) {
	t.Parallel()
	c, err := pgcluster.Start(t.Context(), pgcluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Dir(c.DataDir())
	if _, err := os.Stat(filepath.Join(c.DataDir(), "PG_VERSION")); err != nil {
		t.Fatalf("data dir not initialised: %v", err)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still there after Stop (stat err %v)", tmp, err)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.Restart(t.Context(), pgcluster.StopFast); err == nil {
		t.Error("Restart after Stop succeeded")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, c.ConnString("postgres")); err == nil {
		_ = conn.Close(ctx)
		t.Error("server still accepts connections after Stop")
	}
}

func TestDataDirReuse(t *testing.T) {
	t.Parallel()
	// Not t.TempDir(): as root its parent is mode 0700, which the server
	// user cannot traverse (see TestDataDirUnreachable). os.TempDir() can.
	dataDir, err := os.MkdirTemp("", "pgcluster-reuse-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dataDir) })

	first := pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir})
	if first.DataDir() != dataDir {
		t.Errorf("DataDir() = %s, want %s", first.DataDir(), dataDir)
	}
	conn := connect(t, first.ConnString("postgres"))
	execSQL(t, conn, "CREATE TABLE survivor (note text)")
	execSQL(t, conn, "INSERT INTO survivor VALUES ('still here')")
	_ = conn.Close(t.Context())
	if err := first.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
		t.Fatalf("Stop removed or damaged the caller's data dir: %v", err)
	}

	second := pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir})
	conn = connect(t, second.ConnString("postgres"))
	if got := queryString(t, conn, "SELECT note FROM survivor"); got != "still here" {
		t.Errorf("survivor.note = %q, want %q", got, "still here")
	}
}

func TestDataDirUnreachable(t *testing.T) {
	t.Parallel()
	// t.TempDir() is below a 0700 root-owned dir: as root, Start must say
	// so up front; as anyone else it is simply usable.
	dataDir := filepath.Join(t.TempDir(), "data")
	c, err := pgcluster.Start(t.Context(), pgcluster.Options{DataDir: dataDir})
	if os.Geteuid() == 0 {
		if err == nil {
			_ = c.Stop(t.Context())
			t.Fatal("Start as root with a data dir the server user cannot reach succeeded")
		}
		if !strings.Contains(err.Error(), "cannot reach") {
			t.Errorf("error does not explain the permission problem: %v", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

package replication_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TestSlotSnapshotBeforeCommitRecorded builds, step by step, the interleaving
// that lost writes under the fault tests: a new slot's exported snapshot
// counts a put as committed once its commit record is flushed and decoded,
// while the put's backend has not yet marked it committed in pg_xact. A
// table read in that snapshot then took the put's row for one of an aborted
// transaction and marked it so for good: the put, which its writer was told
// had committed, was gone from the table, the hub filled its revision, and a
// persistent slot (which decodes the WAL) delivered a write the table did not
// have. The hub must wait for pg_xact before it reads.
//
// The put is held in that window by stopping its backend (SIGSTOP) while it
// waits for another commit's WAL flush, which commit_delay holds open; two
// transactions that hold transaction IDs pace the slot's snapshot builder, so
// that it decodes the put's commit after its first consistent step and
// reaches its consistent point while the put is still stopped.
func TestSlotSnapshotBeforeCommitRecorded(t *testing.T) {
	_, dbURL := pgtest.PrivateDatabase(t, pgcluster.Options{Settings: map[string]string{"autovacuum": "off"}})
	e := newEnvAt(t, dbURL)
	ctx := context.Background()
	before := e.put(t, "/a/before", "x")

	// The builder starts at a running-transactions record listing b1 and
	// waits for it; the next record lists b2 (newer than the first record),
	// which takes the builder to its full snapshot, and it waits for b2.
	b1, b1xid := beginWithXID(t, dbURL)
	log, logs := hubLogger(t, "temporary")
	h, err := replication.New(replication.Config{Pool: e.pool, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	hubCtx, stopHub := context.WithCancel(ctx)
	hubDone := make(chan error, 1)
	go func() { hubDone <- h.Run(hubCtx) }()
	t.Cleanup(func() {
		stopHub()
		if err := <-hubDone; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	waitXIDWaiter(t, e, b1xid)
	b2, b2xid := beginWithXID(t, dbURL)
	commit(t, b1)
	waitXIDWaiter(t, e, b2xid)

	// A put whose transaction ID is newer than that second record: its
	// commit is decoded and counted while the builder waits for b2. Stop its
	// backend after its commit record is written, while it waits for the WAL
	// flush that another commit's commit_delay holds; that flush writes its
	// record too.
	var (
		w         *pgx.Conn
		wPID      uint32
		wKey      string
		rev       int64
		wCommit   <-chan error
		lFlushed  <-chan error
		stoppedAt int
	)
	for attempt := 0; stoppedAt == 0; attempt++ {
		if attempt == 5 {
			t.Fatal("no put stopped between its commit's WAL flush and pg_xact in 5 attempts")
		}
		w = connect(t, dbURL)
		wPID = w.PgConn().PID()
		if _, err := w.Exec(ctx, "begin"); err != nil {
			t.Fatal(err)
		}
		wKey = fmt.Sprintf("/a/held%d", attempt)
		if err := w.QueryRow(ctx, "select walwatch.put($1, 'w')", wKey).Scan(&rev); err != nil {
			t.Fatal(err)
		}
		delaying, flushed := delayedFlush(t, e, dbURL, attempt)
		if !delaying {
			commit(t, w) // a revision held open would hold the hub back
			continue
		}
		lFlushed = flushed
		wCommit = commitAsync(t, w)
		var (
			flushing bool
			early    error
		)
		wait.For(t, "the put's commit waits for the WAL flush", func() bool {
			select {
			case early = <-wCommit:
				return true // the flush was over before the put got there
			default:
			}
			flushing = backendWaits(t, e, wPID, "LWLock", "WALWrite") // for the lock the delayed commit holds
			return flushing
		})
		if !flushing {
			if early != nil {
				t.Fatal(early)
			}
			continue
		}
		if err := syscall.Kill(int(wPID), syscall.SIGSTOP); err != nil {
			t.Fatalf("stop the put's backend %d: %v", wPID, err)
		}
		t.Cleanup(func() { _ = syscall.Kill(int(wPID), syscall.SIGCONT) })
		stoppedAt = attempt + 1
	}
	// The delayed commit's flush wrote the put's commit record too: it had
	// been written before the delay ended.
	if err := result(t, "the delayed commit", lFlushed); err != nil {
		t.Fatalf("delayed commit: %v", err)
	}
	t.Logf("put at revision %d stopped before pg_xact (attempt %d)", rev, stoppedAt)

	// With b2 gone the builder's next record lists only the stopped put: the
	// consistent point. The slot's snapshot counts the put as committed.
	commit(t, b2)
	const waiting = "waiting for transactions the slot snapshot counts as committed"
	wait.For(t, "the hub reads the table, or waits to", func() bool {
		select {
		case <-h.Ready():
			return true
		default:
		}
		return len(logs.Lines(waiting)) > 0
	})
	if err := syscall.Kill(int(wPID), syscall.SIGCONT); err != nil {
		t.Fatalf("continue the put's backend %d: %v", wPID, err)
	}
	if err := result(t, "the put's commit", wCommit); err != nil {
		t.Fatalf("the put's commit: %v", err)
	}
	after := e.put(t, "/a/after", "y")
	waitRevision(t, h, after)

	// The put told its writer it committed at rev: the table must have it.
	var key []byte
	if err := e.pool.QueryRow(ctx, "select key from walwatch.kv where revision = $1 and sub = 0", rev).Scan(&key); err != nil {
		t.Fatalf("revision %d: %v", rev, err)
	}
	if string(key) != wKey {
		t.Fatalf("revision %d holds key %q, want %q: the committed put was lost from the table", rev, key, wKey)
	}
	want := e.history(t, store.Prefix([]byte("/a/")), before)
	got := collect(t, watch(t, h, replication.WatchRequest{Range: store.Prefix([]byte("/a/")), StartRevision: before}), len(want), wait.Timeout)
	compareHistory(t, "/a/ from before", got, want)
	if len(logs.Lines(waiting)) == 0 {
		t.Error("the hub read the table without waiting for the stopped put")
	}
}

// connect opens a connection of the test's own.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// commitAsync commits conn's transaction in a goroutine and returns the
// channel its result comes on. The test's end waits for it before it closes
// conn.
func commitAsync(t *testing.T, conn *pgx.Conn) <-chan error {
	t.Helper()
	result := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		_, err := conn.Exec(context.Background(), "commit")
		result <- err
	}()
	t.Cleanup(func() { <-finished })
	return result
}

// beginWithXID begins a transaction that holds a transaction ID, and returns
// the ID as pg_locks shows it.
func beginWithXID(t *testing.T, url string) (*pgx.Conn, string) {
	t.Helper()
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), "begin"); err != nil {
		t.Fatal(err)
	}
	var xid string
	if err := conn.QueryRow(context.Background(), "select pg_current_xact_id()::xid::text").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	return conn, xid
}

func commit(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), "commit"); err != nil {
		t.Fatal(err)
	}
}

// waitXIDWaiter waits until a session (the slot's snapshot builder) waits
// for transaction xid to end.
func waitXIDWaiter(t *testing.T, e *env, xid string) {
	t.Helper()
	wait.For(t, "a session waits for transaction "+xid, func() bool {
		var n int
		err := e.pool.QueryRow(context.Background(), `select count(*) from pg_locks
			where locktype = 'transactionid' and transactionid::text = $1 and not granted`, xid).Scan(&n)
		return err == nil && n > 0
	})
}

// backendWaits reports whether backend pid is running a statement and
// waits on the lock or event named kind/event now; "" for both asks that it
// waits on nothing pg_stat_activity names (PostgreSQL 15 names no wait for
// commit_delay).
func backendWaits(t *testing.T, e *env, pid uint32, kind, event string) bool {
	t.Helper()
	var n int
	err := e.pool.QueryRow(context.Background(), `select count(*) from pg_stat_activity
		where pid = $1 and state = 'active'
		  and coalesce(wait_event_type, '') = $2 and coalesce(wait_event, '') = $3`, int32(pid), kind, event).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// result waits for what comes on ch, failing the test after wait.Timeout.
func result(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(wait.Timeout):
		t.Fatalf("%s: no result within %v", what, wait.Timeout)
		return nil
	}
}

// delayedFlush starts a commit that holds the WAL write lock for
// commit_delay (100 ms, fsync being on) before it flushes, and reports
// whether it was seen in its commit, waiting on nothing named, which is
// that delay (a WAL flush by someone else may have spared it the delay, or
// it was seen too late), and the channel its commit's result comes on.
func delayedFlush(t *testing.T, e *env, url string, attempt int) (bool, <-chan error) {
	t.Helper()
	ctx := context.Background()
	l := connect(t, url)
	pid := l.PgConn().PID() // read before the commit's goroutine uses l
	for _, q := range []string{"set commit_delay = 100000", "set commit_siblings = 0", "begin"} {
		if _, err := l.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Exec(ctx, "select walwatch.put($1, 'l')", fmt.Sprintf("/b/leader%d", attempt)); err != nil {
		t.Fatal(err)
	}
	done := commitAsync(t, l)
	var delaying bool
	wait.For(t, "a commit delays its WAL flush", func() bool {
		if len(done) > 0 {
			return true
		}
		delaying = backendWaits(t, e, pid, "", "")
		return delaying
	})
	return delaying, done
}

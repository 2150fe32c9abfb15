package expiry_test

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/expiry"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// newPool returns a pool on a fresh, migrated database.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := sql.Migrate(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// duty is one process's part in the duty.
type duty struct {
	stop    context.CancelFunc
	done    chan struct{}
	expired atomic.Int64 // leases this one revoked
}

func startDuty(t *testing.T, pool *pgxpool.Pool) *duty {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &duty{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		expiry.Run(ctx, expiry.Config{ //nolint:errcheck // nil when ctx ends
			Pool: pool, Retry: 50 * time.Millisecond, Interval: 20 * time.Millisecond,
			Expired: func(id, rev, deleted int64) { d.expired.Add(1) },
		})
	}()
	t.Cleanup(func() { d.stop(); <-d.done })
	return d
}

// holder returns the pid of the session that holds the duty, 0 if none.
func holder(t *testing.T, pool *pgxpool.Pool) int32 {
	t.Helper()
	var pid int32
	err := pool.QueryRow(t.Context(), `select coalesce(max(pid), 0) from pg_locks
		where locktype = 'advisory' and granted and classid = $1 and objid = $2 and objsubid = 1`,
		uint32(0x77776c65), uint32(0x61736573)).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// newHolder waits until a session other than old holds the duty, and has
// extended the leases as it takes it (so a lease lapsed after this stays
// lapsed), and returns its pid.
func newHolder(t *testing.T, pool *pgxpool.Pool, old int32) int32 {
	t.Helper()
	var pid int32
	wait.For(t, "a new holder of the duty", func() bool {
		pid = holder(t, pool)
		return pid != 0 && pid != old
	})
	// It extends the leases right after taking the lock, then expires the
	// lapsed ones: once its session has sent the expiry's statement, the
	// extension is over. Idle after the extension's statement is not
	// enough: pgx prepares it first, and the session is idle with its
	// text between the two, when a lease lapsed would still be extended.
	wait.For(t, "the new holder to have extended the leases", func() bool {
		var expiring bool
		err := pool.QueryRow(t.Context(), `select query ~ 'walwatch\.expire_leases'
			from pg_stat_activity where pid = $1`, pid).Scan(&expiring)
		return err == nil && expiring
	})
	return pid
}

// lapse moves lease id's deadline into the past, as time would.
func lapse(t *testing.T, pool *pgxpool.Pool, id int64) {
	t.Helper()
	if _, err := pool.Exec(t.Context(), "update walwatch.lease set deadline = clock_timestamp() - interval '1 second' where id = $1", id); err != nil {
		t.Fatal(err)
	}
}

// TestOneHolderExpiresOnce runs the duty in three processes (pools) on one
// database: every lapsed lease is revoked once, its keys in one revision,
// by whichever holds the duty; when the holder stops, another takes over.
func TestOneHolderExpiresOnce(t *testing.T) {
	first := newPool(t)
	url := first.Config().ConnString()
	s := store.New(first, store.Limits{})
	var duties []*duty
	for range 3 {
		p, err := pgxpool.New(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		duties = append(duties, startDuty(t, p))
	}
	total := func() (n int64) {
		for _, d := range duties {
			n += d.expired.Load()
		}
		return n
	}
	expireOne := func(want int64) {
		t.Helper()
		l, err := s.Grant(t.Context(), 60, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"/a", "/b", "/c"} {
			if _, err := s.PutLease(t.Context(), []byte(k), []byte("1"), l.ID); err != nil {
				t.Fatal(err)
			}
		}
		before, _, _ := s.Revision(t.Context())
		lapse(t, first, l.ID)
		wait.For(t, "the lapsed lease to be revoked", func() bool { return total() == want })
		after, _, _ := s.Revision(t.Context())
		if after != before+1 {
			t.Fatalf("revision went from %d to %d: a lease's keys go in one revision", before, after)
		}
	}
	first1 := newHolder(t, first, 0)
	expireOne(1)
	var held int
	for i, d := range duties {
		if d.expired.Load() == 1 {
			held = i
		}
	}
	// The holder stops; another takes the duty and expires the next.
	duties[held].stop()
	<-duties[held].done
	newHolder(t, first, first1)
	expireOne(2)
	if duties[held].expired.Load() != 1 {
		t.Fatal("the stopped holder expired a lease")
	}
}

// TestTakeoverExtendsLeases: the new holder gives every lease its full TTL,
// so a lease that lapsed while nobody held the duty (its owner's keep-alives
// may have gone to a process that had no way to know) survives the change.
func TestTakeoverExtendsLeases(t *testing.T) {
	pool := newPool(t)
	s := store.New(pool, store.Limits{})
	l, err := s.Grant(t.Context(), 30, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutLease(t.Context(), []byte("/k"), []byte("1"), l.ID); err != nil {
		t.Fatal(err)
	}
	lapse(t, pool, l.ID)
	d := startDuty(t, pool)
	var remaining int64
	wait.For(t, "the new holder to extend the lease", func() bool {
		got, ok, err := s.TimeToLive(t.Context(), l.ID, false)
		if err != nil || !ok {
			t.Fatalf("lease gone: %v %v", ok, err)
		}
		remaining = got.Remaining
		return remaining > 0
	})
	if remaining < 29 || d.expired.Load() != 0 {
		t.Fatalf("after takeover: %d s left, %d expired; want the full 30 and none", remaining, d.expired.Load())
	}
}

// TestDutySurvivesOutage: a holder whose connection is killed loses the
// duty and takes it again.
func TestDutySurvivesOutage(t *testing.T) {
	pool := newPool(t)
	s := store.New(pool, store.Limits{})
	d := startDuty(t, pool)
	pid := newHolder(t, pool, 0)
	if _, err := pool.Exec(t.Context(), "select pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	newHolder(t, pool, pid)
	l, err := s.Grant(t.Context(), 60, 0)
	if err != nil {
		t.Fatal(err)
	}
	lapse(t, pool, l.ID)
	wait.For(t, "the lease to expire after the holder's connection was killed", func() bool { return d.expired.Load() == 1 })
}

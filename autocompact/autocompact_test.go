package autocompact_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/autocompact"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		mode, retention string
		want            autocompact.Policy
		interval        time.Duration
		bad             bool
	}{
		{mode: "periodic", retention: "0", want: autocompact.Policy{Mode: autocompact.Periodic}},
		{mode: "periodic", retention: "1h", want: autocompact.Policy{Mode: autocompact.Periodic, Age: time.Hour}, interval: time.Hour},
		{mode: "periodic", retention: "72h", want: autocompact.Policy{Mode: autocompact.Periodic, Age: 72 * time.Hour}, interval: time.Hour},
		{mode: "periodic", retention: "30m", want: autocompact.Policy{Mode: autocompact.Periodic, Age: 30 * time.Minute}, interval: 30 * time.Minute},
		{mode: "periodic", retention: "2", want: autocompact.Policy{Mode: autocompact.Periodic, Age: 2 * time.Hour}, interval: time.Hour},
		{mode: "revision", retention: "0", want: autocompact.Policy{Mode: autocompact.Revision}},
		{mode: "revision", retention: "1000", want: autocompact.Policy{Mode: autocompact.Revision, Revisions: 1000}, interval: 5 * time.Minute},
		{mode: "periodic", retention: "-1h", bad: true},
		{mode: "periodic", retention: "-1", bad: true},
		{mode: "periodic", retention: "soon", bad: true},
		{mode: "periodic", retention: "99999999999", bad: true},
		{mode: "revision", retention: "1h", bad: true},
		{mode: "revision", retention: "-5", bad: true},
		{mode: "weekly", retention: "1", bad: true},
	} {
		t.Run(c.mode+"/"+c.retention, func(t *testing.T) {
			got, err := autocompact.ParsePolicy(c.mode, c.retention)
			if c.bad {
				if !errors.Is(err, autocompact.ErrBadPolicy) {
					t.Fatalf("got %+v, %v; want ErrBadPolicy", got, err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
			if got.Off() != (c.interval == 0) {
				t.Errorf("Off() = %v", got.Off())
			}
			if c.interval != 0 && got.Interval() != c.interval {
				t.Errorf("Interval() = %v, want %v", got.Interval(), c.interval)
			}
		})
	}
}

// newStore returns a store and its pool on a fresh, migrated database.
func newStore(t *testing.T) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := sql.Migrate(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	return store.New(pool, store.Limits{}), pool
}

// compactor is one process's part in the duty.
type compactor struct {
	stop context.CancelFunc
	done chan error
	reg  *prometheus.Registry
}

func start(t *testing.T, s *store.Store, pool *pgxpool.Pool, p autocompact.Policy) *compactor {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &compactor{stop: cancel, done: make(chan error, 1), reg: prometheus.NewRegistry()}
	cfg := autocompact.Config{
		Pool: pool, Store: s, Policy: p, Interval: 20 * time.Millisecond, Retry: 50 * time.Millisecond,
		Metrics: autocompact.NewMetrics(c.reg),
	}
	go func() { c.done <- autocompact.Run(ctx, cfg) }()
	t.Cleanup(func() {
		c.stop()
		if err := <-c.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

func (c *compactor) runs(t *testing.T, result string) float64 {
	t.Helper()
	mfs, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "walwatch_autocompact_runs_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no walwatch_autocompact_runs_total{result=%q}", result)
	return 0
}

func put(t *testing.T, s *store.Store, n int) int64 {
	t.Helper()
	var rev int64
	for i := range n {
		res, err := s.Put(t.Context(), []byte(fmt.Sprintf("/k%d", i%3)), []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		rev = res.Revision
	}
	return rev
}

func compacted(t *testing.T, s *store.Store) int64 {
	t.Helper()
	_, c, err := s.Revision(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Revision mode keeps the newest Revisions revisions below the current one.
func TestRevision(t *testing.T) {
	s, pool := newStore(t)
	last := put(t, s, 20)
	start(t, s, pool, autocompact.Policy{Mode: autocompact.Revision, Revisions: 5})
	wait.For(t, "compaction to the current revision less 5", func() bool { return compacted(t, s) == last-5 })
	last = put(t, s, 10)
	wait.For(t, "compaction to the new current revision less 5", func() bool { return compacted(t, s) == last-5 })
	if _, err := s.Range(t.Context(), store.RangeRequest{KeyRange: store.Key([]byte("/k0")), Revision: last - 5}); err != nil {
		t.Errorf("read at the compacted revision %d: %v", last-5, err)
	}
}

// Periodic mode keeps the history younger than its age: here none, so it
// compacts at the current revision once the writes are older than it.
func TestPeriodic(t *testing.T) {
	s, pool := newStore(t)
	last := put(t, s, 20)
	c := start(t, s, pool, autocompact.Policy{Mode: autocompact.Periodic, Age: time.Millisecond})
	wait.For(t, "compaction at the current revision", func() bool { return compacted(t, s) == last })
	wait.For(t, "a run that finds it compacted there already", func() bool { return c.runs(t, "nothing") > 0 })
	if n := c.runs(t, "error"); n != 0 {
		t.Errorf("%v runs failed", n)
	}
}

// Of two processes, one compacts; the other takes over when it stops.
func TestOneHolder(t *testing.T) {
	s, pool := newStore(t)
	put(t, s, 10)
	p := autocompact.Policy{Mode: autocompact.Revision, Revisions: 1}
	a := start(t, s, pool, p)
	b := start(t, s, pool, p)
	wait.For(t, "one of the two compacts", func() bool { return a.runs(t, "ok")+b.runs(t, "ok") > 0 })
	first, second := a, b
	if b.runs(t, "ok") > 0 {
		first, second = b, a
	}
	// The other tried the lock every 50 ms meanwhile; it must not hold it.
	before := put(t, s, 5)
	wait.For(t, "the holder compacts the new writes", func() bool { return compacted(t, s) == before-1 })
	if n := second.runs(t, "ok") + second.runs(t, "nothing") + second.runs(t, "error"); n != 0 {
		t.Fatalf("the process without the duty ran %v compactions", n)
	}
	first.stop()
	if err := <-first.done; err != nil {
		t.Fatal(err)
	}
	first.done <- nil // for its cleanup
	last := put(t, s, 5)
	wait.For(t, "the other takes the duty and compacts", func() bool { return compacted(t, s) == last-1 })
	if second.runs(t, "ok") == 0 {
		t.Error("the remaining process did not compact")
	}
}

// An off policy returns at once.
func TestOff(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		done <- autocompact.Run(t.Context(), autocompact.Config{Policy: autocompact.Policy{Mode: autocompact.Periodic}})
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

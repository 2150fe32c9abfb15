package walwatch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// openWithCopy opens a client keeping a keyspace copy and a second client
// on the same database without one, as another server would be, and waits
// until the copy is live.
func openWithCopy(t *testing.T) (withCopy, other *walwatch.Client) {
	t.Helper()
	c, url := open(t, walwatch.WithConfig(walwatch.Config{KeyspaceCopy: true}))
	ctx, cancel := context.WithTimeout(t.Context(), openTimeout)
	defer cancel()
	other, err := walwatch.Open(ctx, url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { other.Close() })
	wait.For(t, "keyspace copy live", c.KeyspaceCopy().Live)
	return c, other
}

// TestKeyspaceCopy checks that a read of one key from the copy answers what
// the store holds at the revision it answers at, at or above a write made
// just before it by this client or another.
func TestKeyspaceCopy(t *testing.T) {
	c, other := openWithCopy(t)
	ctx := t.Context()
	lease, err := other.Store().Grant(ctx, 60, 0)
	if err != nil {
		t.Fatal(err)
	}
	revOf := func(res store.PutResponse, err error) (int64, error) { return res.Revision, err }
	large := strings.Repeat("\x00v\xff", 100_000) // 300 kB, not UTF-8
	for _, tc := range []struct {
		name  string
		key   string
		write func() (int64, error)
		want  string // "" for no key
	}{
		{"put here", "/c/a", func() (int64, error) { return revOf(c.Put(ctx, []byte("/c/a"), []byte("1"))) }, "1"},
		{"put elsewhere", "/c/a", func() (int64, error) { return revOf(other.Put(ctx, []byte("/c/a"), []byte("2"))) }, "2"},
		{"another key written", "/c/a", func() (int64, error) { return revOf(other.Put(ctx, []byte("/c/b"), []byte("x"))) }, "2"},
		{"txn elsewhere", "/c/b", func() (int64, error) {
			res, err := other.Txn(ctx, store.TxnRequest{Then: []store.Op{
				store.OpPutKey([]byte("/c/b"), []byte("3")), store.OpDeleteRange(store.Key([]byte("/c/a"))),
			}})
			return res.Revision, err
		}, "3"},
		{"deleted", "/c/a", func() (int64, error) { return revOf(c.Put(ctx, []byte("/c/z"), nil)) }, ""},
		{"with a lease", "/c/l", func() (int64, error) {
			res, err := other.Txn(ctx, store.TxnRequest{Then: []store.Op{
				{Kind: store.OpPut, Range: store.Key([]byte("/c/l")), Value: []byte("4"), Lease: lease.ID},
			}})
			return res.Revision, err
		}, "4"},
		{"lease revoked", "/c/l", func() (int64, error) {
			l, err := other.Store().Grant(ctx, 60, 0)
			if err != nil {
				return 0, err
			}
			if _, err := other.Txn(ctx, store.TxnRequest{Then: []store.Op{
				{Kind: store.OpPut, Range: store.Key([]byte("/c/l")), Value: []byte("5"), Lease: l.ID},
			}}); err != nil {
				return 0, err
			}
			res, err := other.Store().Revoke(ctx, l.ID)
			return res.Revision, err
		}, ""},
		{"binary key, large value", "\x00\xff/c", func() (int64, error) {
			return revOf(other.Put(ctx, []byte("\x00\xff/c"), []byte(large)))
		}, large},
		{"delete elsewhere", "/c/b", func() (int64, error) {
			res, err := other.Delete(ctx, store.Key([]byte("/c/b")))
			return res.Revision, err
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Many rounds: most reads come before the hub has the write.
			for i := range 20 {
				rev, err := tc.write()
				if err != nil {
					t.Fatal(err)
				}
				served := c.KeyspaceCopy().Served()
				got, err := c.Get(ctx, store.Key([]byte(tc.key)))
				if err != nil {
					t.Fatal(err)
				}
				if c.KeyspaceCopy().Served() == served {
					t.Fatalf("round %d: the copy did not answer", i)
				}
				if got.Revision < rev {
					t.Fatalf("round %d: read at revision %d after a write at %d", i, got.Revision, rev)
				}
				if v := kvMap(got.KVs)[tc.key]; v != tc.want || (tc.want == "") != (got.Count == 0) {
					t.Fatalf("round %d: read %q (count %d), want %q", i, v, got.Count, tc.want)
				}
				want, err := c.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte(tc.key)), Revision: got.Revision})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.EqualFunc(got.KVs, want.KVs, sameKV) {
					t.Fatalf("round %d: copy answered %+v at revision %d, the store holds %+v", i, got.KVs, got.Revision, want.KVs)
				}
				count, err := c.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte(tc.key)), CountOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				if count.Count != got.Count || len(count.KVs) != 0 {
					t.Fatalf("round %d: count only answered %d and %d keys, want %d and none", i, count.Count, len(count.KVs), got.Count)
				}
			}
		})
	}
}

func sameKV(a, b store.KeyValue) bool {
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version && a.Lease == b.Lease
}

// TestKeyspaceCopyRanges checks every kind of read the copy answers
// against the store's answer to it, read through a client without a copy,
// over a history of puts, deletes, transactions and compactions: at the
// latest revision and at older ones, with limits, counts and without. Each
// round's reads begin once the copy holds the round's writes, so the copy
// must answer every range at an older revision that is not compacted: its
// history holds every version since it loaded.
func TestKeyspaceCopyRanges(t *testing.T) {
	c, other := openWithCopy(t)
	ctx := t.Context()
	rnd := rand.New(rand.NewPCG(1, 17))
	key := func() []byte {
		k := rnd.IntN(24)
		if k%5 == 0 {
			// Binary keys, ordered by their bytes as PostgreSQL's bytea is.
			return []byte(fmt.Sprintf("/k/\xff\x00%02d", k))
		}
		return []byte(fmt.Sprintf("/k/%02d", k))
	}
	var revs []int64 // every revision the test wrote
	write := func() {
		var (
			rev int64
			err error
		)
		switch n := rnd.IntN(10); {
		case n < 6:
			var res store.PutResponse
			res, err = other.Put(ctx, key(), []byte(fmt.Sprint("v", len(revs))))
			rev = res.Revision
		case n < 8:
			var res store.DeleteResponse
			res, err = other.Delete(ctx, store.Key(key()))
			rev = res.Revision
		case n < 9:
			var res store.DeleteResponse
			a, b := key(), key()
			if bytes.Compare(a, b) > 0 {
				a, b = b, a
			}
			res, err = other.Delete(ctx, store.KeyRange{Key: a, End: b})
			rev = res.Revision
		default:
			var res store.TxnResponse
			res, err = other.Txn(ctx, store.TxnRequest{Then: []store.Op{
				store.OpPutKey(key(), []byte("t")), store.OpPutKey([]byte("/k/99"), nil), store.OpDeleteRange(store.Key(key())),
			}})
			rev = res.Revision
		}
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	ranges := []func() store.KeyRange{
		func() store.KeyRange { return store.Key(key()) },
		func() store.KeyRange { return store.Prefix([]byte("/k/")) },
		func() store.KeyRange { return store.Prefix([]byte("/k/1")) },
		func() store.KeyRange { return store.Prefix([]byte("/k/\xff")) },
		func() store.KeyRange { return store.FromKey(key()) },
		func() store.KeyRange { return store.KeyRange{Key: key(), End: key()} }, // empty when End <= Key
		func() store.KeyRange { return store.Prefix([]byte("/none/")) },
	}
	var older, olderServed, compacted int
	for round := range 30 {
		for range 1 + rnd.IntN(8) {
			write()
		}
		if round%10 == 9 {
			// Reads below it must fail from the copy as from the store.
			if _, err := other.Compact(ctx, revs[len(revs)/2]); err != nil {
				t.Fatal(err)
			}
		}
		// A read of the latest revision waits until the copy holds it.
		served := c.KeyspaceCopy().Served()
		if _, err := c.Range(ctx, store.RangeRequest{KeyRange: store.Key([]byte("/k/00"))}); err != nil {
			t.Fatal(err)
		}
		if c.KeyspaceCopy().Served() == served {
			t.Fatalf("round %d: the copy did not answer at the latest revision", round)
		}
		for range 40 {
			req := store.RangeRequest{KeyRange: ranges[rnd.IntN(len(ranges))](), Limit: []int64{0, 1, 3, 100}[rnd.IntN(4)]}
			if rnd.IntN(3) > 0 {
				req.Revision = revs[rnd.IntN(len(revs))]
			}
			req.CountOnly = rnd.IntN(6) == 0
			req.NoCount = rnd.IntN(2) == 0
			served := c.KeyspaceCopy().Served()
			got, gotErr := c.Range(ctx, req)
			fromCopy := c.KeyspaceCopy().Served() > served
			want, err := other.Range(ctx, req)
			switch {
			case errors.Is(err, store.ErrCompacted) && errors.Is(gotErr, store.ErrCompacted):
				compacted++
				continue
			case err != nil || gotErr != nil:
				t.Fatalf("round %d: %+v: %v from the client with the copy (answered by it: %v), %v from the store", round, req, gotErr, fromCopy, err)
			}
			if req.Revision != 0 && !req.IsSingleKey() {
				older++
				if fromCopy {
					olderServed++
				}
			}
			if got.Revision != want.Revision || got.Current != want.Current || got.More != want.More ||
				got.Count != want.Count || !slices.EqualFunc(got.KVs, want.KVs, sameKV) {
				t.Fatalf("round %d: %+v (from the copy: %v)\ngot  %+v\nwant %+v", round, req, fromCopy, got, want)
			}
		}
	}
	if olderServed != older || older == 0 || compacted == 0 {
		t.Fatalf("the copy answered %d of %d ranges at older revisions, %d compacted; want every one, and some compacted", olderServed, older, compacted)
	}
	t.Logf("the copy answered %d of %d ranges at older revisions; %d were compacted", olderServed, older, compacted)
}

// TestKeyspaceCopyKeepsVisible writes through another client while nothing
// reads through the one with the copy: its hub must still check what it
// settled visible, so that the next read that waits for visibility checks
// a few revisions, not every one since the copy loaded.
func TestKeyspaceCopyKeepsVisible(t *testing.T) {
	c, other := openWithCopy(t)
	var last int64
	for i := range 20 {
		res, err := other.Put(t.Context(), []byte(fmt.Sprintf("/v/%d", i)), []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		last = res.Revision
	}
	wait.For(t, "the hub to check the puts visible with no read", func() bool { return c.Hub().Visible() >= last })
}

// TestKeyspaceCopyUnderWrites reads keys from the copy while another client
// writes them: every read must show at least the newest write acknowledged
// before it began, and one reader's revisions never go back.
func TestKeyspaceCopyUnderWrites(t *testing.T) {
	c, other := openWithCopy(t)
	const keys, writers, readers = 8, 4, 4
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	var acked [keys]atomic.Int64 // per key, the revision of its newest acknowledged write
	var wg sync.WaitGroup
	errs := make(chan error, writers+readers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k := (w + i) % keys
				res, err := other.Put(ctx, []byte(fmt.Sprintf("/u/%d", k)), []byte(fmt.Sprint(i)))
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("put: %w", err)
					}
					return
				}
				for prev := acked[k].Load(); prev < res.Revision && !acked[k].CompareAndSwap(prev, res.Revision); prev = acked[k].Load() {
				}
			}
		}()
	}
	var reads atomic.Int64
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last int64
			for ctx.Err() == nil {
				k := rand.IntN(keys)
				before := acked[k].Load()
				res, err := c.Get(ctx, store.Key([]byte(fmt.Sprintf("/u/%d", k))))
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("get: %w", err)
					} else if !errors.Is(err, context.DeadlineExceeded) {
						errs <- fmt.Errorf("get at the deadline: %w, want the deadline's error", err)
					}
					return
				}
				reads.Add(1)
				switch {
				case res.Revision < last:
					errs <- fmt.Errorf("read at revision %d after one at %d", res.Revision, last)
					return
				case before > 0 && (len(res.KVs) == 0 || res.KVs[0].ModRevision < before):
					errs <- fmt.Errorf("key %d read %+v after a write at %d was acknowledged", k, res.KVs, before)
					return
				}
				last = res.Revision
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if reads.Load() == 0 || c.KeyspaceCopy().Served() == 0 {
		t.Fatalf("%d reads, %d from the copy", reads.Load(), c.KeyspaceCopy().Served())
	}
	t.Logf("%d reads, %d from the copy", reads.Load(), c.KeyspaceCopy().Served())
}

// TestKeyspaceCopyWithoutPostgreSQL takes PostgreSQL away from a client
// that keeps a copy: after a crash and restart the copy answers again, and
// never with what a write acknowledged before the read replaced; with
// PostgreSQL taking no new connections, or gone, a read fails and the copy
// answers nothing.
func TestKeyspaceCopyWithoutPostgreSQL(t *testing.T) {
	cluster, url := pgtest.PrivateDatabase(t, pgcluster.Options{})
	ctx := t.Context()
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	c, err := walwatch.Open(octx, url, walwatch.WithMigrate(), walwatch.WithConfig(walwatch.Config{KeyspaceCopy: true}))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() }) // its error: PostgreSQL is gone by then
	cp := c.KeyspaceCopy()
	key := []byte("/r/a")
	if _, err := c.Put(ctx, key, []byte("1")); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "keyspace copy live", cp.Live)

	if err := cluster.Restart(ctx, pgcluster.StopImmediate); err != nil {
		t.Fatal(err)
	}
	// The pool's connections died with the server: a put may fail until
	// it has new ones.
	wait.For(t, "a put after the restart", func() bool {
		_, err := c.Put(ctx, key, []byte("2"))
		return err == nil
	})
	var known int64 // a revision the copy held, for a range at it below
	wait.For(t, "the copy answering after the restart", func() bool {
		served := cp.Served()
		res, err := c.Get(ctx, store.Key(key))
		if err != nil {
			return false // the store's or the copy's, while either recovers
		}
		known = res.Revision
		if v := kvMap(res.KVs)[string(key)]; v != "2" {
			t.Fatalf("read %q at revision %d after the put of \"2\" was acknowledged", v, res.Revision)
		}
		return cp.Served() > served
	})

	// The hub keeps its replication connection while the database takes no
	// new ones and the pool's are ended: the copy may still be streaming,
	// but it cannot read the current revision.
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	admin := connect(t, cluster.ConnString("postgres"))
	if _, err := admin.Exec(ctx, fmt.Sprintf("alter database %q with allow_connections false", cfg.Database)); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `select pg_terminate_backend(pid) from pg_stat_activity
		where datname = $1 and backend_type = 'client backend'`, cfg.Database); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		served := cp.Served()
		res, err := c.Get(ctx, store.Key(key))
		if err == nil || cp.Served() != served {
			t.Fatalf("read with no connection to PostgreSQL but the hub's: %+v, %v, answered by the copy: %v", res, err, cp.Served() != served)
		}
		t.Logf("read with no connection but the hub's (streaming %v): %v", c.Hub().Streaming(), err)
	}

	if err := cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	served := cp.Served()
	res, err := c.Get(ctx, store.Key(key))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("read with PostgreSQL stopped: %+v, %v; want store.ErrUnavailable", res, err)
	}
	// Ranges too, at the latest revision and at one the copy holds: the
	// latter's answer is in memory, but its statement cannot run.
	for _, rev := range []int64{0, known} {
		res, err := c.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/r/")), Revision: rev})
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("range at %d with PostgreSQL stopped: %+v, %v; want store.ErrUnavailable", rev, res, err)
		}
	}
	if cp.Served() != served {
		t.Fatalf("with PostgreSQL stopped the copy answered %d reads, want none", cp.Served()-served)
	}
}

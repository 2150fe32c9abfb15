package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walwatch/walwatch/store"
)

// BenchmarkPut measures puts over 10,000 keys at 1, 8 and 32 concurrent
// writers, each on its own connection, fsync on.
func BenchmarkPut(b *testing.B) {
	for _, clients := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			s, _ := newStore(b, store.Limits{})
			ctx := context.Background()
			value := []byte(`{"uri":"/get","upstream":"http://127.0.0.1:8080"}`)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range clients {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						if _, err := s.Put(ctx, fmt.Appendf(nil, "/bench/%05d", i%10000), value); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
}

// BenchmarkPutWorkers compares how many put batches may be in flight, one
// (the default) against two, at 8 and 32 writers over 10,000 keys and no
// watcher: one round of each per op, interleaved so drift on a shared
// machine falls on both. It reports each setting's median puts/s and
// transactions per put, and the ratio of one to two. What one buys a
// watcher under load, BenchmarkPutToEvent in replication shows. Run it
// with -benchtime Nx for N rounds.
func BenchmarkPutWorkers(b *testing.B) {
	const round = 2 * time.Second
	settings := []int{1, 2}
	value := []byte(`{"uri":"/get","upstream":"http://127.0.0.1:8080"}`)
	for _, clients := range []int{8, 32} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			_, pool := newStore(b, store.Limits{})
			// run puts from clients writers for d through a store allowing
			// workers batches in flight; it returns puts/s and the write
			// transactions per put.
			run := func(workers int, d time.Duration) (rate, txPerPut float64) {
				s := store.New(pool, store.Limits{})
				store.SetPutWorkers(s, workers)
				// The next transaction ID, without taking one: every batch
				// takes one, and the statistics views lag by up to a second.
				nextXID := func() (n int64) {
					if err := pool.QueryRow(context.Background(),
						"select pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&n); err != nil {
						b.Fatal(err)
					}
					return n
				}
				before := nextXID()
				n, rate := load(b, d, clients, func(i, j int) error {
					_, err := s.Put(context.Background(), fmt.Appendf(nil, "/bench/%05d", (i+j*clients)%10000), value)
					return err
				})
				return rate, float64(nextXID()-before) / float64(n)
			}
			rates := compareSettings(b, "workers", settings, [2]string{"puts/s", "tx/put"}, round, run)
			b.ReportMetric(rates[0]/rates[1], "ratio-1/2")
		})
	}
}

func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// BenchmarkKeepAlive renews 10,000 leases from 1 and 256 concurrent
// owners: the batcher puts the keep-alives that arrive together in one
// statement, so that 10,000 leases renewed every second can be priced.
func BenchmarkKeepAlive(b *testing.B) {
	s, pool := newStore(b, store.Limits{})
	ctx := context.Background()
	const leases = 10000
	if _, err := pool.Exec(ctx, "insert into walwatch.lease select g, 10, clock_timestamp() + interval '1 hour' from generate_series(1, $1) g", leases); err != nil {
		b.Fatal(err)
	}
	for _, owners := range []int{1, 256} {
		b.Run(fmt.Sprintf("owners=%d", owners), func(b *testing.B) {
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range owners {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						if ttl, err := s.KeepAlive(ctx, 1+i%leases); err != nil || ttl != 10 {
							b.Error(ttl, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "renewals/s")
		})
	}
}

// BenchmarkGetParts takes a single-key get at the latest revision apart, at
// 1 and 32 clients, each variant in turn per round (interleaved), over
// 10,000 keys: the store's Range (walwatch.range), a plain select of the
// key's newest row (the floor a get cannot beat), walwatch.read_revision
// alone (the revision check every read makes), both in one statement, and
// one plain statement that reads the compacted and current revisions for
// the caller to check (what a single-key get could be).
// It reports each variant's median gets/s and its ratio to the plain
// select. Run it with -benchtime Nx for N rounds.
func BenchmarkGetParts(b *testing.B) {
	s, pool := newStore(b, store.Limits{})
	ctx := context.Background()
	const keys = 10000
	if _, err := pool.Exec(ctx, `select count(walwatch.put(convert_to('/bench/' || lpad(i::text, 5, '0'), 'UTF8'), '\x76'::bytea))
		from generate_series(0, $1 - 1) i`, keys); err != nil {
		b.Fatal(err)
	}
	key := func(i int) []byte { return fmt.Appendf(nil, "/bench/%05d", i%keys) }
	variants := []struct {
		name string
		get  func(i int) error
	}{
		{"store", func(i int) error { _, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Key(key(i))}); return err }},
		{"plain", func(i int) error {
			var v []byte
			return pool.QueryRow(ctx, "select value from walwatch.kv where key = $1 order by revision desc limit 1", key(i)).Scan(&v)
		}},
		{"one-statement", func(i int) error {
			var (
				rev, create, mod, ver, lease int64
				v                            []byte
				tomb                         bool
			)
			return pool.QueryRow(ctx, `select r.rev, k.value, k.create_revision, k.revision, k.version, k.lease, k.tombstone
				  from walwatch.read_revision($2) r(rev)
				  join lateral (select * from walwatch.kv k where k.key = $1 and k.revision <= r.rev
				                 order by k.revision desc limit 1) k on true`, key(i), int64(0)).
				Scan(&rev, &v, &create, &mod, &ver, &lease, &tomb)
		}},
		{"sql-checks", func(i int) error {
			var (
				compacted, cur, create, mod, ver, lease int64
				v                                       []byte
				tomb                                    bool
			)
			return pool.QueryRow(ctx, `select m.compact_revision, c.cur, k.value, k.create_revision, k.revision, k.version, k.lease, k.tombstone
				  from walwatch.meta m
				 cross join lateral (select coalesce(max(x.revision), 1) as cur from walwatch.kv x) c
				  join lateral (select * from walwatch.kv k where k.key = $1 and k.revision <= case when $2 = 0 then c.cur else $2 end
				                 order by k.revision desc limit 1) k on true`, key(i), int64(0)).
				Scan(&compacted, &cur, &v, &create, &mod, &ver, &lease, &tomb)
		}},
		{"read_revision", func(int) error {
			var r int64
			return pool.QueryRow(ctx, "select walwatch.read_revision(0)").Scan(&r)
		}},
	}
	for _, clients := range []int{1, 32} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			const per = 2000
			rates := make([][]float64, len(variants))
			for b.Loop() {
				for v, vr := range variants {
					var next atomic.Int64
					var wg sync.WaitGroup
					start := time.Now()
					for range clients {
						wg.Go(func() {
							for i := next.Add(1); i <= per*int64(clients); i = next.Add(1) {
								if err := vr.get(int(i) * 7919); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
					rates[v] = append(rates[v], float64(per*clients)/time.Since(start).Seconds())
				}
			}
			median := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
			plain := median(rates[1])
			for v, vr := range variants {
				m := median(rates[v])
				b.ReportMetric(m, vr.name+"-gets/s")
				b.ReportMetric(m/plain, vr.name+"/plain")
			}
		})
	}
}

// BenchmarkCurrentRevisionYield compares the reads of the current
// revision with and without the batcher's yield before it takes a batch,
// at 32 readers, one round of each per op, interleaved: each setting's
// median reads/s and reads per statement (connections acquired: the
// reads' statement is the pool's only work here), and the ratio of
// reads/s with the yield to without. Run it with -benchtime Nx for N
// rounds.
func BenchmarkCurrentRevisionYield(b *testing.B) {
	const (
		round   = 2 * time.Second
		readers = 32
	)
	settings := []bool{true, false}
	_, pool := newStore(b, store.Limits{})
	run := func(yield bool, d time.Duration) (rate, perStatement float64) {
		s := store.New(pool, store.Limits{})
		store.SetRevisionYield(s, yield)
		acquired := pool.Stat().AcquireCount()
		n, rate := load(b, d, readers, func(int, int) error {
			_, err := s.CurrentRevision(context.Background())
			return err
		})
		return rate, float64(n) / float64(pool.Stat().AcquireCount()-acquired)
	}
	rates := compareSettings(b, "yield", settings, [2]string{"reads/s", "reads/statement"}, round, run)
	b.ReportMetric(rates[0]/rates[1], "ratio-yield/none")
}

// compareSettings runs b.N rounds of run at each of settings for d,
// interleaved so that drift on a shared machine falls on all, after a
// warm-up round (half as long) of the first: the table, the pool and the
// statements warm. It reports the medians of the two figures run returns
// as name=setting-unit, and returns the medians of the first.
func compareSettings[S any](b *testing.B, name string, settings []S, units [2]string, d time.Duration, run func(S, time.Duration) (float64, float64)) []float64 {
	run(settings[0], d/2)
	firsts := make([][]float64, len(settings))
	seconds := make([][]float64, len(settings))
	b.ResetTimer()
	for range b.N {
		for i, s := range settings {
			x, y := run(s, d)
			firsts[i] = append(firsts[i], x)
			seconds[i] = append(seconds[i], y)
		}
	}
	b.StopTimer()
	out := make([]float64, len(settings))
	for i, s := range settings {
		out[i] = median(firsts[i])
		b.ReportMetric(out[i], fmt.Sprintf("%s=%v-%s", name, s, units[0]))
		b.ReportMetric(median(seconds[i]), fmt.Sprintf("%s=%v-%s", name, s, units[1]))
	}
	return out
}

// load calls op from clients goroutines for d, with the
// goroutine's number and how many calls it made before, and returns how
// many calls succeeded and their rate a second; a call that fails fails b
// and ends its goroutine.
func load(b *testing.B, d time.Duration, clients int, op func(client, call int) error) (n int64, rate float64) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var done atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Go(func() {
			for j := 0; ctx.Err() == nil; j++ {
				if err := op(i, j); err != nil {
					b.Error(err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return done.Load(), float64(done.Load()) / time.Since(start).Seconds()
}

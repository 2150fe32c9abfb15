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

// BenchmarkPutWorkers compares how many put batches may be in flight, two
// (the default) against four, at 8 and 32 writers over 10,000 keys: one
// round of each per op, interleaved so drift on a shared machine falls on
// both. It reports each setting's median puts/s and transactions per put,
// and the ratio of two to four. Run it with -benchtime Nx for N rounds.
func BenchmarkPutWorkers(b *testing.B) {
	const round = 2 * time.Second
	settings := []int{2, 4}
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
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
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
				var n atomic.Int64
				var wg sync.WaitGroup
				start := time.Now()
				for i := range clients {
					wg.Go(func() {
						for j := i; ctx.Err() == nil; j += clients {
							if _, err := s.Put(context.Background(), fmt.Appendf(nil, "/bench/%05d", j%10000), value); err != nil {
								b.Error(err)
								return
							}
							n.Add(1)
						}
					})
				}
				wg.Wait()
				rate = float64(n.Load()) / time.Since(start).Seconds()
				return rate, float64(nextXID()-before) / float64(n.Load())
			}
			run(settings[0], round/2) // the table, the pool and the statements warm
			rates := make([][]float64, len(settings))
			txs := make([][]float64, len(settings))
			b.ResetTimer()
			for range b.N {
				for i, w := range settings {
					r, tx := run(w, round)
					rates[i] = append(rates[i], r)
					txs[i] = append(txs[i], tx)
				}
			}
			b.StopTimer()
			for i, w := range settings {
				b.ReportMetric(median(rates[i]), fmt.Sprintf("workers=%d-puts/s", w))
				b.ReportMetric(median(txs[i]), fmt.Sprintf("workers=%d-tx/put", w))
			}
			b.ReportMetric(median(rates[0])/median(rates[1]), "ratio-2/4")
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

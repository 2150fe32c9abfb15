package store_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

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

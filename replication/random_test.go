package replication_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// Concurrent writers with rollbacks, slow commits, deletes and Txns; watchers
// with random ranges and start revisions, joining while the writes go on.
// Every watcher must see exactly the committed history from its start.
func TestRandomisedWritersAndWatchers(t *testing.T) {
	e := newEnv(t)
	h := e.startHub(t, replication.Config{Window: 64}) // small, so some watchers catch up from the table
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	const writers, opsPerWriter = 6, 60
	var wg sync.WaitGroup
	for wi := range writers {
		rng := rand.New(rand.NewPCG(seed, uint64(wi)))
		wg.Go(func() {
			ctx := context.Background()
			key := func() []byte {
				if rng.IntN(3) == 0 {
					return fmt.Appendf(nil, "/s/%d", rng.IntN(10))
				}
				return fmt.Appendf(nil, "/r/%d", rng.IntN(20))
			}
			for range opsPerWriter {
				var err error
				switch op := rng.IntN(10); {
				case op < 4:
					_, err = e.store.Put(ctx, key(), fmt.Appendf(nil, "w%d", wi))
				case op < 5:
					_, err = e.store.Delete(ctx, store.Key(key()))
				case op < 6:
					_, err = e.store.Txn(ctx, store.TxnRequest{Then: []store.Op{
						store.OpPutKey(fmt.Appendf(nil, "/r/t%d", wi), []byte("a")),
						store.OpPutKey(fmt.Appendf(nil, "/s/t%d", wi), []byte("b")),
					}})
				default: // a transaction that holds its revision a while, then commits or rolls back
					tx, berr := e.pool.Begin(ctx)
					if berr != nil {
						err = berr
						break
					}
					if _, err = tx.Exec(ctx, "select walwatch.put($1, $2)", key(), []byte("tx")); err == nil {
						time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond) // simulated work inside the transaction
						if op < 8 {
							err = tx.Commit(ctx)
						} else {
							err = tx.Rollback(ctx)
						}
					}
				}
				if err != nil {
					t.Errorf("writer %d: %v", wi, err)
					return
				}
			}
		})
	}

	type watched struct {
		rng   store.KeyRange
		start int64
		w     *replication.Watcher
	}
	ranges := []store.KeyRange{store.Prefix([]byte("/r/")), store.Prefix([]byte("/s/")), store.Prefix([]byte("/")), store.Key([]byte("/r/1"))}
	rng := rand.New(rand.NewPCG(seed, 99))
	var watchers []watched
	for i := range 12 {
		cur, _, err := e.store.Revision(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		start := 2 + rng.Int64N(cur+5) // some in the past, some in the future
		r := ranges[i%len(ranges)]
		watchers = append(watchers, watched{r, start, watch(t, h, replication.WatchRequest{Range: r, StartRevision: start})})
		e.put(t, "/x/pace", "x") // spreads the watchers over the run
	}
	wg.Wait()
	// Final markers: nothing follows them, so a watcher that has them has all.
	e.put(t, "/r/1", "end")
	e.put(t, "/s/end", "end")

	for i, wd := range watchers {
		want := e.history(t, wd.rng, wd.start)
		got := collect(t, wd.w, len(want), 60*time.Second)
		if !slices.Equal(got, want) {
			t.Fatalf("watcher %d (%q.., from %d): got %d events, want %d\n got %v\nwant %v", i, wd.rng.Key, wd.start, len(got), len(want), got, want)
		}
	}
}

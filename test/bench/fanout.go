package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

const (
	fanPrefix = "/fan/"
	fanKey    = fanPrefix + "x"
	// etcdFanClients is how many etcd clients (one gRPC watch stream each)
	// carry the etcd fan-out's watches.
	etcdFanClients = 4
	fanTimeout     = 30 * time.Second
)

var fanoutSizes = []int{1000, 10000}

// arrivals counts events reaching a set of watchers and signals when the
// count reaches the target.
type arrivals struct {
	got, target atomic.Int64
	done        chan struct{}
}

func newArrivals() *arrivals { return &arrivals{done: make(chan struct{}, 1)} }

func (a *arrivals) add() {
	if a.got.Add(1) == a.target.Load() {
		a.done <- struct{}{}
	}
}

// timePuts puts fanKey cfg.fanoutPuts times with put, each time waiting
// until all n watchers have its event, and returns how long each took.
func (b *bench) timePuts(ctx context.Context, n int, a *arrivals, put func(context.Context) error) ([]time.Duration, error) {
	var out []time.Duration
	for i := range b.cfg.fanoutPuts {
		a.target.Store(int64(n) * int64(i+1))
		start := time.Now()
		if err := put(ctx); err != nil {
			return nil, fmt.Errorf("put: %w", err)
		}
		select {
		case <-a.done:
			out = append(out, time.Since(start))
		case <-time.After(fanTimeout):
			return nil, fmt.Errorf("put %d reached %d of %d watchers within %v", i+1, a.got.Load()-int64(n*i), n, fanTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// fanoutWalwatch puts one key watched by n watchers of one hub, for each n,
// and measures the memory of idle watchers (10,000 of them).
func (b *bench) fanoutWalwatch(ctx context.Context) error {
	hub, err := b.walwatch.startHub(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err := hub.stop(); err != nil {
			b.log.Warn("stop fan-out hub", "err", err)
		}
	}()
	for _, n := range fanoutSizes {
		if err := b.fanoutHub(ctx, hub, n); err != nil {
			return fmt.Errorf("walwatch fan-out to %d watchers: %w", n, err)
		}
	}
	return nil
}

func (b *bench) fanoutHub(ctx context.Context, hub *runningHub, n int) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Memory: watchers with nobody reading them yet, as an idle watcher
	// is; the heap and the stacks of any goroutines the hub starts.
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	watchers := make([]*replication.Watcher, n)
	for i := range watchers {
		w, err := hub.Watch(wctx, replication.WatchRequest{Range: store.Prefix([]byte(fanPrefix))})
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		watchers[i] = w
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	perWatcher := (float64(m1.HeapAlloc+m1.StackInuse) - float64(m0.HeapAlloc+m0.StackInuse)) / float64(n)
	b.samples.add("walwatch", "memory_per_watcher_bytes", strconv.Itoa(n), perWatcher)

	a := newArrivals()
	var wg sync.WaitGroup
	for _, w := range watchers {
		wg.Go(func() {
			for resp := range w.C {
				for range resp.Events {
					a.add()
				}
			}
		})
	}
	defer wg.Wait()
	defer cancel() // closes every watcher, ending its reader
	times, err := b.timePuts(ctx, n, a, func(ctx context.Context) error {
		_, err := b.walwatch.store.Put(ctx, []byte(fanKey), b.value)
		return err
	})
	if err != nil {
		return err
	}
	b.addFanout("walwatch", n, times)
	fmt.Fprintf(b.out, "fan-out  walwatch      %5d watchers: p50 %.2f ms, p99 %.2f ms, %.0f bytes per idle watcher\n",
		n, percentiles(millis(times), 0.5)[0], percentiles(millis(times), 0.99)[0], perWatcher)
	return nil
}

// fanoutEtcd does the same with etcd watches, spread over a few clients:
// etcd multiplexes a client's watches on one gRPC stream.
func (b *bench) fanoutEtcd(ctx context.Context) error {
	for _, n := range fanoutSizes {
		if err := b.fanoutEtcdN(ctx, n); err != nil {
			return fmt.Errorf("etcd fan-out to %d watchers: %w", n, err)
		}
	}
	return nil
}

func (b *bench) fanoutEtcdN(ctx context.Context, n int) error {
	clients := make([]*clientv3.Client, etcdFanClients)
	for i := range clients {
		c, err := newEtcdClient(b.env.etcdURL)
		if err != nil {
			return err
		}
		defer c.Close()
		clients[i] = c
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chans := make([]clientv3.WatchChan, n)
	g, gctx := errgroup.WithContext(ctx)
	for ci, c := range clients {
		g.Go(func() error {
			for i := ci; i < n; i += len(clients) {
				ch, err := createdWatch(gctx, wctx, c, fanPrefix)
				if err != nil {
					return err
				}
				chans[i] = ch
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	a := newArrivals()
	var wg sync.WaitGroup
	for _, ch := range chans {
		wg.Go(func() {
			for resp := range ch {
				for range resp.Events {
					a.add()
				}
			}
		})
	}
	defer wg.Wait()
	defer cancel()
	times, err := b.timePuts(ctx, n, a, func(ctx context.Context) error {
		_, err := b.etcd.clients[0].Put(ctx, fanKey, string(b.value))
		return err
	})
	if err != nil {
		return err
	}
	b.addFanout("etcd", n, times)
	fmt.Fprintf(b.out, "fan-out  etcd          %5d watchers: p50 %.2f ms, p99 %.2f ms\n",
		n, percentiles(millis(times), 0.5)[0], percentiles(millis(times), 0.99)[0])
	return nil
}

func (b *bench) addFanout(system string, n int, times []time.Duration) {
	ps := percentiles(millis(times), 0.5, 0.99)
	b.samples.add(system, "fanout_p50_ms", strconv.Itoa(n), ps[0])
	b.samples.add(system, "fanout_p99_ms", strconv.Itoa(n), ps[1])
}

// catchup writes cfg.catchupRows revisions, waits until a hub has settled
// them, then times a watcher that starts at the first of them until it has
// received them all, cfg.rounds times.
func (b *bench) catchup(ctx context.Context) error {
	hub, err := b.walwatch.startHub(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err := hub.stop(); err != nil {
			b.log.Warn("stop catch-up hub", "err", err)
		}
	}()
	st := b.walwatch.store
	for round := 1; round <= b.cfg.rounds; round++ {
		first, _, err := st.Revision(ctx)
		if err != nil {
			return err
		}
		first++
		// Chunks keep each transaction's per-key advisory locks well inside
		// the server's lock table.
		const chunk = 5000
		for lo := 1; lo <= b.cfg.catchupRows; lo += chunk {
			hi := min(lo+chunk-1, b.cfg.catchupRows)
			if _, err := b.walwatch.clients.Exec(ctx,
				`select count(walwatch.put(convert_to('/c/' || i, 'UTF8'), '\x00'::bytea)) from generate_series($1::int, $2::int) i`,
				lo, hi); err != nil {
				return fmt.Errorf("write catch-up rows: %w", err)
			}
		}
		last, _, err := st.Revision(ctx)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		if err := hub.WaitFor(wctx, last); err != nil {
			cancel()
			return err
		}
		start := time.Now()
		w, err := hub.Watch(wctx, replication.WatchRequest{Range: store.Prefix([]byte("/c/")), StartRevision: first})
		if err != nil {
			cancel()
			return fmt.Errorf("catch-up watch: %w", err)
		}
		got := 0
		for got < b.cfg.catchupRows {
			resp, ok := <-w.C
			if !ok {
				cancel()
				return fmt.Errorf("catch-up watch ended after %d of %d events: %w", got, b.cfg.catchupRows, errors.Join(w.Err(), wctx.Err()))
			}
			got += len(resp.Events)
		}
		elapsed := time.Since(start)
		w.Close()
		cancel()
		rate := float64(got) / elapsed.Seconds()
		b.samples.add("walwatch", "catchup_events_per_s", "", rate)
		fmt.Fprintf(b.out, "catch-up round %d: %d events in %v: %.0f events/s\n", round, got, elapsed.Round(time.Millisecond), rate)
	}
	return nil
}

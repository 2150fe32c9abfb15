package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

const (
	prefix     = "/bench/"
	numKeys    = 10000
	valueSize  = 128
	drainLimit = 60 * time.Second
	rttTimeout = 10 * time.Second
	loadedRTT  = 32 // writers besides the probe in the loaded round trip
	cpuClients = 8
	// The list workload's keys: a resource of Kubernetes' objects (a
	// kilobyte each, a few versions), listed in its API server's pages.
	listPrefix = "/list/"
	// The keys of the lists while written, as many, and as loaded, but
	// their own, so that the versions their writer adds leave the other
	// lists' keys as they were.
	writtenListPrefix = "/listw/"
	listKeys          = 5000
	listVersions      = 3
	listValueSize     = 1024
	listPage          = 500
	// probeKey is the key the round-trip client puts: under the watched
	// prefix, and none of the keys the other clients write.
	probeKey = prefix + "probe"
	// Kubernetes' writes go to keys of their own under txnPrefix; their
	// round trip's probe is txnProbeKey.
	txnPrefix   = "/k8s/"
	txnProbeKey = txnPrefix + "probe"
)

var (
	putConcurrency = []int{1, 8, 32, 64}
	getConcurrency = []int{1, 32}
	txnConcurrency = []int{8, 32}
	// getCPUParts split a get's CPU time: PostgreSQL's processes', this
	// process's, the system's server's.
	getCPUParts = []string{"postgres", "self", "server"}
)

// op is one client's operation; rng picks its keys.
type op func(ctx context.Context, client int, rng *rand.Rand) error

// throughput runs n clients, each calling op in a loop on its own
// connection until d has passed, and returns how many calls completed and
// their rate over the time until the last client stopped. Clients stop
// between calls, never in the middle of one.
func throughput(ctx context.Context, n int, d time.Duration, f op) (int64, float64, error) {
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	deadline := start.Add(d)
	for c := range n {
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(start.UnixNano())))
			var k int64
			defer func() { total.Add(k) }()
			for time.Now().Before(deadline) {
				if err := gctx.Err(); err != nil {
					return err
				}
				if err := f(gctx, c, rng); err != nil {
					return fmt.Errorf("client %d: %w", c, err)
				}
				k++
			}
			return nil
		})
	}
	err := g.Wait()
	elapsed := time.Since(start)
	return total.Load(), float64(total.Load()) / elapsed.Seconds(), err
}

// count runs n clients that together call f exactly total times.
func count(ctx context.Context, n, total int, f op) error {
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for c := range n {
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for next.Add(1) <= int64(total) {
				if err := f(gctx, c, rng); err != nil {
					return fmt.Errorf("client %d: %w", c, err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// write is how a round trip's clients write a key: a system's put, or a
// Kubernetes store's update.
type write func(ctx context.Context, client int, key, value []byte) error

// putRandom puts a random one of the benchmark's keys.
func (b *bench) putRandom(sys system) op {
	return func(ctx context.Context, client int, rng *rand.Rand) error {
		return sys.put(ctx, client, b.keys[rng.IntN(len(b.keys))], b.value)
	}
}

func (b *bench) getRandom(sys system) op {
	return func(ctx context.Context, client int, rng *rand.Rand) error {
		return sys.get(ctx, client, b.keys[rng.IntN(len(b.keys))])
	}
}

// lists lists the keys under prefix, listKeys of them, one client, one
// list after another for getDur (at least once), and returns every page's
// time.
func (b *bench) lists(ctx context.Context, ks kubernetesStore, prefix string) ([]time.Duration, error) {
	var all []time.Duration
	for deadline := time.Now().Add(b.cfg.getDur); len(all) == 0 || time.Now().Before(deadline); {
		pages, keys, err := ks.list(ctx, 0, prefix, listPage)
		if err != nil {
			return nil, err
		}
		if keys != listKeys {
			return nil, fmt.Errorf("listed %d keys of %d under %s", keys, listKeys, prefix)
		}
		all = append(all, pages...)
	}
	return all, nil
}

// listsWritten lists the written lists' keys as lists does while another
// client updates random ones of them as fast as it can, as Kubernetes'
// controllers write the objects of a resource its API server lists. It
// returns every page's time and the updates a second meanwhile.
func (b *bench) listsWritten(ctx context.Context, ks kubernetesStore) ([]time.Duration, float64, error) {
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var updates int
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		rng := rand.New(rand.NewPCG(7, 11))
		for wctx.Err() == nil {
			err := ks.update(wctx, 1, b.writtenListKeys[rng.IntN(len(b.writtenListKeys))], b.listValue)
			if err != nil {
				if wctx.Err() != nil {
					err = nil // stopped, not failed
				}
				done <- err
				return
			}
			updates++
		}
		done <- nil
	}()
	pages, err := b.lists(ctx, ks, writtenListPrefix)
	stop()
	took := time.Since(start)
	if werr := <-done; werr != nil {
		err = errors.Join(err, fmt.Errorf("update while listed: %w", werr))
	}
	return pages, float64(updates) / took.Seconds(), err
}

// turn runs every per-round workload on one system.
func (b *bench) turn(ctx context.Context, sys system, round int) (err error) {
	name := sys.name()
	b.log.Info("turn", "round", round, "system", name)
	if err := sys.begin(ctx); err != nil {
		return fmt.Errorf("%s: begin: %w", name, err)
	}
	defer func() { err = errors.Join(err, sys.end(ctx)) }()

	line := fmt.Sprintf("round %d %-13s", round, name)
	// Puts with nothing watching: for walwatch no hub and no slot at all.
	for _, n := range putConcurrency {
		_, rate, err := throughput(ctx, n, b.cfg.putDur, b.putRandom(sys))
		if err != nil {
			return fmt.Errorf("%s: unwatched puts, %d clients: %w", name, n, err)
		}
		b.samples.add(name, "put_per_s_unwatched", strconv.Itoa(n), rate)
		line += fmt.Sprintf(" put0@%d=%.0f", n, rate)
	}

	// Kubernetes' writes, nothing watching either, to keys of their own:
	// the other workloads' puts would leave the revisions update knows
	// stale, and every update would take two Txns.
	if ks, ok := sys.(kubernetesStore); ok {
		for _, n := range txnConcurrency {
			_, rate, err := throughput(ctx, n, b.cfg.putDur, func(ctx context.Context, client int, rng *rand.Rand) error {
				return ks.update(ctx, client, b.txnKeys[rng.IntN(len(b.txnKeys))], b.value)
			})
			if err != nil {
				return fmt.Errorf("%s: updates, %d clients: %w", name, n, err)
			}
			b.samples.add(name, "txn_per_s", strconv.Itoa(n), rate)
			line += fmt.Sprintf(" txn@%d=%.0f", n, rate)
		}
		pages, err := b.lists(ctx, ks, listPrefix)
		if err != nil {
			return fmt.Errorf("%s: lists: %w", name, err)
		}
		ps := percentiles(millis(pages), 0.5, 0.99)
		b.samples.add(name, "list_page_ms", "p50", ps[0])
		b.samples.add(name, "list_page_ms", "p99", ps[1])
		line += fmt.Sprintf(" list=%.1fms", ps[0])

		pages, rate, err := b.listsWritten(ctx, ks)
		if err != nil {
			return fmt.Errorf("%s: lists while written: %w", name, err)
		}
		ps = percentiles(millis(pages), 0.5, 0.99)
		b.samples.add(name, "list_page_written_ms", "p50", ps[0])
		b.samples.add(name, "list_page_written_ms", "p99", ps[1])
		b.samples.add(name, "list_page_written_ms", "updates_per_s", rate)
		line += fmt.Sprintf(" list-written=%.1fms@%.0f/s", ps[0], rate)

		rtts, err := b.updateRoundTrips(ctx, sys, ks)
		if err != nil {
			return fmt.Errorf("%s: updates' round trip: %w", name, err)
		}
		ps = percentiles(micros(rtts), 0.5, 0.99, 0.999)
		for i, k := range []string{"p50", "p99", "p999"} {
			b.samples.add(name, "txn_rtt_loaded_us", k, ps[i])
		}
		line += fmt.Sprintf(" txn-rtt=%.0f/%.0fus", ps[0], ps[1])
	}

	t := newTap([]byte(probeKey))
	stop, err := sys.watch(ctx, prefix, t.observe)
	if err != nil {
		return fmt.Errorf("%s: watch: %w", name, err)
	}
	defer func() {
		if stop != nil {
			err = errors.Join(err, stop())
		}
	}()

	for _, n := range putConcurrency {
		before := t.events.Load()
		ops, rate, err := throughput(ctx, n, b.cfg.putDur, b.putRandom(sys))
		if err != nil {
			return fmt.Errorf("%s: watched puts, %d clients: %w", name, n, err)
		}
		lag, err := t.drain(ctx, before+ops, drainLimit)
		if err != nil {
			return fmt.Errorf("%s: watched puts, %d clients: %w", name, n, err)
		}
		b.samples.add(name, "put_per_s", strconv.Itoa(n), rate)
		b.samples.add(name, "watcher_lag_ms", strconv.Itoa(n), float64(lag)/float64(time.Millisecond))
		line += fmt.Sprintf(" put@%d=%.0f", n, rate)
	}

	for _, n := range getConcurrency {
		var cpu0 cpuSample
		if n == 1 {
			if cpu0, err = b.env.procs.cpu(sys.pids()); err != nil {
				return err
			}
		}
		ops, rate, err := throughput(ctx, n, b.cfg.getDur, b.getRandom(sys))
		if err != nil {
			return fmt.Errorf("%s: gets, %d clients: %w", name, n, err)
		}
		if n == 1 {
			cpu1, err := b.env.procs.cpu(sys.pids())
			if err != nil {
				return err
			}
			d := cpu1.since(cpu0)
			perGet := func(x time.Duration) float64 { return float64(x.Microseconds()) / float64(max(ops, 1)) }
			b.samples.add(name, "get_1_cpu_us", "postgres", perGet(d.postgres))
			b.samples.add(name, "get_1_cpu_us", "self", perGet(d.self))
			b.samples.add(name, "get_1_cpu_us", "server", perGet(d.extra))
		}
		b.samples.add(name, "get_per_s", strconv.Itoa(n), rate)
		line += fmt.Sprintf(" get@%d=%.0f", n, rate)
	}

	if fd, ok := sys.(frontDoor); ok {
		for _, n := range getConcurrency {
			_, rate, err := throughput(ctx, n, b.cfg.getDur, func(ctx context.Context, client int, _ *rand.Rand) error {
				return fd.noop(ctx, client)
			})
			if err != nil {
				return fmt.Errorf("%s: front door alone, %d clients: %w", name, n, err)
			}
			b.samples.add(name, "noop_per_s", strconv.Itoa(n), rate)
			line += fmt.Sprintf(" noop@%d=%.0f", n, rate)
		}
	}

	idle, idlePuts, err := b.roundTrips(ctx, sys.put, b.keys, t, 0)
	if err != nil {
		return fmt.Errorf("%s: idle round trip: %w", name, err)
	}
	loaded, loadedPuts, err := b.roundTrips(ctx, sys.put, b.keys, t, loadedRTT)
	if err != nil {
		return fmt.Errorf("%s: loaded round trip: %w", name, err)
	}
	for metric, rtts := range map[string][]time.Duration{
		"watch_rtt_us": idle, "watch_rtt_loaded_us": loaded,
		"watch_rtt_put_us": idlePuts, "watch_rtt_loaded_put_us": loadedPuts,
		"watch_rtt_delivery_us": delivery(idle, idlePuts), "watch_rtt_loaded_delivery_us": delivery(loaded, loadedPuts),
	} {
		ps := percentiles(micros(rtts), 0.5, 0.99, 0.999)
		for i, k := range []string{"p50", "p99", "p999"} {
			b.samples.add(name, metric, k, ps[i])
		}
	}
	idleP := percentiles(micros(idle), 0.5, 0.99)
	loadedP := percentiles(micros(loaded), 0.5, 0.99)
	idlePut := percentiles(micros(idlePuts), 0.5, 0.99)
	loadedPut := percentiles(micros(loadedPuts), 0.5, 0.99)
	line += fmt.Sprintf(" rtt=%.0f/%.0fus (put %.0f/%.0f) loaded=%.0f/%.0fus (put %.0f/%.0f)", idleP[0], idleP[1], idlePut[0], idlePut[1],
		loadedP[0], loadedP[1], loadedPut[0], loadedPut[1])

	if b.walSystems[name] {
		perPut, err := b.walPerPut(ctx, sys, t)
		if err != nil {
			return fmt.Errorf("%s: WAL per put: %w", name, err)
		}
		b.samples.add(name, "wal_bytes_per_put", "", perPut)
		line += fmt.Sprintf(" wal/put=%.0fB", perPut)
	}

	cpu, err := b.cpuPer10k(ctx, sys, t)
	if err != nil {
		return fmt.Errorf("%s: CPU per 10k puts: %w", name, err)
	}
	b.samples.add(name, "cpu_s_per_10k_puts", "", cpu.total().Seconds())
	b.samples.add(name, "cpu_s_per_10k_puts", "postgres", cpu.postgres.Seconds())
	b.samples.add(name, "cpu_s_per_10k_puts", "self", cpu.self.Seconds())
	b.samples.add(name, "cpu_s_per_10k_puts", "extra", cpu.extra.Seconds())
	line += fmt.Sprintf(" cpu/10k=%.2fs (pg %.2f, self %.2f, server %.2f)", cpu.total().Seconds(),
		cpu.postgres.Seconds(), cpu.self.Seconds(), cpu.extra.Seconds())

	disk, err := b.diskPerPut(ctx, sys, t)
	if err != nil {
		return fmt.Errorf("%s: disk writes per put: %w", name, err)
	}
	line += b.addDisk(name, disk)

	stopErr := stop()
	stop = nil
	if stopErr != nil {
		return fmt.Errorf("%s: stop watcher: %w", name, stopErr)
	}
	fmt.Fprintln(b.out, line)
	return nil
}

// roundTrips measures a write -> its event on the watcher: the probe client
// writes t's probe key with w and waits for the watcher to see it,
// cfg.rttSamples times or for cfg.rttMaxTime, while load other clients write
// random keys of keys with w as fast as they can. puts are the probe's
// writes alone, until acknowledged.
func (b *bench) roundTrips(ctx context.Context, w write, keys [][]byte, t *tap, load int) (rtts, puts []time.Duration, err error) {
	before := t.events.Load()
	var (
		stopLoad atomic.Bool
		loadPuts atomic.Int64
	)
	g, gctx := errgroup.WithContext(ctx)
	for c := 1; c <= load; c++ {
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(c), 2))
			for !stopLoad.Load() {
				if err := w(gctx, c, keys[rng.IntN(len(keys))], b.value); err != nil {
					return fmt.Errorf("load client %d: %w", c, err)
				}
				loadPuts.Add(1)
			}
			return nil
		})
	}
	err = warmUp(gctx, load)
	if err == nil {
		rtts, puts, err = b.probe(gctx, w, t, b.cfg.rttSamples, b.cfg.rttMaxTime)
	}
	stopLoad.Store(true)
	if err := errors.Join(err, g.Wait()); err != nil {
		return nil, nil, err
	}
	if _, err := t.drain(ctx, before+loadPuts.Load()+int64(len(rtts)), drainLimit); err != nil {
		return nil, nil, err
	}
	return rtts, puts, nil
}

// updateRoundTrips is the round trip of Kubernetes' writes under load: a
// watcher on txnPrefix, as Kubernetes' API server watches a resource, the
// probe and loadedRTT other clients writing with update.
func (b *bench) updateRoundTrips(ctx context.Context, sys system, ks kubernetesStore) (rtts []time.Duration, err error) {
	t := newTap([]byte(txnProbeKey))
	stop, err := sys.watch(ctx, txnPrefix, t.observe)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	defer func() { err = errors.Join(err, stop()) }()
	rtts, _, err = b.roundTrips(ctx, ks.update, b.txnKeys, t, loadedRTT)
	return rtts, err
}

// delivery is each round trip less its put: from the writer's answer to
// the event at the watcher.
func delivery(rtts, puts []time.Duration) []time.Duration {
	out := make([]time.Duration, len(rtts))
	for i := range rtts {
		out[i] = rtts[i] - puts[i]
	}
	return out
}

// warmUp gives load writers, if any, a moment to get going.
func warmUp(ctx context.Context, load int) error {
	if load == 0 {
		return nil
	}
	select {
	case <-time.After(100 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// probe writes t's probe key with w n times or until maxTime has passed,
// each write once the watcher has seen the one before: the round trips and
// the writes alone, until acknowledged.
func (b *bench) probe(ctx context.Context, w write, t *tap, n int, maxTime time.Duration) (rtts, puts []time.Duration, err error) {
	rtts = make([]time.Duration, 0, n)
	puts = make([]time.Duration, 0, n)
	timeout := time.NewTimer(rttTimeout)
	defer timeout.Stop()
	end := time.Now().Add(maxTime)
	for len(rtts) < n && time.Now().Before(end) {
		start := time.Now()
		if err := w(ctx, 0, t.probe, b.value); err != nil {
			return nil, nil, fmt.Errorf("probe write: %w", err)
		}
		acked := time.Since(start)
		timeout.Reset(rttTimeout)
		select {
		case <-t.seen:
			rtts = append(rtts, time.Since(start))
			puts = append(puts, acked)
		case <-timeout.C:
			return nil, nil, fmt.Errorf("the watcher did not see the probe within %v", rttTimeout)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	return rtts, puts, nil
}

// walPerPut is the WAL written per single-client put, watcher attached
// (whatever the watching side writes counts too), until the watcher has
// every event.
func (b *bench) walPerPut(ctx context.Context, sys system, t *tap) (float64, error) {
	before := t.events.Load()
	lsn0, err := b.env.walLSN(ctx)
	if err != nil {
		return 0, err
	}
	for i := range b.cfg.walPuts {
		if err := sys.put(ctx, 0, b.keys[i%len(b.keys)], b.value); err != nil {
			return 0, err
		}
	}
	if _, err := t.drain(ctx, before+int64(b.cfg.walPuts), drainLimit); err != nil {
		return 0, err
	}
	lsn1, err := b.env.walLSN(ctx)
	if err != nil {
		return 0, err
	}
	return (lsn1 - lsn0) / float64(b.cfg.walPuts), nil
}

// cpuPer10k is the CPU time of every process of the system (see procMeter)
// for cfg.cpuPuts puts by 8 clients, watcher attached, until the watcher
// has every event; scaled to 10,000 puts.
func (b *bench) cpuPer10k(ctx context.Context, sys system, t *tap) (cpuTimes, error) {
	before := t.events.Load()
	cpu0, err := b.env.procs.cpu(sys.pids())
	if err != nil {
		return cpuTimes{}, err
	}
	if err := count(ctx, cpuClients, b.cfg.cpuPuts, b.putRandom(sys)); err != nil {
		return cpuTimes{}, err
	}
	if _, err := t.drain(ctx, before+int64(b.cfg.cpuPuts), drainLimit); err != nil {
		return cpuTimes{}, err
	}
	cpu1, err := b.env.procs.cpu(sys.pids())
	if err != nil {
		return cpuTimes{}, err
	}
	d := cpu1.since(cpu0)
	scale := func(x time.Duration) time.Duration { return x * 10000 / time.Duration(b.cfg.cpuPuts) }
	return cpuTimes{scale(d.postgres), scale(d.self), scale(d.extra)}, nil
}

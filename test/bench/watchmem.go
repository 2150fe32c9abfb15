package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchMemWatchers is how many idle watches the etcd-API memory figure
// opens, all on one gRPC watch stream, as the etcd Go client multiplexes
// the watches of one context.
const watchMemWatchers = 10000

const watchMemPrefix = "/bench/watchmem/"

// memoryOf returns a server's Go heap and goroutine stacks in use, after a
// garbage collection.
type memoryOf func(ctx context.Context) (float64, error)

// serverMemory is a Go server's (etcd's or a cp's, both serving pprof and
// /metrics at base): a heap profile asked with gc=1 collects first, then
// /metrics has the figures.
func serverMemory(base string) memoryOf {
	hc := &http.Client{Timeout: 30 * time.Second}
	return func(ctx context.Context) (float64, error) {
		if _, err := getBody(ctx, hc, base+"/debug/pprof/heap?gc=1"); err != nil {
			return 0, fmt.Errorf("server memory: %w", err)
		}
		b, err := getBody(ctx, hc, base+"/metrics")
		if err != nil {
			return 0, fmt.Errorf("server memory: %w", err)
		}
		var sum float64
		for _, name := range []string{"go_memstats_heap_alloc_bytes", "go_memstats_stack_inuse_bytes"} {
			v, err := metricValue(b, name)
			if err != nil {
				return 0, fmt.Errorf("server memory: %w", err)
			}
			sum += v
		}
		return sum, nil
	}
}

// metricValue is the value of an unlabelled metric in Prometheus's text
// format.
func metricValue(text []byte, name string) (float64, error) {
	for line := range bytes.Lines(text) {
		rest, ok := bytes.CutPrefix(line, []byte(name+" "))
		if ok {
			return strconv.ParseFloat(strings.TrimSpace(string(rest)), 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// etcdWatcherMemory measures what an idle etcd-API watch costs the server
// at url: another process (this program with -hold-watches, so the
// client's own memory is not counted) opens watchMemWatchers watches on one
// stream; the server's memory before and after, divided by the watches.
// etcd's figure is a few hundred bytes, near the noise of a heap that
// other goroutines allocate in: the median of three tries, each reading a
// settled heap.
func (b *bench) etcdWatcherMemory(ctx context.Context, name, url string, mem memoryOf) error {
	for range 3 {
		per, err := watcherMemoryOnce(ctx, url, mem)
		if err != nil {
			return fmt.Errorf("%s watcher memory: %w", name, err)
		}
		b.samples.add(name, "memory_per_watcher_bytes", strconv.Itoa(watchMemWatchers), per)
	}
	return nil
}

// Memory settles when two readings in a row, settleInterval apart, differ by
// at most settleBytes (6 bytes a watcher): a server whose clients of the
// last workload have just gone frees their connections' buffers for a
// second or two after, megabytes that made etcd's watchers seem to cost 56
// bytes. It is read at most settleReadings times.
const (
	settleInterval = 500 * time.Millisecond
	settleBytes    = 64 << 10
	settleReadings = 20
)

// settled reads mem until it settles.
func settled(ctx context.Context, mem memoryOf) (float64, error) {
	last, err := mem(ctx)
	if err != nil {
		return 0, err
	}
	for range settleReadings - 1 {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(settleInterval):
		}
		v, err := mem(ctx)
		if err != nil {
			return 0, err
		}
		if math.Abs(v-last) <= settleBytes {
			return v, nil
		}
		last = v
	}
	return last, nil
}

func watcherMemoryOnce(ctx context.Context, url string, mem memoryOf) (float64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	before, err := settled(ctx, mem)
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, exe, "-hold-watches", url)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start the watching process: %w", err)
	}
	defer func() {
		stdin.Close() // tells it to exit
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		return 0, fmt.Errorf("the watching process said %q: %v", line, err)
	}
	after, err := settled(ctx, mem)
	if err != nil {
		return 0, err
	}
	return (after - before) / watchMemWatchers, nil
}

// watcherMemory measures the etcd-API watcher memory of etcd and of
// walwatch_etcd (its cp started for the measurement), when they run.
func (b *bench) watcherMemory(ctx context.Context) error {
	if b.etcd != nil {
		b.log.Info("watcher memory", "system", "etcd")
		if err := b.quiesce(ctx); err != nil {
			return err
		}
		if err := b.etcdWatcherMemory(ctx, "etcd", b.etcd.url, serverMemory(b.etcd.url)); err != nil {
			return err
		}
	}
	if s := b.etcdAPI; s != nil {
		b.log.Info("watcher memory", "system", s.name())
		if err := b.quiesce(ctx); err != nil {
			return err
		}
		if err := s.begin(ctx); err != nil {
			return err
		}
		err := b.etcdWatcherMemory(ctx, s.name(), s.url, serverMemory(s.cp.base))
		return errors.Join(err, s.end(ctx))
	}
	return nil
}

// holdWatches is the -hold-watches process: watchMemWatchers watches on one
// stream to url, each created before it says "ready"; it exits when its
// standard input closes.
func holdWatches(url string) error {
	c, err := newEtcdClient(url)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range watchMemWatchers {
		ch := c.Watch(ctx, fmt.Sprintf("%s%05d/", watchMemPrefix, i), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		resp, ok := <-ch
		if !ok || !resp.Created {
			return errors.Join(fmt.Errorf("watch %d not created", i), resp.Err())
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

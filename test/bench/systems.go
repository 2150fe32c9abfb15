package main

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// system is one contender. A benchmark client is an index below maxClients;
// each has a connection of its own.
type system interface {
	name() string
	// begin readies the system for its turn in a round; end undoes it.
	begin(ctx context.Context) error
	end(ctx context.Context) error
	put(ctx context.Context, client int, key, value []byte) error
	get(ctx context.Context, client int, key []byte) error
	// watch attaches one watcher to prefix, with whatever the system needs
	// to feed it (walwatch: a hub on its own replication slot), and calls
	// fn with the key of every event, from one goroutine. stop detaches it.
	watch(ctx context.Context, prefix string, fn func(key []byte)) (stop func() error, err error)
	// pids are the system's processes besides PostgreSQL's and this one,
	// whose CPU time counts as the system's.
	pids() []int
}

// frontDoor is a system behind a server of its own. noop is a request that
// server answers without reaching its storage (cp's GET /healthz, etcd's
// MemberList): what the server's front door alone costs a request, which
// no request through it can cost less than.
type frontDoor interface {
	noop(ctx context.Context, client int) error
}

// kubernetesStore is a system that speaks etcd's API, which Kubernetes can
// keep its objects in: update writes a key as Kubernetes writes an object
// (etcdClients.update), list reads a prefix as it lists a resource
// (etcdClients.list).
type kubernetesStore interface {
	update(ctx context.Context, client int, key, value []byte) error
	list(ctx context.Context, client int, prefix string, limit int64) (pages []time.Duration, keys int, err error)
}

// maxClients is the most clients any workload runs at once: 64 writers,
// or 32 writers and a probe; a few spare.
const maxClients = 66

// tap is what the benchmark's watcher does with each event: count it, and
// signal when the probe key's event arrives.
type tap struct {
	probe  []byte
	events atomic.Int64
	seen   chan struct{}
}

func newTap(probe []byte) *tap {
	return &tap{probe: probe, seen: make(chan struct{}, 1)}
}

func (t *tap) observe(key []byte) {
	t.events.Add(1)
	if bytes.Equal(key, t.probe) {
		select {
		case t.seen <- struct{}{}:
		default:
		}
	}
}

// drain waits until the watcher has seen want events in all, and returns how
// long that took: how far the watcher lagged behind the writers.
func (t *tap) drain(ctx context.Context, want int64, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		if t.events.Load() >= want {
			return time.Since(start), nil
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return 0, fmt.Errorf("watcher saw %d of %d events after %v", t.events.Load(), want, limit)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

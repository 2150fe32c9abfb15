package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdClients is how the benchmark drives any server of etcd's v3 API: the
// etcd Go client, one client (one gRPC connection) per benchmark client, and
// one for the watcher. The etcd system and walwatch's etcd API both run
// through it, so they compare like with like.
type etcdClients struct {
	url     string
	clients []*clientv3.Client
	watcher *clientv3.Client
	// key (string) -> its mod revision when update last wrote it; one map
	// for every turn of a system, whose clients may change between turns.
	revs *sync.Map
}

func newEtcdClient(url string) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return c, nil
}

// openEtcdClients connects maxClients clients and the watcher's to url.
func openEtcdClients(url string) (*etcdClients, error) {
	s := &etcdClients{url: url, revs: &sync.Map{}}
	for range maxClients {
		c, err := newEtcdClient(url)
		if err != nil {
			s.close()
			return nil, err
		}
		s.clients = append(s.clients, c)
	}
	var err error
	if s.watcher, err = newEtcdClient(url); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// answers reads the probe key, waiting at most a second: whether the
// server serves reads yet.
func (s *etcdClients) answers(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := s.watcher.Get(rctx, probeKey)
	return err
}

func (s *etcdClients) close() {
	for _, c := range append(s.clients, s.watcher) {
		if c != nil {
			_ = c.Close()
		}
	}
}

// etcdSystem is etcd's server, a child process, with the etcd Go client.
type etcdSystem struct {
	*etcdClients
	proc *serverProcess
	dir  string // its data
}

func newEtcdSystem(e *env) (*etcdSystem, error) {
	c, err := openEtcdClients(e.etcdURL)
	if err != nil {
		return nil, err
	}
	return &etcdSystem{c, e.etcd, e.etcdDir}, nil
}

func (s *etcdSystem) name() string                { return "etcd" }
func (s *etcdSystem) begin(context.Context) error { return nil }
func (s *etcdSystem) end(context.Context) error   { return nil }
func (s *etcdSystem) pids() []int                 { return s.proc.pids() }

func (s *etcdClients) put(ctx context.Context, client int, key, value []byte) error {
	_, err := s.clients[client].Put(ctx, string(key), string(value))
	return err
}

// update writes key as Kubernetes writes an object: a Txn that puts it if
// its mod revision is still the one this client set last wrote, and
// otherwise reads it, and then tries again at the revision read.
func (s *etcdClients) update(ctx context.Context, client int, key, value []byte) error {
	k := string(key)
	rev, _ := s.revs.Load(k)
	r, _ := rev.(int64) // 0 for a key never written here: a create
	for range 100 {
		resp, err := s.clients[client].Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", r)).
			Then(clientv3.OpPut(k, string(value))).
			Else(clientv3.OpGet(k)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			s.revs.Store(k, resp.Header.Revision)
			return nil
		}
		r = 0
		if len(resp.Responses) == 1 {
			if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
				r = kvs[0].ModRevision
			}
		}
	}
	return fmt.Errorf("update %s: its revision kept changing, 100 tries", key)
}

// list reads every key under prefix as Kubernetes' API server lists a
// resource: pages of limit keys, the first at the current revision, the
// others at the first's, each answered with the range's count (etcd's, which
// the API server reports as the items remaining). It returns each page's
// time and how many keys it read.
func (s *etcdClients) list(ctx context.Context, client int, prefix string, limit int64) ([]time.Duration, int, error) {
	var (
		times []time.Duration
		keys  int
		rev   int64
	)
	from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		start := time.Now()
		resp, err := s.clients[client].Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s from %q: %w", prefix, from, err)
		}
		times = append(times, time.Since(start))
		keys += len(resp.Kvs)
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return times, keys, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// memberList is a request every etcd API server answers from memory.
func (s *etcdClients) memberList(ctx context.Context, client int) error {
	_, err := s.clients[client].MemberList(ctx)
	return err
}

func (s *etcdSystem) noop(ctx context.Context, client int) error { return s.memberList(ctx, client) }

func (s *etcdClients) get(ctx context.Context, client int, key []byte) error {
	res, err := s.clients[client].Get(ctx, string(key))
	if err != nil {
		return err
	}
	if len(res.Kvs) != 1 {
		return fmt.Errorf("get %q: %d keys, want 1", key, len(res.Kvs))
	}
	return nil
}

func (s *etcdClients) watch(ctx context.Context, prefix string, fn func(key []byte)) (func() error, error) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ch, err := createdWatch(ctx, wctx, s.watcher, prefix)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		for resp := range ch {
			if err := resp.Err(); err != nil && wctx.Err() == nil {
				done <- fmt.Errorf("etcd watch: %w", err)
				return
			}
			for _, ev := range resp.Events {
				fn(ev.Kv.Key)
			}
		}
		done <- nil
	}()
	return func() error {
		cancel()
		return <-done
	}, nil
}

// createdWatch starts a watch on prefix that lives as long as wctx, and
// waits (within ctx) until the server has created it, so no event sent
// afterwards can be missed.
func createdWatch(ctx, wctx context.Context, c *clientv3.Client, prefix string) (clientv3.WatchChan, error) {
	ch := c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, errors.New("etcd watch closed before it was created")
		}
		if err := resp.Err(); err != nil {
			return nil, fmt.Errorf("etcd watch: %w", err)
		}
		if !resp.Created {
			return nil, errors.New("etcd watch: first response is not the creation")
		}
		return ch, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// preload writes keys in transactions of etcd's default maximum size.
func (s *etcdClients) preload(ctx context.Context, keys [][]byte, value []byte) error {
	const batch = 128 // etcd's --max-txn-ops default
	for i := 0; i < len(keys); i += batch {
		ops := make([]clientv3.Op, 0, batch)
		for _, k := range keys[i:min(i+batch, len(keys))] {
			ops = append(ops, clientv3.OpPut(string(k), string(value)))
		}
		if _, err := s.clients[0].Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("etcd preload: %w", err)
		}
	}
	return nil
}

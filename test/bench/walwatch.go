package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// walwatchSystem is walwatch used as a Go library: the store for writes and
// reads, a hub on a temporary replication slot for the watcher.
type walwatchSystem struct {
	clients *pgxpool.Pool // one connection per benchmark client
	hubPool *pgxpool.Pool // the hub's table reads and filler rows
	store   *store.Store
	log     *slog.Logger
}

func newWalwatchSystem(ctx context.Context, e *env) (*walwatchSystem, error) {
	clients, err := newPool(ctx, e.walwatchURL, maxClients)
	if err != nil {
		return nil, err
	}
	hubPool, err := newPool(ctx, e.walwatchURL, 4)
	if err != nil {
		clients.Close()
		return nil, err
	}
	return &walwatchSystem{clients: clients, hubPool: hubPool, store: store.New(clients, store.Limits{}), log: e.log}, nil
}

func (s *walwatchSystem) close() {
	s.clients.Close()
	s.hubPool.Close()
}

func (s *walwatchSystem) name() string                { return "walwatch" }
func (s *walwatchSystem) begin(context.Context) error { return nil }
func (s *walwatchSystem) end(context.Context) error   { return nil }
func (s *walwatchSystem) pids() []int                 { return nil }

func (s *walwatchSystem) put(ctx context.Context, _ int, key, value []byte) error {
	_, err := s.store.Put(ctx, key, value)
	return err
}

func (s *walwatchSystem) get(ctx context.Context, _ int, key []byte) error {
	res, err := s.store.Range(ctx, store.RangeRequest{KeyRange: store.Key(key)})
	if err != nil {
		return err
	}
	if len(res.KVs) != 1 {
		return fmt.Errorf("get %q: %d keys, want 1", key, len(res.KVs))
	}
	return nil
}

func (s *walwatchSystem) watch(ctx context.Context, prefix string, fn func(key []byte)) (func() error, error) {
	hub, err := s.startHub(ctx)
	if err != nil {
		return nil, err
	}
	w, err := hub.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte(prefix))})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("watch %s: %w", prefix, err), hub.stop())
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range w.C {
			for _, ev := range resp.Events {
				fn(ev.Key)
			}
		}
	}()
	return func() error {
		w.Close()
		<-done
		return hub.stop()
	}, nil
}

// runningHub is a hub started by the benchmark; stop ends it (and with it
// its temporary slot).
type runningHub struct {
	*replication.Hub
	cancel context.CancelFunc
	done   chan error
}

// startHub starts a hub on a temporary slot and waits until it serves.
func (s *walwatchSystem) startHub(ctx context.Context) (*runningHub, error) {
	hub, err := replication.New(replication.Config{Pool: s.hubPool, Logger: s.log.With("component", "hub")})
	if err != nil {
		return nil, fmt.Errorf("new hub: %w", err)
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h := &runningHub{Hub: hub, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- hub.Run(hctx) }()
	select {
	case <-hub.Ready():
		return h, nil
	case err := <-h.done:
		cancel()
		return nil, fmt.Errorf("hub stopped before it was ready: %w", err)
	case <-time.After(30 * time.Second):
		return nil, errors.Join(errors.New("hub not ready within 30s"), h.stop())
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), h.stop())
	}
}

func (h *runningHub) stop() error {
	h.cancel()
	if err := <-h.done; err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

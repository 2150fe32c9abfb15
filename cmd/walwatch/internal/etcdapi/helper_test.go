package etcdapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/test/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// env is one etcd API server on a fresh database, and a real etcd client
// talking to it.
type env struct {
	srv      *Server
	client   *walwatch.Client // the server's walwatch client
	etcd     *clientv3.Client
	addr     string // host:port of the etcd endpoint
	endpoint string // http://addr
	registry *prometheus.Registry
	stop     func() // stops the server; Cleanup calls it too
}

// newEnv starts a server on a fresh database; options change its Config
// before it starts.
func newEnv(t *testing.T, options ...func(*Config)) *env {
	t.Helper()
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	client, err := walwatch.Open(ctx, url, walwatch.WithMigrate(),
		walwatch.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return startServer(t, client, options...)
}

// startServer serves etcd's API on client; options change its Config.
func startServer(t *testing.T, client *walwatch.Client, options ...func(*Config)) *env {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{client: client, addr: l.Addr().String(), registry: prometheus.NewRegistry()}
	e.endpoint = "http://" + e.addr
	cfg := Config{
		Client: client, ClientURLs: []string{e.endpoint}, Registry: e.registry,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, o := range options {
		o(&cfg)
	}
	e.srv, err = New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, l) }()
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(e.stop)
	if cfg.TLS == nil {
		e.etcd = newEtcdClient(t, clientv3.Config{Endpoints: []string{e.endpoint}})
	}
	return e
}

// newEtcdClient returns a clientv3 client, closed when the test ends.
func newEtcdClient(t *testing.T, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	cfg.DialTimeout = 5 * time.Second
	cfg.Logger = zap.NewNop()
	c, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("close etcd client: %v", err)
		}
	})
	return c
}

// ctx returns a context for one call, bounded so that a hung call fails
// the test instead of hanging it.
func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

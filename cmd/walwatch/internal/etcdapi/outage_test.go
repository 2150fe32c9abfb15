package etcdapi

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TestDatabaseGone: while PostgreSQL is down, etcd's API answers each
// request with Unavailable (clients retry it), neither hangs nor crashes,
// and serves again once PostgreSQL is back.
func TestDatabaseGone(t *testing.T) {
	// A data dir of its own, so the server can start again on it. Not
	// t.TempDir(): as root its parent is mode 0700, which the server's user
	// cannot traverse.
	dataDir, err := os.MkdirTemp("", "walwatch-etcdapi-outage-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dataDir) })
	pg := pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir})
	url, err := pg.CreateDatabase(t.Context(), "outage")
	if err != nil {
		t.Fatal(err)
	}
	client, err := walwatch.Open(t.Context(), url, walwatch.WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	e := startServer(t, client)
	mustPut(t, e.etcd, "k", "before")

	if err := pg.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	// clientv3 retries Unavailable reads by itself; a put it does not.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = e.etcd.Put(ctx, "k", "during")
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("put while PostgreSQL is down: %v, want Unavailable", err)
	}

	pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir, Port: pg.Port()})
	wait.For(t, "a put to succeed once PostgreSQL is back", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := e.etcd.Put(ctx, "k", "after")
		return err == nil
	})
	res, err := e.etcd.Get(callCtx(t), "k")
	if err != nil || string(res.Kvs[0].Value) != "after" {
		t.Fatalf("get after the outage: %+v, %v", res, err)
	}
}

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// etcdCP is a control plane serving etcd's API too.
type etcdCP struct {
	*cp
	etcdAddr string // host:port
}

// startEtcdCP starts a cp with etcd's API on a free port of its own.
func startEtcdCP(t testing.TB, pg, slot string) *etcdCP {
	t.Helper()
	addr := pgtest.FreeAddr(t)
	c := startCP(t, pg, slot, "--etcd-listen", addr)
	if !strings.Contains(c.log(), "etcd API listening") {
		t.Fatalf("cp does not serve the etcd API:\n%s", c.log())
	}
	return &etcdCP{cp: c, etcdAddr: addr}
}

// newEtcdClient returns the etcd Go client on addr, closed when the test ends.
func newEtcdClient(t testing.TB, addr string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// etcdEvent is what a watcher saw of one event.
type etcdEvent struct {
	typ   mvccpb.Event_EventType
	key   string
	value string
	rev   int64
}

// etcdWatcher collects what a clientv3 watch receives.
type etcdWatcher struct {
	mu     sync.Mutex
	events []etcdEvent
	err    error // the watch's end: a cancel, an error, or the channel closed
	cancel context.CancelFunc
}

// watchEtcd watches prefix from rev with the etcd client, as long as the
// test runs.
func watchEtcd(t testing.TB, c *clientv3.Client, prefix string, rev int64) *etcdWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &etcdWatcher{cancel: cancel}
	ch := c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range ch {
			w.mu.Lock()
			for _, ev := range resp.Events {
				w.events = append(w.events, etcdEvent{ev.Type, string(ev.Kv.Key), string(ev.Kv.Value), ev.Kv.ModRevision})
			}
			if err := resp.Err(); err != nil && w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		if w.err == nil && ctx.Err() == nil {
			w.err = errors.New("watch channel closed")
		}
		w.mu.Unlock()
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// seen returns the events so far and the watch's error, if it ended.
func (w *etcdWatcher) seen() ([]etcdEvent, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]etcdEvent(nil), w.events...), w.err
}

// waitRevision waits until the watcher has seen an event at rev, and fails
// if the watch ends first.
func (w *etcdWatcher) waitRevision(t testing.TB, rev int64) {
	t.Helper()
	wait.For(t, fmt.Sprintf("the etcd watcher to see revision %d", rev), func() bool {
		evs, err := w.seen()
		if err != nil {
			t.Fatalf("etcd watch ended: %v", err)
		}
		return len(evs) > 0 && evs[len(evs)-1].rev >= rev
	})
}

// httpPut writes key through the cp's HTTP API and returns its revision.
func httpPut(t testing.TB, c *cp, key, value string) int64 {
	t.Helper()
	return revisionOf(t, mustStatus(t, "PUT /v1/kv"+key, call(t, http.MethodPut, c.url+"/v1/kv"+key, "", value), http.StatusOK))
}

// sqlSet writes key in plain SQL and returns its revision.
func sqlSet(t testing.TB, pg, key, value string) int64 {
	t.Helper()
	rev, err := strconv.ParseInt(execSQL(t, pg, `select walwatch.set($1, $2)::text`, key, value), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// A write through the HTTP API, one in plain SQL and one through etcd's
// API arrive on an etcd watch, and the cp's /metrics shows the gRPC calls.
func TestEtcdWatchSeesEveryWriter(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startEtcdCP(t, pg, slotName(t, "etcdwatch"))
	etcd := newEtcdClient(t, c.etcdAddr)
	list, err := etcd.Get(t.Context(), "/e2e/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	w := watchEtcd(t, etcd, "/e2e/", list.Header.Revision+1)

	want := []etcdEvent{{mvccpb.PUT, "/e2e/http", "from HTTP", httpPut(t, c.cp, "/e2e/http", "from HTTP")}}
	httpPut(t, c.cp, "/other/http", "not watched")
	want = append(want, etcdEvent{mvccpb.PUT, "/e2e/sql", "from SQL", sqlSet(t, pg, "/e2e/sql", "from SQL")})
	put, err := etcd.Put(t.Context(), "/e2e/etcd", "from etcd")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, etcdEvent{mvccpb.PUT, "/e2e/etcd", "from etcd", put.Header.Revision})
	del := mustStatus(t, "DELETE /v1/kv/e2e/http", call(t, http.MethodDelete, c.url+"/v1/kv/e2e/http", "", nil), http.StatusOK)
	want = append(want, etcdEvent{mvccpb.DELETE, "/e2e/http", "", revisionOf(t, del)})

	w.waitRevision(t, want[len(want)-1].rev)
	if got, _ := w.seen(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("etcd watch saw\n%v\nwant\n%v", got, want)
	}

	page := string(get(t, c.url+"/metrics", "").body)
	for _, re := range []string{
		`grpc_server_handled_total\{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"\} [1-9]`,
		`grpc_server_started_total\{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"\} [1-9]`,
		`grpc_server_handling_seconds_count\{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"\} [1-9]`,
		`(?m)^walwatch_etcd_watch_streams 1$`,
		`(?m)^walwatch_etcd_watchers 1$`,
	} {
		if !regexp.MustCompile(re).MatchString(page) {
			t.Errorf("cp /metrics has no match for %s", re)
		}
	}
}

// A cp killed with SIGKILL and restarted on the same ports while an etcd
// client watches: the client reconnects by itself and resumes after the
// last revision it saw, and sees every revision written before, during and
// after the outage exactly once, in order.
func TestEtcdWatchAcrossCPKill(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startEtcdCP(t, pg, slotName(t, "etcdkill"))
	etcd := newEtcdClient(t, c.etcdAddr)
	w := watchEtcd(t, etcd, "/kill/", 1)

	var want []etcdEvent
	put := func(rev int64, key, value string) { want = append(want, etcdEvent{mvccpb.PUT, key, value, rev}) }
	for i := range 3 {
		key, value := fmt.Sprintf("/kill/before/%d", i), fmt.Sprintf("b%d", i)
		put(httpPut(t, c.cp, key, value), key, value)
	}
	w.waitRevision(t, want[len(want)-1].rev)

	c.kill(t)
	// While the cp is down: plain SQL and the CLI, straight to PostgreSQL.
	for i := range 3 {
		key, value := fmt.Sprintf("/kill/during/%d", i), fmt.Sprintf("d%d", i)
		put(sqlSet(t, pg, key, value), key, value)
	}
	out := runCLI(t, pg, "-o", "json", "put", "/kill/during/cli", "c")
	put(revisionOf(t, response{status: http.StatusOK, body: []byte(out)}), "/kill/during/cli", "c")
	rev, err := strconv.ParseInt(execSQL(t, pg, `select walwatch.del('/kill/before/0')::text`), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, etcdEvent{mvccpb.DELETE, "/kill/before/0", "", rev})

	c.restart(t)
	for i := range 3 {
		key, value := fmt.Sprintf("/kill/after/%d", i), fmt.Sprintf("a%d", i)
		put(httpPut(t, c.cp, key, value), key, value)
	}
	resp, err := etcd.Put(t.Context(), "/kill/after/etcd", "e") // the client's own retry finds the new cp
	if err != nil {
		t.Fatal(err)
	}
	put(resp.Header.Revision, "/kill/after/etcd", "e")

	w.waitRevision(t, want[len(want)-1].rev)
	got, werr := w.seen()
	if werr != nil {
		t.Errorf("etcd watch ended: %v", werr)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("etcd watch across the kill saw\n%v\nwant (each revision once, in order)\n%v", got, want)
	}
	// A SIGTERM with the watch still open ends its stream and exits
	// cleanly (the harness checks the exit and the graceful shutdown).
	c.stop(t)
}

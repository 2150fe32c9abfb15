package etcdapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/expiry"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TTLs these tests grant: etcd's minimum for leases left to expire, so
// that expiry comes soon; a second more for leases kept alive, whose next
// keep-alive answer clientv3 must have within the TTL of the last, or it
// gives up on the lease (a busy CI machine with -race).
const (
	leaseTTL = store.MinLeaseTTL
	keptTTL  = 3
)

// newLeaseEnv is newEnv with the lease expiry duty: the server's walwatch
// client takes part in it, as a cp's does, and on a database of its own it
// holds it.
func newLeaseEnv(t *testing.T) *env {
	t.Helper()
	url := pgtest.NewDatabase(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	client, err := walwatch.Open(t.Context(), url,
		walwatch.WithConfig(walwatch.Config{LeaseExpiry: &expiry.Config{}}),
		walwatch.WithMigrate(), walwatch.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return startServer(t, client)
}

// openEtcdClient returns a clientv3 client of e that the test may close
// itself (to stop its keep-alives, as a process that dies does); the
// cleanup closes it too, whatever that returns then.
func openEtcdClient(t *testing.T, e *env) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mustGrant grants a lease of ttl seconds.
func mustGrant(t *testing.T, c *clientv3.Client, ttl int64) clientv3.LeaseID {
	t.Helper()
	g, err := c.Grant(callCtx(t), ttl)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return g.ID
}

// mustPutLease puts key with lease id and returns the revision.
func mustPutLease(t *testing.T, c *clientv3.Client, key string, id clientv3.LeaseID) int64 {
	t.Helper()
	res, err := c.Put(callCtx(t), key, "v", clientv3.WithLease(id))
	if err != nil {
		t.Fatalf("put %s with lease %x: %v", key, id, err)
	}
	return res.Header.Revision
}

// currentRevision reads the store's current revision.
func currentRevision(t *testing.T, e *env) int64 {
	t.Helper()
	cur, _, err := e.client.Store().Revision(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

// leaseDeadline reads a lease's deadline, by the database's clock (which
// is this machine's).
func leaseDeadline(t *testing.T, e *env, id clientv3.LeaseID) time.Time {
	t.Helper()
	var d time.Time
	if err := e.client.Store().Pool().QueryRow(callCtx(t), "select deadline from walwatch.lease where id = $1", int64(id)).Scan(&d); err != nil {
		t.Fatalf("deadline of lease %x: %v", id, err)
	}
	return d
}

// watchResp is one watch response as a watchLog keeps it.
type watchResp struct {
	at     time.Time
	events []*mvccpb.Event
}

// watchLog records the responses of a clientv3 watch, and when each came.
type watchLog struct {
	mu    sync.Mutex
	resps []watchResp
	err   error
}

// watchFrom watches prefix from rev for as long as the test runs.
func watchFrom(t *testing.T, c *clientv3.Client, prefix string, rev int64) *watchLog {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &watchLog{}
	ch := c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range ch {
			at := time.Now()
			w.mu.Lock()
			if err := resp.Err(); err != nil && w.err == nil {
				w.err = err
			}
			if len(resp.Events) > 0 {
				w.resps = append(w.resps, watchResp{at: at, events: resp.Events})
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *watchLog) responses() []watchResp {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.resps)
}

// events counts the events seen of type typ.
func (w *watchLog) events(typ mvccpb.Event_EventType) int {
	n := 0
	for _, r := range w.responses() {
		for _, ev := range r.events {
			if ev.Type == typ {
				n++
			}
		}
	}
	return n
}

// waitEvents waits until the watch has seen n events of type typ.
func (w *watchLog) waitEvents(t *testing.T, typ mvccpb.Event_EventType, n int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("the watch to see %d %s events", n, typ), func() bool {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err != nil {
			t.Fatalf("watch failed: %v", err)
		}
		return w.events(typ) >= n
	})
}

// deletesByRevision returns the keys deleted at each revision, and for
// each revision the index of the response that carried its first delete.
func (w *watchLog) deletesByRevision() (keys map[int64][]string, resp map[int64]int) {
	keys, resp = map[int64][]string{}, map[int64]int{}
	for i, r := range w.responses() {
		for _, ev := range r.events {
			if ev.Type != mvccpb.DELETE {
				continue
			}
			rev := ev.Kv.ModRevision
			if _, ok := resp[rev]; !ok {
				resp[rev] = i
			} else if resp[rev] != i {
				resp[rev] = -1 // one revision's deletes in two responses
			}
			keys[rev] = append(keys[rev], string(ev.Kv.Key))
		}
	}
	return keys, resp
}

// Grant as etcd's: an ID of the server's choosing, or the one asked for;
// a TTL under the minimum raised to it; a taken ID and a TTL too large
// refused with etcd's errors, the TTL's first; the header at the current
// revision, which a grant does not move.
func TestLeaseGrant(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	rev := mustPut(t, c, "/grant/x", "v")

	var ids []int64
	for _, c2 := range []struct{ ttl, want int64 }{{0, 2}, {1, 2}, {-5, 2}, {2, 2}, {5, 5}, {store.MaxLeaseTTL, store.MaxLeaseTTL}} {
		g, err := c.Grant(ctx, c2.ttl)
		if err != nil {
			t.Fatalf("grant TTL %d: %v", c2.ttl, err)
		}
		if g.ID <= 0 || g.TTL != c2.want || g.ResponseHeader.Revision != rev {
			t.Errorf("grant TTL %d: ID %d TTL %d revision %d, want a positive ID, TTL %d, revision %d", c2.ttl, g.ID, g.TTL, g.ResponseHeader.Revision, c2.want, rev)
		}
		ids = append(ids, int64(g.ID))
	}

	leases := pb.NewLeaseClient(c.ActiveConnection())
	g, err := leases.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 4242, TTL: 10})
	if err != nil || g.ID != 4242 || g.TTL != 10 || g.Header.Revision != rev {
		t.Fatalf("grant ID 4242: %v, %v", g, err)
	}
	ids = append(ids, 4242)
	for _, c2 := range []struct {
		name string
		req  *pb.LeaseGrantRequest
		want error
	}{
		{"a taken ID", &pb.LeaseGrantRequest{ID: 4242, TTL: 10}, rpctypes.ErrLeaseExist},
		{"a TTL too large", &pb.LeaseGrantRequest{TTL: store.MaxLeaseTTL + 1}, rpctypes.ErrLeaseTTLTooLarge},
		{"a taken ID and a TTL too large", &pb.LeaseGrantRequest{ID: 4242, TTL: store.MaxLeaseTTL + 1}, rpctypes.ErrLeaseTTLTooLarge},
	} {
		if _, err := leases.LeaseGrant(ctx, c2.req); !errors.Is(rpctypes.Error(err), c2.want) {
			t.Errorf("grant with %s: %v, want %v", c2.name, err, c2.want)
		}
	}
	if _, err := c.Grant(ctx, store.MaxLeaseTTL+1); !errors.Is(err, rpctypes.ErrLeaseTTLTooLarge) {
		t.Errorf("clientv3 grant with a TTL too large: %v, want %v", err, rpctypes.ErrLeaseTTLTooLarge)
	}
	// etcd takes a negative ID; walwatch's leases are positive.
	if _, err := leases.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: -7, TTL: 10}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("grant ID -7: %v, want InvalidArgument", err)
	}

	list, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, l := range list.Leases {
		got = append(got, int64(l.ID))
	}
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) || list.ResponseHeader.Revision != rev {
		t.Errorf("leases: %v at revision %d, want %v at %d", got, list.ResponseHeader.Revision, ids, rev)
	}
	if cur := currentRevision(t, e); cur != rev {
		t.Errorf("grants moved the revision from %d to %d", rev, cur)
	}
}

// A lease's keys stay while clientv3 keeps it alive, for several TTLs;
// keep-alives cost no revision and no event; TimeToLive lists the keys; a
// revoke deletes them all at one revision, which its header carries and a
// watcher gets in one response; the keep-alive channel closes then.
func TestLeaseKeepAliveThenRevoke(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	c := e.etcd
	id := mustGrant(t, c, keptTTL)
	keys := []string{"/ka/a", "/ka/b", "/ka/c"}
	for _, k := range keys {
		mustPutLease(t, c, k, id)
	}
	before := mustPut(t, c, "/ka/plain", "no lease")
	w := watchFrom(t, c, "/ka/", before+1)

	kctx, stopKeepAlive := context.WithCancel(t.Context())
	defer stopKeepAlive()
	ka, err := c.KeepAlive(kctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// Keep it alive for three TTLs: a scenario's length, not a wait for a
	// result.
	end := time.After(3 * keptTTL * time.Second)
	answers := 0
	for done := false; !done; {
		select {
		case r, ok := <-ka:
			if !ok {
				t.Fatalf("keep-alive channel closed after %d answers", answers)
			}
			if r.ID != id || r.TTL != keptTTL || r.Revision > before {
				t.Fatalf("keep-alive answer: ID %x TTL %d revision %d, want %x, %d, at most %d", r.ID, r.TTL, r.Revision, id, keptTTL, before)
			}
			answers++
		case <-end:
			done = true
		}
	}
	if answers < 3 {
		t.Errorf("%d keep-alive answers in three TTLs, want several", answers)
	}
	t.Logf("%d keep-alive answers in %ds", answers, 3*keptTTL)

	got, err := c.Get(callCtx(t), "/ka/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if keysOf(got.Kvs) != "/ka/a,/ka/b,/ka/c,/ka/plain" {
		t.Fatalf("keys kept alive: %s", keysOf(got.Kvs))
	}
	if cur := currentRevision(t, e); cur != before || got.Header.Revision != before {
		t.Errorf("revision %d after the keep-alives (read at %d), want %d: a keep-alive is not a write", cur, got.Header.Revision, before)
	}
	if n := len(w.responses()); n != 0 {
		t.Errorf("the watcher saw %d responses during the keep-alives, want none", n)
	}

	ttl, err := c.TimeToLive(callCtx(t), id, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	var attached []string
	for _, k := range ttl.Keys {
		attached = append(attached, string(k))
	}
	slices.Sort(attached)
	if ttl.ID != id || ttl.GrantedTTL != keptTTL || ttl.TTL < 0 || ttl.TTL > keptTTL || !slices.Equal(attached, keys) || ttl.Revision != before {
		t.Errorf("time to live: ID %x TTL %d granted %d keys %q revision %d; want %x, 0..%d, %d, %q, %d",
			ttl.ID, ttl.TTL, ttl.GrantedTTL, attached, ttl.Revision, id, keptTTL, keptTTL, keys, before)
	}
	if ttl, err := c.TimeToLive(callCtx(t), id); err != nil || ttl.Keys != nil || ttl.GrantedTTL != keptTTL {
		t.Errorf("time to live without keys: %+v, %v", ttl, err)
	}

	rv, err := c.Revoke(callCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if rv.Header.Revision != before+1 {
		t.Errorf("revoke at revision %d, want %d", rv.Header.Revision, before+1)
	}
	w.waitEvents(t, mvccpb.DELETE, len(keys))
	resps := w.responses()
	if len(resps) != 1 {
		t.Fatalf("the revoke came in %d watch responses, want 1", len(resps))
	}
	var deleted []string
	for _, ev := range resps[0].events {
		if ev.Type != mvccpb.DELETE || ev.Kv.ModRevision != rv.Header.Revision {
			t.Errorf("revoke's event: %s, want a DELETE at %d", fmtEvent(ev), rv.Header.Revision)
		}
		deleted = append(deleted, string(ev.Kv.Key))
	}
	if slices.Sort(deleted); !slices.Equal(deleted, keys) {
		t.Errorf("revoke deleted %q, want %q", deleted, keys)
	}
	if got, err := c.Get(callCtx(t), "/ka/", clientv3.WithPrefix()); err != nil || keysOf(got.Kvs) != "/ka/plain" {
		t.Errorf("after the revoke: %v, %v; want /ka/plain alone", got, err)
	}
	if ttl, err := c.TimeToLive(callCtx(t), id); err != nil || ttl.TTL != -1 {
		t.Errorf("time to live of a revoked lease: %+v, %v; want TTL -1", ttl, err)
	}
	// clientv3 closes the keep-alive channel once the server says the
	// lease is gone.
	wait.For(t, "the keep-alive channel to close", func() bool {
		select {
		case _, ok := <-ka:
			return !ok
		default:
			return false
		}
	})
}

// A lease whose keep-alives never come expires: the expiry duty deletes
// its keys at one revision of its own, within about its interval of the
// deadline (logged, not asserted), and a lease with no keys expires with no
// revision.
func TestLeaseExpiry(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	c := e.etcd
	const leases = 20
	// Watch from before the first grant: under load, the first leases may
	// expire before the last keys are put.
	before := mustGetRevision(t, c)
	w := watchFrom(t, c, "/exp/", before+1)
	empty := mustGrant(t, c, leaseTTL)
	ids := make([]clientv3.LeaseID, leases)
	owner := map[string]clientv3.LeaseID{}
	deadlines := map[clientv3.LeaseID]time.Time{}
	for i := range ids {
		ids[i] = mustGrant(t, c, leaseTTL)
		deadlines[ids[i]] = leaseDeadline(t, e, ids[i])
		for _, k := range []string{"a", "b"} {
			key := fmt.Sprintf("/exp/%02d/%s", i, k)
			mustPutLease(t, c, key, ids[i])
			owner[key] = ids[i]
		}
	}

	w.waitEvents(t, mvccpb.DELETE, 2*leases)
	keys, resp := w.deletesByRevision()
	resps := w.responses()
	var delays []time.Duration
	for rev, ks := range keys {
		if len(ks) != 2 || owner[ks[0]] != owner[ks[1]] || resp[rev] < 0 {
			t.Errorf("revision %d deleted %q (response %d), want one lease's two keys in one response", rev, ks, resp[rev])
			continue
		}
		delays = append(delays, resps[resp[rev]].at.Sub(deadlines[owner[ks[0]]]))
	}
	if len(keys) != leases {
		t.Errorf("%d delete revisions for %d leases, want one each", len(keys), leases)
	}
	slices.Sort(delays)
	if len(delays) > 0 {
		t.Logf("expiry delay, deadline to DELETE event, over %d leases: p50 %v, p99 %v, min %v, max %v",
			len(delays), percentile(delays, 0.50), percentile(delays, 0.99), delays[0], delays[len(delays)-1])
	}

	// The lease without keys, granted first, is gone, and took no revision.
	wait.For(t, "the lease without keys to expire", func() bool {
		ttl, err := c.TimeToLive(callCtx(t), empty)
		return err == nil && ttl.TTL == -1
	})
	want := before + 2*leases + leases
	wait.For(t, fmt.Sprintf("revision %d to be visible", want), func() bool { return currentRevision(t, e) >= want })
	if cur := currentRevision(t, e); cur != want {
		t.Errorf("revision %d after %d puts and %d leases with keys expired, want %d", cur, 2*leases, leases, want)
	}
	if _, err := c.KeepAliveOnce(callCtx(t), ids[0]); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("keep-alive of an expired lease: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if list, err := c.Leases(callCtx(t)); err != nil || len(list.Leases) != 0 {
		t.Errorf("leases after expiry: %v, %v; want none", list, err)
	}
}

// percentile returns the q-quantile (nearest rank) of sorted xs.
func percentile(xs []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(xs))+0.999999) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// Every way to name a lease that does not exist, answered as etcd's.
func TestLeaseUnknown(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	c := e.etcd
	ctx := callCtx(t)
	const unknown = clientv3.LeaseID(424242)
	if _, err := c.Revoke(ctx, unknown); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("revoke: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if _, err := c.Revoke(ctx, 0); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("revoke 0: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if _, err := c.KeepAliveOnce(ctx, unknown); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("keep-alive once: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if _, err := c.Put(ctx, "/unknown/k", "v", clientv3.WithLease(unknown)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("put: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	rev := mustGetRevision(t, c)
	for _, id := range []clientv3.LeaseID{unknown, 0, -3} {
		ttl, err := c.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
		if err != nil || ttl.ID != id || ttl.TTL != -1 || ttl.GrantedTTL != 0 || len(ttl.Keys) != 0 || ttl.Revision != rev {
			t.Errorf("time to live of %d: %+v, %v; want TTL -1 at revision %d", id, ttl, err, rev)
		}
	}
	// On the stream, an unknown lease is answered with TTL 0.
	s, err := pb.NewLeaseClient(c.ActiveConnection()).LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{int64(unknown), 0, -3} {
		if err := s.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil || r.ID != id || r.TTL != 0 || r.Header.Revision != rev {
			t.Errorf("keep-alive of %d: %v, %v; want TTL 0 at revision %d", id, r, err, rev)
		}
	}
}

// A put without the lease detaches a key: the revoke leaves it. A lease
// without keys is revoked at the current revision, taking none.
func TestLeaseDetach(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	c := e.etcd
	id := mustGrant(t, c, 10)
	mustPutLease(t, c, "/detach/a", id)
	mustPutLease(t, c, "/detach/b", id)
	rev := mustPut(t, c, "/detach/b", "detached")
	ttl, err := c.TimeToLive(callCtx(t), id, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "/detach/a" {
		t.Fatalf("keys after detaching /detach/b: %+v, %v", ttl, err)
	}
	rv, err := c.Revoke(callCtx(t), id)
	if err != nil || rv.Header.Revision != rev+1 {
		t.Fatalf("revoke: %v, %v; want revision %d", rv, err, rev+1)
	}
	if got, err := c.Get(callCtx(t), "/detach/", clientv3.WithPrefix()); err != nil || keysOf(got.Kvs) != "/detach/b" {
		t.Fatalf("after the revoke: %v, %v; want /detach/b alone", got, err)
	}

	empty := mustGrant(t, c, 10)
	rv, err = c.Revoke(callCtx(t), empty)
	if err != nil || rv.Header.Revision != rev+1 {
		t.Fatalf("revoke of a lease without keys: %v, %v; want the current revision, %d", rv, err, rev+1)
	}
	if cur := currentRevision(t, e); cur != rev+1 {
		t.Errorf("revision %d after revoking a lease without keys, want %d", cur, rev+1)
	}
}

// One stream takes many keep-alives at once, sent without waiting for
// answers, and answers each in order; many streams at once, too (their
// renewals share the store's batches). None costs a revision.
//
// Not parallel: its storm of keep-alives would delay those of the tests
// that need theirs answered in time.
func TestLeaseKeepAliveStreams(t *testing.T) {
	e := newLeaseEnv(t)
	c := e.etcd
	var ids []int64
	for range 5 {
		ids = append(ids, int64(mustGrant(t, c, 10)))
	}
	rev := mustPut(t, c, "/streams/x", "v")
	settled(t, e, rev)
	leases := pb.NewLeaseClient(c.ActiveConnection())

	const n = 1000 // several times maxKeepAlivesInFlight
	want := func(i int) (id, ttl int64) {
		if i%7 == 6 {
			return 999_000 + int64(i), 0 // unknown
		}
		return ids[i%len(ids)], 10
	}
	check := func(t *testing.T, s pb.Lease_LeaseKeepAliveClient) {
		sendErr := make(chan error, 1)
		go func() {
			for i := range n {
				id, _ := want(i)
				if err := s.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
					sendErr <- err
					return
				}
			}
			sendErr <- s.CloseSend()
		}()
		for i := range n {
			r, err := s.Recv()
			if err != nil {
				t.Errorf("answer %d: %v", i, err)
				return
			}
			id, ttl := want(i)
			if r.ID != id || r.TTL != ttl || r.Header.Revision != rev {
				t.Errorf("answer %d: ID %d TTL %d revision %d, want %d, %d, %d", i, r.ID, r.TTL, r.Header.Revision, id, ttl, rev)
				return
			}
		}
		if err := <-sendErr; err != nil {
			t.Errorf("send: %v", err)
		}
		// The client closed its side: the server ends the stream.
		if _, err := s.Recv(); err == nil {
			t.Errorf("stream goes on after the client closed its side and every answer came")
		}
	}

	s, err := leases.LeaseKeepAlive(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	check(t, s)

	var wg sync.WaitGroup
	for range 8 {
		s, err := leases.LeaseKeepAlive(callCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { check(t, s) })
	}
	wg.Wait()
	if cur := currentRevision(t, e); cur != rev {
		t.Errorf("revision %d after %d keep-alives, want %d", cur, 9*n, rev)
	}
}

// The server's stop ends keep-alive streams with etcd's "server stopped",
// on which clientv3 opens another elsewhere.
func TestLeaseKeepAliveEndsWhenServerStops(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	id := mustGrant(t, e.etcd, 10)
	s, err := pb.NewLeaseClient(e.etcd.ActiveConnection()).LeaseKeepAlive(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.TTL != 10 {
		t.Fatalf("keep-alive: %v, %v", r, err)
	}
	e.stop()
	for {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		if s, _ := status.FromError(err); s.Code() != codes.Unavailable || s.Message() != "etcdserver: server stopped" {
			t.Errorf("keep-alive stream at stop: %v, want etcd's server stopped (Unavailable)", err)
		}
		return
	}
}

// Leases through the JSON gateway, as curl uses them: the answers and the
// errors etcd's gateway gives for the same requests.
func TestLeaseGateway(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t)
	code, g := gatewayPost(t, e, "/v3/lease/grant", `{"TTL": 10, "ID": 77}`)
	if code != http.StatusOK || field(g, "ID") != "77" || field(g, "TTL") != "10" || field(g, "header", "revision") != "1" {
		t.Fatalf("grant: %d %v", code, g)
	}
	code, g = gatewayPost(t, e, "/v3/lease/grant", `{"TTL": 10, "ID": 77}`)
	if code != http.StatusBadRequest || field(g, "code") != "9" || field(g, "message") != "etcdserver: lease already exists" {
		t.Errorf("grant of a taken ID: %d %v", code, g)
	}
	code, put := gatewayPost(t, e, "/v3/kv/put", fmt.Sprintf(`{"key": %q, "value": %q, "lease": "77"}`, b64("/gw/l"), b64("v")))
	if code != http.StatusOK || field(put, "header", "revision") != "2" {
		t.Fatalf("put with the lease: %d %v", code, put)
	}
	code, ttl := gatewayPost(t, e, "/v3/lease/timetolive", `{"ID": 77, "keys": true}`)
	if code != http.StatusOK || field(ttl, "grantedTTL") != "10" || field(ttl, "keys", 0) != b64("/gw/l") || field(ttl, "header", "revision") != "2" {
		t.Errorf("time to live: %d %v", code, ttl)
	}
	code, ttl = gatewayPost(t, e, "/v3/kv/lease/timetolive", `{"ID": 78}`)
	if code != http.StatusOK || field(ttl, "TTL") != "-1" {
		t.Errorf("time to live of an unknown lease: %d %v", code, ttl)
	}
	code, list := gatewayPost(t, e, "/v3/lease/leases", `{}`)
	if code != http.StatusOK || field(list, "leases", 0, "ID") != "77" {
		t.Errorf("leases: %d %v", code, list)
	}
	code, ka := gatewayPost(t, e, "/v3/lease/keepalive", `{"ID": 77}`)
	if code != http.StatusOK || field(ka, "result", "TTL") != "10" || field(ka, "result", "ID") != "77" {
		t.Errorf("keep-alive: %d %v", code, ka)
	}
	code, rv := gatewayPost(t, e, "/v3/lease/revoke", `{"ID": 77}`)
	if code != http.StatusOK || field(rv, "header", "revision") != "3" {
		t.Errorf("revoke: %d %v", code, rv)
	}
	code, rv = gatewayPost(t, e, "/v3/kv/lease/revoke", `{"ID": 77}`)
	if code != http.StatusNotFound || field(rv, "code") != "5" || field(rv, "message") != "etcdserver: requested lease not found" {
		t.Errorf("revoke again: %d %v", code, rv)
	}
	code, g = gatewayPost(t, e, "/v3/lease/grant", `{"TTL": 9000000001}`)
	if code != http.StatusBadRequest || field(g, "code") != "11" || !strings.Contains(field(g, "message"), "too large lease TTL") {
		t.Errorf("grant with a TTL too large: %d %v", code, g)
	}
}

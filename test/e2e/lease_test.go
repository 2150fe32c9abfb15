package e2e_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/walwatch/walwatch/test/wait"
)

// etcdLeaseTTL is the TTL of these tests' leases: a little over etcd's
// minimum, so that clientv3's keep-alives (every third of it, on a 500 ms
// tick) keep a lease alive on a busy machine.
const etcdLeaseTTL = 3

// dutyLine is what a cp logs when it takes the lease expiry duty.
const dutyLine = "holding the lease expiry duty"

// dutyHolder waits until one of the cps holds the expiry duty and returns
// it, and the other.
func dutyHolder(t *testing.T, a, b *etcdCP) (holder, other *etcdCP) {
	t.Helper()
	wait.For(t, "a cp to take the lease expiry duty", func() bool { return a.count(dutyLine)+b.count(dutyLine) > 0 })
	if n := a.count(dutyLine) + b.count(dutyLine); n != 1 {
		t.Fatalf("%d cps took the lease expiry duty, want one", n)
	}
	if a.count(dutyLine) == 1 {
		return a, b
	}
	return b, a
}

// deletesOf returns the keys each revision deleted, as w saw them.
func deletesOf(w *etcdWatcher) map[int64][]string {
	evs, _ := w.seen()
	out := map[int64][]string{}
	for _, ev := range evs {
		if ev.typ == mvccpb.DELETE {
			out[ev.rev] = append(out[ev.rev], ev.key)
		}
	}
	return out
}

// keepAliveFor keeps id alive through c for d, a scenario's length, and
// fails if an answer says the lease is gone.
func keepAliveFor(t *testing.T, c *clientv3.Client, id clientv3.LeaseID, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ka, err := c.KeepAlive(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	end := time.After(d)
	for n := 0; ; n++ {
		select {
		case r, ok := <-ka:
			if !ok {
				t.Fatalf("lease %x: keep-alives ended after %d answers", id, n)
			}
			if r.TTL != etcdLeaseTTL {
				t.Fatalf("lease %x: keep-alive answered TTL %d, want %d", id, r.TTL, etcdLeaseTTL)
			}
		case <-end:
			return
		}
	}
}

// Two cps on one database: a lease granted through one and kept alive
// through the other keeps its keys; once the keep-alives stop, its keys are
// deleted once, at one revision, as a watcher on each cp sees. Then the cp
// holding the expiry duty is killed: the other takes the duty over, a lease
// kept alive through it lives on, and one left to lapse is still expired.
func TestEtcdLeasesAcrossTwoCPs(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	a := startEtcdCP(t, pg, slotName(t, "leasea"))
	b := startEtcdCP(t, pg, slotName(t, "leaseb"))
	ca, cb := newEtcdClient(t, a.etcdAddr), newEtcdClient(t, b.etcdAddr)
	ctx := t.Context()

	start, err := ca.Get(ctx, "/lease/")
	if err != nil {
		t.Fatal(err)
	}
	wa := watchEtcd(t, ca, "/lease/", start.Header.Revision+1)
	wb := watchEtcd(t, cb, "/lease/", start.Header.Revision+1)

	// Granted through a, kept alive through b.
	g, err := ca.Grant(ctx, etcdLeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{"/lease/shared/a", "/lease/shared/b", "/lease/shared/c"}
	for _, k := range keys {
		if _, err := ca.Put(ctx, k, "v", clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	keepAliveFor(t, cb, g.ID, 2*etcdLeaseTTL*time.Second)
	if r, err := ca.Get(ctx, "/lease/shared/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || r.Count != 3 {
		t.Fatalf("keys kept alive through the other cp: %v, %v; want 3", r, err)
	}
	stopped := time.Now()

	// The keep-alives have stopped: the keys go, once, at one revision. A
	// write after it, seen by both watchers, shows nothing came later.
	for _, w := range []*etcdWatcher{wa, wb} {
		wait.For(t, "the keys to expire", func() bool { return len(deletesOf(w)) > 0 })
	}
	t.Logf("the keys were deleted %v after the keep-alives stopped (TTL %ds)", time.Since(stopped).Round(time.Millisecond), etcdLeaseTTL)
	marker, err := cb.Put(ctx, "/lease/marker", "after")
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range map[string]*etcdWatcher{"a": wa, "b": wb} {
		w.waitRevision(t, marker.Header.Revision)
		dels := deletesOf(w)
		if len(dels) != 1 {
			t.Fatalf("the watcher on cp %s saw deletes at %d revisions, want one: %v", name, len(dels), dels)
		}
		for rev, ks := range dels {
			slices.Sort(ks)
			if !slices.Equal(ks, keys) || marker.Header.Revision != rev+1 {
				t.Errorf("the watcher on cp %s saw %q deleted at %d (the next write at %d), want %q, once, at the revision before it", name, ks, rev, marker.Header.Revision, keys)
			}
		}
	}

	// The duty's holder dies while a lease is kept alive through the other
	// cp, and another is left to lapse.
	holder, survivor := dutyHolder(t, a, b)
	cs := map[*etcdCP]*clientv3.Client{a: ca, b: cb}[survivor]
	ws := map[*etcdCP]*etcdWatcher{a: wa, b: wb}[survivor]
	alive, err := cs.Grant(ctx, etcdLeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	lapse, err := cs.Grant(ctx, etcdLeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Put(ctx, "/lease/alive", "v", clientv3.WithLease(alive.ID)); err != nil {
		t.Fatal(err)
	}
	lapsePut, err := cs.Put(ctx, "/lease/lapse", "v", clientv3.WithLease(lapse.ID))
	if err != nil {
		t.Fatal(err)
	}
	kctx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	ka, err := cs.KeepAlive(kctx, alive.ID)
	if err != nil {
		t.Fatal(err)
	}

	holder.kill(t)
	killed := time.Now()
	survivor.waitLog(t, dutyLine, 1)
	t.Logf("the duty moved %v after the kill", time.Since(killed).Round(time.Millisecond))
	// The killed cp's slot is left behind, as after any crash; a cp started
	// on it again would resume from it. Nobody will: drop it.
	runCLI(t, pg, "slot", "drop", "--force", holder.slot)

	wait.For(t, "the lapsed lease's key to be deleted by the survivor", func() bool {
		for rev, ks := range deletesOf(ws) {
			if rev > lapsePut.Header.Revision && slices.Equal(ks, []string{"/lease/lapse"}) {
				return true
			}
		}
		return false
	})
	// The lease kept alive lives on, through the change of hands and two
	// TTLs more.
	end := time.After(2 * etcdLeaseTTL * time.Second)
	for done := false; !done; {
		select {
		case r, ok := <-ka:
			if !ok || r.TTL != etcdLeaseTTL {
				t.Fatalf("the lease kept alive through the survivor: answer %v (channel open: %v)", r, ok)
			}
		case <-end:
			done = true
		}
	}
	if r, err := cs.Get(ctx, "/lease/alive"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("the key of the lease kept alive: %v, %v", r, err)
	}
	if ttl, err := cs.TimeToLive(ctx, alive.ID); err != nil || ttl.TTL <= 0 {
		t.Fatalf("the lease kept alive: %+v, %v", ttl, err)
	}
}

// A concurrency.Mutex across two cps: its holder's process dies (its client
// closes, its keep-alives stop, its lease is not revoked) and the other
// contender, talking to the other cp, gets the lock once the lease expires.
func TestEtcdMutexHolderGoneAcrossTwoCPs(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	a := startEtcdCP(t, pg, slotName(t, "mutexa"))
	b := startEtcdCP(t, pg, slotName(t, "mutexb"))
	ca, cb := newEtcdClient(t, a.etcdAddr), newEtcdClient(t, b.etcdAddr)

	s1, err := concurrency.NewSession(ca, concurrency.WithTTL(etcdLeaseTTL))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := concurrency.NewSession(cb, concurrency.WithTTL(etcdLeaseTTL))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	m1, m2 := concurrency.NewMutex(s1, "/mutex/"), concurrency.NewMutex(s2, "/mutex/")
	if err := m1.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	locked := make(chan error, 1)
	go func() { locked <- m2.Lock(t.Context()) }()
	wait.For(t, "the second contender to queue", func() bool {
		r, err := cb.Get(t.Context(), "/mutex/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && r.Count == 2
	})
	select {
	case err := <-locked:
		t.Fatalf("the second contender took the lock the first holds: %v", err)
	default:
	}

	ca.Close() // the holder's process dies: no revoke, no more keep-alives
	died := time.Now()
	select {
	case err := <-locked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait.Timeout):
		t.Fatalf("the second contender has not the lock %v after the holder died", wait.Timeout)
	}
	t.Logf("the lock passed %v after the holder died (its lease: %ds)", time.Since(died).Round(time.Millisecond), etcdLeaseTTL)
	r, err := cb.Get(t.Context(), "/mutex/", clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Key) != m2.Key() {
		t.Fatalf("lock keys: %v, %v; want the second contender's alone", r, err)
	}
}

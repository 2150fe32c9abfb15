package store_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// expireNow moves lease id's deadline into the past, as time would.
func expireNow(t *testing.T, s *store.Store, id int64) {
	t.Helper()
	if _, err := s.Pool().Exec(testContext(t), "update walwatch.lease set deadline = clock_timestamp() - interval '1 second' where id = $1", id); err != nil {
		t.Fatal(err)
	}
}

func TestLeaseLifecycle(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	l, err := s.Grant(ctx, 1, 0)
	if err != nil || l.ID <= 0 || l.TTL != store.MinLeaseTTL {
		t.Fatalf("grant TTL 1: %+v, %v; want a positive ID and TTL raised to %d", l, err, store.MinLeaseTTL)
	}
	if _, err := s.Grant(ctx, 10, l.ID); !errors.Is(err, store.ErrLeaseExists) {
		t.Fatalf("grant a taken ID: %v", err)
	}
	if _, err := s.Grant(ctx, store.MaxLeaseTTL+1, 0); !errors.Is(err, store.ErrLeaseTTLTooLarge) {
		t.Fatalf("grant a TTL too large: %v", err)
	}
	if _, err := s.PutLease(ctx, []byte("/a"), []byte("1"), 12345); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("put with an unknown lease: %v", err)
	}
	for _, k := range []string{"/a", "/b", "/c"} {
		if _, err := s.PutLease(ctx, []byte(k), []byte("1"), l.ID); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, s, "/c", "detached") // a put without the lease detaches the key
	got, ok, err := s.TimeToLive(ctx, l.ID, true)
	if err != nil || !ok || got.TTL != 2 || got.Remaining < 1 || got.Remaining > 2 || len(got.Keys) != 2 {
		t.Fatalf("time to live: %+v %v %v", got, ok, err)
	}
	kv, _, err := s.Get(ctx, []byte("/a"), 0)
	if err != nil || kv.Lease != l.ID {
		t.Fatalf("/a's lease: %+v, %v", kv, err)
	}
	if ttl, err := s.KeepAlive(ctx, l.ID); err != nil || ttl != 2 {
		t.Fatalf("keep alive: %d, %v", ttl, err)
	}
	if ttl, err := s.KeepAlive(ctx, 999); err != nil || ttl != 0 {
		t.Fatalf("keep alive of an unknown lease: %d, %v", ttl, err)
	}
	ids, err := s.Leases(ctx)
	if err != nil || len(ids) != 1 || ids[0] != l.ID {
		t.Fatalf("leases: %v, %v", ids, err)
	}
	cur, _, _ := s.Revision(ctx)
	res, err := s.Revoke(ctx, l.ID)
	if err != nil || res.Deleted != 2 || res.Revision != cur+1 {
		t.Fatalf("revoke: %+v, %v; want 2 keys at %d", res, err, cur+1)
	}
	r, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/"))})
	if err != nil || len(r.KVs) != 1 || string(r.KVs[0].Key) != "/c" {
		t.Fatalf("after revoke: %v, %v", kvs(r), err)
	}
	if _, err := s.Revoke(ctx, l.ID); !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("revoke again: %v", err)
	}
	if _, ok, err := s.TimeToLive(ctx, l.ID, false); ok || err != nil {
		t.Fatalf("time to live of a revoked lease: %v, %v", ok, err)
	}
}

func TestLeaseExpiry(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	withKeys, _ := s.Grant(ctx, 10, 0)
	empty, _ := s.Grant(ctx, 10, 0)
	alive, _ := s.Grant(ctx, 10, 0)
	for _, k := range []string{"/x", "/y"} {
		if _, err := s.PutLease(ctx, []byte(k), []byte("1"), withKeys.ID); err != nil {
			t.Fatal(err)
		}
	}
	expireNow(t, s, withKeys.ID)
	expireNow(t, s, empty.ID)
	if ttl, err := s.KeepAlive(ctx, empty.ID); err != nil || ttl != 0 {
		t.Fatalf("keep alive of an expired lease: %d, %v", ttl, err)
	}
	cur, _, _ := s.Revision(ctx)
	expired, err := s.ExpireLeases(ctx, 100)
	if err != nil || len(expired) != 2 {
		t.Fatalf("expire: %+v, %v", expired, err)
	}
	for _, e := range expired {
		switch e.ID {
		case withKeys.ID:
			if e.Deleted != 2 || e.Revision != cur+1 {
				t.Errorf("lease with keys expired as %+v, want 2 keys at %d", e, cur+1)
			}
		case empty.ID:
			if e.Deleted != 0 {
				t.Errorf("empty lease expired as %+v", e)
			}
		default:
			t.Errorf("expired %+v", e)
		}
	}
	if now, _, _ := s.Revision(ctx); now != cur+1 {
		t.Fatalf("revision %d after expiry, want %d: an empty lease takes none", now, cur+1)
	}
	if again, err := s.ExpireLeases(ctx, 100); err != nil || len(again) != 0 {
		t.Fatalf("expire again: %+v, %v", again, err)
	}
	// A takeover gives every lease its full TTL.
	expireNow(t, s, alive.ID)
	if n, err := s.ExtendLeases(ctx); err != nil || n != 1 {
		t.Fatalf("extend: %d, %v", n, err)
	}
	if l, ok, err := s.TimeToLive(ctx, alive.ID, false); err != nil || !ok || l.Remaining < 9 {
		t.Fatalf("after extend: %+v, %v, %v", l, ok, err)
	}
}

// TestLeaseKeepAliveBatches keeps many leases alive at once: every one is
// renewed, whatever batch it lands in.
func TestLeaseKeepAliveBatches(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	const n = 200
	ids := make([]int64, n)
	for i := range ids {
		l, err := s.Grant(ctx, 5, 0)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = l.ID
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			if ttl, err := s.KeepAlive(ctx, id); err != nil || ttl != 5 {
				t.Errorf("keep alive %d: %d, %v", id, ttl, err)
			}
		})
	}
	wg.Wait()
}

// TestRevokeRacesPuts revokes a lease while puts attach keys to it: no key
// of the lease survives it, and no put attaches after it.
func TestRevokeRacesPuts(t *testing.T) {
	s, _ := newStore(t, store.Limits{})
	ctx := testContext(t)
	l, _ := s.Grant(ctx, 60, 0)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				_, err := s.PutLease(ctx, []byte{'/', byte('a' + w), byte('a' + i)}, []byte("1"), l.ID)
				if err != nil && !errors.Is(err, store.ErrLeaseNotFound) {
					t.Error(err)
				}
			}
		})
	}
	if _, err := s.Revoke(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	r, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/"))})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range r.KVs {
		if kv.Lease == l.ID {
			t.Fatalf("%s survived its lease's revoke", kv.Key)
		}
	}
}

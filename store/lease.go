package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Lease is a lease as etcd describes it: keys put with it (Op.Lease, or
// PutLease) are deleted, in one revision, when it is revoked or expires. Its
// deadline is kept by the database's clock.
type Lease struct {
	ID        int64
	TTL       int64    // seconds, as granted
	Remaining int64    // seconds left, rounded up (TimeToLive)
	Keys      [][]byte // the keys attached (TimeToLive with keys)
}

// Lease TTL bounds, in seconds, as etcd's: a shorter TTL is raised to
// MinLeaseTTL (etcd's at its default election timeout), a longer one than
// MaxLeaseTTL refused. walwatch.min_lease_ttl and max_lease_ttl hold them
// for SQL.
const (
	MinLeaseTTL = 2
	MaxLeaseTTL = 9000000000
)

// Grant creates a lease of ttl seconds with ID id, or with a random positive
// ID when id is 0. A taken ID fails with ErrLeaseExists, a TTL over
// MaxLeaseTTL with ErrLeaseTTLTooLarge.
func (s *Store) Grant(ctx context.Context, ttl, id int64) (Lease, error) {
	if ttl > MaxLeaseTTL {
		return Lease{}, fmt.Errorf("grant: %w: %d", ErrLeaseTTLTooLarge, ttl)
	}
	if id < 0 {
		return Lease{}, fmt.Errorf("grant: invalid lease ID %d: must be 0 (any) or positive", id)
	}
	var l Lease
	if err := s.pool.QueryRow(ctx, "select id, ttl from walwatch.grant($1, $2)", ttl, id).Scan(&l.ID, &l.TTL); err != nil {
		return Lease{}, fmt.Errorf("grant: %w", TypedError(err, 0))
	}
	return l, nil
}

// Revoke deletes every key attached to lease id at one revision (none when
// it has no keys), then the lease. An unknown lease fails with
// ErrLeaseNotFound.
func (s *Store) Revoke(ctx context.Context, id int64) (DeleteResponse, error) {
	var res DeleteResponse
	if err := s.pool.QueryRow(ctx, "select revision, deleted from walwatch.revoke($1)", id).Scan(&res.Revision, &res.Deleted); err != nil {
		return DeleteResponse{}, fmt.Errorf("revoke lease %d: %w", id, TypedError(err, 0))
	}
	return res, nil
}

// KeepAlive renews lease id to its full TTL and returns that TTL, or 0 when
// the lease does not exist or has expired (etcd's answer to either).
// Keep-alives that arrive together share one statement.
func (s *Store) KeepAlive(ctx context.Context, id int64) (int64, error) {
	return s.renews.keepAlive(ctx, id)
}

// TimeToLive returns lease id's TTL, the seconds it has left and, with keys,
// its keys; ok is false when there is no such lease.
func (s *Store) TimeToLive(ctx context.Context, id int64, keys bool) (l Lease, ok bool, err error) {
	l.ID = id
	err = s.pool.QueryRow(ctx, "select ttl, remaining, keys from walwatch.lease_ttl($1, $2)", id, keys).Scan(&l.TTL, &l.Remaining, &l.Keys)
	switch {
	case err == pgx.ErrNoRows:
		return Lease{ID: id}, false, nil
	case err != nil:
		return Lease{}, false, fmt.Errorf("time to live of lease %d: %w", id, TypedError(err, 0))
	}
	return l, true, nil
}

// Leases returns the IDs of every lease, in order.
func (s *Store) Leases(ctx context.Context) ([]int64, error) {
	rows, err := s.pool.Query(ctx, "select id from walwatch.lease order by id")
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", TypedError(err, 0))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", TypedError(err, 0))
	}
	return ids, nil
}

// ExpiredLease is a lease ExpireLeases revoked.
type ExpiredLease struct {
	ID       int64
	Revision int64 // of its keys' deletion; the current one when it had none
	Deleted  int64
}

// ExpireLeases revokes up to limit leases whose deadline has passed, each at
// a revision of its own. The one holder of the expiry duty calls it.
func (s *Store) ExpireLeases(ctx context.Context, limit int) ([]ExpiredLease, error) {
	rows, err := s.pool.Query(ctx, "select id, revision, deleted from walwatch.expire_leases($1)", limit)
	if err != nil {
		return nil, fmt.Errorf("expire leases: %w", TypedError(err, 0))
	}
	expired, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ExpiredLease])
	if err != nil {
		return nil, fmt.Errorf("expire leases: %w", TypedError(err, 0))
	}
	return expired, nil
}

// ExtendLeases gives every lease its full TTL from now, as etcd's new leader
// does when it takes over: a lease whose owner kept it alive must not expire
// while the expiry duty changes hands.
func (s *Store) ExtendLeases(ctx context.Context) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, "select walwatch.extend_leases()").Scan(&n); err != nil {
		return 0, fmt.Errorf("extend leases: %w", TypedError(err, 0))
	}
	return n, nil
}

// PutLease sets key to value attached to lease (0: none, which detaches
// the key from any lease), at a revision of its own. An unknown lease fails
// with ErrLeaseNotFound.
func (s *Store) PutLease(ctx context.Context, key, value []byte, lease int64) (PutResponse, error) {
	if lease == 0 {
		return s.Put(ctx, key, value)
	}
	res, err := s.Txn(ctx, TxnRequest{Then: []Op{{Kind: OpPut, Range: Key(key), Value: value, Lease: lease}}})
	if err != nil {
		return PutResponse{}, err
	}
	return *res.Responses[0].Put, nil
}

// Keep-alives that arrive while a batch is in flight go in the next one, in
// one statement: 10,000 leases kept alive every second cost the database a
// few statements a second, not 10,000.
const (
	maxBatchKeepAlives = 10000
	// keepAliveTimeout bounds one batch: a keep-alive is everybody's in its
	// batch, so no caller's context may end it.
	keepAliveTimeout = 10 * time.Second
)

type keepAliveCall struct {
	id   int64
	ttl  int64
	err  error
	done chan struct{}
}

// keepAliveBatcher runs keep-alives in batches, one batch at a time, on a
// goroutine that exists only while there is work.
type keepAliveBatcher struct {
	pool    *pgxpool.Pool
	mu      sync.Mutex // protects queue and running
	queue   []*keepAliveCall
	running bool
}

func (b *keepAliveBatcher) keepAlive(ctx context.Context, id int64) (int64, error) {
	c := &keepAliveCall{id: id, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if !b.running {
		b.running = true
		go b.work()
	}
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.ttl, c.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (b *keepAliveBatcher) work() {
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxBatchKeepAlives)
		if n == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		if len(b.queue) == 0 {
			b.queue = nil
		}
		b.mu.Unlock()
		b.run(batch)
	}
}

func (b *keepAliveBatcher) run(batch []*keepAliveCall) {
	ids := make([]int64, len(batch))
	for i, c := range batch {
		ids[i] = c.id
	}
	ctx, cancel := context.WithTimeout(context.Background(), keepAliveTimeout)
	defer cancel()
	ttls := make(map[int64]int64, len(batch))
	rows, err := b.pool.Query(ctx, "select id, ttl from walwatch.keep_alive($1)", ids)
	if err == nil {
		var id, ttl int64
		_, err = pgx.ForEachRow(rows, []any{&id, &ttl}, func() error {
			ttls[id] = ttl
			return nil
		})
	}
	if err != nil {
		err = fmt.Errorf("keep leases alive: %w", TypedError(err, 0))
	}
	for _, c := range batch {
		c.ttl, c.err = ttls[c.id], err
		close(c.done)
	}
}

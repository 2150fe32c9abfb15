// Package walwatch is walwatch's Go client: what etcd's clientv3 gives, in
// one object, on PostgreSQL. A Client puts, gets, deletes, runs
// transactions, compacts and watches; it owns the watch hub (a logical
// replication slot's reader) and its goroutine, and Close ends both.
//
// Reads at the latest revision are safe to follow with a watch: a Get
// answers at a revision at or below which every write is settled and
// visible, so a watch from the next revision misses nothing, even while a
// transaction holds a lower revision open (it waits for that one). Get then
// Watch from res.Revision+1, as with etcd, or ListAndWatch, which does both.
//
// The client is a thin layer over package store (the key-value store on a
// pgx pool) and package replication (the hub): each stays usable alone, and
// Store and Hub return the client's.
package walwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/expiry"
	"github.com/walwatch/walwatch/keyspace"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
)

// ErrNotSettled is returned (wrapped, with the cause: the context's error,
// or PostgreSQL's) by a read whose revision was not settled and visible
// within its wait: a transaction may hold a lower revision open. Nothing is
// wrong with the request; retry it.
var ErrNotSettled = errors.New("revision not settled")

// ErrClosed is returned by a Client's methods after Close, and by Err once a
// Client closed without a failure.
var ErrClosed = errors.New("walwatch client closed")

// Client is a key-value store with etcd's semantics and watches, on
// PostgreSQL. It is safe for concurrent use.
type Client struct {
	store    *store.Store
	hub      *replication.Hub
	pool     *pgxpool.Pool
	ownsPool bool // Open made the pool: Close closes it
	settle   time.Duration
	log      *slog.Logger

	stopHub    context.CancelFunc // ends the hub's run
	done       chan struct{}      // closed once the hub's run has returned and err is set
	expiryDone chan struct{}      // closed once the lease expiry duty has stopped; nil without it
	copy       *keyspace.Copy     // nil without Config.KeyspaceCopy
	copyDone   chan struct{}      // closed once the copy's Run has returned; nil without it
	err        error              // why the hub stopped, if it failed; written before done closes

	closed    atomic.Bool
	closeOnce sync.Once
}

// Open connects to PostgreSQL at connString (a URL or DSN; pool settings
// such as pool_max_conns apply), checks the walwatch schema (or, with
// WithMigrate, applies it), starts the watch hub and waits, within ctx, until
// it serves watchers. Close ends it all.
func Open(ctx context.Context, connString string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	pcfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("walwatch: parse connection string: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("walwatch: connect to PostgreSQL: %w", err)
	}
	if err := prepare(ctx, pool, o.migrate); err != nil {
		pool.Close()
		return nil, err
	}
	c, err := newClient(pool, o.cfg, true)
	if err != nil {
		pool.Close()
		return nil, err
	}
	select {
	case <-c.hub.Ready():
		return c, nil
	case <-c.done:
		err = fmt.Errorf("walwatch: watch hub stopped before it was ready: %w", c.Err())
	case <-ctx.Done():
		err = fmt.Errorf("walwatch: watch hub not ready (is a replication slot free? see max_replication_slots): %w", ctx.Err())
	}
	c.Close()
	return nil, err
}

// prepare checks that PostgreSQL answers, can serve a hub, and has this
// build's schema, applying it if migrate is set.
func prepare(ctx context.Context, pool *pgxpool.Pool, migrate bool) error {
	var walLevel string
	if err := pool.QueryRow(ctx, "select current_setting('wal_level')").Scan(&walLevel); err != nil {
		return fmt.Errorf("walwatch: connect to PostgreSQL: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("walwatch: PostgreSQL runs with wal_level=%s; watches need wal_level=logical (postgresql.conf, then a restart)", walLevel)
	}
	if migrate {
		if _, err := sql.Migrate(ctx, pool); err != nil {
			return fmt.Errorf("walwatch: %w", err)
		}
		return nil
	}
	if err := sql.CheckVersion(ctx, pool); err != nil {
		if errors.Is(err, sql.ErrSchemaOutdated) {
			return fmt.Errorf("walwatch: %w, or open with walwatch.WithMigrate()", err)
		}
		return fmt.Errorf("walwatch: %w", err)
	}
	return nil
}

// New returns a Client on a pool of the caller's, which Close leaves open,
// and starts its watch hub. It neither waits for the hub nor looks at the
// database: the schema must be in place (sql.Migrate, or check it with
// sql.CheckVersion). Until the hub is ready (Hub().Ready()), reads and
// watches wait for it.
func New(pool *pgxpool.Pool, cfg Config) (*Client, error) {
	if pool == nil {
		return nil, errors.New("walwatch: New needs a pool")
	}
	return newClient(pool, cfg, false)
}

func newClient(pool *pgxpool.Pool, cfg Config, ownsPool bool) (*Client, error) {
	if cfg.Hub.Pool != nil && cfg.Hub.Pool != pool {
		return nil, errors.New("walwatch: Config.Hub.Pool must be nil or the client's pool")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hcfg := cfg.Hub
	hcfg.Pool = pool
	if hcfg.Logger == nil {
		hcfg.Logger = log.With("component", "hub")
	}
	hub, err := replication.New(hcfg)
	if err != nil {
		return nil, fmt.Errorf("walwatch: %w", err)
	}
	settle := cfg.SettleTimeout
	if settle <= 0 {
		settle = DefaultSettleTimeout
	}
	// The hub runs until Close, not until some caller's context ends.
	ctx, stop := context.WithCancel(context.Background())
	c := &Client{
		store:    store.New(pool, cfg.Limits),
		hub:      hub,
		pool:     pool,
		ownsPool: ownsPool,
		settle:   settle,
		log:      log,
		stopHub:  stop,
		done:     make(chan struct{}),
	}
	go c.run(ctx)
	if cfg.LeaseExpiry != nil {
		ecfg := *cfg.LeaseExpiry
		ecfg.Pool = pool
		if ecfg.Logger == nil {
			ecfg.Logger = log.With("component", "expiry")
		}
		c.expiryDone = make(chan struct{})
		go func() {
			defer close(c.expiryDone)
			expiry.Run(ctx, ecfg) //nolint:errcheck // it returns only when ctx ends
		}()
	}
	if cfg.KeyspaceCopy {
		c.copy = keyspace.New(c.store, hub, log.With("component", "keyspace"))
		c.copyDone = make(chan struct{})
		go func() {
			defer close(c.copyDone)
			c.copy.Run(ctx)
		}()
	}
	return c, nil
}

// run runs the hub until ctx ends or it fails.
func (c *Client) run(ctx context.Context) {
	defer close(c.done)
	err := c.hub.Run(ctx)
	if err != nil && !(ctx.Err() != nil && errors.Is(err, context.Canceled)) {
		c.err = fmt.Errorf("walwatch: watch hub failed: %w", err)
		c.log.Error("watch hub failed; reads at the latest revision and watches fail until the client is replaced", "err", err)
	}
}

// Close stops the hub, which ends every watch, waits for it, and closes the
// pool if Open made it. It returns the hub's failure, if it failed. Calls
// after the first return the same.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.stopHub()
		<-c.done
		if c.expiryDone != nil {
			<-c.expiryDone
		}
		if c.copyDone != nil {
			<-c.copyDone
		}
		if c.ownsPool {
			c.pool.Close()
		}
	})
	return c.err
}

// Done is closed once the hub has stopped: after Close, or when it failed.
// Err then says which.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the hub runs; once Done is closed, why it stopped:
// its failure, or ErrClosed.
func (c *Client) Err() error {
	select {
	case <-c.done:
	default:
		return nil
	}
	if c.err != nil {
		return c.err
	}
	if c.closed.Load() {
		return ErrClosed
	}
	return replication.ErrHubStopped
}

// Store returns the client's store, for what the client does not wrap.
// Its reads at revision 0 read the newest rows, which a watch from the next
// revision may not follow: read through the client.
func (c *Client) Store() *store.Store { return c.store }

// Hub returns the client's hub, for its state (Ready, Streaming, Watermark)
// and metrics. The client runs it: do not call Run.
func (c *Client) Hub() *replication.Hub { return c.hub }

// KeyspaceCopy returns the client's copy of the keyspace, for its state
// (Live, Served); nil without Config.KeyspaceCopy.
func (c *Client) KeyspaceCopy() *keyspace.Copy { return c.copy }

// Put sets key to value at a revision of its own.
func (c *Client) Put(ctx context.Context, key, value []byte) (store.PutResponse, error) {
	if c.closed.Load() {
		return store.PutResponse{}, ErrClosed
	}
	return c.store.Put(ctx, key, value)
}

// Delete deletes a key or range in one revision; deleting nothing takes none.
func (c *Client) Delete(ctx context.Context, r store.KeyRange) (store.DeleteResponse, error) {
	if c.closed.Load() {
		return store.DeleteResponse{}, ErrClosed
	}
	return c.store.Delete(ctx, r)
}

// Get reads a key or range at the latest revision, as Range with Revision 0.
func (c *Client) Get(ctx context.Context, r store.KeyRange) (store.RangeResponse, error) {
	return c.Range(ctx, store.RangeRequest{KeyRange: r})
}

// Range reads a key or range at req.Revision, or at the latest revision
// when it is 0: the store's current revision, so a client reads its own
// writes. Either way it first waits (at most Config.SettleTimeout) until
// every write at or below that revision is settled and visible, so the
// answer, and its Revision, never change, and a watch from Revision+1 misses
// nothing. A wait that runs out fails with ErrNotSettled.
func (c *Client) Range(ctx context.Context, req store.RangeRequest) (store.RangeResponse, error) {
	if c.closed.Load() {
		return store.RangeResponse{}, ErrClosed
	}
	if req.Revision < 0 {
		return store.RangeResponse{}, fmt.Errorf("%w: %d: must be 0 (latest) or positive", store.ErrInvalidRevision, req.Revision)
	}
	if res, ok, err := c.rangeCopy(ctx, req); ok {
		return res, err
	}
	switch {
	case req.Revision == 0:
		return c.rangeLatest(ctx, req)
	case req.Revision <= c.hub.Visible():
		// Settled and visible already: the store's own checks suffice.
		return c.store.Range(ctx, req)
	}
	rev, err := c.settled(ctx, req.Revision)
	if err != nil {
		return store.RangeResponse{}, err
	}
	req.Revision = rev
	return c.store.Range(ctx, req)
}

// rangeLatest reads at the current revision. The answer stands when every
// revision up to the one the read found was visible before the read began,
// so its snapshot holds them all, and that revision is not below what the
// hub has delivered (a client that saw an event reads at least its
// revision): one round trip. Otherwise it waits until the revision found
// (or delivered) is settled and visible and reads again at it.
func (c *Client) rangeLatest(ctx context.Context, req store.RangeRequest) (store.RangeResponse, error) {
	visible, delivered := c.hub.Visible(), c.hub.Watermark()
	res, err := c.store.Range(ctx, req)
	if err != nil {
		return res, err
	}
	if res.Revision >= delivered && res.Revision <= visible {
		// Its count is its revision's for good: the next page need not
		// count the range again.
		c.store.CarryCount(req, res)
		return res, nil
	}
	req.Revision = max(res.Revision, delivered)
	req.NoCount = false // a read of the latest revision is counted
	if err := c.waitFor(ctx, req.Revision); err != nil {
		return store.RangeResponse{}, err
	}
	return c.store.Range(ctx, req)
}

// rangeCopy answers req from the keyspace copy, when the client keeps one
// and it can answer; ok is false when the store must. Its wait for the
// current revision is bounded as a settling one is.
func (c *Client) rangeCopy(ctx context.Context, req store.RangeRequest) (res store.RangeResponse, ok bool, err error) {
	if c.copy == nil {
		return res, false, nil
	}
	wctx, cancel := context.WithTimeout(ctx, c.settle)
	res, err = c.copy.Range(wctx, req)
	cancel()
	switch {
	case err == nil:
		return res, true, nil
	case errors.Is(err, keyspace.ErrBehind):
		return res, true, fmt.Errorf("%w: %w", ErrNotSettled, store.TypedError(err, 0))
	case !errors.Is(err, keyspace.ErrNotLive):
		return res, true, err
	}
	return store.RangeResponse{}, false, nil
}

// settled returns rev once every write at or below it is settled and
// visible; a rev above the current revision fails.
func (c *Client) settled(ctx context.Context, rev int64) (int64, error) {
	cur, _, err := c.store.Revision(ctx)
	if err != nil {
		return 0, err
	}
	if rev > cur {
		return 0, &store.FutureRevisionError{Revision: rev, CurrentRevision: cur}
	}
	if err := c.waitFor(ctx, rev); err != nil {
		return 0, err
	}
	return rev, nil
}

// waitFor waits, at most Config.SettleTimeout, until every write at or
// below rev is settled and visible (Hub.WaitFor).
func (c *Client) waitFor(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithTimeout(ctx, c.settle)
	defer cancel()
	if err := c.hub.WaitFor(wctx, rev); err != nil {
		// WaitFor asks PostgreSQL what is visible: that may fail too.
		return fmt.Errorf("%w: revision %d (a transaction may hold a lower one open): %w", ErrNotSettled, rev, store.TypedError(err, rev))
	}
	return nil
}

// ReadRevision returns the newest revision a read needs not wait for: every
// write at or below it is settled and visible. Range at it never waits for a
// transaction holding a lower revision open, as a read at the latest may,
// but may not show writes just made; a watch from the next revision brings
// them. It waits (at most Config.SettleTimeout) for a hub that is not ready.
func (c *Client) ReadRevision(ctx context.Context) (int64, error) {
	if c.closed.Load() {
		return 0, ErrClosed
	}
	wctx, cancel := context.WithTimeout(ctx, c.settle)
	defer cancel()
	select {
	case <-c.hub.Ready():
	case <-c.done:
		return 0, fmt.Errorf("%w: %w", ErrNotSettled, c.Err())
	case <-wctx.Done():
		return 0, fmt.Errorf("%w: the watch hub is not ready: %w", ErrNotSettled, wctx.Err())
	}
	rev, err := c.hub.ReadRevision(wctx)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotSettled, store.TypedError(err, 0))
	}
	return rev, nil
}

// Txn runs req atomically, as etcd's Txn: compares, then one branch, its
// writes at one revision. Its range operations read in the transaction's own
// snapshot, which a lower revision still in flight may miss: to list and
// then watch, use Get or ListAndWatch.
func (c *Client) Txn(ctx context.Context, req store.TxnRequest) (store.TxnResponse, error) {
	if c.closed.Load() {
		return store.TxnResponse{}, ErrClosed
	}
	return c.store.Txn(ctx, req)
}

// TimeToLive returns lease id's TTL, the seconds it has left and, with
// keys, its keys (store.TimeToLive); ok is false when there is no such
// lease. It reads once everything the hub has delivered is visible (at
// most Config.SettleTimeout): a watcher that saw a lease's keys deleted on
// its expiry or revoke finds the lease gone.
func (c *Client) TimeToLive(ctx context.Context, id int64, keys bool) (store.Lease, bool, error) {
	if c.closed.Load() {
		return store.Lease{}, false, ErrClosed
	}
	if err := c.waitFor(ctx, c.hub.Watermark()); err != nil {
		return store.Lease{}, false, err
	}
	return c.store.TimeToLive(ctx, id, keys)
}

// Compact removes history no read at or above rev can see (store.Compact).
func (c *Client) Compact(ctx context.Context, rev int64) (store.CompactResponse, error) {
	if c.closed.Load() {
		return store.CompactResponse{}, ErrClosed
	}
	return c.store.Compact(ctx, rev)
}

// CompactOlderThan compacts away the history older than age
// (store.CompactOlderThan).
func (c *Client) CompactOlderThan(ctx context.Context, age time.Duration) (store.CompactResponse, error) {
	if c.closed.Load() {
		return store.CompactResponse{}, ErrClosed
	}
	return c.store.CompactOlderThan(ctx, age)
}

// CompactKeepLatest compacts at the current revision, keeping only the
// newest version of each live key (store.CompactKeepLatest).
func (c *Client) CompactKeepLatest(ctx context.Context) (store.CompactResponse, error) {
	if c.closed.Load() {
		return store.CompactResponse{}, ErrClosed
	}
	return c.store.CompactKeepLatest(ctx)
}

// Watch watches req.Range from req.StartRevision (0: from the next revision
// on), delivering every later change in revision order, each exactly once,
// until ctx ends, the Watcher is closed, or the client closes. To watch what
// a read returned, start at its Revision+1.
//
// A watch ends with an error matching replication.ErrHistoryChanged when
// PostgreSQL failed over to a standby that lacks revisions already
// delivered (asynchronous replication): re-list with Get, or ListAndWatch,
// as after store.ErrCompacted.
func (c *Client) Watch(ctx context.Context, req replication.WatchRequest) (*replication.Watcher, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	return c.hub.Watch(ctx, req)
}

// ListAndWatch reads req.Range at the latest revision, as Get does, and
// watches it from the next revision: the listed keys plus the watch's events
// are every change, none missed, none twice. req.StartRevision must be 0;
// ctx bounds the watch as in Watch.
func (c *Client) ListAndWatch(ctx context.Context, req replication.WatchRequest) (store.RangeResponse, *replication.Watcher, error) {
	if req.StartRevision != 0 {
		return store.RangeResponse{}, nil, fmt.Errorf("%w: %d: ListAndWatch starts its watch after its list; leave StartRevision 0",
			store.ErrInvalidRevision, req.StartRevision)
	}
	res, err := c.Get(ctx, req.Range)
	if err != nil {
		return store.RangeResponse{}, nil, err
	}
	req.StartRevision = res.Revision + 1
	w, err := c.Watch(ctx, req)
	if err != nil {
		return store.RangeResponse{}, nil, err
	}
	return res, w, nil
}

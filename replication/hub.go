package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tunables of the hub. Those named Default* are the defaults of Config's
// fields of the same names.
var (
	// DefaultFillGrace is how long a hole in the revision sequence may stay
	// open before the hub settles it with a filler row. Holes are normal
	// (revision 101 commits before 100); most close within a commit's time.
	DefaultFillGrace = 5 * time.Millisecond
	// DefaultWindow is how many recent revisions the hub keeps in memory, so
	// a watcher starting a little in the past is served without the table.
	DefaultWindow = 4096
	// DefaultWindowBytes bounds the same window by the bytes its events
	// hold (keys, values and a fixed overhead per event), whichever bound
	// comes first: 4,096 revisions of 1.5 MiB values would be 6 GiB. (Issue:
	// cp's memory followed value size, 4.9 GB RSS after 3,000 puts of 1 MiB.)
	DefaultWindowBytes = 64 << 20
	// DefaultBufferBytes bounds the values the reorder buffer holds: the
	// committed revisions above the watermark, which pile up while a
	// transaction holds a lower revision open. Past it the newest buffered
	// revisions keep only their keys (see order.spill).
	DefaultBufferBytes = 64 << 20
	// DefaultWatcherBytes bounds the events queued for one watcher, in
	// responses its reader has not taken yet; a watcher with no room left is
	// treated like one whose channel is full.
	DefaultWatcherBytes = 8 << 20
	// DefaultStatusInterval is how often the stream confirms its position to
	// PostgreSQL, well inside the server's wal_sender_timeout (60s default).
	DefaultStatusInterval = time.Second
	// DefaultProgressInterval is how often idle watchers that asked for
	// progress marks get one.
	DefaultProgressInterval = 5 * time.Second
	// settleInterval is how often the hub records its watermark as the
	// table's settled-revision hint, where the next hub starts.
	settleInterval = time.Second
	// reconnectBackoffMin and reconnectBackoffMax bound the wait between
	// reconnects; each wait is a random fraction (jitter) of a base that
	// doubles from the one to the other, so hubs restarting together do not
	// hammer the server together.
	reconnectBackoffMin = 100 * time.Millisecond
	reconnectBackoffMax = 10 * time.Second
)

// Config configures a Hub.
type Config struct {
	// Pool serves table reads (startup, catch-up, visibility checks,
	// previous values), filler rows and their holders' reports, and the
	// settled-revision hint.
	Pool *pgxpool.Pool
	// ConnString is the connection string for the replication connection;
	// the hub adds replication=database. Empty: Pool's connection string.
	ConnString string
	// Slot names a persistent slot, created when missing. Empty means a
	// temporary slot, gone when the connection ends.
	Slot string
	// FillGrace, Window, StatusInterval, ProgressInterval: zero takes the
	// package default.
	FillGrace        time.Duration
	Window           int
	StatusInterval   time.Duration
	ProgressInterval time.Duration
	// WindowBytes, BufferBytes and WatcherBytes bound the memory that holds
	// values: the recent-event window, the reorder buffer's values, and the
	// events queued for each watcher (which also caps one response at the
	// smaller of it and 4 MiB). Zero takes the package default. A single
	// revision larger than a bound still goes through whole, alone.
	WindowBytes  int
	BufferBytes  int
	WatcherBytes int
	// HolderLimit, if positive, terminates a session that holds a revision
	// open longer than this, so one forgotten transaction cannot stall
	// every watcher for ever.
	HolderLimit time.Duration
	Logger      *slog.Logger
	Metrics     *Metrics // nil: not recorded
}

// ErrHubStopped is returned by Watch and WaitFor once the hub has stopped,
// and ends every watch then. When the hub stopped for a failure, the error
// wraps that too.
var ErrHubStopped = errors.New("watch hub stopped")

// Hub reads the revision table's changes from a replication slot and serves
// them, in revision order with no gaps, to any number of watchers.
//
// Its parts: the stream (stream.go) owns the replication connection and
// hands committed transactions to the run loop through the inbox; the run
// loop puts them in revision order (order), has holes settled by the filler
// and releases what is settled to the window and the watchers (watcher.go,
// etcd's synced, unsynced and victims); the visibility mark says how far a
// read may go (visibility.go); table reads go in pages (page.go).
type Hub struct {
	cfg       Config
	repl      *pgconn.Config // the replication connection's
	log       *slog.Logger
	metrics   *Metrics
	ready     chan struct{} // closed once the hub has caught up with the table
	readyOnce sync.Once
	stopped   chan struct{} // closed when Run returns
	failure   chan error    // the first failure no retry mends, for Run (fail)

	inbox   *txnQueue  // the stream's committed transactions, never blocking it
	order   order      // the reorder buffer and the watermark; the run loop's
	filler  *filler    // settles holes, off the run loop
	visible visibility // how far reads may go
	gate    syncGate   // holds releases until visible under synchronous replication
	server  serverID   // the server the stream reads (failover.go); the stream goroutine's
	// timeline is server's timeline, for the other goroutines.
	timeline atomic.Int32

	// responseBytes bounds the events of one response (whole revisions):
	// the smaller of maxResponseBytes and Config.WatcherBytes. queue bounds
	// what is queued for each watcher.
	responseBytes int
	queue         queueLimit

	// catchUpScratch is the memory catch-up pages are read into, the
	// syncWatchersLoop's alone: at most a page's rows (about 600 KiB).
	catchUpScratch pageScratch

	// troubles log what the hub retries while PostgreSQL is away, once per
	// outage each.
	troubles struct{ stream, settle, catchUp *trouble }
	// streaming is set while a replication session streams: the hub is
	// current, not reconnecting.
	streaming atomic.Bool

	// mu protects the fan-out: the window, the watcher groups, every send
	// on a watcher's channel, and the watermark's moves (order.advance, the
	// watermark's only writer, runs with mu held; the run loop, its owner,
	// reads it without). Every other goroutine reads the watermark with mu
	// held. mu is never held while talking to PostgreSQL, nor while taking
	// another lock of the hub's (visibility.mu, the inbox's, a trouble's).
	mu         sync.Mutex
	window     window
	synced     *watcherGroup // live: fed by releases
	unsynced   watcherSet    // catching up from the window or the table
	victims    watcherSet    // blocked on a full channel
	deliveries []delivery    // release's scratch, reused
	closed     error         // why the hub stopped (wrapping ErrHubStopped); nil while it runs
	wakeSync   chan struct{}
	advanced   chan struct{} // closed and replaced each time the watermark moves
}

// New returns a hub; Run starts it.
func New(cfg Config) (*Hub, error) {
	if cfg.Pool == nil {
		return nil, errors.New("replication hub: Config.Pool is required")
	}
	if cfg.Slot != "" {
		if err := ValidateSlotName(cfg.Slot); err != nil {
			return nil, err
		}
	}
	// The replication connection is configured like the pool's connections,
	// from the parsed config, so pool-only settings in a connection string
	// (pool_max_conns) never reach the server as parameters.
	replConfig := cfg.Pool.Config().ConnConfig.Config.Copy()
	if cfg.ConnString != "" {
		pc, err := pgxpool.ParseConfig(cfg.ConnString)
		if err != nil {
			return nil, fmt.Errorf("replication hub: parse connection string: %w", err)
		}
		replConfig = pc.ConnConfig.Config.Copy()
	}
	replConfig.RuntimeParams["replication"] = "database"
	return newHub(cfg, replConfig), nil
}

// orDefault sets a setting left at zero (or below) to its default.
func orDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// newHub builds a hub on cfg, zero settings taking their defaults.
func newHub(cfg Config, replConfig *pgconn.Config) *Hub {
	orDefault(&cfg.FillGrace, DefaultFillGrace)
	orDefault(&cfg.Window, DefaultWindow)
	orDefault(&cfg.StatusInterval, DefaultStatusInterval)
	orDefault(&cfg.ProgressInterval, DefaultProgressInterval)
	orDefault(&cfg.WindowBytes, DefaultWindowBytes)
	orDefault(&cfg.BufferBytes, DefaultBufferBytes)
	orDefault(&cfg.WatcherBytes, DefaultWatcherBytes)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hub{
		cfg:           cfg,
		responseBytes: min(maxResponseBytes, cfg.WatcherBytes),
		queue:         newQueueLimit(cfg.WatcherBytes),
		repl:          replConfig,
		log:           log,
		metrics:       cfg.Metrics,
		ready:         make(chan struct{}),
		stopped:       make(chan struct{}),
		failure:       make(chan error, 1),
		gate:          syncGate{done: make(chan gateCheck, 1)},
		inbox:         newTxnQueue(),
		order:         newOrder(cfg.BufferBytes, log, cfg.Metrics),
		filler:        newFiller(cfg, log),
		visible:       visibility{pool: cfg.Pool},
		window:        window{limit: cfg.Window, maxBytes: cfg.WindowBytes},
		synced:        newWatcherGroup(),
		unsynced:      watcherSet{},
		victims:       watcherSet{},
		wakeSync:      make(chan struct{}, 1),
		advanced:      make(chan struct{}),
	}
	h.troubles.stream = newTrouble(log, "replication stream lost")
	h.troubles.settle = newTrouble(log, "recording the settled revision failed")
	h.troubles.catchUp = newTrouble(log, "catch-up read from the table failed")
	return h
}

// Stopped is closed when Run has returned.
func (h *Hub) Stopped() <-chan struct{} { return h.stopped }

// Ready is closed once the hub has its starting point and serves watchers.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Streaming reports whether the hub is reading its replication slot now,
// rather than reconnecting after losing it: whether it is current.
func (h *Hub) Streaming() bool { return h.streaming.Load() }

// Watermark returns the watermark: every revision at or below it is settled
// and delivered to live watchers. A read at it may still miss a transaction
// that has committed but is not visible yet; read at ReadRevision, or wait
// with WaitFor.
func (h *Hub) Watermark() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.order.watermark
}

// Run runs the hub until ctx ends or it meets a failure no retry mends, and
// closes every watcher when it returns. It returns nil when ctx ends.
//
// An outage (PostgreSQL down or restarting, a connection cut, the slot
// dropped or invalidated) is retried for ever, with backoff, and logged
// once. What only an operator can mend ends the hub: Run returns an error
// wrapping a *SetupError, which matches ErrSchemaVersion, ErrNotPermitted,
// ErrSlotTaken or ErrServerConfig with errors.Is.
func (h *Hub) Run(ctx context.Context) (err error) {
	defer close(h.stopped)
	defer func() {
		reason := ErrHubStopped
		if err != nil {
			h.log.Error("replication hub stopped: an operator must mend this", "err", err)
			reason = fmt.Errorf("%w: %w", ErrHubStopped, err)
		}
		h.closeWatchers(reason)
	}()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		h.filler.wait()
		h.gate.wg.Wait()
	}()
	wg.Go(func() { h.syncWatchersLoop(ctx) })
	wg.Go(func() { h.syncVictimsLoop(ctx) })
	wg.Go(func() { h.progressLoop(ctx) })
	wg.Go(func() { h.settleLoop(ctx) })
	wg.Go(func() {
		if err := h.streamLoop(ctx); err != nil {
			h.fail(err)
		}
	})
	if err := h.runLoop(ctx); err != nil {
		return fmt.Errorf("replication hub: %w", err)
	}
	return nil
}

// runLoop puts what the stream hands over in revision order, has the holes
// that keep it waiting filled, and releases what is settled, until ctx ends
// (nil) or a failure no retry mends (returned). It never talks to
// PostgreSQL itself, so nothing there can hold up a release.
func (h *Hub) runLoop(ctx context.Context) error {
	graceTimer := time.NewTimer(time.Hour)
	graceTimer.Stop()
	gateTimer := time.NewTimer(time.Hour) // the next visibility check (syncrep.go)
	gateTimer.Stop()
	caughtUp := false // the first table read has been accepted
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-h.failure:
			return err
		case <-h.inbox.wait():
			for _, t := range h.inbox.drain() {
				if t.change != nil {
					t.change.done <- h.changeServer(t.change)
					continue
				}
				if t.compacted > 0 {
					h.skipCompacted(t.compacted)
					continue
				}
				caughtUp = caughtUp || t.ready
				h.order.accept(t)
			}
			h.advance()
			h.checkVisible(ctx)
			h.order.spill()
			if caughtUp {
				h.readyOnce.Do(func() { close(h.ready) })
			}
			if h.order.holeOpen() && !h.filler.running {
				graceTimer.Reset(h.filler.delay(h.order.holeFrom))
			}
		case <-graceTimer.C:
			if h.filler.running || !h.order.holeOpen() {
				continue
			}
			if revs := h.order.holes(maxFillBatch); len(revs) > 0 {
				h.filler.start(ctx, revs)
			}
		case c := <-h.gate.done:
			if err := setupFailure(c.err); err != nil && ctx.Err() == nil {
				return err
			}
			switch next := h.checkedVisible(c); {
			case next == 0:
				h.checkVisible(ctx)
			case next > 0:
				gateTimer.Reset(next)
			}
		case <-gateTimer.C:
			h.advance() // synchronous replication may have been turned off
			h.checkVisible(ctx)
		case res := <-h.filler.done:
			if err := setupFailure(res.err); err != nil && ctx.Err() == nil {
				return err
			}
			retryIn := h.filler.finished(ctx, res)
			// Whatever the filler did arrives through the stream; if the hole
			// is still open after that, try again.
			if h.order.holeOpen() {
				graceTimer.Reset(retryIn)
			}
		}
	}
}

// advance releases what the reorder buffer can release now: the watermark
// moves, and the revisions it passed go to the window and the live
// watchers, in one critical section, so no watcher sees the one without the
// other.
func (h *Hub) advance() {
	h.mu.Lock()
	defer h.mu.Unlock()
	from := h.order.watermark
	revs := h.order.advanceTo(h.releaseLimit())
	if h.order.watermark == from {
		return
	}
	if from == 0 {
		// The first move, from the first table read's base: nothing at or
		// below it is in memory, and all of it is taken as visible (an
		// earlier hub recorded it as settled), so visibility checks start
		// above it rather than at the table's first revision.
		h.window.skip(h.order.base)
		h.visible.assume(h.order.base)
	}
	h.release(revs)
}

// fail hands Run a failure no retry mends, from any of the hub's
// goroutines; Run takes the first.
func (h *Hub) fail(err error) {
	select {
	case h.failure <- err:
	default:
	}
}

// settleLoop records the watermark as the table's settled-revision hint
// every settleInterval: where the next hub starts reading the table.
func (h *Hub) settleLoop(ctx context.Context) {
	t := time.NewTicker(settleInterval)
	defer t.Stop()
	var settled int64 // the watermark last recorded
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = h.readSyncRep(ctx) // failing, so does the settle below, which says so
		// The timeline first: once it is the new server's, the watermark is
		// too (failover.go).
		timeline := h.timeline.Load()
		w := h.Watermark()
		if w <= settled {
			continue
		}
		// Only on the stream's server: during a failover the pool may reach
		// the new primary before the stream does, and the watermark of the
		// old one's history must not be recorded there.
		if _, err := h.cfg.Pool.Exec(ctx, "select walwatch.settle($1) where "+timelineSQL+" = $2", w, timeline); err != nil {
			if ctx.Err() != nil {
				return
			}
			if err := setupFailure(err); err != nil {
				h.fail(fmt.Errorf("record the settled revision: %w", err))
				return
			}
			h.troubles.settle.failed(err, "revision", w)
			continue
		}
		h.troubles.settle.ok()
		settled = w
	}
}

package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tunables. Each is a default a Config may override.
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
	// revisions keep only their keys (see Hub.spill).
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
	// holderReportAfter is how long a filler may wait on a transaction still
	// holding a revision before the hub names that transaction in its logs.
	holderReportAfter = time.Second
	// fillBackoffMax bounds the wait before retrying a filler that failed.
	fillBackoffMax = 2 * time.Second
	// maxFillBatch bounds the revisions one filler statement settles.
	maxFillBatch = 10000
	// tablePage and tablePageBytes bound a page of the first table read (and
	// of the read after a reconnect): rows, and bytes of keys and values.
	// A revision larger than a page is read whole, alone.
	tablePage      = 5000
	tablePageBytes = 16 << 20
	// visibleCheck bounds the revisions one visibility check reads.
	visibleCheck int64 = 10000
	// visibleRetryMax bounds the wait between visibility checks while a
	// committed transaction is not visible yet.
	visibleRetryMax = 100 * time.Millisecond
	// reconnectBackoff bounds the wait between reconnects; each wait is a
	// random fraction (jitter) of a doubling base, so hubs restarting
	// together do not hammer the server together.
	reconnectBackoffMin = 100 * time.Millisecond
	reconnectBackoffMax = 10 * time.Second
)

// Config configures a Hub.
type Config struct {
	// Pool serves table reads (catch-up, startup) and filler rows.
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

// ErrHubStopped is returned by Watch once the hub has stopped.
var ErrHubStopped = errors.New("watch hub stopped")

// Hub reads the revision table's changes from a replication slot and serves
// them, in revision order with no gaps, to any number of watchers.
type Hub struct {
	cfg       Config
	repl      *pgconn.Config // the replication connection's
	log       *slog.Logger
	metrics   *Metrics
	ready     chan struct{} // closed once the hub has caught up with the table
	readyOnce sync.Once
	stopped   chan struct{} // closed when Run returns

	inbox *txnQueue // the stream's committed transactions, never blocking it

	// settledLSN is the end LSN of the last transaction whose revisions are
	// all at or below the watermark: what the stream may confirm.
	settledLSN atomic.Uint64

	// visible is a revision at or below the watermark up to which every
	// revision's row is visible to any snapshot taken from now on. The
	// stream has a transaction once its commit is flushed, a moment before
	// other sessions can see it (longer while it waits for a synchronous
	// standby), so settled is not enough for a read. visMu lets one check
	// of the table at a time raise it; callers share its answer.
	visible atomic.Int64
	visMu   sync.Mutex

	// Owned by the run loop.
	buffer      map[int64]*committed // committed revisions above the watermark
	bufferBytes int                  // what the buffered revisions that kept their values hold
	// spillFrom, when not 0: no buffered revision at or above it holds its
	// values (Hub.spill), and one arriving there is stored without them.
	spillFrom int64
	top       int64        // the highest revision ever buffered
	pending   []pendingTxn // stream transactions not yet settled, in commit order
	holeFrom  time.Time    // when the revision after the watermark went missing; zero if none is
	filling   bool         // a filler statement is running
	caughtUp  bool         // the first table read has been accepted
	settled   int64        // the watermark last recorded as the table's hint
	fillDone  chan fillResult

	// responseBytes bounds the events of one response (whole revisions):
	// the smaller of maxResponseBytes and Config.WatcherBytes. queue bounds
	// what is queued for each watcher.
	responseBytes int
	queue         queueLimit

	// troubles log what the hub retries while PostgreSQL is away, once per
	// outage each.
	troubles struct{ stream, fill, settle, catchUp *trouble }
	// streaming is set while a replication session streams: the hub is
	// current, not reconnecting.
	streaming atomic.Bool

	// mu protects the watermark, the window and the watcher groups. It is
	// never held while talking to PostgreSQL.
	mu         sync.Mutex
	watermark  int64 // every revision at or below it is settled and released
	window     window
	synced     *watcherGroup // live: fed by releases
	unsynced   watcherSet    // catching up from the window or the table
	victims    watcherSet    // blocked on a full channel
	deliveries []delivery    // release's scratch, reused
	closed     bool
	wakeSync   chan struct{}
	advanced   chan struct{} // closed and replaced each time the watermark moves
}

// committed is one revision's rows, waiting in the reorder buffer.
type committed struct {
	rows  []row
	lsn   pglogrepl.LSN
	at    time.Time
	bytes int // what rows hold in memory (rowsSize), until spilled
	// spilled: the rows' values were dropped to keep the buffer within
	// BufferBytes; their keys say which watchers the revision concerns,
	// and those read it from the table.
	spilled bool
}

// events are the revision's events in sub order; a filler has none.
func (c *committed) events() []Event {
	evs := make([]Event, 0, len(c.rows))
	for i := range c.rows {
		if !c.rows[i].isFiller() {
			evs = append(evs, c.rows[i].event(c.lsn, c.at))
		}
	}
	return evs
}

type pendingTxn struct {
	endLSN pglogrepl.LSN
	maxRev int64
}

type fillResult struct {
	filled int64
	err    error
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

// newHub builds a hub on cfg, zero settings taking their defaults.
func newHub(cfg Config, replConfig *pgconn.Config) *Hub {
	if cfg.FillGrace <= 0 {
		cfg.FillGrace = DefaultFillGrace
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.WindowBytes <= 0 {
		cfg.WindowBytes = DefaultWindowBytes
	}
	if cfg.BufferBytes <= 0 {
		cfg.BufferBytes = DefaultBufferBytes
	}
	if cfg.WatcherBytes <= 0 {
		cfg.WatcherBytes = DefaultWatcherBytes
	}
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
		inbox:         newTxnQueue(),
		buffer:        map[int64]*committed{},
		fillDone:      make(chan fillResult, 1),
		window:        window{limit: cfg.Window, maxBytes: cfg.WindowBytes},
		synced:        newWatcherGroup(),
		unsynced:      watcherSet{},
		victims:       watcherSet{},
		wakeSync:      make(chan struct{}, 1),
		advanced:      make(chan struct{}),
	}
	h.troubles.stream = newTrouble(log, "replication stream lost")
	h.troubles.fill = newTrouble(log, "settling a hole with a filler row failed")
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

// Revision returns the watermark: every revision at or below it is settled
// and delivered to live watchers. A read at it may still miss a transaction
// that has committed but is not visible yet; read at ReadRevision, or wait
// with WaitFor.
func (h *Hub) Revision() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.watermark
}

// WaitFor waits until rev is settled and every transaction at or below it
// is visible: from then on a read at rev sees every write at or below it and
// will never change. A reader that wants its own writes (read at the store's
// current revision) waits for that.
func (h *Hub) WaitFor(ctx context.Context, rev int64) error {
	for {
		h.mu.Lock()
		w, advanced := h.watermark, h.advanced
		h.mu.Unlock()
		if w >= rev {
			break
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (settled up to %d): %w", rev, w, ctx.Err())
		case <-h.stopped:
			return ErrHubStopped
		}
	}
	retry := time.Millisecond
	for {
		v, err := h.visibleUpTo(ctx, rev)
		if err != nil {
			return fmt.Errorf("wait for revision %d: %w", rev, err)
		}
		if v >= rev {
			return nil
		}
		select {
		case <-time.After(retry):
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (visible up to %d): %w", rev, v, ctx.Err())
		case <-h.stopped:
			return ErrHubStopped
		}
		retry = min(2*retry, visibleRetryMax)
	}
}

// ReadRevision returns the highest revision a read can use knowing that it
// sees everything the hub has delivered or will deliver at or below it, and
// will never change: load state at it, then watch from the next one.
func (h *Hub) ReadRevision(ctx context.Context) (int64, error) {
	return h.visibleUpTo(ctx, h.Revision())
}

// visibleUpTo returns the highest revision at or below upto (a settled one)
// up to which every revision is visible, checking the table for what it does
// not know yet.
func (h *Hub) visibleUpTo(ctx context.Context, upto int64) (int64, error) {
	if v := h.visible.Load(); v >= upto {
		return upto, nil
	}
	h.visMu.Lock()
	defer h.visMu.Unlock()
	v := h.visible.Load()
	for v < upto {
		hi := min(upto, v+visibleCheck)
		next, err := h.checkVisible(ctx, v, hi)
		if err != nil {
			return v, err
		}
		h.visible.Store(next)
		if next < hi {
			return next, nil // a transaction at next+1 is not visible yet
		}
		v = next
	}
	return upto, nil
}

// checkVisible returns the highest revision r in [after, hi] such that every
// revision in (after, r] is visible. Every settled revision has a row with
// sub 0 (a write's first row or a filler), and a row one snapshot sees belongs
// to a transaction every later snapshot sees too. Compaction removes rows
// below its revision, where reads fail anyway: those need no check.
func (h *Hub) checkVisible(ctx context.Context, after, hi int64) (int64, error) {
	var (
		compacted int64
		revs      []int64
	)
	err := h.cfg.Pool.QueryRow(ctx,
		`select m.compact_revision,
		        array(select k.revision from walwatch.kv k
		               where k.revision > greatest($1, m.compact_revision) and k.revision <= $2 and k.sub = 0
		               order by k.revision)
		   from walwatch.meta m`, after, hi).Scan(&compacted, &revs)
	if err != nil {
		return after, fmt.Errorf("check which revisions after %d are visible: %w", after, err)
	}
	next := min(max(after, compacted), hi)
	for _, rev := range revs {
		if rev != next+1 {
			break
		}
		next = rev
	}
	return next, nil
}

// Run streams until ctx ends, reconnecting after any failure, and closes
// every watcher when it returns.
func (h *Hub) Run(ctx context.Context) error {
	defer close(h.stopped)
	defer h.closeWatchers()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { h.syncWatchersLoop(ctx) })
	wg.Go(func() { h.syncVictimsLoop(ctx) })
	wg.Go(func() { h.progressLoop(ctx) })

	streamErr := make(chan error, 1)
	wg.Go(func() { streamErr <- h.streamLoop(ctx) })

	settleTick := time.NewTicker(settleInterval)
	defer settleTick.Stop()
	graceTimer := time.NewTimer(time.Hour)
	graceTimer.Stop()
	var (
		fillBackoff   time.Duration
		fillNotBefore time.Time // after a failed filler, not before its backoff
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-streamErr:
			return err
		case <-h.inbox.wait():
			for _, t := range h.inbox.drain() {
				h.accept(t)
			}
			h.advance()
			h.spill()
			if h.caughtUp {
				h.readyOnce.Do(func() { close(h.ready) })
			}
			if h.holeOpen() && !h.filling {
				graceTimer.Reset(max(0, h.cfg.FillGrace-time.Since(h.holeFrom), time.Until(fillNotBefore)))
			}
		case <-graceTimer.C:
			h.startFill(ctx)
		case res := <-h.fillDone:
			h.filling = false
			retryIn := h.cfg.FillGrace
			if res.err != nil && ctx.Err() == nil {
				// PostgreSQL is down or the role lacks a grant: back off.
				fillBackoff = min(max(2*fillBackoff, h.cfg.FillGrace), fillBackoffMax)
				retryIn = fillBackoff
				fillNotBefore = time.Now().Add(retryIn)
				h.troubles.fill.failed(res.err, "retry_in", retryIn)
			} else {
				fillBackoff = 0
				h.troubles.fill.ok()
			}
			h.metrics.filled(res.filled)
			// Whatever the filler did arrives through the stream; if the hole
			// is still open after that, try again.
			if h.holeOpen() {
				graceTimer.Reset(retryIn)
			}
		case <-settleTick.C:
			h.recordSettled(ctx)
		}
	}
}

// accept takes one committed transaction (or a page read from the table) into
// the reorder buffer, dropping revisions already settled: after a reconnect
// the server replays what it had not been told was done.
func (h *Hub) accept(t *txn) {
	if t.base > 0 {
		h.mu.Lock()
		if h.watermark == 0 {
			h.watermark = t.base
			h.window.from = t.base + 1
			// Taken as visible: an earlier hub recorded it as settled,
			// and the check starts above it rather than at the table's
			// first revision.
			h.visible.Store(t.base)
			// The watermark moved: wake WaitFor's waiters, or on an idle
			// store they sleep until their deadline.
			close(h.advanced)
			h.advanced = make(chan struct{})
		}
		h.mu.Unlock()
	}
	if t.ready {
		h.caughtUp = true
	}
	w := h.Revision()
	var maxRev int64
	for i := 0; i < len(t.rows); {
		rev := t.rows[i].revision
		j := i
		for j < len(t.rows) && t.rows[j].revision == rev {
			j++
		}
		maxRev = max(maxRev, rev)
		if _, dup := h.buffer[rev]; rev > w && !dup {
			rows := t.rows[i:j:j] // the txn is ours now: sort its rows in place
			slices.SortFunc(rows, func(a, b row) int { return int(a.sub - b.sub) })
			c := &committed{rows: rows, lsn: t.commitLSN, at: t.commitTime, bytes: rowsSize(rows)}
			if h.spillFrom > 0 && rev >= h.spillFrom {
				h.dropValues(c)
			} else {
				h.bufferBytes += c.bytes
			}
			h.buffer[rev] = c
			h.top = max(h.top, rev)
		}
		i = j
	}
	if t.endLSN != 0 {
		h.pending = append(h.pending, pendingTxn{endLSN: t.endLSN, maxRev: maxRev})
	}
	h.metrics.buffer(len(h.buffer), h.bufferBytes)
}

// spill keeps the values in the reorder buffer within BufferBytes, without
// dropping a revision and without talking to PostgreSQL: while they are
// over, it drops the values of the highest revisions still holding theirs
// and keeps their keys and the fact that they are there. The buffer so
// keeps values for its lowest revisions, the next to be released, and only
// keys from spillFrom up. When the watermark reaches a spilled revision,
// release sends the watchers its keys concern to catch up from the table,
// which holds every settled revision, and the window starts after it.
//
// The walk down from spillFrom visits each revision once per spell of
// spilling: spillFrom only moves up again as the watermark passes it.
func (h *Hub) spill() {
	if h.bufferBytes <= h.cfg.BufferBytes {
		return
	}
	w := h.Revision()
	rev := h.top
	if h.spillFrom > 0 {
		rev = h.spillFrom - 1
	} else {
		h.log.Warn("the reorder buffer is over its bytes behind an open revision; watchers will read the newest revisions from the table",
			"watermark", w, "buffered_revisions", len(h.buffer), "buffer_bytes", h.bufferBytes, "limit", h.cfg.BufferBytes)
	}
	for ; h.bufferBytes > h.cfg.BufferBytes && rev > w; rev-- {
		if c, ok := h.buffer[rev]; ok && !c.spilled {
			h.bufferBytes -= c.bytes
			h.dropValues(c)
		}
		h.spillFrom = rev // a revision still missing here arrives without its values too
	}
	h.metrics.buffer(len(h.buffer), h.bufferBytes)
}

// dropValues spills c: its rows keep their keys, in allocations of their
// own (a decoded row's key and value share one), and lose their values.
func (h *Hub) dropValues(c *committed) {
	for i := range c.rows {
		c.rows[i].key = bytes.Clone(c.rows[i].key)
		c.rows[i].value = nil
	}
	c.spilled = true
	h.metrics.spilled()
}

// advance releases every buffered revision that follows the watermark
// directly, and confirms the stream transactions that are now settled.
func (h *Hub) advance() {
	var released []revEvents
	w := h.Revision()
	for {
		c, ok := h.buffer[w+1]
		if !ok {
			break
		}
		delete(h.buffer, w+1)
		w++
		if !c.spilled {
			h.bufferBytes -= c.bytes
		}
		evs := c.events()
		released = append(released, revEvents{rev: w, events: evs, bytes: eventsSize(evs), spilled: c.spilled})
		h.metrics.released(c)
	}
	if len(released) > 0 {
		h.release(released, w)
	}
	switch {
	case len(h.buffer) == 0:
		h.spillFrom = 0
	case h.spillFrom > 0 && h.spillFrom <= w:
		h.spillFrom = w + 1 // everything still buffered was above it: spilled
	}
	h.metrics.buffer(len(h.buffer), h.bufferBytes)
	for len(h.pending) > 0 && h.pending[0].maxRev <= w {
		h.settledLSN.Store(uint64(h.pending[0].endLSN))
		h.pending = h.pending[1:]
	}
	if len(h.buffer) == 0 {
		h.holeFrom = time.Time{}
	} else if h.holeFrom.IsZero() || len(released) > 0 {
		h.holeFrom = time.Now()
		h.metrics.holeSeen()
	}
}

// holeOpen reports whether a revision above the watermark has arrived while
// the one right after it has not.
func (h *Hub) holeOpen() bool { return len(h.buffer) > 0 }

// holes lists the revisions missing between the watermark and the highest
// buffered one.
func (h *Hub) holes() []int64 {
	w := h.Revision()
	var out []int64
	for rev := w + 1; rev < h.top && len(out) < maxFillBatch; rev++ {
		if _, ok := h.buffer[rev]; !ok {
			out = append(out, rev)
		}
	}
	return out
}

// startFill settles the current holes off the run loop: the filler statement
// may wait a long time for a transaction still holding a revision.
func (h *Hub) startFill(ctx context.Context) {
	if h.filling || !h.holeOpen() {
		return
	}
	revs := h.holes()
	if len(revs) == 0 {
		return
	}
	h.filling = true
	go func() {
		filled, err := h.fill(ctx, revs)
		h.fillDone <- fillResult{filled: filled, err: err}
	}()
}

// fill inserts filler rows for revs on its own connection, and while it
// waits, reports (and with HolderLimit, ends) the transaction holding one.
func (h *Hub) fill(ctx context.Context, revs []int64) (int64, error) {
	conn, err := h.cfg.Pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("fill holes: %w", err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	done := make(chan struct{})
	defer close(done)
	go h.watchHolder(ctx, pid, revs[0], done)

	var filled int64
	if err := conn.QueryRow(ctx, "select walwatch.fill($1)", revs).Scan(&filled); err != nil {
		return 0, fmt.Errorf("fill holes at revisions %d..%d: %w", revs[0], revs[len(revs)-1], err)
	}
	return filled, nil
}

// watchHolder names the session a filler waits for, once it has waited
// holderReportAfter, and ends it past HolderLimit.
func (h *Hub) watchHolder(ctx context.Context, fillerPID uint32, rev int64, done <-chan struct{}) {
	t := time.NewTicker(holderReportAfter)
	defer t.Stop()
	for {
		select {
		case <-done:
			h.metrics.holder(0)
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var (
			pid int32
			age time.Duration
		)
		err := h.cfg.Pool.QueryRow(ctx,
			`select a.pid, now() - coalesce(a.xact_start, a.backend_start)
			   from pg_stat_activity a
			  where a.pid = any(pg_blocking_pids($1)) order by a.xact_start limit 1`, int32(fillerPID)).Scan(&pid, &age)
		if err != nil {
			continue // not blocked (any more), or the query failed: look again later
		}
		h.metrics.holder(age)
		h.log.Warn("a transaction holds a revision open; every watcher waits for it",
			"revision", rev, "pid", pid, "transaction_age", age.Round(time.Millisecond))
		if h.cfg.HolderLimit > 0 && age > h.cfg.HolderLimit {
			h.log.Warn("terminating the session holding a revision past the holder limit", "pid", pid, "limit", h.cfg.HolderLimit)
			if _, err := h.cfg.Pool.Exec(ctx, "select pg_terminate_backend($1)", pid); err != nil {
				h.log.Warn("terminate revision holder", "pid", pid, "err", err)
			}
		}
	}
}

// recordSettled raises the table's settled-revision hint to the watermark.
func (h *Hub) recordSettled(ctx context.Context) {
	w := h.Revision()
	if w <= h.settled {
		return
	}
	if _, err := h.cfg.Pool.Exec(ctx, "select walwatch.settle($1)", w); err != nil {
		if ctx.Err() == nil {
			h.troubles.settle.failed(err, "revision", w)
		}
		return
	}
	h.troubles.settle.ok()
	h.settled = w
}

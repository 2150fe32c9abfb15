package replication

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Synchronous replication: with synchronous_standby_names set, a commit is
// flushed on the primary, and decoded and sent to the hub, before the
// standby has it; it becomes visible, and its writer is answered, only once
// the standby has confirmed it (PostgreSQL 15's WAL sender does not wait
// for standbys). A primary that dies meanwhile takes it along, never
// acknowledged. So while synchronous replication is on, the hub releases a
// settled revision only once it is visible too, and a watcher never sees a
// write that a failover to the synchronous standby loses.
//
// Visible is not enough on its own: a commit whose wait for the standby is
// cancelled (its client gave up: pgx cancels the query) or that the primary
// recovers after a crash is visible at once, standby or not. The visibility
// check therefore commits a write of its own (walwatch.await_standby), which
// returns only once the standby has it and everything before it.
//
// The server's setting is read at every session's start and then every
// settleInterval (a reload changes it without a reconnect), so for up to a
// second after it is turned on, releases may still run ahead of the
// standby.

// Tunables of the synchronous-replication gate.
var (
	// syncRetryMin and syncRetryMax bound the wait between visibility
	// checks while a settled revision is not visible yet: the standby's
	// answer takes a round trip to it, typically well under a millisecond
	// on a local network.
	syncRetryMin = 200 * time.Microsecond
	syncRetryMax = 20 * time.Millisecond
)

// syncGate holds releases at the visible mark while synchronous
// replication is on. on is read by any goroutine; the rest is the run
// loop's.
type syncGate struct {
	on      atomic.Bool // synchronous_standby_names is set on the server
	running bool        // a check is running: its result has not been taken
	retry   time.Duration
	done    chan error // a finished check's error
	wg      sync.WaitGroup
}

// releaseLimit is the highest revision advance may release now.
func (h *Hub) releaseLimit() int64 {
	if !h.gate.on.Load() {
		return math.MaxInt64
	}
	return h.visible.mark.Load()
}

// checkVisible starts a visibility check of the settled revisions that
// wait for one, if synchronous replication is on and none is running. The
// run loop calls it.
func (h *Hub) checkVisible(ctx context.Context) {
	if h.gate.running || !h.gate.on.Load() {
		return
	}
	top := h.order.settledTop()
	if top <= h.order.watermark {
		return
	}
	h.gate.running = true
	timeline := h.timeline.Load()
	h.gate.wg.Go(func() {
		_, err := h.visible.upToOn(ctx, top, timeline)
		h.gate.done <- err
	})
}

// checkedVisible takes a finished check's result: it releases what became
// visible and returns when to check again (0: now; negative: no need).
func (h *Hub) checkedVisible(err error) time.Duration {
	h.gate.running = false
	before := h.order.watermark
	h.advance()
	if h.order.settledTop() <= h.order.watermark {
		h.gate.retry = 0
		return -1
	}
	if err == nil && h.order.watermark > before {
		h.gate.retry = 0
		return 0
	}
	// Not visible yet, or the check failed (PostgreSQL away): wait longer
	// each time, up to visibleRetryMax after failures.
	limit := syncRetryMax
	if err != nil {
		limit = visibleRetryMax
	}
	h.gate.retry = min(max(2*h.gate.retry, syncRetryMin), limit)
	return h.gate.retry
}

// readSyncRep records whether the server has synchronous replication on:
// the stream's server, not one the pool reached meanwhile (a promoted
// standby, before the stream has found it), whose setting says nothing of
// what the stream delivered.
func (h *Hub) readSyncRep(ctx context.Context) error {
	var (
		names    string
		timeline int32
	)
	err := h.cfg.Pool.QueryRow(ctx, "select current_setting('synchronous_standby_names'), "+timelineSQL).Scan(&names, &timeline)
	if err != nil {
		return fmt.Errorf("read synchronous_standby_names: %w", err)
	}
	if timeline != h.timeline.Load() {
		return nil
	}
	if on := names != ""; h.gate.on.Swap(on) != on {
		h.log.Info("synchronous replication changed: events are released once visible while it is on", "on", on, "synchronous_standby_names", names)
	}
	return nil
}

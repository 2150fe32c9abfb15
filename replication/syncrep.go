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
// recovers after a crash is visible at once, standby or not. So before it
// releases revisions the hub also commits a write of its own
// (walwatch.await_standby), which returns only once the standby has it and
// everything before it in the WAL: every commit the hub had received when
// it began. It runs as soon as new revisions arrive, beside their writers'
// own waits for the standby, which one flush on the standby usually ends
// together.
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

// syncGate holds releases at the visible mark, and at what the standby is
// known to have, while synchronous replication is on. on is read by any
// goroutine; the rest is the run loop's.
type syncGate struct {
	on        atomic.Bool // synchronous_standby_names is set on the server
	running   bool        // a check is running: its result has not been taken
	retry     time.Duration
	done      chan gateCheck // a finished check
	wg        sync.WaitGroup
	onStandby int64  // every revision at or below it is on the standby
	epoch     uint64 // counts server changes: a check from before one is of no use
}

// gateCheck is a finished check: the standby has every revision up to
// onStandby (when err is nil), unless the server changed since epoch.
type gateCheck struct {
	onStandby int64
	epoch     uint64
	err       error
}

// releaseLimit is the highest revision advance may release now.
func (h *Hub) releaseLimit() int64 {
	if !h.gate.on.Load() {
		return math.MaxInt64
	}
	return min(h.visible.mark.Load(), h.gate.onStandby)
}

// checkVisible starts a check of the settled revisions that wait for one,
// if synchronous replication is on and none is running: first, unless done
// already for them, the standby's (awaitStandby), then visibility, which
// the writers' commits have reached by then, their own waits for the
// standby ended by the same flush as a rule. The run loop calls it.
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
	onStandby := h.gate.onStandby
	epoch := h.gate.epoch
	h.gate.wg.Go(func() {
		res := gateCheck{onStandby: onStandby, epoch: epoch}
		if onStandby < top {
			// Every revision up to top was received before this begins.
			if res.err = h.awaitStandby(ctx, timeline); res.err == nil {
				res.onStandby = top
			}
		}
		if res.err == nil {
			_, res.err = h.visible.upToOn(ctx, top, timeline)
		}
		h.gate.done <- res
	})
}

// awaitStandby commits walwatch.await_standby's write on the stream's
// server: once it returns, the standby has every commit the hub had
// received before.
func (h *Hub) awaitStandby(ctx context.Context, timeline int32) error {
	var on int32
	if err := h.cfg.Pool.QueryRow(ctx, "select "+timelineSQL+" from walwatch.await_standby()").Scan(&on); err != nil {
		return fmt.Errorf("wait for the synchronous standby: %w", err)
	}
	if on != timeline {
		return fmt.Errorf("wait for the synchronous standby: %w (timeline %d, not %d)", errOtherServer, on, timeline)
	}
	return nil
}

// serverChanged forgets what the standby of the old server had beyond what
// was released: the new server's revisions there need a check of their own.
func (h *Hub) serverChanged() {
	h.gate.epoch++
	h.gate.onStandby = min(h.gate.onStandby, h.order.watermark)
}

// checkedVisible takes a finished check's result: it releases what became
// visible and returns when to check again (0: now; negative: no need).
func (h *Hub) checkedVisible(c gateCheck) time.Duration {
	h.gate.running = false
	err := c.err
	if c.epoch == h.gate.epoch {
		h.gate.onStandby = max(h.gate.onStandby, c.onStandby)
	}
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

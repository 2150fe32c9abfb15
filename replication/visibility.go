package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Tunables of the visibility check.
var (
	// visibleCheck bounds the revisions one visibility check reads.
	visibleCheck int64 = 10000
	// visibleRetryMax bounds the wait between visibility checks while a
	// committed transaction is not visible yet.
	visibleRetryMax = 100 * time.Millisecond
)

// visibility knows up to which settled revision every revision is visible.
// The stream has a transaction once its commit is flushed, a moment before
// other sessions can see it (longer while it waits for a synchronous
// standby), so settled is not enough for a read: reads at a revision,
// WaitFor and catch-up from the table stop at the visible mark (DESIGN.md,
// "Consumer rules"). Its methods are safe for concurrent use.
type visibility struct {
	pool *pgxpool.Pool
	// mark is a revision at or below the watermark up to which every
	// revision's row is visible to any snapshot taken from now on. It only
	// rises.
	mark atomic.Int64
	// mu lets one check of the table at a time raise mark; callers waiting
	// for it share its answer. It is never held with Hub.mu.
	mu sync.Mutex
	// resets counts reset calls, so a check that began before one does not
	// store what it found about the old history.
	resets atomic.Uint64
}

// reset sets the mark to rev, which may lower it: history went backwards
// on failover (failover.go), and rev is the new server's settled revision.
func (v *visibility) reset(rev int64) {
	v.resets.Add(1)
	v.mark.Store(rev)
}

// assume raises the mark to rev without a check: rev is known visible (an
// earlier hub recorded it as the table's settled revision), and checks
// start above it rather than at the table's first revision.
func (v *visibility) assume(rev int64) {
	for {
		m := v.mark.Load()
		if m >= rev || v.mark.CompareAndSwap(m, rev) {
			return
		}
	}
}

// upTo returns the highest revision at or below upto (a settled one) up to
// which every revision is visible, checking the table for what it does not
// know yet.
func (v *visibility) upTo(ctx context.Context, upto int64) (int64, error) {
	return v.upToOn(ctx, upto, 0)
}

// upToOn is upTo that checks only on a primary on timeline, when not 0: a
// check of revisions received from one server must not ask another
// (failover.go), and a server's timeline tells a promoted standby from the
// primary it replaced. On another timeline it fails with errOtherServer.
func (v *visibility) upToOn(ctx context.Context, upto int64, timeline int32) (int64, error) {
	if m := v.mark.Load(); m >= upto {
		return upto, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	resets := v.resets.Load()
	m := v.mark.Load()
	for m < upto {
		hi := min(upto, m+visibleCheck)
		next, err := v.check(ctx, m, hi, timeline)
		if err != nil {
			return m, err
		}
		if v.resets.Load() != resets || !v.mark.CompareAndSwap(m, next) {
			return min(v.mark.Load(), upto), nil // reset meanwhile
		}
		if next < hi {
			return next, nil // a transaction at next+1 is not visible yet
		}
		m = next
	}
	return upto, nil
}

// check returns the highest revision r in [after, hi] such that every
// revision in (after, r] is visible. Every settled revision has a row with
// sub 0 (a write's first row or a filler), and a row one snapshot sees
// belongs to a transaction every later snapshot sees too. Compaction
// removes rows below its revision, where reads fail anyway: those need no
// check.
//
// The statement's bounds are its parameters and it reads walwatch.meta in
// a scalar subquery, so that its plan costs what it reads: joined to
// meta, a table never analyzed (estimated at 1,810 rows), and with a bound
// the planner could not estimate, its cost passed jit_above_cost, and
// PostgreSQL compiled it before every call: 5 to 190 ms for a check that
// reads in well under one (pg_stat_statements' jit_* columns).
func (v *visibility) check(ctx context.Context, after, hi int64, timeline int32) (int64, error) {
	var (
		compacted int64
		revs      []int64
		on        int32
	)
	err := v.pool.QueryRow(ctx, visibleCheckSQL, after, hi, timeline).Scan(&compacted, &revs, &on)
	if err != nil {
		return after, fmt.Errorf("check which revisions after %d are visible: %w", after, err)
	}
	if on != timeline {
		return after, fmt.Errorf("check which revisions after %d are visible: %w (timeline %d, not %d)", after, errOtherServer, on, timeline)
	}
	next := min(max(after, compacted), hi)
	for _, rev := range revs {
		if rev <= next {
			continue // below the compacted revision: a row compaction kept
		}
		if rev != next+1 {
			break
		}
		next = rev
	}
	return next, nil
}

// visibleCheckSQL reads the compacted revision, the sub-0 rows' revisions in
// ($1, $2], and the server's timeline when $3 is not 0.
const visibleCheckSQL = `select (select m.compact_revision from walwatch.meta m),
       array(select k.revision from walwatch.kv k
              where k.revision > $1 and k.revision <= $2 and k.sub = 0
              order by k.revision),
       case when $3 = 0 then 0 else ` + timelineSQL + ` end`

// timelineSQL is the timeline a primary writes its WAL on, from the name of
// its current WAL file (whose first 8 hex digits are the timeline): readable
// by any role, unlike pg_control_checkpoint().
const timelineSQL = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"

// errOtherServer means the pool reached another server than the one the
// stream reads: during a failover, before the stream has found it.
var errOtherServer = errors.New("the pool reached another server than the replication stream's")

// WaitFor waits until rev is settled and every transaction at or below it
// is visible: from then on a read at rev sees every write at or below it and
// will never change. A reader that wants its own writes (read at the store's
// current revision) waits for that.
func (h *Hub) WaitFor(ctx context.Context, rev int64) error {
	for {
		h.mu.Lock()
		w, advanced := h.order.watermark, h.advanced
		h.mu.Unlock()
		if w >= rev {
			break
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (settled up to %d): %w", rev, w, ctx.Err())
		case <-h.stopped:
			return h.stopError()
		}
	}
	retry := time.Millisecond
	for {
		v, err := h.visible.upTo(ctx, rev)
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
			return h.stopError()
		}
		retry = min(2*retry, visibleRetryMax)
	}
}

// Visible returns the revision up to which every write is settled and
// visible to any snapshot taken from now on, as far as the hub has checked:
// no round trip, so it may lag behind the table (WaitFor and ReadRevision
// raise it). It is never above the watermark.
func (h *Hub) Visible() int64 {
	return min(h.visible.mark.Load(), h.Watermark())
}

// ReadRevision returns the highest revision a read can use knowing that it
// sees everything the hub has delivered or will deliver at or below it, and
// will never change: load state at it, then watch from the next one.
func (h *Hub) ReadRevision(ctx context.Context) (int64, error) {
	return h.visible.upTo(ctx, h.Watermark())
}

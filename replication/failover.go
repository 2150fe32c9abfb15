package replication

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// Failover: the hub's connection string names several hosts
// (target_session_attrs=read-write), the primary dies and a standby is
// promoted. The hub reconnects to it like after any outage, creates its
// slot there (logical slots are not copied to standbys) and reads the table
// from its watermark. What is special is that the new server's history may
// not be the old one's: with asynchronous replication the old primary may
// have committed, and the hub released, revisions the standby never
// received, and the new primary hands out those revisions again, to other
// writes.
//
// So the hub identifies the server on every connection (IDENTIFY_SYSTEM:
// system identifier and timeline) and keeps, in order.exposed, the highest
// WAL position anything it released depends on. When the timeline moved
// on, the new timeline's history file says where the old one ended on it
// (its switch point): everything at or before it is the same on both. If
// what was exposed lies beyond it, or the server is another system
// altogether, history went backwards: every watcher ends with a
// *HistoryChangedError and the hub starts again from the new server's
// table. Either way, what the old server sent and the hub had not released
// yet is dropped, never released: the new server brings what it has of it.

// ErrHistoryChanged is matched (errors.Is) by the error that ends every
// watch when the database failed over to a server that lacks, or holds
// otherwise, revisions the hub had already delivered: the watcher's state
// is built on a history that no longer exists. Re-list (read at the latest
// revision) and watch from the revision after the list, as after a
// compacted start.
var ErrHistoryChanged = errors.New("history changed on failover: revisions already delivered are not on the new primary; re-list and watch again")

// HistoryChangedError is the error, matching ErrHistoryChanged, that ends
// every watch when history went backwards on failover.
type HistoryChangedError struct {
	// Revision is where the hub starts again: every revision at or below it
	// is settled on the new server. A watch from Revision+1 or later gets
	// the new history.
	Revision int64
	// Exposed is the highest WAL position (of the old timeline) that what
	// the hub had delivered depends on; SwitchPoint is where the old
	// timeline ends on the new one, 0 when the new server is another system
	// or on an older timeline.
	Exposed, SwitchPoint pglogrepl.LSN
	// OldTimeline and NewTimeline are the servers' timelines.
	OldTimeline, NewTimeline int32
}

func (e *HistoryChangedError) Error() string {
	return fmt.Sprintf("%v (delivered up to WAL %s on timeline %d; timeline %d branched off at %s; the new history is settled up to revision %d)",
		ErrHistoryChanged, e.Exposed, e.OldTimeline, e.NewTimeline, e.SwitchPoint, e.Revision)
}

// Unwrap gives ErrHistoryChanged.
func (e *HistoryChangedError) Unwrap() error { return ErrHistoryChanged }

// serverID says which server and which of its histories the stream reads.
type serverID struct {
	systemID string
	timeline int32
}

// serverChange is handed from the stream to the run loop, through the
// inbox before anything else of the new session, when the server is not
// the one the hub read before.
type serverChange struct {
	from, to serverID
	// switchPoint is where from's timeline ends on to's history; 0 when
	// to is another system or not a descendant of from.
	switchPoint pglogrepl.LSN
	// base is the new server's settled revision: where the hub starts
	// again if history went backwards.
	base int64
	done chan bool // receives whether history went backwards
}

// identify reads which server conn is on. When it is not the one the hub
// read before, it tells the run loop (changeServer) and waits until it has
// acted, so that nothing of the new session reaches the hub before.
func (h *Hub) identify(ctx context.Context, conn *pgconn.PgConn) error {
	id, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("identify the server: %w", err)
	}
	now := serverID{systemID: id.SystemID, timeline: id.Timeline}
	prev := h.server
	if prev.systemID == "" || prev == now {
		h.server = now
		h.timeline.Store(now.timeline)
		return nil
	}
	c := &serverChange{from: prev, to: now, done: make(chan bool, 1)}
	if now.systemID == prev.systemID && now.timeline > prev.timeline {
		th, err := pglogrepl.TimelineHistory(ctx, conn, now.timeline)
		if err != nil {
			return fmt.Errorf("read the history of timeline %d: %w", now.timeline, err)
		}
		c.switchPoint = switchPoint(th.Content, prev.timeline)
	}
	// On the replication connection itself (simple protocol), so it is
	// this server's.
	res, err := conn.Exec(ctx, "select greatest(settled_revision, compact_revision - 1, 1) from walwatch.meta").ReadAll()
	if err == nil && (len(res) != 1 || len(res[0].Rows) != 1) {
		err = errors.New("no row in walwatch.meta")
	}
	if err == nil {
		c.base, err = strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64)
	}
	if err != nil {
		return fmt.Errorf("read the settled revision of the new server: %w", err)
	}
	h.inbox.push(&txn{change: c})
	select {
	case diverged := <-c.done:
		h.server = now
		h.timeline.Store(now.timeline)
		h.metrics.failover(diverged)
		if diverged {
			h.log.Error("failover: history went backwards, the new primary lacks revisions already delivered; every watcher was told to re-list",
				"system", now.systemID, "timeline", prev.timeline, "new_timeline", now.timeline, "switch_point", c.switchPoint, "settled_revision", c.base)
		} else {
			h.log.Warn("failover: the server is another primary; everything delivered is on it, watchers resume from the table",
				"system", now.systemID, "timeline", prev.timeline, "new_timeline", now.timeline, "switch_point", c.switchPoint)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// switchPoint returns where timeline tli ends in a timeline history file
// (lines of "parent-timeline<TAB>switch-point<TAB>reason"), 0 when tli is
// not in it.
func switchPoint(history []byte, tli int32) pglogrepl.LSN {
	sc := bufio.NewScanner(bytes.NewReader(history))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		parent, err := strconv.ParseInt(string(f[0]), 10, 32)
		if err != nil || int32(parent) != tli {
			continue
		}
		lsn, err := pglogrepl.ParseLSN(string(f[1]))
		if err != nil {
			return 0
		}
		return lsn
	}
	return 0
}

// changeServer acts, on the run loop, on a change of server: it drops what
// the old one sent that was not released, and when something released
// depends on WAL beyond the switch point, ends every watcher with a
// *HistoryChangedError and starts again at the new server's settled
// revision. It reports whether history went backwards.
func (h *Hub) changeServer(c *serverChange) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	exposed := h.order.exposed
	h.order.forget()
	defer h.serverChanged()
	if exposed <= c.switchPoint {
		return false
	}
	reason := &HistoryChangedError{
		Revision: c.base, Exposed: exposed, SwitchPoint: c.switchPoint,
		OldTimeline: c.from.timeline, NewTimeline: c.to.timeline,
	}
	h.synced.each(func(wt *watcher) { h.cancelLocked(wt, reason) })
	for _, set := range []watcherSet{h.unsynced, h.victims} {
		for wt := range set {
			h.cancelLocked(wt, reason)
		}
	}
	h.order.restart(c.base)
	h.window.skip(c.base)
	h.visible.reset(c.base)
	close(h.advanced)
	h.advanced = make(chan struct{})
	return true
}

// Reconnect backoff while a standby is being promoted.
var (
	// standbyBackoffMax caps the wait between reconnects while the server
	// that answers is read-only or still starting: a standby about to be
	// promoted, so recovery follows promotion closely instead of waiting
	// out a backoff grown meanwhile.
	standbyBackoffMax = 500 * time.Millisecond
)

// reconnectWait returns the wait before the next reconnect after err, and
// the backoff base for the one after: a random fraction (jitter) of a base
// that doubles up to reconnectBackoffMax, or up to standbyBackoffMax while
// the server answers as a standby (awaitingPrimary).
func reconnectWait(backoff time.Duration, err error) (wait, next time.Duration) {
	limit := reconnectBackoffMax
	if awaitingPrimary(err) {
		limit = standbyBackoffMax
	}
	base := min(backoff, limit)
	return base/2 + rand.N(base/2+1), min(base*2, limit)
}

// awaitingPrimary reports whether err says that a server answered but
// cannot take the hub yet: read-only (target_session_attrs=read-write found
// only standbys), or starting up or in recovery.
func awaitingPrimary(err error) bool {
	if errors.Is(err, pgconn.ErrReadOnlyConnection) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "57P03" || pe.Code == "25006") // cannot_connect_now, read_only_sql_transaction
}

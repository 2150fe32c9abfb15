package replication

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walwatch/walwatch/sql"
)

// streamLoop runs replication sessions until ctx ends, reconnecting with
// backoff and jitter after each failure that may be an outage. It returns
// nil when ctx ends, and the first failure no retry mends (setupFailure).
func (h *Hub) streamLoop(ctx context.Context) error {
	backoff := reconnectBackoffMin
	for {
		streamed, err := h.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err := setupFailure(err); err != nil {
			return err
		}
		h.metrics.reconnect()
		if streamed {
			backoff = reconnectBackoffMin
		}
		var wait time.Duration
		wait, backoff = reconnectWait(backoff, err)
		h.troubles.stream.failed(err, "reconnect_in", wait.Round(time.Millisecond))
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// pluginArgs are pgoutput's options: our publication, binary column values
// (bytea without hex), and no streaming of transactions in progress, so
// nothing reaches us before its commit.
var pluginArgs = []string{
	"proto_version '1'",
	"publication_names '" + sql.Publication + "'",
	"binary 'true'",
}

// session is one replication connection's life: check the server's setup,
// make sure the slot exists, read what the table holds beyond the
// watermark, then stream. streamed reports whether it got as far as
// streaming.
func (h *Hub) session(ctx context.Context) (streamed bool, err error) {
	if err := h.checkSetup(ctx); err != nil {
		return false, err
	}
	conn, err := pgconn.ConnectConfig(ctx, h.repl)
	if err != nil {
		return false, fmt.Errorf("open replication connection: %w", err)
	}
	defer conn.Close(context.Background())
	if err := h.identify(ctx, conn); err != nil {
		return false, err
	}
	if err := h.readSyncRep(ctx); err != nil {
		return false, err
	}

	slot, snapshot, consistent, err := h.prepareSlot(ctx, conn)
	if err != nil {
		return false, err
	}
	if err := h.readTable(ctx, snapshot, consistent); err != nil {
		return false, err
	}
	// LSN 0: start where the slot says it is, never at the server's current
	// position, which would skip what the slot still holds for us.
	if err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: pluginArgs}); err != nil {
		return false, fmt.Errorf("start replication on slot %s: %w", slot, err)
	}
	h.log.Info("streaming", "slot", slot, "temporary", h.cfg.Slot == "")
	h.troubles.stream.ok()
	h.streaming.Store(true)
	defer h.streaming.Store(false)
	return true, h.receive(ctx, conn)
}

// prepareSlot makes sure the slot exists. A new slot exports its snapshot,
// so the table read and the stream meet with nothing between them, and
// gives its consistent point, the WAL position of that snapshot. A slot
// that lost its WAL (invalidated) is replaced: the table, not the slot, is
// the source of truth, so watchers see a delay but never a gap.
func (h *Hub) prepareSlot(ctx context.Context, conn *pgconn.PgConn) (name, snapshot string, consistent pglogrepl.LSN, err error) {
	name = h.cfg.Slot
	temporary := name == ""
	if temporary {
		name = fmt.Sprintf("walwatch_tmp_%d_%d", os.Getpid(), rand.Uint32())
	} else {
		info, err := GetSlot(ctx, h.cfg.Pool, name)
		if err == nil {
			// The server's default database is the user's name.
			if err := checkSlot(info, cmp.Or(h.repl.Database, h.repl.User)); err != nil {
				return "", "", 0, err
			}
		}
		switch {
		case err == nil && info.WALStatus == "lost":
			h.log.Warn("replication slot was invalidated; replacing it and catching up from the table", "slot", name)
			h.metrics.slotRecreated()
			if err := DropSlot(ctx, h.cfg.Pool, name, true); err != nil && !errors.Is(err, ErrSlotNotFound) {
				return "", "", 0, err
			}
		case err == nil:
			return name, "", 0, nil
		case errors.Is(err, ErrSlotNotFound):
			if h.Watermark() > 0 {
				h.log.Warn("replication slot is gone; creating it again and catching up from the table", "slot", name)
				h.metrics.slotRecreated()
			}
		default:
			return "", "", 0, err
		}
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary:      temporary,
		SnapshotAction: "EXPORT_SNAPSHOT",
		Mode:           pglogrepl.LogicalReplication,
	})
	if err != nil {
		return "", "", 0, fmt.Errorf("create replication slot %s: %w", name, err)
	}
	consistent, err = pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return "", "", 0, fmt.Errorf("create replication slot %s: consistent point %q: %w", name, res.ConsistentPoint, err)
	}
	return name, res.SnapshotName, consistent, nil
}

// readTable hands the hub every row above its watermark and the compacted
// revision's predecessor (or, on the first session, above the table's
// settled-revision hint), read in the slot's
// exported snapshot when there is one (taken at the WAL position
// consistent), once every commit that snapshot counts is in pg_xact too
// (awaitSnapshotCommits). Overlap with the stream is harmless: the hub drops
// revisions it has already settled.
func (h *Hub) readTable(ctx context.Context, snapshot string, consistent pglogrepl.LSN) error {
	tx, err := h.cfg.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("read table: begin: %w", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
	if snapshot != "" {
		// SET TRANSACTION takes no parameters; the name comes from the server.
		if _, err := tx.Exec(ctx, "set transaction snapshot "+quoteLiteral(snapshot)); err != nil {
			return fmt.Errorf("read table: import snapshot %s: %w", snapshot, err)
		}
		// Before the first row: a read in this snapshot can mark a committed
		// row dead for good (snapshot.go).
		if err := awaitSnapshotCommits(ctx, tx, h.log); err != nil {
			return fmt.Errorf("read table: %w", err)
		}
	}
	readLSN := consistent
	if snapshot == "" {
		// The first statement takes the snapshot; every commit it sees was
		// inserted into the WAL before this position (failover.go).
		var at string
		if err := tx.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&at); err != nil {
			return fmt.Errorf("read table: WAL position: %w", err)
		}
		if readLSN, err = pglogrepl.ParseLSN(at); err != nil {
			return fmt.Errorf("read table: WAL position %q: %w", at, err)
		}
	}
	var settled, compacted int64
	if err := tx.QueryRow(ctx, "select settled_revision, compact_revision from walwatch.meta").Scan(&settled, &compacted); err != nil {
		return fmt.Errorf("read table: settled and compacted revisions: %w", err)
	}
	from := h.Watermark()
	first := from == 0
	switch {
	case first:
		from = max(settled, compacted-1, 1)
		h.inbox.push(&txn{base: from, readLSN: readLSN})
	case compacted-1 > from:
		// Below the compacted revision the table may hold a revision's
		// rows in part; what the hub lacks there comes from the slot, or,
		// from a new one, not at all (compaction.go).
		if snapshot != "" {
			h.inbox.push(&txn{compacted: compacted})
		}
		from = compacted - 1
	}
	// Pages of whole revisions, bounded by rows and bytes (a revision larger
	// than a page comes whole, alone; see readPage), each read once the hub
	// has taken the one before: the reorder buffer bounds what stays behind
	// a hole.
	read := tableRead{q: tx, after: from, maxRows: pageRows, maxBytes: firstReadPageBytes}
	for !read.done {
		if err := h.inbox.waitBelow(ctx, 0); err != nil {
			return fmt.Errorf("read table after revision %d: %w", read.after, err)
		}
		page, _, err := read.next(ctx)
		if err != nil {
			return err
		}
		if len(page) > 0 {
			h.inbox.push(&txn{rows: page, readLSN: readLSN})
		}
	}
	if first {
		h.inbox.push(&txn{ready: true})
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// receive owns the replication connection: it takes the server's messages,
// hands committed transactions to the hub through a queue that never blocks,
// and confirms settled positions on time, so nothing a watcher does can make
// the server's wal_sender_timeout end the stream.
func (h *Hub) receive(ctx context.Context, conn *pgconn.PgConn) error {
	dec := newDecoder() // a fresh relation cache for every connection
	var (
		handedOff  pglogrepl.LSN // end of the last transaction handed to the hub
		serverEnd  pglogrepl.LSN // the server's WAL end from its last keepalive
		confirmed  pglogrepl.LSN
		nextStatus = time.Now().Add(h.cfg.StatusInterval)
	)
	sendStatus := func() error {
		pos := h.order.confirmed()
		// Nothing in flight: confirm the server's WAL end, so a quiet
		// revision table does not pin the WAL other tables write.
		if !dec.inTxn() && pos >= handedOff && serverEnd > pos {
			pos = serverEnd
		}
		pos = max(pos, confirmed)
		// Write, flush and apply all three: the server resends what is not
		// flushed.
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
		})
		if err != nil {
			return fmt.Errorf("send standby status: %w", err)
		}
		confirmed = pos
		nextStatus = time.Now().Add(h.cfg.StatusInterval)
		return nil
	}
	var asks replyRequests
	reads := newReadDeadline(ctx, conn.Conn())
	defer reads.stop()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !time.Now().Before(nextStatus) {
			if err := sendStatus(); err != nil {
				return err
			}
		}
		if err := reads.set(nextStatus); err != nil {
			return fmt.Errorf("set replication read deadline: %w", err)
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			return fmt.Errorf("receive replication message: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return fmt.Errorf("%w: %v", ErrBrokenStream, err)
				}
				serverEnd = max(serverEnd, ka.ServerWALEnd)
				if ka.ReplyRequested {
					nextStatus = time.Time{}
					if asks.closing(time.Now()) {
						return errServerClosing
					}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return fmt.Errorf("%w: %v", ErrBrokenStream, err)
				}
				t, err := dec.decode(xld.WALData)
				if err != nil {
					return err
				}
				if t != nil {
					h.inbox.push(t)
					handedOff = t.endLSN
					h.metrics.transaction()
				}
			}
		}
	}
}

// errServerClosing ends a session whose WAL sender waits for the hub to
// confirm everything it sent (replyRequests).
var errServerClosing = errors.New("replication stream: the server is shutting down and waits for a position the hub has not settled")

// replyRequests notices a WAL sender that is shutting down. Before it
// exits, a WAL sender waits until its client has confirmed everything it
// sent, asking for the client's position again as soon as each answer
// comes; a running one asks at most once per half wal_sender_timeout. The
// hub confirms only what it has settled, and a hole that only a filler can
// settle stays open while the server refuses new connections: the two
// would trade positions until killed (a fast shutdown hung so). A session
// asked more than maxReplyRequests times within a second ends instead;
// the hub reconnects once the server is back, from the slot's confirmed
// position, and loses nothing.
type replyRequests struct {
	since time.Time
	n     int
}

const maxReplyRequests = 20

func (r *replyRequests) closing(now time.Time) bool {
	if now.Sub(r.since) > time.Second {
		r.since, r.n = now, 0
	}
	r.n++
	return r.n > maxReplyRequests
}

// readDeadline bounds the stream's reads with the connection's own deadline
// rather than a context: given a context, pgconn arms and disarms a watcher
// on every read, a third of the receive loop's CPU in one profile at
// thousands of messages a second. The deadline moves once per status
// interval; ending ctx expires it at once, so a waiting read returns.
type readDeadline struct {
	conn  net.Conn
	stop  func() bool
	at    time.Time // the deadline set last; owned by the reading goroutine
	mu    sync.Mutex
	ended bool // ctx has ended: the deadline stays expired
}

func newReadDeadline(ctx context.Context, conn net.Conn) *readDeadline {
	d := &readDeadline{conn: conn}
	d.stop = context.AfterFunc(ctx, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.ended = true
		_ = conn.SetReadDeadline(time.Now()) // fails only on a closed connection, whose reads fail anyway
	})
	return d
}

func (d *readDeadline) set(at time.Time) error {
	if at.Equal(d.at) {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended {
		return nil
	}
	d.at = at
	return d.conn.SetReadDeadline(at)
}

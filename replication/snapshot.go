package replication

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// A new slot's exported snapshot is not safe to read with at once.
//
// The snapshot builder counts a transaction as committed as soon as it has
// decoded its commit record, and the record is decoded once it is flushed.
// The committing backend marks the transaction committed in pg_xact only
// after that flush, and leaves the list of running transactions after that.
// An ordinary snapshot lists such a transaction as still running; the
// exported one counts it as committed. A read under the exported snapshot
// that meets one of its rows in that window asks pg_xact, finds the
// transaction neither running (by the snapshot) nor committed (in pg_xact),
// takes it for aborted and sets the row's "inserted by an aborted
// transaction" hint bit (HEAP_XMIN_INVALID). Hint bits are trusted: from
// then on every reader and every unique check takes the row for dead,
// although its writer was told it committed. The hub then found a hole at
// its revision and filled it, and a persistent slot, which decodes the WAL,
// delivered the write that the table no longer had (PostgreSQL 15.18;
// TestSlotSnapshotBeforeCommitRecorded builds the interleaving).
//
// snapshotCommitsPending counts, in a transaction that has imported such a
// snapshot, the transactions that still hold their transaction ID lock
// (which a transaction keeps until after it has left the running list, so
// until after its pg_xact entry), that the snapshot counts as finished, and
// whose commit pg_xact does not show yet. While any is, no row may be read.
// It reads pg_locks and the snapshot, no table. pg_locks gives 32-bit
// transaction IDs; each is widened to the 64-bit one nearest the snapshot's
// xmax (a running transaction is within 2^31 of it), for the snapshot
// functions.
const snapshotCommitsPending = `
select count(*)
  from pg_locks l,
       lateral (select pg_current_snapshot() as snap) s,
       lateral (select pg_snapshot_xmax(s.snap)::text::bigint as xmax) m,
       lateral (select m.xmax + ((l.transactionid::text::bigint - m.xmax % 4294967296 + 6442450944) % 4294967296
                                 - 2147483648) as xid) f
 where l.locktype = 'transactionid' and l.mode = 'ExclusiveLock' and l.granted
   and f.xid >= 3
   and pg_visible_in_snapshot(f.xid::text::xid8, s.snap)
   and pg_xact_status(f.xid::text::xid8) is distinct from 'committed'`

// snapshotWaitMax bounds the wait between looks at the transactions an
// imported slot snapshot counts as committed before pg_xact does.
const snapshotWaitMax = 50 * time.Millisecond

// awaitSnapshotCommits waits, in tx, which has just imported a slot's
// exported snapshot and read nothing yet, until every transaction the
// snapshot counts as committed shows as committed in pg_xact too. The wait
// is the few microseconds between a commit's WAL flush and its pg_xact entry,
// and it is rare to meet one at all.
func awaitSnapshotCommits(ctx context.Context, tx pgx.Tx, log *slog.Logger) error {
	retry := time.Millisecond
	var waited time.Time
	for {
		var pending int64
		if err := tx.QueryRow(ctx, snapshotCommitsPending).Scan(&pending); err != nil {
			return fmt.Errorf("look for commits the slot snapshot counts before pg_xact does: %w", err)
		}
		if pending == 0 {
			if !waited.IsZero() {
				log.Info("the slot snapshot's commits are all recorded; reading the table", "waited", time.Since(waited).Round(time.Millisecond))
			}
			return nil
		}
		if waited.IsZero() {
			waited = time.Now()
			log.Info("waiting for transactions the slot snapshot counts as committed to record their commits before reading the table",
				"transactions", pending)
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for commits the slot snapshot counts before pg_xact does: %w", ctx.Err())
		case <-t.C:
		}
		retry = min(2*retry, snapshotWaitMax)
	}
}

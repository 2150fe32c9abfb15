package store

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A stamp is the current revision a pool connection last read, with the
// snapshot it read it in (pg_current_snapshot as text: xmin, xmax and the
// transactions in progress). Two snapshots alike in those see the same rows,
// so a statement whose snapshot matches the stamp knows the current revision
// without reading it again: that read is a second descent of an index
// beside the key's own, 11-14 µs of a get's 140-150 at one client on a
// table of 1.9 million rows (three runs of 60 alternated blocks of 200
// gets). Any write transaction that ends, walwatch's or not, changes the
// next snapshot, so the stamp holds only while nothing is written. It is
// the connection's, not the pool's, and names the server run it was read
// on (pg_postmaster_start_time) beside the snapshot: a connection through
// a pooler in transaction mode can reach another server without
// reconnecting, a standby promoted after a failover that lost the old
// primary's last transactions, whose own may then take the same
// transaction ids and leave the same snapshot text over other rows.
//
// Only for statements on their own, never in a transaction: a transaction's
// own writes are visible to it but change no snapshot. And only on a
// primary: a standby's snapshot leaves the list of transactions in
// progress empty (recovery keeps them elsewhere), so there the statements
// read no snapshot (snapshotFrom) and match no stamp.
type stamp struct {
	snapshot string // "" matches no snapshot
	rev      int64
}

// snapshotFrom is the FROM item a stamped statement reads its snapshot
// from, as o.s, null on a standby: the snapshot's text and the server's
// start time (as seconds since 1970, whatever the session's time zone).
const snapshotFrom = `(select case when pg_is_in_recovery() then null else ` + snapshotText + ` end) o(s)`

const snapshotText = `pg_current_snapshot()::text || ' ' || extract(epoch from pg_postmaster_start_time())`

// A connection keeps a stamp for each way of reading the current
// revision, in its CustomData: the newest row's revision (the latest gets'
// statements), and walwatch.current_revision(), which never reads below
// the compacted revision.
const (
	latestStamp  = "walwatch/store.latest"
	currentStamp = "walwatch/store.current"
)

// stampOf returns conn's stamp of the given kind, or none.
func stampOf(conn *pgx.Conn, kind string) stamp {
	st, _ := conn.PgConn().CustomData()[kind].(stamp)
	return st
}

// keepStamp records what a stamped statement read on conn: snapshot is
// null when the statement matched the stamp (which still holds) or ran on
// a standby (where no stamp matches).
func keepStamp(conn *pgx.Conn, kind string, snapshot *string, rev int64) {
	if snapshot != nil {
		conn.PgConn().CustomData()[kind] = stamp{snapshot: *snapshot, rev: rev}
	}
}

// withStamp runs read on a pool connection of its own with that
// connection's stamp of kind, and keeps what read returns: its snapshot
// (null when it matched the stamp) and the current revision it read.
func withStamp(ctx context.Context, pool *pgxpool.Pool, kind string, read func(conn *pgxpool.Conn, st stamp) (snapshot *string, rev int64, err error)) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	snapshot, rev, err := read(conn, stampOf(conn.Conn(), kind))
	if err != nil {
		return err
	}
	keepStamp(conn.Conn(), kind, snapshot, rev)
	return nil
}

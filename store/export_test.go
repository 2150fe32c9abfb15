package store

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
)

// PutWorkers is how many put batches may be in flight at once.
const PutWorkers = putWorkers

// SetPutWorkers changes how many put batches s may have in flight; only
// before its first put.
func SetPutWorkers(s *Store, n int) { s.puts.b.limit = n }

// SetRevisionYield sets whether s's reads of the current revision yield
// before a batch is taken; only before its first.
func SetRevisionYield(s *Store, yield bool) { s.revs.yield = yield }

// AfterRevisionStatement makes s call f after each statement that reads
// the current revision, before the reads it served have their answer.
func AfterRevisionStatement(s *Store, f func()) {
	run := s.revs.run
	s.revs.run = func(calls []*revisionCall) {
		run(calls)
		f()
	}
}

// QueuedRevisionReads reports how many reads of the current revision wait
// for a statement.
func QueuedRevisionReads(s *Store) int {
	s.revs.mu.Lock()
	defer s.revs.mu.Unlock()
	return len(s.revs.queue)
}

// QueuedPuts reports how many puts wait for a batch.
func QueuedPuts(s *Store) int {
	s.puts.b.mu.Lock()
	defer s.puts.b.mu.Unlock()
	return len(s.puts.b.queue)
}

// QueuedGets reports how many gets wait for a batch.
func QueuedGets(s *Store) int {
	s.gets.b.mu.Lock()
	defer s.gets.b.mu.Unlock()
	return len(s.gets.b.queue)
}

// GetWorkers is how many get batches may be in flight at once.
const GetWorkers = getWorkers

// ManyKeysLatestSQL is the statement that reads a batch of gets.
const ManyKeysLatestSQL = manyKeysLatestSQL

// TxnWorkers is how many Txn batches may be in flight at once.
const TxnWorkers = txnWorkers

// QueuedTxns reports how many Txns wait for a batch.
func QueuedTxns(s *Store) int {
	s.txns.b.mu.Lock()
	defer s.txns.b.mu.Unlock()
	return len(s.txns.b.queue)
}

// KeptCount returns the count s keeps for the page of [key, end) at rev.
func KeptCount(s *Store, key, end []byte, rev int64) (int64, bool) {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	n, ok := s.counts.count[pageAt{string(key), string(end), rev}]
	return n, ok
}

// KeptCounts returns how many counts s keeps.
func KeptCounts(s *Store) int {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	return len(s.counts.count)
}

// KeepCount makes s keep count for the page of [key, end) at rev.
func KeepCount(s *Store, key, end []byte, rev, count int64) {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	if s.counts.count == nil {
		s.counts.count = make(map[pageAt]int64)
	}
	s.counts.count[pageAt{string(key), string(end), rev}] = count
}

// ForgeStamps gives the connection stamps of both kinds with its snapshot
// now and revision rev, as though it had read rev as the current revision:
// a read that trusts a stamp answers rev. It returns the snapshot.
func ForgeStamps(ctx context.Context, conn *pgx.Conn, rev int64) (string, error) {
	return forgeStamps(ctx, conn, rev, snapshotText)
}

// ForgeStampsElsewhere is ForgeStamps as read on another server whose
// snapshot is the same, one started a second earlier. It returns the
// snapshot as read on this one.
func ForgeStampsElsewhere(ctx context.Context, conn *pgx.Conn, rev int64) (string, error) {
	return forgeStamps(ctx, conn, rev, strings.Replace(snapshotText, "pg_postmaster_start_time()", "pg_postmaster_start_time() - interval '1 second'", 1))
}

// forgeStamps stamps conn with what the expression forged reads, in the
// same statement as its snapshot.
func forgeStamps(ctx context.Context, conn *pgx.Conn, rev int64, forged string) (string, error) {
	var here, there string
	if err := conn.QueryRow(ctx, "select "+snapshotText+", "+forged).Scan(&here, &there); err != nil {
		return "", err
	}
	keepStamp(conn, latestStamp, &there, rev)
	keepStamp(conn, currentStamp, &there, rev)
	return here, nil
}

// SnapshotText is what a stamped statement on conn would read now as its
// snapshot.
func SnapshotText(ctx context.Context, conn *pgx.Conn) (string, error) {
	var s string
	err := conn.QueryRow(ctx, "select "+snapshotText).Scan(&s)
	return s, err
}

// GetBatch runs keys' gets at the current revision as one batch.
func GetBatch(ctx context.Context, s *Store, keys ...[]byte) ([]RangeResponse, error) {
	calls := make([]*getCall, len(keys))
	for i, key := range keys {
		calls[i] = &getCall{pending: newPending(ctx), req: RangeRequest{KeyRange: Key(key)}}
	}
	if err := s.gets.runBatch(calls); err != nil {
		return nil, err
	}
	res := make([]RangeResponse, len(keys))
	for i, c := range calls {
		if c.err != nil {
			return nil, c.err
		}
		res[i] = c.res
	}
	return res, nil
}

// TxnGeneral runs req as a Txn that is not of Kubernetes' shape would run:
// alone, through begin's reads and the writes they plan.
func TxnGeneral(ctx context.Context, s *Store, req TxnRequest) (TxnResponse, error) {
	return s.txnAlone(ctx, req)
}

// CASShape reports whether req is one of Kubernetes' writes, which
// walwatch.cas_batch runs.
func CASShape(req TxnRequest) bool {
	_, ok := casShape(req)
	return ok
}

// ForgetCounts makes s forget every count it keeps.
func ForgetCounts(s *Store) {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	s.counts.count = nil
}

package store

import (
	"context"
	"fmt"
	"time"
)

// CompactResponse says where history now starts and how many rows went.
type CompactResponse struct {
	CompactRevision int64
	Removed         int64
}

// Compact removes history no read at or above rev can see, as etcd's compact
// does: reads below rev then fail, reads at rev and later are unchanged, and
// the newest version of every live key survives. rev at or below the compacted
// revision fails with a *CompactedError, above the current one with a
// *FutureRevisionError.
func (s *Store) Compact(ctx context.Context, rev int64) (CompactResponse, error) {
	if rev <= 0 {
		return CompactResponse{}, fmt.Errorf("%w: %d: compaction needs a positive revision", ErrInvalidRevision, rev)
	}
	return s.compact(ctx, rev, "select compact_revision, removed from walwatch.compact($1)", rev)
}

// CompactOlderThan compacts at the oldest revision written within age, so the
// history older than age goes. When that is no later than the compacted
// revision it does nothing.
func (s *Store) CompactOlderThan(ctx context.Context, age time.Duration) (CompactResponse, error) {
	if age < 0 {
		return CompactResponse{}, fmt.Errorf("%w: %s", ErrNegativeAge, age)
	}
	return s.compact(ctx, 0, "select compact_revision, removed from walwatch.compact_older_than($1)", age)
}

// CompactKeepLatest compacts at the current revision, keeping only the newest
// version of each live key.
func (s *Store) CompactKeepLatest(ctx context.Context) (CompactResponse, error) {
	return s.compact(ctx, 0, "select compact_revision, removed from walwatch.compact_keep_latest()")
}

func (s *Store) compact(ctx context.Context, rev int64, query string, args ...any) (CompactResponse, error) {
	for attempt := 1; ; attempt++ {
		var res CompactResponse
		err := s.pool.QueryRow(ctx, query, args...).Scan(&res.CompactRevision, &res.Removed)
		// Compaction settles the revisions below it first, waiting on the
		// writers that hold them, and one of those, a Txn settling below
		// its own revision, may wait on us: PostgreSQL ends the deadlock.
		if aborted(err) && attempt < txnRetries {
			continue
		}
		if err != nil {
			return CompactResponse{}, fmt.Errorf("compact: %w", TypedError(err, rev))
		}
		return res, nil
	}
}

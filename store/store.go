// Package store is walwatch's key-value store on PostgreSQL: etcd's data model
// (revisions, versions, reads at any revision, transactions, compaction) over
// the append-only revision table in package sql. It knows nothing of watching.
package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Limits bound what one request may carry. The defaults are etcd's, but for
// keys: etcd has no fixed limit, while a PostgreSQL index entry holds at most
// 2,704 bytes, so a longer key that does not compress fails in the server
// (with ErrKeyTooLarge too) whatever MaxKeySize says.
type Limits struct {
	MaxKeySize   int // bytes
	MaxValueSize int // bytes; etcd's default request limit is 1.5 MiB
	MaxTxnOps    int // operations in one branch of a Txn; etcd's --max-txn-ops
}

// DefaultLimits are used when New gets a zero Limits.
var DefaultLimits = Limits{
	MaxKeySize:   2 << 10,
	MaxValueSize: 3 << 19, // 1.5 MiB
	MaxTxnOps:    128,
}

// Store reads and writes keys through a pgx pool. It is safe for concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	limits Limits
	puts   *putBatcher
	gets   *getBatcher
	txns   *txnBatcher
	renews *keepAliveBatcher
	revs   *batcher[*revisionCall]
	counts pageCounts
}

// New returns a Store on pool. Zero fields of limits take DefaultLimits.
func New(pool *pgxpool.Pool, limits Limits) *Store {
	if limits.MaxKeySize <= 0 {
		limits.MaxKeySize = DefaultLimits.MaxKeySize
	}
	if limits.MaxValueSize <= 0 {
		limits.MaxValueSize = DefaultLimits.MaxValueSize
	}
	if limits.MaxTxnOps <= 0 {
		limits.MaxTxnOps = DefaultLimits.MaxTxnOps
	}
	s := &Store{pool: pool, limits: limits, puts: newPutBatcher(pool), gets: newGetBatcher(pool), renews: &keepAliveBatcher{pool: pool}, revs: newRevisionBatcher(pool)}
	s.txns = newTxnBatcher(s)
	return s
}

// Limits returns the limits the store enforces.
func (s *Store) Limits() Limits { return s.limits }

// Pool returns the pool the store uses.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// KeyValue is one key as etcd describes it.
type KeyValue struct {
	Key            []byte
	Value          []byte
	CreateRevision int64 // revision of the put that created the key
	ModRevision    int64 // revision of its last change
	Version        int64 // 1 on create, +1 per put
	Lease          int64 // the lease the key is attached to; 0: none
}

// OwnKeyValue copies a key and a value the driver lends (pgx's
// pgtype.DriverBytes) into one allocation of their own, keeping a nil
// slice nil and an empty one empty.
func OwnKeyValue(key, value []byte) (ownKey, ownValue []byte) {
	n := len(key)
	buf := make([]byte, 0, n+len(value))
	buf = append(buf, key...)
	if key != nil {
		ownKey = buf[:n:n]
	}
	if value != nil {
		ownValue = append(buf[n:], value...)
	}
	return ownKey, ownValue
}

// querier is what the store's operations need: a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

var (
	_ querier = (*pgxpool.Pool)(nil)
	_ querier = pgx.Tx(nil)
)

// Revision returns the current and the compacted revision.
func (s *Store) Revision(ctx context.Context) (current, compacted int64, err error) {
	err = s.pool.QueryRow(ctx, "select walwatch.current_revision(), walwatch.compact_revision()").Scan(&current, &compacted)
	if err != nil {
		return 0, 0, fmt.Errorf("read revision: %w", markTransient(err))
	}
	return current, compacted, nil
}

// CurrentRevision returns the current revision, as Revision does, read by
// a statement that began after the call: calls waiting at once share one.
func (s *Store) CurrentRevision(ctx context.Context) (int64, error) {
	c := &revisionCall{pending: newPending(ctx)}
	s.revs.submit(c)
	if err := c.wait(); err != nil {
		return 0, err
	}
	return c.rev, nil
}

func (s *Store) checkKey(key []byte) error {
	if len(key) == 0 {
		return ErrEmptyKey
	}
	if len(key) > s.limits.MaxKeySize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrKeyTooLarge, len(key), s.limits.MaxKeySize)
	}
	return nil
}

// CheckRange returns why the store refuses r, or nil: an empty key, or a
// key or end above its limits.
func (s *Store) CheckRange(r KeyRange) error {
	if err := s.checkKey(r.Key); err != nil {
		return err
	}
	if len(r.End) > s.limits.MaxKeySize {
		return fmt.Errorf("%w: range end of %d bytes, limit %d", ErrKeyTooLarge, len(r.End), s.limits.MaxKeySize)
	}
	return nil
}

func (s *Store) checkValue(value []byte) error {
	if len(value) > s.limits.MaxValueSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(value), s.limits.MaxValueSize)
	}
	return nil
}

func checkRevision(rev int64) error {
	if rev < 0 {
		return fmt.Errorf("%w: %d: must be 0 (latest) or positive", ErrInvalidRevision, rev)
	}
	return nil
}

package store

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors for bad input. Each changes nothing in the store.
var (
	ErrEmptyKey        = errors.New("key is empty")
	ErrKeyTooLarge     = errors.New("key is too large")
	ErrValueTooLarge   = errors.New("value is too large")
	ErrInvalidRevision = errors.New("invalid revision")
	ErrInvalidLimit    = errors.New("invalid limit")
	ErrDuplicateKey    = errors.New("duplicate key given in txn request")
	ErrTooManyOps      = errors.New("too many operations in txn request")
	ErrNegativeAge     = errors.New("compaction age must not be negative")
	// ErrKeyNotFound: a put that keeps the key's value or lease
	// (IgnoreValue, IgnoreLease) found no key.
	ErrKeyNotFound = errors.New("key not found")
	// ErrValueProvided, ErrLeaseProvided: a put that keeps the key's value
	// or lease gave one.
	ErrValueProvided = errors.New("value is provided")
	ErrLeaseProvided = errors.New("lease is provided")
)

// Lease errors, as etcd's.
var (
	ErrLeaseNotFound    = errors.New("requested lease not found")
	ErrLeaseExists      = errors.New("lease already exists")
	ErrLeaseTTLTooLarge = errors.New("too large lease TTL")
)

// ErrCompacted matches (errors.Is) every *CompactedError.
var ErrCompacted = errors.New("required revision has been compacted")

// ErrFutureRevision matches (errors.Is) every *FutureRevisionError.
var ErrFutureRevision = errors.New("required revision is a future revision")

// CompactedError is returned for a revision below the compacted one.
type CompactedError struct {
	Revision        int64 // the revision asked for
	CompactRevision int64 // the oldest revision still readable
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("required revision %d has been compacted (compacted revision %d)", e.Revision, e.CompactRevision)
}

func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// FutureRevisionError is returned for a revision above the current one.
type FutureRevisionError struct {
	Revision        int64 // the revision asked for
	CurrentRevision int64
}

func (e *FutureRevisionError) Error() string {
	return fmt.Sprintf("required revision %d is a future revision (current revision %d)", e.Revision, e.CurrentRevision)
}

func (e *FutureRevisionError) Is(target error) bool { return target == ErrFutureRevision }

// SQLSTATEs raised by walwatch's SQL functions (sql/migrations).
const (
	codeCompacted       = "WWC01"
	codeFutureRevision  = "WWF01"
	codeEmptyKey        = "WWK01"
	codeLeaseNotFound   = "WWL01"
	codeLeaseExists     = "WWL02"
	codeLeaseTTL        = "WWL03"
	codeInvalidArgument = "22023"
	// PostgreSQL's program_limit_exceeded: for our rows only an index entry
	// can exceed one, and only the key is large in any index.
	codeLimitExceeded = "54000"
)

// TypedError turns an error raised by walwatch's SQL functions into the
// typed error it stands for; rev is the revision the caller asked for. An error that says
// PostgreSQL cannot serve the request for now is marked with ErrUnavailable,
// or with ErrAborted for a serialization failure or a deadlock, keeping the
// original in its chain. Other errors pass through unchanged.
func TypedError(err error, rev int64) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return markTransient(err)
	}
	detail, _ := strconv.ParseInt(pe.Detail, 10, 64)
	switch pe.Code {
	case codeCompacted:
		return &CompactedError{Revision: rev, CompactRevision: detail}
	case codeFutureRevision:
		return &FutureRevisionError{Revision: rev, CurrentRevision: detail}
	case codeEmptyKey:
		return ErrEmptyKey
	case codeLeaseNotFound:
		return fmt.Errorf("%w: %s", ErrLeaseNotFound, pe.Detail)
	case codeLeaseExists:
		return fmt.Errorf("%w: %s", ErrLeaseExists, pe.Detail)
	case codeLeaseTTL:
		return fmt.Errorf("%w: %s", ErrLeaseTTLTooLarge, pe.Message)
	case codeInvalidArgument:
		return fmt.Errorf("%w: %s", ErrInvalidRevision, pe.Message)
	case codeLimitExceeded:
		return fmt.Errorf("%w: %s", ErrKeyTooLarge, pe.Message)
	}
	return markTransient(err)
}

// keyText quotes a key for an error message, cut short: a message need not
// carry a 2 KiB key.
func keyText(key []byte) string {
	const most = 64
	if len(key) > most {
		return fmt.Sprintf("%q… (%d bytes)", key[:most], len(key))
	}
	return fmt.Sprintf("%q", key)
}

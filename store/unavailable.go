package store

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable matches (errors.Is) the error of an operation that failed
// because PostgreSQL could not be reached or could not serve it for now: the
// server is down, starting, restarting or shutting down, the connection
// broke, or every connection slot is taken. The same operation may succeed
// later. A write that failed this way after it was sent may or may not have
// been committed, as with etcd's Unavailable.
var ErrUnavailable = errors.New("PostgreSQL is unavailable")

// ErrAborted matches (errors.Is) the error of a transaction PostgreSQL rolled
// back to resolve a serialization failure or a deadlock: nothing of it was
// written, and running it again may succeed. The server itself is fine.
var ErrAborted = errors.New("PostgreSQL aborted the transaction")

// SQLSTATEs that say the server cannot serve us for now, rather than that
// the request is wrong (PostgreSQL's Appendix A).
const (
	classConnectionException = "08" // connection_exception and its subclasses
	codeProtocolViolation    = "08P01"
	codeAdminShutdown        = "57P01" // the server is shutting down, or an admin ended the session
	codeCrashShutdown        = "57P02" // another backend crashed: every session is ended
	codeCannotConnectNow     = "57P03" // starting up, shutting down or in recovery
	codeTooManyConnections   = "53300"
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
)

// dbError is a database error marked with what it means to a caller: kind is
// ErrUnavailable or ErrAborted. The error it marks stays reachable, so
// errors.As still finds a *pgconn.PgError and its Code.
type dbError struct {
	kind error
	err  error
}

func (e *dbError) Error() string   { return e.kind.Error() + ": " + e.err.Error() }
func (e *dbError) Unwrap() []error { return []error{e.kind, e.err} }

// markTransient marks err, an error of a PostgreSQL operation, with
// ErrUnavailable or ErrAborted when it is one of those; any other err is
// returned unchanged.
func markTransient(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrAborted) {
		return err
	}
	if kind := transientKind(err); kind != nil {
		return &dbError{kind: kind, err: err}
	}
	return err
}

// transientKind classifies an error of a PostgreSQL operation: ErrUnavailable,
// ErrAborted, or nil for an error that retrying will not cure (a bad request,
// a bug, a misconfiguration) or that the caller caused (a context it ended).
func transientKind(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// The server answered, perhaps while we connected: its code decides.
		// A wrong password or a missing database is no outage: it needs an
		// operator, not a retry.
		switch c := pe.Code; {
		case c == codeSerializationFailure, c == codeDeadlockDetected:
			return ErrAborted
		case c == codeAdminShutdown, c == codeCrashShutdown, c == codeCannotConnectNow, c == codeTooManyConnections,
			// 08P01 is a client speaking the protocol wrong: a bug, not an outage.
			len(c) == 5 && c[:2] == classConnectionException && c != codeProtocolViolation:
			return ErrUnavailable
		}
		return nil
	}
	var (
		connect *pgconn.ConnectError
		netErr  net.Error
	)
	switch {
	case errors.Is(err, context.Canceled):
		// The caller gave up, even if it was while connecting.
		return nil
	case errors.As(err, &connect):
		// Refused, unreachable, reset or timed out (connect_timeout, or a
		// deadline that ran out while connecting) before the server answered.
		return ErrUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		// The caller's own deadline ran out while it waited for a pooled
		// connection or for an answer: whether that is an outage is for
		// the caller to say, who knows why it set the deadline.
		return nil
	case errors.As(err, &netErr), // reset, broken pipe, a network timeout, on an open connection
		errors.Is(err, pgconn.ErrConnClosed),                        // the driver had closed the connection
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF): // the server closed it mid-query
		return ErrUnavailable
	}
	return nil
}

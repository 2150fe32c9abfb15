package replication

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestReconnectWait: the backoff doubles up to its maximum while the
// server is away, but while one answers as a standby (read-only, or
// starting) it stays at most standbyBackoffMax, even after a long outage
// grew it, so that recovery follows promotion closely.
func TestReconnectWait(t *testing.T) {
	refused := errors.New("dial tcp 127.0.0.1:5432: connect: connection refused")
	// What pgconn returns when target_session_attrs=read-write finds the
	// primary gone and the standby read-only.
	readOnly := fmt.Errorf("check the server's settings: %w", &pgconn.ConnectError{})
	readOnly = fmt.Errorf("%w: %w", readOnly, errors.Join(refused, fmt.Errorf("ValidateConnect failed: %w", pgconn.ErrReadOnlyConnection)))
	starting := fmt.Errorf("open replication connection: %w", &pgconn.PgError{Code: "57P03", Message: "the database system is not yet accepting connections"})
	readOnlyTxn := &pgconn.PgError{Code: "25006", Message: "cannot execute INSERT in a read-only transaction"}

	for _, err := range []error{readOnly, starting, readOnlyTxn} {
		if !awaitingPrimary(err) {
			t.Errorf("awaitingPrimary(%v) = false", err)
		}
	}
	for _, err := range []error{refused, &pgconn.PgError{Code: "57P01"}, ErrBrokenStream} {
		if awaitingPrimary(err) {
			t.Errorf("awaitingPrimary(%v) = true", err)
		}
	}

	// Refusals alone grow the backoff to its maximum.
	backoff := reconnectBackoffMin
	for range 20 {
		_, backoff = reconnectWait(backoff, refused)
	}
	if backoff != reconnectBackoffMax {
		t.Fatalf("after 20 refusals the backoff is %s, want %s", backoff, reconnectBackoffMax)
	}
	// A standby answering: the very next wait is short, and so is every
	// one after while it keeps answering so.
	for i := range 20 {
		var wait time.Duration
		wait, backoff = reconnectWait(backoff, readOnly)
		if wait > standbyBackoffMax || backoff > standbyBackoffMax {
			t.Fatalf("wait %d while a standby answers: %s (backoff %s), want at most %s", i, wait, backoff, standbyBackoffMax)
		}
	}
	// Jitter: each wait is between half the base and the base.
	for range 100 {
		wait, next := reconnectWait(400*time.Millisecond, refused)
		if wait < 200*time.Millisecond || wait > 400*time.Millisecond || next != 800*time.Millisecond {
			t.Fatalf("reconnectWait(400ms) = %s, %s", wait, next)
		}
	}
}

func TestSwitchPoint(t *testing.T) {
	history := []byte("1\t0/3000000\tno recovery target specified\n\n2\t0/5A000F8\tno recovery target specified\n")
	for _, c := range []struct {
		tli  int32
		want pglogrepl.LSN
	}{{1, 0x3000000}, {2, 0x5A000F8}, {3, 0}} {
		if got := switchPoint(history, c.tli); got != c.want {
			t.Errorf("switchPoint(timeline %d) = %s, want %s", c.tli, got, c.want)
		}
	}
	if got := switchPoint([]byte("garbage\n1\tnot-an-lsn\n"), 1); got != 0 {
		t.Errorf("switchPoint of a broken history = %s, want 0", got)
	}
}

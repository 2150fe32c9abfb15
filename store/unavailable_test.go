package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
)

// connectErr returns a real *pgconn.ConnectError: a refused connection, or
// one given up because ctx ended.
func connectErr(t *testing.T, ctx context.Context, url string) error {
	t.Helper()
	conn, err := pgconn.Connect(ctx, url)
	if err == nil {
		conn.Close(ctx)
		t.Fatalf("connected to %s, want a refused connection", url)
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("connect to %s: %T %v, want a *pgconn.ConnectError", url, err, err)
	}
	return err
}

func TestTypedErrorMarksTransientErrors(t *testing.T) {
	t.Parallel()
	url := pgtest.RefusedURL(t)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	pg := func(code string) error {
		return fmt.Errorf("put \"/x\": %w", &pgconn.PgError{Severity: "FATAL", Code: code, Message: "message " + code})
	}
	cases := []struct {
		name string
		err  error
		want error // ErrUnavailable, ErrAborted or nil
	}{
		{"connection refused", connectErr(t, context.Background(), url), store.ErrUnavailable},
		{"connect given up by the caller", connectErr(t, canceled, url), nil},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, store.ErrUnavailable},
		{"broken pipe", fmt.Errorf("write failed: %w", &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}), store.ErrUnavailable},
		{"closed mid-query", fmt.Errorf("failed to receive message: %w", io.ErrUnexpectedEOF), store.ErrUnavailable},
		{"closed at a message boundary", fmt.Errorf("receive message: %w", io.EOF), store.ErrUnavailable},
		{"conn closed by the driver", fmt.Errorf("query: %w", pgconn.ErrConnClosed), store.ErrUnavailable},
		{"57P01 admin shutdown", pg("57P01"), store.ErrUnavailable},
		{"57P02 crash shutdown", pg("57P02"), store.ErrUnavailable},
		{"57P03 cannot connect now", pg("57P03"), store.ErrUnavailable},
		{"53300 too many connections", pg("53300"), store.ErrUnavailable},
		{"08006 connection failure", pg("08006"), store.ErrUnavailable},
		{"08001 unable to connect", pg("08001"), store.ErrUnavailable},
		{"08000 connection exception", pg("08000"), store.ErrUnavailable},
		{"40001 serialization failure", pg("40001"), store.ErrAborted},
		{"40P01 deadlock", pg("40P01"), store.ErrAborted},
		{"08P01 protocol violation (a bug)", pg("08P01"), nil},
		{"28P01 wrong password (misconfigured)", pg("28P01"), nil},
		{"3D000 no such database (misconfigured)", pg("3D000"), nil},
		{"42883 undefined function (not migrated)", pg("42883"), nil},
		{"57014 query canceled", pg("57014"), nil},
		{"the caller's context ended", fmt.Errorf("read: %w", context.Canceled), nil},
		{"the caller's deadline passed", fmt.Errorf("read: %w", context.DeadlineExceeded), nil},
		{"anything else", errors.New("scan: cannot scan NULL into *int64"), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := store.TypedError(tc.err, 0)
			unavailable, aborted := errors.Is(got, store.ErrUnavailable), errors.Is(got, store.ErrAborted)
			switch {
			case tc.want == nil && (unavailable || aborted):
				t.Errorf("TypedError(%v) = %v: marked transient, want it unchanged", tc.err, got)
			case tc.want == nil && got != tc.err:
				t.Errorf("TypedError(%v) = %v, want it unchanged", tc.err, got)
			case tc.want == store.ErrUnavailable && (!unavailable || aborted):
				t.Errorf("TypedError(%v) = %v, want ErrUnavailable only", tc.err, got)
			case tc.want == store.ErrAborted && (!aborted || unavailable):
				t.Errorf("TypedError(%v) = %v, want ErrAborted only", tc.err, got)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("TypedError(%v) = %v: the original error is no longer in its chain", tc.err, got)
			}
			var pe *pgconn.PgError
			if errors.As(tc.err, &pe) {
				var after *pgconn.PgError
				if !errors.As(got, &after) || after.Code != pe.Code {
					t.Errorf("TypedError(%v) = %v: the *pgconn.PgError is no longer reachable", tc.err, got)
				}
			}
			if again := store.TypedError(got, 0); again != got {
				t.Errorf("TypedError twice = %v, want the first answer %v", again, got)
			}
		})
	}
}

func TestTypedErrorKeepsTypedErrors(t *testing.T) {
	t.Parallel()
	err := store.TypedError(&pgconn.PgError{Code: "WWC01", Detail: "7"}, 3)
	var ce *store.CompactedError
	if !errors.As(err, &ce) || ce.CompactRevision != 7 || ce.Revision != 3 || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("TypedError(WWC01) = %v, want a CompactedError at 3 (compacted 7) only", err)
	}
}

// TestStoreUnreachable: every operation of a store whose server refuses
// connections fails with ErrUnavailable.
func TestStoreUnreachable(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), pgtest.RefusedURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := store.New(pool, store.Limits{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ops := map[string]func() error{
		"Put": func() error { _, err := s.Put(ctx, []byte("/x"), []byte("v")); return err },
		"Get": func() error { _, _, err := s.Get(ctx, []byte("/x"), 0); return err },
		"Range": func() error {
			_, err := s.Range(ctx, store.RangeRequest{KeyRange: store.Prefix([]byte("/")), Revision: 5})
			return err
		},
		"Delete":            func() error { _, err := s.Delete(ctx, store.Prefix([]byte("/"))); return err },
		"Revision":          func() error { _, _, err := s.Revision(ctx); return err },
		"CurrentRevision":   func() error { _, err := s.CurrentRevision(ctx); return err },
		"Compact":           func() error { _, err := s.Compact(ctx, 3); return err },
		"CompactKeepLatest": func() error { _, err := s.CompactKeepLatest(ctx); return err },
		"Txn": func() error {
			_, err := s.Txn(ctx, store.TxnRequest{Then: []store.Op{store.OpPutKey([]byte("/x"), []byte("v"))}})
			return err
		},
		// Kubernetes' update: walwatch.cas_batch's path.
		"Txn of Kubernetes' shape": func() error {
			_, err := s.Txn(ctx, store.TxnRequest{
				If:   []store.Compare{{Key: []byte("/x"), Target: store.CompareModRevision, Result: store.ResultEqual, Number: 2}},
				Then: []store.Op{store.OpPutKey([]byte("/x"), []byte("v"))},
				Else: []store.Op{store.OpGet(store.Key([]byte("/x")), 0)},
			})
			return err
		},
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s on an unreachable server: %v, want ErrUnavailable", name, err)
		}
	}
}

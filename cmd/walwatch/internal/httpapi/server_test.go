package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/logs"
)

// TestDatabaseDown: with PostgreSQL unreachable every request that needs it
// is a 503 "unavailable" with a Retry-After, and however many there are the
// log says so once, with no ERROR: an outage is not a bug.
func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	s, logged := newOfflineServer(t)
	requests := []struct{ method, target, body string }{
		{"PUT", "/v1/kv/x", "v"},
		{"GET", "/v1/kv/x", ""},
		{"GET", "/v1/kv/x?prefix=true&rev=5&limit=2", ""},
		{"DELETE", "/v1/kv/x", ""},
		{"GET", "/v1/status", ""},
		{"GET", "/routes/", ""},
		{"GET", "/routes/foo", ""},
		{"PUT", "/routes/foo", `{"uri":"/foo","upstream":"http://127.0.0.1:1"}`},
		{"DELETE", "/routes/foo", ""},
		{"POST", "/v1/compact", `{"keep_latest":true}`},
		{"PUT", "/v1/kv/x?lease=5", "v"},
		{"POST", "/v1/leases", `{"ttl":10}`},
		{"GET", "/v1/leases", ""},
		{"GET", "/v1/leases/5?keys=true", ""},
		{"POST", "/v1/leases/5/keepalive", ""},
		{"DELETE", "/v1/leases/5", ""},
		{"GET", "/readyz", ""}, // the hub never ran here: not ready
	}
	const rounds = 3
	for range rounds {
		for _, rq := range requests {
			a := do(t, s, rq.method, rq.target, rq.body)
			if a.status != http.StatusServiceUnavailable || a.err.Code != "unavailable" {
				t.Errorf("%s %s: %d %s, want 503 unavailable", rq.method, rq.target, a.status, a.body)
			}
			if ra := a.header.Get("Retry-After"); ra != "1" {
				t.Errorf("%s %s: Retry-After %q, want \"1\"", rq.method, rq.target, ra)
			}
			if strings.Contains(a.body, "127.0.0.1") || strings.Contains(a.body, "user=") {
				t.Errorf("%s %s: %s: the connection's details are for the log, not for clients", rq.method, rq.target, a.body)
			}
		}
	}
	if n := logged.Count("level=ERROR"); n != 0 {
		t.Errorf("%d ERROR lines, want none:\n%s", n, logged)
	}
	if n := logged.Count("level=WARN", "PostgreSQL is unavailable"); n != 1 {
		t.Errorf("%d WARN lines saying PostgreSQL is unavailable for %d refused requests, want 1:\n%s", n, rounds*(len(requests)-1), logged)
	}
	if n := logged.Count("connection refused"); n != 1 {
		t.Errorf("the WARN line does not say why (connection refused):\n%s", logged)
	}
}

// TestWriteError maps each kind of error to its status and code.
func TestWriteError(t *testing.T) {
	t.Parallel()
	unavailable := store.TypedError(fmt.Errorf("put: %w", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}), 0)
	aborted := store.TypedError(&pgconn.PgError{Code: "40P01", Message: "deadlock detected"}, 0)
	cases := []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter bool
		logged     string // the level of the line logged for it, "" for none
	}{
		{"PostgreSQL unavailable", unavailable, 503, "unavailable", true, "WARN"},
		{"transaction aborted", aborted, 503, "unavailable", true, "WARN"},
		{"settle timed out", fmt.Errorf("%w: revision 9: %w", walwatch.ErrNotSettled, context.DeadlineExceeded), 503, "unavailable", true, ""},
		{"settle hit the database down", fmt.Errorf("%w: revision 9: %w", walwatch.ErrNotSettled, unavailable), 503, "unavailable", true, "WARN"},
		{"client closed", walwatch.ErrClosed, 503, "unavailable", true, ""},
		{"hub stopped", replication.ErrHubStopped, 503, "unavailable", true, ""},
		{"a deadline of ours", fmt.Errorf("acquire: %w", context.DeadlineExceeded), 503, "unavailable", true, ""},
		{"compacted", &store.CompactedError{Revision: 2, CompactRevision: 5}, 410, "compacted", false, ""},
		{"future", &store.FutureRevisionError{Revision: 9, CurrentRevision: 5}, 400, "future_revision", false, ""},
		{"bad request", fmt.Errorf("%w: nope", errBadRequest), 400, "invalid_argument", false, ""},
		{"not found", fmt.Errorf("%w: key", errNotFound), 404, "not_found", false, ""},
		{"too large", store.ErrValueTooLarge, 413, "too_large", false, ""},
		{"lease not found", fmt.Errorf("revoke lease 5: %w: 5", store.ErrLeaseNotFound), 404, "lease_not_found", false, ""},
		{"lease exists", fmt.Errorf("grant: %w: 5", store.ErrLeaseExists), 409, "lease_exists", false, ""},
		{"lease TTL too large", fmt.Errorf("grant: %w: 9000000001", store.ErrLeaseTTLTooLarge), 400, "invalid_argument", false, ""},
		{"a wrong password", store.TypedError(&pgconn.PgError{Code: "28P01", Message: "password authentication failed"}, 0), 500, "internal", false, "ERROR"},
		{"a bug", errors.New("scan: cannot scan NULL"), 500, "internal", false, "ERROR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logged := &logs.Buffer{}
			s := &Server{log: slog.New(slog.NewTextHandler(logged, nil))}
			s.db = &dbHealth{log: s.log}
			rec := httptest.NewRecorder()
			req := httptest.NewRequestWithContext(t.Context(), "GET", "/v1/kv/x", nil)
			s.writeError(rec, req, tc.err)
			s.db.observe(req, time.Now(), tc.err)
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), `"code":"`+tc.code+`"`) {
				t.Errorf("writeError(%v): %d %s, want %d %s", tc.err, rec.Code, rec.Body, tc.status, tc.code)
			}
			if got := rec.Header().Get("Retry-After") != ""; got != tc.retryAfter {
				t.Errorf("writeError(%v): Retry-After %q, want one: %v", tc.err, rec.Header().Get("Retry-After"), tc.retryAfter)
			}
			lines := logged.Count("level=")
			switch {
			case tc.logged == "" && lines != 0:
				t.Errorf("writeError(%v) logged:\n%s want nothing", tc.err, logged)
			case tc.logged != "" && (lines != 1 || logged.Count("level="+tc.logged) != 1):
				t.Errorf("writeError(%v) logged:\n%s want one %s line", tc.err, logged, tc.logged)
			}
		})
	}
}

// TestClientGone: a request whose client went away gets nothing written and
// is no outage, even if its connection attempt was what it interrupted.
func TestClientGone(t *testing.T) {
	t.Parallel()
	logged := &logs.Buffer{}
	s := &Server{log: slog.New(slog.NewTextHandler(logged, nil))}
	s.db = &dbHealth{log: s.log}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	req := httptest.NewRequestWithContext(ctx, "GET", "/v1/kv/x", nil)
	for _, err := range []error{
		fmt.Errorf("range: %w", context.Canceled),
		store.TypedError(fmt.Errorf("connect: %w", context.Canceled), 0),
	} {
		rec := httptest.NewRecorder()
		s.writeError(rec, req, err)
		s.db.observe(req, time.Now(), err)
		if rec.Body.Len() != 0 {
			t.Errorf("writeError(%v) for a client that went away wrote %d %s", err, rec.Code, rec.Body)
		}
	}
	if logged.String() != "" {
		t.Errorf("logged for a client that went away:\n%s", logged)
	}
}

// TestDBHealth: one WARN when an outage begins, one INFO when it ends, and
// requests that straddle either edge change nothing.
func TestDBHealth(t *testing.T) {
	t.Parallel()
	logged := &logs.Buffer{}
	d := &dbHealth{log: slog.New(slog.NewTextHandler(logged, nil))}
	req := httptest.NewRequestWithContext(t.Context(), "PUT", "/v1/kv/x", nil)
	down := store.TypedError(fmt.Errorf("put: %w", &pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}), 0)
	other := errors.New("some bug")
	tick := time.Now()
	at := func() time.Time { tick = tick.Add(time.Millisecond); return tick } // request starts, in order
	want := func(step string, warn, info int) {
		t.Helper()
		if w, i := logged.Count("level=WARN"), logged.Count("level=INFO"); w != warn || i != info {
			t.Fatalf("after %s: %d WARN and %d INFO lines, want %d and %d:\n%s", step, w, i, warn, info, logged)
		}
	}

	d.observe(req, at(), nil)
	d.observe(req, at(), other)
	want("successes and a bug while PostgreSQL answers", 0, 0)

	beforeOutage := at()
	d.observe(req, at(), down)
	want("the first refused request", 1, 0)
	for range 5 {
		d.observe(req, at(), down)
	}
	d.observe(req, at(), other)
	want("more refused requests", 1, 0)
	d.observe(req, beforeOutage, nil)
	want("a success of a request that started before the outage", 1, 0)

	duringOutage := at()
	d.observe(req, at(), nil)
	want("a success of a request that started during the outage", 1, 1)
	if logged.Count("refused_requests=6") != 1 {
		t.Errorf("the INFO line does not count the 6 refused requests:\n%s", logged)
	}
	d.observe(req, duringOutage, down)
	want("a failure of a request that started during the outage, after it ended", 1, 1)
	d.observe(req, at(), nil)
	want("another success", 1, 1)

	d.observe(req, at(), down)
	want("a second outage", 2, 1)
}

// TestWatchWhileShuttingDown: a watch that waits for a hub that is not ready
// yet when the server shuts down is a 503, not a bug.
func TestWatchWhileShuttingDown(t *testing.T) {
	t.Parallel()
	s, logged := newOfflineServer(t)
	stopping := make(chan struct{})
	close(stopping)
	s.cfg.Stopping = stopping
	a := do(t, s, "GET", "/v1/watch?prefix=/a", "")
	if a.status != http.StatusServiceUnavailable || a.err.Code != "unavailable" || a.header.Get("Retry-After") == "" {
		t.Errorf("watch while shutting down: %d %s, want 503 unavailable with a Retry-After", a.status, a.body)
	}
	if n := logged.Count("level=ERROR"); n != 0 {
		t.Errorf("logged an ERROR:\n%s", logged)
	}
}

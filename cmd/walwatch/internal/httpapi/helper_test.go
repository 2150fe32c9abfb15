package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgtest"
)

// newOfflineServer returns a server whose PostgreSQL refuses connections
// (nothing listens on its port), so its hub never gets ready, and its log at
// level INFO, as the control plane logged.
func newOfflineServer(t *testing.T) (*Server, *logs.Buffer) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pgtest.RefusedURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	client, err := walwatch.New(pool, walwatch.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() }) // before the pool's: cleanups run last first
	logged := &logs.Buffer{}
	log := slog.New(slog.NewTextHandler(logged, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return New(Config{Client: client, Logger: log}), logged
}

// answer is a response as a test sees it.
type answer struct {
	status int
	header http.Header
	err    apiError
	body   string
}

// requestTimeout bounds a request served by do.
const requestTimeout = 2 * time.Second

// do serves one request; header comes in name, value pairs (a name may
// come twice).
func do(t *testing.T, h http.Handler, method, target, body string, header ...string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	// A watch that got past its parameters would wait for the hub, which
	// never runs here: the deadline ends it.
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, method, target, rd)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	a := answer{status: rec.Code, header: rec.Header(), body: rec.Body.String()}
	if rec.Code >= 400 {
		if err := json.Unmarshal(rec.Body.Bytes(), &a.err); err != nil {
			t.Errorf("%s %s: %d %q is not a JSON error: %v", method, target, rec.Code, rec.Body, err)
		}
	}
	return a
}

// Package httpapi is the control plane's HTTP API: routes and generic keys
// as JSON, watches as Server-Sent Events, compaction, status, metrics and
// health. One hub serves every watcher, so any number of data planes cost
// one replication slot.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// Config configures the API.
type Config struct {
	// Client serves every request: reads at a settled revision, writes,
	// watches. The server does not close it.
	Client   *walwatch.Client
	Slot     string               // the hub's slot, for /v1/status
	Tokens   *Tokens              // nil: no authentication
	Registry *prometheus.Registry // served at /metrics
	Logger   *slog.Logger
	// Stopping is closed when the server begins to shut down: watch streams
	// end then, so a graceful shutdown does not wait for them for ever.
	Stopping <-chan struct{}
}

// Server serves the API.
type Server struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	db      *dbHealth // what requests have learnt of PostgreSQL, for the log
}

// retryAfter is the Retry-After of every 503, in seconds. The outages a
// control plane sees are mostly PostgreSQL restarting or failing over, over
// in a second or a few, and a request refused meanwhile costs it no more
// than a refused connection attempt: clients may come back soon. A second is
// the least the header can say.
const retryAfter = 1

// New returns the API's handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), metrics: newMetrics(cfg.Registry), db: &dbHealth{log: cfg.Logger}}
	read, write := s.auth(false), s.auth(true)
	s.handle("PUT /routes/{name}", write, s.putRoute)
	s.handle("GET /routes/{name}", read, s.getRoute)
	s.handle("GET /routes/{$}", read, s.listRoutes)
	s.handle("DELETE /routes/{name}", write, s.deleteRoute)
	s.handle("PUT /v1/kv/{key...}", write, s.putKey)
	s.handle("GET /v1/kv/{key...}", read, s.getKey)
	s.handle("DELETE /v1/kv/{key...}", write, s.deleteKey)
	s.handleStream("GET /v1/watch", read, s.watch)
	s.handle("POST /v1/compact", write, s.compact)
	s.handle("POST /v1/leases", write, s.grantLease)
	s.handle("GET /v1/leases", read, s.listLeases)
	s.handle("GET /v1/leases/{id}", read, s.getLease)
	s.handle("POST /v1/leases/{id}/keepalive", write, s.keepAliveLease)
	s.handle("DELETE /v1/leases/{id}", write, s.revokeLease)
	s.handle("GET /v1/status", read, s.status)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", s.ready)
	s.mux.HandleFunc("/", s.unknown)
	return s
}

// unknown answers requests no endpoint takes, in the API's error shape: 405
// with Allow when the path exists for other methods, 404 when it does not.
func (s *Server) unknown(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, apiError{Error: r.Method + " is not allowed on " + r.URL.Path, Code: "method_not_allowed"})
		return
	}
	writeJSON(w, http.StatusNotFound, apiError{Error: "no such endpoint: " + r.URL.Path, Code: "not_found"})
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// handle registers h, an endpoint whose success means PostgreSQL answered,
// behind the auth check.
func (s *Server) handle(pattern string, auth func(http.Handler) http.Handler, h func(http.ResponseWriter, *http.Request) error) {
	s.register(pattern, auth, h, true)
}

// handleStream registers a streaming endpoint: the hub may serve it from
// memory, so its success says nothing of PostgreSQL.
func (s *Server) handleStream(pattern string, auth func(http.Handler) http.Handler, h func(http.ResponseWriter, *http.Request) error) {
	s.register(pattern, auth, h, false)
}

// register registers h behind the auth check, counting requests by pattern
// and telling s.db what each learnt of PostgreSQL.
func (s *Server) register(pattern string, auth func(http.Handler) http.Handler, h func(http.ResponseWriter, *http.Request) error, usesDB bool) {
	s.mux.Handle(pattern, auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		err := h(rec, r)
		if err != nil {
			s.writeError(rec, r, err)
		}
		if err != nil || usesDB {
			s.db.observe(r, start, err)
		}
		s.metrics.observe(pattern, rec.status, time.Since(start))
	})))
}

// readyTimeout bounds /readyz's ping of PostgreSQL.
const readyTimeout = 2 * time.Second

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.cfg.Client.Hub().Ready():
	default:
		writeUnavailable(w, "watch hub is not ready")
		return
	}
	if !s.cfg.Client.Hub().Streaming() {
		writeUnavailable(w, "watch hub is reconnecting to its replication slot")
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if err := s.cfg.Client.Store().Pool().Ping(ctx); err != nil {
		s.db.observe(r, start, fmt.Errorf("ping: %w", store.TypedError(err, 0)))
		// The error names the server, user and database; /readyz needs no
		// token, so it stays in the log.
		writeUnavailable(w, "PostgreSQL is not answering")
		return
	}
	s.db.observe(r, start, nil)
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// writeUnavailable answers 503 "unavailable" with a Retry-After.
func writeUnavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	writeJSON(w, http.StatusServiceUnavailable, apiError{Error: msg, Code: "unavailable"})
}

// apiError is every error response's body.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// CompactRevision is set for code "compacted".
	CompactRevision int64 `json:"compact_revision,omitempty"`
}

// Errors the handlers return for requests that are wrong.
var (
	errBadRequest = errors.New("bad request")
	errNotFound   = errors.New("not found")
	errNotReady   = errors.New("not ready")
)

// writeError maps an error to its status and code: the one place that does.
// A 503 tells the client to retry (Retry-After); a 500 is a bug, logged.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		status = http.StatusInternalServerError
		body   = apiError{Error: err.Error(), Code: "internal"}
		ce     *store.CompactedError
		tooBig *http.MaxBytesError
	)
	switch {
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return // the client went away
	case errors.Is(err, store.ErrUnavailable):
		// Logged once per outage by s.db; the details are for the log, not
		// for clients.
		status, body.Code, body.Error = http.StatusServiceUnavailable, "unavailable", "PostgreSQL is unavailable; retry later"
		s.log.Debug("request refused: PostgreSQL is unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
	case errors.Is(err, store.ErrAborted):
		// Rare (Txn retries deadlocks itself), and worth seeing if not.
		status, body.Code = http.StatusServiceUnavailable, "unavailable"
		body.Error = "PostgreSQL rolled the request back (a serialization failure or a deadlock): nothing was written; retry it"
		s.log.Warn("PostgreSQL aborted a request's transaction; the client may retry", "method", r.Method, "path", r.URL.Path, "err", err)
	case errors.As(err, &ce):
		status, body.Code, body.CompactRevision = http.StatusGone, "compacted", ce.CompactRevision
	case errors.Is(err, store.ErrFutureRevision):
		status, body.Code = http.StatusBadRequest, "future_revision"
	case errors.As(err, &tooBig), errors.Is(err, store.ErrValueTooLarge), errors.Is(err, store.ErrKeyTooLarge):
		status, body.Code = http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, errNotFound):
		status, body.Code = http.StatusNotFound, "not_found"
	case errors.Is(err, store.ErrLeaseNotFound):
		status, body.Code = http.StatusNotFound, "lease_not_found"
	case errors.Is(err, store.ErrLeaseExists):
		status, body.Code = http.StatusConflict, "lease_exists"
	case errors.Is(err, errNotReady), errors.Is(err, walwatch.ErrNotSettled),
		errors.Is(err, replication.ErrHubStopped), errors.Is(err, walwatch.ErrClosed),
		// A deadline of ours ran out (the client's context has none): the
		// database or the hub did not answer in time, waiting for a pooled
		// connection for instance.
		errors.Is(err, context.DeadlineExceeded):
		status, body.Code = http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, errBadRequest), errors.Is(err, routes.ErrInvalid),
		errors.Is(err, store.ErrEmptyKey), errors.Is(err, store.ErrInvalidRevision),
		errors.Is(err, store.ErrInvalidLimit), errors.Is(err, store.ErrDuplicateKey), errors.Is(err, store.ErrNegativeAge),
		errors.Is(err, store.ErrLeaseTTLTooLarge):
		status, body.Code = http.StatusBadRequest, "invalid_argument"
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		body.Error = "internal error"
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// Flush lets watch streams through the recorder.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

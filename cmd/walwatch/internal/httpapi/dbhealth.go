package httpapi

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walwatch/walwatch/store"
)

// dbHealth turns what requests learn of PostgreSQL into two log lines per
// outage: a WARN when the first request finds it unavailable and an INFO when
// a request gets through again, however many requests are refused in between
// (each is answered 503 and logged at DEBUG only).
//
// Requests overlap the edges of an outage: one that started before it may
// still succeed after another has found the database gone, and one that
// started during it may fail after another got through. So an outage is
// dated by the start of its first refused request and ends with the first
// success of a request that started later; a new one begins only with a
// request that started after that success's did.
type dbHealth struct {
	log *slog.Logger

	down atomic.Bool // is an outage on? Read without mu by every request.

	mu      sync.Mutex // protects the fields below and orders the log lines
	since   time.Time  // the start of the outage's first refused request
	upSince time.Time  // the start of the request that ended the last outage
	refused int        // requests refused during this outage
}

// observe records what a request that started at start learnt: err nil
// means PostgreSQL answered it, an error marked store.ErrUnavailable that it
// could not. Other errors say nothing of PostgreSQL.
func (d *dbHealth) observe(r *http.Request, start time.Time, err error) {
	switch {
	case err == nil:
		if d.down.Load() {
			d.available(start)
		}
	case errors.Is(err, store.ErrUnavailable) && r.Context().Err() == nil:
		d.unavailable(r, start, err)
	}
}

func (d *dbHealth) unavailable(r *http.Request, start time.Time, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.down.Load():
		d.refused++
	case !start.After(d.upSince):
		// It started during the last outage: old news.
	default:
		d.down.Store(true)
		d.since, d.refused = start, 1
		d.log.Warn("PostgreSQL is unavailable; requests that need it get 503 until one gets through",
			"method", r.Method, "path", r.URL.Path, "err", err)
	}
}

func (d *dbHealth) available(start time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down.Load() || !start.After(d.since) {
		return
	}
	d.down.Store(false)
	d.upSince = start
	d.log.Info("PostgreSQL is available again",
		"unavailable_for", time.Since(d.since).Round(time.Millisecond), "refused_requests", d.refused)
}

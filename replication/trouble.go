package replication

import (
	"log/slog"
	"sync"
	"time"
)

// trouble logs a failure that repeats while PostgreSQL is away once per
// spell: the first failure at WARN, the retries at DEBUG, and the first
// success after them at INFO. So an outage costs two lines for each thing
// the hub retries, however long it lasts and however often it retries.
type trouble struct {
	log  *slog.Logger
	what string // the WARN's message: what failed

	mu      sync.Mutex // the hub's goroutines share some troubles
	since   time.Time  // the spell's first failure; zero when none is on
	retries int
}

func newTrouble(log *slog.Logger, what string) *trouble { return &trouble{log: log, what: what} }

// failed records a failure; attrs say what was being done.
func (t *trouble) failed(err error, attrs ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	attrs = append(attrs, "err", err)
	if t.since.IsZero() {
		t.since = time.Now()
		t.log.Warn(t.what+"; retrying, and logging again when it works", attrs...)
		return
	}
	t.retries++
	t.log.Debug(t.what, attrs...)
}

// ok records a success, ending a spell of failures.
func (t *trouble) ok() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.since.IsZero() {
		return
	}
	t.log.Info(t.what+": works again", "after", time.Since(t.since).Round(time.Millisecond), "retries", t.retries)
	t.since, t.retries = time.Time{}, 0
}

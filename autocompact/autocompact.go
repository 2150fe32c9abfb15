// Package autocompact compacts a database's history on etcd's schedule
// (etcd's --auto-compaction-mode and --auto-compaction-retention): of every
// process that serves the database (each cp), one at a time (package duty).
package autocompact

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/duty"
	"github.com/walwatch/walwatch/store"
)

// Mode says how retention is measured, as etcd's --auto-compaction-mode.
type Mode string

const (
	// Periodic keeps the history written within the retention period.
	Periodic Mode = "periodic"
	// Revision keeps the newest Revisions revisions.
	Revision Mode = "revision"
)

// etcd's schedule: a periodic compactor compacts every retention period,
// at most every hour; a revision compactor every five minutes.
const (
	periodicIntervalMax = time.Hour
	revisionInterval    = 5 * time.Minute
)

// dutyLock is the advisory lock key of the duty ("wwcompac" in ASCII).
const dutyLock int64 = 0x7777636f6d706163

// Policy is what a compaction keeps.
type Policy struct {
	Mode      Mode
	Age       time.Duration // Periodic: the history younger than this
	Revisions int64         // Revision: this many revisions below the current one
}

// Off reports whether p keeps everything: retention 0, as etcd's default.
func (p Policy) Off() bool {
	return p.Age <= 0 && p.Revisions <= 0
}

// Interval is how often a compaction runs under p, as in etcd.
func (p Policy) Interval() time.Duration {
	if p.Mode == Revision {
		return revisionInterval
	}
	return min(p.Age, periodicIntervalMax)
}

func (p Policy) String() string {
	if p.Off() {
		return "off"
	}
	if p.Mode == Revision {
		return fmt.Sprintf("keep %d revisions", p.Revisions)
	}
	return "keep " + p.Age.String()
}

// ErrBadPolicy matches every error of ParsePolicy.
var ErrBadPolicy = errors.New("bad auto-compaction policy")

// ParsePolicy reads etcd's two flags: mode "periodic" or "revision", and a
// retention that is, for periodic, a duration ("1h", "30m") or a number of
// hours, and for revision a number of revisions. "0" turns compaction off.
func ParsePolicy(mode, retention string) (Policy, error) {
	retention = strings.TrimSpace(retention)
	switch Mode(mode) {
	case Periodic:
		if h, err := strconv.ParseInt(retention, 10, 64); err == nil {
			if h < 0 || h > int64(time.Duration(1<<63-1)/time.Hour) {
				return Policy{}, fmt.Errorf("%w: retention %q: out of range", ErrBadPolicy, retention)
			}
			return Policy{Mode: Periodic, Age: time.Duration(h) * time.Hour}, nil
		}
		d, err := time.ParseDuration(retention)
		if err != nil || d < 0 {
			return Policy{}, fmt.Errorf("%w: retention %q: want a duration (1h, 30m) or a number of hours", ErrBadPolicy, retention)
		}
		return Policy{Mode: Periodic, Age: d}, nil
	case Revision:
		n, err := strconv.ParseInt(retention, 10, 64)
		if err != nil || n < 0 {
			return Policy{}, fmt.Errorf("%w: retention %q: want a number of revisions", ErrBadPolicy, retention)
		}
		return Policy{Mode: Revision, Revisions: n}, nil
	}
	return Policy{}, fmt.Errorf("%w: mode %q: want periodic or revision", ErrBadPolicy, mode)
}

// Config configures Run.
type Config struct {
	Pool   *pgxpool.Pool
	Store  *store.Store
	Policy Policy
	// Interval overrides Policy.Interval (tests).
	Interval time.Duration
	Retry    time.Duration // taking the duty; 0: duty.DefaultRetry
	Logger   *slog.Logger  // nil discards
	Metrics  *Metrics      // nil: none
}

// Run compacts under cfg.Policy while it holds the duty, every interval,
// until ctx ends; it returns nil then, at once when the policy is off. A
// compaction that fails is logged, counted and tried again at the next
// interval.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Policy.Off() {
		return nil
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	interval := cfg.Interval
	if interval <= 0 {
		interval = cfg.Policy.Interval()
	}
	d := duty.Config{Pool: cfg.Pool, Lock: dutyLock, Name: "auto-compaction", Retry: cfg.Retry, Logger: cfg.Logger}
	return duty.Run(ctx, d, func(ctx context.Context, conn *pgx.Conn) error {
		cfg.Logger.Info("holding the auto-compaction duty", "policy", cfg.Policy.String(), "interval", interval)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		var last int64 // the compact revision the last run left
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
			// The duty lives with its connection: one gone ends it here.
			if err := conn.Ping(ctx); err != nil {
				return fmt.Errorf("auto-compaction duty's connection: %w", err)
			}
			compactOnce(ctx, cfg, &last)
		}
	})
}

// compactOnce runs one compaction and logs and counts what it did; last
// is the compact revision the run before left.
func compactOnce(ctx context.Context, cfg Config, last *int64) {
	start := time.Now()
	res, err := compact(ctx, cfg.Store, cfg.Policy)
	switch {
	case err == nil && res.CompactRevision == *last && res.Removed == 0,
		errors.Is(err, store.ErrCompacted):
		// Compacted already at or past it (by hand, or another policy).
		cfg.Logger.Debug("auto-compaction: nothing to do", "err", err)
		cfg.Metrics.done("nothing", res)
	case err != nil:
		if ctx.Err() != nil {
			return
		}
		cfg.Logger.Warn("auto-compaction failed; trying again at the next interval", "err", err)
		cfg.Metrics.done("error", res)
	default:
		*last = res.CompactRevision
		cfg.Logger.Info("auto-compaction", "compact_revision", res.CompactRevision, "removed", res.Removed,
			"took", time.Since(start).Round(time.Millisecond))
		cfg.Metrics.done("ok", res)
	}
}

func compact(ctx context.Context, s *store.Store, p Policy) (store.CompactResponse, error) {
	if p.Mode == Periodic {
		return s.CompactOlderThan(ctx, p.Age)
	}
	cur, compacted, err := s.Revision(ctx)
	if err != nil {
		return store.CompactResponse{}, err
	}
	rev := cur - p.Revisions
	if rev <= compacted {
		return store.CompactResponse{}, &store.CompactedError{Revision: rev, CompactRevision: compacted}
	}
	return s.Compact(ctx, rev)
}

// Metrics are the duty's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	runs     *prometheus.CounterVec
	removed  prometheus.Counter
	revision prometheus.Gauge
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walwatch_autocompact_runs_total",
			Help: "Auto-compactions this process ran, by result: ok, nothing (compacted there already), error.",
		}, []string{"result"}),
		removed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walwatch_autocompact_removed_rows_total",
			Help: "Rows of the revision table auto-compaction removed.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walwatch_autocompact_revision",
			Help: "The revision the last auto-compaction of this process compacted at.",
		}),
	}
	reg.MustRegister(m.runs, m.removed, m.revision)
	for _, r := range []string{"ok", "nothing", "error"} {
		m.runs.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) done(result string, res store.CompactResponse) {
	if m == nil {
		return
	}
	m.runs.WithLabelValues(result).Inc()
	if result == "ok" {
		m.removed.Add(float64(res.Removed))
		m.revision.Set(float64(res.CompactRevision))
	}
}

package replication

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the hub's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	transactions   prometheus.Counter
	events         prometheus.Counter
	catchUpEvents  prometheus.Counter
	watchDelay     prometheus.Histogram
	holesSeen      prometheus.Counter
	holesFilled    prometheus.Counter
	holderAge      prometheus.Gauge
	buffered       prometheus.Gauge
	bufferedBytes  prometheus.Gauge
	spills         prometheus.Counter
	windowBytes    prometheus.Gauge
	watcherCount   prometheus.Gauge
	victims        prometheus.Counter
	reconnects     prometheus.Counter
	slotsRecreated prometheus.Counter
	compactedSkips prometheus.Counter
	failovers      *prometheus.CounterVec
}

// NewMetrics creates the hub's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "walwatch", "hub"
	m := &Metrics{
		transactions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "transactions_total",
			Help: "Committed transactions received from the replication stream."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "events_total",
			Help: "Events released to watchers in revision order."}),
		catchUpEvents: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "catch_up_events_total",
			Help: "Events sent to watchers that were behind, from the window or the table."}),
		watchDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "watch_delay_seconds",
			Help:    "Time from a revision's commit to its release to watchers.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		holesSeen: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "holes_seen_total",
			Help: "Times a revision arrived before a lower one (commit order is not revision order)."}),
		holesFilled: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "holes_filled_total",
			Help: "Revisions no transaction committed, settled with a filler row."}),
		holderAge: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "revision_holder_age_seconds",
			Help: "Age of the transaction holding a revision every watcher waits for; 0 if none."}),
		buffered: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "reorder_buffer_revisions",
			Help: "Committed revisions waiting for a lower one."}),
		bufferedBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "reorder_buffer_bytes",
			Help: "Bytes of keys and values the reorder buffer holds (bounded by --buffer-bytes)."}),
		spills: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "spilled_revisions_total",
			Help: "Revisions whose values the reorder buffer dropped to stay within its bytes; their watchers read them from the table."}),
		windowBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "window_bytes",
			Help: "Bytes of keys and values the recent-event window holds (bounded by --window-bytes)."}),
		watcherCount: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "watchers",
			Help: "Open watchers."}),
		victims: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "slow_watchers_total",
			Help: "Times a watcher's channel was full and it left the live group."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconnects_total",
			Help: "Replication sessions that ended and were reconnected."}),
		slotsRecreated: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "slots_recreated_total",
			Help: "Replication slots found gone or invalidated and created again."}),
		compactedSkips: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "compacted_skips_total",
			Help: "Times a slot made again found revisions the hub had not released compacted away; the watchers that needed them were told so."}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "failovers_total",
			Help: "Reconnects that found another server (a promoted standby); history_changed=true when it lacked revisions already delivered, and every watcher was told to re-list."},
			[]string{"history_changed"}),
	}
	reg.MustRegister(m.transactions, m.events, m.catchUpEvents, m.watchDelay, m.holesSeen, m.holesFilled,
		m.holderAge, m.buffered, m.bufferedBytes, m.spills, m.windowBytes, m.watcherCount, m.victims, m.reconnects, m.slotsRecreated,
		m.compactedSkips, m.failovers)
	return m
}

func (m *Metrics) transaction() {
	if m != nil {
		m.transactions.Inc()
	}
}

func (m *Metrics) released(c *committed) {
	if m == nil {
		return
	}
	for i := range c.rows {
		if !c.rows[i].isFiller() {
			m.events.Inc()
		}
	}
	if !c.at.IsZero() {
		m.watchDelay.Observe(time.Since(c.at).Seconds())
	}
}

func (m *Metrics) caughtUp(n int) {
	if m != nil {
		m.catchUpEvents.Add(float64(n))
	}
}

func (m *Metrics) holeSeen() {
	if m != nil {
		m.holesSeen.Inc()
	}
}

func (m *Metrics) filled(n int64) {
	if m != nil {
		m.holesFilled.Add(float64(n))
	}
}

func (m *Metrics) holder(age time.Duration) {
	if m != nil {
		m.holderAge.Set(age.Seconds())
	}
}

func (m *Metrics) buffer(revisions, bytes int) {
	if m != nil {
		m.buffered.Set(float64(revisions))
		m.bufferedBytes.Set(float64(bytes))
	}
}

func (m *Metrics) spilled() {
	if m != nil {
		m.spills.Inc()
	}
}

func (m *Metrics) windowSize(bytes int) {
	if m != nil {
		m.windowBytes.Set(float64(bytes))
	}
}

func (m *Metrics) watchers(n int) {
	if m != nil {
		m.watcherCount.Set(float64(n))
	}
}

func (m *Metrics) victim() {
	if m != nil {
		m.victims.Inc()
	}
}

func (m *Metrics) reconnect() {
	if m != nil {
		m.reconnects.Inc()
	}
}

func (m *Metrics) slotRecreated() {
	if m != nil {
		m.slotsRecreated.Inc()
	}
}

func (m *Metrics) compactedSkip() {
	if m != nil {
		m.compactedSkips.Inc()
	}
}

func (m *Metrics) failover(historyChanged bool) {
	if m != nil {
		m.failovers.WithLabelValues(strconv.FormatBool(historyChanged)).Inc()
	}
}

// Package dataplane is the data plane: a reverse proxy whose routing table
// follows a watch on /routes/, fed by a control plane's event stream or by a
// hub of its own. While its source is down it keeps serving the routes it
// has; when the source returns it resumes from its last revision.
package dataplane

import (
	"context"
	"log/slog"
	"net"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/wire"
)

// Source fills a Proxy's routing table and keeps it current until ctx ends.
type Source interface {
	Run(ctx context.Context, p *Proxy) error
}

// Upstream timeouts of a data plane that sets none: those of the gateways
// people know, so an upstream behaves behind walwatch as behind them.
const (
	// DefaultConnectTimeout is Envoy's connect_timeout: an upstream that
	// works accepts a connection in milliseconds.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultResponseHeaderTimeout is nginx's proxy_read_timeout for the
	// first byte of the answer: room for a slow report, but a hung
	// upstream does not hold its clients for ever.
	DefaultResponseHeaderTimeout = 60 * time.Second
	// DefaultIdleTimeout is nginx's proxy_read_timeout between two reads
	// of the body.
	DefaultIdleTimeout = 60 * time.Second
)

// Config is how a Proxy reaches upstreams.
type Config struct {
	// Timeouts apply to the routes that set none of their own, field by
	// field; a zero field takes its default.
	Timeouts routes.Timeouts
}

// Proxy routes requests to upstreams by the current table.
type Proxy struct {
	log      *slog.Logger
	metrics  *metrics
	timeouts routes.Timeouts // the defaults, all set

	mu       sync.Mutex // serialises changes; readers use table
	table    atomic.Pointer[routes.Table]
	revision atomic.Int64 // the table is as of this revision
	loaded   atomic.Bool  // a first full load has happened

	// rp forwards every request: its target and timeouts come with the
	// request (see forward), so it keeps nothing per route or upstream,
	// and a table that changes leaves nothing behind but idle
	// connections, which its transport closes.
	rp *httputil.ReverseProxy
	// dial opens connections to upstreams (tests replace it before the
	// first request).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// New returns a proxy with no routes.
func New(log *slog.Logger, reg prometheus.Registerer, cfg Config) *Proxy {
	p := &Proxy{
		log:     log,
		metrics: newMetrics(reg),
		timeouts: cfg.Timeouts.Or(routes.Timeouts{
			Connect:        routes.Duration(DefaultConnectTimeout),
			ResponseHeader: routes.Duration(DefaultResponseHeaderTimeout),
			Idle:           routes.Duration(DefaultIdleTimeout),
		}),
		dial: (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
	}
	p.table.Store(routes.NewTable(nil))
	p.rp = p.newReverseProxy()
	return p
}

// Revision is the revision the routing table is at.
func (p *Proxy) Revision() int64 { return p.revision.Load() }

// Loaded reports whether the table has been filled at least once.
func (p *Proxy) Loaded() bool { return p.loaded.Load() }

// Table returns the current routing table.
func (p *Proxy) Table() *routes.Table { return p.table.Load() }

// Replace sets the whole table, as of rev (a full load).
func (p *Proxy) Replace(rev int64, kvs map[string][]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	byName := map[string]routes.Route{}
	for key, value := range kvs {
		name, ok := strings.CutPrefix(key, routes.Prefix)
		if !ok {
			continue
		}
		rt, err := routes.Parse(value)
		if err != nil {
			p.log.Warn("ignoring an invalid route", "key", key, "err", err)
			continue
		}
		byName[name] = rt
	}
	p.table.Store(routes.NewTable(byName))
	p.revision.Store(rev)
	p.loaded.Store(true)
	p.metrics.reloads.Inc()
	p.metrics.routes.Set(float64(len(byName)))
	p.log.Info("loaded all routes", "routes", len(byName), "revision", rev)
}

// Apply applies the events of one revision, unless the table already has it
// (a replay after a reconnect).
func (p *Proxy) Apply(evs []wire.Event) {
	if len(evs) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rev := evs[0].Revision
	if rev <= p.revision.Load() {
		return
	}
	t := p.table.Load()
	for _, ev := range evs {
		name, ok := strings.CutPrefix(ev.Key, routes.Prefix)
		if !ok {
			continue
		}
		attrs := []any{"name", name, "revision", ev.Revision}
		if ev.CommitTime != nil { // events caught up from the table have no commit time
			delay := time.Since(*ev.CommitTime)
			p.metrics.delay.Observe(delay.Seconds())
			attrs = append(attrs, "watch_delay_ms", float64(delay.Microseconds())/1000)
		}
		if ev.Type == "DELETE" {
			if old, ok := t.Get(name); ok {
				p.log.Info("del route", append(attrs, "uri", old.URI, "upstream", old.Upstream)...)
			}
			t = t.Without(name)
			continue
		}
		rt, err := routes.Parse([]byte(ev.Value))
		if err != nil {
			p.log.Warn("invalid route removed", append(attrs, "err", err)...)
			t = t.Without(name)
			continue
		}
		p.log.Info("add route", append(attrs, "uri", rt.URI, "upstream", rt.Upstream)...)
		t = t.With(name, rt)
	}
	p.table.Store(t)
	p.revision.Store(rev)
	p.metrics.changes.Inc()
	p.metrics.routes.Set(float64(t.Len()))
}

// Progress records that everything up to rev has been seen.
func (p *Proxy) Progress(rev int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if rev > p.revision.Load() {
		p.revision.Store(rev)
	}
}

type metrics struct {
	routes   prometheus.Gauge
	changes  prometheus.Counter
	reloads  prometheus.Counter
	delay    prometheus.Histogram
	requests *prometheus.CounterVec
	source   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "walwatch", "dp"
	m := &metrics{
		routes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "routes", Help: "Routes in the table."}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "route_changes_total",
			Help: "Revisions applied to the table from the watch."}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "full_reloads_total",
			Help: "Full loads of the table (at start, and after a compacted watch)."}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "watch_delay_seconds",
			Help: "Time from a route change's commit to its arrival here.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Proxied requests by outcome."}, []string{"outcome"}),
		source: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "source_connected",
			Help: "1 while the watch source is connected."}),
	}
	reg.MustRegister(m.routes, m.changes, m.reloads, m.delay, m.requests, m.source)
	return m
}

// SetConnected records whether the source is connected.
func (p *Proxy) SetConnected(up bool) {
	if up {
		p.metrics.source.Set(1)
	} else {
		p.metrics.source.Set(0)
	}
}

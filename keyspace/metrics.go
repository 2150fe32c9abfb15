package keyspace

import "github.com/prometheus/client_golang/prometheus"

// NewMetrics returns c's Prometheus metrics, read at scrape time.
func NewMetrics(c *Copy) []prometheus.Collector {
	const ns, sub = "walwatch", "keyspace_copy"
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "live",
			Help: "1 while the keyspace copy answers reads, 0 while it loads."}, func() float64 {
			if c.Live() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "keys",
			Help: "Keys the keyspace copy holds."}, func() float64 { return float64(c.Keys()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "history_bytes",
			Help: "Bytes of the keys and values of the replaced versions the keyspace copy remembers."}, func() float64 { return float64(c.HistoryBytes()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reads_total",
			Help: "Reads answered from the keyspace copy."}, func() float64 { return float64(c.Served()) }),
	}
}

package main

// Results is everything one benchmark run measured; results.json is this,
// with stable keys, and the report and chart are drawn from it.
type Results struct {
	Meta    Meta                      `json:"meta"`
	Systems map[string]*SystemResults `json:"systems"` // walwatch, walwatch_http, notify, etcd
	// Fanout: system -> watcher count ("1000", "10000") -> figures.
	Fanout            map[string]map[string]*Fanout `json:"fanout"`
	CatchupEventsPerS float64                       `json:"catchup_events_per_s"`
	WALBytesPerPut    map[string]float64            `json:"wal_bytes_per_put"`  // walwatch, notify
	CPUSPer10kPuts    map[string]float64            `json:"cpu_s_per_10k_puts"` // every process of each system
	MemoryPerWatcher  map[string]float64            `json:"memory_per_watcher_bytes,omitempty"`
	// Bytes the storage device wrote per put while only that system ran
	// (sectors written, /sys/dev/block), and what they were.
	DiskWriteBytesPerPut map[string]float64     `json:"disk_write_bytes_per_put"`
	DiskWrites           map[string]*DiskWrites `json:"disk_writes,omitempty"`
	Notes                []string               `json:"notes,omitempty"` // what the report should say beside the tables
}

// Meta says where and when the figures were taken.
type Meta struct {
	Date    string `json:"date"`    // RFC 3339
	Commit  string `json:"commit"`  // git describe --always --dirty
	Machine string `json:"machine"` // CPU model, cores, memory
	// Autogroup is Linux's kernel.sched_autogroup_enabled, "on" or "off"
	// (empty elsewhere). With it on the scheduler shares the CPUs between
	// sessions, and PostgreSQL makes every backend and WAL sender a session
	// of its own: each weighs as much as the benchmark's whole session.
	Autogroup string `json:"sched_autogroup,omitempty"`
	GoVersion string `json:"go_version"`
	Postgres  string `json:"postgres"` // server version
	Etcd      string `json:"etcd"`     // etcd server version
	Quick     bool   `json:"quick"`    // bench-quick: fewer and shorter rounds
	Rounds    int    `json:"rounds"`   // rounds per workload; figures are medians
}

// SystemResults are one system's figures, medians over the rounds. Map keys
// are client counts as strings ("1", "8", "32", "64") or percentiles ("p50",
// "p99", "p999").
type SystemResults struct {
	PutPerS          map[string]float64 `json:"put_per_s"`           // with one watcher on the written prefix
	PutPerSUnwatched map[string]float64 `json:"put_per_s_unwatched"` // no watcher
	GetPerS          map[string]float64 `json:"get_per_s"`
	// GetCPUUs is the CPU time a get at one client took, by whose:
	// "postgres" (every PostgreSQL process), "self" (this process: the
	// client, and walwatch's store) and "server" (etcd's, the cp, kine).
	GetCPUUs         map[string]float64 `json:"get_1_cpu_us,omitempty"`
	WatchRTTUs       map[string]float64 `json:"watch_rtt_us"`        // put -> event, idle
	WatchRTTLoadedUs map[string]float64 `json:"watch_rtt_loaded_us"` // put -> event while 32 other clients put
	// WatchRTTPairedUs is the idle round trip measured with the other
	// paired systems', their probes alternated in blocks (paired.go): walwatch,
	// notify, floor and etcd only.
	WatchRTTPairedUs map[string]float64 `json:"watch_rtt_paired_us,omitempty"`
	// The round trip in two stages: the put alone, until the writer has its
	// answer, and the delivery, from then to the event at the watcher
	// (percentiles of each sample's split, so p99s do not add up).
	WatchRTTPutUs            map[string]float64 `json:"watch_rtt_put_us,omitempty"`
	WatchRTTDeliveryUs       map[string]float64 `json:"watch_rtt_delivery_us,omitempty"`
	WatchRTTLoadedPutUs      map[string]float64 `json:"watch_rtt_loaded_put_us,omitempty"`
	WatchRTTLoadedDeliveryUs map[string]float64 `json:"watch_rtt_loaded_delivery_us,omitempty"`
	// NoopPerS is the rate of a request the system's server answers without
	// its storage (systems behind a server of their own only).
	NoopPerS map[string]float64 `json:"noop_per_s,omitempty"`
	// TxnPerS is the rate of Kubernetes' writes, a Txn each (etcd API
	// systems only, nothing watching).
	TxnPerS map[string]float64 `json:"txn_per_s,omitempty"`
	// TxnRTTLoadedUs is the round trip of Kubernetes' writes: a Txn ->
	// its event at a watcher of their prefix, while 32 other clients write
	// them (etcd API systems only): p50, p99, p999.
	TxnRTTLoadedUs map[string]float64 `json:"txn_rtt_loaded_us,omitempty"`
	// ListPageMs is the time of a page of Kubernetes' list (etcd API
	// systems): p50 and p99, in milliseconds.
	ListPageMs map[string]float64 `json:"list_page_ms,omitempty"`
	// ListPageWrittenMs is the same while another client updates the
	// listed keys as fast as it can (etcd API systems): p50 and p99, in
	// milliseconds, and its updates a second meanwhile (updates_per_s).
	ListPageWrittenMs map[string]float64 `json:"list_page_written_ms,omitempty"`
}

// Fanout is the time for one put to reach every watcher.
type Fanout struct {
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
}

// DiskWrites is what one system's puts wrote to storage, per put.
type DiskWrites struct {
	// What /proc/<pid>/io's write_bytes says, summed over every process of
	// the system, and by process: PostgreSQL's by role (backends,
	// walwriter, checkpointer, bgwriter, walsender, postmaster, which
	// holds its children that exited), "benchmark" (this process) and
	// "server" (etcd's, a cp, kine). It counts whole page-cache folios
	// dirtied, not bytes written (see writtenBytes in disk.go).
	ProcWriteBytes float64            `json:"proc_write_bytes"`
	ProcByProcess  map[string]float64 `json:"proc_by_process"`
	WALBytes       float64            `json:"wal_bytes"` // WAL records (PostgreSQL) or etcd's own count
	// WAL flushes per put (pg_stat_wal's wal_sync, etcd's WAL fsyncs), not
	// bytes: each writes at least the WAL page it ends in.
	WALSyncs float64 `json:"wal_syncs,omitempty"`
	// PostgreSQL's data pages written back (pg_stat_bgwriter).
	DataPageBytes float64 `json:"data_page_bytes,omitempty"`
	// PostgreSQL's WAL read back: full-page images, commit records, and
	// bytes by record type (records with their page images).
	FPIBytes    float64            `json:"fpi_bytes,omitempty"`
	Commits     float64            `json:"commits,omitempty"`
	WALByRecord map[string]float64 `json:"wal_by_record,omitempty"`
}

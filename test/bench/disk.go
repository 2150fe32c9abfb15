package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// diskPuts is how many puts the disk-writes figure divides by: issue 18's
// 10,000 values of 128 bytes, in quick runs too, since what a put costs the
// disk depends on how many pages the puts share.
const diskPuts = 10000

// writtenBytes is what /proc/<pid>/io's write_bytes says processes had
// written so far: the pages they dirtied in the page cache. Since Linux
// caches files in large folios (ext4 from 6.16), dirtying a few bytes of a
// clean folio counts the whole folio, up to 2 MiB, while writeback sends
// the device only the blocks that changed: a process that rewrites 8 KiB
// of a file it wrote earlier and fdatasyncs, as PostgreSQL does with each
// commit's WAL page, is counted for up to 256 times what reaches the disk.
// So the device's own count (deviceWritten) is the figure, and this the
// split by process, as the issue asked for it. PostgreSQL's is by role.
type writtenBytes struct {
	postgres    map[string]int64 // by pgRole
	self, extra int64
}

func (w writtenBytes) total() int64 {
	t := w.self + w.extra
	for _, v := range w.postgres {
		t += v
	}
	return t
}

// since is what was written from earlier to w.
func (w writtenBytes) since(earlier writtenBytes) writtenBytes {
	d := writtenBytes{postgres: map[string]int64{}, self: w.self - earlier.self, extra: w.extra - earlier.extra}
	for role, v := range w.postgres {
		d.postgres[role] = v - earlier.postgres[role]
	}
	return d
}

// written reads the bytes written so far by PostgreSQL, this process and
// extra. Linux adds a child's I/O to its parent's when the parent reaps it,
// so the postmaster's count holds its exited children's and the sum over
// PostgreSQL's processes never loses what one wrote before it exited (that
// part moves from its role to the postmaster's).
func (m *procMeter) written(extra []int) (writtenBytes, error) {
	w := writtenBytes{postgres: map[string]int64{}}
	tree, err := m.postgres()
	if err != nil {
		return w, err
	}
	for pid := range tree {
		n, err := readWriteBytes(strconv.Itoa(pid))
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			// Exited since the listing (ESRCH while it is a zombie): the
			// postmaster has it now, or will once it reaps it.
			continue
		}
		if err != nil {
			return w, err
		}
		w.postgres[pgRole(pid, pid == m.postmaster)] += n
	}
	if w.self, err = readWriteBytes("self"); err != nil {
		return w, err
	}
	for _, pid := range extra {
		n, err := readWriteBytes(strconv.Itoa(pid))
		if err != nil {
			return w, err
		}
		w.extra += n
	}
	return w, nil
}

// pgRoles are PostgreSQL's processes as the disk figure splits them. A
// backend writes the WAL of the transactions it commits (the WAL writer
// only what asynchronous commits leave) and evicts dirty pages when shared
// buffers run short; the checkpointer and the background writer write data
// pages back.
var pgRoles = []string{"backends", "walwriter", "checkpointer", "bgwriter", "walsender", "postmaster"}

// pgRole names a PostgreSQL process by the title it gives itself.
func pgRole(pid int, postmaster bool) string {
	if postmaster {
		return "postmaster"
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	title := string(b)
	for _, r := range []struct{ title, role string }{
		{"checkpointer", "checkpointer"}, {"walwriter", "walwriter"}, {"background writer", "bgwriter"}, {"walsender", "walsender"},
	} {
		if strings.Contains(title, r.title) {
			return r.role
		}
	}
	return "backends"
}

// readWriteBytes is write_bytes from /proc/<pid>/io ("self" for this
// process). Reading another user's needs root or the same user: the
// benchmark runs as either, and PostgreSQL as its own user only as root.
func readWriteBytes(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/io")
	if err != nil {
		return 0, fmt.Errorf("read I/O counters of process %s: %w", pid, err)
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte("write_bytes:")); ok {
			return strconv.ParseInt(strings.TrimSpace(string(rest)), 10, 64)
		}
	}
	return 0, fmt.Errorf("process %s: no write_bytes in its I/O counters", pid)
}

// ownStorage is a system that keeps its data itself, not in PostgreSQL
// (etcd): PostgreSQL's writes are not its, and it says what its WAL took
// (bytes and flushes so far) and where its data is.
type ownStorage interface {
	walWritten(ctx context.Context) (bytes, syncs float64, err error)
	dataDir() string
}

func (s *etcdSystem) dataDir() string { return s.dir }

// deviceWritten is how many bytes the block device holding dir has
// written since it started (sectors written, from /sys/dev/block), after
// a sync, so that what processes have only written to the page cache is
// counted too. It counts whatever else writes to that device meanwhile:
// the benchmark measures one system at a time.
func deviceWritten(dir string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("find the device of %s: %w", dir, err)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	unix.Sync()
	b, err := os.ReadFile("/sys/dev/block/" + dev + "/stat")
	if err != nil {
		return 0, fmt.Errorf("%s is on no block device whose writes can be read (device %s): %w", dir, dev, err)
	}
	// Field 7 is sectors written, in 512-byte units whatever the device's
	// own sector size (Documentation/block/stat.rst).
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0, fmt.Errorf("device %s: short stat line", dev)
	}
	sectors, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("device %s: parse sectors written: %w", dev, err)
	}
	return sectors * 512, nil
}

// walWritten is etcd's own count of the bytes it has written to its WAL
// and of its WAL fsyncs.
func (s *etcdSystem) walWritten(ctx context.Context) (bytes, syncs float64, err error) {
	b, err := getBody(ctx, http.DefaultClient, s.url+"/metrics")
	if err != nil {
		return 0, 0, fmt.Errorf("etcd metrics: %w", err)
	}
	if bytes, err = metricValue(b, "etcd_disk_wal_write_bytes_total"); err != nil {
		return 0, 0, err
	}
	if syncs, err = metricValue(b, "etcd_disk_wal_fsync_duration_seconds_count"); err != nil {
		return 0, 0, err
	}
	return bytes, syncs, nil
}

// diskFigures are one system's writes per put.
type diskFigures struct {
	device  float64      // bytes the device wrote, per put
	written writtenBytes // /proc's count, all of it, not yet divided
	wal     float64      // WAL bytes per put: PostgreSQL's records, or etcd's count
	// PostgreSQL's data pages written back (by the checkpointer, the
	// background writer and backends), bytes per put.
	dataPages float64
	walSyncs  float64 // WAL flushes per put
	// PostgreSQL's WAL read back (pg_walinspect), per put: the part that
	// is full-page images, commit records, and bytes by record type.
	fpi, commits float64
	records      map[string]float64
}

// diskPerPut measures what reaches storage while cpuClients clients put
// diskPuts values, watcher attached: once no autovacuum runs, a checkpoint
// first, so that pages earlier workloads dirtied are not counted, and one
// at the end, so that the pages these puts dirtied are; then until the
// counters stop moving (etcd commits its bbolt file every 100 ms).
func (b *bench) diskPerPut(ctx context.Context, sys system, t *tap) (diskFigures, error) {
	var f diskFigures
	if _, err := b.env.quiesce(ctx); err != nil {
		return f, err
	}
	if err := b.env.checkpoint(ctx); err != nil {
		return f, err
	}
	// What backends flushed before (the last workload's puts) reaches
	// pg_stat_wal within pgStatInterval: wait for it to be in.
	if err := sleep(ctx, pgStatInterval); err != nil {
		return f, err
	}
	before, err := b.readDisk(ctx, sys)
	if err != nil {
		return f, err
	}

	events := t.events.Load()
	if err := count(ctx, cpuClients, diskPuts, b.putRandom(sys)); err != nil {
		return f, err
	}
	if _, err := t.drain(ctx, events+diskPuts, drainLimit); err != nil {
		return f, err
	}
	putsDone := time.Now()
	if _, ok := sys.(ownStorage); !ok {
		// Read the puts' WAL back before the checkpoint may recycle it.
		lsn, err := b.env.walLSN(ctx)
		if err != nil {
			return f, err
		}
		if f.fpi, f.commits, f.records, err = b.env.walStats(ctx, before.lsn, lsn); err != nil {
			return f, err
		}
		for k := range f.records {
			f.records[k] /= diskPuts
		}
		f.fpi /= diskPuts
		f.commits /= diskPuts
	}
	if err := b.env.checkpoint(ctx); err != nil {
		return f, err
	}
	if err := sleep(ctx, time.Until(putsDone.Add(pgStatInterval))); err != nil { // see pgStatInterval
		return f, err
	}
	after, err := b.readDisk(ctx, sys)
	if err != nil {
		return f, err
	}
	f.device = float64(after.device-before.device) / diskPuts
	f.written = after.written.since(before.written)
	f.wal = (after.wal - before.wal) / diskPuts
	f.walSyncs = (after.syncs - before.syncs) / diskPuts
	f.dataPages = (after.pages - before.pages) / diskPuts
	return f, nil
}

// addDisk records one round's disk figures of system name, and returns
// them for the round's summary line.
func (b *bench) addDisk(name string, f diskFigures) string {
	perPut := func(n int64) float64 { return float64(n) / diskPuts }
	b.samples.add(name, "disk_write_bytes_per_put", "", f.device)
	b.samples.add(name, "proc_write_bytes_per_put", "", perPut(f.written.total()))
	for role, n := range f.written.postgres {
		b.samples.add(name, "proc_write_bytes_per_put", role, perPut(n))
	}
	b.samples.add(name, "proc_write_bytes_per_put", "benchmark", perPut(f.written.self))
	b.samples.add(name, "proc_write_bytes_per_put", "server", perPut(f.written.extra))
	b.samples.add(name, "disk_wal_bytes_per_put", "", f.wal)
	b.samples.add(name, "disk_wal_syncs_per_put", "", f.walSyncs)
	line := fmt.Sprintf(" disk/put=%.0fB (/proc %.0f, wal %.0f, flushes/put %.3f", f.device, perPut(f.written.total()), f.wal, f.walSyncs)
	if f.records != nil {
		b.samples.add(name, "disk_data_page_bytes_per_put", "", f.dataPages)
		b.samples.add(name, "disk_fpi_bytes_per_put", "", f.fpi)
		b.samples.add(name, "disk_commits_per_put", "", f.commits)
		for kind, v := range f.records {
			b.samples.add(name, "disk_wal_record_bytes_per_put", kind, v)
		}
		line += fmt.Sprintf(", fpi %.0f, data pages %.0f, commits/put %.2f", f.fpi, f.dataPages, f.commits)
	}
	return line + ")"
}

// diskSample is what the disk figure reads before and after its puts.
type diskSample struct {
	written writtenBytes
	device  int64   // bytes the device has written
	wal     float64 // WAL bytes: PostgreSQL's position, or etcd's count
	syncs   float64 // WAL flushes
	pages   float64 // PostgreSQL's data pages written, in bytes
	lsn     float64 // PostgreSQL's WAL position
}

// readDisk reads the counters of sys: its processes' and its device's
// writes, and its WAL's, PostgreSQL's or (for a system of its own storage)
// its own.
func (b *bench) readDisk(ctx context.Context, sys system) (diskSample, error) {
	var d diskSample
	var err error
	if d.written, err = b.settledWrites(ctx, sys); err != nil {
		return d, err
	}
	dir := b.env.cluster.DataDir()
	own, hasOwn := sys.(ownStorage)
	if hasOwn {
		dir = own.dataDir()
		d.written.postgres = nil // PostgreSQL idles through the turn
	}
	if d.device, err = deviceWritten(dir); err != nil {
		return d, err
	}
	if hasOwn {
		d.wal, d.syncs, err = own.walWritten(ctx)
		return d, err
	}
	if d.lsn, err = b.env.walLSN(ctx); err != nil {
		return d, err
	}
	d.wal = d.lsn
	if d.pages, err = b.env.pagesWritten(ctx); err != nil {
		return d, err
	}
	d.syncs, err = b.env.walSyncs(ctx)
	return d, err
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pgStatInterval is how long after its last transaction a PostgreSQL 15
// backend has surely reported its statistics (it reports at most once a
// second, PGSTAT_MIN_INTERVAL).
const pgStatInterval = 1100 * time.Millisecond

// walSyncs is how many times PostgreSQL has flushed its WAL to disk
// (pg_stat_wal), each flush writing at least the WAL page it ends in.
func (e *env) walSyncs(ctx context.Context) (float64, error) {
	var n float64
	if err := e.admin.QueryRow(ctx, "select wal_sync::float8 from pg_stat_wal").Scan(&n); err != nil {
		return 0, fmt.Errorf("read WAL flushes: %w", err)
	}
	return n, nil
}

// pagesWritten is the bytes of data pages PostgreSQL has written back so
// far: by checkpoints, the background writer and backends evicting them
// (pg_stat_bgwriter; a backend reports its share within a second or so).
func (e *env) pagesWritten(ctx context.Context) (float64, error) {
	var n float64
	err := e.admin.QueryRow(ctx, `
		select ((buffers_checkpoint + buffers_clean + buffers_backend) * current_setting('block_size')::bigint)::float8
		from pg_stat_bgwriter`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("read pages written: %w", err)
	}
	return n, nil
}

// settledWrites reads the system's bytes written once two readings 250 ms
// apart agree, or after five seconds.
func (b *bench) settledWrites(ctx context.Context, sys system) (writtenBytes, error) {
	deadline := time.Now().Add(5 * time.Second)
	prev, err := b.env.procs.written(sys.pids())
	if err != nil {
		return prev, err
	}
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return prev, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		cur, err := b.env.procs.written(sys.pids())
		if err != nil {
			return cur, err
		}
		if cur.total() == prev.total() {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// checkpoint writes every dirty page of the cluster back to disk.
func (e *env) checkpoint(ctx context.Context) error {
	if _, err := e.admin.Exec(ctx, "checkpoint"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// walStats reads the WAL from lsn0 to lsn1 back (pg_walinspect): the bytes
// of full-page images, the commit records, and the bytes (records and
// their page images) by record type.
func (e *env) walStats(ctx context.Context, lsn0, lsn1 float64) (fpi, commits float64, records map[string]float64, err error) {
	rows, err := e.admin.Query(ctx, `
		select "resource_manager/record_type", count, combined_size, fpi_size
		from pg_get_wal_stats(pg_lsn('0/0') + $1::numeric, pg_lsn('0/0') + $2::numeric, true)
		where count > 0`, lsn0, lsn1)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("read WAL statistics: %w", err)
	}
	defer rows.Close()
	records = map[string]float64{}
	for rows.Next() {
		var (
			kind              string
			n, combined, fpiB int64
		)
		if err := rows.Scan(&kind, &n, &combined, &fpiB); err != nil {
			return 0, 0, nil, fmt.Errorf("read WAL statistics: %w", err)
		}
		records[kind] = float64(combined)
		fpi += float64(fpiB)
		if kind == "Transaction/COMMIT" {
			commits = float64(n)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, 0, nil, fmt.Errorf("read WAL statistics: %w", err)
	}
	return fpi, commits, records, nil
}

// topRecords are the record types that wrote the most, largest first, at
// most n of them.
func topRecords(records map[string]float64, n int) []string {
	kinds := make([]string, 0, len(records))
	for k := range records {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return records[kinds[i]] > records[kinds[j]] })
	return kinds[:min(n, len(kinds))]
}

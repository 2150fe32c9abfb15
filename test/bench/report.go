package main

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The systems in the order the tables and the chart show them; any other
// system found in the results follows, sorted by name.
var systemOrder = []string{"walwatch", "walwatch_http", "walwatch_etcd", "etcd", "kine", "notify", "floor"}

// versus are the pairs of systems the report also compares directly, the
// first's figures divided by the second's: walwatch's etcd API against
// etcd, both driven by the same etcd client code.
var versus = [][2]string{{"walwatch_etcd", "etcd"}}

// Client counts of the put workloads, and of the get workload.
var (
	putClients = []string{"1", "8", "32", "64"}
	getClients = []string{"1", "32"}
	txnClients = []string{"8", "32"}
)

// manualMarker starts the hand-written part of README.md, which writeReport
// keeps verbatim from one run to the next.
const manualMarker = "<!-- manual -->"

const defaultManual = manualMarker + "\n## Changes and their effect\n\n(none yet)\n"

const (
	dash        = "—"  // a figure that was not measured
	chartWidth  = 1000 // five bars a group, each wide enough for its label
	chartHeight = 500
	chartTitle  = "puts/s with one watcher attached (higher is better)"
)

// writeReport writes dir/README.md (tables: absolute figures and ratios to
// walwatch; machine, date, commit) and dir/chart.png from r.
func writeReport(dir string, r *Results) error {
	if r == nil {
		return errors.New("report: no results")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	readme := filepath.Join(dir, "README.md")
	manual := defaultManual
	old, err := os.ReadFile(readme)
	switch {
	case err == nil:
		if m, ok := manualSection(string(old)); ok {
			manual = m
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	var chart bytes.Buffer
	if err := png.Encode(&chart, drawChart(r)); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "chart.png"), chart.Bytes()); err != nil {
		return err
	}
	return writeFileAtomic(readme, []byte(renderReadme(r)+manual))
}

// manualSection returns everything from the line that is exactly
// manualMarker to the end of s.
func manualSection(s string) (string, bool) {
	for off := 0; off < len(s); {
		end := strings.IndexByte(s[off:], '\n')
		line := s[off:]
		if end >= 0 {
			line = s[off : off+end]
		}
		if strings.TrimSpace(line) == manualMarker {
			return s[off:], true
		}
		if end < 0 {
			break
		}
		off += end + 1
	}
	return "", false
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// ---- reading the results, tolerating anything missing ----

// systems lists the systems to show: the known ones always, then any other
// system present in the results.
func systems(r *Results) []string {
	out := append([]string(nil), systemOrder...)
	known := map[string]bool{}
	for _, s := range systemOrder {
		known[s] = true
	}
	extra := map[string]bool{}
	for s := range r.Systems {
		extra[s] = true
	}
	for s := range r.Fanout {
		extra[s] = true
	}
	for _, m := range []map[string]float64{r.WALBytesPerPut, r.CPUSPer10kPuts, r.MemoryPerWatcher, r.DiskWriteBytesPerPut} {
		for s := range m {
			extra[s] = true
		}
	}
	var more []string
	for s := range extra {
		if !known[s] {
			more = append(more, s)
		}
	}
	sort.Strings(more)
	return append(out, more...)
}

// metric picks one map of a system's figures.
type metric func(*SystemResults) map[string]float64

func putWatched(s *SystemResults) map[string]float64   { return s.PutPerS }
func putUnwatched(s *SystemResults) map[string]float64 { return s.PutPerSUnwatched }
func gets(s *SystemResults) map[string]float64         { return s.GetPerS }
func getCPU(s *SystemResults) map[string]float64       { return s.GetCPUUs }
func rttIdle(s *SystemResults) map[string]float64      { return s.WatchRTTUs }
func rttLoaded(s *SystemResults) map[string]float64    { return s.WatchRTTLoadedUs }
func rttPaired(s *SystemResults) map[string]float64    { return s.WatchRTTPairedUs }
func noops(s *SystemResults) map[string]float64        { return s.NoopPerS }
func txns(s *SystemResults) map[string]float64         { return s.TxnPerS }
func txnRTTs(s *SystemResults) map[string]float64      { return s.TxnRTTLoadedUs }
func listPages(s *SystemResults) map[string]float64    { return s.ListPageMs }
func listPagesWritten(s *SystemResults) map[string]float64 {
	return s.ListPageWrittenMs
}
func rttPut(s *SystemResults) map[string]float64       { return s.WatchRTTPutUs }
func rttDelivery(s *SystemResults) map[string]float64  { return s.WatchRTTDeliveryUs }
func rttLoadedPut(s *SystemResults) map[string]float64 { return s.WatchRTTLoadedPutUs }
func rttLoadedDelivery(s *SystemResults) map[string]float64 {
	return s.WatchRTTLoadedDeliveryUs
}

// figuresTable is m's figures of systems, a row each, columns named heads
// at keys.
func figuresTable(r *Results, systems []string, m metric, heads, keys []string, format func(float64) string) table {
	t := table{header: append([]string{"system"}, heads...)}
	for _, sys := range systems {
		row := []string{sys}
		for _, k := range keys {
			v, ok := sysValue(r, sys, m, k)
			row = append(row, orDash(v, ok, format))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

// kubernetesTable is figuresTable of the systems that speak etcd's API,
// with walwatch_etcd's ratios to the others.
func kubernetesTable(r *Results, m metric, heads, keys []string, format func(float64) string) table {
	t := figuresTable(r, []string{"walwatch_etcd", "etcd", "kine"}, m, heads, keys, format)
	for _, other := range []string{"etcd", "kine"} {
		row := []string{"walwatch_etcd / " + other}
		for _, k := range keys {
			a, aok := sysValue(r, "walwatch_etcd", m, k)
			o, ook := sysValue(r, other, m, k)
			q, ok := ratio(a, aok, o, ook)
			row = append(row, orDash(q, ok, fmtRatio))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

// sysValue is system sys's figure m[key], if it was measured.
func sysValue(r *Results, sys string, m metric, key string) (float64, bool) {
	s := r.Systems[sys]
	if s == nil {
		return 0, false
	}
	return mapValue(m(s), key)
}

func mapValue(m map[string]float64, key string) (float64, bool) {
	v, ok := m[key]
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

func fanoutValue(r *Results, sys, watchers string, p99 bool) (float64, bool) {
	f := r.Fanout[sys][watchers]
	if f == nil {
		return 0, false
	}
	v := f.P50Ms
	if p99 {
		v = f.P99Ms
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

// ratio is a / b, if both were measured and b is not zero.
func ratio(a float64, aok bool, b float64, bok bool) (float64, bool) {
	if !aok || !bok || b == 0 {
		return 0, false
	}
	q := a / b
	if math.IsNaN(q) || math.IsInf(q, 0) {
		return 0, false
	}
	return q, true
}

// ---- formatting ----

// commas formats v rounded to an integer with thousands separators.
func commas(v float64) string {
	s := strconv.FormatFloat(math.Round(math.Abs(v)), 'f', 0, 64)
	var b strings.Builder
	if v <= -0.5 {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtCount(v float64) string { return commas(v) }

// fmtUs shows a latency in µs, or in ms with two decimals from 1 ms up.
func fmtUs(v float64) string {
	if math.Abs(v) >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return commas(v) + " µs"
}

func fmtMs(v float64) string      { return fmt.Sprintf("%.2f ms", v) }
func fmtBytes(v float64) string   { return commas(v) + " B" }
func fmtSeconds(v float64) string { return fmt.Sprintf("%.2f s", v) }

// fmtMem shows bytes, or KiB with one decimal from 1 KiB up.
func fmtMem(v float64) string {
	if math.Abs(v) >= 1024 {
		return fmt.Sprintf("%.1f KiB", v/1024)
	}
	return commas(v) + " B"
}

func fmtRatio(q float64) string {
	if q != 0 && math.Abs(q) < 0.01 {
		return fmt.Sprintf("%.3f×", q)
	}
	return fmt.Sprintf("%.2f×", q)
}

// cell shows a system's figure and, for systems other than walwatch, its
// ratio to walwatch's figure.
func cell(v float64, ok bool, base float64, baseOK bool, isBase bool, format func(float64) string) string {
	if !ok {
		return dash
	}
	s := format(v)
	if isBase {
		return s
	}
	if q, qok := ratio(v, ok, base, baseOK); qok {
		s += " (" + fmtRatio(q) + ")"
	}
	return s
}

// orDash formats a figure, or says it was not measured.
func orDash(v float64, ok bool, format func(float64) string) string {
	if !ok {
		return dash
	}
	return format(v)
}

func orUnknown(s string) string {
	if strings.TrimSpace(s) == "" {
		return "unknown"
	}
	return s
}

func escapeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

type table struct {
	header []string
	rows   [][]string
	left   bool // every column left-aligned, not only the first
}

func (t table) write(b *strings.Builder) {
	line := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + escapeCell(c) + " |")
		}
		b.WriteString("\n")
	}
	line(t.header)
	b.WriteString("|")
	for i := range t.header {
		if i == 0 || t.left {
			b.WriteString(" --- |")
		} else {
			b.WriteString(" ---: |")
		}
	}
	b.WriteString("\n")
	for _, r := range t.rows {
		line(r)
	}
	b.WriteString("\n")
}

// systemTable has one row per system and one column per key of metric m,
// each cell the figure and its ratio to walwatch.
func systemTable(r *Results, m metric, keys, headers []string, format func(float64) string) table {
	t := table{header: append([]string{"system"}, headers...)}
	for _, sys := range systems(r) {
		row := []string{sys}
		for _, k := range keys {
			v, ok := sysValue(r, sys, m, k)
			base, bok := sysValue(r, "walwatch", m, k)
			row = append(row, cell(v, ok, base, bok, sys == "walwatch", format))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

// versusTable has one row per figure the two systems share, each with
// both figures and sys's divided by other's.
func versusTable(r *Results, sys, other string) table {
	t := table{header: []string{"figure", sys, other, sys + " ÷ " + other}}
	add := func(label string, v float64, ok bool, o float64, ook bool, format func(float64) string) {
		q, qok := ratio(v, ok, o, ook)
		qs := dash
		if qok {
			qs = fmtRatio(q)
		}
		t.rows = append(t.rows, []string{label, orDash(v, ok, format), orDash(o, ook, format), qs})
	}
	for _, f := range []struct {
		label  string
		m      metric
		keys   []string
		format func(float64) string
	}{
		{"puts/s, watched", putWatched, putClients, fmtCount},
		{"puts/s, no watcher", putUnwatched, putClients, fmtCount},
		{"gets/s", gets, getClients, fmtCount},
		{"round trip, idle", rttIdle, []string{"p50", "p99", "p999"}, fmtUs},
		{"round trip, loaded", rttLoaded, []string{"p50", "p99", "p999"}, fmtUs},
	} {
		for _, k := range f.keys {
			label := f.label + ", " + k
			switch k {
			case "1":
				label += " client"
			case "8", "32", "64":
				label += " clients"
			}
			v, ok := sysValue(r, sys, f.m, k)
			o, ook := sysValue(r, other, f.m, k)
			add(label, v, ok, o, ook, f.format)
		}
	}
	v, ok := mapValue(r.CPUSPer10kPuts, sys)
	o, ook := mapValue(r.CPUSPer10kPuts, other)
	add("CPU per 10k puts", v, ok, o, ook, fmtSeconds)
	return t
}

// ---- README ----

func renderReadme(r *Results) string {
	var b strings.Builder
	m := r.Meta
	b.WriteString("# walwatch benchmarks\n\n")
	b.WriteString("<!-- Generated by test/bench (make bench); edit only the section after the manual marker at the end, which later runs keep. -->\n\n")

	rounds := "the rounds"
	if m.Rounds > 0 {
		rounds = fmt.Sprintf("%d rounds", m.Rounds)
	}
	fmt.Fprintf(&b, "This compares **walwatch** (etcd semantics on PostgreSQL: the store for writes, "+
		"a hub fed by a logical replication slot for watches) with **walwatch_http** (the same, "+
		"driven through `cp`'s HTTP API and SSE, to show what the HTTP layer costs), "+
		"**walwatch_etcd** (the same `cp` serving etcd's v3 gRPC API, driven by the same etcd Go client "+
		"code as etcd, so that the two compare like with like), "+
		"**notify** (the seed's LISTEN/NOTIFY design that walwatch replaces: an AFTER INSERT trigger "+
		"calling `pg_notify` while a listener holds the shared advisory lock, and a LISTEN "+
		"connection as the watcher) and **etcd** (etcd 3.7's server as its own process, single member, with the "+
		"etcd Go client). The benchmark starts every system itself on this machine, in temporary "+
		"directories, with fsync on everywhere. Each workload runs every system in turn, rounds "+
		"interleaved (A B C A B C …) so that drift on a shared machine cancels out; every figure "+
		"is the median of %s.\n\n", rounds)

	if m.Quick {
		b.WriteString("**This is a quick run** (`make bench-quick`): fewer and shorter rounds, so the figures are noisier than a full run's.\n\n")
	}

	fmt.Fprintf(&b, "- Machine: %s\n", orUnknown(m.Machine))
	if m.Autogroup != "" {
		fmt.Fprintf(&b, "- Linux scheduler autogroup: %s (`kernel.sched_autogroup_enabled`; when on, the scheduler shares the CPUs between sessions, and PostgreSQL makes every backend and WAL sender a session of its own)\n", m.Autogroup)
	}
	fmt.Fprintf(&b, "- Date: %s\n", orUnknown(m.Date))
	if strings.TrimSpace(m.Commit) == "" {
		b.WriteString("- Commit: unknown\n")
	} else {
		fmt.Fprintf(&b, "- Commit: `%s`\n", m.Commit)
	}
	fmt.Fprintf(&b, "- Go %s, PostgreSQL %s, etcd %s\n", orUnknown(m.GoVersion), orUnknown(m.Postgres), orUnknown(m.Etcd))
	if m.Rounds > 0 {
		fmt.Fprintf(&b, "- Rounds per workload: %d (figures are medians)\n", m.Rounds)
	}
	b.WriteString("\n")

	b.WriteString("To rerun, from the repository root: `make bench` (the full run) or `make bench-quick` " +
		"(a short run, about two minutes, with the same keys). Either rewrites this file, `chart.png` " +
		"and `results.json`, which holds every figure below.\n\n")

	b.WriteString("![puts/s with one watcher attached, by number of clients](chart.png)\n\n")

	b.WriteString("In the tables, a figure in brackets is that system's figure divided by walwatch's. " +
		"For throughputs higher is better, so below 1× means slower than walwatch; for latencies " +
		"and costs lower is better, so above 1× means slower or costlier than walwatch. " +
		dash + " means not measured.\n\n")

	clientHeaders := func(keys []string) []string {
		var h []string
		for _, k := range keys {
			if k == "1" {
				h = append(h, "1 client")
			} else {
				h = append(h, k+" clients")
			}
		}
		return h
	}

	b.WriteString("## Put throughput, one watcher attached (puts/s, higher is better)\n\n")
	b.WriteString("Puts over 10,000 keys with one watcher on the written prefix (the seed's setup).\n\n")
	systemTable(r, putWatched, putClients, clientHeaders(putClients), fmtCount).write(&b)

	b.WriteString("## Put throughput, no watcher (puts/s, higher is better)\n\n")
	systemTable(r, putUnwatched, putClients, clientHeaders(putClients), fmtCount).write(&b)

	b.WriteString("## Get throughput (gets/s, higher is better)\n\n")
	systemTable(r, gets, getClients, clientHeaders(getClients), fmtCount).write(&b)

	if slices.ContainsFunc(systems(r), func(sys string) bool { s := r.Systems[sys]; return s != nil && len(s.GetCPUUs) > 0 }) {
		b.WriteString("## CPU a get at one client (lower is better)\n\n")
		b.WriteString("The CPU time of the gets at one client above, divided by the gets, by whose (from /proc, as the CPU per 10,000 puts below): " +
			"every PostgreSQL process; this process, which holds the client and walwatch's store; the system's server (etcd's, the cp, kine's).\n\n")
		systemTable(r, getCPU, getCPUParts, []string{"PostgreSQL", "benchmark process", "server"}, fmtUs).write(&b)
	}

	pcts := []string{"p50", "p99", "p999"}
	b.WriteString("## Watch round trip, idle (lower is better)\n\n")
	b.WriteString("Time from a put to its event at the watcher, on an otherwise idle system.\n\n")
	systemTable(r, rttIdle, pcts, pcts, fmtUs).write(&b)

	paired := func(sys string) bool { s := r.Systems[sys]; return s != nil && len(s.WatchRTTPairedUs) > 0 }
	if slices.ContainsFunc(systems(r), paired) {
		b.WriteString("## Watch round trip, idle, paired (lower is better)\n\n")
		b.WriteString("The same, measured after each round's turns for " + strings.Join(pairedSystems, ", ") +
			" together: every one's watcher open, probes in blocks of " + strconv.Itoa(pairedBlock) +
			" from each in turn, so that all meet the host's state (its commit flush has a fast and a slow one, " +
			"each lasting seconds to minutes) in the same share. Targets 1 to 3 are judged on these.\n\n")
		pt := systemTable(r, rttPaired, pcts, pcts, fmtUs)
		pt.rows = slices.DeleteFunc(pt.rows, func(row []string) bool { return !paired(row[0]) })
		pt.write(&b)
	}

	b.WriteString("## Watch round trip under load (lower is better)\n\n")
	b.WriteString("The same, while 32 other clients put.\n\n")
	systemTable(r, rttLoaded, pcts, pcts, fmtUs).write(&b)

	b.WriteString("## Where the round trip goes (lower is better)\n\n")
	b.WriteString("Each round trip above in two stages: the put, until the writer has its answer, and the " +
		"delivery, from then until the event reaches the watcher (about 0 when the event was there first, as " +
		"etcd and notify deliver before they answer the writer). Percentiles of each stage's own samples, " +
		"so a stage's p99 and the other's do not add up to the round trip's.\n\n")
	stages := table{header: []string{"system", "idle put p50", "idle put p99", "idle delivery p50", "idle delivery p99",
		"loaded put p50", "loaded put p99", "loaded delivery p50", "loaded delivery p99"}}
	for _, sys := range systems(r) {
		row := []string{sys}
		for _, m := range []metric{rttPut, rttDelivery, rttLoadedPut, rttLoadedDelivery} {
			for _, p := range []string{"p50", "p99"} {
				v, ok := sysValue(r, sys, m, p)
				base, bok := sysValue(r, "walwatch", m, p)
				row = append(row, cell(v, ok, base, bok, sys == "walwatch", fmtUs))
			}
		}
		stages.rows = append(stages.rows, row)
	}
	stages.write(&b)

	b.WriteString("## Fan-out (lower is better)\n\n")
	b.WriteString("Time for one put to reach every watcher on one hub (etcd: one server).\n\n")
	fan := table{header: []string{"system", "1,000 watchers p50", "1,000 watchers p99", "10,000 watchers p50", "10,000 watchers p99"}}
	for _, sys := range systems(r) {
		row := []string{sys}
		for _, w := range []string{"1000", "10000"} {
			for _, p99 := range []bool{false, true} {
				v, ok := fanoutValue(r, sys, w, p99)
				base, bok := fanoutValue(r, "walwatch", w, p99)
				row = append(row, cell(v, ok, base, bok, sys == "walwatch", fmtMs))
			}
		}
		fan.rows = append(fan.rows, row)
	}
	fan.write(&b)

	b.WriteString("## Catch-up (higher is better)\n\n")
	b.WriteString("A walwatch watcher starting 100,000 revisions behind, events per second until it is live.\n\n")
	cu := dash
	if v, ok := mapValue(map[string]float64{"v": r.CatchupEventsPerS}, "v"); ok && v != 0 {
		cu = fmtCount(v) + " events/s"
	}
	table{header: []string{"system", "catch-up"}, rows: [][]string{{"walwatch", cu}}}.write(&b)

	b.WriteString("## Costs (lower is better)\n\n")
	b.WriteString("WAL bytes written per put (PostgreSQL systems only); CPU seconds per 10,000 puts counting " +
		"every process of the system (PostgreSQL backends and walsender plus walwatch, and the cp where there is one; etcd); " +
		"bytes the disk wrote per put (below); memory per idle watcher.\n\n")
	costs := table{header: []string{"system", "WAL bytes per put", "CPU per 10k puts", "disk writes per put", "memory per watcher"}}
	for _, sys := range systems(r) {
		row := []string{sys}
		for _, c := range []struct {
			m      map[string]float64
			format func(float64) string
		}{{r.WALBytesPerPut, fmtBytes}, {r.CPUSPer10kPuts, fmtSeconds}, {r.DiskWriteBytesPerPut, fmtBytes}, {r.MemoryPerWatcher, fmtMem}} {
			v, ok := mapValue(c.m, sys)
			base, bok := mapValue(c.m, "walwatch")
			row = append(row, cell(v, ok, base, bok, sys == "walwatch", c.format))
		}
		costs.rows = append(costs.rows, row)
	}
	costs.write(&b)
	writeDiskSection(&b, r)

	for _, v := range versus {
		fmt.Fprintf(&b, "## %s against %s\n\n", v[0], v[1])
		fmt.Fprintf(&b, "%s's figures from the tables above beside %s's, and the first divided by the second. "+
			"For throughputs higher is better, so below 1× means slower than %[2]s; for latencies and costs "+
			"lower is better, so above 1× means slower or costlier than %[2]s.\n\n", v[0], v[1])
		versusTable(r, v[0], v[1]).write(&b)
	}

	b.WriteString("## Front door alone (requests/s, higher is better)\n\n")
	b.WriteString("A request each server answers without its storage: `cp`'s `GET /healthz` (walwatch_http), " +
		"etcd's MemberList (walwatch_etcd and etcd; etcd's is linearizable, as its gets), driven as the gets are.\n\n")
	figuresTable(r, []string{"walwatch_http", "walwatch_etcd", "etcd"}, noops,
		[]string{"1 client", "32 clients"}, getClients, fmtCount).write(&b)

	b.WriteString("## Kubernetes' writes (Txns/s, higher is better)\n\n")
	b.WriteString("Each client writes random keys as Kubernetes writes an object: a Txn that puts the key if its mod revision " +
		"is the one this system's clients last wrote, else reads it and tries again (kine's puts above are these too). " +
		"Nothing watches them here (the table after has a watcher). Not one of the issues' targets.\n\n")
	kubernetesTable(r, txns, []string{"8 clients", "32 clients"}, txnClients, fmtCount).write(&b)

	b.WriteString("## Kubernetes' writes, watched (lower is better)\n\n")
	fmt.Fprintf(&b, "Time from such a Txn to its event at a watcher of their prefix, as Kubernetes' API server watches a resource, "+
		"while %d other clients write them as fast as they can. Not one of the issues' targets.\n\n", loadedRTT)
	kubernetesTable(r, txnRTTs, []string{"p50", "p99", "p999"}, []string{"p50", "p99", "p999"}, fmtUs).write(&b)

	b.WriteString("## Kubernetes' lists (ms a page, lower is better)\n\n")
	fmt.Fprintf(&b, "One client lists %d keys of %d-byte values in %d versions each as Kubernetes' API server lists a resource: "+
		"pages of %d keys, the first at the current revision and the others at its revision, each with the range's count; "+
		"lists one after another for as long as a gets measurement. Not one of the issues' targets.\n\n",
		listKeys, listValueSize, listVersions, listPage)
	kubernetesTable(r, listPages, []string{"p50", "p99"}, []string{"p50", "p99"}, fmtMs).write(&b)

	b.WriteString("## Kubernetes' lists while written (ms a page, lower is better)\n\n")
	fmt.Fprintf(&b, "The same lists, of keys of their own loaded as those, while one other client updates random ones of them "+
		"as Kubernetes' writes above, as fast as it can (the updates a second meanwhile are in results.json, "+
		"list_page_written_ms.updates_per_s); their versions stay, so each round lists a longer history. Not one of the issues' targets.\n\n")
	kubernetesTable(r, listPagesWritten, []string{"p50", "p99"}, []string{"p50", "p99"}, fmtMs).write(&b)

	targets := evalTargets(r)
	nMet, nMeasured := 0, 0
	for _, t := range targets {
		if t.status != notMeasured {
			nMeasured++
		}
		if t.status == met {
			nMet++
		}
	}
	b.WriteString("## Targets\n\n")
	fmt.Fprintf(&b, "Issue 17's targets (numbered as there) and issue 18's, each a ratio between systems measured side by side in this run: %d of %d met", nMet, len(targets))
	if nMeasured < len(targets) {
		fmt.Fprintf(&b, " (%d not measured)", len(targets)-nMeasured)
	}
	b.WriteString(".\n\n")
	tt := table{header: []string{"target", "measured", "ratio", "result"}, left: true}
	for _, t := range targets {
		tt.rows = append(tt.rows, []string{t.name, t.measured, t.ratio, t.status.String()})
	}
	tt.write(&b)

	b.WriteString("## What the front door leaves\n\n")
	b.WriteString("A request through `cp` is at least its front door's request and walwatch's own operation, " +
		"both on the same cores, so its rate is at most 1 ÷ (1/direct + 1/front door), and a put's " +
		"round trip to a watcher takes at least walwatch's direct one and one front-door round trip: " +
		"the best possible figures below, from this run's. A target beyond its best possible figure is " +
		"out of reach of any `cp` until the front door or the direct operation costs less.\n\n")
	ct := table{header: []string{"target", "needs", "best possible", "measured"}, left: true}
	for _, c := range evalCeilings(r) {
		ct.rows = append(ct.rows, []string{c.target, orDash(c.needs, c.ok, c.format), orDash(c.best, c.ok, c.format), orDash(c.measured, c.ok, c.format)})
	}
	ct.write(&b)

	if len(r.Notes) > 0 {
		b.WriteString("## Notes\n\n")
		for _, n := range r.Notes {
			n = strings.TrimSpace(strings.ReplaceAll(n, "\r\n", "\n"))
			if n == "" {
				continue
			}
			b.WriteString("- " + strings.ReplaceAll(n, "\n", "\n  ") + "\n")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ---- targets ----

type targetStatus int

const (
	notMeasured targetStatus = iota
	met
	missed
)

func (s targetStatus) String() string {
	switch s {
	case met:
		return "met"
	case missed:
		return "**missed**"
	}
	return "not measured"
}

type target struct {
	name     string
	measured string
	ratio    string
	status   targetStatus
}

func judge(ok, pass bool) targetStatus {
	switch {
	case !ok:
		return notMeasured
	case pass:
		return met
	}
	return missed
}

// figure is one system's figure for a target.
type figure struct {
	sys    string
	v      float64
	ok     bool
	format func(float64) string
}

func sysFigure(r *Results, sys string, m metric, key string, format func(float64) string) figure {
	v, ok := sysValue(r, sys, m, key)
	return figure{sys, v, ok, format}
}

func mapFigure(sys string, m map[string]float64, format func(float64) string) figure {
	v, ok := mapValue(m, sys)
	return figure{sys, v, ok, format}
}

// bound says which way a target's ratio must go.
type bound int

const (
	atLeast bound = iota // a ÷ b ≥ factor: a throughput
	atMost               // a ÷ b ≤ factor: a latency or a cost
	below                // a ÷ b < factor
)

// ratioTarget is the target that a ÷ b be bounded by factor.
func ratioTarget(name string, a, b figure, bd bound, factor float64) target {
	q, ok := ratio(a.v, a.ok, b.v, b.ok)
	pass := q >= factor
	switch bd {
	case atMost:
		pass = q <= factor
	case below:
		pass = q < factor
	}
	r := dash
	if ok {
		r = fmtRatio(q) + " (" + a.sys + " ÷ " + b.sys + ")"
	}
	return target{
		name:     name,
		measured: fmt.Sprintf("%s %s vs %s %s", a.sys, orDash(a.v, a.ok, a.format), b.sys, orDash(b.v, b.ok, b.format)),
		ratio:    r,
		status:   judge(ok, pass),
	}
}

// absolute is the target that a figure be at most (or, with bd atLeast, at
// least) lim.
func absolute(name string, a figure, bd bound, lim float64) target {
	q, ok := ratio(a.v, a.ok, lim, true)
	pass, of := a.v <= lim, "of the limit"
	if bd == atLeast {
		pass, of = a.v >= lim, "of the minimum"
	}
	r := dash
	if ok {
		r = fmtRatio(q) + " " + of
	}
	return target{name: name, measured: orDash(a.v, a.ok, a.format), ratio: r, status: judge(a.ok, pass)}
}

// evalTargets computes issue 17's and issue 18's targets from the figures
// of this run: each but two a ratio between systems measured side by side.
func evalTargets(r *Results) []target {
	fig := func(sys string, m metric, key string, format func(float64) string) figure {
		return sysFigure(r, sys, m, key, format)
	}
	puts := func(sys string) figure { return fig(sys, putWatched, "32", fmtCount) }
	getsAt := func(sys, n string) figure { return fig(sys, gets, n, fmtCount) }
	idle := func(sys, p string) figure { return fig(sys, rttIdle, p, fmtUs) }
	fanout := func(sys string) figure {
		v, ok := fanoutValue(r, sys, "10000", true)
		return figure{sys, v, ok, fmtMs}
	}
	memory := func(sys string) figure { return mapFigure(sys, r.MemoryPerWatcher, fmtMem) }
	cpu := func(sys string) figure { return mapFigure(sys, r.CPUSPer10kPuts, fmtSeconds) }
	disk := func(sys string) figure { return mapFigure(sys, r.DiskWriteBytesPerPut, fmtBytes) }
	catchup := figure{"walwatch", r.CatchupEventsPerS, r.CatchupEventsPerS != 0, func(v float64) string { return fmtCount(v) + " events/s" }}

	const ww, http, api = "walwatch", "walwatch_http", "walwatch_etcd"
	// Walwatch's idle round trip against the systems paired with it is
	// judged on the paired figures (paired.go) when the run has them; the
	// turns' own figures follow in the measured column.
	againstIdle := func(name, other, p string, factor float64) target {
		byTurn := ratioTarget(name, idle(ww, p), idle(other, p), atMost, factor)
		a, b := fig(ww, rttPaired, p, fmtUs), fig(other, rttPaired, p, fmtUs)
		if !a.ok || !b.ok {
			return byTurn
		}
		t := ratioTarget(name, a, b, atMost, factor)
		t.measured += " (paired); by turn " + byTurn.measured
		if q, ok := ratio(idle(ww, p).v, idle(ww, p).ok, idle(other, p).v, idle(other, p).ok); ok {
			t.measured += ", " + fmtRatio(q)
		}
		return t
	}
	out := []target{
		againstIdle("1. Idle put→event p50 ≤ notify's", "notify", "p50", 1),
		againstIdle("1. Idle put→event p50 ≤ etcd's", "etcd", "p50", 1),
		againstIdle("2. Idle put→event p99 ≤ notify's", "notify", "p99", 1),
		againstIdle("2. Idle put→event p99 ≤ etcd's", "etcd", "p99", 1),
		againstIdle("3. Idle put→event p50 ≤ 1.3× the floor's", "floor", "p50", 1.3),
		ratioTarget("4. Put→event p99 under 32 writers ≤ etcd's", fig(ww, rttLoaded, "p99", fmtUs), fig("etcd", rttLoaded, "p99", fmtUs), atMost, 1),
	}
	for _, n := range []string{"1", "32"} {
		clients := n + " clients"
		if n == "1" {
			clients = "1 client"
		}
		out = append(out,
			ratioTarget("5. Gets at "+clients+" ≥ 1.0× etcd", getsAt(ww, n), getsAt("etcd", n), atLeast, 1),
			ratioTarget("5. Gets at "+clients+" ≥ 0.7× notify's plain select", getsAt(ww, n), getsAt("notify", n), atLeast, 0.7))
	}
	out = append(out,
		ratioTarget("6. cp's HTTP API: puts at 32 clients ≥ 0.7× walwatch direct", puts(http), puts(ww), atLeast, 0.7),
		ratioTarget("6. cp's HTTP API: gets at 32 clients ≥ 0.7× walwatch direct", getsAt(http, "32"), getsAt(ww, "32"), atLeast, 0.7),
		ratioTarget("7. etcd API: puts at 32 clients, watched, ≥ 1.2× etcd", puts(api), puts("etcd"), atLeast, 1.2),
		ratioTarget("7. etcd API: gets at 1 client ≥ 1.0× etcd", getsAt(api, "1"), getsAt("etcd", "1"), atLeast, 1),
		ratioTarget("7. etcd API: gets at 32 clients ≥ 1.0× etcd", getsAt(api, "32"), getsAt("etcd", "32"), atLeast, 1),
		ratioTarget("7. etcd API: idle round trip p50 ≤ etcd's", idle(api, "p50"), idle("etcd", "p50"), atMost, 1),
		ratioTarget("7. etcd API: idle round trip p99 ≤ etcd's", idle(api, "p99"), idle("etcd", "p99"), atMost, 1),
		ratioTarget("8. etcd API: puts at 32 clients, watched, ≥ 3× kine", puts(api), puts("kine"), atLeast, 3),
		ratioTarget("8. etcd API: idle put→event p50 below kine's", idle(api, "p50"), idle("kine", "p50"), below, 1),
		absolute("9. Memory per idle hub watcher ≤ 2 KiB", memory(ww), atMost, 2048),
		ratioTarget("9. Memory per idle etcd-API watcher, one stream, ≤ 2× etcd's", memory(api), memory("etcd"), atMost, 2),
		ratioTarget("10. CPU per 10,000 puts, every process counted, ≤ 0.8× etcd's", cpu(ww), cpu("etcd"), atMost, 0.8),
		ratioTarget("11. Puts at 32 clients, watched, ≥ 1.5× etcd", puts(ww), puts("etcd"), atLeast, 1.5),
		ratioTarget("11. Puts at 32 clients, watched, ≥ 4× notify", puts(ww), puts("notify"), atLeast, 4),
		ratioTarget("11. Fan-out to 10,000 watchers p99 ≤ 0.2× etcd's", fanout(ww), fanout("etcd"), atMost, 0.2),
		absolute("11. Catch-up ≥ 300,000 events/s", catchup, atLeast, 300000),
		ratioTarget("Issue 18. Bytes the disk wrote per put ≤ 0.5× etcd's", disk(ww), disk("etcd"), atMost, 0.5),
	)
	return out
}

// writeDiskSection writes the table of disk writes per put and what they
// were.
func writeDiskSection(b *strings.Builder, r *Results) {
	b.WriteString("## Disk writes per put (lower is better)\n\n")
	b.WriteString("Bytes the disk wrote while 8 clients put 10,000 values of 128 bytes over 10,000 keys, one watcher attached, " +
		"between a checkpoint before and one after (the device's own count of sectors written, after a sync, one system at a time), " +
		"and what /proc/<pid>/io's write_bytes says for the same processes, which counts whole page-cache folios dirtied " +
		"(up to 2 MiB for a rewritten 8 KiB WAL page on this kernel), not bytes written. " +
		"For PostgreSQL: its WAL records (with the full-page images among them) and the data pages it wrote back; " +
		"for etcd its WAL's own count; for both, how many times they flushed their WAL, each flush writing at least the WAL page it ends in " +
		"(PostgreSQL's are 8 KiB).\n\n")
	t := table{header: []string{"system", "disk writes", "÷ etcd", "write_bytes (/proc)", "WAL", "of which page images", "data pages", "WAL flushes per put"}}
	for _, sys := range systems(r) {
		v, ok := mapValue(r.DiskWriteBytesPerPut, sys)
		if !ok {
			continue
		}
		e, eok := mapValue(r.DiskWriteBytesPerPut, "etcd")
		q, qok := ratio(v, ok, e, eok)
		row := []string{sys, fmtBytes(v), orDash(q, qok, fmtRatio), dash, dash, dash, dash, dash}
		if d := r.DiskWrites[sys]; d != nil {
			row[3], row[4] = fmtBytes(d.ProcWriteBytes), fmtBytes(d.WALBytes)
			if d.WALSyncs != 0 {
				row[7] = fmt.Sprintf("%.3f", d.WALSyncs)
			}
			if d.WALByRecord != nil {
				row[5], row[6] = fmtBytes(d.FPIBytes), fmtBytes(d.DataPageBytes)
			}
		}
		t.rows = append(t.rows, row)
	}
	t.write(b)
	if d := r.DiskWrites["walwatch"]; d != nil && len(d.WALByRecord) > 0 {
		b.WriteString("walwatch's WAL per put by record type (records with their page images), largest first:\n\n")
		wt := table{header: []string{"record", "bytes per put"}}
		for _, k := range topRecords(d.WALByRecord, 8) {
			wt.rows = append(wt.rows, []string{k, fmtBytes(d.WALByRecord[k])})
		}
		wt.write(b)
	}
}

// ceiling is what a front-door target needs, the best the front door and
// the direct operation allow together, and what was measured.
type ceiling struct {
	target                string
	needs, best, measured float64
	ok                    bool
	format                func(float64) string
}

// evalCeilings computes the best possible figures of targets 6, 7 and 8
// (those through cp) from walwatch's direct figure and the front door's
// noop at the same number of clients: a rate of at most
// 1 ÷ (1/direct + 1/noop), a round trip of at least direct's plus one noop.
func evalCeilings(r *Results) []ceiling {
	rate := func(name, sys string, m metric, n string, other string, factor float64) ceiling {
		direct, dok := sysValue(r, "walwatch", m, n)
		noop, nok := sysValue(r, sys, noops, n)
		measured, mok := sysValue(r, sys, m, n)
		base, bok := sysValue(r, other, m, n)
		c := ceiling{target: name, ok: dok && nok && mok && bok && direct > 0 && noop > 0, format: fmtCount}
		if c.ok {
			c.needs, c.best, c.measured = factor*base, 1/(1/direct+1/noop), measured
		}
		return c
	}
	const http, api = "walwatch_http", "walwatch_etcd"
	rtt := func() ceiling {
		direct, dok := sysValue(r, "walwatch", rttIdle, "p50")
		noop, nok := sysValue(r, api, noops, "1")
		measured, mok := sysValue(r, api, rttIdle, "p50")
		base, bok := sysValue(r, "etcd", rttIdle, "p50")
		c := ceiling{target: "7. etcd API idle round trip p50 ≤ etcd's", ok: dok && nok && mok && bok && noop > 0, format: fmtUs}
		if c.ok {
			c.needs, c.best, c.measured = base, direct+1e6/noop, measured
		}
		return c
	}
	return []ceiling{
		rate("6. HTTP puts at 32 clients ≥ 0.7× walwatch direct", http, putWatched, "32", "walwatch", 0.7),
		rate("6. HTTP gets at 32 clients ≥ 0.7× walwatch direct", http, gets, "32", "walwatch", 0.7),
		rate("7. etcd API puts at 32 clients ≥ 1.2× etcd", api, putWatched, "32", "etcd", 1.2),
		rate("7. etcd API gets at 1 client ≥ 1.0× etcd", api, gets, "1", "etcd", 1),
		rate("7. etcd API gets at 32 clients ≥ 1.0× etcd", api, gets, "32", "etcd", 1),
		rtt(),
		rate("8. etcd API puts at 32 clients ≥ 3× kine", api, putWatched, "32", "kine", 3),
	}
}

// ---- chart ----

var (
	colWhite = color.RGBA{0xff, 0xff, 0xff, 0xff}
	colText  = color.RGBA{0x20, 0x20, 0x20, 0xff}
	colMuted = color.RGBA{0x70, 0x70, 0x70, 0xff}
	colGrid  = color.RGBA{0xe0, 0xe0, 0xe0, 0xff}
	colAxis  = color.RGBA{0x40, 0x40, 0x40, 0xff}

	systemColours = map[string]color.RGBA{
		"walwatch":      {0x1f, 0x5f, 0xb4, 0xff}, // blue
		"walwatch_http": {0x6b, 0xae, 0xd6, 0xff}, // light blue
		"walwatch_etcd": {0x26, 0xa6, 0x9a, 0xff}, // teal
		"notify":        {0xd6, 0x4f, 0x3c, 0xff}, // red
		"etcd":          {0x3a, 0x9a, 0x3a, 0xff}, // green
		"kine":          {0xc2, 0x4f, 0x9e, 0xff}, // magenta
		"floor":         {0xb0, 0xb0, 0x30, 0xff}, // olive
	}
	extraColours = []color.RGBA{
		{0x8e, 0x5e, 0xb0, 0xff}, // purple
		{0xe0, 0x9a, 0x20, 0xff}, // orange
		{0x8c, 0x6d, 0x4e, 0xff}, // brown
		{0x90, 0x90, 0x90, 0xff}, // grey
	}
)

func systemColour(sys string, extraIndex int) color.RGBA {
	if c, ok := systemColours[sys]; ok {
		return c
	}
	return extraColours[extraIndex%len(extraColours)]
}

var face = basicfont.Face7x13

// textWidth is the width of s drawn at the given scale.
func textWidth(s string, scale int) int {
	return font.MeasureString(face, s).Ceil() * scale
}

// drawText draws s with its top-left corner at (x, y), the font scaled up by
// an integer factor (nearest neighbour) so that headings stay readable.
func drawText(dst draw.Image, x, y int, s string, c color.Color, scale int) {
	if s == "" {
		return
	}
	if scale < 1 {
		scale = 1
	}
	w := font.MeasureString(face, s).Ceil()
	h := face.Height
	mask := image.NewAlpha(image.Rect(0, 0, w, h))
	d := font.Drawer{Dst: mask, Src: image.Opaque, Face: face, Dot: fixed.P(0, face.Ascent)}
	d.DrawString(s)
	if scale > 1 {
		big := image.NewAlpha(image.Rect(0, 0, w*scale, h*scale))
		for py := 0; py < h*scale; py++ {
			for px := 0; px < w*scale; px++ {
				big.SetAlpha(px, py, mask.AlphaAt(px/scale, py/scale))
			}
		}
		mask = big
	}
	r := image.Rect(x, y, x+mask.Bounds().Dx(), y+mask.Bounds().Dy())
	draw.DrawMask(dst, r, image.NewUniform(c), image.Point{}, mask, image.Point{}, draw.Over)
}

func fillRect(dst draw.Image, r image.Rectangle, c color.Color) {
	draw.Draw(dst, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// niceStep is a round tick step (1, 2, 2.5 or 5 × 10^n) giving about n ticks up to max.
func niceStep(max float64, n int) float64 {
	if max <= 0 {
		return 1
	}
	raw := max / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// compact formats a throughput briefly with the given decimals in
// thousands or millions: 950, 12.3k, 1.25M (trailing zeros dropped).
func compact(v float64, decimals int) string {
	trim := func(s string) string {
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		return s
	}
	switch a := math.Abs(v); {
	case a >= 1e6:
		return trim(strconv.FormatFloat(v/1e6, 'f', decimals, 64)) + "M"
	case a >= 1e3:
		return trim(strconv.FormatFloat(v/1e3, 'f', decimals, 64)) + "k"
	}
	return trim(strconv.FormatFloat(v, 'f', decimals, 64))
}

// barLabel is the figure written above a bar: 950, 12.3k, 1.25M.
func barLabel(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return compact(v, 2)
	case a >= 1e3:
		return compact(v, 1)
	}
	return compact(v, 0)
}

// tickDecimals is how many decimals compact needs to show multiples of step
// exactly, up to top.
func tickDecimals(step, top float64) int {
	unit := 1.0
	switch {
	case top >= 1e6:
		unit = 1e6
	case top >= 1e3:
		unit = 1e3
	}
	u := step / unit
	for d := 0; d < 3; d++ {
		x := u * math.Pow(10, float64(d))
		if math.Abs(x-math.Round(x)) < 1e-6 {
			return d
		}
	}
	return 3
}

func drawChart(r *Results) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, chartWidth, chartHeight))
	fillRect(img, img.Bounds(), colWhite)

	// Systems shown: the four known ones, plus any other with put figures.
	var syss []string
	var cols []color.RGBA
	extra := 0
	for _, s := range systems(r) {
		known := systemColours[s] != (color.RGBA{})
		if !known {
			if r.Systems[s] == nil || len(r.Systems[s].PutPerS) == 0 {
				continue
			}
		}
		syss = append(syss, s)
		cols = append(cols, systemColour(s, extra))
		if !known {
			extra++
		}
	}

	// Title, centred, twice the font size.
	drawText(img, (chartWidth-textWidth(chartTitle, 2))/2, 12, chartTitle, colText, 2)

	// Legend, centred under the title.
	const sw, gap = 14, 22
	lw := 0
	for _, s := range syss {
		lw += sw + 6 + textWidth(s, 1) + gap
	}
	lw -= gap
	lx, ly := (chartWidth-lw)/2, 50
	for i, s := range syss {
		fillRect(img, image.Rect(lx, ly, lx+sw, ly+sw), cols[i])
		drawText(img, lx+sw+6, ly+1, s, colText, 1)
		lx += sw + 6 + textWidth(s, 1) + gap
	}

	// Plot area.
	left, right, top, bottom := 78, chartWidth-24, 92, chartHeight-62
	maxV := 0.0
	for _, s := range syss {
		for _, k := range putClients {
			if v, ok := sysValue(r, s, putWatched, k); ok && v > maxV {
				maxV = v
			}
		}
	}
	step := niceStep(maxV*1.08, 5)
	yMax := step * math.Ceil(maxV*1.08/step)
	if yMax <= 0 {
		yMax = step * 5
	}
	y := func(v float64) int {
		return bottom - int(math.Round(v/yMax*float64(bottom-top)))
	}
	stepDecimals := tickDecimals(step, yMax)
	for i := 0; ; i++ {
		v := float64(i) * step
		if v > yMax+step/2 {
			break
		}
		py := y(v)
		if i > 0 {
			fillRect(img, image.Rect(left+1, py, right, py+1), colGrid)
		}
		fillRect(img, image.Rect(left-5, py, left, py+1), colAxis)
		lbl := compact(v, stepDecimals)
		drawText(img, left-9-textWidth(lbl, 1), py-6, lbl, colText, 1)
	}
	// Y axis caption above the tick labels.
	drawText(img, left-9-textWidth("puts/s", 1), top-24, "puts/s", colText, 1)

	// Groups of bars, one group per client count.
	groupW := float64(right-left) / float64(len(putClients))
	n := len(syss)
	barW := int(groupW * 0.8 / float64(max(n, 1)))
	barW = max(barW, 2)
	for g, k := range putClients {
		gx := left + int(float64(g)*groupW)
		x0 := gx + (int(groupW)-barW*n)/2
		for i, s := range syss {
			bx := x0 + i*barW
			v, ok := sysValue(r, s, putWatched, k)
			if !ok {
				lbl := "n/a"
				if textWidth(lbl, 1) <= barW {
					drawText(img, bx+(barW-textWidth(lbl, 1))/2, bottom-15, lbl, colMuted, 1)
				}
				continue
			}
			by := y(math.Max(v, 0))
			fillRect(img, image.Rect(bx+1, by, bx+barW-1, bottom), cols[i])
			lbl := barLabel(v)
			if textWidth(lbl, 1) <= barW {
				drawText(img, bx+(barW-textWidth(lbl, 1))/2, by-15, lbl, colText, 1)
			}
		}
		lbl := k + " clients"
		if k == "1" {
			lbl = "1 client"
		}
		drawText(img, gx+(int(groupW)-textWidth(lbl, 2))/2, bottom+10, lbl, colText, 2)
	}
	// Axes.
	fillRect(img, image.Rect(left, top, left+1, bottom+1), colAxis)
	fillRect(img, image.Rect(left, bottom, right, bottom+1), colAxis)

	if maxV == 0 {
		msg := "no put figures measured"
		drawText(img, left+(right-left-textWidth(msg, 2))/2, (top+bottom)/2-13, msg, colMuted, 2)
	}

	// Footer: provenance.
	var foot []string
	if r.Meta.Rounds > 0 {
		foot = append(foot, fmt.Sprintf("median of %d rounds", r.Meta.Rounds))
	}
	if r.Meta.Quick {
		foot = append(foot, "quick run")
	}
	if c := strings.TrimSpace(r.Meta.Commit); c != "" {
		foot = append(foot, "commit "+c)
	}
	if d := strings.TrimSpace(r.Meta.Date); d != "" {
		foot = append(foot, d)
	}
	if len(foot) > 0 {
		s := asciiOnly(strings.Join(foot, " | "))
		drawText(img, right-textWidth(s, 1), chartHeight-18, s, colMuted, 1)
	}
	return img
}

// asciiOnly replaces what basicfont cannot draw.
func asciiOnly(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/chaos/check"
)

// TestChaos runs histories of clients, watchers and faults and checks
// each. Without CHAOS_HISTORIES it is a short run of random seeds; -seed N
// replays one history.
func TestChaos(t *testing.T) {
	cfg, err := configFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	base := *seedFlag
	if base == 0 {
		base = rand.Int64N(1<<53) + 1
	}
	fmt.Printf("chaos: %d histories from seed %d (%v of traffic, %d faults, %d clients, %d watchers each); replay one with -seed N\n",
		cfg.histories, base, cfg.traffic, cfg.faults, cfg.clients, cfg.watchers)
	t.Logf("chaos: %d histories from seed %d", cfg.histories, base)

	rep := &report{cfg: cfg, start: time.Now()}
	for i := range cfg.histories {
		seed := base + int64(i)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rep.add(runHistory(t, cfg, seed))
		})
	}
	rep.elapsed = time.Since(rep.start)
	if cfg.report != "" {
		path, err := filepath.Abs(cfg.report)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(rep.markdown()), 0o644); err != nil {
			t.Fatalf("write the report: %v", err)
		}
		t.Logf("report written to %s", path)
	}
	t.Logf("\n%s", rep.summary())
}

// historyResult is what a history reports.
type historyResult struct {
	seed      int64
	ops       int
	events    int
	reads     int
	faults    []check.Fault
	anomalies []check.Anomaly
	harness   []string // what went wrong in the harness (not anomalies)
	elapsed   time.Duration
}

// runHistory runs one history: setup, traffic with faults, drain, checks.
func runHistory(t *testing.T, cfg config, seed int64) historyResult {
	started := time.Now()
	res := historyResult{seed: seed}
	// In every other history cp reads keys from a keyspace copy
	// (--keyspace-copy), so both of its read paths face every fault.
	keyspaceCopy := seed%2 == 1
	t.Logf("seed %d, keyspace copy %v", seed, keyspaceCopy)
	ctx := t.Context()
	plan := schedule(seed, cfg.traffic, cfg.faults)
	e := newEnv(t, ctx, slices.ContainsFunc(plan, func(p plannedFault) bool { return p.kind == faultFailover }), keyspaceCopy)
	r := &run{e: e, rec: newRecorder()}

	clients := make([]*client, cfg.clients)
	for i := range clients {
		clients[i] = newClient(i, r, seed)
	}
	watchers := make([]*watcher, cfg.watchers)
	for i := range watchers {
		watchers[i] = newWatcher(i, r, seed)
	}
	f := &faulter{r: r, watchers: watchers, client: cfg.clients}

	traffic, endTraffic := context.WithTimeout(ctx, cfg.traffic)
	defer endTraffic()
	stopWatch, stopWatchers := context.WithCancel(context.Background())
	defer stopWatchers()
	var wwg, cwg sync.WaitGroup
	for _, w := range watchers {
		wwg.Go(func() { w.loop(traffic, stopWatch) })
	}
	for _, c := range clients {
		cwg.Go(func() { c.loop(traffic) })
	}
	var faultErrs []error
	cwg.Go(func() { faultErrs = f.runFaults(traffic, plan) })
	cwg.Wait()
	for _, err := range faultErrs {
		res.harness = append(res.harness, err.Error())
	}

	// Drain: everything is up again; wait until every watcher has all of
	// history, then read the fixed-revision reads once more through each
	// API.
	drainCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := e.cp.waitReady(drainCtx); err != nil {
		res.harness = append(res.harness, fmt.Sprintf("drain: %v", err))
	}
	var final int64
	if err := retry(drainCtx, func(ctx context.Context) error {
		return e.admin.QueryRow(ctx, `select walwatch.current_revision()`).Scan(&final)
	}); err != nil {
		res.harness = append(res.harness, fmt.Sprintf("drain: the final revision: %v", err))
	}
	if err := waitCaughtUp(drainCtx, watchers, final); err != nil {
		res.anomalies = append(res.anomalies, check.Anomaly{Check: "watch", Detail: err.Error()})
	}
	reader := newClient(cfg.clients+1, r, seed)
	for i := range r.rec.readCount() {
		for _, via := range []string{"etcd", "http", "sql"} {
			rd, idx, _ := r.rec.readAt(i)
			r.rec.answer(idx, reader.readAgain(via, rd))
		}
	}
	stopWatchers()
	wwg.Wait()

	h := r.rec.history()
	h.Seed = seed
	if err := readAudit(drainCtx, e, h); err != nil {
		res.harness = append(res.harness, err.Error())
	}
	res.faults = h.Faults

	checked := check.Run(ctx, h, cfg.linTimeout)
	res.ops, res.events, res.reads = checked.Ops, checked.Events, checked.Reads
	res.anomalies = append(res.anomalies, checked.Anomalies...)
	res.elapsed = time.Since(started)
	t.Logf("seed %d: %d ops (%s), %d events, %d reads, %d watches (%s), %d committed rows up to revision %d (compacted %d), %d faults, %d anomalies, %v",
		seed, res.ops, opStats(h), res.events, res.reads, len(h.Watches), watchStats(h), len(h.Committed), final, h.Compacted,
		len(h.Faults), len(res.anomalies), res.elapsed.Round(time.Millisecond))
	if len(res.anomalies) > 0 || len(res.harness) > 0 {
		t.Errorf("history failed: replay it with -seed %d\n%s", seed, failureText(res))
		if path, err := dumpHistory(h); err == nil {
			t.Logf("history written to %s", path)
		}
	}
	return res
}

// opStats counts operations by status.
func opStats(h *check.History) string {
	var ok, failed, unknown int
	for _, op := range h.Ops {
		switch op.Status {
		case check.OK:
			ok++
		case check.Failed:
			failed++
		default:
			unknown++
		}
	}
	return fmt.Sprintf("%d ok, %d failed, %d unknown", ok, failed, unknown)
}

// watchStats counts how watches ended.
func watchStats(h *check.History) string {
	var compacted, broken int
	for _, w := range h.Watches {
		if n := len(w.Responses); n > 0 && w.Responses[n-1].Ended {
			if w.Responses[n-1].Compacted > 0 {
				compacted++
			} else {
				broken++
			}
		}
	}
	return fmt.Sprintf("%d ended compacted, %d broken", compacted, broken)
}

// waitCaughtUp polls until every watcher's current watch has delivered up
// to rev, by event or progress mark.
func waitCaughtUp(ctx context.Context, watchers []*watcher, rev int64) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var behind []string
		for _, w := range watchers {
			if p := w.pos.Load(); p < rev {
				behind = append(behind, fmt.Sprintf("watcher %d (%s, %s) at %d", w.id, w.via, w.key, p))
			}
		}
		if len(behind) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: watchers still behind revision %d after %v: %s", rev, drainTimeout, strings.Join(behind, "; "))
		case <-tick.C:
		}
	}
}

// readAudit fills in what committed and the compacted revision.
func readAudit(ctx context.Context, e *env, h *check.History) error {
	err := retry(ctx, func(ctx context.Context) error {
		rows, err := e.admin.Query(ctx, `select revision, sub, key, coalesce(value, ''::bytea), tombstone, create_revision,
			version, prev_revision, lease from chaos.audit order by revision, sub`)
		if err != nil {
			return err
		}
		defer rows.Close()
		h.Committed = h.Committed[:0]
		for rows.Next() {
			var row check.Row
			var key, value []byte
			if err := rows.Scan(&row.Revision, &row.Sub, &key, &value, &row.Tombstone, &row.CreateRevision,
				&row.Version, &row.PrevRevision, &row.Lease); err != nil {
				return err
			}
			row.Key, row.Value = string(key), string(value)
			h.Committed = append(h.Committed, row)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return e.admin.QueryRow(ctx, `select compact_revision from walwatch.meta`).Scan(&h.Compacted)
	})
	if err != nil {
		return fmt.Errorf("read the audit: %w", err)
	}
	return nil
}

// failureText says what a failed history needs to be understood: its
// fault schedule and each anomaly's detail.
func failureText(res historyResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d\nfaults:\n", res.seed)
	for _, f := range res.faults {
		fmt.Fprintf(&b, "  %-22s %8v .. %v\n", f.Kind, f.Start.Round(time.Millisecond), f.End.Round(time.Millisecond))
	}
	for _, a := range res.anomalies {
		fmt.Fprintf(&b, "anomaly (%s): %s\n", a.Check, a.Detail)
	}
	for _, s := range res.harness {
		fmt.Fprintf(&b, "harness: %s\n", s)
	}
	return b.String()
}

// dumpHistory writes h as JSON to a temporary file, for the checker's
// authors.
func dumpHistory(h *check.History) (string, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("walwatch-chaos-%d.json", h.Seed))
	return path, os.WriteFile(path, b, 0o644)
}

// ---- the report ----

// report adds up a run's histories.
type report struct {
	cfg     config
	start   time.Time
	elapsed time.Duration

	mu        sync.Mutex
	histories []historyResult
}

func (r *report) add(h historyResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.histories = append(r.histories, h)
}

type totals struct {
	ops, events, reads, anomalies, harness int
	faults                                 map[string]int
}

func (r *report) totals() totals {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := totals{faults: make(map[string]int)}
	for _, h := range r.histories {
		t.ops += h.ops
		t.events += h.events
		t.reads += h.reads
		t.anomalies += len(h.anomalies)
		t.harness += len(h.harness)
		for _, f := range h.faults {
			t.faults[f.Kind]++
		}
	}
	return t
}

func (r *report) summary() string {
	t := r.totals()
	return fmt.Sprintf("chaos: %d histories, %d operations, %d events, %d reads checked, faults %s, %d anomalies, %d harness errors, %v",
		len(r.histories), t.ops, t.events, t.reads, faultCounts(t.faults), t.anomalies, t.harness, r.elapsed.Round(time.Second))
}

func faultCounts(m map[string]int) string {
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func (r *report) markdown() string {
	t := r.totals()
	var b strings.Builder
	fmt.Fprintf(&b, "# walwatch chaos report\n\n")
	fmt.Fprintf(&b, "%s, %v, each history %v of traffic with %d faults, %d clients, %d watchers.\n\n",
		r.start.UTC().Format(time.RFC3339), r.elapsed.Round(time.Second), r.cfg.traffic, r.cfg.faults, r.cfg.clients, r.cfg.watchers)
	fmt.Fprintf(&b, "| | |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| histories | %d |\n| operations | %d |\n| events checked | %d |\n| reads checked | %d |\n| anomalies | %d |\n| harness errors | %d |\n| time | %v |\n\n",
		len(r.histories), t.ops, t.events, t.reads, t.anomalies, t.harness, r.elapsed.Round(time.Second))
	fmt.Fprintf(&b, "## Faults injected\n\n| kind | count |\n| --- | --- |\n")
	for _, k := range faultKinds {
		fmt.Fprintf(&b, "| %s | %d |\n", k, t.faults[k])
	}
	fmt.Fprintf(&b, "\n## Histories\n\n| seed | operations | events | reads | faults | anomalies | time |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.histories {
		var kinds []string
		for _, f := range h.faults {
			kinds = append(kinds, f.Kind)
		}
		fmt.Fprintf(&b, "| %d | %d | %d | %d | %s | %d | %v |\n", h.seed, h.ops, h.events, h.reads, strings.Join(kinds, ", "),
			len(h.anomalies)+len(h.harness), h.elapsed.Round(time.Second))
	}
	for _, h := range r.histories {
		if len(h.anomalies) > 0 || len(h.harness) > 0 {
			fmt.Fprintf(&b, "\n## Seed %d\n\n```\n%s```\n", h.seed, failureText(h))
		}
	}
	return b.String()
}

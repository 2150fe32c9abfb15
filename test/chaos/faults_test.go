package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/test/chaos/check"
	"github.com/walwatch/walwatch/test/pgcluster"
)

// The fault kinds. Each is injected and undone by inject, and a history
// ends with everything up again.
const (
	faultPGFast    = "pg-restart-fast"      // PostgreSQL stopped (fast: clients disconnected, checkpoint) and started
	faultPGImm     = "pg-restart-immediate" // PostgreSQL killed (immediate: a crash, WAL recovery) and started
	faultWalsender = "walsender-kill"       // cp's WAL sender ended with pg_terminate_backend
	faultSlotDrop  = "slot-drop"            // cp's slot dropped (its WAL sender ended first, then dropped in a retry loop)
	faultCPKill    = "cp-kill"              // cp killed with SIGKILL, then started again on the same addresses
	faultNetCut    = "net-cut"              // every connection between PostgreSQL and cp, SQL clients and the Go hub reset
	faultNetStall  = "net-stall"            // those connections black-holed for a while, then restored (or cut)
	faultHolder    = "holder"               // a SQL session holds a revision (begin; walwatch.put; wait) then commits or rolls back
	faultCompact   = "compact-catchup"      // every watcher resumes from an older revision while history is compacted under it
	faultFailover  = "failover"             // the primary killed (every process stopped, then killed) and its synchronous standby promoted
)

// faultKinds is every kind a schedule draws from. A schedule has at most one
// failover: there is one standby.
var faultKinds = []string{faultPGFast, faultPGImm, faultWalsender, faultSlotDrop, faultCPKill, faultNetCut,
	faultNetStall, faultHolder, faultCompact, faultFailover}

// plannedFault is one fault of a schedule: what, when (from the history's
// start), and the seed of its own choices (how long, commit or not).
type plannedFault struct {
	kind string
	at   time.Duration
	seed uint64
}

// schedule draws n faults over the traffic, from the seed alone: kinds
// from a shuffled list (so a history gets different kinds), one in each
// n-th of the traffic, at a random moment in its first half.
func schedule(seed int64, traffic time.Duration, n int) []plannedFault {
	rnd := rand.New(rand.NewPCG(uint64(seed), 0xfa017))
	var kinds []string
	for len(kinds) < n {
		k := append([]string(nil), faultKinds...)
		if len(kinds) > 0 {
			k = slices.DeleteFunc(k, func(kind string) bool { return kind == faultFailover })
		}
		rnd.Shuffle(len(k), func(i, j int) { k[i], k[j] = k[j], k[i] })
		kinds = append(kinds, k...)
	}
	var plan []plannedFault
	if n == 0 {
		return plan
	}
	slot := traffic / time.Duration(n)
	for i := range n {
		at := time.Duration(i)*slot + time.Duration(rnd.Int64N(int64(slot/2)+1))
		plan = append(plan, plannedFault{kind: kinds[i], at: max(at, 500*time.Millisecond), seed: rnd.Uint64()})
	}
	return plan
}

// faulter injects a schedule's faults, one at a time.
type faulter struct {
	r        *run
	watchers []*watcher
	client   int // the client ID of the operations faults make (a holder's put, a compaction)
	seq      int
}

// runFaults injects plan until traffic ends; a fault that is under way
// when it ends is finished and undone first. It returns what went wrong
// injecting them (a harness failure, not an anomaly).
func (f *faulter) runFaults(traffic context.Context, plan []plannedFault) []error {
	var errs []error
	for _, p := range plan {
		select {
		case <-traffic.Done():
			return errs
		case <-time.After(p.at - f.r.rec.now()):
		}
		rnd := rand.New(rand.NewPCG(p.seed, 1))
		// Its own deadline: undoing a fault must not stop with the traffic.
		ctx, cancel := context.WithTimeout(context.Background(), 2*readyTimeout)
		start := f.r.rec.now()
		err := f.inject(ctx, p.kind, rnd)
		f.r.rec.fault(check.Fault{Kind: p.kind, Start: start, End: f.r.rec.now()})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("fault %s at %v: %w", p.kind, start, err))
		}
	}
	return errs
}

func (f *faulter) inject(ctx context.Context, kind string, rnd *rand.Rand) error {
	e := f.r.e
	hold := time.Duration(500+rnd.IntN(2500)) * time.Millisecond
	switch kind {
	case faultPGFast:
		return e.pg.Restart(ctx, pgcluster.StopFast)
	case faultPGImm:
		return e.pg.Restart(ctx, pgcluster.StopImmediate)
	case faultWalsender:
		return f.terminateWalsender(ctx)
	case faultSlotDrop:
		return f.dropSlot(ctx)
	case faultCPKill:
		e.cp.kill()
		return e.cp.restart(ctx)
	case faultNetCut:
		e.cut()
		return nil
	case faultNetStall:
		e.blackhole()
		err := sleep(ctx, hold)
		if rnd.IntN(2) == 0 {
			e.cut()
		}
		e.restore()
		return err
	case faultFailover:
		return f.failover(ctx)
	case faultHolder:
		return f.holdRevision(ctx, hold, rnd.IntN(2) == 0)
	case faultCompact:
		for _, w := range f.watchers {
			w.nudge()
		}
		return f.compact(ctx, rnd)
	}
	return fmt.Errorf("unknown fault kind %q", kind)
}

// failover kills the primary and promotes its synchronous standby, which
// everything behind the proxies finds by itself; the harness's own
// connections move to it.
func (f *faulter) failover(ctx context.Context) error {
	e := f.r.e
	if e.standby == nil {
		return errors.New("failover: no standby")
	}
	if err := e.pg.Kill(ctx); err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	if err := e.standby.Promote(ctx); err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	direct := e.standby.ConnString(database)
	admin, err := pgxpool.New(ctx, direct)
	if err != nil {
		return fmt.Errorf("failover: connect to the new primary: %w", err)
	}
	old := e.admin
	e.pg, e.standby, e.direct, e.admin = e.standby, nil, direct, admin
	old.Close()
	return nil
}

// sleep waits d: a fault's own duration, not a wait for a result.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// retry runs fn until it succeeds or ctx ends: the harness's own
// statements meet a server that is restarting, now and then.
func retry(ctx context.Context, fn func(context.Context) error) error {
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if sleep(ctx, 20*time.Millisecond) != nil {
			return fmt.Errorf("%w (giving up: %v)", err, ctx.Err())
		}
	}
}

func (f *faulter) terminateWalsender(ctx context.Context) error {
	return retry(ctx, func(ctx context.Context) error {
		_, err := f.r.e.admin.Exec(ctx, `select pg_terminate_backend(active_pid) from pg_replication_slots
			where slot_name = $1 and active_pid is not null`, f.r.e.slot)
		if err != nil {
			return fmt.Errorf("terminate the walsender of %s: %w", f.r.e.slot, err)
		}
		return nil
	})
}

// dropSlot drops cp's slot, which is active: it ends the WAL sender, then
// drops it before cp reconnects, which takes a few tries now and then.
func (f *faulter) dropSlot(ctx context.Context) error {
	return retry(ctx, func(ctx context.Context) error {
		if _, err := f.r.e.admin.Exec(ctx, `select pg_terminate_backend(active_pid) from pg_replication_slots
			where slot_name = $1 and active_pid is not null`, f.r.e.slot); err != nil {
			return fmt.Errorf("terminate the walsender of %s: %w", f.r.e.slot, err)
		}
		_, err := f.r.e.admin.Exec(ctx, `select pg_drop_replication_slot($1)`, f.r.e.slot)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42704" { // undefined_object: gone already
			return nil
		}
		if err != nil {
			return fmt.Errorf("drop slot %s: %w", f.r.e.slot, err)
		}
		return nil
	})
}

// holdRevision puts a key in a transaction it keeps open for hold, so
// that the revision it took holds every watcher back, then commits it or
// rolls it back. The put is recorded as an operation of the fault's
// client: a rolled-back one certainly did not happen.
func (f *faulter) holdRevision(ctx context.Context, hold time.Duration, commit bool) error {
	f.seq++
	op := check.Op{Client: f.client, Via: "sql", Kind: check.Put, Key: allKeys[f.seq%len(allKeys)], Value: fmt.Sprintf("h%d-%d", f.client, f.seq)}
	op.Call = f.r.rec.now()
	err := f.holdTx(ctx, &op, hold, commit)
	op.Return = f.r.rec.now()
	switch {
	case err == nil && commit:
		op.Status = check.OK
	case err == nil:
		op.Status, op.Header, op.Err = check.Failed, 0, "rolled back by the harness"
	default:
		op.Status, op.Header, op.Err = check.Unknown, 0, err.Error()
	}
	f.r.rec.op(op)
	if op.Status == check.OK {
		f.r.sawRevision(op.Header)
	}
	return nil // a holder that fails is a fault that worked
}

func (f *faulter) holdTx(ctx context.Context, op *check.Op, hold time.Duration, commit bool) error {
	tx, err := f.r.e.admin.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := tx.QueryRow(ctx, `select walwatch.put($1, $2)`, []byte(op.Key), []byte(op.Value)).Scan(&op.Header); err != nil {
		return fmt.Errorf("walwatch.put: %w", err)
	}
	if err := sleep(ctx, hold); err != nil {
		return err
	}
	if !commit {
		return tx.Rollback(ctx)
	}
	return tx.Commit(ctx)
}

// compact compacts a little behind the newest revision, recorded as an
// operation of the fault's client.
func (f *faulter) compact(ctx context.Context, rnd *rand.Rand) error {
	op := check.Op{Client: f.client, Via: "sql", Kind: check.Compact, Revision: max(1, f.r.maxRev.Load()-int64(5+rnd.IntN(60)))}
	op.Call = f.r.rec.now()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	var removed int64
	err := sqlError(f.r.e.admin.QueryRow(octx, `select compact_revision, removed from walwatch.compact($1)`, op.Revision).Scan(&op.Header, &removed))
	cancel()
	op.Return = f.r.rec.now()
	var rf *refused
	switch {
	case err == nil:
		op.Status = check.OK
		f.r.sawCompacted(op.Revision)
	case errors.As(err, &rf):
		op.Status, op.Header, op.Err = check.Failed, 0, err.Error()
	default:
		op.Status, op.Header, op.Err = check.Unknown, 0, err.Error()
	}
	f.r.rec.op(op)
	return nil
}

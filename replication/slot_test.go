package replication_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/test/pgtest"
)

// slotPool connects to a fresh database of the shared cluster.
func slotPool(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, url
}

// testSlotName makes a slot name of the test's own. Slots are cluster-wide
// and other tests in the package use the same cluster, so the name carries
// the test's name and a random suffix.
func testSlotName(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("t_")
	for _, r := range strings.ToLower(t.Name()) {
		if b.Len() == 40 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteByte('_')
	b.WriteString(strings.ToLower(rand.Text()[:8]))
	return b.String()
}

// dropSlotAtEnd drops the slot when the test ends, before its database is
// dropped: PostgreSQL refuses to drop a database while one of its slots is
// active, and forcing waits for the walsender to let go.
func dropSlotAtEnd(t *testing.T, pool *pgxpool.Pool, name string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := replication.DropSlot(ctx, pool, name, true); err != nil && !errors.Is(err, replication.ErrSlotNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// mine keeps the slots with the given names: other tests' slots share the cluster.
func mine(slots []replication.SlotInfo, names ...string) []replication.SlotInfo {
	return slices.DeleteFunc(slots, func(s replication.SlotInfo) bool { return !slices.Contains(names, s.Name) })
}

func TestSlotRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, _ := slotPool(t)
	name := testSlotName(t)
	dropSlotAtEnd(t, pool, name)

	created, err := replication.CreateSlot(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if created.Name != name || created.ConfirmedFlushLSN == 0 {
		t.Fatalf("CreateSlot returned %+v", created)
	}

	slots, err := replication.ListSlots(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSortedFunc(slots, func(a, b replication.SlotInfo) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("ListSlots is not ordered by name: %+v", slots)
	}
	got := mine(slots, name)
	if len(got) != 1 {
		t.Fatalf("ListSlots has %d slots named %s, want 1: %+v", len(got), name, slots)
	}
	s := got[0]
	var dbname string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&dbname); err != nil {
		t.Fatal(err)
	}
	switch {
	case s.Plugin != "pgoutput", s.SlotType != "logical", s.Database != dbname:
		t.Errorf("slot is %s/%s in %q, want pgoutput/logical in %q", s.Plugin, s.SlotType, s.Database, dbname)
	case s.Temporary, s.Active, s.ActivePID != 0:
		t.Errorf("new slot: temporary %v, active %v, pid %d; want a persistent, inactive slot", s.Temporary, s.Active, s.ActivePID)
	case s.ConfirmedFlushLSN == 0, s.RestartLSN == 0, s.RestartLSN > s.ConfirmedFlushLSN:
		t.Errorf("restart_lsn %s, confirmed_flush_lsn %s", s.RestartLSN, s.ConfirmedFlushLSN)
	case s.WALHeldBytes < 0:
		t.Errorf("WALHeldBytes = %d", s.WALHeldBytes)
	case s.WALStatus != "reserved":
		t.Errorf("wal_status = %q, want reserved", s.WALStatus)
	case s.SafeWALSize != nil:
		t.Errorf("safe_wal_size = %d, want null (max_slot_wal_keep_size is -1)", *s.SafeWALSize)
	}
	if w := s.Warnings(replication.LargeWALHeld); len(w) != 1 || !strings.HasPrefix(w[0], "inactive:") {
		t.Errorf("Warnings = %q, want the inactive warning alone", w)
	}

	one, err := replication.GetSlot(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if one.Name != name || one.ConfirmedFlushLSN != s.ConfirmedFlushLSN || one.Plugin != "pgoutput" {
		t.Errorf("GetSlot = %+v, ListSlots had %+v", one, s)
	}

	if err := replication.DropSlot(ctx, pool, name, false); err != nil {
		t.Fatal(err)
	}
	if _, err := replication.GetSlot(ctx, pool, name); !errors.Is(err, replication.ErrSlotNotFound) {
		t.Fatalf("GetSlot after drop: %v, want ErrSlotNotFound", err)
	}
	slots, err = replication.ListSlots(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if got := mine(slots, name); len(got) != 0 {
		t.Fatalf("ListSlots after drop still has %+v", got)
	}
}

func TestCreateSlotDuplicate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, _ := slotPool(t)
	name := testSlotName(t)
	dropSlotAtEnd(t, pool, name)

	if _, err := replication.CreateSlot(ctx, pool, name); err != nil {
		t.Fatal(err)
	}
	_, err := replication.CreateSlot(ctx, pool, name)
	var se *replication.SlotError
	if !errors.Is(err, replication.ErrSlotExists) || !errors.As(err, &se) || se.Name != name {
		t.Fatalf("second CreateSlot: %v, want ErrSlotExists naming %s", err, name)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42710" {
		t.Errorf("the server's error is lost: %v", err)
	}
	if want := fmt.Sprintf("replication slot %q already exists", name); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

func TestSlotNotFound(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, _ := slotPool(t)
	name := testSlotName(t)

	for _, force := range []bool{false, true} {
		err := replication.DropSlot(ctx, pool, name, force)
		if !errors.Is(err, replication.ErrSlotNotFound) {
			t.Errorf("DropSlot(force=%v) of an unknown slot: %v, want ErrSlotNotFound", force, err)
		} else if want := fmt.Sprintf("slot %q does not exist", name); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := replication.GetSlot(ctx, pool, name); !errors.Is(err, replication.ErrSlotNotFound) {
		t.Errorf("GetSlot of an unknown slot: %v, want ErrSlotNotFound", err)
	}
}

// noServer is a Querier that fails the test if it is used.
type noServer struct{ t *testing.T }

func (n noServer) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	n.t.Errorf("Exec(%q) reached the server", sql)
	return pgconn.CommandTag{}, errors.New("no server")
}

func (n noServer) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	n.t.Errorf("Query(%q) reached the server", sql)
	return nil, errors.New("no server")
}

func (n noServer) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	n.t.Errorf("QueryRow(%q) reached the server", sql)
	return nil
}

func TestSlotNameValidation(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := noServer{t}
	for _, name := range []string{"", "Upper", "has-dash", "has space", "é", `quote"`, strings.Repeat("a", 64)} {
		if err := replication.ValidateSlotName(name); !errors.Is(err, replication.ErrInvalidSlotName) {
			t.Errorf("ValidateSlotName(%q) = %v, want ErrInvalidSlotName", name, err)
		}
		if _, err := replication.CreateSlot(ctx, q, name); !errors.Is(err, replication.ErrInvalidSlotName) {
			t.Errorf("CreateSlot(%q) = %v, want ErrInvalidSlotName", name, err)
		}
		if _, err := replication.GetSlot(ctx, q, name); !errors.Is(err, replication.ErrInvalidSlotName) {
			t.Errorf("GetSlot(%q) = %v, want ErrInvalidSlotName", name, err)
		}
		for _, force := range []bool{false, true} {
			if err := replication.DropSlot(ctx, q, name, force); !errors.Is(err, replication.ErrInvalidSlotName) {
				t.Errorf("DropSlot(%q, %v) = %v, want ErrInvalidSlotName", name, force, err)
			}
		}
	}
	for _, name := range []string{"a", "_", "walwatch_cp_1", strings.Repeat("z", 63)} {
		if err := replication.ValidateSlotName(name); err != nil {
			t.Errorf("ValidateSlotName(%q) = %v, want nil", name, err)
		}
	}
}

func TestDropActiveSlot(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pool, url := slotPool(t)
	name := testSlotName(t)
	dropSlotAtEnd(t, pool, name)
	if _, err := replication.CreateSlot(ctx, pool, name); err != nil {
		t.Fatal(err)
	}

	pgtest.ReadSlot(t, url, name)

	var (
		s   replication.SlotInfo
		err error
	)
	for {
		s, err = replication.GetSlot(ctx, pool, name)
		if err != nil {
			t.Fatal(err)
		}
		if s.Active {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("slot never became active: %+v", s)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if s.ActivePID == 0 {
		t.Fatalf("active slot without a pid: %+v", s)
	}
	if w := s.Warnings(replication.LargeWALHeld); len(w) != 0 {
		t.Errorf("active, fresh slot has warnings %q", w)
	}

	err = replication.DropSlot(ctx, pool, name, false)
	var se *replication.SlotError
	if !errors.Is(err, replication.ErrSlotActive) || !errors.As(err, &se) || se.PID != s.ActivePID {
		t.Fatalf("DropSlot of an active slot: %v, want ErrSlotActive with PID %d", err, s.ActivePID)
	}
	if want := fmt.Sprintf("is active for PID %d", s.ActivePID); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if _, err := replication.GetSlot(ctx, pool, name); err != nil {
		t.Fatalf("the refused drop dropped the slot: %v", err)
	}

	if err := replication.DropSlot(ctx, pool, name, true); err != nil {
		t.Fatalf("forced DropSlot: %v", err)
	}
	if _, err := replication.GetSlot(ctx, pool, name); !errors.Is(err, replication.ErrSlotNotFound) {
		t.Fatalf("GetSlot after forced drop: %v, want ErrSlotNotFound", err)
	}
	var alive bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", s.ActivePID).Scan(&alive); err != nil {
		t.Fatal(err)
	}
	if alive {
		t.Errorf("walsender %d still runs after the forced drop", s.ActivePID)
	}
}

func TestSlotWarnings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		slot replication.SlotInfo
		want []string
	}{
		{replication.SlotInfo{Active: true, WALHeldBytes: 1 << 20, WALStatus: "reserved"}, nil},
		{replication.SlotInfo{Active: false}, []string{"inactive: nothing is reading it, so it keeps WAL until dropped"}},
		{replication.SlotInfo{Active: true, WALHeldBytes: 3 << 30}, []string{"holds 3072 MiB of WAL"}},
		{replication.SlotInfo{Active: true, WALHeldBytes: 1<<30 - 1}, nil},
		{replication.SlotInfo{Active: true, WALStatus: "lost"}, []string{"invalidated: its WAL is gone (wal_status lost); drop it"}},
		{replication.SlotInfo{WALHeldBytes: 2 << 30, WALStatus: "lost"}, []string{
			"inactive: nothing is reading it, so it keeps WAL until dropped",
			"holds 2048 MiB of WAL",
			"invalidated: its WAL is gone (wal_status lost); drop it",
		}},
	}
	for _, tt := range tests {
		if got := tt.slot.Warnings(replication.LargeWALHeld); !slices.Equal(got, tt.want) {
			t.Errorf("%+v.Warnings() = %q, want %q", tt.slot, got, tt.want)
		}
	}
	// largeWAL <= 0 turns the size check off.
	if got := (replication.SlotInfo{Active: true, WALHeldBytes: 5 << 30}).Warnings(0); got != nil {
		t.Errorf("Warnings(0) = %q, want none", got)
	}
}

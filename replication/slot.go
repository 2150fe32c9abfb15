package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Querier is what slot admin needs: a *pgxpool.Pool, *pgx.Conn or pgx.Tx.
// Slot admin runs over an ordinary connection, not a replication one.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ Querier = (*pgxpool.Pool)(nil)
	_ Querier = (*pgx.Conn)(nil)
	_ Querier = pgx.Tx(nil)
)

var (
	// ErrSlotNotFound means no replication slot has the name.
	ErrSlotNotFound = errors.New("replication slot does not exist")
	// ErrSlotExists means a replication slot with the name is already there.
	ErrSlotExists = errors.New("replication slot already exists")
	// ErrSlotActive means a process is reading the slot, so it cannot be dropped.
	ErrSlotActive = errors.New("replication slot is active")
	// ErrInvalidSlotName means the name breaks PostgreSQL's rule for slot names.
	ErrInvalidSlotName = errors.New("invalid replication slot name")
)

// SlotError is the error about one named slot. errors.Is matches it against
// its sentinel (Err); errors.As gives the name and, for ErrSlotActive, the
// pid of the process reading the slot.
type SlotError struct {
	Name  string
	PID   int32 // the active process for ErrSlotActive, 0 if not known
	Err   error // ErrSlotNotFound, ErrSlotExists or ErrSlotActive
	Cause error // the server's error, when it reported the condition
}

func (e *SlotError) Error() string {
	switch {
	case errors.Is(e.Err, ErrSlotNotFound):
		return fmt.Sprintf("replication slot %q does not exist", e.Name)
	case errors.Is(e.Err, ErrSlotExists):
		return fmt.Sprintf("replication slot %q already exists", e.Name)
	case errors.Is(e.Err, ErrSlotActive) && e.PID != 0:
		return fmt.Sprintf("replication slot %q is active for PID %d", e.Name, e.PID)
	case errors.Is(e.Err, ErrSlotActive):
		return fmt.Sprintf("replication slot %q is active", e.Name)
	default:
		return fmt.Sprintf("replication slot %q: %v", e.Name, e.Err)
	}
}

// Unwrap gives the sentinel and, when there is one, the server's error, so
// errors.As still finds the *pgconn.PgError.
func (e *SlotError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

// LargeWALHeld is the WAL, in bytes, that a slot may hold before
// `walwatch slot list` flags it: a slot pins every WAL segment from its
// restart_lsn on, and nothing else frees that disk.
const LargeWALHeld = 1 << 30

const (
	// maxSlotNameLen is PostgreSQL's NAMEDATALEN-1.
	maxSlotNameLen = 63
	// slotPollInterval paces the wait for a terminated walsender to let go
	// of its slot; it usually takes a few milliseconds.
	slotPollInterval = 20 * time.Millisecond
	// forceDropTimeout bounds a forced drop when the caller's context has no
	// earlier deadline, so a consumer that keeps reconnecting cannot keep
	// DropSlot terminating it for ever.
	forceDropTimeout = 30 * time.Second
)

// SlotInfo is one row of pg_replication_slots.
type SlotInfo struct {
	Name     string
	Plugin   string // "" for a physical slot
	SlotType string // logical or physical
	Database string // "" for a physical slot

	Temporary bool
	Active    bool
	ActivePID int32 // 0 when inactive

	RestartLSN        pglogrepl.LSN // 0 when null
	ConfirmedFlushLSN pglogrepl.LSN // 0 when null

	// WALHeldBytes is the WAL the slot keeps on disk: the current WAL
	// position minus restart_lsn (0 when restart_lsn is null).
	WALHeldBytes int64
	// WALStatus is reserved, extended, unreserved or lost ("" when null).
	WALStatus string
	// SafeWALSize is how much more WAL can be written before the slot is
	// in danger of losing its WAL; nil when max_slot_wal_keep_size = -1.
	SafeWALSize *int64
}

// Warnings says, in words for a person, what is wrong with the slot: nil
// when nothing is. A slot holding at least largeWAL bytes of WAL is flagged;
// largeWAL <= 0 turns that check off.
func (s SlotInfo) Warnings(largeWAL int64) []string {
	var w []string
	if !s.Active {
		w = append(w, "inactive: nothing is reading it, so it keeps WAL until dropped")
	}
	if largeWAL > 0 && s.WALHeldBytes >= largeWAL {
		w = append(w, fmt.Sprintf("holds %d MiB of WAL", s.WALHeldBytes>>20))
	}
	if s.WALStatus == "lost" {
		w = append(w, "invalidated: its WAL is gone (wal_status lost); drop it")
	}
	return w
}

// ValidateSlotName applies PostgreSQL's rule for slot names: 1 to 63
// characters, each a lower case letter, a digit or an underscore. Checking
// here gives a clear error before any round trip, and keeps odd names out of
// replication commands, which take the name unquoted.
func ValidateSlotName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty", ErrInvalidSlotName)
	}
	if len(name) > maxSlotNameLen {
		return fmt.Errorf("%w %q: %d characters, at most %d allowed", ErrInvalidSlotName, name, len(name), maxSlotNameLen)
	}
	for _, c := range []byte(name) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return fmt.Errorf("%w %q: only lower case letters, digits and underscores are allowed", ErrInvalidSlotName, name)
		}
	}
	return nil
}

// slotColumns reads pg_replication_slots in SlotInfo's order. The WAL
// position is the replay position on a standby, where pg_current_wal_lsn()
// raises an error.
const slotColumns = `
SELECT slot_name,
       coalesce(plugin, ''),
       slot_type,
       coalesce(database, ''),
       temporary,
       active,
       coalesce(active_pid, 0),
       restart_lsn::text,
       confirmed_flush_lsn::text,
       coalesce(pg_wal_lsn_diff(
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
           restart_lsn), 0)::bigint,
       coalesce(wal_status, ''),
       safe_wal_size
  FROM pg_replication_slots`

func scanSlot(row pgx.CollectableRow) (SlotInfo, error) {
	var (
		s                       SlotInfo
		restart, confirmedFlush *string
	)
	err := row.Scan(&s.Name, &s.Plugin, &s.SlotType, &s.Database, &s.Temporary, &s.Active, &s.ActivePID,
		&restart, &confirmedFlush, &s.WALHeldBytes, &s.WALStatus, &s.SafeWALSize)
	if err != nil {
		return SlotInfo{}, err
	}
	if s.RestartLSN, err = parseLSN(restart); err != nil {
		return SlotInfo{}, fmt.Errorf("slot %s: restart_lsn: %w", s.Name, err)
	}
	if s.ConfirmedFlushLSN, err = parseLSN(confirmedFlush); err != nil {
		return SlotInfo{}, fmt.Errorf("slot %s: confirmed_flush_lsn: %w", s.Name, err)
	}
	return s, nil
}

// parseLSN reads a pg_lsn in text form; null is 0.
func parseLSN(s *string) (pglogrepl.LSN, error) {
	if s == nil {
		return 0, nil
	}
	return pglogrepl.ParseLSN(*s)
}

// ListSlots returns every replication slot of the cluster, logical and
// physical, of every database, ordered by name.
func ListSlots(ctx context.Context, q Querier) ([]SlotInfo, error) {
	rows, err := q.Query(ctx, slotColumns+" ORDER BY slot_name")
	if err != nil {
		return nil, fmt.Errorf("list slots: %w", err)
	}
	slots, err := pgx.CollectRows(rows, scanSlot)
	if err != nil {
		return nil, fmt.Errorf("list slots: %w", err)
	}
	return slots, nil
}

// GetSlot returns the slot called name, or a *SlotError matching
// ErrSlotNotFound.
func GetSlot(ctx context.Context, q Querier, name string) (SlotInfo, error) {
	if err := ValidateSlotName(name); err != nil {
		return SlotInfo{}, fmt.Errorf("get slot %s: %w", name, err)
	}
	s, err := getSlot(ctx, q, name)
	if err != nil {
		return SlotInfo{}, fmt.Errorf("get slot %s: %w", name, err)
	}
	return s, nil
}

func getSlot(ctx context.Context, q Querier, name string) (SlotInfo, error) {
	rows, err := q.Query(ctx, slotColumns+" WHERE slot_name = $1", name)
	if err != nil {
		return SlotInfo{}, err
	}
	s, err := pgx.CollectExactlyOneRow(rows, scanSlot)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, &SlotError{Name: name, Err: ErrSlotNotFound}
	}
	return s, err
}

// CreateSlot creates a persistent logical slot using pgoutput in the
// database q is connected to, and returns it. The slot starts at the current
// WAL position (its confirmed_flush_lsn). Creating waits for transactions
// running at the time to end, and PostgreSQL refuses it inside a transaction
// that has written anything. A name already taken gives a *SlotError
// matching ErrSlotExists.
func CreateSlot(ctx context.Context, q Querier, name string) (SlotInfo, error) {
	if err := ValidateSlotName(name); err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: %w", name, err)
	}
	if _, err := q.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name); err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: %w", name, slotServerError(name, err))
	}
	s, err := getSlot(ctx, q, name)
	if err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: read it back: %w", name, err)
	}
	return s, nil
}

// DropSlot drops the slot called name. An unknown name gives a *SlotError
// matching ErrSlotNotFound. A slot in use gives a *SlotError matching
// ErrSlotActive with the reader's pid, unless force: then the reader is
// terminated (pg_terminate_backend) and DropSlot waits, until ctx's deadline
// or at most forceDropTimeout, for it to let go of the slot before dropping
// it. Forcing needs superuser or membership of pg_signal_backend.
func DropSlot(ctx context.Context, q Querier, name string, force bool) error {
	if err := ValidateSlotName(name); err != nil {
		return fmt.Errorf("drop slot %s: %w", name, err)
	}
	var err error
	if force {
		ctx, cancel := context.WithTimeout(ctx, forceDropTimeout)
		defer cancel()
		err = forceDropSlot(ctx, q, name)
	} else {
		err = dropSlot(ctx, q, name)
	}
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", name, err)
	}
	return nil
}

// dropSlot looks before it drops so that an active slot's error carries the
// pid (and a pgx.Tx is not aborted by the server's refusal).
func dropSlot(ctx context.Context, q Querier, name string) error {
	s, err := getSlot(ctx, q, name)
	if err != nil {
		return err
	}
	if s.Active {
		return &SlotError{Name: name, PID: s.ActivePID, Err: ErrSlotActive}
	}
	return execDrop(ctx, q, name)
}

func forceDropSlot(ctx context.Context, q Querier, name string) error {
	var terminated int32 // the last reader we terminated
	for {
		s, err := getSlot(ctx, q, name)
		switch {
		case errors.Is(err, ErrSlotNotFound) && terminated != 0:
			return nil // a temporary slot goes with its session
		case err != nil:
			return err
		case s.Active && s.ActivePID != terminated:
			// Only while pid still holds this slot: a pid read a moment ago
			// may belong to another process by now.
			_, err := q.Exec(ctx, `
				SELECT pg_terminate_backend(active_pid)
				  FROM pg_replication_slots
				 WHERE slot_name = $1 AND active_pid = $2`, name, s.ActivePID)
			if err != nil {
				return fmt.Errorf("terminate PID %d reading it: %w", s.ActivePID, err)
			}
			terminated = s.ActivePID
		case !s.Active:
			err := execDrop(ctx, q, name)
			switch {
			case err == nil:
				return nil
			case errors.Is(err, ErrSlotNotFound) && terminated != 0:
				return nil
			case !errors.Is(err, ErrSlotActive):
				return err
			}
			// A reader took it between the look and the drop: go round.
		}
		t := time.NewTimer(slotPollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			if terminated != 0 {
				return fmt.Errorf("wait for terminated PID %d to release it: %w", terminated, ctx.Err())
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

func execDrop(ctx context.Context, q Querier, name string) error {
	if _, err := q.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err != nil {
		return slotServerError(name, err)
	}
	return nil
}

// slotServerError turns the server's codes for a missing, duplicate or busy
// slot into a *SlotError; other errors pass through.
func slotServerError(name string, err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "42704": // undefined_object
		return &SlotError{Name: name, Err: ErrSlotNotFound, Cause: err}
	case "42710": // duplicate_object
		return &SlotError{Name: name, Err: ErrSlotExists, Cause: err}
	case "55006": // object_in_use
		return &SlotError{Name: name, Err: ErrSlotActive, Cause: err}
	}
	return err
}

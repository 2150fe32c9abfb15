package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walwatch/walwatch/sql"
)

// What the hub needs of the server, the database and its role, and the
// errors Run returns when it does not have it. A hub retries for ever what
// an outage explains (PostgreSQL down or restarting, a connection cut, the
// slot lost); a failure here no retry mends, only an operator, so Run
// returns it, wrapped in a *SetupError, and the hub stops.
var (
	// ErrSchemaVersion means the database has no walwatch schema, or one of
	// another version than this build's: run `walwatch migrate` for a
	// missing or older one (the error then matches sql.ErrSchemaOutdated
	// too), upgrade walwatch for a newer one. A table, column or function
	// of the schema missing when the hub uses it is this error too.
	ErrSchemaVersion = errors.New("walwatch schema missing or of another version")
	// ErrNotPermitted means the server refused the hub's role something it
	// needs: a replication connection (the role lacks the REPLICATION
	// attribute, pg_hba.conf has no replication entry for it, or the
	// password is wrong), or a grant on the walwatch schema, its tables or
	// its functions.
	ErrNotPermitted = errors.New("permission denied")
	// ErrSlotTaken means Config.Slot names a replication slot that is not a
	// walwatch one: a physical slot, a logical one of another output plugin
	// than pgoutput, or one of another database.
	ErrSlotTaken = errors.New("replication slot name taken")
	// ErrServerConfig means the server is configured in a way that rules out
	// logical replication: wal_level is not logical, or max_replication_slots
	// or max_wal_senders is 0. Each takes a restart of PostgreSQL to change.
	ErrServerConfig = errors.New("server not configured for logical replication")
)

// SetupError is what Run returns when the hub cannot work until an operator
// changes the server, the database or the role. errors.Is matches it
// against its sentinel (Err); errors.As finds the server's error
// (*pgconn.PgError) when the server reported the condition.
type SetupError struct {
	Err   error // ErrSchemaVersion, ErrNotPermitted, ErrSlotTaken or ErrServerConfig
	Cause error // what failed, and why
}

func (e *SetupError) Error() string { return fmt.Sprintf("%v: %v", e.Err, e.Cause) }

// Unwrap gives the sentinel and the cause.
func (e *SetupError) Unwrap() []error { return []error{e.Err, e.Cause} }

// setupFailure returns err as an error wrapping a *SetupError when it is one
// no retry mends, and nil when it may be an outage. It knows the server's
// refusals by their SQLSTATE: insufficient_privilege and the
// invalid-authorization class (a role without REPLICATION, without a grant,
// refused by pg_hba.conf or its password), and a schema, table, column or
// function of walwatch's that does not exist.
func setupFailure(err error) error {
	if err == nil {
		return nil
	}
	var se *SetupError
	if errors.As(err, &se) {
		return err
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return nil
	}
	switch {
	case pe.Code == "42501" || strings.HasPrefix(pe.Code, "28"): // insufficient_privilege, invalid_authorization_specification, invalid_password
		return &SetupError{Err: ErrNotPermitted, Cause: err}
	case pe.Code == "3F000" || pe.Code == "42P01" || pe.Code == "42703" || pe.Code == "42883": // invalid_schema_name, undefined_table, undefined_column, undefined_function
		return &SetupError{Err: ErrSchemaVersion, Cause: err}
	}
	return nil
}

// checkSetup checks, before each replication session, what an outage
// cannot explain: the server's settings for logical replication and the
// database's schema version. A query that fails is the caller's to retry
// (PostgreSQL may be down) unless setupFailure says otherwise.
func (h *Hub) checkSetup(ctx context.Context) error {
	var (
		walLevel        string
		slots, senders  int
		schemaReadable  *bool // nil: no walwatch schema
		migrationsTable = sql.Schema + ".schema_migrations"
	)
	// has_table_privilege of a missing table (to_regclass gives null) is
	// null: the version is read only where the role may read it, so a hub
	// with only the grants it needs sends the server no failing statement.
	err := h.cfg.Pool.QueryRow(ctx, `select current_setting('wal_level'),
	        current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
	        has_table_privilege(to_regclass($1), 'select')`, migrationsTable).Scan(&walLevel, &slots, &senders, &schemaReadable)
	if err != nil {
		return fmt.Errorf("check the server's settings and the schema: %w", err)
	}
	switch {
	case walLevel != "logical":
		return &SetupError{Err: ErrServerConfig, Cause: fmt.Errorf("wal_level is %s, not logical: set it and restart PostgreSQL", walLevel)}
	case slots == 0:
		return &SetupError{Err: ErrServerConfig, Cause: errors.New("max_replication_slots is 0: raise it and restart PostgreSQL")}
	case senders == 0:
		return &SetupError{Err: ErrServerConfig, Cause: errors.New("max_wal_senders is 0: raise it and restart PostgreSQL")}
	case schemaReadable == nil:
		return &SetupError{Err: ErrSchemaVersion, Cause: fmt.Errorf("%w (the database has none, this build needs version %d)", sql.ErrSchemaOutdated, sql.Latest())}
	case !*schemaReadable:
		return nil // the role may not read the version; what it uses is checked where it uses it
	}
	v, err := sql.Version(ctx, h.cfg.Pool)
	switch {
	case err != nil:
		return err
	case v < sql.Latest():
		return &SetupError{Err: ErrSchemaVersion, Cause: fmt.Errorf("%w (database at version %d, this build needs %d)", sql.ErrSchemaOutdated, v, sql.Latest())}
	case v > sql.Latest():
		return &SetupError{Err: ErrSchemaVersion, Cause: fmt.Errorf("database schema at version %d, newer than this build's %d: upgrade walwatch", v, sql.Latest())}
	}
	return nil
}

// checkSlot fails with ErrSlotTaken unless the existing slot s can be the
// hub's: a logical pgoutput slot of the database db ("" when not known).
func checkSlot(s SlotInfo, db string) error {
	switch {
	case s.SlotType != "logical":
		return &SetupError{Err: ErrSlotTaken, Cause: fmt.Errorf("slot %s is a %s slot, not a logical one", s.Name, s.SlotType)}
	case s.Plugin != "pgoutput":
		return &SetupError{Err: ErrSlotTaken, Cause: fmt.Errorf("slot %s uses the output plugin %s, not pgoutput", s.Name, s.Plugin)}
	case db != "" && s.Database != db:
		return &SetupError{Err: ErrSlotTaken, Cause: fmt.Errorf("slot %s belongs to database %s, not %s", s.Name, s.Database, db)}
	}
	return nil
}

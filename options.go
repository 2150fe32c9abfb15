package walwatch

import (
	"log/slog"
	"time"

	"github.com/walwatch/walwatch/expiry"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// DefaultSettleTimeout bounds how long a read waits for the revision it
// reads at to be settled and visible, when Config.SettleTimeout is zero. A
// transaction that holds a lower revision open delays it; past the bound the
// read fails with ErrNotSettled, which a server answers as "retry" (cp: 503).
const DefaultSettleTimeout = 10 * time.Second

// Config configures a Client. The zero Config is ready to use.
type Config struct {
	// Hub configures the watch hub. Its Pool is the client's: leave it nil
	// (New refuses a different one). Zero fields take the package defaults
	// of package replication; an empty Slot is a temporary slot, gone when
	// the client closes.
	Hub replication.Config
	// Limits bound keys, values and Txn operations; zero fields take
	// store.DefaultLimits.
	Limits store.Limits
	// SettleTimeout bounds a read's wait for its revision to settle; zero
	// takes DefaultSettleTimeout.
	SettleTimeout time.Duration
	// Logger receives what the client has to say (a hub that failed), and
	// is the hub's when Hub.Logger is nil. Nil discards.
	Logger *slog.Logger
	// LeaseExpiry, when set, makes the client take part in the lease
	// expiry duty (package expiry): of every process on the database that
	// does, one at a time revokes the leases past their deadline. A cp
	// does; a program that only reads and watches need not. Its Pool is the
	// client's (leave it nil); a nil Logger takes the client's.
	LeaseExpiry *expiry.Config
	// KeyspaceCopy makes the client keep a copy of the latest value of
	// every key in memory (package keyspace) and answer reads at the
	// latest revision from it, after one shared read of the current
	// revision, and ranges at older revisions whose versions it still
	// holds (it keeps those the latest changes replaced): fewer and
	// cheaper statements per read, for the memory the keyspace takes and
	// up to 16 MiB of replaced versions. Reads are as linearizable either
	// way.
	KeyspaceCopy bool
}

// Option configures Open.
type Option func(*options)

type options struct {
	cfg     Config
	migrate bool
}

// WithMigrate makes Open bring the database's walwatch schema up to this
// build's version (sql.Migrate) instead of failing when it is missing or
// older.
func WithMigrate() Option { return func(o *options) { o.migrate = true } }

// WithLogger sets Config.Logger.
func WithLogger(log *slog.Logger) Option { return func(o *options) { o.cfg.Logger = log } }

// WithConfig sets the whole Config: the hub's slot and bounds, the store's
// limits, the settle timeout. Options after it change it further.
func WithConfig(cfg Config) Option { return func(o *options) { o.cfg = cfg } }

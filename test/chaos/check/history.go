// Package check holds what the chaos harness records and the checks it runs
// on every history: linearizability of the client operations (porcupine, with
// a model of etcd's KV), the watch guarantees against the record of what
// committed, reads at a revision that never change, and nothing acknowledged
// lost. It does no I/O: the harness records, this package judges.
package check

import "time"

// Kind is what a client operation did.
type Kind int

const (
	Get         Kind = iota + 1 // a read of Key, or of [Key, End) when End is set
	Put                         // a put of Key = Value (Values are unique in a history)
	Delete                      // a delete of Key
	DeleteRange                 // a delete of [Key, End)
	Txn                         // compare-and-swap: if Key's mod revision == CmpModRevision (and, when CmpValue is set, its value == *CmpValue) put Key = Value, else get Key
	Compact                     // compaction to Revision
)

// Status says how an operation ended, as its client saw it.
type Status int

const (
	OK      Status = iota + 1 // the operation answered; its outputs are set
	Failed                    // it certainly did not happen (refused before any effect: compacted, future revision, bad request)
	Unknown                   // it failed or timed out: it may or may not have happened
)

// KV is a key as a read or a watch event shows it.
type KV struct {
	Key            string
	Value          string
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          int64
}

// Op is one client operation: what was asked, when, and what came back.
// Call and Return are offsets from the history's start, taken from one
// monotonic clock; Return is when the answer (or the error) arrived.
type Op struct {
	Client int    // the client that issued it; a client issues one operation at a time
	Via    string // "etcd", "http" or "sql"
	Kind   Kind

	Key, End string
	Value    string
	Revision int64 // Get: the revision read at (0: latest); Compact: the revision

	CmpModRevision int64   // Txn: 0 means "the key does not exist"
	CmpValue       *string // Txn: also compare the value, when set

	Call, Return time.Duration

	Status Status
	Err    string // the error, when Status is not OK

	// Outputs, when Status is OK.
	Header    int64 // the revision of the answer (a read's revision, a write's new revision)
	KVs       []KV  // Get: the keys read, in key order; Txn that failed: the key read
	Succeeded bool  // Txn: the compare held
	Deleted   int64 // Delete, DeleteRange: how many keys were deleted

	// Compacted is set when a Get at an old revision was refused as compacted:
	// the compacted revision the answer carried (Status is Failed).
	Compacted int64
}

// Row is one row of walwatch.kv as committed, from the harness's audit of
// every insert (compaction deletes rows from the table, never from the
// audit). A filler has an empty Key and is never shown to anyone.
type Row struct {
	Revision       int64
	Sub            int32
	Key            string
	Value          string
	Tombstone      bool
	CreateRevision int64
	Version        int64
	PrevRevision   int64
	Lease          int64
}

// Filler says whether the row only settles a revision no write took.
func (r Row) Filler() bool { return r.Key == "" }

// Event is one watch event as a watcher received it.
type Event struct {
	Type   EventType
	KV     KV  // for a delete: Key and ModRevision (the delete's revision) at least
	PrevKV *KV // when the watcher asked for previous values and there was one
}

// EventType is a put or a delete.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Response is one message a watcher received: events of one or more
// revisions, or a progress mark, or the end of the watch.
type Response struct {
	At time.Duration // offset from the history's start when it arrived

	Events []Event

	// Progress is set for a progress mark: everything at or below it that
	// matches has been delivered.
	Progress int64

	// Ended is set on the last response of a watch the server ended.
	// Compacted is the compacted revision when it ended because the start
	// was compacted; Relist when it was told to re-list (history changed
	// under it, after a failover); Err is any other reason.
	Ended     bool
	Compacted int64
	Relist    bool
	Err       string
}

// Watch is one watch as a watcher opened it and everything it received
// until it stopped (by the watcher's own cancel, by the server's end, or by
// the end of the history). A watcher that resumes after a cancel opens a new
// Watch, from the revision after the last one it received.
type Watch struct {
	Watcher int    // the watcher that opened it
	Via     string // "etcd", "sse" or "hub"
	Key     string
	End     string // "" for one key; the prefix's end for a prefix
	Start   int64  // the start revision it asked for (> 0)
	PrevKV  bool   // it asked for previous values

	Opened, Closed time.Duration
	Responses      []Response
}

// Read is a read at a fixed revision, done twice or more over the history:
// every answer must be the same, or "compacted".
type Read struct {
	Key, End string
	Revision int64
	Answers  []ReadAnswer
}

// ReadAnswer is one answer to a Read.
type ReadAnswer struct {
	At        time.Duration
	KVs       []KV
	Compacted int64 // set when the read was refused as compacted
	Err       string
}

// History is everything one chaos run recorded, and what it needs to judge
// it: the audit of what committed, the compacted revision at the end.
type History struct {
	Seed      int64
	Ops       []Op
	Watches   []Watch
	Reads     []Read
	Committed []Row // every row ever inserted, in (revision, sub) order
	Compacted int64 // walwatch.meta's compact_revision at the end
	Faults    []Fault
	Diverged  []Divergence // revisions a failover took back (asynchronous standby): see Divergence

	// StartRevision is the store's revision when the first operation was
	// called. 0 means the store was empty then: the revision before the
	// first committed row's. Rows at or below it (a store not empty at the
	// start) must be in Committed too, so the checks know the initial state.
	StartRevision int64
}

// Fault is one fault the harness injected.
type Fault struct {
	Kind       string
	Start, End time.Duration
}

// Divergence records a failover to a standby that had not received every
// revision: rows of the old primary at or above From were lost. Watches open
// across it must have been ended with Relist.
type Divergence struct {
	At   time.Duration
	From int64
}

// Anomaly is one thing a check found wrong.
type Anomaly struct {
	Check  string // "linearizability", "watch", "read", "lost", "filler", "committed"
	Detail string
}

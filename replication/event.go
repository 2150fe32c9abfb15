package replication

import (
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walwatch/walwatch/store"
)

// EventType says whether an event sets or deletes a key.
type EventType int

const (
	EventPut EventType = iota
	EventDelete
)

func (t EventType) String() string {
	if t == EventDelete {
		return "DELETE"
	}
	return "PUT"
}

// Event is one change to one key, as etcd's watch reports it: for a delete,
// Value is empty and CreateRevision and Version are 0.
type Event struct {
	Type           EventType
	Key            []byte
	Value          []byte
	Revision       int64 // the key's mod revision
	Sub            int32 // its place inside the revision
	CreateRevision int64
	Version        int64
	PrevRevision   int64 // the key's previous change, 0 if none
	Lease          int64
	CommitLSN      pglogrepl.LSN   // 0 for events read from the table
	CommitTime     time.Time       // zero for events read from the table
	PrevKV         *store.KeyValue // with WatchRequest.PrevKV, the key before this change (nil if none)
}

// WatchRequest names what to watch.
type WatchRequest struct {
	Range store.KeyRange
	// StartRevision is the first revision to deliver; 0 means the next one
	// after the current revision. A future revision waits for it.
	StartRevision int64
	// PrevKV attaches each event's previous key-value.
	PrevKV bool
	// ProgressNotify sends progress responses (no events, Revision set)
	// while the watcher is idle.
	ProgressNotify bool
	// Notify, when set, is called after each response is queued for the
	// Watcher and after its watch ends, so that one goroutine can serve
	// many watchers, calling Watcher.Drain when told, rather than a
	// goroutine each blocked on its C. Such a watcher has no C unless it
	// asks for PrevKV, and no channel's memory while idle. Notify may be
	// called with the hub's lock held: it must return at once and not call
	// the hub.
	Notify func()
}

// WatchResponse is one delivery: the events of one or more whole revisions
// in revision and sub order, or a progress mark (no events), or the end of
// the watch (Canceled, with Err saying why).
type WatchResponse struct {
	Events []Event
	// Revision: for events, the revision of the last one; for a progress
	// mark, the revision up to which everything has been delivered.
	Revision int64
	Canceled bool
	// Err is why the watch ended: a *store.CompactedError (a watcher
	// catching up from the table found its revisions compacted), a
	// *HistoryChangedError (the database failed over to a server without
	// revisions already delivered: re-list), an error matching
	// ErrHubStopped (wrapping Run's failure when there was one), the
	// watch's context's deadline, or a failed read of previous values. A
	// watcher too slow to keep up is not ended: it catches up from the
	// table.
	Err error
	// CompactRevision is set when Err is a compaction, and when history
	// changed (HistoryChangedError.Revision+1), so that a front end that
	// treats both as etcd's compacted cancel makes clients re-list.
	CompactRevision int64
}

// IsProgress reports whether the response is a progress mark.
func (r WatchResponse) IsProgress() bool { return len(r.Events) == 0 && !r.Canceled }

package replication

// PrevKVsSQL is the statement that reads the previous rows of a response's
// events.
const PrevKVsSQL = prevKVsSQL

// VisibleCheckSQL is the statement of a visibility check.
const VisibleCheckSQL = visibleCheckSQL

// VisibleCheck is the most revisions one visibility check reads.
func VisibleCheck() int64 { return visibleCheck }

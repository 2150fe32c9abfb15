package replication

// PrevKVsSQL is the statement that reads the previous rows of a response's
// events.
const PrevKVsSQL = prevKVsSQL

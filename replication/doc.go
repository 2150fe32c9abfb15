// Package replication turns walwatch's revision table into watch streams: it
// reads a logical replication slot (pgoutput, through pglogrepl), puts the
// changes into revision order with no gaps, and fans them out to watchers,
// serving a watcher that starts in the past from the table first.
//
// Slot admin (create, drop, list; slot.go) is usable alone. The hub
// (hub.go) runs the stream (stream.go, decode.go: one goroutine owns the
// replication connection and decodes committed transactions) and hands what
// it decoded, through an inbox that never blocks it (queue.go), to a run
// loop that does no I/O, and to the hub's other parts:
//
//   - order (order.go): the reorder buffer and the watermark, which puts
//     revisions back into revision order and says which stream positions
//     may be confirmed;
//   - the filler (fill.go): settles the holes order waits on with filler
//     rows, and names the transactions holding them;
//   - the fan-out (watcher.go, group.go, window.go): the recent-event window
//     and the watchers, live (synced), catching up (unsynced) or too slow
//     (victims), after etcd's watchable store;
//   - visibility (visibility.go): how far a read, WaitFor or a catch-up may
//     go;
//   - the paged table reader (page.go) of the first table read and of
//     catch-up.
//
// What Run returns when the server, the database or the role is set up in a
// way no retry mends is setup.go's.
package replication

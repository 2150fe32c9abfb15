// Package replication turns walwatch's revision table into watch streams: it
// reads a logical replication slot (pgoutput, through pglogrepl), puts the
// changes into revision order with no gaps, and fans them out to watchers,
// serving a watcher that starts in the past from the table first.
//
// The layers, each usable alone: the slot (admin: create, drop, list), the
// stream (one goroutine owns the replication connection and decodes
// transactions), and the hub (ordering, the watermark, filler rows for holes,
// the recent-event window, and the watchers).
package replication

package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walwatch/walwatch/sql"
)

// row is one decoded row of the revision table. A row with an empty key is a
// filler: it settles its revision and is never shown.
type row struct {
	revision       int64
	sub            int32
	key            []byte
	value          []byte
	tombstone      bool
	createRevision int64
	version        int64
	prevRevision   int64
	lease          int64
}

func (r *row) isFiller() bool { return len(r.key) == 0 }

// wholeRevisions trims a page of rows read with a limit to whole revisions,
// since the page's last revision may go on past it. It returns nil when the
// page is one revision larger than a page: the caller reads that one whole.
func wholeRevisions(page []row, limit int) []row {
	if len(page) < limit {
		return page
	}
	last := page[len(page)-1].revision
	cut := len(page)
	for cut > 0 && page[cut-1].revision == last {
		cut--
	}
	return page[:cut]
}

// rowColumns are the columns a table read selects, in scanRow's order.
const rowColumns = "revision, sub, key, value, tombstone, create_revision, version, prev_revision, lease"

// scanRows collects a table read of rowColumns.
func scanRows(rows pgx.Rows) ([]row, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.revision, &x.sub, &x.key, &x.value, &x.tombstone, &x.createRevision, &x.version, &x.prevRevision, &x.lease)
		return x, err
	})
}

func (r *row) event(lsn pglogrepl.LSN, at time.Time) Event {
	ev := Event{
		Type: Put, Key: r.key, Value: r.value, Revision: r.revision, Sub: r.sub,
		CreateRevision: r.createRevision, Version: r.version, PrevRevision: r.prevRevision, Lease: r.lease,
		CommitLSN: lsn, CommitTime: at,
	}
	if r.tombstone {
		ev.Type, ev.Value = Delete, nil
	}
	return ev
}

// txn is one committed transaction's rows of the revision table, as the
// stream hands it to the hub. Rows read from the table at startup come as a
// txn with no LSN.
type txn struct {
	commitLSN  pglogrepl.LSN
	endLSN     pglogrepl.LSN // what to confirm once its revisions are settled
	commitTime time.Time
	rows       []row
	// Markers from the first table read: base is the watermark to start
	// from, ready says the hub has caught up with the table.
	base  int64
	ready bool
}

// ErrBrokenStream is wrapped by decoding errors: the stream cannot be trusted
// past them and is reconnected.
var ErrBrokenStream = errors.New("broken replication stream")

// relation is a cached Relation message: column positions by name.
type relation struct {
	isKV    bool // walwatch.kv, the only table we decode
	columns []*pglogrepl.RelationMessageColumn
}

// decoder turns pgoutput messages into txns. One per connection: its relation
// cache is only valid for the connection that sent the Relation messages.
type decoder struct {
	relations map[uint32]*relation
	types     *pgtype.Map
	cur       *txn // the transaction between Begin and Commit
}

func newDecoder() *decoder {
	return &decoder{relations: map[uint32]*relation{}, types: pgtype.NewMap()}
}

// inTxn reports whether a transaction has begun and not yet committed.
func (d *decoder) inTxn() bool { return d.cur != nil }

// decode takes one pgoutput message; it returns the transaction when the
// message was its commit. pglogrepl's decoders do no bounds checks, so a
// malformed message can panic: that is a broken stream, not a crash.
func (d *decoder) decode(data []byte) (done *txn, err error) {
	defer func() {
		if p := recover(); p != nil {
			done, err = nil, fmt.Errorf("%w: decoding a pgoutput message panicked: %v", ErrBrokenStream, p)
		}
	}()
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty pgoutput message", ErrBrokenStream)
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit:
	case pglogrepl.MessageTypeInsert:
		if err := checkTupleLengths(data); err != nil {
			return nil, err
		}
	default:
		// Type, Origin, Truncate, Update, Delete and logical messages carry
		// nothing for us (the publication sends only inserts into
		// walwatch.kv), and some allocate what their counts claim: skip
		// them unparsed.
		return nil, nil
	}
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBrokenStream, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		d.relations[m.RelationID] = &relation{
			isKV:    m.Namespace == sql.Schema && m.RelationName == "kv",
			columns: m.Columns,
		}
	case *pglogrepl.BeginMessage:
		if d.cur != nil {
			return nil, fmt.Errorf("%w: begin inside a transaction", ErrBrokenStream)
		}
		d.cur = &txn{commitTime: m.CommitTime}
	case *pglogrepl.InsertMessage:
		if d.cur == nil {
			return nil, fmt.Errorf("%w: insert outside a transaction", ErrBrokenStream)
		}
		rel, ok := d.relations[m.RelationID]
		if !ok {
			return nil, fmt.Errorf("%w: insert into unknown relation %d", ErrBrokenStream, m.RelationID)
		}
		if !rel.isKV {
			return nil, nil
		}
		r, err := d.decodeRow(rel, m.Tuple)
		if err != nil {
			return nil, err
		}
		d.cur.rows = append(d.cur.rows, r)
	case *pglogrepl.CommitMessage:
		if d.cur == nil {
			return nil, fmt.Errorf("%w: commit outside a transaction", ErrBrokenStream)
		}
		done, d.cur = d.cur, nil
		done.commitLSN, done.endLSN, done.commitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
		return done, nil
	}
	return nil, nil
}

// decodeRow maps a tuple's columns by name, so column order and added
// columns do not matter.
func (d *decoder) decodeRow(rel *relation, tuple *pglogrepl.TupleData) (row, error) {
	var r row
	if tuple == nil || len(tuple.Columns) != len(rel.columns) {
		return r, fmt.Errorf("%w: insert with a column count that does not match its relation", ErrBrokenStream)
	}
	for i, col := range tuple.Columns {
		meta := rel.columns[i]
		var dst any
		switch meta.Name {
		case "revision":
			dst = &r.revision
		case "sub":
			dst = &r.sub
		case "key":
			dst = &r.key
		case "value":
			dst = &r.value
		case "tombstone":
			dst = &r.tombstone
		case "create_revision":
			dst = &r.createRevision
		case "version":
			dst = &r.version
		case "prev_revision":
			dst = &r.prevRevision
		case "lease":
			dst = &r.lease
		default:
			continue
		}
		var format int16
		switch col.DataType {
		case pglogrepl.TupleDataTypeNull:
			if meta.Name == "value" {
				continue // a tombstone's value
			}
			return r, fmt.Errorf("%w: column %s is null", ErrBrokenStream, meta.Name)
		case pglogrepl.TupleDataTypeBinary:
			format = pgtype.BinaryFormatCode
		case pglogrepl.TupleDataTypeText:
			format = pgtype.TextFormatCode
		default:
			return r, fmt.Errorf("%w: column %s sent as %q", ErrBrokenStream, meta.Name, col.DataType)
		}
		if err := d.types.Scan(meta.DataType, format, col.Data, dst); err != nil {
			return r, fmt.Errorf("%w: column %s: %v", ErrBrokenStream, meta.Name, err)
		}
	}
	return r, nil
}

// checkTupleLengths checks the column lengths of an Insert message against
// the bytes that are really there. pglogrepl allocates whatever length a
// column claims before reading it, so a corrupt length would take memory
// (up to 4 GiB a column) before any panic could be recovered.
func checkTupleLengths(data []byte) error {
	const header = 1 + 4 + 1 + 2 // type, relation id, 'N', column count
	if len(data) < header {
		return fmt.Errorf("%w: insert message of %d bytes", ErrBrokenStream, len(data))
	}
	rest := data[header:]
	for n := int(binary.BigEndian.Uint16(data[6:8])); n > 0; n-- {
		if len(rest) < 1 {
			return fmt.Errorf("%w: insert message ends inside its columns", ErrBrokenStream)
		}
		kind := rest[0]
		rest = rest[1:]
		if kind != pglogrepl.TupleDataTypeText && kind != pglogrepl.TupleDataTypeBinary {
			continue
		}
		if len(rest) < 4 || uint64(binary.BigEndian.Uint32(rest)) > uint64(len(rest)-4) {
			return fmt.Errorf("%w: insert column longer than its message", ErrBrokenStream)
		}
		rest = rest[4+binary.BigEndian.Uint32(rest):]
	}
	return nil
}

package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
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

// rowColumns are the columns a table read selects, in the order readPage
// scans them.
const rowColumns = "revision, sub, key, value, tombstone, create_revision, version, prev_revision, lease"

func (r *row) event(lsn pglogrepl.LSN, at time.Time) Event {
	ev := Event{
		Type: EventPut, Key: r.key, Value: r.value, Revision: r.revision, Sub: r.sub,
		CreateRevision: r.createRevision, Version: r.version, PrevRevision: r.prevRevision, Lease: r.lease,
		CommitLSN: lsn, CommitTime: at,
	}
	if r.tombstone {
		ev.Type, ev.Value = EventDelete, nil
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
	// readLSN, for rows read from the table, bounds the WAL position of
	// every commit they show: the new slot's consistent point, or the
	// server's WAL position when read.
	readLSN pglogrepl.LSN
	// Markers from the first table read: base is the watermark to start
	// from, ready says the hub has caught up with the table.
	base  int64
	ready bool
	// change, from the stream before anything else of a session, says the
	// server is not the one before (failover.go): no rows.
	change *serverChange
	// compacted, from the table read in a new slot's snapshot, is the
	// compacted revision when it is above the watermark's successor
	// (compaction.go): no rows.
	compacted int64
}

// ErrBrokenStream is wrapped by decoding errors: the stream cannot be trusted
// past them and is reconnected.
var ErrBrokenStream = errors.New("broken replication stream")

// field names the row field a column of walwatch.kv fills.
type field uint8

const (
	fieldNone field = iota // a column watchers do not need (created_at)
	fieldRevision
	fieldSub
	fieldKey
	fieldValue
	fieldTombstone
	fieldCreateRevision
	fieldVersion
	fieldPrevRevision
	fieldLease
)

var fieldsByName = map[string]field{
	"revision": fieldRevision, "sub": fieldSub, "key": fieldKey, "value": fieldValue,
	"tombstone": fieldTombstone, "create_revision": fieldCreateRevision, "version": fieldVersion,
	"prev_revision": fieldPrevRevision, "lease": fieldLease,
}

// column is one column of a cached relation.
type column struct {
	name  string
	oid   uint32
	field field
}

// relation is a cached Relation message: what each column position holds.
type relation struct {
	isKV    bool // walwatch.kv, the only table we decode
	columns []column
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
	case pglogrepl.MessageTypeInsert:
		return nil, d.insert(data)
	case pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit:
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
		rel := &relation{isKV: m.Namespace == sql.Schema && m.RelationName == "kv"}
		for _, c := range m.Columns {
			rel.columns = append(rel.columns, column{name: c.Name, oid: c.DataType, field: fieldsByName[c.Name]})
		}
		d.relations[m.RelationID] = rel
	case *pglogrepl.BeginMessage:
		if d.cur != nil {
			return nil, fmt.Errorf("%w: begin inside a transaction", ErrBrokenStream)
		}
		d.cur = &txn{commitTime: m.CommitTime}
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

// insert decodes an Insert message into a row of the current transaction.
// It reads the tuple in place instead of through pglogrepl, whose decoder
// makes some thirty allocations a row and checks no lengths: at thousands of
// rows a second that and the garbage it left were a third of a watching
// process's CPU.
func (d *decoder) insert(data []byte) error {
	const header = 1 + 4 + 1 + 2 // type, relation id, 'N', column count
	if len(data) < header || data[5] != 'N' {
		return fmt.Errorf("%w: malformed insert message of %d bytes", ErrBrokenStream, len(data))
	}
	if d.cur == nil {
		return fmt.Errorf("%w: insert outside a transaction", ErrBrokenStream)
	}
	relid := binary.BigEndian.Uint32(data[1:5])
	rel, ok := d.relations[relid]
	if !ok {
		return fmt.Errorf("%w: insert into unknown relation %d", ErrBrokenStream, relid)
	}
	if !rel.isKV {
		return nil
	}
	if int(binary.BigEndian.Uint16(data[6:8])) != len(rel.columns) {
		return fmt.Errorf("%w: insert with a column count that does not match its relation", ErrBrokenStream)
	}
	r, err := d.decodeRow(rel, data[header:])
	if err != nil {
		return err
	}
	d.cur.rows = append(d.cur.rows, r)
	return nil
}

// decodeRow reads a tuple's columns by their relation's names, so column
// order and added columns do not matter.
func (d *decoder) decodeRow(rel *relation, tuple []byte) (row, error) {
	var r row
	for _, c := range rel.columns {
		if len(tuple) < 1 {
			return r, fmt.Errorf("%w: insert message ends inside its columns", ErrBrokenStream)
		}
		kind := tuple[0]
		tuple = tuple[1:]
		var data []byte
		switch kind {
		case pglogrepl.TupleDataTypeBinary, pglogrepl.TupleDataTypeText:
			if len(tuple) < 4 || uint64(binary.BigEndian.Uint32(tuple)) > uint64(len(tuple)-4) {
				return r, fmt.Errorf("%w: insert column longer than its message", ErrBrokenStream)
			}
			n := 4 + binary.BigEndian.Uint32(tuple)
			data, tuple = tuple[4:n], tuple[n:]
		case pglogrepl.TupleDataTypeNull:
			if c.field == fieldNone || c.field == fieldValue { // a tombstone's value
				continue
			}
			return r, fmt.Errorf("%w: column %s is null", ErrBrokenStream, c.name)
		case pglogrepl.TupleDataTypeToast: // unchanged, no data: only ever in an update
			if c.field == fieldNone {
				continue
			}
			return r, fmt.Errorf("%w: column %s sent as an unchanged TOAST value", ErrBrokenStream, c.name)
		default:
			return r, fmt.Errorf("%w: column %s sent as %q", ErrBrokenStream, c.name, kind)
		}
		if c.field == fieldNone || kind == pglogrepl.TupleDataTypeBinary && r.setBinary(c, data) {
			continue
		}
		format := int16(pgtype.TextFormatCode)
		if kind == pglogrepl.TupleDataTypeBinary {
			format = pgtype.BinaryFormatCode
		}
		if err := d.scan(&r, c, format, data); err != nil {
			return r, fmt.Errorf("%w: column %s: %v", ErrBrokenStream, c.name, err)
		}
	}
	// key and value may still point into the message, which the connection
	// reuses.
	r.own()
	return r, nil
}

// own copies the row's key and value into one allocation of its own; a nil
// one (a NULL) stays nil.
func (r *row) own() {
	r.key, r.value = store.OwnKeyValue(r.key, r.value)
}

// setBinary sets a field from its binary form when the column has the type
// the schema gives it; anything else is left to scan.
func (r *row) setBinary(c column, data []byte) bool {
	switch {
	case c.oid == pgtype.Int8OID && len(data) == 8:
		return r.setInt(c.field, int64(binary.BigEndian.Uint64(data)))
	case c.oid == pgtype.Int4OID && len(data) == 4 && c.field == fieldSub:
		r.sub = int32(binary.BigEndian.Uint32(data))
	case c.oid == pgtype.BoolOID && len(data) == 1 && c.field == fieldTombstone:
		r.tombstone = data[0] != 0
	case c.oid == pgtype.ByteaOID && c.field == fieldKey:
		r.key = data
	case c.oid == pgtype.ByteaOID && c.field == fieldValue:
		r.value = data
	default:
		return false
	}
	return true
}

// setInt sets one of the int64 fields; it reports false for any other.
func (r *row) setInt(f field, v int64) bool {
	switch f {
	case fieldRevision:
		r.revision = v
	case fieldCreateRevision:
		r.createRevision = v
	case fieldVersion:
		r.version = v
	case fieldPrevRevision:
		r.prevRevision = v
	case fieldLease:
		r.lease = v
	default:
		return false
	}
	return true
}

// scan sets a field through pgtype: a column sent as text, or of a type
// other than the schema's. It scans into locals, so the row itself stays
// off the heap on the common path.
func (d *decoder) scan(r *row, c column, format int16, data []byte) error {
	switch c.field {
	case fieldSub:
		var v int32
		err := d.types.Scan(c.oid, format, data, &v)
		r.sub = v
		return err
	case fieldTombstone:
		var v bool
		err := d.types.Scan(c.oid, format, data, &v)
		r.tombstone = v
		return err
	case fieldKey, fieldValue:
		var v []byte
		err := d.types.Scan(c.oid, format, data, &v)
		if c.field == fieldKey {
			r.key = v
		} else {
			r.value = v
		}
		return err
	}
	var v int64
	err := d.types.Scan(c.oid, format, data, &v)
	r.setInt(c.field, v)
	return err
}

package replication

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// pgoutput messages built by hand, as the protocol documents them.

func cstr(s string) []byte { return append([]byte(s), 0) }

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

var kvColumns = []struct {
	name string
	oid  uint32
}{
	{"revision", pgtype.Int8OID}, {"sub", pgtype.Int4OID}, {"key", pgtype.ByteaOID}, {"value", pgtype.ByteaOID},
	{"tombstone", pgtype.BoolOID}, {"create_revision", pgtype.Int8OID}, {"version", pgtype.Int8OID},
	{"prev_revision", pgtype.Int8OID}, {"lease", pgtype.Int8OID}, {"created_at", pgtype.TimestamptzOID},
}

func relationMsg(relid uint32) []byte {
	b := append([]byte{'R'}, be32(relid)...)
	b = append(b, cstr("walwatch")...)
	b = append(b, cstr("kv")...)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(kvColumns)))
	for _, c := range kvColumns {
		b = append(b, 0)
		b = append(b, cstr(c.name)...)
		b = append(b, be32(c.oid)...)
		b = append(b, be32(0xffffffff)...)
	}
	return b
}

func beginMsg() []byte {
	b := append([]byte{'B'}, be64(0x16B3748)...)
	b = append(b, be64(1)...)
	return append(b, be32(731)...)
}

func commitMsg() []byte {
	b := []byte{'C', 0}
	b = append(b, be64(0x16B3748)...)
	b = append(b, be64(0x16B3780)...)
	return append(b, be64(1)...)
}

func insertMsg(relid uint32, rev int64, key, value string, tombstone bool) []byte {
	b := append([]byte{'I'}, be32(relid)...)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(kvColumns)))
	col := func(data []byte) {
		b = append(b, 'b')
		b = append(b, be32(uint32(len(data)))...)
		b = append(b, data...)
	}
	col(be64(uint64(rev)))
	col(be32(0))
	col([]byte(key))
	if tombstone {
		b = append(b, 'n')
	} else {
		col([]byte(value))
	}
	if tombstone {
		col([]byte{1})
	} else {
		col([]byte{0})
	}
	col(be64(uint64(rev))) // create_revision
	col(be64(1))           // version
	col(be64(0))           // prev_revision
	col(be64(0))           // lease
	col(be64(0))           // created_at
	return b
}

func TestDecodeTransaction(t *testing.T) {
	d := newDecoder()
	for _, msg := range [][]byte{relationMsg(16384), beginMsg(), insertMsg(16384, 7, "/a", "v", false), insertMsg(16384, 7, "/b", "", true)} {
		if done, err := d.decode(msg); err != nil || done != nil {
			t.Fatalf("decode: %v, %v", done, err)
		}
	}
	if !d.inTxn() {
		t.Fatal("not in a transaction after begin")
	}
	done, err := d.decode(commitMsg())
	if err != nil || done == nil {
		t.Fatalf("commit: %v, %v", done, err)
	}
	if done.endLSN != 0x16B3780 || len(done.rows) != 2 {
		t.Fatalf("txn %+v", done)
	}
	if r := done.rows[0]; r.revision != 7 || string(r.key) != "/a" || string(r.value) != "v" || r.tombstone || r.version != 1 {
		t.Fatalf("row 0 = %+v", r)
	}
	if r := done.rows[1]; !r.tombstone || r.value != nil {
		t.Fatalf("row 1 = %+v", r)
	}
}

// tupleMsg builds an Insert message into walwatch.kv from columns given as
// kind and data ('n' takes no data).
func tupleMsg(relid uint32, cols ...string) []byte {
	b := append([]byte{'I'}, be32(relid)...)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c[0])
		if c[0] == 't' || c[0] == 'b' {
			b = append(b, be32(uint32(len(c)-1))...)
			b = append(b, c[1:]...)
		}
	}
	return b
}

// TestDecodeColumns: binary columns decode in place, text ones (as a server
// without binary mode sends them) through pgtype, to the same rows; and a row
// keeps nothing of the message, whose buffer the connection reuses.
func TestDecodeColumns(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		want row
	}{
		{"binary put", insertMsg(16384, 7, "/a", "v", false),
			row{revision: 7, key: []byte("/a"), value: []byte("v"), createRevision: 7, version: 1}},
		{"text put", tupleMsg(16384, "t9", "t2", `t\x2f62`, `t\x7777`, "tf", "t8", "t3", "t8", "t5", "t2026-11-28 10:00:00+00"),
			row{revision: 9, sub: 2, key: []byte("/b"), value: []byte("ww"), createRevision: 8, version: 3, prevRevision: 8, lease: 5}},
		{"text tombstone", tupleMsg(16384, "t10", "t0", `t\x2f62`, "n", "tt", "t0", "t0", "t9", "t0", "n"),
			row{revision: 10, key: []byte("/b"), tombstone: true, prevRevision: 9}},
		{"binary empty value", insertMsg(16384, 11, "/c", "", false),
			row{revision: 11, key: []byte("/c"), value: []byte{}, createRevision: 11, version: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDecoder()
			for _, m := range [][]byte{relationMsg(16384), beginMsg(), tt.msg} {
				if _, err := d.decode(m); err != nil {
					t.Fatal(err)
				}
			}
			clear(tt.msg)
			if got := d.cur.rows; len(got) != 1 || !reflect.DeepEqual(got[0], tt.want) {
				t.Fatalf("rows = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeRejectsBrokenStreams(t *testing.T) {
	tests := []struct {
		name string
		msgs [][]byte
	}{
		{"insert into an unknown relation", [][]byte{beginMsg(), insertMsg(1, 2, "/a", "v", false)}},
		{"insert outside a transaction", [][]byte{relationMsg(1), insertMsg(1, 2, "/a", "v", false)}},
		{"commit outside a transaction", [][]byte{commitMsg()}},
		{"truncated insert", [][]byte{relationMsg(1), beginMsg(), insertMsg(1, 2, "/a", "v", false)[:20]}},
		{"garbage relation", [][]byte{{'R', 1, 2, 3}}},
		{"null key", [][]byte{relationMsg(1), beginMsg(), tupleMsg(1, "t1", "t0", "n", "n", "tf", "t0", "t0", "t0", "t0", "n")}},
		{"unchanged toast in an insert", [][]byte{relationMsg(1), beginMsg(), tupleMsg(1, "t1", "t0", "u", "n", "tf", "t0", "t0", "t0", "t0", "n")}},
		{"too few columns", [][]byte{relationMsg(1), beginMsg(), tupleMsg(1, "t1", "t0")}},
		{"column past the end", [][]byte{relationMsg(1), beginMsg(), insertMsg(1, 2, "/a", "v", false)[:30]}},
		{"revision not a number", [][]byte{relationMsg(1), beginMsg(), tupleMsg(1, "tx", "t0", `t\x2f`, "n", "tf", "t0", "t0", "t0", "t0", "n")}},
		{"empty message", [][]byte{{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDecoder()
			var err error
			for _, m := range tt.msgs {
				if _, err = d.decode(m); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrBrokenStream) {
				t.Fatalf("got %v, want ErrBrokenStream", err)
			}
		})
	}
}

// FuzzDecode: no input may crash the process; pglogrepl's decoders do no
// bounds checks, so the decoder must turn their panics into errors.
func FuzzDecode(f *testing.F) {
	f.Add(insertMsg(16384, 7, "/a", "v", false))
	f.Add(insertMsg(16384, 8, "/b", "", true))
	f.Add(commitMsg())
	f.Add(relationMsg(16384))
	f.Add([]byte{'I', 0, 0, 0x40, 0, 'N', 0, 10, 'b', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		d := newDecoder()
		if _, err := d.decode(relationMsg(16384)); err != nil {
			t.Fatal(err)
		}
		if _, err := d.decode(beginMsg()); err != nil {
			t.Fatal(err)
		}
		_, _ = d.decode(data)
		_, _ = d.decode(commitMsg())
	})
}

// BenchmarkDecodeInsert is the stream's cost per row: one Insert message of
// a typical route-sized value.
func BenchmarkDecodeInsert(b *testing.B) {
	d := newDecoder()
	for _, m := range [][]byte{relationMsg(16384), beginMsg()} {
		if _, err := d.decode(m); err != nil {
			b.Fatal(err)
		}
	}
	msg := insertMsg(16384, 7, "/bench/1234", `{"uri":"/get","upstream":"127.0.0.1:8080"}`, false)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.decode(msg); err != nil {
			b.Fatal(err)
		}
		d.cur.rows = d.cur.rows[:0]
	}
}

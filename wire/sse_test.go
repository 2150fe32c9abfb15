package wire

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	one := []Event{{Type: "PUT", Key: "/routes/a", Value: "{\"uri\":\"/x\"}\nline", Revision: 5, CreateRevision: 5, Version: 1}}
	two := []Event{{Type: "PUT", Key: "/a", Revision: 6}, {Type: "DELETE", Key: "/b", Revision: 6}}
	if err := WriteRevision(&buf, one); err != nil {
		t.Fatal(err)
	}
	if err := WriteProgress(&buf, 9); err != nil {
		t.Fatal(err)
	}
	if err := WriteRevision(&buf, two); err != nil {
		t.Fatal(err)
	}
	if err := WriteCompacted(&buf, 12); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	m, err := r.Next()
	if err != nil || m.ID != "5" || m.Event != "put" {
		t.Fatalf("first message %+v, %v", m, err)
	}
	evs, err := m.Events()
	if err != nil || len(evs) != 1 || evs[0].Value != one[0].Value {
		t.Fatalf("events %+v, %v", evs, err)
	}
	if m, err = r.Next(); err != nil || m.Comment != "progress 9" {
		t.Fatalf("progress %+v, %v", m, err)
	}
	m, _ = r.Next()
	if evs, err = m.Events(); err != nil || m.Event != "txn" || m.ID != "6" || len(evs) != 2 || evs[1].Type != "DELETE" {
		t.Fatalf("txn %+v %+v, %v", m, evs, err)
	}
	if m, _ = r.Next(); m.Event != "compacted" || string(m.Data) != `{"compact_revision":12}` {
		t.Fatalf("compacted %+v", m)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

func TestLineLimit(t *testing.T) {
	r := NewReader(bytes.NewReader(append(bytes.Repeat([]byte("x"), MaxLine+10), '\n')))
	if _, err := r.Next(); err != ErrLineTooLong {
		t.Fatalf("got %v", err)
	}
}

// TestHistoryChanged: the message that ends a watch when history changed on
// failover is a compacted message, which readers already re-list on, with
// its reason.
func TestHistoryChanged(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteHistoryChanged(&buf, 57, "history changed: re-list"); err != nil {
		t.Fatal(err)
	}
	m, err := NewReader(&buf).Next()
	if err != nil || m.Event != "compacted" {
		t.Fatalf("message %+v, %v", m, err)
	}
	var c Compacted
	if err := json.Unmarshal(m.Data, &c); err != nil || c != (Compacted{CompactRevision: 57, Reason: ReasonHistoryChanged, Message: "history changed: re-list"}) {
		t.Fatalf("data %s: %+v, %v", m.Data, c, err)
	}
}

// TestLongLines: lines longer than the reader's buffer, one after another
// and beside short ones, each message keeping its own data once the next is
// read (the reader keeps one line's storage for the next).
func TestLongLines(t *testing.T) {
	long := func(c byte, n int) string { return string(bytes.Repeat([]byte{c}, n)) }
	want := []Message{
		{ID: "1", Event: "put", Data: []byte(long('a', 300<<10))},
		{ID: "2", Event: "put", Data: []byte("short")},
		{ID: "3", Event: "txn", Data: []byte(long('b', 100<<10) + "\n" + long('c', 200<<10))},
		{ID: "4", Event: "put", Data: []byte(long('d', 70<<10))},
	}
	var stream bytes.Buffer
	for i, m := range want {
		end := "\n"
		if i%2 == 1 {
			end = "\r\n"
		}
		stream.WriteString("id: " + m.ID + end + "event: " + m.Event + end)
		for line := range bytes.SplitSeq(m.Data, []byte("\n")) {
			stream.WriteString("data: " + string(line) + end)
		}
		stream.WriteString(end)
	}
	r := NewReader(&stream)
	var got []Message
	for range want {
		m, err := r.Next()
		if err != nil {
			t.Fatalf("message %d: %v", len(got)+1, err)
		}
		got = append(got, m)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	for i, m := range got {
		if m.ID != want[i].ID || m.Event != want[i].Event || !bytes.Equal(m.Data, want[i].Data) {
			t.Errorf("message %d: id %q event %q, %d bytes of data; want %q %q, %d bytes as written",
				i+1, m.ID, m.Event, len(m.Data), want[i].ID, want[i].Event, len(want[i].Data))
		}
	}
}

// BenchmarkReaderLargeValues reads messages of one 1 MiB data line, as a
// data plane reads a watch of large values.
func BenchmarkReaderLargeValues(b *testing.B) {
	var msg bytes.Buffer
	msg.WriteString("id: 7\nevent: put\ndata: ")
	msg.Write(bytes.Repeat([]byte("v"), 1<<20))
	msg.WriteString("\n\n")
	const perStream = 16
	stream := bytes.Repeat(msg.Bytes(), perStream)
	b.SetBytes(int64(msg.Len()))
	b.ReportAllocs()
	for b.Loop() {
		r := NewReader(bytes.NewReader(stream))
		for range perStream {
			if _, err := r.Next(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

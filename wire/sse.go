package wire

// The watch stream is Server-Sent Events, one message per revision with the
// revision as its id:
//
//	id: 42
//	event: put                 (delete; txn when the revision holds several events)
//	data: {"type":"PUT","key":"/routes/foo","value":"...","revision":42,...}
//
//	: progress 57              (a comment: everything up to 57 has been sent)
//
//	event: compacted
//	data: {"compact_revision":100}
//
//	event: compacted           (history changed on failover: re-list, as for a compaction)
//	data: {"compact_revision":57,"reason":"history_changed","message":"..."}
//
// A txn's data is a JSON array of its events. Both compacted messages end
// the stream, and say the same to a client: its state cannot be brought up
// to date by resuming; re-list, then watch from the list's revision + 1. A reconnecting client sends the
// last id it saw as Last-Event-ID and the stream resumes after it.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/walwatch/walwatch/replication"
)

// Compacted is the data of a compacted message.
type Compacted struct {
	CompactRevision int64 `json:"compact_revision"`
	// Reason is ReasonHistoryChanged when the stream ended because the
	// database failed over to a server that lacks revisions already sent;
	// empty for a compaction. Message says it in words.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// ReasonHistoryChanged is Compacted.Reason when history changed on
// failover (replication.ErrHistoryChanged): CompactRevision is then the
// first revision of the new history.
const ReasonHistoryChanged = "history_changed"

// WriteRevision writes the events of one revision as one message.
func WriteRevision(w io.Writer, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	name := strings.ToLower(evs[0].Type)
	var data any = evs[0]
	if len(evs) > 1 {
		name, data = "txn", evs
	}
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", evs[0].Revision, name, b)
	return err
}

// WriteProgress writes a progress comment.
func WriteProgress(w io.Writer, rev int64) error {
	_, err := fmt.Fprintf(w, ": progress %d\n\n", rev)
	return err
}

// WriteCompacted writes the message that ends a watch whose start revision
// was compacted away.
func WriteCompacted(w io.Writer, compactRev int64) error {
	b, _ := json.Marshal(Compacted{CompactRevision: compactRev})
	_, err := fmt.Fprintf(w, "event: compacted\ndata: %s\n\n", b)
	return err
}

// WriteHistoryChanged writes the message that ends a watch when history
// changed on failover: a compacted message, so that a client re-lists as
// after a compaction, with its reason. rev is the first revision of the new
// history.
func WriteHistoryChanged(w io.Writer, rev int64, message string) error {
	b, err := json.Marshal(Compacted{CompactRevision: rev, Reason: ReasonHistoryChanged, Message: message})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: compacted\ndata: %s\n\n", b)
	return err
}

// Message is one SSE message (or a comment, when Comment is set).
type Message struct {
	ID      string
	Event   string
	Data    []byte
	Comment string
}

// Events decodes a put, delete or txn message's events.
func (m Message) Events() ([]Event, error) {
	if m.Event == "txn" {
		var evs []Event
		return evs, json.Unmarshal(m.Data, &evs)
	}
	var ev Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return nil, err
	}
	return []Event{ev}, nil
}

// MaxLine bounds one line of the stream; a value is at most 1.5 MiB, and
// JSON escaping can double it.
const MaxLine = 4 << 20

// ErrLineTooLong is returned by Next for a line over MaxLine.
var ErrLineTooLong = errors.New("sse: line too long")

// Reader reads messages from an event stream.
type Reader struct {
	r *bufio.Reader
	// long holds a line longer than r's buffer while it is read, and keeps
	// its storage for the next one: a value of a mebibyte is a line of its
	// own, and growing a fresh slice for each, then copying it twice more,
	// allocated 6.5 times its size (BenchmarkReaderLargeValues).
	long []byte
}

// NewReader reads messages from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// Next returns the next message or comment.
func (r *Reader) Next() (Message, error) {
	var m Message
	var data [][]byte
	for {
		line, err := r.line()
		if err != nil {
			return Message{}, err
		}
		switch {
		case len(line) == 0: // the blank line ends a message
			if m.Event == "" && m.ID == "" && data == nil {
				if m.Comment != "" {
					return m, nil
				}
				continue
			}
			if len(data) == 1 {
				m.Data = data[0] // a copy already
			} else {
				m.Data = bytes.Join(data, []byte("\n"))
			}
			return m, nil
		case line[0] == ':':
			m.Comment = strings.TrimSpace(string(line[1:]))
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "id":
				m.ID = string(value)
			case "event":
				m.Event = string(value)
			case "data":
				data = append(data, bytes.Clone(value))
			}
		}
	}
}

// line returns the next line, without its end. It is valid until the next
// call: it is in r's buffer, or in r.long.
func (r *Reader) line() ([]byte, error) {
	chunk, isPrefix, err := r.r.ReadLine()
	if err != nil {
		return nil, err
	}
	if !isPrefix {
		return bytes.TrimSuffix(chunk, []byte("\r")), nil
	}
	buf := append(r.long[:0], chunk...)
	for isPrefix {
		if chunk, isPrefix, err = r.r.ReadLine(); err != nil {
			return nil, err
		}
		buf = append(buf, chunk...)
		if len(buf) > MaxLine {
			return nil, ErrLineTooLong
		}
	}
	r.long = buf
	return bytes.TrimSuffix(buf, []byte("\r")), nil
}

// ForEachRevision calls fn with the events of each revision in evs (which
// the hub delivers in revision order), converted for the wire.
func ForEachRevision(evs []replication.Event, fn func([]Event) error) error {
	for len(evs) > 0 {
		n := 1
		for n < len(evs) && evs[n].Revision == evs[0].Revision {
			n++
		}
		batch := make([]Event, n)
		for i := range n {
			batch[i] = FromEvent(evs[i])
		}
		if err := fn(batch); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}

package wire

import (
	"time"

	"github.com/walwatch/walwatch/replication"
)

// Event is one watch event in JSON, as the watch stream and `walwatch watch
// -o json` show it. Keys and values travel as strings, or in the _base64
// fields when they are not UTF-8 text (see Text).
type Event struct {
	Type           string     `json:"type"` // PUT or DELETE
	Key            string     `json:"key"`
	KeyBase64      string     `json:"key_base64,omitempty"`
	Value          string     `json:"value"`
	ValueBase64    string     `json:"value_base64,omitempty"`
	Revision       int64      `json:"revision"`
	CreateRevision int64      `json:"create_revision"`
	Version        int64      `json:"version"`
	CommitTime     *time.Time `json:"commit_time,omitempty"` // when the write committed, for watch delay
	// PrevValue is the key's value before the event, for a watch that asked
	// for it and a key that had one.
	PrevValue       *string `json:"prev_value,omitempty"`
	PrevValueBase64 string  `json:"prev_value_base64,omitempty"`
}

// FromEvent converts a hub event.
func FromEvent(ev replication.Event) Event {
	out := Event{Type: ev.Type.String(), Revision: ev.Revision, CreateRevision: ev.CreateRevision, Version: ev.Version}
	out.Key, out.KeyBase64 = Text(ev.Key)
	out.Value, out.ValueBase64 = Text(ev.Value)
	if !ev.CommitTime.IsZero() {
		t := ev.CommitTime
		out.CommitTime = &t
	}
	if ev.PrevKV != nil {
		var prev string
		prev, out.PrevValueBase64 = Text(ev.PrevKV.Value)
		out.PrevValue = &prev
	}
	return out
}

// KeyBytes returns the event's key as the bytes it is.
func (e Event) KeyBytes() ([]byte, error) { return Bytes(e.Key, e.KeyBase64) }

// ValueBytes returns the event's value as the bytes it is.
func (e Event) ValueBytes() ([]byte, error) { return Bytes(e.Value, e.ValueBase64) }

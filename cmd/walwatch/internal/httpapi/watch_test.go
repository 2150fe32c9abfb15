package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

// TestWriteResponseEnds: a watch that ends for a compaction or for history
// changed on failover ends its stream with a compacted message (the second
// with its reason), so an SSE client re-lists either way; other ends write
// nothing.
func TestWriteResponseEnds(t *testing.T) {
	hc := &replication.HistoryChangedError{Revision: 41, Exposed: 0x3000100, SwitchPoint: 0x3000000, OldTimeline: 1, NewTimeline: 2}
	for _, c := range []struct {
		err  error
		want wire.Compacted
		none bool
	}{
		{err: &store.CompactedError{Revision: 3, CompactRevision: 10}, want: wire.Compacted{CompactRevision: 10}},
		{err: fmt.Errorf("watch: %w", hc), want: wire.Compacted{CompactRevision: 42, Reason: wire.ReasonHistoryChanged, Message: hc.Error()}},
		{err: replication.ErrHubStopped, none: true},
	} {
		var buf bytes.Buffer
		if err := writeResponse(&buf, replication.WatchResponse{Canceled: true, Err: c.err}); err != nil {
			t.Fatal(err)
		}
		if c.none {
			if buf.Len() != 0 {
				t.Errorf("%v: wrote %q, want nothing", c.err, buf.String())
			}
			continue
		}
		m, err := wire.NewReader(&buf).Next()
		if err != nil || m.Event != "compacted" {
			t.Fatalf("%v: message %+v, %v", c.err, m, err)
		}
		var got wire.Compacted
		if err := json.Unmarshal(m.Data, &got); err != nil || got != c.want {
			t.Errorf("%v: data %s, want %+v", c.err, m.Data, c.want)
		}
	}
}

package replication

import (
	"testing"
	"time"
)

// A WAL sender asks for the hub's position once per half wal_sender_timeout
// while it runs, and over and over while it waits to shut down: only the
// second ends the session.
func TestReplyRequestsClosing(t *testing.T) {
	tests := []struct {
		name  string
		n     int
		every time.Duration
		want  bool
	}{
		{"a running server's, every 30s", 100, 30 * time.Second, false},
		{"a few in a burst", maxReplyRequests, time.Millisecond, false},
		{"a shutting-down server's ping-pong", maxReplyRequests + 1, 100 * time.Microsecond, true},
		{"many, but never more than the limit in a second", 200, 60 * time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r replyRequests
			now := time.Unix(1e9, 0)
			got := false
			for range tt.n {
				got = got || r.closing(now)
				now = now.Add(tt.every)
			}
			if got != tt.want {
				t.Fatalf("closing after %d requests %v apart = %v, want %v", tt.n, tt.every, got, tt.want)
			}
		})
	}
}

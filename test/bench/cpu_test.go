package main

import (
	"testing"
	"time"
)

// A process that exits between two readings takes nothing off the sum (a
// closed pool's backends once made a turn's CPU negative); one that starts
// between them counts whole.
func TestCPUSampleSince(t *testing.T) {
	s := time.Second
	before := cpuSample{postgres: map[int]time.Duration{1: 10 * s, 2: 8 * s, 3: 1 * s}, self: 2 * s, extra: 1 * s}
	after := cpuSample{postgres: map[int]time.Duration{1: 11 * s, 3: 3 * s, 4: s / 2}, self: 3 * s, extra: 4 * s}
	got := after.since(before)
	want := cpuTimes{postgres: s + 2*s + s/2, self: s, extra: 3 * s}
	if got != want {
		t.Errorf("since = %+v, want %+v", got, want)
	}
}

// Package wait is how tests wait for a condition: polled, with a deadline,
// never with a sleep that guesses how long a result takes.
package wait

import (
	"testing"
	"time"
)

// Timeout bounds every wait: none of them is a timing assertion, each
// bounds a wait for a condition that should hold long before.
const Timeout = 30 * time.Second

// pollInterval is how often a condition is checked.
const pollInterval = 5 * time.Millisecond

// For polls cond until it holds, failing the test once Timeout has passed.
func For(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	Within(tb, Timeout, what, cond)
}

// Within polls cond until it holds, failing the test after timeout.
func Within(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

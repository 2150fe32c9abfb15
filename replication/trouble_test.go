package replication

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// A failure that repeats is logged at WARN once per spell, its retries at
// DEBUG, and the success that ends it at INFO.
func TestTroubleLogsOncePerSpell(t *testing.T) {
	var buf bytes.Buffer
	tr := newTrouble(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "reading failed")
	tr.ok() // no spell: nothing to say
	for range 2 {
		for range 5 {
			tr.failed(errors.New("connection refused"), "revision", 7)
		}
		tr.ok()
		tr.ok()
	}
	var levels []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		for _, lv := range []string{"WARN", "INFO", "DEBUG"} {
			if strings.Contains(line, "level="+lv) {
				levels = append(levels, lv)
			}
		}
	}
	if got := strings.Join(levels, ","); got != "WARN,INFO,WARN,INFO" {
		t.Fatalf("levels logged: %s, want WARN,INFO,WARN,INFO\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "retries=4") {
		t.Errorf("the INFO does not count the 4 retries:\n%s", buf.String())
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/test/pgtest"
)

var lsnPattern = regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`)

// cliSlotName is a slot name of the test's own: slots are cluster-wide.
func cliSlotName(t *testing.T) string {
	t.Helper()
	return "cli_" + strings.ToLower(rand.Text()[:10])
}

// dropSlotsAtEnd drops the named slots when the test ends, before the
// database goes: PostgreSQL refuses to drop a database while one of its
// slots is active, and forcing waits for the walsender to let go.
// The test's context is gone by then, so this does not go through run.
func dropSlotsAtEnd(t *testing.T, url string, names ...string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer pool.Close()
		for _, name := range names {
			if err := replication.DropSlot(ctx, pool, name, true); err != nil && !errors.Is(err, replication.ErrSlotNotFound) {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
}

// findSlot returns the object named name from `slot list -o json`.
func findSlot(t *testing.T, out, name string) (map[string]any, bool) {
	t.Helper()
	var slots []map[string]any
	if err := json.Unmarshal([]byte(out), &slots); err != nil {
		t.Fatalf("slot list -o json printed %q: %v", out, err)
	}
	for _, s := range slots {
		if s["name"] == name {
			return s, true
		}
	}
	return nil, false
}

func TestSlotCLI(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	name, other := cliSlotName(t), cliSlotName(t)
	dropSlotsAtEnd(t, url, name, other)

	out, err := run(t, url, "slot", "create", name)
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`^slot (\S+) created at LSN (\S+)\n$`).FindStringSubmatch(out); m == nil || m[1] != name || !lsnPattern.MatchString(m[2]) {
		t.Fatalf("slot create printed %q", out)
	}

	out, err = run(t, url, "slot", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	s, ok := findSlot(t, out, name)
	if !ok {
		t.Fatalf("slot list -o json has no %s: %s", name, out)
	}
	if s["plugin"] != "pgoutput" || s["slot_type"] != "logical" || s["active"] != false || s["active_pid"] != 0.0 ||
		s["temporary"] != false || s["safe_wal_size"] != nil || s["wal_status"] != "reserved" {
		t.Errorf("slot list -o json: %v", s)
	}
	for _, key := range []string{"restart_lsn", "confirmed_flush_lsn"} {
		if v, _ := s[key].(string); !lsnPattern.MatchString(v) {
			t.Errorf("%s = %v, want an LSN like 0/16B3748", key, s[key])
		}
	}
	if held, ok := s["wal_held_bytes"].(float64); !ok || held < 0 {
		t.Errorf("wal_held_bytes = %v", s["wal_held_bytes"])
	}
	warnings, ok := s["warnings"].([]any)
	if !ok || len(warnings) != 1 || !strings.HasPrefix(warnings[0].(string), "inactive:") {
		t.Errorf("warnings = %#v, want the inactive warning", s["warnings"])
	}

	// --large-wal 1 flags any slot that holds WAL at all; a fresh slot
	// may hold none yet, so only check the flag is accepted and applied.
	out, err = run(t, url, "slot", "list", "--large-wal", "1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := findSlot(t, out, name); !ok {
		t.Fatalf("slot list --large-wal 1 has no %s: %s", name, out)
	} else if held := s["wal_held_bytes"].(float64); held > 0 && !strings.Contains(out, "of WAL") {
		t.Errorf("slot holds %v bytes, but --large-wal 1 did not flag it: %v", held, s["warnings"])
	}

	out, err = run(t, url, "slot", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NAME", "WARNINGS", name, "pgoutput", "inactive: nothing is reading it"} {
		if !strings.Contains(out, want) {
			t.Errorf("slot list table does not mention %q:\n%s", want, out)
		}
	}

	out, err = run(t, url, "slot", "create", other, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var created map[string]any
	if err := json.Unmarshal([]byte(out), &created); err != nil || created["name"] != other || created["plugin"] != "pgoutput" {
		t.Errorf("slot create -o json printed %q (%v)", out, err)
	}

	steps := []struct {
		args    []string
		want    string // output, or a substring of the error
		wantErr bool
	}{
		{[]string{"slot", "create", name}, fmt.Sprintf("create slot %s: replication slot %q already exists", name, name), true},
		{[]string{"slot", "drop", name}, fmt.Sprintf("slot %s dropped\n", name), false},
		{[]string{"slot", "drop", name}, fmt.Sprintf("slot %q does not exist", name), true},
		{[]string{"slot", "drop", other, "-o", "json"}, fmt.Sprintf(`{"dropped":%q}`+"\n", other), false},
		{[]string{"slot", "create", "Bad-Name"}, `invalid replication slot name "Bad-Name"`, true},
		{[]string{"slot", "drop", ""}, "invalid replication slot name", true},
		{[]string{"slot", "create"}, "accepts 1 arg", true},
	}
	for _, st := range steps {
		out, err := run(t, url, st.args...)
		if st.wantErr {
			if err == nil || !strings.Contains(err.Error(), st.want) {
				t.Errorf("walwatch %s: error %v, want one containing %q", strings.Join(st.args, " "), err, st.want)
			}
			continue
		}
		if err != nil || out != st.want {
			t.Errorf("walwatch %s printed %q (err %v), want %q", strings.Join(st.args, " "), out, err, st.want)
		}
	}

	out, err = run(t, url, "slot", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{name, other} {
		if _, ok := findSlot(t, out, n); ok {
			t.Errorf("slot list still shows dropped %s: %s", n, out)
		}
	}
}

func TestSlotCLIDropActive(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	name := cliSlotName(t)
	dropSlotsAtEnd(t, url, name)
	if _, err := run(t, url, "slot", "create", name); err != nil {
		t.Fatal(err)
	}

	pgtest.ReadSlot(t, url, name)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	var pid float64
	for {
		out, err := run(t, url, "slot", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		s, ok := findSlot(t, out, name)
		if !ok {
			t.Fatalf("slot list has no %s: %s", name, out)
		}
		if pid = s["active_pid"].(float64); pid != 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("slot never became active: %v", s)
		case <-time.After(10 * time.Millisecond):
		}
	}

	out, err := run(t, url, "slot", "list")
	row := regexp.MustCompile(fmt.Sprintf(`(?m)^%s +pgoutput +%d `, name, int(pid)))
	if err != nil || !row.MatchString(out) {
		t.Errorf("slot list table does not show %s active for PID %d:\n%s (err %v)", name, int(pid), out, err)
	}

	_, err = run(t, url, "slot", "drop", name)
	want := fmt.Sprintf("drop slot %s: replication slot %q is active for PID %d: use --force to terminate it", name, name, int(pid))
	if err == nil || err.Error() != want {
		t.Fatalf("slot drop of an active slot: %v, want %q", err, want)
	}
	out, err = run(t, url, "slot", "drop", name, "--force")
	if err != nil || out != fmt.Sprintf("slot %s dropped\n", name) {
		t.Fatalf("slot drop --force printed %q (err %v)", out, err)
	}
}

// The empty list is not a special case for scripts: JSON gets [], not null.
func TestPrintSlotsEmpty(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ output, want string }{
		{"json", "[]\n"},
		{"table", "no replication slots\n"},
	} {
		var out bytes.Buffer
		g := &globals{output: tt.output, stdout: &out}
		if err := g.printSlots(nil, replication.LargeWALHeld); err != nil {
			t.Fatal(err)
		}
		if out.String() != tt.want {
			t.Errorf("-o %s printed %q, want %q", tt.output, out.String(), tt.want)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{16 << 20, "16.0 MiB"},
		{3<<30 + 512<<20, "3.5 GiB"},
		{2048 << 40, "2048.0 TiB"},
		{-5 << 20, "-5.0 MiB"},
	} {
		if got := humanBytes(tt.n); got != tt.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestSlotCLIUnknownSubcommand(t *testing.T) {
	t.Parallel()
	// No server is needed to reject it; the URL is never dialled.
	_, err := run(t, "postgres://127.0.0.1:1/none?sslmode=disable", "slot", "lsit")
	if err == nil || !strings.Contains(err.Error(), `unknown command "lsit"`) {
		t.Fatalf("walwatch slot lsit: %v, want an unknown command error", err)
	}
}

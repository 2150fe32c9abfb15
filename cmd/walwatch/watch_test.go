package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgtest"
)

// startWatch runs `walwatch watch args...` until the returned stop is called.
func startWatch(t *testing.T, url string, args ...string) (out *logs.Buffer, stop func() error) {
	t.Helper()
	out = &logs.Buffer{}
	cmd := newRootCommand(out, &logs.Buffer{})
	cmd.SetArgs(append([]string{"--postgres", url, "watch"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	return out, func() error { cancel(); return <-done }
}

func waitForOutput(t *testing.T, out *logs.Buffer, lines int) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := strings.Split(strings.TrimSpace(out.String()), "\n")
		if out.String() != "" && len(got) >= lines {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch printed %q, want %d lines", out.String(), lines)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

func TestWatchCommand(t *testing.T) {
	url := pgtest.NewDatabase(t)
	if _, err := run(t, url, "migrate"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"put", "/routes/a", "1"}, {"put", "/routes/a", "2"}} { // revisions 2, 3
		if _, err := run(t, url, args...); err != nil {
			t.Fatal(err)
		}
	}

	// From a past revision, as JSON lines, with previous values.
	out, stop := startWatch(t, url, "/routes/", "--prefix", "--rev", "3", "--prev-kv", "-o", "json")
	if _, err := run(t, url, "del", "/routes/a"); err != nil { // revision 4
		t.Fatal(err)
	}
	if _, err := run(t, url, "put", "/other", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, url, "put", "/routes/b", "new"); err != nil { // revision 6
		t.Fatal(err)
	}
	lines := waitForOutput(t, out, 3)
	if err := stop(); err != nil {
		t.Fatalf("watch exited with %v", err)
	}
	want := []string{
		`{"type":"PUT","key":"/routes/a","value":"2","revision":3,"create_revision":2,"version":2,"prev_value":"1"}`,
		`{"type":"DELETE","key":"/routes/a","value":"","revision":4,"create_revision":0,"version":0,"prev_value":"2"}`,
		`{"type":"PUT","key":"/routes/b","value":"new","revision":6,"create_revision":6,"version":1}`,
	}
	for i, line := range lines {
		var a, b any
		if json.Unmarshal([]byte(line), &a) != nil || json.Unmarshal([]byte(want[i]), &b) != nil {
			t.Fatalf("line %d is not JSON: %q", i, line)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if string(ja) != string(jb) {
			t.Fatalf("line %d = %s, want %s", i, line, want[i])
		}
	}

	// From now, in etcdctl's text form.
	out, stop = startWatch(t, url, "/routes/b")
	waitForTempSlot(t, url, true)
	// "From now" starts when the watch is registered, which the test cannot
	// see: put until the watch prints.
	deadline := time.Now().Add(30 * time.Second)
	for out.String() == "" && time.Now().Before(deadline) {
		if _, err := run(t, url, "put", "/routes/b", "newer"); err != nil {
			t.Fatal(err)
		}
	}
	if got := waitForOutput(t, out, 3); strings.Join(got[:3], "|") != "PUT|/routes/b|newer" {
		t.Fatalf("text output %q", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Its temporary slot is gone with it: nothing is left pinning WAL.
	waitForTempSlot(t, url, false)

	// A compacted start revision fails and says so.
	if _, err := run(t, url, "compact", "--revision", "5"); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, url, "watch", "/routes/", "--prefix", "--rev", "2"); err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Fatalf("watch from a compacted revision: %v", err)
	}
	if _, err := run(t, url, "watch", "/routes/", "--rev", "-1"); err == nil || !strings.Contains(err.Error(), "invalid revision") {
		t.Fatalf("watch from a negative revision: %v", err)
	}
}

// waitForTempSlot waits until this database has (or no longer has) a
// temporary slot.
func waitForTempSlot(t *testing.T, url string, present bool) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := conn.QueryRow(context.Background(),
			"select count(*) from pg_replication_slots where temporary and database = current_database()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (n > 0) == present {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary slots: %d, want present=%v", n, present)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

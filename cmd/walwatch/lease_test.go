package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgtest"
)

// newLeaseDB returns a migrated database and a store on it, for what the
// CLI cannot do itself here (a put with a lease).
func newLeaseDB(t *testing.T) (string, *store.Store) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	if _, err := run(t, url, "migrate"); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return url, store.New(pool, store.Limits{})
}

// grantLease runs `walwatch lease grant ttl -o json` and returns the ID.
func grantLease(t *testing.T, url string, ttl int) int64 {
	t.Helper()
	out, err := run(t, url, "lease", "grant", fmt.Sprint(ttl), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		ID    int64  `json:"id"`
		IDHex string `json:"id_hex"`
		TTL   int64  `json:"ttl"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.ID <= 0 || l.IDHex != fmt.Sprintf("%016x", l.ID) {
		t.Fatalf("lease grant -o json printed %q (%v): want a positive id and its hex", out, err)
	}
	return l.ID
}

func TestLeaseCommands(t *testing.T) {
	url, s := newLeaseDB(t)
	id := grantLease(t, url, 60)
	hex := fmt.Sprintf("%016x", id)
	for _, k := range []string{"/svc/a", "/svc/b"} {
		if _, err := s.PutLease(t.Context(), []byte(k), []byte("up"), id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutLease(t.Context(), []byte{'/', 0xff}, []byte("up"), id); err != nil {
		t.Fatal(err)
	}
	other := grantLease(t, url, 1) // raised to the minimum
	otherHex := fmt.Sprintf("%016x", other)

	steps := []struct {
		args []string
		want string // JSON output, a regexp the output matches, or a substring of the error
		kind string // "json", "table" (a regexp) or "error"
	}{
		{[]string{"lease", "grant", "5"}, `^lease [0-9a-f]{16} granted with TTL\(5s\)\n$`, "table"},
		// JSON as the exact line it is, for a remaining time that may be 59s
		// on a slow machine.
		{[]string{"lease", "timetolive", hex, "--keys", "-o", "json"},
			fmt.Sprintf(`^\{"id":%d,"id_hex":"%s","ttl":60,"remaining":(59|60),"keys":\[\{"key":"/svc/a"\},\{"key":"/svc/b"\},\{"key":"","key_base64":"L/8="\}\]\}\n$`, id, hex), "table"},
		{[]string{"lease", "timetolive", hex, "-o", "json"}, fmt.Sprintf(`^\{"id":%d,"id_hex":"%s","ttl":60,"remaining":(59|60)\}\n$`, id, hex), "table"},
		{[]string{"lease", "timetolive", "0x" + hex}, `^lease ` + hex + ` granted with TTL\(60s\), remaining\((59|60)s\)\n$`, "table"},
		{[]string{"lease", "timetolive", otherHex, "--keys"}, `^lease ` + otherHex + ` granted with TTL\(2s\), remaining\([0-2]s\), attached keys\(\[\]\)\n$`, "table"},
		{[]string{"lease", "timetolive", "abc"}, `^lease 0000000000000abc already expired\n$`, "table"},
		{[]string{"lease", "timetolive", "abc", "-o", "json"}, `{"id":2748,"id_hex":"0000000000000abc","ttl":0,"remaining":-1}`, "json"},
		{[]string{"lease", "keep-alive", hex, "--once"}, `^lease ` + hex + ` keepalived with TTL\(60\)\n$`, "table"},
		{[]string{"lease", "keep-alive", "--once", hex, "-o", "json"}, fmt.Sprintf(`{"id":%d,"id_hex":%q,"ttl":60}`, id, hex), "json"},
		{[]string{"lease", "keep-alive", "abc", "--once"}, "keep lease 0000000000000abc alive: requested lease not found (expired or revoked)", "error"},
		{[]string{"lease", "revoke", otherHex, "-o", "json"}, `{"revision":4,"deleted":0}`, "json"}, // no keys: no revision
		{[]string{"lease", "list", "-o", "json"}, "", "json"},                                       // filled in below
		{[]string{"lease", "revoke", hex}, `^lease ` + hex + ` revoked\n$`, "table"},
		{[]string{"get", "/", "--prefix", "-o", "json"}, `{"revision":5,"kvs":[],"more":false}`, "json"}, // all three keys in revision 5
		{[]string{"lease", "revoke", hex}, "revoke lease " + hex + ": requested lease not found", "error"},
		{[]string{"lease", "timetolive", hex}, `^lease ` + hex + ` already expired\n$`, "table"},
		// Bad arguments, refused before PostgreSQL is asked.
		{[]string{"lease", "revoke", "xyz"}, `bad lease ID "xyz": expecting an ID in hex`, "error"},
		{[]string{"lease", "revoke", "--", "-5"}, `bad lease ID "-5"`, "error"},
		{[]string{"lease", "timetolive", "+5"}, `bad lease ID "+5"`, "error"},
		{[]string{"lease", "keep-alive", "10000000000000000"}, `bad lease ID "10000000000000000"`, "error"},
		{[]string{"lease", "keep-alive", "8000000000000000"}, `bad lease ID "8000000000000000"`, "error"},
		{[]string{"lease", "grant", "ten"}, `bad TTL "ten"`, "error"},
		{[]string{"lease", "grant", "--", "-1"}, `bad TTL "-1"`, "error"},
		{[]string{"lease", "grant", "9000000001"}, "too large lease TTL", "error"},
		{[]string{"lease", "grant"}, "accepts 1 arg(s), received 0", "error"},
		{[]string{"lease", "list", "x"}, `unknown command "x"`, "error"},
		{[]string{"lease", "nope"}, `unknown command "nope"`, "error"},
	}
	for _, st := range steps {
		if st.args[1] == "list" && st.kind == "json" {
			// Two leases are left, in ID order: id and the one of 5s.
			ids, err := s.Leases(t.Context())
			if err != nil || len(ids) != 2 || (ids[0] != id && ids[1] != id) {
				t.Fatalf("leases: %v, %v (id %d other %d)", ids, err, id, other)
			}
			st.want = fmt.Sprintf(`{"leases":[{"id":%d,"id_hex":"%016x"},{"id":%d,"id_hex":"%016x"}]}`, ids[0], ids[0], ids[1], ids[1])
		}
		out, err := run(t, url, st.args...)
		cmdline := "walwatch " + strings.Join(st.args, " ")
		switch {
		case st.kind == "error":
			if err == nil || !strings.Contains(err.Error(), st.want) {
				t.Fatalf("%s: error %v (output %q), want one containing %q", cmdline, err, out, st.want)
			}
		case err != nil:
			t.Fatalf("%s: %v", cmdline, err)
		case st.kind == "json" && !jsonEqual(t, out, st.want):
			t.Fatalf("%s printed %s, want %s", cmdline, out, st.want)
		case st.kind == "table" && !regexp.MustCompile(st.want).MatchString(out):
			t.Fatalf("%s printed %q, want it to match %s", cmdline, out, st.want)
		}
	}
}

// TestLeaseListTable: etcdctl's lines, the IDs in order.
func TestLeaseListTable(t *testing.T) {
	url, s := newLeaseDB(t)
	if out, err := run(t, url, "lease", "list"); err != nil || out != "found 0 leases\n" {
		t.Fatalf("lease list with none: %q, %v", out, err)
	}
	for _, id := range []int64{0x694d77aa9e38260f, 5} {
		if _, err := s.Grant(t.Context(), 10, id); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := run(t, url, "lease", "list"); err != nil || out != "found 2 leases\n0000000000000005\n694d77aa9e38260f\n" {
		t.Fatalf("lease list: %q, %v", out, err)
	}
}

// startKeepAlive runs `walwatch lease keep-alive args...` until the
// returned stop is called or it exits by itself; done yields its error.
func startKeepAlive(t *testing.T, url string, args ...string) (out *logs.Buffer, stop func() error, done <-chan error) {
	t.Helper()
	out = &logs.Buffer{}
	cmd := newRootCommand(out, &logs.Buffer{})
	cmd.SetArgs(append([]string{"--postgres", url, "lease", "keep-alive"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(cancel)
	return out, func() error { cancel(); return <-ch }, ch
}

// TestLeaseKeepAliveCommand: keep-alive renews every third of the TTL for
// longer than the TTL, stops when interrupted, and exits when the lease is
// revoked under it, saying so as etcdctl does.
func TestLeaseKeepAliveCommand(t *testing.T) {
	url, s := newLeaseDB(t)
	id := grantLease(t, url, store.MinLeaseTTL)
	hex := fmt.Sprintf("%016x", id)

	// Six renewals, a third of the TTL apart: twice the TTL.
	out, stop, _ := startKeepAlive(t, url, hex)
	lines := waitForOutput(t, out, 6)
	for _, line := range lines {
		if want := fmt.Sprintf("lease %s keepalived with TTL(%d)", hex, store.MinLeaseTTL); line != want {
			t.Fatalf("keep-alive printed %q, want %q", line, want)
		}
	}
	l, ok, err := s.TimeToLive(t.Context(), id, false)
	if err != nil || !ok || l.Remaining < 1 {
		t.Fatalf("after %d renewals over twice its TTL the lease has %+v (%v, %v), want time left", len(lines), l, ok, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("keep-alive interrupted: %v, want a clean exit", err)
	}

	// Revoked under a running keep-alive, as JSON lines.
	out, _, done := startKeepAlive(t, url, hex, "-o", "json")
	waitForOutput(t, out, 1)
	if _, err := run(t, url, "lease", "revoke", hex); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("keep-alive of a revoked lease: %v, want exit 0 as etcdctl's", err)
	}
	lines = strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; !jsonEqual(t, last, fmt.Sprintf(`{"id":%d,"id_hex":%q,"ttl":0}`, id, hex)) {
		t.Fatalf("keep-alive's last line %q, want TTL 0", last)
	}

	// The same in a table.
	id = grantLease(t, url, store.MinLeaseTTL)
	hex = fmt.Sprintf("%016x", id)
	out, _, done = startKeepAlive(t, url, hex)
	waitForOutput(t, out, 1)
	if _, err := s.Revoke(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("keep-alive of a revoked lease: %v", err)
	}
	if !strings.HasSuffix(out.String(), "\nlease "+hex+" expired or revoked.\n") {
		t.Fatalf("keep-alive printed %q, want etcdctl's last line", out)
	}
}

func TestParseLeaseArg(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // -1: refused
	}{
		{"694d77aa9e38260f", 0x694d77aa9e38260f},
		{"694D77AA9E38260F", 0x694d77aa9e38260f},
		{"0x694d77aa9e38260f", 0x694d77aa9e38260f},
		{"0X694d77aa9e38260f", 0x694d77aa9e38260f},
		{"10", 16}, // hex, as etcdctl reads it
		{"0", 0},
		{"7fffffffffffffff", 1<<63 - 1},
		{"8000000000000000", -1},
		{"-5", -1},
		{"+5", -1},
		{"0x-5", -1},
		{"0x+5", -1},
		{"0x", -1},
		{"", -1},
		{"g", -1},
		{"1_0", -1},
		{" 5", -1},
	} {
		got, err := parseLeaseArg(tc.in)
		if (tc.want == -1) != (err != nil) || (err == nil && got != tc.want) {
			t.Errorf("parseLeaseArg(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

// TestPutLease: put --lease attaches a key (hex ID, as etcdctl), a put
// without it detaches the key, an unknown lease is refused and writes
// nothing.
func TestPutLease(t *testing.T) {
	url, _ := newLeaseDB(t)
	id := grantLease(t, url, 60)
	hex := fmt.Sprintf("%016x", id)
	for _, st := range []struct {
		args []string
		want string // JSON output, or a substring of the error
		err  bool
	}{
		{[]string{"put", "/svc/a", "up", "--lease", hex, "-o", "json"}, `{"revision":2}`, false},
		{[]string{"put", "--lease=0x" + hex, "/svc/b", "up", "-o", "json"}, `{"revision":3}`, false},
		{[]string{"put", "/svc/b", "detached", "-o", "json"}, `{"revision":4}`, false},
		{[]string{"put", "/svc/c", "up", "--lease", "abc"}, "put \"/svc/c\" with lease 0000000000000abc: requested lease not found", true},
		{[]string{"put", "/svc/c", "up", "--lease", "xyz"}, `bad lease ID "xyz"`, true},
		{[]string{"lease", "revoke", hex, "-o", "json"}, `{"revision":5,"deleted":1}`, false},
		{[]string{"get", "/svc/", "--prefix", "-o", "json"}, `{"revision":5,"kvs":[{"key":"/svc/b","value":"detached","create_revision":3,"mod_revision":4,"version":2}],"more":false}`, false},
	} {
		out, err := run(t, url, st.args...)
		if st.err {
			if err == nil || !strings.Contains(err.Error(), st.want) {
				t.Fatalf("walwatch %s: %v, want an error containing %q", strings.Join(st.args, " "), err, st.want)
			}
			continue
		}
		if err != nil || !jsonEqual(t, out, st.want) {
			t.Fatalf("walwatch %s: %s %v, want %s", strings.Join(st.args, " "), out, err, st.want)
		}
	}
}

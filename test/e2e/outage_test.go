package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/pgcluster"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// TestPostgresOutage stops PostgreSQL under a running control plane. Every
// request that needs the database is answered 503 "unavailable" with a
// Retry-After header, the outage is logged once when it begins and once when
// it ends (not once per request), a watch that needs no database keeps
// working, and once PostgreSQL is back the same requests succeed again.
func TestPostgresOutage(t *testing.T) {
	t.Parallel()
	// A cluster of the test's own, on a data dir of its own, so it can be
	// stopped and started again on the same port. Not t.TempDir(): as root
	// its parent is mode 0700, which the server user cannot traverse.
	dataDir, err := os.MkdirTemp("", "walwatch-e2e-outage-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dataDir) })
	pg := pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir})
	pgURL, err := pg.CreateDatabase(t.Context(), "outage")
	if err != nil {
		t.Fatal(err)
	}
	runCLI(t, pgURL, "migrate")
	c := startCP(t, pgURL, slotName(t, "outage"))

	before := revisionOf(t, mustStatus(t, "PUT /v1/kv/x", call(t, http.MethodPut, c.url+"/v1/kv/x", "", "before"), http.StatusOK))
	mustStatus(t, "GET /v1/kv/x", get(t, c.url+"/v1/kv/x", ""), http.StatusOK)
	live := openWatch(t, c.url+"/v1/watch?key=/x") // from now: needs only the hub
	last := fmt.Sprint(before)

	reconnects := metricValue(t, string(get(t, c.url+"/metrics", "").body), "walwatch_hub_reconnects_total")
	streamLost := c.count("replication stream lost")
	if err := pg.Stop(t.Context()); err != nil {
		t.Fatalf("stop PostgreSQL: %v", err)
	}
	outageStart := time.Now()

	type request struct {
		method, path, body string
		header             []string
	}
	needDB := []request{
		{method: http.MethodPut, path: "/v1/kv/x", body: "during"},
		{method: http.MethodGet, path: "/v1/kv/x"},
		{method: http.MethodGet, path: "/v1/kv/?prefix=true&rev=" + last},
		{method: http.MethodDelete, path: "/v1/kv/x"},
		{method: http.MethodGet, path: "/v1/status"},
		{method: http.MethodGet, path: "/routes/"},
		{method: http.MethodGet, path: "/routes/foo"},
		{method: http.MethodPut, path: "/routes/foo", body: `{"uri":"/foo","upstream":"http://127.0.0.1:1"}`},
		{method: http.MethodPost, path: "/v1/compact", body: `{"keep_latest":true}`},
		// A resuming watch (a data plane's reconnect) reads the compacted
		// revision first.
		{method: http.MethodGet, path: "/v1/watch?prefix=/", header: []string{"Last-Event-ID", last}},
		{method: http.MethodGet, path: "/readyz"},
	}
	const rounds = 3 // every request more than once: one WARN all the same
	for range rounds {
		for _, rq := range needDB {
			var body any
			if rq.body != "" {
				body = rq.body
			}
			what := rq.method + " " + rq.path + " while PostgreSQL is down"
			r := call(t, rq.method, c.url+rq.path, "", body, rq.header...)
			var e struct {
				Error string `json:"error"`
				Code  string `json:"code"`
			}
			if err := json.Unmarshal(r.body, &e); err != nil || r.status != http.StatusServiceUnavailable || e.Code != "unavailable" || e.Error == "" {
				t.Errorf("%s: %s, want 503 with code unavailable", what, r)
			}
			if ra := r.header.Get("Retry-After"); ra != "1" {
				t.Errorf("%s: Retry-After %q, want \"1\"", what, ra)
			}
		}
	}
	// The hub serves a watch from now, and /healthz, without the database.
	mustStatus(t, "GET /healthz while PostgreSQL is down", get(t, c.url+"/healthz", ""), http.StatusOK)
	during := openWatch(t, c.url+"/v1/watch?key=/x")

	if n := c.count(`level=ERROR`); n != 0 {
		t.Errorf("cp logged %d ERROR lines during the outage, want none: a database outage is no bug", n)
	}
	if n := c.count(`msg="PostgreSQL is unavailable;`); n != 1 {
		t.Errorf("cp logged %d \"PostgreSQL is unavailable\" lines for %d refused requests, want 1", n, rounds*len(needDB))
	}
	// The hub retries its stream (and its other statements) while
	// PostgreSQL is down, and says so once each, not once per retry.
	wait.For(t, "the hub to retry its replication stream 4 times", func() bool {
		return metricValue(t, string(get(t, c.url+"/metrics", "").body), "walwatch_hub_reconnects_total") >= reconnects+4
	})
	hubWarns := map[string]int{}
	for _, line := range strings.Split(c.log(), "\n") {
		if m := logMsg.FindStringSubmatch(line); m != nil && strings.Contains(line, "level=WARN") && strings.Contains(line, "component=hub") {
			hubWarns[m[1]]++
		}
	}
	for msg, n := range hubWarns {
		if n > 1 {
			t.Errorf("the hub logged %q %d times in the %v PostgreSQL was down, want once", msg, n, time.Since(outageStart).Round(time.Millisecond))
		}
	}
	if c.count("replication stream lost") == streamLost {
		t.Errorf("the hub did not log that it lost its replication stream")
	}

	// PostgreSQL comes back on the same port and data dir.
	pgtest.StartPrivate(t, pgcluster.Options{DataDir: dataDir, Port: pg.Port()})
	var after int64
	wait.For(t, "PUT /v1/kv/x to succeed once PostgreSQL is back", func() bool {
		r := call(t, http.MethodPut, c.url+"/v1/kv/x", "", "after")
		if r.status == http.StatusOK {
			after = revisionOf(t, r)
			return true
		}
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("PUT /v1/kv/x while PostgreSQL restarts: %s, want 503 or 200", r)
		}
		return false
	})
	// A read waits for the hub to settle the put, and the hub reconnects
	// with a backoff of its own: it may say 503 "not settled yet" meanwhile.
	var r response
	wait.For(t, "GET /v1/kv/x to succeed once PostgreSQL is back", func() bool {
		r = get(t, c.url+"/v1/kv/x", "")
		if r.status != http.StatusOK && r.status != http.StatusServiceUnavailable {
			t.Fatalf("GET /v1/kv/x after the outage: %s, want 503 or 200", r)
		}
		return r.status == http.StatusOK
	})
	if !strings.Contains(string(r.body), `"value":"after"`) {
		t.Errorf("GET /v1/kv/x after the outage: %s, want the value written after it", r)
	}
	mustStatus(t, "GET /v1/status after the outage", get(t, c.url+"/v1/status", ""), http.StatusOK)
	mustStatus(t, "GET /routes/ after the outage", get(t, c.url+"/routes/", ""), http.StatusOK)
	// The hub's first stream after the restart is sometimes cut again at
	// once (unexpected EOF, seen at 41bc636 too): ready comes back, but not
	// necessarily by the time a read does.
	wait.For(t, "GET /readyz to answer 200 after the outage", func() bool {
		return get(t, c.url+"/readyz", "").status == http.StatusOK
	})
	resumed := openWatch(t, c.url+"/v1/watch?prefix=/", "Last-Event-ID", last)
	for name, s := range map[string]*stream{"opened before the outage": live, "opened during it": during, "resumed after it": resumed} {
		if m := s.next(t); m.ID != fmt.Sprint(after) {
			t.Errorf("watch %s: message id=%s event=%s, want the put at revision %d", name, m.ID, m.Event, after)
		}
	}

	if n := c.count(`msg="PostgreSQL is available again"`); n != 1 {
		t.Errorf("cp logged %d \"PostgreSQL is available again\" lines, want 1", n)
	}
	if n := c.count(`msg="PostgreSQL is unavailable;`); n != 1 {
		t.Errorf("cp logged %d \"PostgreSQL is unavailable\" lines in all, want 1", n)
	}
	if n := c.count(`level=ERROR`); n != 0 {
		t.Errorf("cp logged %d ERROR lines, want none", n)
	}
	c.stop(t)
}

// logMsg finds a text log line's message.
var logMsg = regexp.MustCompile(`msg="([^"]*)"`)

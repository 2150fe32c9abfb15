package e2e_test

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"testing"

	"github.com/walwatch/walwatch/test/wait"
)

// TestCPRestartWhileDPWatches stops the control plane under a watching data
// plane, once with kill -9 and once with SIGTERM, and changes routes while
// it is down (with the CLI and in plain SQL). The data plane keeps serving
// its routes meanwhile and, once the control plane is back, converges by
// resuming its watch, not by reloading everything.
func TestCPRestartWhileDPWatches(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	u1, u2 := newUpstream(t, "u1"), newUpstream(t, "u2")
	c := startCP(t, pg, slotName(t, "restart"))
	d := startDP(t, c.url, true)

	putRoute(t, c, "foo", "/foo", u1.URL)
	last := putRoute(t, c, "bar", "/bar", u1.URL)
	waitRoute(t, d, "/foo", "u1")
	waitRoute(t, d, "/bar", "u1")
	routeJSON := func(uri, upstream string) string { return fmt.Sprintf(`{"uri":%q,"upstream":%q}`, uri, upstream) }

	// Round 1: kill -9.
	c.kill(t)
	d.waitLog(t, "watch source down", 1)
	connected := func(want float64) {
		t.Helper()
		wait.For(t, fmt.Sprintf("dp walwatch_dp_source_connected to be %v", want), func() bool {
			return metricValue(t, string(get(t, d.admin+"/metrics", "").body), "walwatch_dp_source_connected") == want
		})
	}
	connected(0)
	mustStatus(t, "dp /readyz while cp is down", get(t, d.admin+"/readyz", ""), http.StatusOK)
	stillServes := func(paths ...string) {
		t.Helper()
		for _, p := range paths {
			if code, e := proxied(t, d, p); code != http.StatusOK || e.Upstream != "u1" {
				t.Errorf("dp %s while cp is down: %d %+v, want the old route to u1", p, code, e)
			}
		}
	}
	stillServes("/foo", "/bar")
	first := revisionOfCLI(t, runCLI(t, pg, "-o", "json", "put", "/routes/x", routeJSON("/x", u2.URL)))
	runCLI(t, pg, "del", "/routes/foo")
	execSQL(t, pg, `select walwatch.set('/routes/y', $1)::text`, routeJSON("/y", u2.URL))
	if got := execSQL(t, pg, `select walwatch.del('/routes/bar')::text`); got == "" {
		t.Fatal("walwatch.del('/routes/bar') deleted nothing")
	}
	stillServes("/foo", "/bar")
	if code, _ := proxied(t, d, "/x"); code != http.StatusNotFound {
		t.Errorf("dp /x while cp is down: %d, want 404 (it cannot know yet)", code)
	}

	watching := d.count(`msg="watching routes"`)
	c.restart(t)
	waitRoute(t, d, "/x", "u2")
	waitRoute(t, d, "/y", "u2")
	waitNoRoute(t, d, "/foo")
	waitNoRoute(t, d, "/bar")
	checkResumed(t, d, watching, last, first)
	connected(1)

	// Round 2: SIGTERM, a graceful stop that ends the data plane's stream.
	last = putRoute(t, c, "z", "/z", u1.URL)
	waitRoute(t, d, "/z", "u1")
	down := d.count("watch source down")
	c.stop(t)
	d.waitLog(t, "watch source down", down+1)
	first = revisionOfCLI(t, runCLI(t, pg, "-o", "json", "put", "/routes/z", routeJSON("/z", u2.URL)))
	execSQL(t, pg, `select walwatch.del('/routes/x')::text`)
	runCLI(t, pg, "put", "/routes/w", routeJSON("/w*", u1.URL))
	if code, e := proxied(t, d, "/z"); code != http.StatusOK || e.Upstream != "u1" {
		t.Errorf("dp /z while cp is down: %d %+v, want the old route to u1", code, e)
	}
	watching = d.count(`msg="watching routes"`)
	c.restart(t)
	waitRoute(t, d, "/z", "u2")
	waitRoute(t, d, "/wide", "u1")
	waitNoRoute(t, d, "/x")
	waitRoute(t, d, "/y", "u2")
	checkResumed(t, d, watching, last, first)

	// Round 3: the history the data plane would resume from is compacted
	// while the control plane is down. Now, and only now, it reloads.
	c.stop(t)
	runCLI(t, pg, "put", "/routes/v", routeJSON("/v", u1.URL))
	runCLI(t, pg, "del", "/routes/y")
	runCLI(t, pg, "compact", "--keep-latest")
	c.restart(t)
	d.waitLog(t, `msg="loaded all routes"`, 2)
	waitRoute(t, d, "/v", "u1")
	waitNoRoute(t, d, "/y")
	waitRoute(t, d, "/z", "u2")
	if n := d.count(`msg="loaded all routes"`); n != 2 {
		t.Errorf(`dp logged "loaded all routes" %d times, want 2 (start, and once after the compaction)`, n)
	}

	d.stop(t)
	c.stop(t)
}

// checkResumed checks that the data plane loaded all routes only once, at
// its start, and that its newest watch (after the watching-th) resumed
// after a revision between last, the last change it saw before the outage,
// and first, the first change made during it.
func checkResumed(t *testing.T, d *dp, watching int, last, first int64) {
	t.Helper()
	if n := d.count(`msg="loaded all routes"`); n != 1 {
		t.Errorf(`dp logged "loaded all routes" %d times, want once (a resume, not a full reload)`, n)
	}
	re := regexp.MustCompile(`msg="watching routes".* after_revision=(\d+)`)
	all := re.FindAllStringSubmatch(d.log(), -1)
	if len(all) <= watching {
		t.Fatalf("dp logged no new \"watching routes\" line after the restart")
	}
	after, _ := strconv.ParseInt(all[len(all)-1][1], 10, 64)
	if after < last || after >= first {
		t.Errorf("dp resumed after revision %d, want one in [%d, %d): the last it saw, before the changes made while cp was down", after, last, first)
	}
	t.Logf("dp resumed its watch after revision %d (last seen %d, first missed %d)", after, last, first)
}

// revisionOfCLI reads the revision from `walwatch -o json put`.
func revisionOfCLI(t *testing.T, out string) int64 {
	t.Helper()
	return revisionOf(t, response{status: 200, body: []byte(out)})
}

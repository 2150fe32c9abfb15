package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/wait"
)

// TestWalkthrough is the seed's demo, through cp and dp: routes added,
// overridden, read at an old revision, listed and deleted, each change
// followed by the data plane; an upstream that is down is a 502. It then
// measures how long a route change takes to reach the data plane.
func TestWalkthrough(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	u1, u2 := newUpstream(t, "u1"), newUpstream(t, "u2")
	c := startCP(t, pg, slotName(t, "walk"))
	d := startDP(t, c.url, true)

	// No routes yet.
	r := get(t, d.url+"/get", "")
	if r.status != http.StatusNotFound || strings.TrimSpace(string(r.body)) != "no route" {
		t.Fatalf("dp /get with no routes: got %s, want 404 no route", r)
	}

	// Add a route; the data plane proxies to it.
	rev1 := putRoute(t, c, "foo", "/get", u1.URL)
	waitRoute(t, d, "/get", "u1")
	req, _ := http.NewRequest(http.MethodPost, d.url+"/get?a=1&b=two", strings.NewReader(`{"hello":"world"}`))
	req.Header.Set("X-Walwatch-Test", "custom-header-value")
	req.Header.Set("X-Want-Status", "201")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST through dp: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e echo
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("POST through dp: %s %q: %v", resp.Status, b, err)
	}
	want := echo{Upstream: "u1", Method: "POST", Path: "/get", Query: "a=1&b=two", Header: "custom-header-value", Body: `{"hello":"world"}`}
	if e != want {
		t.Errorf("upstream got %+v, want %+v", e, want)
	}
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Upstream") != "u1" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("POST through dp: status %d, X-Upstream %q, Content-Type %q; want the upstream's 201, u1, application/json",
			resp.StatusCode, resp.Header.Get("X-Upstream"), resp.Header.Get("Content-Type"))
	}

	// A prefix route.
	putRoute(t, c, "bar", "/anything/*", u2.URL)
	waitRoute(t, d, "/anything/x", "u2")
	if code, e := proxied(t, d, "/anything/deep/er"); code != http.StatusOK || e.Upstream != "u2" || e.Path != "/anything/deep/er" {
		t.Errorf("dp /anything/deep/er: %d %+v, want u2 with the path kept", code, e)
	}
	if code, _ := proxied(t, d, "/anything"); code != http.StatusNotFound {
		t.Errorf("dp /anything (outside the prefix /anything/): %d, want 404", code)
	}

	// Override foo; the data plane follows.
	rev3 := putRoute(t, c, "foo", "/get", u2.URL)
	waitRoute(t, d, "/get", "u2")

	// Read foo at its old revision, and now.
	var old struct {
		Key            string `json:"key"`
		Value          route  `json:"value"`
		Revision       int64  `json:"revision"`
		ModRevision    int64  `json:"mod_revision"`
		CreateRevision int64  `json:"create_revision"`
		Version        int64  `json:"version"`
	}
	r = mustStatus(t, "GET /routes/foo?rev=N", get(t, fmt.Sprintf("%s/routes/foo?rev=%d", c.url, rev1), ""), http.StatusOK)
	if err := json.Unmarshal(r.body, &old); err != nil {
		t.Fatal(err)
	}
	if old.Key != "/routes/foo" || old.Value != (route{"/get", u1.URL}) || old.Revision != rev1 || old.ModRevision != rev1 || old.Version != 1 {
		t.Errorf("foo at revision %d: %s; want u1, revision %d, version 1", rev1, r.body, rev1)
	}
	cur := old
	r = mustStatus(t, "GET /routes/foo", get(t, c.url+"/routes/foo", ""), http.StatusOK)
	if err := json.Unmarshal(r.body, &cur); err != nil {
		t.Fatal(err)
	}
	if cur.Value != (route{"/get", u2.URL}) || cur.ModRevision != rev3 || cur.CreateRevision != rev1 || cur.Version != 2 {
		t.Errorf("foo now: %s; want u2, mod_revision %d, create_revision %d, version 2", r.body, rev3, rev1)
	}

	// List both, with the revision.
	var list struct {
		Revision int64 `json:"revision"`
		Routes   []struct {
			Key   string `json:"key"`
			Value route  `json:"value"`
		} `json:"routes"`
	}
	r = mustStatus(t, "GET /routes/", get(t, c.url+"/routes/", ""), http.StatusOK)
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]route{}
	for _, rt := range list.Routes {
		got[rt.Key] = rt.Value
	}
	if list.Revision != rev3 || len(got) != 2 || got["/routes/foo"] != (route{"/get", u2.URL}) || got["/routes/bar"] != (route{"/anything/*", u2.URL}) {
		t.Errorf("GET /routes/: %s; want foo and bar at revision %d", r.body, rev3)
	}

	// Delete bar: its paths are 404 again.
	deleteRoute(t, c, "bar")
	waitNoRoute(t, d, "/anything/x")
	mustStatus(t, "GET /routes/bar after delete", get(t, c.url+"/routes/bar", ""), http.StatusNotFound)

	// An upstream that is down is a 502, and the data plane carries on.
	down := newUpstream(t, "down")
	putRoute(t, c, "down", "/down", down.URL)
	waitRoute(t, d, "/down", "down")
	down.Close()
	if r := get(t, d.url+"/down", ""); r.status != http.StatusBadGateway {
		t.Errorf("dp /down with its upstream closed: %s, want 502", r)
	}
	if d.exited() {
		t.Fatal("dp exited after an upstream failed")
	}
	mustStatus(t, "dp /healthz after a 502", get(t, d.admin+"/healthz", ""), http.StatusOK)
	if code, e := proxied(t, d, "/get"); code != http.StatusOK || e.Upstream != "u2" {
		t.Errorf("dp /get after a 502 elsewhere: %d %+v", code, e)
	}

	for _, s := range []string{`msg="add route"`, `name=foo`, `msg="del route"`, `name=bar`, `msg="loaded all routes"`} {
		if !strings.Contains(d.log(), s) {
			t.Errorf("dp log lacks %s", s)
		}
	}

	measureDelay(t, c, d, u1.URL, u2.URL)

	d.stop(t)
	c.stop(t)
}

// measureDelay changes one route many times and, for each change, times
// the span from the PUT's response to the first data plane answer that
// shows it, polling every 200µs (spinning instead starves PostgreSQL's
// walsender and the control plane on a small machine and measures that).
// It logs the percentiles, and those of the commit-to-dp delay the data
// plane logs itself. No assertion: speed is for benchmarks.
func measureDelay(t *testing.T, c *cp, d *dp, urls ...string) {
	const changes = 50
	names := []string{"u1", "u2"}
	client := &http.Client{Timeout: httpTimeout}
	var delays []time.Duration
	tick := time.NewTicker(200 * time.Microsecond)
	defer tick.Stop()
	for i := range changes {
		putRoute(t, c, "lat", "/lat", urls[i%2])
		start := time.Now()
		deadline := start.Add(waitTimeout)
		for {
			resp, err := client.Get(d.url + "/lat")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.Header.Get("X-Upstream") == names[i%2] {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("change %d of route lat did not reach dp within %v", i, waitTimeout)
			}
			<-tick.C
		}
		delays = append(delays, time.Since(start))
	}
	t.Logf("route change to dp, PUT response to first dp answer (%d changes): p50 %v, p99 %v, max %v",
		len(delays), percentile(delays, 0.5).Round(time.Microsecond), percentile(delays, 0.99).Round(time.Microsecond),
		percentile(delays, 1).Round(time.Microsecond))

	var logged []float64
	wait.For(t, "dp to log every change of route lat", func() bool {
		logged = watchDelays(d.log(), "lat")
		return len(logged) >= changes
	})
	t.Logf("route change to dp, commit to dp as dp logs it (watch_delay_ms, %d changes): p50 %.3fms, p99 %.3fms, max %.3fms",
		len(logged), percentile(logged, 0.5), percentile(logged, 0.99), percentile(logged, 1))
}

package e2e_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/walwatch/walwatch/test/wait"
)

// TestStatusAndMetrics checks the control plane's status, health and
// metrics, and the data plane's admin listener. The control plane runs
// without a token file, so nothing asks for a token.
func TestStatusAndMetrics(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	slot := slotName(t, "status")
	c := startCP(t, pg, slot)
	d := startDP(t, c.url, true)
	u := newUpstream(t, "u1")

	// Without --token-file, reads and writes need no token.
	rev := putRoute(t, c, "m", "/m", u.URL)
	mustStatus(t, "GET /routes/m without a token", get(t, c.url+"/routes/m", ""), http.StatusOK)
	mustStatus(t, "PUT /v1/kv/k without a token", call(t, http.MethodPut, c.url+"/v1/kv/k", "", "v"), http.StatusOK)
	mustStatus(t, "DELETE /v1/kv/k without a token", call(t, http.MethodDelete, c.url+"/v1/kv/k", "", nil), http.StatusOK)
	waitRoute(t, d, "/m", "u1")

	// Status: the raw JSON has every documented field.
	r := mustStatus(t, "GET /v1/status", get(t, c.url+"/v1/status", ""), http.StatusOK)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"revision", "current_revision", "compact_revision", "slot"} {
		if _, ok := raw[f]; !ok {
			t.Errorf("GET /v1/status lacks %q: %s", f, r.body)
		}
	}
	var st status
	wait.For(t, "status to show the hub caught up and the slot active", func() bool {
		st = getStatus(t, c, "")
		return st.Revision == st.CurrentRevision && st.Slot != nil && st.Slot.Active
	})
	if st.CurrentRevision < rev+2 || st.Slot.Name != slot || st.CompactRevision < 0 {
		t.Errorf("status %+v (slot %+v): want current_revision >= %d, slot %s", st, *st.Slot, rev+2, slot)
	}

	r = mustStatus(t, "cp /readyz", get(t, c.url+"/readyz", ""), http.StatusOK)
	if r.json(t)["status"] != "ready" {
		t.Errorf("cp /readyz: %s", r)
	}
	mustStatus(t, "cp /healthz", get(t, c.url+"/healthz", ""), http.StatusOK)

	metrics := string(mustStatus(t, "cp /metrics", get(t, c.url+"/metrics", ""), http.StatusOK).body)
	for _, name := range []string{
		"walwatch_hub_events_total", "walwatch_hub_watch_delay_seconds", "walwatch_hub_holes_filled_total",
		"walwatch_slot_wal_held_bytes", "walwatch_http_requests_total", "walwatch_hub_watchers",
	} {
		if !regexp.MustCompile(`(?m)^` + name + `(_bucket|_count|_sum)?(\{.*\})? `).MatchString(metrics) {
			t.Errorf("cp /metrics lacks %s", name)
		}
	}
	if !strings.Contains(metrics, `walwatch_http_requests_total{code="200",endpoint="PUT /routes/{name}"}`) {
		t.Errorf("cp /metrics does not count the PUT /routes/{name} that succeeded")
	}
	if regexp.MustCompile(`(?m)^walwatch_slot_wal_held_bytes -1$`).MatchString(metrics) {
		t.Errorf("cp /metrics: walwatch_slot_wal_held_bytes is -1 (the slot could not be read)")
	}
	if regexp.MustCompile(`(?m)^walwatch_hub_events_total 0$`).MatchString(metrics) {
		t.Errorf("cp /metrics: walwatch_hub_events_total is 0 after three writes")
	}

	r = mustStatus(t, "dp /readyz", get(t, d.admin+"/readyz", ""), http.StatusOK)
	if !strings.Contains(string(r.body), "1 routes") {
		t.Errorf("dp /readyz: %s, want it to report 1 route", r)
	}
	mustStatus(t, "dp /healthz", get(t, d.admin+"/healthz", ""), http.StatusOK)
	dm := string(mustStatus(t, "dp /metrics", get(t, d.admin+"/metrics", ""), http.StatusOK).body)
	for _, want := range []string{"walwatch_dp_routes 1\n", "walwatch_dp_full_reloads_total 1\n", "walwatch_dp_source_connected 1\n", "walwatch_dp_watch_delay_seconds_count"} {
		if !strings.Contains(dm, want) {
			t.Errorf("dp /metrics lacks %q", strings.TrimSpace(want))
		}
	}
	d.stop(t)
	c.stop(t)
}

// TestPprof: Go's profiles are served on the control plane's HTTP API only
// with --enable-pprof (etcd's flag), and the API stays as it was beside them.
func TestPprof(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	off := startCP(t, pg, slotName(t, "pprofoff"))
	mustStatus(t, "GET /debug/pprof/ without --enable-pprof", get(t, off.url+"/debug/pprof/", ""), http.StatusNotFound)
	on := startCP(t, pg, slotName(t, "pprofon"), "--enable-pprof")
	r := mustStatus(t, "GET /debug/pprof/cmdline with --enable-pprof", get(t, on.url+"/debug/pprof/cmdline", ""), http.StatusOK)
	if !strings.Contains(string(r.body), "--enable-pprof") {
		t.Errorf("/debug/pprof/cmdline = %q, want the cp's command line", r.body)
	}
	mustStatus(t, "PUT /v1/kv/k with --enable-pprof", call(t, http.MethodPut, on.url+"/v1/kv/k", "", "v"), http.StatusOK)
}

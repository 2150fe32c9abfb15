package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestBadInput sends requests that are wrong in every documented way: each
// gets its status and error code, and none writes anything.
func TestBadInput(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "bad"))

	// SQL metacharacters are data: stored and read back verbatim.
	const evilName = `'; drop table x;--`
	evilPath := "/routes/" + url.PathEscape(evilName)
	if evilPath != "/routes/%27%3B%20drop%20table%20x%3B--" {
		t.Fatalf("escaped name %q", evilPath)
	}
	putRoute(t, c, url.PathEscape(evilName), "/evil'--", "http://127.0.0.1:9/';select 1;--")
	r := mustStatus(t, "GET "+evilPath, get(t, c.url+evilPath, ""), http.StatusOK)
	var got struct {
		Key   string `json:"key"`
		Value route  `json:"value"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil || got.Key != "/routes/"+evilName || got.Value != (route{"/evil'--", "http://127.0.0.1:9/';select 1;--"}) {
		t.Errorf("GET %s: %s, want it verbatim (%v)", evilPath, r, err)
	}
	if !strings.Contains(string(get(t, c.url+"/routes/", "").body), `"/routes/'; drop table x;--"`) {
		t.Errorf("GET /routes/ does not list the route named %q", evilName)
	}
	evilKey := `a'); delete from walwatch.revisions; --\$1"` // a key path segment
	evilValue := `x'); drop schema walwatch cascade; -- $1 \x00 "`
	kvPath := "/v1/kv/" + url.PathEscape(evilKey)
	mustStatus(t, "PUT "+kvPath, call(t, http.MethodPut, c.url+kvPath, "", evilValue), http.StatusOK)
	r = mustStatus(t, "GET "+kvPath, get(t, c.url+kvPath, ""), http.StatusOK)
	var kv struct {
		KVs []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal(r.body, &kv); err != nil || len(kv.KVs) != 1 || kv.KVs[0].Key != "/"+evilKey || kv.KVs[0].Value != evilValue {
		t.Errorf("GET %s: %s, want key %q value %q (%v)", kvPath, r, "/"+evilKey, evilValue, err)
	}
	mustStatus(t, "DELETE "+kvPath, call(t, http.MethodDelete, c.url+kvPath, "", nil), http.StatusOK)
	mustStatus(t, "GET "+kvPath+" after delete", get(t, c.url+kvPath, ""), http.StatusNotFound)

	// A history to read: foo at two revisions, the first compacted away.
	rev1 := putRoute(t, c, "foo", "/foo", "http://127.0.0.1:1")
	rev2 := putRoute(t, c, "foo", "/foo", "http://127.0.0.1:2")
	r = mustStatus(t, "POST /v1/compact", call(t, http.MethodPost, c.url+"/v1/compact", "", map[string]int64{"revision": rev2}), http.StatusOK)
	if cr := r.json(t)["compact_revision"]; cr != float64(rev2) {
		t.Fatalf("compact to %d: %s", rev2, r)
	}
	cur := getStatus(t, c, "").CurrentRevision
	future := fmt.Sprint(cur + 1000)
	big := strings.Repeat("x", 3<<20)
	bigRoute := fmt.Sprintf(`{"uri":"/big","upstream":"http://127.0.0.1:1/%s"}`, big)

	holes := func() (seen, filled float64) {
		page := string(mustStatus(t, "cp /metrics", get(t, c.url+"/metrics", ""), http.StatusOK).body)
		return metricValue(t, page, "walwatch_hub_holes_seen_total"), metricValue(t, page, "walwatch_hub_holes_filled_total")
	}
	seen0, filled0 := holes()

	cases := []struct {
		name         string
		method, path string
		body         string
		header       []string
		status       int
		code         string
		compactRev   int64 // for code compacted
	}{
		{"invalid JSON", "PUT", "/routes/r", `{"uri": "/r", "upstream":`, nil, 400, "invalid_argument", 0},
		{"not an object", "PUT", "/routes/r", `["/r"]`, nil, 400, "invalid_argument", 0},
		{"empty body", "PUT", "/routes/r", ``, nil, 400, "invalid_argument", 0},
		{"trailing data", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h"} {}`, nil, 400, "invalid_argument", 0},
		{"missing upstream", "PUT", "/routes/r", `{"uri":"/r"}`, nil, 400, "invalid_argument", 0},
		{"missing uri", "PUT", "/routes/r", `{"upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"uri without leading slash", "PUT", "/routes/r", `{"uri":"r","upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"star inside uri", "PUT", "/routes/r", `{"uri":"/a*/b","upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"relative upstream", "PUT", "/routes/r", `{"uri":"/r","upstream":"/local"}`, nil, 400, "invalid_argument", 0},
		{"non-http upstream", "PUT", "/routes/r", `{"uri":"/r","upstream":"ftp://h/x"}`, nil, 400, "invalid_argument", 0},
		{"unknown field", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h","retries":5}`, nil, 400, "invalid_argument", 0},
		{"upstream with credentials", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://user:secret@h"}`, nil, 400, "invalid_argument", 0},
		{"upstream with a fragment", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h/#top"}`, nil, 400, "invalid_argument", 0},
		{"timeout a number", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h","timeout":5}`, nil, 400, "invalid_argument", 0},
		{"timeout without a unit", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h","timeout":{"idle":"5"}}`, nil, 400, "invalid_argument", 0},
		{"timeout zero", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h","timeout":{"connect":"0s"}}`, nil, 400, "invalid_argument", 0},
		{"timeout over a day", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h","timeout":{"response_header":"25h"}}`, nil, 400, "invalid_argument", 0},
		{"unknown timeout", "PUT", "/routes/r", `{"uri":"/r","upstream":"http://h","timeout":{"read":"5s"}}`, nil, 400, "invalid_argument", 0},
		{"name with a slash", "PUT", "/routes/a%2Fb", `{"uri":"/r","upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"name with a NUL", "PUT", "/routes/a%00b", `{"uri":"/r","upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"name not UTF-8", "PUT", "/routes/a%FFb", `{"uri":"/r","upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"name with a newline", "PUT", "/routes/a%0Ab", `{"uri":"/r","upstream":"http://h"}`, nil, 400, "invalid_argument", 0},
		{"get a name with a NUL", "GET", "/routes/a%00b", "", nil, 400, "invalid_argument", 0},
		{"3 MB route", "PUT", "/routes/r", bigRoute, nil, 413, "too_large", 0},
		{"3 MB value", "PUT", "/v1/kv/big", big, nil, 413, "too_large", 0},
		{"key over the limit", "PUT", "/v1/kv/" + strings.Repeat("k", 5000), "v", nil, 413, "too_large", 0},
		{"put with prefix=true", "PUT", "/v1/kv/p?prefix=true", "v", nil, 400, "invalid_argument", 0},
		{"prefix=maybe", "DELETE", "/v1/kv/routes/?prefix=maybe", "", nil, 400, "invalid_argument", 0},
		{"delete a missing route", "DELETE", "/routes/nothing", "", nil, 404, "not_found", 0},
		{"get a missing route", "GET", "/routes/nothing", "", nil, 404, "not_found", 0},
		{"route rev in the future", "GET", "/routes/foo?rev=" + future, "", nil, 400, "future_revision", 0},
		{"kv rev in the future", "GET", "/v1/kv/routes/foo?rev=" + future, "", nil, 400, "future_revision", 0},
		{"list rev in the future", "GET", "/routes/?rev=" + future, "", nil, 400, "future_revision", 0},
		{"route rev compacted", "GET", fmt.Sprintf("/routes/foo?rev=%d", rev1), "", nil, 410, "compacted", rev2},
		{"kv rev compacted", "GET", fmt.Sprintf("/v1/kv/routes/?prefix=true&rev=%d", rev1), "", nil, 410, "compacted", rev2},
		{"rev=-1", "GET", "/routes/foo?rev=-1", "", nil, 400, "invalid_argument", 0},
		{"rev=abc", "GET", "/routes/foo?rev=abc", "", nil, 400, "invalid_argument", 0},
		{"kv rev=abc", "GET", "/v1/kv/routes/foo?rev=abc", "", nil, 400, "invalid_argument", 0},
		{"limit=-1", "GET", "/v1/kv/routes/?prefix=true&limit=-1", "", nil, 400, "invalid_argument", 0},
		{"limit=1x", "GET", "/v1/kv/routes/?prefix=true&limit=1x", "", nil, 400, "invalid_argument", 0},
		{"rev given twice", "GET", "/routes/foo?rev=3&rev=abc", "", nil, 400, "invalid_argument", 0},
		{"prefix given twice", "DELETE", "/v1/kv/routes/?prefix=true&prefix=false", "", nil, 400, "invalid_argument", 0},
		{"unknown parameter", "GET", "/v1/kv/routes/foo?revision=3", "", nil, 400, "invalid_argument", 0},
		{"unknown parameter on a write", "PUT", "/v1/kv/k?rev=3", "v", nil, 400, "invalid_argument", 0},
		{"watch without key or prefix", "GET", "/v1/watch", "", nil, 400, "invalid_argument", 0},
		{"watch with key and prefix", "GET", "/v1/watch?key=/a&prefix=/b", "", nil, 400, "invalid_argument", 0},
		{"watch rev=-1", "GET", "/v1/watch?prefix=/routes/&rev=-1", "", nil, 400, "invalid_argument", 0},
		{"watch rev=abc", "GET", "/v1/watch?prefix=/routes/&rev=abc", "", nil, 400, "invalid_argument", 0},
		{"watch bad Last-Event-ID", "GET", "/v1/watch?prefix=/routes/", "", []string{"Last-Event-ID", "x1"}, 400, "invalid_argument", 0},
		{"watch Last-Event-ID past int64", "GET", "/v1/watch?prefix=/routes/", "", []string{"Last-Event-ID", "99999999999999999999"}, 400, "invalid_argument", 0},
		{"watch key given twice", "GET", "/v1/watch?key=/a&key=/b", "", nil, 400, "invalid_argument", 0},
		{"compact with two fields", "POST", "/v1/compact", fmt.Sprintf(`{"revision":%d,"keep_latest":true}`, cur), nil, 400, "invalid_argument", 0},
		{"compact with no field", "POST", "/v1/compact", `{}`, nil, 400, "invalid_argument", 0},
		{"compact with an unknown field", "POST", "/v1/compact", `{"revisions":3}`, nil, 400, "invalid_argument", 0},
		{"compact invalid JSON", "POST", "/v1/compact", `{"keep_latest":`, nil, 400, "invalid_argument", 0},
		{"compact bad duration", "POST", "/v1/compact", `{"older_than":"three days"}`, nil, 400, "invalid_argument", 0},
		{"compact to the future", "POST", "/v1/compact", `{"revision":` + future + `}`, nil, 400, "future_revision", 0},
		{"compact negative age", "POST", "/v1/compact", `{"older_than":"-1h"}`, nil, 400, "invalid_argument", 0},
		{"unknown endpoint", "GET", "/v2/nothing", "", nil, 404, "not_found", 0},
		{"method not allowed", "PATCH", "/routes/foo", `{"uri":"/x","upstream":"http://h"}`, nil, 405, "method_not_allowed", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := getStatus(t, c, "")
			var body any
			if tc.body != "" {
				body = tc.body
			}
			r := call(t, tc.method, c.url+tc.path, "", body, tc.header...)
			var e struct {
				Error           string `json:"error"`
				Code            string `json:"code"`
				CompactRevision int64  `json:"compact_revision"`
			}
			if err := json.Unmarshal(r.body, &e); err != nil {
				t.Errorf("%s %s: %d %q is not a JSON error: %v", tc.method, tc.path[:min(len(tc.path), 80)], r.status, truncate(r.body), err)
			}
			if r.status != tc.status || e.Code != tc.code || e.Error == "" || e.CompactRevision != tc.compactRev {
				t.Errorf("%s %s: %d %s, want %d code %q compact_revision %d", tc.method, tc.path[:min(len(tc.path), 80)],
					r.status, truncate(r.body), tc.status, tc.code, tc.compactRev)
			}
			if r.header.Get("Content-Type") != "application/json" {
				t.Errorf("error Content-Type %q, want application/json", r.header.Get("Content-Type"))
			}
			if after := getStatus(t, c, ""); after.CurrentRevision != before.CurrentRevision || after.CompactRevision != before.CompactRevision {
				t.Errorf("a refused request wrote: status before %+v, after %+v", before, after)
			}
		})
	}

	// No refused request took a revision number either: a write after them
	// comes right after the last good one, and the hub filled no hole.
	next := putRoute(t, c, "after", "/after", "http://127.0.0.1:1")
	mustStatus(t, "GET /routes/after", get(t, c.url+"/routes/after", ""), http.StatusOK) // waits until the hub has it
	if next != cur+1 {
		t.Errorf("the first write after the refused requests got revision %d, want %d", next, cur+1)
	}
	if seen, filled := holes(); seen != seen0 || filled != filled0 {
		t.Errorf("the refused requests left holes in the revisions: holes seen %v -> %v, filled %v -> %v", seen0, seen, filled0, filled)
	}
	deleteRoute(t, c, "after")

	// The route and the key were written once each; nothing else was.
	r = mustStatus(t, "GET /routes/", get(t, c.url+"/routes/", ""), http.StatusOK)
	var list struct {
		Routes []struct{ Key string } `json:"routes"`
	}
	_ = json.Unmarshal(r.body, &list)
	if len(list.Routes) != 2 {
		t.Errorf("routes after the bad requests: %s, want only foo and the metacharacter one", r.body)
	}
	c.stop(t)
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

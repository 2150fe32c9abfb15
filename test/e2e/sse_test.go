package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
)

// TestSSEResume reads a watch as a plain HTTP client: one message per
// revision with the revision as its id, a multi-key delete as one txn
// message, a resume with Last-Event-ID that neither repeats nor skips, and
// a compacted start that gets one compacted message and an end.
func TestSSEResume(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "sse"))
	watchURL := c.url + "/v1/watch?prefix=" + url.QueryEscape("/routes/")

	s := openWatch(t, watchURL)
	if cc := s.resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("watch Cache-Control %q, want no-cache", cc)
	}
	ra := putRoute(t, c, "a", "/a", "http://127.0.0.1:1")
	rb := putRoute(t, c, "b", "/b", "http://127.0.0.1:2")
	// A key outside the prefix is not watched.
	mustStatus(t, "PUT /v1/kv/other", call(t, http.MethodPut, c.url+"/v1/kv/other/key", "", "v"), http.StatusOK)
	rc := putRoute(t, c, "c", "/c", "http://127.0.0.1:3")
	for i, want := range []struct {
		rev  int64
		name string
	}{{ra, "a"}, {rb, "b"}, {rc, "c"}} {
		m := s.next(t)
		if m.ID != strconv.FormatInt(want.rev, 10) || m.Event != "put" {
			t.Fatalf("message %d: id %q event %q, want id %d event put", i, m.ID, m.Event, want.rev)
		}
		ev := events(t, m)[0]
		var rt route
		if err := json.Unmarshal([]byte(ev.Value), &rt); err != nil {
			t.Errorf("message %d value %q: %v", i, ev.Value, err)
		}
		if ev.Type != "PUT" || ev.Key != "/routes/"+want.name || rt.URI != "/"+want.name || ev.CreateRevision != want.rev || ev.Version != 1 || ev.CommitTime == nil {
			t.Errorf("message %d: %s, want a PUT of /routes/%s (version 1, commit_time set)", i, m.Data, want.name)
		}
	}
	s.close()

	// Written while nobody watches: a put, a delete, and a delete of three
	// keys that takes one revision.
	rd := putRoute(t, c, "d", "/d", "http://127.0.0.1:4")
	rdelA := deleteRoute(t, c, "a")
	r := mustStatus(t, "DELETE /v1/kv/routes/?prefix=true", call(t, http.MethodDelete, c.url+"/v1/kv/routes/?prefix=true", "", nil), http.StatusOK)
	rtxn := revisionOf(t, r)
	if n := r.json(t)["deleted"]; n != float64(3) {
		t.Fatalf("prefix delete: %s, want 3 deleted", r)
	}

	s = openWatch(t, watchURL, "Last-Event-ID", strconv.FormatInt(rc, 10))
	m := s.next(t)
	if m.ID != strconv.FormatInt(rd, 10) || m.Event != "put" || events(t, m)[0].Key != "/routes/d" {
		t.Errorf("first message after Last-Event-ID %d: id %q event %q %s, want the put of d at %d", rc, m.ID, m.Event, m.Data, rd)
	}
	m = s.next(t)
	if evs := events(t, m); m.ID != strconv.FormatInt(rdelA, 10) || m.Event != "delete" || evs[0].Key != "/routes/a" || evs[0].Type != "DELETE" {
		t.Errorf("second message: id %q event %q %s, want the delete of a at %d", m.ID, m.Event, m.Data, rdelA)
	}
	m = s.next(t)
	if m.ID != strconv.FormatInt(rtxn, 10) || m.Event != "txn" {
		t.Fatalf("third message: id %q event %q %s, want a txn at %d", m.ID, m.Event, m.Data, rtxn)
	}
	var keys []string
	for _, ev := range events(t, m) {
		if ev.Type != "DELETE" {
			t.Errorf("txn event %+v, want a DELETE", ev)
		}
		keys = append(keys, ev.Key)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"/routes/b", "/routes/c", "/routes/d"}) {
		t.Errorf("txn deleted %v, want b, c and d", keys)
	}
	// The next message is the next write: nothing repeated, nothing between.
	re := putRoute(t, c, "e", "/e", "http://127.0.0.1:5")
	if m := s.next(t); m.ID != strconv.FormatInt(re, 10) || m.Event != "put" {
		t.Errorf("message after the resumed ones: id %q event %q %s, want the put at %d", m.ID, m.Event, m.Data, re)
	}

	// ?rev= starts at a revision (inclusive); a single key can be watched.
	k := openWatch(t, fmt.Sprintf("%s/v1/watch?key=%s&rev=%d", c.url, url.QueryEscape("/routes/a"), ra))
	if m := k.next(t); m.ID != strconv.FormatInt(ra, 10) || m.Event != "put" {
		t.Errorf("key watch from %d: first id %q event %q, want the put at %d", ra, m.ID, m.Event, ra)
	}
	if m := k.next(t); m.ID != strconv.FormatInt(rdelA, 10) || m.Event != "delete" {
		t.Errorf("key watch from %d: second id %q event %q, want the delete at %d", ra, m.ID, m.Event, rdelA)
	}
	k.close()

	// Compact everything but the latest: a watch from revision 1 is told so
	// and ends.
	r = mustStatus(t, "POST /v1/compact keep_latest", call(t, http.MethodPost, c.url+"/v1/compact", "", map[string]bool{"keep_latest": true}), http.StatusOK)
	compactRev := int64(r.json(t)["compact_revision"].(float64))
	if st := getStatus(t, c, ""); compactRev != st.CurrentRevision || st.CompactRevision != compactRev {
		t.Errorf("compact keep_latest: compact_revision %d, status %+v; want the current revision", compactRev, st)
	}
	for _, h := range [][]string{nil, {"Last-Event-ID", "1"}} {
		u := watchURL + "&rev=1"
		if h != nil {
			u = watchURL
		}
		cs := openWatch(t, u, h...)
		m := cs.next(t)
		var data struct {
			CompactRevision int64 `json:"compact_revision"`
		}
		if err := json.Unmarshal(m.Data, &data); err != nil || m.Event != "compacted" || data.CompactRevision != compactRev {
			t.Errorf("watch from a compacted revision (%v): event %q data %s, want compacted with compact_revision %d", h, m.Event, m.Data, compactRev)
		}
		if rest := cs.ended(t); len(rest) != 0 {
			t.Errorf("after the compacted message the stream carried %d more messages", len(rest))
		}
	}

	// A graceful stop ends the open stream cleanly, and promptly.
	c.terminate(t)
	s.ended(t)
	c.stop(t)
}

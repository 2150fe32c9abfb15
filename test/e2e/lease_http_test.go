package e2e_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// httpLease is a lease as the HTTP API answers it.
type httpLease struct {
	ID        int64  `json:"id"`
	IDHex     string `json:"id_hex"`
	TTL       int64  `json:"ttl"`
	Remaining *int64 `json:"remaining"`
	Keys      []struct {
		Key       string `json:"key"`
		KeyBase64 string `json:"key_base64"`
	} `json:"keys"`
}

// leaseOf decodes a lease answer; its two IDs must agree.
func leaseOf(t testing.TB, r response) httpLease {
	t.Helper()
	var l httpLease
	if err := json.Unmarshal(r.body, &l); err != nil {
		t.Fatalf("lease answer %s: %v", r, err)
	}
	if l.IDHex != fmt.Sprintf("%016x", l.ID) {
		t.Fatalf("lease answer %s: id_hex does not match id", r)
	}
	return l
}

// mustError fails the test unless r is an error with status, code and a
// message containing msg.
func mustError(t testing.TB, what string, r response, status int, code, msg string) {
	t.Helper()
	m := r.json(t)
	if r.status != status || m["code"] != code || !strings.Contains(fmt.Sprint(m["error"]), msg) {
		t.Fatalf("%s: %s, want %d %s saying %q", what, r, status, code, msg)
	}
}

// TestLeaseHTTP drives leases through the control plane's HTTP API: grant,
// attach by either form of the ID, time to live with keys, list, keep-alive,
// revoke deleting every key in one revision that a watcher sees as one
// message, expiry by the cp doing the same, and the errors of unknown and
// taken leases.
func TestLeaseHTTP(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "lease"))
	w := openWatch(t, c.url+"/v1/watch?prefix=/svc/")
	post := func(path string, body any) response { return call(t, http.MethodPost, c.url+path, "", body) }
	put := func(path, value string) response { return call(t, http.MethodPut, c.url+path, "", value) }

	l := leaseOf(t, mustStatus(t, "grant", post("/v1/leases", map[string]int64{"ttl": 60}), http.StatusOK))
	if l.ID <= 0 || l.TTL != 60 || l.Remaining != nil || l.Keys != nil {
		t.Fatalf("grant TTL 60: %+v", l)
	}
	short := leaseOf(t, mustStatus(t, "grant with an ID", post("/v1/leases", map[string]int64{"ttl": 1, "id": 42}), http.StatusOK))
	if short.ID != 42 || short.TTL != 2 {
		t.Fatalf("grant TTL 1 with ID 42: %+v, want ID 42 and the TTL raised to 2", short)
	}
	mustError(t, "grant a taken ID", post("/v1/leases", map[string]int64{"ttl": 10, "id": 42}), http.StatusConflict, "lease_exists", "lease already exists")
	mustError(t, "grant too long a TTL", post("/v1/leases", map[string]int64{"ttl": 9000000001}), http.StatusBadRequest, "invalid_argument", "too large lease TTL")

	// Attach: the ID in decimal or 0x hex; an unknown lease writes nothing.
	id, hex := strconv.FormatInt(l.ID, 10), "0x"+l.IDHex
	ra := revisionOf(t, mustStatus(t, "put a", put("/v1/kv/svc/a?lease="+id, "up"), http.StatusOK))
	revisionOf(t, mustStatus(t, "put b", put("/v1/kv/svc/b?lease="+hex, "up"), http.StatusOK))
	revisionOf(t, mustStatus(t, "put \\xff", put("/v1/kv/svc/%FF?lease="+id, "up"), http.StatusOK))
	mustError(t, "put with an unknown lease", put("/v1/kv/svc/c?lease=99999", "up"), http.StatusNotFound, "lease_not_found",
		"requested lease not found: 99999 (0x000000000001869f)")
	mustStatus(t, "get c", get(t, c.url+"/v1/kv/svc/c", ""), http.StatusNotFound)
	revisionOf(t, mustStatus(t, "put d", put("/v1/kv/svc/d?lease=42", "up"), http.StatusOK))
	revisionOf(t, mustStatus(t, "put d without the lease", put("/v1/kv/svc/d", "detached"), http.StatusOK)) // detaches it
	re := revisionOf(t, mustStatus(t, "put e", put("/v1/kv/svc/e?lease=0x2a", "up"), http.StatusOK))

	got := leaseOf(t, mustStatus(t, "time to live", get(t, c.url+"/v1/leases/"+hex+"?keys=true", ""), http.StatusOK))
	b64 := base64.StdEncoding.EncodeToString([]byte("/svc/\xff"))
	if got.ID != l.ID || got.TTL != 60 || got.Remaining == nil || *got.Remaining < 50 || len(got.Keys) != 3 ||
		got.Keys[0].Key != "/svc/a" || got.Keys[1].Key != "/svc/b" || got.Keys[2].Key != "" || got.Keys[2].KeyBase64 != b64 {
		t.Fatalf("time to live with keys: %+v, want TTL 60, about 60s left, /svc/a, /svc/b and /svc/\\xff in base64", got)
	}
	if got := leaseOf(t, mustStatus(t, "time to live", get(t, c.url+"/v1/leases/42", ""), http.StatusOK)); got.TTL != 2 || got.Keys != nil {
		t.Fatalf("time to live without keys: %+v", got)
	}
	mustError(t, "time to live of an unknown lease", get(t, c.url+"/v1/leases/99999?keys=true", ""), http.StatusNotFound, "lease_not_found", "requested lease not found")

	var list struct{ Leases []httpLease }
	if err := json.Unmarshal(mustStatus(t, "list", get(t, c.url+"/v1/leases", ""), http.StatusOK).body, &list); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, x := range list.Leases {
		ids = append(ids, x.ID)
	}
	if want := []int64{42, l.ID}; !slices.Equal(ids, want) {
		t.Fatalf("list: %v, want %v in order", ids, want)
	}

	if got := leaseOf(t, mustStatus(t, "keep-alive", post("/v1/leases/"+id+"/keepalive", nil), http.StatusOK)); got.ID != l.ID || got.TTL != 60 {
		t.Fatalf("keep-alive: %+v, want TTL 60", got)
	}
	if got := leaseOf(t, mustStatus(t, "keep-alive of an unknown lease", post("/v1/leases/99999/keepalive", nil), http.StatusOK)); got.ID != 99999 || got.TTL != 0 {
		t.Fatalf("keep-alive of an unknown lease: %+v, want TTL 0", got)
	}

	// Revoke: a, b and \xff go in one revision, one watch message.
	r := mustStatus(t, "revoke", call(t, http.MethodDelete, c.url+"/v1/leases/"+hex, "", nil), http.StatusOK)
	rrev := revisionOf(t, r)
	if n := r.json(t)["deleted"]; n != float64(3) {
		t.Fatalf("revoke: %s, want 3 deleted", r)
	}
	mustError(t, "revoke again", call(t, http.MethodDelete, c.url+"/v1/leases/"+id, "", nil), http.StatusNotFound, "lease_not_found",
		fmt.Sprintf("requested lease not found: %d (0x%s)", l.ID, l.IDHex))

	// The watch: a, b, \xff, d twice, e, then the revoke's three deletes
	// together, then e's expiry: lease 42 is not kept alive.
	seen := map[int64]string{}
	for range 6 {
		m := w.next(t)
		n, _ := strconv.ParseInt(m.ID, 10, 64)
		seen[n] = m.Event
	}
	if seen[ra] != "put" || seen[re] != "put" {
		t.Fatalf("watch before the revoke: %v", seen)
	}
	m := w.next(t)
	if m.ID != strconv.FormatInt(rrev, 10) || m.Event != "txn" || len(events(t, m)) != 3 {
		t.Fatalf("revoke's watch message: id %s event %s %s, want 3 deletes in one txn at %d", m.ID, m.Event, m.Data, rrev)
	}
	for _, ev := range events(t, m) {
		if ev.Type != "DELETE" {
			t.Fatalf("revoke's watch message: %s, want only deletes", m.Data)
		}
	}
	m = w.next(t) // within waitTimeout: the TTL is 2s
	if evs := events(t, m); m.Event != "delete" || evs[0].Key != "/svc/e" {
		t.Fatalf("expiry's watch message: event %s %s, want the delete of /svc/e", m.Event, m.Data)
	}
	mustError(t, "time to live of an expired lease", get(t, c.url+"/v1/leases/42", ""), http.StatusNotFound, "lease_not_found", "requested lease not found: 42")
	if got := leaseOf(t, mustStatus(t, "keep-alive of an expired lease", post("/v1/leases/42/keepalive", nil), http.StatusOK)); got.TTL != 0 {
		t.Fatalf("keep-alive of an expired lease: %+v, want TTL 0", got)
	}
	var kvs struct {
		KVs []struct{ Key, Value string }
	}
	if err := json.Unmarshal(mustStatus(t, "get /svc/", get(t, c.url+"/v1/kv/svc/?prefix=true", ""), http.StatusOK).body, &kvs); err != nil {
		t.Fatal(err)
	}
	if len(kvs.KVs) != 1 || kvs.KVs[0].Key != "/svc/d" || kvs.KVs[0].Value != "detached" {
		t.Fatalf("keys left: %+v, want only /svc/d, detached from its lease", kvs.KVs)
	}
}

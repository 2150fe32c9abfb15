package e2e_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/pgtest"
)

// TestAuth runs a control plane with a token file: no or unknown token is
// 401, a read-only token reads but may not write (403), a read-write token
// does both, health and metrics need none; a data plane watches with a
// read-only token.
func TestAuth(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	const ro, rw = "read-only-token-0123456789", "read-write-token-9876543210"
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("# walwatch tokens\n"+ro+" ro\n\n"+rw+" rw\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// A token file with a short token is refused at start.
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("tooshort rw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "cp-short-token", "--postgres", pg, "cp", "--listen", pgtest.FreeAddr(t), "--etcd-listen", "", "--slot", slotName(t, "authshort"), "--token-file", short)
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatal("cp with a short token in its token file kept running")
	}
	if p.err == nil || !strings.Contains(p.log(), "shorter than 16") {
		t.Errorf("cp with a short token: exit %v, output %q; want a failure naming the short token", p.err, p.log())
	}

	c := startCP(t, pg, slotName(t, "auth"), "--token-file", tokens)
	upstream := newUpstream(t, "u1")
	route := `{"uri":"/a","upstream":"` + upstream.URL + `"}`

	type req struct {
		method, path, body string
	}
	reads := []req{{"GET", "/v1/status", ""}, {"GET", "/routes/", ""}, {"GET", "/v1/kv/routes/?prefix=true", ""}}
	writes := []req{{"PUT", "/routes/a", route}, {"PUT", "/v1/kv/k", "v"}, {"DELETE", "/v1/kv/k", ""}, {"POST", "/v1/compact", `{"keep_latest":true}`}}
	do := func(r req, token string) response {
		var body any
		if r.body != "" {
			body = r.body
		}
		return call(t, r.method, c.url+r.path, token, body)
	}
	rev := func() int64 { return getStatus(t, c, rw).CurrentRevision }

	before := rev()
	for _, r := range append(append([]req{}, reads...), writes...) {
		for _, token := range []string{"", "not-a-known-token-at-all", ro + "x"} {
			got := do(r, token)
			if got.status != http.StatusUnauthorized || got.json(t)["code"] != "unauthenticated" || got.header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s with token %q: %s, want 401 unauthenticated with WWW-Authenticate", r.method, r.path, token, got)
			}
		}
	}
	// Not "Bearer": refused.
	got := call(t, "GET", c.url+"/v1/status", "", nil, "Authorization", "Basic "+rw)
	if got.status != http.StatusUnauthorized {
		t.Errorf("Basic auth with the rw token: %s, want 401", got)
	}
	for _, r := range reads {
		mustStatus(t, r.method+" "+r.path+" read-only", do(r, ro), http.StatusOK)
	}
	for _, r := range writes {
		if got := do(r, ro); got.status != http.StatusForbidden || got.json(t)["code"] != "permission_denied" {
			t.Errorf("%s %s with the read-only token: %s, want 403 permission_denied", r.method, r.path, got)
		}
	}
	if after := rev(); after != before {
		t.Errorf("refused requests wrote: revision %d before, %d after", before, after)
	}
	for _, r := range writes[:2] {
		mustStatus(t, r.method+" "+r.path+" read-write", do(r, rw), http.StatusOK)
	}
	mustStatus(t, "GET /routes/a read-write", get(t, c.url+"/routes/a", rw), http.StatusOK)
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		mustStatus(t, path+" without a token", get(t, c.url+path, ""), http.StatusOK)
	}

	// A data plane without a token cannot load; with the read-only one it can.
	bad := startDP(t, c.url, false)
	bad.waitLog(t, "401 Unauthorized", 1)
	if r := get(t, bad.admin+"/readyz", ""); r.status != http.StatusServiceUnavailable {
		t.Errorf("dp without a token: /readyz %s, want 503", r)
	}
	d := startDP(t, c.url, true, "--cp-token", ro)
	waitRoute(t, d, "/a", "u1")
	bad.stop(t)
	d.stop(t)
	c.stop(t)
}
